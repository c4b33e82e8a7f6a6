# The example plan: dataset index -> shards -> CKA minibatches, the same for every model.
rule plan:
    output:
        paths.PLAN,
    params:
        spec=lambda wc: spec_json(specs.plan_spec(CFG)),
    log:
        paths.log(paths.PLAN),
    localrule: True
    conda:
        CONDA_ENV
    shell:
        step_shell("plan")
