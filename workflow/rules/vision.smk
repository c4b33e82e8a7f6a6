# How ViTs see (F3-F7, F9; the ViT paper's views V1-V5): tables from the extraction shards (one pass
# over the images for all of them), from the checkpoint, or (F6) from a gradient step; then figures
# drawn from the tables. Which model gets which analysis: the `analyses:` config section.
from seelike.analyses import settings as vision
from seelike.provenance import code_digest

VISION_FORMATS = CFG["figures"]["formats"]
VISION_MODELS = "|".join(MODELS)


def _vision_code(module):
    """Figures rerun when their drawing code changes."""
    return code_digest(f"analyses/{module}")


def _vision_figure(figure, stem, tables, module):
    return spec_json(vision.figure_spec(CFG, figure, stem, [str(t) for t in as_list(tables)], code=_vision_code(module)))


rule vision_table:
    input:
        lambda wc: vision.manifest_path(CFG, wc.model),
    output:
        "results/vision/{dataset}/{analysis}/{model}.csv",
    params:
        spec=lambda wc: spec_json(vision.table_spec(CFG, wc.analysis, wc.model)),
    log:
        "results/logs/vision/{dataset}/{analysis}/{model}.log",
    wildcard_constraints:
        analysis="attention_distance|norm_ratio|localization|snn_loss",
        model=VISION_MODELS,
    conda:
        CONDA_ENV
    shell:
        step_shell("vision")


rule vision_attention_maps:
    input:
        lambda wc: vision.manifest_path(CFG, wc.model),
    output:
        maps="results/vision/{dataset}/attention_maps/{model}.csv",
        similarity="results/vision/{dataset}/attention_similarity/{model}.csv",
    params:
        spec=lambda wc: spec_json(vision.table_spec(CFG, "attention_maps", wc.model)),
    log:
        "results/logs/vision/{dataset}/attention_maps/{model}.log",
    wildcard_constraints:
        model=VISION_MODELS,
    conda:
        CONDA_ENV
    shell:
        step_shell("vision")


rule vision_checkpoint_table:
    input:
        lambda wc: vision.card_path(wc.model),
    output:
        "results/vision/checkpoint/{analysis}/{model}.csv",
    params:
        spec=lambda wc: spec_json(vision.table_spec(CFG, wc.analysis, wc.model)),
    log:
        "results/logs/vision/checkpoint/{analysis}/{model}.log",
    wildcard_constraints:
        analysis="patch_embedding|position_embedding",
        model=VISION_MODELS,
    conda:
        CONDA_ENV
    shell:
        step_shell("vision")


rule head_cka:
    input:
        lambda wc: [vision.manifest_path(CFG, wc.vit), vision.manifest_path(CFG, wc.cnn),
                    vision.table_path(CFG, "attention_distance", wc.vit)],
    output:
        "results/vision/{dataset}/head_cka/{vit}__{cnn}.csv",
    params:
        spec=lambda wc: spec_json(vision.head_cka_spec(CFG, wc.vit, wc.cnn)),
    log:
        "results/logs/vision/{dataset}/head_cka/{vit}__{cnn}.log",
    wildcard_constraints:
        vit=VISION_MODELS,
        cnn=VISION_MODELS,
    conda:
        CONDA_ENV
    shell:
        step_shell("vision")


rule receptive_field:
    input:
        card="results/models/{model}/card.json",
        plan="results/plans/{dataset}.json",
    output:
        "results/vision/{dataset}/receptive_field/{model}.csv",
    params:
        spec=lambda wc: spec_json(vision.receptive_field_spec(CFG, wc.model)),
    log:
        "results/logs/vision/{dataset}/receptive_field/{model}.log",
    wildcard_constraints:
        model=VISION_MODELS,
    conda:
        CONDA_ENV
    shell:
        step_shell("receptive_field")


# ----------------------------------------------------------------------------- figures

rule figure_f3:
    input:
        lambda wc: vision.table_path(CFG, "attention_distance", wc.model),
    output:
        report(expand("results/figures/F3/{{model}}.{fmt}", fmt=VISION_FORMATS), caption="../report/F3.rst",
               category="F3 attention distance", subcategory="{model}"),
    params:
        spec=lambda wc: _vision_figure("F3", wc.model, (lambda wc: vision.table_path(CFG, "attention_distance", wc.model))(wc), "attention_distance.py"),
    log:
        "results/logs/figures/F3/{model}.log",
    wildcard_constraints:
        model=VISION_MODELS,
    localrule: True
    conda:
        CONDA_ENV
    shell:
        step_shell("vision_figure")


rule figure_f4:
    input:
        lambda wc: [vision.table_path(CFG, "attention_distance", m) for m in vision.models_for(CFG, "attention_distance")],
    output:
        report(expand("results/figures/F4/{{dataset}}.{fmt}", fmt=VISION_FORMATS), caption="../report/F4.rst",
               category="F4 attention distance, less data"),
    params:
        spec=lambda wc: _vision_figure("F4", wc.dataset, (lambda wc: [vision.table_path(CFG, "attention_distance", m) for m in vision.models_for(CFG, "attention_distance")])(wc), "attention_distance.py"),
    log:
        "results/logs/figures/F4/{dataset}.log",
    localrule: True
    conda:
        CONDA_ENV
    shell:
        step_shell("vision_figure")


rule figure_f5:
    input:
        lambda wc: vision.head_cka_path(CFG, wc.vit, wc.cnn),
    output:
        report(expand("results/figures/F5/{{vit}}__{{cnn}}.{fmt}", fmt=VISION_FORMATS), caption="../report/F5.rst",
               category="F5 attention heads vs CNN", subcategory="{vit} vs {cnn}"),
    params:
        spec=lambda wc: _vision_figure("F5", f"{wc.vit}__{wc.cnn}", (lambda wc: vision.head_cka_path(CFG, wc.vit, wc.cnn))(wc), "head_cka.py"),
    log:
        "results/logs/figures/F5/{vit}__{cnn}.log",
    wildcard_constraints:
        vit=VISION_MODELS,
        cnn=VISION_MODELS,
    localrule: True
    conda:
        CONDA_ENV
    shell:
        step_shell("vision_figure")


rule figure_f6:
    input:
        lambda wc: vision.table_path(CFG, "receptive_field", wc.model),
    output:
        report(expand("results/figures/F6/{{model}}.{fmt}", fmt=VISION_FORMATS), caption="../report/F6.rst",
               category="F6 receptive fields", subcategory="{model}"),
    params:
        spec=lambda wc: _vision_figure("F6", wc.model, (lambda wc: vision.table_path(CFG, "receptive_field", wc.model))(wc), "receptive_field.py"),
    log:
        "results/logs/figures/F6/{model}.log",
    wildcard_constraints:
        model=VISION_MODELS,
    localrule: True
    conda:
        CONDA_ENV
    shell:
        step_shell("vision_figure")


rule figure_f7:
    input:
        lambda wc: vision.table_path(CFG, "norm_ratio", wc.model),
    output:
        report(expand("results/figures/F7/{{model}}.{fmt}", fmt=VISION_FORMATS), caption="../report/F7.rst",
               category="F7 norm ratios", subcategory="{model}"),
    params:
        spec=lambda wc: _vision_figure("F7", wc.model, (lambda wc: vision.table_path(CFG, "norm_ratio", wc.model))(wc), "norm_ratio.py"),
    log:
        "results/logs/figures/F7/{model}.log",
    wildcard_constraints:
        model=VISION_MODELS,
    localrule: True
    conda:
        CONDA_ENV
    shell:
        step_shell("vision_figure")


rule figure_f9:
    input:
        lambda wc: vision.table_path(CFG, "localization", wc.model),
    output:
        report(expand("results/figures/F9/{{model}}.{fmt}", fmt=VISION_FORMATS), caption="../report/F9.rst",
               category="F9 localization", subcategory="{model}"),
    params:
        spec=lambda wc: _vision_figure("F9", wc.model, (lambda wc: vision.table_path(CFG, "localization", wc.model))(wc), "localization.py"),
    log:
        "results/logs/figures/F9/{model}.log",
    wildcard_constraints:
        model=VISION_MODELS,
    localrule: True
    conda:
        CONDA_ENV
    shell:
        step_shell("vision_figure")


rule figure_v1:
    input:
        lambda wc: vision.table_path(CFG, "patch_embedding", wc.model),
    output:
        report(expand("results/figures/V1/{{model}}.{fmt}", fmt=VISION_FORMATS), caption="../report/V1.rst",
               category="V1 patch-embedding components", subcategory="{model}"),
    params:
        spec=lambda wc: _vision_figure("V1", wc.model, (lambda wc: vision.table_path(CFG, "patch_embedding", wc.model))(wc), "embeddings.py"),
    log:
        "results/logs/figures/V1/{model}.log",
    wildcard_constraints:
        model=VISION_MODELS,
    localrule: True
    conda:
        CONDA_ENV
    shell:
        step_shell("vision_figure")


rule figure_v2:
    input:
        lambda wc: vision.table_path(CFG, "position_embedding", wc.model),
    output:
        report(expand("results/figures/V2/{{model}}.{fmt}", fmt=VISION_FORMATS), caption="../report/V2.rst",
               category="V2 position-embedding similarity", subcategory="{model}"),
    params:
        spec=lambda wc: _vision_figure("V2", wc.model, (lambda wc: vision.table_path(CFG, "position_embedding", wc.model))(wc), "embeddings.py"),
    log:
        "results/logs/figures/V2/{model}.log",
    wildcard_constraints:
        model=VISION_MODELS,
    localrule: True
    conda:
        CONDA_ENV
    shell:
        step_shell("vision_figure")


rule figure_v3:
    input:
        lambda wc: vision.table_path(CFG, "attention_maps", wc.model),
    output:
        report(expand("results/figures/V3/{{model}}.{fmt}", fmt=VISION_FORMATS), caption="../report/V3.rst",
               category="V3 attention maps and rollout", subcategory="{model}"),
    params:
        spec=lambda wc: _vision_figure("V3", wc.model, (lambda wc: vision.table_path(CFG, "attention_maps", wc.model))(wc), "attention_maps.py"),
    log:
        "results/logs/figures/V3/{model}.log",
    wildcard_constraints:
        model=VISION_MODELS,
    localrule: True
    conda:
        CONDA_ENV
    shell:
        step_shell("vision_figure")


rule figure_v4:
    input:
        lambda wc: vision.table_path(CFG, "attention_similarity", wc.model),
    output:
        report(expand("results/figures/V4/{{model}}.{fmt}", fmt=VISION_FORMATS), caption="../report/V4.rst",
               category="V4 attention similarity across layers", subcategory="{model}"),
    params:
        spec=lambda wc: _vision_figure("V4", wc.model, (lambda wc: vision.table_path(CFG, "attention_similarity", wc.model))(wc), "attention_maps.py"),
    log:
        "results/logs/figures/V4/{model}.log",
    wildcard_constraints:
        model=VISION_MODELS,
    localrule: True
    conda:
        CONDA_ENV
    shell:
        step_shell("vision_figure")


rule figure_v5:
    input:
        lambda wc: [vision.table_path(CFG, "snn_loss", m) for m in vision.models_for(CFG, "snn_loss")],
    output:
        report(expand("results/figures/V5/{{dataset}}.{fmt}", fmt=VISION_FORMATS), caption="../report/V5.rst",
               category="V5 class separation by depth"),
    params:
        spec=lambda wc: _vision_figure("V5", wc.dataset, (lambda wc: [vision.table_path(CFG, "snn_loss", m) for m in vision.models_for(CFG, "snn_loss")])(wc), "snn.py"),
    log:
        "results/logs/figures/V5/{dataset}.log",
    localrule: True
    conda:
        CONDA_ENV
    shell:
        step_shell("vision_figure")
