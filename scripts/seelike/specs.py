"""What each rule hands its step: the config subset a result depends on, and nothing else.

Rules pass these specs as params, so Snakemake reruns a step exactly when its subset changes;
settings that do not change results (executor, resources) travel separately.
"""
from __future__ import annotations

from pathlib import Path

from . import paths, registry
from .base import digest
from .manifest import SHARD_NAME
from .paths import dataset_key

#: the settings of each extraction pass that enter its shards' provenance, and so decide their reuse
EXTRACT_PROVENANCE = ("model", "dataset_key", "dataset", "split", "precision", "gram_precision", "sublayers",
                      "full_tokens")
VISION_PROVENANCE = ("model", "kind", "dataset_key", "dataset", "split", "precision", "sublayers", "taps")


def plan_spec(cfg: dict) -> dict:
    d = dataset_key(cfg)
    return {"dataset_key": d, "dataset": cfg["datasets"][d], "split": cfg["analysis"]["split"],
            "n_examples": cfg["analysis"]["n_examples"], "minibatch_size": cfg["cka"]["minibatch_size"],
            "minibatches_per_shard": cfg["extraction"]["minibatches_per_shard"], "seed": cfg["analysis"]["seed"],
            "out": paths.plan(d)}


def rendered_path(cfg: dict, dataset: str, split: str) -> str | None:
    """Where the render rule puts a synthetic split (None for image folders, which are read directly)."""
    from .data import render_key

    entry = cfg["datasets"][dataset]
    if entry["kind"] != "synthetic":
        return None
    return paths.fill(paths.RENDERED, dataset=dataset, split=split, key=render_key(entry, split))


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
            "layers": m.get("layers", "auto"), "out_dir": paths.model_dir(name)}
    if m["source"]["kind"] == "recipe":
        spec["recipe"] = m["recipe"]
        if m["recipe"].get("init_from"):
            spec["init_card"] = paths.card(m["recipe"]["init_from"])
        spec["dataset"] = cfg["datasets"][m["recipe"]["dataset"]]
        if m["recipe"].get("test_dataset"):
            spec["test_dataset"] = cfg["datasets"][m["recipe"]["test_dataset"]]
        spec["device"] = cfg["device"]
        spec["precision"] = m["recipe"].get("precision", cfg["precision"])
    spec["spec_hash"] = digest(spec)
    rendered = model_rendered(cfg, name)   # where the pixels are read from, not what is trained: outside the hash
    if rendered:
        spec["rendered"] = rendered
    return spec


def extract_spec(cfg: dict, name: str) -> dict:
    """The model's pass for the CKA Grams (and pooled features, logits, full tokens). No vision setting
    enters it: those are the vision pass's (:func:`vision_extract_spec`), so they never rerun it or the
    CKA tables."""
    d = dataset_key(cfg)
    spec = {"model": name, "kind": "activations", "dataset_key": d, "dataset": cfg["datasets"][d],
            "split": cfg["analysis"]["split"], "device": cfg["device"], "precision": cfg["precision"],
            "sublayers": cfg["extraction"]["sublayers"], "full_tokens": cfg["extraction"]["full_tokens"],
            "gram_precision": cfg["extraction"]["gram_precision"], "num_workers": cfg["extraction"]["num_workers"],
            "card": paths.card(name), "plan_file": paths.plan(d), "out_dir": paths.extract_dir(cfg, name)}
    rendered = rendered_path(cfg, d, spec["split"])
    if rendered:
        spec["rendered"] = rendered
    spec["provenance_config"] = {k: spec[k] for k in EXTRACT_PROVENANCE}
    return spec


def vision_pass(spec: dict, out_dir, taps: dict) -> dict:
    """The vision pass of the Grams' pass ``spec`` (:func:`extract_spec`): the same model, data and plan in
    a forward pass of its own, with ``taps`` and without the Grams' settings, its shards in ``out_dir``."""
    spec = {k: v for k, v in spec.items() if k not in ("full_tokens", "gram_precision", "out")}
    spec.update(kind="vision", out_dir=str(out_dir), taps=taps)
    spec["provenance_config"] = {k: spec[k] for k in VISION_PROVENANCE}
    return spec


def vision_extract_spec(cfg: dict, name: str) -> dict:
    """The model's vision pass: what the vision analyses that cover it tap and reduce
    (:func:`seelike.registry.extraction_taps`), over the same plan, in a forward pass of its own."""
    return vision_pass(extract_spec(cfg, name), paths.vision_dir(cfg, name), registry.extraction_taps(cfg, name))


def shard_job_spec(spec: dict, plan: dict) -> dict:
    """What each shard's job of the extraction pass ``spec`` is handed (:func:`seelike.extract.extract_shard`):
    the spec with the plan itself (a plan file's dict) and the pattern of the shards' files in its ``out_dir``."""
    return dict(spec, plan=plan, out=str(Path(spec["out_dir"]) / SHARD_NAME))


def cka_spec(cfg: dict, x: str, y: str) -> dict:
    d = dataset_key(cfg)
    spec = {"manifest_x": paths.manifest(cfg, x), "manifest_y": None if x == y else paths.manifest(cfg, y),
            "estimator": cfg["cka"]["estimator"], "out": paths.cka_table(cfg, x, y)}
    spec["provenance_config"] = {"models": [x, y], "estimator": spec["estimator"], "dataset": d}
    return spec


def archive_spec(cfg: dict, config_file: str, snakefile: str) -> dict:
    return {"out": paths.archive(cfg["run_name"]), "config_file": config_file, "snakefile": snakefile,
            "include_large": cfg["archive"]["include_large"]}


def final_targets(cfg: dict) -> list[str]:
    """Every figure the config asks for (the CKA, vision and experiment tables are their inputs), and the
    tables no figure draws (the findings)."""
    return registry.final_tables(cfg) + registry.final_figures(cfg)
