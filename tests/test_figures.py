"""Figures drawn through the real figure functions (seelike.registry.draw) from synthetic tables of 6 to
50 layers: readable layer axes (few tick labels, none overlapping), one colour bar per CKA figure, titles
that say what is shown once, shaded bands explained."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from seelike import plotting, registry
from seelike.cka_tables import COLUMNS


def _names(n: int) -> list[str]:
    """timm-like layer names, long enough to collide when drawn carelessly."""
    return [f"stages.{i // 8}.blocks.{i % 8}" for i in range(n)] if n > 8 else [f"block{i}" for i in range(n)]


def cka_table(model_x: str, nx: int, model_y: str | None = None, ny: int | None = None, seed: int = 0):
    """A CKA table with the columns of the core cka step (results/cka/<dataset>/<x>__<y>.csv), random CKA."""
    model_y, ny = model_y or model_x, ny or nx
    rng = np.random.default_rng(seed)
    lx, ly = _names(nx), _names(ny)
    rows = []
    for i, j in itertools.product(range(nx), range(ny)):
        c = 1.0 if (model_x == model_y and i == j) else float(rng.uniform(0.1, 0.95))
        se = float(rng.uniform(0.002, 0.02))
        rows.append({"model_x": model_x, "layer_x": lx[i], "index_x": i, "model_y": model_y, "layer_y": ly[j],
                     "index_y": j, "cka": c, "se": se, "ci_low": c - 2.36 * se, "ci_high": c + 2.36 * se,
                     "batch_std": 3 * se, "n_minibatches": 8, "n_examples": 512, "estimator": "unbiased",
                     "status": "ok"})
    table = pd.DataFrame(rows)
    assert list(table.columns) == COLUMNS
    return table


@pytest.fixture
def drawn(monkeypatch):
    """Every figure saved through plotting.save."""
    figures = []
    real_save = plotting.save

    def save(fig, outputs, dpi=150):
        figures.append(fig)
        real_save(fig, outputs, dpi)

    monkeypatch.setattr(plotting, "save", save)
    return figures


def draw(tmp_path, figure_id: str, stem: str, tables: list, drawn: list, **extra):
    paths = []
    for k, t in enumerate(tables):
        p = tmp_path / f"{figure_id}-{stem}-{k}.csv"
        t.to_csv(p, index=False)
        paths.append(str(p))
    png = tmp_path / f"{figure_id}-{stem}.png"
    registry.draw({"figure": figure_id, "stem": stem, "tables": paths, "outputs": [str(png)], "dpi": 100, **extra})
    assert png.stat().st_size > 0
    return drawn[-1]


def tick_labels(ax, axis: str) -> list:
    ticks = ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()
    return [t for t in ticks if t.get_visible() and t.get_text()]


def assert_layer_axes_readable(fig, axes_and_counts: list) -> None:
    """Each (axes, axis, n_layers): names for <= MAX_NAMED_LAYERS layers, else at most MAX_INDEX_TICKS
    indices and an axis label that names the table column; no two tick labels of the figure overlap."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)   # saving closed the figure, which took its canvas
    canvas.draw()
    renderer = canvas.get_renderer()
    boxes = []
    for ax, axis, n in axes_and_counts:
        labels = tick_labels(ax, axis)
        label = ax.get_xlabel() if axis == "x" else ax.get_ylabel()
        if n <= plotting.MAX_NAMED_LAYERS:
            assert len(labels) == n
            assert "index" not in label
        else:
            assert 2 <= len(labels) <= plotting.MAX_INDEX_TICKS
            assert all(t.get_text().isdigit() for t in labels)
            assert "index" in label and "names: column" in label
        assert all(t.get_fontsize() >= 6 for t in labels)
    for ax in fig.axes:
        for axis in "xy":
            boxes += [t.get_window_extent(renderer) for t in tick_labels(ax, axis)]
    for a, b in itertools.combinations(boxes, 2):
        overlap_w = min(a.x1, b.x1) - max(a.x0, b.x0)
        overlap_h = min(a.y1, b.y1) - max(a.y0, b.y0)
        assert not (overlap_w > 0.5 and overlap_h > 0.5), f"tick labels overlap: {a} and {b}"


def titles(fig) -> list[str]:
    return [t for t in [fig.get_suptitle()] + [ax.get_title() for ax in fig.axes] if t]


def colorbar_labels(fig) -> list[str]:
    return [ax.get_ylabel() for ax in fig.axes if ax.get_label() == "<colorbar>"]


@pytest.mark.parametrize("n", [6, 16, 32, 50])
def test_f1_heatmap_readable_with_one_title(tmp_path, drawn, n):
    fig = draw(tmp_path, "F1", f"vit{n}", [cka_table("vit", n)], drawn,
               titles=["vit"], suptitle="F1: CKA between all layers of vit")
    heat = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(heat) == 1
    assert_layer_axes_readable(fig, [(heat[0], "x", n), (heat[0], "y", n)])
    assert titles(fig) == ["F1: CKA between all layers of vit"]
    assert colorbar_labels(fig) == ["linear CKA"]


def test_f2_and_f14_heatmaps_of_unequal_depths(tmp_path, drawn):
    fig = draw(tmp_path, "F2", "vit__resnet", [cka_table("vit", 32, "resnet", 50)], drawn,
               titles=["vit vs resnet"], suptitle="F2: CKA between vit and resnet")
    ax = next(a for a in fig.axes if a.get_label() != "<colorbar>")
    assert_layer_axes_readable(fig, [(ax, "y", 32), (ax, "x", 50)])
    assert len(titles(fig)) == 1
    tables = [cka_table("mixer", 12), cka_table("vit", 32, "mixer", 12, seed=1), cka_table("resnet", 50, "mixer", 12)]
    fig = draw(tmp_path, "F14", "mixer", tables, drawn, titles=["mixer vs mixer", "vit vs mixer", "resnet vs mixer"],
               suptitle="F14: mixer within itself and against ViTs and CNNs")
    heat = [a for a in fig.axes if a.get_label() != "<colorbar>"]
    assert_layer_axes_readable(fig, [(heat[0], "y", 12), (heat[1], "y", 32), (heat[2], "y", 50)]
                               + [(a, "x", 12) for a in heat])
    assert len(set(titles(fig))) == len(titles(fig)) == 4
    assert colorbar_labels(fig) == ["linear CKA"]


@pytest.mark.parametrize("n", [6, 32])
def test_f8_heatmaps_have_a_colour_bar(tmp_path, drawn, n):
    acc = pd.DataFrame([{"model": "base", "block": -1, "branch": "none", "baseline": True, "test_accuracy": 0.4,
                         "chance": 0.1}] +
                       [{"model": f"abl{b}", "block": b, "branch": "both", "baseline": False,
                         "test_accuracy": 0.2, "chance": 0.1} for b in (1, 4)])
    fig = draw(tmp_path, "F8", "base", [acc, cka_table("abl1", n), cka_table("abl4", n, seed=2)], drawn)
    assert colorbar_labels(fig) == ["linear CKA"]
    heat = [a for a in fig.axes if a.images and a.get_label() != "<colorbar>"]
    assert len(heat) == 2
    assert_layer_axes_readable(fig, [(a, axis, n) for a in heat for axis in "xy"])
    assert any("block 4" in a.get_title() for a in heat)


def probe_table(model: str, n: int, cls: bool, positions: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    rows = []
    for i, layer in enumerate(_names(n)):
        for feature in ["mean"] + (["cls"] if cls else []):
            for kind in ("full", "k_shot"):
                rows.append({"model": model, "layer": layer, "index": i, "feature": feature, "position": -1,
                             "kind": kind, "k": 10 if kind == "k_shot" else None, "accuracy": rng.uniform(0.1, 0.6),
                             "lam": 1.0, "n_train": 384, "n_test": 128})
        for p in range(positions):
            rows.append({"model": model, "layer": layer, "index": i, "feature": "token", "position": p, "kind": "full",
                         "k": None, "accuracy": rng.uniform(0.05, 0.5), "lam": 1.0, "n_train": 30, "n_test": 10})
    return pd.DataFrame(rows)


def legend_texts(fig) -> list[str]:
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    return [t.get_text() for lg in legends for t in lg.get_texts()]


@pytest.mark.parametrize("n", [6, 50])
def test_f11_title_says_what_a_mixer_shows(tmp_path, drawn, n):
    fig = draw(tmp_path, "F11", "mixer", [probe_table("mixer", n, cls=False)], drawn)
    title = fig.get_suptitle()
    assert "mixer" in title and "token mean" in title
    assert "cls" not in title.lower() and "gap" not in title.lower()
    assert titles(fig) == [title]
    assert any("range (min to max) over token positions" in t for t in legend_texts(fig))
    assert_layer_axes_readable(fig, [(fig.axes[0], "x", n)])


def test_f11_gap_model_beside_its_cls_twin(tmp_path, drawn):
    tables = [probe_table("vit_cls", 12, cls=True, positions=17), probe_table("vit_gap", 12, cls=False, seed=1)]
    fig = draw(tmp_path, "F11", "vit_gap", tables, drawn)
    assert "CLS-trained vit_cls beside GAP-trained vit_gap" in fig.get_suptitle()
    assert [ax.get_title() for ax in fig.axes] == ["vit_cls", "vit_gap"]
    labels = legend_texts(fig)
    assert len(labels) == len(set(labels)) == 4   # one legend: mean, CLS, single tokens and their band
    assert_layer_axes_readable(fig, [(ax, "x", 12) for ax in fig.axes])


@pytest.mark.parametrize("n", [6, 50])
def test_f12_band_is_explained(tmp_path, drawn, n):
    tables = [cka_table("full", n, "sub10", n), cka_table("full", n, "sub30", n, seed=1)]
    fig = draw(tmp_path, "F12", "full", tables, drawn, full="full", labels=["10% (sub10)", "30% (sub30)"])
    assert any("95% interval" in t and "jackknife over its 8 minibatches" in t for t in legend_texts(fig))
    assert_layer_axes_readable(fig, [(fig.axes[0], "x", n)])


def attention_maps_table(n_blocks: int, n_examples: int = 2, grid: int = 3):
    rng = np.random.default_rng(0)
    frames = []
    for e in range(n_examples):
        c, r, w = np.meshgrid(np.arange(3), np.arange(8), np.arange(8), indexing="ij")
        frames.append(pd.DataFrame({"model": "vit", "example": e, "kind": "image", "layer": "", "layer_index": -1,
                                    "channel": c.ravel(), "row": r.ravel(), "col": w.ravel(),
                                    "value": rng.uniform(size=c.size)}))
        rr, cc = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
        for li, kind in itertools.product(range(n_blocks), ("attention", "rollout")):
            frames.append(pd.DataFrame({"model": "vit", "example": e, "kind": kind, "layer": f"block{li}",
                                        "layer_index": li, "channel": 0, "row": rr.ravel(), "col": cc.ravel(),
                                        "value": rng.dirichlet(np.ones(grid * grid))}))
    return pd.concat(frames, ignore_index=True)


def test_v3_shows_every_block_or_says_which(tmp_path, drawn):
    fig = draw(tmp_path, "V3", "vit6", [attention_maps_table(6)], drawn)
    shown = [ax.get_title() for ax in fig.axes if ax.get_title().startswith("block")]
    assert shown == [f"block{i}" for i in range(6)]
    assert "all 6 blocks" in fig.get_suptitle()
    fig = draw(tmp_path, "V3", "vit20", [attention_maps_table(20, n_examples=1)], drawn)
    shown = [ax.get_title() for ax in fig.axes if ax.get_title().startswith("block")]
    assert len(shown) == 12 and shown[0] == "block0" and shown[-1] == "block19"
    assert "12 of its 20 blocks, evenly spaced" in fig.get_suptitle()


@pytest.mark.parametrize("n", [6, 50])
def test_v4_layer_axes(tmp_path, drawn, n):
    rng = np.random.default_rng(0)
    ii, jj = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    names = _names(n)
    t = pd.DataFrame({"model": "vit", "layer_x": [names[i] for i in ii.ravel()], "index_x": ii.ravel(),
                      "layer_y": [names[j] for j in jj.ravel()], "index_y": jj.ravel(),
                      "similarity": rng.uniform(size=ii.size), "n_images": 8})
    fig = draw(tmp_path, "V4", "vit", [t], drawn)
    heat, line = fig.axes[0], fig.axes[1]
    assert_layer_axes_readable(fig, [(heat, "x", n), (heat, "y", n), (line, "x", n - 1)])


@pytest.mark.parametrize("n", [5, 17, 50, 500])
def test_index_step_bounds_the_ticks(n):
    k = plotting.index_step(n)
    assert k in (1, 2, 5, 10, 20, 50, 100)
    assert -(-n // k) <= plotting.MAX_INDEX_TICKS
