# CKA of every layer pair from the stored Grams: {x}__{x} within a model, {x}__{y} across. Seconds of
# work: on the host running Snakemake unless executor.steps.cka places it (seelike.config.HOST_STEPS).
rule cka:
    input:
        lambda wc: [paths.manifest(CFG, n) for n in dict.fromkeys((wc.x, wc.y))],
    output:
        paths.CKA_TABLE,
    log:
        paths.log(paths.CKA_TABLE),
    wildcard_constraints:
        x=one_of(MODELS),
        y=one_of(MODELS),
    localrule: seelike_config.runs_on_host(CFG, "cka")
    conda:
        CONDA_ENV
    params:
        spec=lambda wc: spec_json(specs.cka_spec(CFG, wc.x, wc.y)),
    shell:
        step_shell("cka")
