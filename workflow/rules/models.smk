# One rule for every model source: recipes are trained through the submission layer, pretrained
# weights are fetched on this host (compute nodes often have no internet), local files imported.
def _init_card(wc):
    recipe = CFG["models"][wc.model].get("recipe") or {}
    return [f"results/models/{recipe['init_from']}/card.json"] if recipe.get("init_from") else []


rule model:
    input:
        _init_card,
        lambda wc: specs.model_rendered_inputs(CFG, wc.model),
        lambda wc: specs.model_weight_inputs(CFG, wc.model),
    output:
        card="results/models/{model}/card.json",
        weights="results/models/{model}/weights.safetensors",
    params:
        spec=lambda wc: spec_json(specs.model_spec(CFG, wc.model)),
    log:
        "results/logs/models/{model}.log",
    wildcard_constraints:
        model="|".join(MODELS),
    conda:
        CONDA_ENV
    shell:
        step_shell("model")
