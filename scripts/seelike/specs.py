"""What each rule hands its step: the config subset a result depends on, and nothing else.

Rules pass these specs as params, so Snakemake reruns a step exactly when its subset changes;
settings that do not change results (executor, resources) travel separately.
"""
from __future__ import annotations

from . import config as sc
from .analyses import settings as vision

RESULTS = "results"


def dataset_key(cfg: dict) -> str:
    return cfg["analysis"]["dataset"]


def plan_spec(cfg: dict) -> dict:
    d = dataset_key(cfg)
    return {"dataset_key": d, "dataset": cfg["datasets"][d], "split": cfg["analysis"]["split"],
            "n_examples": cfg["analysis"]["n_examples"], "minibatch_size": cfg["cka"]["minibatch_size"],
            "minibatches_per_shard": cfg["extraction"]["minibatches_per_shard"], "seed": cfg["analysis"]["seed"],
            "out": f"{RESULTS}/plans/{d}.json"}


def rendered_path(cfg: dict, dataset: str, split: str) -> str | None:
    """Where the render rule puts a synthetic split (None for image folders, which are read directly)."""
    from .data import rendered_split_name

    entry = cfg["datasets"][dataset]
    if entry["kind"] != "synthetic":
        return None
    return f"{RESULTS}/data/{dataset}/{rendered_split_name(entry, split)}"


def render_spec(cfg: dict, dataset: str, split: str) -> dict:
    return {"dataset": cfg["datasets"][dataset], "split": split, "out": rendered_path(cfg, dataset, split)}


def model_rendered(cfg: dict, name: str) -> dict:
    """The rendered splits a recipe trains and tests on: {split: path}, synthetic datasets only."""
    r = cfg["models"][name].get("recipe")
    if cfg["models"][name]["source"]["kind"] != "recipe" or not r:
        return {}
    paths = {"train": rendered_path(cfg, r["dataset"], "train"),
             "test": rendered_path(cfg, r.get("test_dataset") or r["dataset"], "test")}
    return {k: v for k, v in paths.items() if v}


def model_rendered_inputs(cfg: dict, name: str) -> list[str]:
    return sorted(model_rendered(cfg, name).values())


def model_weight_inputs(cfg: dict, name: str) -> list[str]:
    """A local weights file is an input of its model: replacing it rebuilds the card (and all downstream)."""
    src = cfg["models"][name]["source"]
    return [src["path"]] if src["kind"] == "local_file" else []


def extract_rendered_inputs(cfg: dict) -> list[str]:
    p = rendered_path(cfg, dataset_key(cfg), cfg["analysis"]["split"])
    return [p] if p else []


def model_spec(cfg: dict, name: str) -> dict:
    m = cfg["models"][name]
    spec = {"name": name, "arch": m["arch"], "kwargs": m.get("kwargs", {}), "source": m["source"],
            "layers": m.get("layers", "auto"), "out_dir": f"{RESULTS}/models/{name}"}
    if m["source"]["kind"] == "recipe":
        spec["recipe"] = m["recipe"]
        if m["recipe"].get("init_from"):
            spec["init_card"] = f"{RESULTS}/models/{m['recipe']['init_from']}/card.json"
        spec["dataset"] = cfg["datasets"][m["recipe"]["dataset"]]
        if m["recipe"].get("test_dataset"):
            spec["test_dataset"] = cfg["datasets"][m["recipe"]["test_dataset"]]
        spec["device"] = cfg["device"]
        spec["precision"] = m["recipe"].get("precision", cfg["precision"])
    spec["spec_hash"] = sc.digest(spec)
    rendered = model_rendered(cfg, name)   # where the pixels are read from, not what is trained: outside the hash
    if rendered:
        spec["rendered"] = rendered
    return spec


def extract_spec(cfg: dict, name: str) -> dict:
    d = dataset_key(cfg)
    spec = {"model": name, "dataset_key": d, "dataset": cfg["datasets"][d], "split": cfg["analysis"]["split"],
            "device": cfg["device"], "precision": cfg["precision"],
            "sublayers": cfg["extraction"]["sublayers"], "full_tokens": cfg["extraction"]["full_tokens"],
            "num_workers": cfg["extraction"]["num_workers"],
            "card": f"{RESULTS}/models/{name}/card.json", "plan_file": f"{RESULTS}/plans/{d}.json",
            "out_dir": f"{RESULTS}/extract/{d}/{name}"}
    rendered = rendered_path(cfg, d, spec["split"])
    if rendered:
        spec["rendered"] = rendered
    spec["provenance_config"] = {k: spec[k] for k in ("model", "dataset_key", "dataset", "split", "precision",
                                                        "sublayers", "full_tokens")}
    taps = vision.extraction_taps(cfg, name)   # what the vision analyses need from this model's pass
    if taps:
        spec["taps"] = spec["provenance_config"]["taps"] = taps
    return spec


def cka_spec(cfg: dict, x: str, y: str) -> dict:
    d = dataset_key(cfg)
    spec = {"manifest_x": f"{RESULTS}/extract/{d}/{x}/manifest.json",
            "manifest_y": None if x == y else f"{RESULTS}/extract/{d}/{y}/manifest.json",
            "estimator": cfg["cka"]["estimator"], "out": cka_table_path(cfg, x, y)}
    spec["provenance_config"] = {"models": [x, y], "estimator": spec["estimator"], "dataset": d}
    return spec


def cka_table_path(cfg: dict, x: str, y: str) -> str:
    return f"{RESULTS}/cka/{dataset_key(cfg)}/{x}__{y}.csv"


def figure_paths(cfg: dict, figure: str, stem: str) -> list[str]:
    return [f"{RESULTS}/figures/{figure}/{stem}.{fmt}" for fmt in cfg["figures"]["formats"]]


def f14_panels(cfg: dict, mixer: str) -> list[tuple[str, str]]:
    """The Mixer with itself, then against the ViTs and CNNs it is paired with in cka.pairs (every
    ViT and CNN when pairs is 'all'), in stored pair order (config order) so titles match tables."""
    order = list(cfg["models"])
    partners = {b if a == mixer else a for a, b in sc.cross_pairs(cfg) if mixer in (a, b)}
    panels = [(mixer, mixer)]
    for family in ("vit", "cnn"):
        panels += [tuple(sorted((mixer, n), key=order.index)) for n, m in cfg["models"].items()
                   if m["family"] == family and n in partners]
    return panels


def final_targets(cfg: dict) -> list[str]:
    out = []
    for name in cfg["models"]:
        out += figure_paths(cfg, "F1", name)
    for x, y in sc.cross_pairs(cfg):
        out += figure_paths(cfg, "F2", f"{x}__{y}")
    for mixer in sc.mixer_models(cfg):
        out += figure_paths(cfg, "F14", mixer)
    out += vision.final_targets(cfg)   # F3-F7, F9 and the ViT paper's views (V1-V5)
    from . import experiments           # F8, F10-F13

    for figure, stems in experiments.figure_stems(cfg).items():
        for stem in stems:
            out += figure_paths(cfg, figure, stem)
    return out
