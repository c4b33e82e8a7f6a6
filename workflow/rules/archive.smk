# One archive of the finished run: figures, tables, report, config, cards, manifests, checksums.
rule archive:
    input:
        specs.final_targets(CFG),
        [f"results/models/{m}/card.json" for m in MODELS],
    output:
        f"results/archive/{CFG['run_name']}.tar.gz",
    params:
        spec=lambda wc: spec_json({
            "out": f"results/archive/{CFG['run_name']}.tar.gz", "config_file": RUN_CONFIG, "snakefile": workflow.main_snakefile,
            "include_large": CFG["archive"]["include_large"]}),
    log:
        "results/logs/archive.log",
    localrule: True
    conda:
        CONDA_ENV
    shell:
        step_shell("archive")
