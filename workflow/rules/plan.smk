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
        SEELIKE + " step plan --spec {params.spec:q} > {log} 2>&1"
