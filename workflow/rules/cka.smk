# CKA of every layer pair from the stored Grams: {x}__{x} within a model (F1), {x}__{y} across (F2, F14).
def _cka_inputs(wc):
    names = {wc.x, wc.y}
    return [f"results/extract/{wc.dataset}/{n}/manifest.json" for n in names]


rule cka:
    input:
        _cka_inputs,
    output:
        "results/cka/{dataset}/{x}__{y}.csv",
    params:
        spec=lambda wc: spec_json(specs.cka_spec(CFG, wc.x, wc.y)),
    log:
        "results/logs/cka/{dataset}/{x}__{y}.log",
    wildcard_constraints:
        x="|".join(MODELS),
        y="|".join(MODELS),
    conda:
        CONDA_ENV
    shell:
        step_shell("cka")
