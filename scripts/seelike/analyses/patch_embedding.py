"""V1: the ViT paper's principal components of the patch-embedding filters, from the checkpoint alone.

The patchify convolution's D filters of C x p x p weights, centred over the D filters, shown as
images. Table columns: model, component, explained_variance_ratio, channel, row, col, value.
"""
from __future__ import annotations

import numpy as np

from .common import checkpoint_model, read_table, write_table
from ..plotting import finish_figure, pyplot
from ..registry import Analysis, Figure, section


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


def compute(spec: dict) -> str:
    """spec: card, model, n_components, out."""
    import pandas as pd

    card, model = checkpoint_model(spec)
    w = patch_embedding_conv(model, spec["model"]).weight.detach().cpu().numpy()
    comps, ratio = principal_components(w, spec.get("n_components", 28))
    k, c, ph, pw = comps.shape
    ci, ri, wi = np.meshgrid(np.arange(c), np.arange(ph), np.arange(pw), indexing="ij")
    frames = [pd.DataFrame({"model": spec["model"], "component": i, "explained_variance_ratio": ratio[i],
                            "channel": ci.ravel(), "row": ri.ravel(), "col": wi.ravel(), "value": comps[i].ravel()})
              for i in range(k)]
    return write_table(pd.concat(frames, ignore_index=True), spec["out"], spec, inputs=[spec["card"]])


def figure(spec: dict) -> None:
    """spec: tables (one patch_embedding table), outputs, dpi."""
    plt = pyplot()
    t = read_table(spec["tables"][0])
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


# ----------------------------------------------------------------------------- registration

SETTINGS = {"n_components": {"type": "integer", "minimum": 1, "default": 28}}   # analyses.patch_embedding, besides enabled and models


ANALYSIS = Analysis(
    name="patch_embedding", settings=SETTINGS, families=("vit", "mixer"),
    why="patch-embedding components need a patch embedding (a ViT or a Mixer)",
    source="checkpoint", compute=compute, step="vision",
    spec=lambda cfg, model: {"n_components": int(section(cfg, "patch_embedding").get("n_components", 28))},
    figures=(Figure("V1", "patch-embedding components", figure),))
