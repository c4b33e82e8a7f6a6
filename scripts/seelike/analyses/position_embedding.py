"""V2: the ViT paper's cosine similarity between learned position embeddings, from the checkpoint alone.

Every pair of patch positions (prefix-token embeddings left out). Table columns: model, p_row,
p_col, q_row, q_col, cosine.
"""
from __future__ import annotations

import numpy as np

from .common import checkpoint_model, read_table, write_table
from ..plotting import finish_figure, pyplot
from ..registry import Analysis, Figure


def position_cosine(pos: np.ndarray) -> np.ndarray:
    """(N, N) cosine similarity of (N, D) position embeddings."""
    p = np.asarray(pos, dtype=np.float64)
    n = np.linalg.norm(p, axis=1, keepdims=True)
    q = p / np.where(n > 0, n, 1.0)
    return q @ q.T


def compute(spec: dict) -> str:
    """spec: card, model, out."""
    import pandas as pd
    from ..models.residual import patch_geometry

    card, model = checkpoint_model(spec)
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


def figure(spec: dict) -> None:
    """spec: tables (one position_embedding table), outputs, dpi."""
    plt = pyplot()
    t = read_table(spec["tables"][0])
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


# ----------------------------------------------------------------------------- registration

SETTINGS = {}   # analyses.position_embedding, besides enabled and models


ANALYSIS = Analysis(
    name="position_embedding", settings=SETTINGS, families=("vit",),
    why="position-embedding similarity needs a ViT's learned position embeddings",
    source="checkpoint", compute=compute, step="vision",
    figures=(Figure("V2", "position-embedding similarity", figure),))
