"""F1, F2, F14: CKA heatmaps drawn from the CKA tables (results/cka/), which the core `cka` step writes
for every model with itself and for every configured pair (`cka.pairs`).

F1 within-model CKA of every model; F2 cross-model CKA of every pair; F14 each MLP-Mixer with
itself and against the ViTs and CNNs it is paired with.
"""
from __future__ import annotations

from .. import paths
from ..plotting import finish_figure, heatmap_figure
from ..registry import Analysis, Figure
from .common import read_table


def cross_pairs(cfg: dict) -> list[tuple[str, str]]:
    """The configured model pairs in canonical (config) order, so that (a, b) and (b, a) name one table."""
    names = list(cfg["models"])
    if cfg["cka"]["pairs"] == "all":
        return [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    order = {n: i for i, n in enumerate(names)}
    return sorted({tuple(sorted(p, key=order.get)) for p in cfg["cka"]["pairs"]},
                  key=lambda p: (order[p[0]], order[p[1]]))


def mixer_models(cfg: dict) -> list[str]:
    return [n for n, m in cfg["models"].items() if m["family"] == "mixer"]


def f14_panels(cfg: dict, mixer: str) -> list[tuple[str, str]]:
    """The Mixer with itself, then against the ViTs and CNNs it is paired with in cka.pairs (every
    ViT and CNN when pairs is 'all'), in stored pair order (config order) so titles match tables."""
    order = list(cfg["models"])
    partners = {b if a == mixer else a for a, b in cross_pairs(cfg) if mixer in (a, b)}
    panels = [(mixer, mixer)]
    for family in ("vit", "cnn"):
        panels += [tuple(sorted((mixer, n), key=order.index)) for n, m in cfg["models"].items()
                   if m["family"] == family and n in partners]
    return panels


def draw(spec: dict) -> None:
    """spec: tables (CKA tables), titles, suptitle, outputs, dpi."""
    tables = [read_table(p) for p in spec["tables"]]
    finish_figure(heatmap_figure(tables, spec["titles"], spec.get("suptitle")), spec)


def _split(stem: str) -> tuple[str, str]:
    x, _, y = stem.partition("__")
    return x, y


ANALYSIS = Analysis(
    name="cka",
    figures=(
        Figure("F1", "within-model CKA", draw, stems=lambda cfg: list(cfg["models"]),
               tables=lambda cfg, m: [paths.cka_table(cfg, m, m)],
               extra=lambda cfg, m: {"titles": [m], "suptitle": f"F1: CKA between all layers of {m}"}),
        Figure("F2", "cross-model CKA", draw, stems=lambda cfg: [f"{x}__{y}" for x, y in cross_pairs(cfg)],
               tables=lambda cfg, stem: [paths.cka_table(cfg, *_split(stem))],
               extra=lambda cfg, stem: {"titles": [" vs ".join(_split(stem))],
                                        "suptitle": "F2: CKA between {} and {}".format(*_split(stem))}),
        Figure("F14", "MLP-Mixer CKA", draw, stems=mixer_models,
               tables=lambda cfg, mixer: [paths.cka_table(cfg, a, b) for a, b in f14_panels(cfg, mixer)],
               extra=lambda cfg, mixer: {"titles": [f"{a} vs {b}" for a, b in f14_panels(cfg, mixer)],
                                         "suptitle": f"F14: {mixer} within itself and against ViTs and CNNs"}),
    ))
