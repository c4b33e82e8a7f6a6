# Each synthetic split that training or extraction reads is rendered once, here, instead of once
# per job; the file name carries the render key, so a changed dataset config names a new file.
rule render:
    output:
        paths.RENDERED,
    log:
        paths.log(paths.RENDERED),
    wildcard_constraints:
        dataset="|".join(CFG["datasets"]),
        split="[A-Za-z0-9_]+",
        key="[0-9a-f]{16}",
    localrule: True
    conda:
        CONDA_ENV
    params:
        spec=lambda wc: spec_json(specs.render_spec(CFG, wc.dataset, wc.split)),
    shell:
        step_shell("render")
