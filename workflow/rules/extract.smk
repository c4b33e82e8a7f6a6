# One job per shard (a job array on SLURM); the manifest lists the validated shards beside it.
rule extract:
    input:
        card=paths.CARD,
        plan=paths.PLAN,
        rendered=specs.extract_rendered_inputs(CFG),
    output:
        paths.MANIFEST,
    log:
        paths.log(paths.EXTRACT_DIR),
    wildcard_constraints:
        model=one_of(MODELS),
    conda:
        CONDA_ENV
    params:
        spec=lambda wc: spec_json(specs.extract_spec(CFG, wc.model)),
    shell:
        step_shell("extract")
