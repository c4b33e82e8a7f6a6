"""F3/F4: mean attention distance of every head of every block, in pixels of the model's input.

For each query patch the attention-weighted distance between patch centres (prefix tokens left
out as queries and keys), averaged over the query patches of an image, then over the first
`analyses.attention_distance.n_images` images of the plan. The vision pass stores every image's
values and per-minibatch sums (:class:`seelike.analyses.reducers.AttentionReducer`), so a change of
`n_images` reruns this table only; this combines them exactly.

Table columns: model, block, block_index, head, distance (the plotted value: renormalised or raw
as configured), distance_renormalised, distance_raw, std_over_images and se (both of the
renormalised distance across images, whichever is plotted), prefix_attention,
n_images, grid_h, grid_w, cell_h, cell_w, image_h, image_w, uniform_distance (the distance of
uniform attention over the patches), less_data.
"""
from __future__ import annotations

import numpy as np

from . import geometry
from .common import by_unit, read_group, read_table, shard_paths, write_table
from .reducers import ATTN_DIST, GEOMETRY
from .. import paths
from ..base import ConfigError
from ..paths import dataset_key
from ..plotting import finish_figure, layer_axis, pyplot
from ..registry import Analysis, Figure, check_model_list, models_for, section


def selected_sums(units: dict, start: int, n_images: int) -> dict:
    """Per block, the sums over the images at plan positions [start, n_images) of a shard whose first image
    is at `start`: [renormalised, renormalised^2, raw, prefix mass] (4, heads) and the count. Whole
    minibatches add their stored sums in plan order; a minibatch the selection ends inside adds its
    selected images' per-image values."""
    out = {}
    for block, st in units.items():
        acc, count, pos, row = None, 0, start, 0
        for mb_sum, c in zip(st["minibatch_sums"], st["minibatch_counts"]):
            c = int(c)
            if pos >= n_images:
                break
            if pos + c > n_images:
                v = st["per_image"][row:row + n_images - pos].astype(np.float64)      # (k, 3, heads)
                mb_sum = np.stack([v[:, 0].sum(0), (v[:, 0] ** 2).sum(0), v[:, 1].sum(0), v[:, 2].sum(0)])
                c = n_images - pos
            acc = mb_sum if acc is None else acc + mb_sum
            count, pos, row = count + c, pos + c, row + c
        out[block] = (acc, count, int(st["index"]))
    return out


def compute(spec: dict) -> str:
    """spec: manifest (the vision pass), model, n_images, out, renormalize, less_data, provenance_config."""
    import pandas as pd
    from ..manifest import load_manifest

    manifest = load_manifest(spec["manifest"])
    n_images = int(spec["n_images"])
    totals, geom, start = {}, None, 0
    for path in shard_paths(manifest):
        units = by_unit(read_group(path, ATTN_DIST, "attention distances"))
        if geom is None:
            geom = read_group(path, GEOMETRY)
        for block, (acc, count, index) in selected_sums(units, start, n_images).items():
            t = totals.setdefault(block, {k: 0.0 for k in ("sum", "sum_sq", "raw_sum", "prefix_mass_sum", "count")})
            if count:
                for k, v in zip(("sum", "sum_sq", "raw_sum", "prefix_mass_sum"), acc):
                    t[k] = t[k] + v
                t["count"] = t["count"] + count
            t["index"] = index
        start += int(sum(next(iter(units.values()))["minibatch_counts"])) if units else 0
    grid, cell, size = geom["grid"], geom["cell"], geom["input_size"]
    uniform = float(geometry.pixel_distances(grid, cell).mean())
    rows = []
    for block, t in totals.items():
        n = int(t["count"])
        if n == 0:
            raise ValueError(f"model '{spec['model']}': no images were used for attention distances")
        mean = t["sum"] / n
        var = np.maximum(t["sum_sq"] / n - mean ** 2, 0.0) * (n / (n - 1) if n > 1 else np.nan)
        std = np.sqrt(var)
        raw = t["raw_sum"] / n
        for h in range(len(mean)):
            rows.append({
                "model": spec["model"], "block": block, "block_index": t["index"], "head": h,
                "distance": mean[h] if spec.get("renormalize", True) else raw[h],
                "distance_renormalised": mean[h], "distance_raw": raw[h], "std_over_images": std[h],
                "se": std[h] / np.sqrt(n), "prefix_attention": t["prefix_mass_sum"][h] / n, "n_images": n,
                "grid_h": int(grid[0]), "grid_w": int(grid[1]), "cell_h": float(cell[0]), "cell_w": float(cell[1]),
                "image_h": int(size[1]), "image_w": int(size[2]), "uniform_distance": uniform,
                "less_data": bool(spec.get("less_data", False))})
    table = pd.DataFrame(rows).sort_values(["block_index", "head"])
    return write_table(table, spec["out"], spec, inputs=[spec["manifest"]])


def _panel(ax, t, title):
    plt = pyplot()
    blocks = t.drop_duplicates("block_index").sort_values("block_index")
    heads = sorted(t["head"].unique())
    cmap = plt.get_cmap("viridis", max(2, len(heads)))
    for h in heads:
        s = t[t["head"] == h].sort_values("block_index")
        ax.scatter(s["block_index"], s["distance"], s=14, color=cmap(h), label=f"head {h}", zorder=3)
    mean = t.groupby("block_index")["distance"].mean()
    ax.plot(mean.index, mean.values, color="0.4", lw=1, zorder=2, label="mean over heads")
    ax.axhline(t["uniform_distance"].iloc[0], color="0.6", ls="--", lw=0.8, label="uniform attention")
    layer_axis(ax, "x", blocks["block_index"], blocks["block"], "block", "block")
    ax.set_title(title, fontsize=9)
    return len(heads)


def _ylabel(t) -> str:
    r = t.iloc[0]
    return (f"mean attention distance (pixels of the {r.image_h}x{r.image_w} input; "
            f"patches {r.cell_h:g}x{r.cell_w:g})")


def figure_f3(spec: dict) -> None:
    """spec: tables (one attention_distance table), outputs, dpi."""
    plt = pyplot()
    t = read_table(spec["tables"][0])
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    nh = _panel(ax, t, f"F3: {t.model.iloc[0]} ({int(t.n_images.iloc[0])} images)")
    ax.set_ylabel(_ylabel(t), fontsize=8)
    ax.set_ylim(bottom=0)
    if nh <= 16:
        ax.legend(fontsize=6, ncol=2, loc="lower right")
    finish_figure(fig, spec)


def figure_f4(spec: dict) -> None:
    """spec: tables (one per ViT, config order), outputs, dpi. Models trained on less data are marked."""
    plt = pyplot()
    tables = [read_table(p) for p in spec["tables"]]
    tables.sort(key=lambda t: bool(t.less_data.iloc[0]))   # the others first, then the less-data models
    n = len(tables)
    fig, axes = plt.subplots(1, n, figsize=(3.8 * n + 0.6, 4.0), sharey=True, squeeze=False)
    for ax, t in zip(axes[0], tables):
        tag = " (less data)" if bool(t.less_data.iloc[0]) else ""
        _panel(ax, t, f"{t.model.iloc[0]}{tag}")
        if tag:
            ax.set_facecolor("#f6f1e7")
    axes[0][0].set_ylabel("mean attention distance (pixels)")
    axes[0][0].set_ylim(bottom=0)
    fig.suptitle("F4: attention distance, models trained on less data (shaded) beside the others", fontsize=10)
    finish_figure(fig, spec)


# ----------------------------------------------------------------------------- registration

def less_data(cfg: dict) -> list[str]:
    """Models marked as trained on less data (F4 shades them)."""
    return list(section(cfg, "attention_distance").get("less_data", []))


def _check(cfg: dict) -> None:
    covered = models_for(cfg, "attention_distance")
    check_model_list(cfg, "analyses.attention_distance.less_data", less_data(cfg))
    for i, name in enumerate(less_data(cfg)):
        if name not in covered:
            raise ConfigError(f"config key analyses.attention_distance.less_data[{i}]: model '{name}' is not among the "
                              f"models whose attention distances are computed ({', '.join(covered) or 'none'})")


def _taps(cfg: dict, model: str) -> dict:
    if model not in models_for(cfg, "attention_distance"):
        return {}
    return {"attention_distance": {}}


def _spec(cfg: dict, model: str) -> dict:
    s = section(cfg, "attention_distance")
    return {"renormalize": bool(s.get("renormalize", True)), "less_data": model in less_data(cfg),
            "n_images": min(int(cfg["analysis"]["n_examples"]), int(s.get("n_images", 5000)))}


def _f4_stems(cfg: dict) -> list[str]:
    return [dataset_key(cfg)] if less_data(cfg) and models_for(cfg, "attention_distance") else []


def _f4_tables(cfg: dict, stem: str) -> list[str]:
    return [paths.table(cfg, "dataset", "attention_distance", m) for m in models_for(cfg, "attention_distance")]


SETTINGS = {"n_images": {"type": "integer", "minimum": 1, "default": 5000},
              "renormalize": {"type": "boolean", "default": True},
              "less_data": {"type": "array", "items": {"type": "string"}, "default": []}}   # analyses.attention_distance, besides enabled and models


ANALYSIS = Analysis(
    name="attention_distance", settings=SETTINGS, families=("vit",), why="attention distances need attention heads (a ViT)",
    source="dataset", compute=compute, step="vision", taps=_taps, spec=_spec, check=_check,
    figures=(Figure("F3", "attention distance", figure_f3),
             Figure("F4", "attention distance, less data", figure_f4, stems=_f4_stems, tables=_f4_tables)),
    code=("analyses/reducers.py", "analyses/geometry.py"))
