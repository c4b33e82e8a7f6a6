"""V3 attention maps and attention rollout, V4 attention similarity across layers (DeepViT's collapse).

Both come from the full attention weights extraction keeps for the plan's first
`analyses.attention_maps.n_images` examples (with their input images).

V3 table (one row per value): model, example (dataset index), kind, layer, layer_index, channel,
row, col, value. Kinds: ``image`` (the input, at most 64 px a side, scaled to [0, 1] per image),
``attention`` (the CLS token's attention to the patches, mean over heads; models without a
prefix token: the attention each patch receives, mean over heads and queries) and ``rollout``
(Abnar & Zuidema 2020: per layer 0.5 * mean-over-heads attention + 0.5 * identity, rows
renormalised, multiplied through the layers up to this one; the CLS row, or the mean row).

V4 table: model, layer_x, index_x, layer_y, index_y, similarity, n_images: the cosine similarity
of the attention maps of two layers (Zhou et al. 2021, DeepViT): for every head h and key token
t, cos(A^x[h, :, t], A^y[h, :, t]), averaged over heads, tokens and images.
"""
from __future__ import annotations

import numpy as np

from .common import MissingReduction, read_group, read_table, shard_paths, write_table
from .reducers import ATTN_MAPS, GEOMETRY
from ..plotting import finish_figure, layer_axis, pyplot
from .. import paths
from ..registry import Analysis, Figure, models_for, section


def rollout(weights: np.ndarray) -> np.ndarray:
    """(L, t, t) cumulative rollout after each layer from (L, heads, t, t) attention of one image."""
    a = weights.mean(1)
    t = a.shape[-1]
    r = np.eye(t)
    out = []
    for layer in a:
        m = 0.5 * layer + 0.5 * np.eye(t)
        m = m / m.sum(-1, keepdims=True)
        r = m @ r
        out.append(r)
    return np.stack(out)


def layer_similarity(weights: np.ndarray) -> np.ndarray:
    """(L, L) DeepViT cross-layer similarity from (n, L, heads, t, t) attention weights."""
    w = np.asarray(weights, dtype=np.float64)
    norm = np.linalg.norm(w, axis=-2, keepdims=True)          # per column (key token t)
    c = w / np.where(norm > 0, norm, 1.0)
    # sum over queries of the product of normalised columns, averaged over images, heads, tokens
    return np.einsum("nlhqt,nmhqt->lm", c, c) / (w.shape[0] * w.shape[2] * w.shape[-1])


def _spatial_map(row: np.ndarray, p: int, grid) -> np.ndarray:
    m = row[p:].reshape(grid)
    s = m.sum()
    return m / s if s > 0 else m


def _downsample(img: np.ndarray, limit: int = 64) -> np.ndarray:
    c, h, w = img.shape
    f = max(1, -(-max(h, w) // limit))
    h2, w2 = h // f, w // f
    img = img[:, :h2 * f, :w2 * f].reshape(c, h2, f, w2, f).mean((2, 4))
    lo, hi = img.min(), img.max()
    return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)


def compute(spec: dict) -> list[str]:
    """spec: manifest, model, out (maps), out_similarity, provenance_config."""
    import pandas as pd
    from ..manifest import load_manifest

    manifest = load_manifest(spec["manifest"])
    weights, images, examples, geom = [], [], [], None
    for path in shard_paths(manifest):
        if geom is None:
            geom = read_group(path, GEOMETRY, "token geometry")
        try:
            g = read_group(path, ATTN_MAPS)
        except MissingReduction:
            continue   # shards past the first n_images examples hold no maps
        weights.append(g["weights"])
        images.append(g["images"])
        examples.append(g["example_indices"])
    if not weights:
        raise ValueError(f"model '{spec['model']}': no shard holds attention maps (extracted without the "
                         "attention_maps taps?)")
    w, img, ex = np.concatenate(weights), np.concatenate(images), np.concatenate(examples)
    grid = tuple(int(v) for v in geom["grid"])
    n, n_layers, _h, t, _ = w.shape
    p = t - grid[0] * grid[1]
    names = [f"block{i}" for i in range(n_layers)]
    frames = []
    for k in range(n):
        small = _downsample(img[k])
        c, h, wd = small.shape
        ci, ri, wi = np.meshgrid(np.arange(c), np.arange(h), np.arange(wd), indexing="ij")
        frames.append(pd.DataFrame({"model": spec["model"], "example": int(ex[k]), "kind": "image", "layer": "",
                                    "layer_index": -1, "channel": ci.ravel(), "row": ri.ravel(), "col": wi.ravel(),
                                    "value": small.ravel()}))
        roll = rollout(w[k])
        rr, cc = np.meshgrid(np.arange(grid[0]), np.arange(grid[1]), indexing="ij")
        for li in range(n_layers):
            mean_heads = w[k, li].mean(0)
            att_row = mean_heads[0] if p else mean_heads[p:].mean(0)
            roll_row = roll[li][0] if p else roll[li][p:].mean(0)
            for kind, row in (("attention", att_row), ("rollout", roll_row)):
                frames.append(pd.DataFrame({"model": spec["model"], "example": int(ex[k]), "kind": kind,
                                            "layer": names[li], "layer_index": li, "channel": 0, "row": rr.ravel(),
                                            "col": cc.ravel(), "value": _spatial_map(row, p, grid).ravel()}))
    write_table(pd.concat(frames, ignore_index=True), spec["out"], spec, inputs=[spec["manifest"]])
    sim = layer_similarity(w)
    ii, jj = np.meshgrid(np.arange(n_layers), np.arange(n_layers), indexing="ij")
    table = pd.DataFrame({"model": spec["model"], "layer_x": [names[i] for i in ii.ravel()], "index_x": ii.ravel(),
                          "layer_y": [names[j] for j in jj.ravel()], "index_y": jj.ravel(), "similarity": sim.ravel(),
                          "n_images": n})
    write_table(table, spec["out_similarity"], spec, inputs=[spec["manifest"]])
    return [spec["out"], spec["out_similarity"]]


def shown_blocks(n_layers: int, max_blocks: int) -> list[int]:
    """The blocks V3 draws: every block up to `max_blocks`, else `max_blocks` evenly spaced ones
    from the first to the last."""
    if n_layers <= max_blocks:
        return list(range(n_layers))
    return sorted(set(np.round(np.linspace(0, n_layers - 1, max_blocks)).astype(int).tolist()))


def figure_maps(spec: dict, max_examples: int = 6, max_blocks: int = 12) -> None:
    """spec: tables (the attention_maps table), outputs, dpi. Every block up to `max_blocks` blocks;
    past it evenly spaced ones, which the title says."""
    plt = pyplot()
    t = read_table(spec["tables"][0], keep_default_na=False)
    examples = list(dict.fromkeys(t.example.tolist()))[:max_examples]
    n_layers = int(t.layer_index.max()) + 1
    shown = shown_blocks(n_layers, max_blocks)
    names = dict(zip(t.layer_index, t.layer))
    cols = 1 + len(shown) + 1
    fig, axes = plt.subplots(len(examples), cols, figsize=(1.5 * cols, 1.55 * len(examples) + 0.7), squeeze=False)
    for r, e in enumerate(examples):
        s = t[t.example == e]
        im = s[s.kind == "image"]
        c, h, w = int(im.channel.max()) + 1, int(im.row.max()) + 1, int(im.col.max()) + 1
        img = np.zeros((c, h, w))
        img[im.channel.values, im.row.values, im.col.values] = im.value.values
        panels = [("image", img.transpose(1, 2, 0) if c == 3 else img[0], None)]
        for li in shown:
            panels.append((names[li], s[(s.kind == "attention") & (s.layer_index == li)], "viridis"))
        panels.append((f"rollout to {names[n_layers - 1]}",
                       s[(s.kind == "rollout") & (s.layer_index == n_layers - 1)], "viridis"))
        for ci, (title, data, cmap) in enumerate(panels):
            ax = axes[r][ci]
            if cmap is None:
                ax.imshow(data, interpolation="nearest")
            else:
                gh, gw = int(data.row.max()) + 1, int(data.col.max()) + 1
                m = np.zeros((gh, gw))
                m[data.row.values, data.col.values] = data.value.values
                ax.imshow(m, cmap=cmap, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=7)
        axes[r][0].set_ylabel(f"#{e}", fontsize=7)
    which = (f"all {n_layers} blocks" if len(shown) == n_layers else
             f"{len(shown)} of its {n_layers} blocks, evenly spaced (the table has every block)")
    fig.suptitle(f"V3: attention maps of {t.model.iloc[0]}, {which}, then the rollout through all blocks\n"
                 "attention to each patch, mean over heads (CLS query; without a CLS token: mean over queries); "
                 "each map scaled to its own range", fontsize=8)
    finish_figure(fig, spec)


def figure_similarity(spec: dict) -> None:
    """spec: tables (the attention_similarity table), outputs, dpi."""
    plt = pyplot()
    t = read_table(spec["tables"][0])
    n = int(t.index_x.max()) + 1
    mat = np.zeros((n, n))
    mat[t.index_x.values, t.index_y.values] = t.similarity.values
    names = t.drop_duplicates("index_x").sort_values("index_x").layer_x.tolist()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(8.4, 3.8), layout="constrained")
    im = ax.imshow(mat, origin="lower", cmap="magma", vmin=0, vmax=1, interpolation="nearest")
    layer_axis(ax, "x", range(n), names, "block", "layer_y")
    layer_axis(ax, "y", range(n), names, "block", "layer_x")
    fig.colorbar(im, ax=ax, shrink=0.85, label="attention-map cosine similarity")
    adj = [mat[i, i + 1] for i in range(n - 1)]
    ax2.plot(range(1, n), adj, marker="o")
    layer_axis(ax2, "x", range(1, n), names[1:], "block", "layer_x")
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("similarity with the previous block")
    fig.suptitle(f"V4: attention similarity across layers (DeepViT collapse), {t.model.iloc[0]} "
                 f"({int(t.n_images.iloc[0])} images)", fontsize=9)
    finish_figure(fig, spec)


# ----------------------------------------------------------------------------- registration

def _taps(cfg: dict, model: str) -> dict:
    if model not in models_for(cfg, "attention_maps"):
        return {}
    n = min(int(cfg["analysis"]["n_examples"]), int(section(cfg, "attention_maps").get("n_images", 8)))
    return {"attention_maps": {"n_images": n}}


def _similarity_table(cfg: dict, model: str) -> str:
    return paths.table(cfg, "dataset", "attention_similarity", model)


SETTINGS = {"n_images": {"type": "integer", "minimum": 1, "default": 8}}   # analyses.attention_maps, besides enabled and models


ANALYSIS = Analysis(
    name="attention_maps", settings=SETTINGS, families=("vit",), why="attention maps need attention heads (a ViT)",
    source="dataset", tables=("attention_maps", "attention_similarity"), compute=compute, step="vision",
    taps=_taps, spec=lambda cfg, model: {"out_similarity": _similarity_table(cfg, model)},
    figures=(Figure("V3", "attention maps and rollout", figure_maps),
             Figure("V4", "attention similarity across layers", figure_similarity,
                    tables=lambda cfg, model: [_similarity_table(cfg, model)])),
    code=("analyses/reducers.py",))
