"""Drawing: matplotlib (imported only when a figure is drawn), CKA heatmaps, saving figures with their
provenance. Figures are drawn from the tidy tables on disk, never from in-memory results; table
computation never imports this module's matplotlib."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def pyplot():
    """matplotlib.pyplot on the Agg backend (no screen on a cluster node)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def cka_matrix(table):
    """(layers_x, layers_y, matrix) from a CKA table; rows = layers of x in depth order."""
    t = table.sort_values(["index_x", "index_y"])
    lx = t.drop_duplicates("index_x").sort_values("index_x")["layer_x"].tolist()
    ly = t.drop_duplicates("index_y").sort_values("index_y")["layer_y"].tolist()
    mat = np.full((len(lx), len(ly)), np.nan)
    mat[t["index_x"].to_numpy(), t["index_y"].to_numpy()] = t["cka"].to_numpy()
    return lx, ly, mat


def _ticks(ax, labels, axis):
    step = max(1, len(labels) // 16)  # keep labels readable for deep models
    pos = list(range(0, len(labels), step))
    if axis == "x":
        ax.set_xticks(pos)
        ax.set_xticklabels([labels[i] for i in pos], rotation=90, fontsize=7)
    else:
        ax.set_yticks(pos)
        ax.set_yticklabels([labels[i] for i in pos], fontsize=7)


def draw_heatmap(ax, table, title: str):
    lx, ly, mat = cka_matrix(table)
    im = ax.imshow(mat, origin="lower", vmin=0.0, vmax=1.0, cmap="magma", aspect="auto", interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_ylabel(f"{table['model_x'].iloc[0]} layer")
    ax.set_xlabel(f"{table['model_y'].iloc[0]} layer")
    _ticks(ax, lx, "y")
    _ticks(ax, ly, "x")
    if (table["status"] != "ok").any():
        ax.text(0.01, 0.99, "grey: CKA undefined (self-HSIC <= 0)", transform=ax.transAxes, fontsize=6, va="top")
    return im


def save(fig, outputs: list[str | Path], dpi: int = 150) -> None:
    from .fileio import atomic_write

    for out in outputs:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        fmt = out.suffix.lstrip(".")
        # No timestamps: a figure redrawn from the same table is byte-identical (archives are checked so).
        meta = {"pdf": {"CreationDate": None, "ModDate": None}, "svg": {"Date": None}}.get(fmt)
        with atomic_write(out) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight", metadata=meta)


def heatmap_figure(tables: list, titles: list[str], suptitle: str | None = None):
    """One CKA heatmap panel per table, side by side, with one colour bar."""
    plt = pyplot()
    n = len(tables)
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n + 0.8, 4.4), squeeze=False)
    fig.subplots_adjust(wspace=0.55)  # room for each panel's layer names
    im = None
    for ax, table, title in zip(axes[0], tables, titles):
        im = draw_heatmap(ax, table, title)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.85, label="linear CKA")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return fig


def finish_figure(fig, spec: dict) -> None:
    """Save to every output (PDF/PNG/SVG, atomically) with a provenance sidecar naming the tables and
    holding the spec, enough to redraw the figure from its tables alone (seelike archive redraw)."""
    from . import provenance

    save(fig, spec["outputs"], spec.get("dpi", 150))
    pyplot().close(fig)
    record = provenance.collect(spec.get("provenance_config"), inputs=spec["tables"])
    record["figure_spec"] = {**{k: v for k, v in spec.items() if k != "provenance_config"},
                             "draw": "seelike.registry:draw"}
    for out in spec["outputs"]:
        provenance.write_sidecar(out, record)
