# The example plan: dataset index -> shards -> CKA minibatches, the same for every model.
rule plan:
    output:
        paths.PLAN,
    log:
        paths.log(paths.PLAN),
    localrule: True
    conda:
        CONDA_ENV
    params:
        spec=lambda wc: spec_json(specs.plan_spec(CFG)),
    shell:
        step_shell("plan")
