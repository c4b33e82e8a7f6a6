"""Drawing: matplotlib (imported only when a figure is drawn), per-layer axes, CKA heatmaps, saving
figures with their provenance. Figures are drawn from the tidy tables on disk, never from in-memory
results; table computation never imports this module's matplotlib."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

#: A per-layer axis names every layer up to this many layers; past it, it shows layer indices.
MAX_NAMED_LAYERS = 16
#: An axis of layer indices labels every k-th layer (k = 1, 2, 5, 10, 20, 50, ...): at most this many ticks.
MAX_INDEX_TICKS = 12
#: Font size of layer tick labels (names or indices).
LAYER_FONTSIZE = 7


def pyplot():
    """matplotlib.pyplot on the Agg backend (no screen on a cluster node)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def index_step(n: int) -> int:
    """The step k of the ticks of an axis of `n` layer indices: the smallest of 1, 2, 5, 10, 20, 50, ...
    with at most MAX_INDEX_TICKS multiples of k below n."""
    decade = 1
    while True:
        for m in (1, 2, 5):
            if math.ceil(n / (m * decade)) <= MAX_INDEX_TICKS:
                return m * decade
        decade *= 10


def layer_axis(ax, axis: str, positions, names, label: str, column: str) -> None:
    """Ticks and label of an axis with one position per layer (`positions`, integer layer indices in
    depth order; `names` the layer names there).

    Up to MAX_NAMED_LAYERS layers every layer is named and the axis is labelled `label`. Past it the
    axis shows the indices of every k-th layer (:func:`index_step`) and its label says that the
    table's column `column` names the layer at each index."""
    positions = [int(p) for p in positions]
    names = [str(n) for n in names]
    if len(positions) <= MAX_NAMED_LAYERS:
        ticks, labels, text = positions, names, label
        rotation = 90 if axis == "x" else 0
    else:
        k = index_step(len(positions))
        ticks = [p for p in positions if p % k == 0] or positions[::k]
        labels, text, rotation = [str(p) for p in ticks], f"{label} index (names: column {column})", 0
    if axis == "x":
        ax.set_xticks(ticks)
        ax.set_xticklabels(labels, rotation=rotation, fontsize=LAYER_FONTSIZE)
        ax.set_xlabel(text)
    else:
        ax.set_yticks(ticks)
        ax.set_yticklabels(labels, rotation=rotation, fontsize=LAYER_FONTSIZE)
        ax.set_ylabel(text)


def cka_matrix(table):
    """(layers_x, layers_y, matrix) from a CKA table; rows = layers of x in depth order."""
    t = table.sort_values(["index_x", "index_y"])
    lx = t.drop_duplicates("index_x").sort_values("index_x")["layer_x"].tolist()
    ly = t.drop_duplicates("index_y").sort_values("index_y")["layer_y"].tolist()
    mat = np.full((len(lx), len(ly)), np.nan)
    mat[t["index_x"].to_numpy(), t["index_y"].to_numpy()] = t["cka"].to_numpy()
    return lx, ly, mat


def draw_heatmap(ax, table, title: str):
    """A CKA table as a heatmap on `ax` (rows: layers of model_x, columns: layers of model_y; cells
    whose CKA is undefined grey); returns the image for a colour bar (:func:`cka_colorbar`)."""
    import matplotlib

    lx, ly, mat = cka_matrix(table)
    cmap = matplotlib.colormaps["magma"].with_extremes(bad="0.6")
    im = ax.imshow(mat, origin="lower", vmin=0.0, vmax=1.0, cmap=cmap, aspect="auto", interpolation="nearest")
    ax.set_title(title, fontsize=9)
    layer_axis(ax, "y", range(len(lx)), lx, f"{table['model_x'].iloc[0]} layer", "layer_x")
    layer_axis(ax, "x", range(len(ly)), ly, f"{table['model_y'].iloc[0]} layer", "layer_y")
    if (table["status"] != "ok").any():
        ax.text(0.01, 0.99, "grey: CKA undefined (self-HSIC <= 0)", transform=ax.transAxes, fontsize=6, va="top")
    return im


def cka_colorbar(fig, im, axes) -> None:
    """The one colour bar of the CKA heatmaps on `axes` (all drawn on the 0..1 scale)."""
    fig.colorbar(im, ax=list(axes), shrink=0.85, label="linear CKA")


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
    """One CKA heatmap panel per table, side by side, with one colour bar. A single panel carries
    one title: `suptitle` if given, else its own."""
    plt = pyplot()
    n = len(tables)
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n + 0.8, 4.4), squeeze=False, layout="constrained")
    if n == 1 and suptitle:
        titles, suptitle = [suptitle], None
    im = None
    for ax, table, title in zip(axes[0], tables, titles):
        im = draw_heatmap(ax, table, title)
    cka_colorbar(fig, im, axes[0])
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
