rule plan:
    output:
        "results/plans/{dataset}.json",
    params:
        spec=lambda wc: spec_json(specs.plan_spec(CFG)),
    log:
        "results/logs/plan/{dataset}.log",
    localrule: True
    conda:
        CONDA_ENV
    shell:
        step_shell("plan")
