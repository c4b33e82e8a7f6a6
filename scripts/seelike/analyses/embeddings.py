"""V1, V2: the ViT paper's views of the embeddings, from the checkpoint alone.

V1: principal components of the patch-embedding filters (the patchify convolution's D filters of
C x p x p weights, centred over the D filters), shown as images. Table columns: model, component,
explained_variance_ratio, channel, row, col, value.

V2: cosine similarity between the learned position embeddings of every pair of patch positions
(prefix-token embeddings left out). Table columns: model, p_row, p_col, q_row, q_col, cosine.
"""
from __future__ import annotations

import numpy as np

from .common import finish_figure, mpl, write_table


def patch_embedding_conv(model, model_name: str = "model"):
    """The patchify convolution (kernel size == stride) of a ViT or Mixer."""
    from torch import nn

    for attr in ("patch_embed", "stem"):
        pe = getattr(model, attr, None)
        conv = getattr(pe, "proj", None) if pe is not None else None
        if isinstance(conv, nn.Conv2d) and tuple(conv.kernel_size) == tuple(conv.stride):
            return conv
    raise ValueError(f"model '{model_name}' ({type(model).__name__}) has no patch embedding "
                     "(a patch_embed.proj / stem.proj convolution with kernel size = stride)")


def principal_components(weights: np.ndarray, k: int):
    """(components (k, C, p, p), explained variance ratios (k,)) of (D, C, p, p) filters, float64.

    PCA over the D filters as samples (mean filter removed). Signs are fixed so that each
    component's largest-magnitude entry is positive.
    """
    w = np.asarray(weights, dtype=np.float64)
    flat = w.reshape(w.shape[0], -1)
    flat = flat - flat.mean(0, keepdims=True)
    _u, s, vt = np.linalg.svd(flat, full_matrices=False)
    var = s ** 2
    ratio = var / var.sum() if var.sum() > 0 else np.zeros_like(var)
    k = min(int(k), vt.shape[0])
    comps = vt[:k]
    sign = np.sign(comps[np.arange(k), np.abs(comps).argmax(1)])
    comps = comps * np.where(sign == 0, 1.0, sign)[:, None]
    return comps.reshape(k, *w.shape[1:]), ratio[:k]


def position_cosine(pos: np.ndarray) -> np.ndarray:
    """(N, N) cosine similarity of (N, D) position embeddings."""
    p = np.asarray(pos, dtype=np.float64)
    n = np.linalg.norm(p, axis=1, keepdims=True)
    q = p / np.where(n > 0, n, 1.0)
    return q @ q.T


def _load(spec):
    from pathlib import Path

    from ..models.build import build_model
    from ..models.card import ModelCard

    card = ModelCard.load(spec["card"])
    return card, build_model(card, Path(spec["card"]).parent, device="cpu")


def compute_patch_embedding(spec: dict) -> str:
    """spec: card, model, n_components, out."""
    import pandas as pd

    card, model = _load(spec)
    w = patch_embedding_conv(model, spec["model"]).weight.detach().cpu().numpy()
    comps, ratio = principal_components(w, spec.get("n_components", 28))
    k, c, ph, pw = comps.shape
    ci, ri, wi = np.meshgrid(np.arange(c), np.arange(ph), np.arange(pw), indexing="ij")
    frames = [pd.DataFrame({"model": spec["model"], "component": i, "explained_variance_ratio": ratio[i],
                            "channel": ci.ravel(), "row": ri.ravel(), "col": wi.ravel(), "value": comps[i].ravel()})
              for i in range(k)]
    return write_table(pd.concat(frames, ignore_index=True), spec["out"], spec, inputs=[spec["card"]])


def compute_position_embedding(spec: dict) -> str:
    """spec: card, model, out."""
    import pandas as pd
    from ..models.residual import patch_geometry

    card, model = _load(spec)
    pe = getattr(model, "pos_embed", None)
    if pe is None:
        raise ValueError(f"model '{spec['model']}' ({type(model).__name__}) has no learned position embedding "
                         "(pos_embed); leave it out of analyses.position_embedding.models")
    pos = pe.detach().cpu().numpy().reshape(-1, pe.shape[-1])
    if not getattr(model, "no_embed_class", False):
        pos = pos[card.num_prefix_tokens:]
    grid, _cell = patch_geometry(model, pos.shape[0], tuple(card.input_size[1:]))
    cos = position_cosine(pos)
    n = pos.shape[0]
    pi, qi = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    table = pd.DataFrame({"model": spec["model"], "p_row": pi.ravel() // grid[1], "p_col": pi.ravel() % grid[1],
                          "q_row": qi.ravel() // grid[1], "q_col": qi.ravel() % grid[1], "cosine": cos.ravel()})
    return write_table(table, spec["out"], spec, inputs=[spec["card"]])


def figure_patch_embedding(spec: dict) -> None:
    """spec: tables (one patch_embedding table), outputs, dpi."""
    import pandas as pd

    plt = mpl()
    t = pd.read_csv(spec["tables"][0])
    comps = sorted(t.component.unique())
    c, ph, pw = int(t.channel.max()) + 1, int(t.row.max()) + 1, int(t.col.max()) + 1
    cols = min(7, len(comps))
    rows = -(-len(comps) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.45 * rows + 0.5), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, k in zip(axes.ravel(), comps):
        s = t[t.component == k]
        img = np.zeros((c, ph, pw))
        img[s.channel.values, s.row.values, s.col.values] = s.value.values
        img = img - img.min()
        img = img / max(img.max(), 1e-12)
        ax.imshow(img.transpose(1, 2, 0) if c == 3 else img[0], cmap=None if c == 3 else "gray",
                  interpolation="nearest")
        ax.set_title(f"PC{k + 1} {100 * s.explained_variance_ratio.iloc[0]:.1f}%", fontsize=6)
    fig.suptitle(f"V1: principal components of the patch-embedding filters of {t.model.iloc[0]}", fontsize=9)
    finish_figure(fig, spec)


def figure_position_embedding(spec: dict) -> None:
    """spec: tables (one position_embedding table), outputs, dpi."""
    import pandas as pd

    plt = mpl()
    t = pd.read_csv(spec["tables"][0])
    gh, gw = int(t.p_row.max()) + 1, int(t.p_col.max()) + 1
    cube = np.zeros((gh, gw, gh, gw))
    cube[t.p_row.values, t.p_col.values, t.q_row.values, t.q_col.values] = t.cosine.values
    fig, axes = plt.subplots(gh, gw, figsize=(0.55 * gw + 1.2, 0.55 * gh + 0.6), squeeze=False)
    im = None
    for r in range(gh):
        for c in range(gw):
            ax = axes[r][c]
            im = ax.imshow(cube[r, c], cmap="viridis", vmin=-1, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="cosine similarity")
    fig.suptitle(f"V2: position-embedding similarity, {t.model.iloc[0]}\n(each tile: one position against all)",
                 fontsize=8)
    finish_figure(fig, spec)
