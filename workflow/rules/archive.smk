# One archive of the finished run: figures, tables, report, config, cards, manifests, checksums.
rule archive:
    input:
        specs.final_targets(CFG),
        [paths.card(m) for m in MODELS],
    output:
        paths.archive(CFG["run_name"]),
    log:
        paths.log(paths.archive(CFG["run_name"])),
    localrule: True
    conda:
        CONDA_ENV
    params:
        spec=lambda wc: spec_json(
            specs.archive_spec(CFG, RUN_CONFIG, workflow.main_snakefile)
        ),
    shell:
        step_shell("archive")
