"""F9: does the final layer keep spatial information? CKA between the input patch at position p and
the final-layer representation at every position q.

Extraction stores, per CKA minibatch, the Gram of the input cell at each chosen p and the
per-position Grams of the localization layer (the final layer; for a CNN whose final map is
smaller than 2 x 2, the last layer with a larger one). For each minibatch the HSIC of every
(p, q) pair comes from one :func:`seelike.cka.hsic_all_pairs` call; the minibatch estimator
combines them. Table columns: model, layer, grid_h, grid_w, p_row, p_col, q_row, q_col, cka, se,
status, diagonal (q == p), n_minibatches.

The per-position Grams are stored as float32, the input cells' Grams as float64; both are centred
and paired in float64 here. The stored float32 values are the float32 products themselves (a
float64 copy held the same bits), so float32 storage halves the bytes (ViT-B/16, b = 256: 51 MB
instead of 103 MB per minibatch, 411 MB per model at the paper's n_images 2048) and changes no
value. Against Grams from float64 products of the same activations the table differs by at most
1.2e-8 in CKA (tests/test_localization_float32.py, a small timm ViT through extraction,
2026-12-03). Storing only the positions F9 draws saves nothing: the figure draws every q for each p.
"""
from __future__ import annotations

import numpy as np

from .common import read_group, read_table, shard_paths, write_table
from .reducers import LOCALIZATION
from ..plotting import finish_figure, pyplot
from ..base import ConfigError
from ..registry import Analysis, Figure, models_for, section


def localization_cka(input_grams, layer_grams, estimator: str = "unbiased"):
    """(P, Q) CKA result from per-minibatch (m, P, b, b) input Grams and (m, Q, b, b) layer Grams."""
    from ..cka import cka_from_minibatch_hsic, hsic_all_pairs

    p = input_grams.shape[1]
    # layer Grams come as stored (float32); each minibatch is centred and paired in float64
    hsic = np.stack([hsic_all_pairs(np.concatenate([np.asarray(ig, np.float64), np.asarray(lg, np.float64)]), estimator)
                     for ig, lg in zip(input_grams, layer_grams)])
    res = cka_from_minibatch_hsic(hsic)
    return res.cka[:p, p:], res.se[:p, p:], res.status[:p, p:], res.n_minibatches


def compute(spec: dict) -> str:
    """spec: manifest, model, estimator, out, provenance_config."""
    import warnings

    import pandas as pd
    from ..cka import NegativeHSICWarning
    from ..manifest import load_manifest
    from ..store import layer_path

    manifest = load_manifest(spec["manifest"])
    ig, lg, meta = [], [], None
    for path in shard_paths(manifest):
        loc = read_group(path, LOCALIZATION, "localization Grams")
        if meta is None:
            meta = loc
            layer = manifest["layers"][int(loc["layer_index"])]
        lgram = read_group(path, layer_path(layer, "positions"))["gram"]
        if len(loc["minibatch_ids"]):
            ig.append(loc["input/gram"])
            lg.append(lgram)
    if not ig:
        raise ValueError(f"model '{spec['model']}': no minibatch holds localization Grams")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NegativeHSICWarning)
        cka, se, status, m = localization_cka(np.concatenate(ig), np.concatenate(lg), spec.get("estimator", "unbiased"))
    gh, gw = (int(v) for v in meta["grid"])
    rows = []
    for i, (pr, pc) in enumerate(meta["positions"]):
        for q in range(gh * gw):
            qr, qc = divmod(q, gw)
            rows.append({"model": spec["model"], "layer": layer, "grid_h": gh, "grid_w": gw, "p_row": int(pr),
                         "p_col": int(pc), "q_row": qr, "q_col": qc, "cka": cka[i, q], "se": se[i, q],
                         "status": str(status[i, q]), "diagonal": bool(qr == pr and qc == pc), "n_minibatches": m})
    return write_table(pd.DataFrame(rows), spec["out"], spec, inputs=[spec["manifest"]])


def figure(spec: dict) -> None:
    """spec: tables (one localization table), outputs, dpi."""
    from matplotlib.patches import Rectangle

    plt = pyplot()
    t = read_table(spec["tables"][0])
    gh, gw = int(t.grid_h.iloc[0]), int(t.grid_w.iloc[0])
    ps = t.drop_duplicates(["p_row", "p_col"])[["p_row", "p_col"]].values.tolist()
    vmax = max(1e-6, float(np.nanmax(t.cka.values)))
    fig, axes = plt.subplots(1, len(ps), figsize=(2.3 * len(ps) + 0.9, 2.7), squeeze=False)
    im = None
    for ax, (pr, pc) in zip(axes[0], ps):
        s = t[(t.p_row == pr) & (t.p_col == pc)]
        mat = np.full((gh, gw), np.nan)
        mat[s.q_row.values, s.q_col.values] = s.cka.values
        im = ax.imshow(mat, cmap="magma", vmin=0.0, vmax=vmax, interpolation="nearest")
        ax.add_patch(Rectangle((pc - 0.5, pr - 0.5), 1, 1, fill=False, ec="cyan", lw=1.5))
        ax.set_title(f"input patch ({pr}, {pc})", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.85, label="linear CKA")
    fig.suptitle(f"F9: {t.model.iloc[0]}, CKA of input patches with {t.layer.iloc[0]} at every position "
                 f"({gh}x{gw})", fontsize=9)
    finish_figure(fig, spec)


# ----------------------------------------------------------------------------- registration

DEFAULT_POSITIONS = [[0.1, 0.1], [0.1, 0.9], [0.5, 0.5], [0.9, 0.1], [0.9, 0.9]]


def _check(cfg: dict) -> None:
    for name in section(cfg, "localization").get("layers", {}):
        if name not in cfg["models"]:
            raise ConfigError(f"config key analyses.localization.layers.{name}: unknown model '{name}'")


def _taps(cfg: dict, model: str) -> dict:
    if model not in models_for(cfg, "localization"):
        return {}
    s = section(cfg, "localization")
    return {"localization": {"positions": [list(map(float, p)) for p in s.get("positions", DEFAULT_POSITIONS)],
                             "n_images": min(int(cfg["analysis"]["n_examples"]), int(s.get("n_images", 2048))),
                             "layer": s.get("layers", {}).get(model)}}


SETTINGS = {"positions": {"type": "array", "minItems": 1, "default": DEFAULT_POSITIONS,
                            "items": {"type": "array", "minItems": 2, "maxItems": 2,
                                      "items": {"type": "number", "minimum": 0, "maximum": 1}}},
              "n_images": {"type": "integer", "minimum": 1, "default": 2048},
              "layers": {"type": "object", "additionalProperties": {"type": "string"}, "default": {}}}   # analyses.localization, besides enabled and models


ANALYSIS = Analysis(
    name="localization", settings=SETTINGS, families=("vit", "mixer", "cnn"),
    why="localization needs a spatial grid (a ViT, Mixer or CNN)",
    source="dataset", compute=compute, step="vision", taps=_taps, check=_check,
    spec=lambda cfg, model: {"estimator": cfg["cka"]["estimator"]},
    figures=(Figure("F9", "localization", figure),),
    code=("analyses/reducers.py", "analyses/geometry.py", "cka.py"))
