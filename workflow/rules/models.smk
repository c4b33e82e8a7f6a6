# One rule for every model source: recipes are trained through the submission layer, pretrained
# weights are fetched on this host (compute nodes often have no internet), local files imported.
rule model:
    input:
        model_inputs,
    output:
        card=paths.CARD,
        weights=paths.WEIGHTS,
    log:
        paths.log(paths.MODEL_DIR),
    wildcard_constraints:
        model=one_of(MODELS),
    conda:
        CONDA_ENV
    params:
        spec=lambda wc: spec_json(specs.model_spec(CFG, wc.model)),
    shell:
        step_shell("model")
