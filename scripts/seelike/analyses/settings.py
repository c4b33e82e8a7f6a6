"""The `analyses:` config section: which model gets which vision analysis, the extraction taps that
needs, the specs the rules hand the steps, and the final targets. No torch.

Analyses (config key -> figure):

    attention_distance  F3 (per model), F4 (all ViTs, less-data models marked)
    head_cka            F5 (every ViT head of the first blocks against a CNN's layers)
    receptive_field     F6 (own step: gradients over a few images)
    norm_ratio          F7
    localization        F9
    patch_embedding     V1  principal components of the patch-embedding filters (checkpoint only)
    position_embedding  V2  cosine similarity of position embeddings (checkpoint only)
    attention_maps      V3  attention maps and rollout; V4 attention similarity across layers
    snn_loss            V5  soft nearest-neighbour loss per layer (all models in one figure)
"""
from __future__ import annotations

RESULTS = "results"

# Families an analysis applies to; `models: auto` takes every configured model of these.
FAMILIES = {
    "attention_distance": ("vit",),
    "head_cka": ("vit",),
    "receptive_field": ("vit", "mixer", "cnn"),
    "norm_ratio": ("vit", "mixer", "cnn"),
    "localization": ("vit", "mixer", "cnn"),
    "patch_embedding": ("vit", "mixer"),
    "position_embedding": ("vit",),
    "attention_maps": ("vit",),
    "snn_loss": ("vit", "mixer", "cnn", "other"),
}
WHY = {
    "attention_distance": "attention distances need attention heads (a ViT)",
    "head_cka": "per-head CKA needs attention heads (a ViT)",
    "attention_maps": "attention maps need attention heads (a ViT)",
    "position_embedding": "position-embedding similarity needs a ViT's learned position embeddings",
    "patch_embedding": "patch-embedding components need a patch embedding (a ViT or a Mixer)",
    "norm_ratio": "norm ratios need residual blocks (a ViT, Mixer or CNN)",
    "localization": "localization needs a spatial grid (a ViT, Mixer or CNN)",
    "receptive_field": "receptive fields need a spatial grid (a ViT, Mixer or CNN)",
}
# Tables read from the extraction shards (one per model), and from the checkpoint alone.
SHARD_TABLES = ("attention_distance", "norm_ratio", "localization", "attention_maps", "snn_loss")
CHECKPOINT_TABLES = ("patch_embedding", "position_embedding")


class AnalysisConfigError(ValueError):
    pass


def _section(cfg: dict, analysis: str) -> dict:
    return cfg.get("analyses", {}).get(analysis, {})


def enabled(cfg: dict, analysis: str) -> bool:
    """An analysis runs when its key is under `analyses:` and its `enabled` is not false."""
    return analysis in cfg.get("analyses", {}) and bool(_section(cfg, analysis).get("enabled", True))


def models_for(cfg: dict, analysis: str) -> list[str]:
    """Models the analysis runs on (config order); [] when it is switched off."""
    if not enabled(cfg, analysis):
        return []
    sel = _section(cfg, analysis).get("models", "auto")
    if sel == "auto":
        return [n for n, m in cfg["models"].items() if m.get("family") in FAMILIES[analysis]]
    return [n for n in cfg["models"] if n in sel]


def head_cka_cnn(cfg: dict) -> str | None:
    cnn = _section(cfg, "head_cka").get("cnn", "auto")
    if cnn != "auto":
        return cnn
    cnns = [n for n, m in cfg["models"].items() if m.get("family") == "cnn"]
    return cnns[0] if cnns else None


def head_cka_pairs(cfg: dict) -> list[tuple[str, str]]:
    cnn = head_cka_cnn(cfg)
    if cnn is None:
        return []
    return [(v, cnn) for v in models_for(cfg, "head_cka")]


def less_data(cfg: dict) -> list[str]:
    return list(_section(cfg, "attention_distance").get("less_data", []))


def check(cfg: dict) -> None:
    """Semantic checks of the `analyses` section (after the schema); raises AnalysisConfigError."""
    models = cfg["models"]
    for analysis in FAMILIES:
        sel = _section(cfg, analysis).get("models", "auto")
        if sel == "auto":
            continue
        for i, name in enumerate(sel):
            key = f"analyses.{analysis}.models[{i}]"
            if name not in models:
                raise AnalysisConfigError(f"config key {key}: unknown model '{name}'; configured: {', '.join(models)}")
            fam = models[name].get("family")
            if fam not in FAMILIES[analysis]:
                raise AnalysisConfigError(f"config key {key}: model '{name}' is a {fam} model; {WHY.get(analysis, analysis)}")
    dist_models = models_for(cfg, "attention_distance")
    for i, name in enumerate(less_data(cfg)):
        key = f"analyses.attention_distance.less_data[{i}]"
        if name not in models:
            raise AnalysisConfigError(f"config key {key}: unknown model '{name}'; configured: {', '.join(models)}")
        if name not in dist_models:
            raise AnalysisConfigError(f"config key {key}: model '{name}' is not among the models whose attention "
                                      f"distances are computed ({', '.join(dist_models) or 'none'})")
    if enabled(cfg, "head_cka"):
        cnn = _section(cfg, "head_cka").get("cnn", "auto")
        if cnn != "auto":
            if cnn not in models:
                raise AnalysisConfigError(f"config key analyses.head_cka.cnn: unknown model '{cnn}'; "
                                          f"configured: {', '.join(models)}")
            if models[cnn].get("family") != "cnn":
                raise AnalysisConfigError(f"config key analyses.head_cka.cnn: model '{cnn}' is a "
                                          f"{models[cnn].get('family')} model, not a CNN")
        missing = [v for v in models_for(cfg, "head_cka") if v not in dist_models]
        if missing and head_cka_cnn(cfg):
            raise AnalysisConfigError(f"config key analyses.head_cka.models: F5 plots each head against its mean "
                                      f"attention distance, but analyses.attention_distance does not cover "
                                      f"{', '.join(missing)}")
    for name in _section(cfg, "localization").get("layers", {}):
        if name not in models:
            raise AnalysisConfigError(f"config key analyses.localization.layers.{name}: unknown model '{name}'")


# ----------------------------------------------------------------------------- extraction

def extraction_taps(cfg: dict, name: str) -> dict:
    """What extraction of model `name` must tap and reduce; {} when no shard-based analysis covers it."""
    taps: dict = {}
    n = int(cfg["analysis"]["n_examples"])
    if name in models_for(cfg, "attention_distance"):
        taps["attention_distance"] = {"n_images": min(n, int(_section(cfg, "attention_distance").get("n_images", 5000)))}
    if name in models_for(cfg, "attention_maps"):
        taps["attention_maps"] = {"n_images": min(n, int(_section(cfg, "attention_maps").get("n_images", 8)))}
    if any(v == name for v, _ in head_cka_pairs(cfg)):
        taps["heads"] = {"blocks": int(_section(cfg, "head_cka").get("blocks", 3))}
    if name in models_for(cfg, "norm_ratio"):
        taps["norm_ratio"] = {}
    if name in models_for(cfg, "localization"):
        s = _section(cfg, "localization")
        taps["localization"] = {"positions": [list(map(float, p)) for p in s.get("positions", DEFAULT_POSITIONS)],
                                "n_images": min(n, int(s.get("n_images", 2048))),
                                "layer": s.get("layers", {}).get(name)}
    return taps


DEFAULT_POSITIONS = [[0.1, 0.1], [0.1, 0.9], [0.5, 0.5], [0.9, 0.1], [0.9, 0.9]]


# ----------------------------------------------------------------------------- paths and specs

def dataset_key(cfg: dict) -> str:
    return cfg["analysis"]["dataset"]


def manifest_path(cfg: dict, model: str) -> str:
    return f"{RESULTS}/extract/{dataset_key(cfg)}/{model}/manifest.json"


def card_path(model: str) -> str:
    return f"{RESULTS}/models/{model}/card.json"


def table_path(cfg: dict, analysis: str, model: str) -> str:
    if analysis in CHECKPOINT_TABLES:
        return f"{RESULTS}/vision/checkpoint/{analysis}/{model}.csv"
    return f"{RESULTS}/vision/{dataset_key(cfg)}/{analysis}/{model}.csv"


def figure_paths(cfg: dict, figure: str, stem: str) -> list[str]:
    return [f"{RESULTS}/figures/{figure}/{stem}.{fmt}" for fmt in cfg["figures"]["formats"]]


def _prov(spec: dict, keys) -> dict:
    return {k: spec[k] for k in keys if k in spec}


def table_spec(cfg: dict, analysis: str, model: str) -> dict:
    """Spec of a per-model table step (shard- or checkpoint-based)."""
    s = _section(cfg, analysis)
    spec = {"analysis": analysis, "model": model, "out": table_path(cfg, analysis, model)}
    if analysis in CHECKPOINT_TABLES:
        spec["card"] = card_path(model)
        if analysis == "patch_embedding":
            spec["n_components"] = int(s.get("n_components", 28))
    else:
        spec["manifest"] = manifest_path(cfg, model)
        spec["dataset_key"] = dataset_key(cfg)
    if analysis == "attention_distance":
        spec["renormalize"] = bool(s.get("renormalize", True))
        spec["less_data"] = model in less_data(cfg)
    if analysis == "localization":
        spec["estimator"] = cfg["cka"]["estimator"]
    if analysis == "attention_maps":
        spec["out_similarity"] = table_path(cfg, "attention_similarity", model)
    spec["provenance_config"] = _prov(spec, ("analysis", "model", "dataset_key", "n_components", "renormalize",
                                             "less_data", "estimator"))
    return spec


def head_cka_spec(cfg: dict, vit: str, cnn: str) -> dict:
    s = _section(cfg, "head_cka")
    spec = {"analysis": "head_cka", "model": vit, "cnn": cnn, "manifest": manifest_path(cfg, vit),
            "manifest_cnn": manifest_path(cfg, cnn), "distances": table_path(cfg, "attention_distance", vit),
            "blocks": int(s.get("blocks", 3)), "cnn_layers": s.get("cnn_layers", "auto"),
            "estimator": cfg["cka"]["estimator"], "out": head_cka_path(cfg, vit, cnn)}
    spec["provenance_config"] = _prov(spec, ("analysis", "model", "cnn", "blocks", "cnn_layers", "estimator"))
    return spec


def head_cka_path(cfg: dict, vit: str, cnn: str) -> str:
    return f"{RESULTS}/vision/{dataset_key(cfg)}/head_cka/{vit}__{cnn}.csv"


def receptive_field_spec(cfg: dict, model: str) -> dict:
    s = _section(cfg, "receptive_field")
    d = dataset_key(cfg)
    spec = {"analysis": "receptive_field", "model": model, "card": card_path(model),
            "plan_file": f"{RESULTS}/plans/{d}.json", "dataset_key": d, "dataset": cfg["datasets"][d],
            "split": cfg["analysis"]["split"],
            "n_images": min(int(cfg["analysis"]["n_examples"]), int(s.get("n_images", 32))),
            "batch_size": int(s.get("batch_size", 32)), "layers": s.get("layers", "auto"),
            "device": cfg["device"], "out": table_path(cfg, "receptive_field", model)}
    spec["provenance_config"] = _prov(spec, ("analysis", "model", "dataset_key", "dataset", "split", "n_images",
                                             "layers"))
    return spec


def figure_spec(cfg: dict, figure: str, stem: str, tables: list[str], **extra) -> dict:
    spec = {"figure": figure, "tables": list(tables), "outputs": figure_paths(cfg, figure, stem),
            "dpi": cfg["figures"]["dpi"]}
    spec.update(extra)
    spec["provenance_config"] = {"figure": figure, "stem": stem, **{k: v for k, v in extra.items()}}
    return spec


# ----------------------------------------------------------------------------- targets

def final_targets(cfg: dict) -> list[str]:
    d = dataset_key(cfg)
    out = []
    for m in models_for(cfg, "attention_distance"):
        out += figure_paths(cfg, "F3", m)
    if less_data(cfg) and models_for(cfg, "attention_distance"):
        out += figure_paths(cfg, "F4", d)
    for v, c in head_cka_pairs(cfg):
        out += figure_paths(cfg, "F5", f"{v}__{c}")
    for m in models_for(cfg, "receptive_field"):
        out += figure_paths(cfg, "F6", m)
    for m in models_for(cfg, "norm_ratio"):
        out += figure_paths(cfg, "F7", m)
    for m in models_for(cfg, "localization"):
        out += figure_paths(cfg, "F9", m)
    for m in models_for(cfg, "patch_embedding"):
        out += figure_paths(cfg, "V1", m)
    for m in models_for(cfg, "position_embedding"):
        out += figure_paths(cfg, "V2", m)
    for m in models_for(cfg, "attention_maps"):
        out += figure_paths(cfg, "V3", m) + figure_paths(cfg, "V4", m)
    if models_for(cfg, "snn_loss"):
        out += figure_paths(cfg, "V5", d)
    return out
