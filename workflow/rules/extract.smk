# One job per shard (a job array on SLURM); the manifest lists the validated shards beside it.
rule extract:
    input:
        card="results/models/{model}/card.json",
        plan="results/plans/{dataset}.json",
        rendered=specs.extract_rendered_inputs(CFG),
    output:
        "results/extract/{dataset}/{model}/manifest.json",
    params:
        spec=lambda wc: spec_json(specs.extract_spec(CFG, wc.model)),
    log:
        "results/logs/extract/{dataset}/{model}.log",
    wildcard_constraints:
        model="|".join(MODELS),
    conda:
        CONDA_ENV
    shell:
        step_shell("extract")
