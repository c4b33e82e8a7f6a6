"""CKA of every layer pair of two models (or one model with itself) from the stored Grams.

No pass over the images: each shard holds per-minibatch Grams, every pair's HSIC comes from one
matrix product per minibatch, and the spread across minibatches gives a standard error.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

COLUMNS = ["model_x", "layer_x", "index_x", "model_y", "layer_y", "index_y", "cka", "se", "ci_low", "ci_high",
           "batch_std", "n_minibatches", "n_examples", "estimator", "status"]


class PlanMismatch(ValueError):
    pass


def check_same_plan(a: dict, b: dict) -> None:
    """Raise PlanMismatch unless the manifests ``a`` and ``b`` come from the same example plan."""
    from .plan import plan_differences

    diff = plan_differences(a["plan"], b["plan"])
    if diff:
        raise PlanMismatch(f"cannot compare '{a['model']}' and '{b['model']}': their shards come from different "
                           f"example plans (differing keys: {', '.join(diff)}); re-extract both with the same config")


def minibatch_hsic(manifests: list[dict], estimator: str) -> tuple[np.ndarray, list[tuple[str, int, str]], int]:
    """(m, L, L) HSIC of every layer pair of the stacked models, per minibatch, after validating shards."""
    from .cka import hsic_all_pairs
    from .manifest import checked_shard, discard_shard, shard_digests
    from .store import read_grams

    base = manifests[0]
    for other in manifests[1:]:
        check_same_plan(base, other)
    rows = [(m["model"], i, l) for m in manifests for i, l in enumerate(m["layers"])]
    digests = shard_digests(manifests)
    per_batch, n_examples = [], 0
    plan, b = base["plan"], base["plan"]["minibatch_size"]
    buf = np.empty((plan["minibatches_per_shard"], len(rows), b, b))
    for s in range(len(base["shards"])):
        infos = [checked_shard(m, m["shards"][s], plan, digests) for m in manifests]
        stacked = buf[:len(infos[0].example_indices) // b]   # the last shard may hold fewer minibatches
        at = 0
        for m, info in zip(manifests, infos):
            read_grams(info.path, m["layers"], out=stacked, at=at)   # (mb, L, b, b), each model's layers in turn
            bad = ~np.isfinite(stacked[:, at:at + len(m["layers"])]).all(axis=(2, 3))
            if bad.any():   # bytes as extracted (sha256), values not: the extraction wrote them so
                mb, layer = map(int, np.argwhere(bad)[0])
                raise discard_shard(m, info.path, f"shard '{info.path}' holds non-finite values in the Gram of layer "
                                                  f"'{m['layers'][layer]}' of model '{m['model']}' in minibatch "
                                                  f"{int(np.unique(info.minibatch_ids)[mb])}")
            at += len(m["layers"])
        for mb in range(stacked.shape[0]):
            per_batch.append(hsic_all_pairs(stacked[mb], estimator=estimator))
            n_examples += stacked.shape[-1]
    return np.stack(per_batch), rows, n_examples


def cka_table(manifest_x: dict, manifest_y: dict | None, estimator: str):
    """Tidy table of CKA between every layer of x and every layer of y (y = x when None)."""
    same = manifest_y is None or manifest_y["model"] == manifest_x["model"]
    manifests = [manifest_x] if same else [manifest_x, manifest_y]
    hsic, rows, n_examples = minibatch_hsic(manifests, estimator)
    return hsic_table(hsic, rows, len(manifest_x["layers"]), same, n_examples, estimator)


def hsic_table(hsic: np.ndarray, rows: list[tuple[str, int, str]], lx: int, same: bool, n_examples: int,
               estimator: str, remedy: str = "increase cka.minibatch_size"):
    """The tidy CKA table (:data:`COLUMNS`) from (m, L, L) per-minibatch HSIC of stacked layers.

    rows: (model, index, layer) of each of the L layers, x's first; lx: how many belong to x; same: x
    compared with itself (the L rows are x's alone). Every layer of x against every layer of y, with the
    jackknife standard error and a 95% interval (Student's t, minibatches - 1 degrees of freedom). Layer
    pairs whose CKA is undefined get a status other than "ok", and a warning that ends with ``remedy``.
    """
    import pandas as pd
    from .cka import NegativeHSICWarning, cka_from_minibatch_hsic

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NegativeHSICWarning)
        res = cka_from_minibatch_hsic(hsic)
    xs = range(lx)
    ys = range(lx) if same else range(lx, len(rows))
    ci_low, ci_high = res.interval(0.95)
    records = []
    for i in xs:
        for j in ys:
            c, se = res.cka[i, j], res.se[i, j]
            records.append({
                "model_x": rows[i][0], "layer_x": rows[i][2], "index_x": rows[i][1],
                "model_y": rows[j][0], "layer_y": rows[j][2], "index_y": rows[j][1],
                "cka": c, "se": se, "ci_low": ci_low[i, j], "ci_high": ci_high[i, j],
                "batch_std": res.batch_std[i, j], "n_minibatches": res.n_minibatches, "n_examples": n_examples,
                "estimator": estimator, "status": str(res.status[i, j])})
    table = pd.DataFrame.from_records(records, columns=COLUMNS)
    bad = table[table.status != "ok"]
    if len(bad):
        layers = sorted(set(bad.layer_x) | set(bad.layer_y))
        msg = (f"CKA undefined for {len(bad)} layer pairs: the {estimator} self-HSIC estimate is <= 0 for layer(s) "
               f"{', '.join(layers)}; these rows have status '{bad.status.iloc[0]}' ({remedy})")
        warnings.warn(msg, NegativeHSICWarning)
        print(f"seelike: warning: {msg}", flush=True)
    for w in caught:
        if not issubclass(w.category, NegativeHSICWarning):
            warnings.warn(w.message, w.category)
    return table


def compute_pair(spec: dict) -> str:
    """Step function. spec keys: manifest_x, manifest_y (or None), estimator, out, provenance_config."""
    from . import provenance
    from .fileio import atomic_write
    from .manifest import load_manifest

    mx = load_manifest(spec["manifest_x"])
    my = load_manifest(spec["manifest_y"]) if spec.get("manifest_y") else None
    table = cka_table(mx, my, spec["estimator"])
    out = Path(spec["out"])
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.10g")
    inputs = [spec["manifest_x"]] + ([spec["manifest_y"]] if spec.get("manifest_y") else [])
    provenance.write_sidecar(out, provenance.collect(spec.get("provenance_config"), inputs=inputs))
    return str(out)
