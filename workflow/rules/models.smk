# One rule for every model source: recipes are trained through the submission layer, pretrained
# weights are fetched on this host (compute nodes often have no internet), local files imported.
def model_inputs(wc):
    recipe = CFG["models"][wc.model].get("recipe") or {}
    init = [paths.card(recipe["init_from"])] if recipe.get("init_from") else []
    return init + specs.model_rendered_inputs(CFG, wc.model) + specs.model_weight_inputs(CFG, wc.model)


rule model:
    input:
        model_inputs,
    output:
        card=paths.CARD,
        weights=paths.WEIGHTS,
    params:
        spec=lambda wc: spec_json(specs.model_spec(CFG, wc.model)),
    log:
        paths.log(paths.MODEL_DIR),
    wildcard_constraints:
        model=one_of(MODELS),
    conda:
        CONDA_ENV
    shell:
        step_shell("model")
