"""F10: the localization maps (F9 tables) of a ViT trained with global average pooling beside the
CLS-token one (`experiments.gap_vs_cls`). Both models need the localization analysis."""
from __future__ import annotations

import numpy as np

from .. import paths
from ..base import ConfigError
from ..plotting import finish_figure, pyplot
from ..registry import Analysis, Figure, enabled, models_for
from .common import experiment_section, read_table


def gap_cls_figure(spec: dict) -> None:
    """F10: localization maps (F9 tables) of the CLS model (top) and the GAP model (bottom)."""
    from matplotlib.patches import Rectangle
    
    plt = pyplot()
    tables = [read_table(t) for t in spec["tables"]]
    ps = tables[0].drop_duplicates(["p_row", "p_col"])[["p_row", "p_col"]].values.tolist()
    vmax = max(1e-6, max(float(np.nanmax(t.cka.values)) for t in tables))
    fig, axes = plt.subplots(len(tables), len(ps), figsize=(2.2 * len(ps) + 1.0, 2.4 * len(tables)), squeeze=False)
    im = None
    for row, t in zip(axes, tables):
        gh, gw = int(t.grid_h.iloc[0]), int(t.grid_w.iloc[0])
        for ax, (pr, pc) in zip(row, ps):
            s = t[(t.p_row == pr) & (t.p_col == pc)]
            mat = np.full((gh, gw), np.nan)
            mat[s.q_row.values, s.q_col.values] = s.cka.values
            im = ax.imshow(mat, cmap="magma", vmin=0.0, vmax=vmax, interpolation="nearest")
            ax.add_patch(Rectangle((pc - 0.5, pr - 0.5), 1, 1, fill=False, ec="cyan", lw=1.5))
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(t.model.iloc[0], fontsize=9)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="linear CKA")
    fig.suptitle("F10: localization, CLS-trained (top) vs GAP-trained (bottom)", fontsize=9)
    finish_figure(fig, spec)


# ----------------------------------------------------------------------------- registration

def _check(cfg: dict) -> None:
    pair = experiment_section(cfg, "gap_vs_cls")
    if not pair:
        return
    for role in ("gap", "cls"):
        if pair.get(role) not in cfg["models"]:
            raise ConfigError(f"config key experiments.gap_vs_cls.{role}: unknown model '{pair.get(role)}'")
    covered = models_for(cfg, "localization")   # F10 draws both models' F9 tables: check now, not after training
    for role in ("cls", "gap"):
        if pair[role] in covered:
            continue
        if "localization" not in (cfg.get("analyses") or {}):
            why = "there is no analyses.localization section (add `localization: {}` under analyses)"
        elif not enabled(cfg, "localization"):
            why = "analyses.localization is switched off (enabled: false)"
        else:
            why = f"analyses.localization.models does not list it (it covers: {', '.join(covered) or 'none'})"
        raise ConfigError(f"config key experiments.gap_vs_cls.{role}: F10 compares the localization maps of "
                          f"'{pair['cls']}' and '{pair['gap']}', but {why}")


def _tables(cfg: dict, gap: str) -> list[str]:
    cls = experiment_section(cfg, "gap_vs_cls")["cls"]
    return [paths.table(cfg, "dataset", "localization", m) for m in (cls, gap)]


ANALYSIS = Analysis(
    name="gap_vs_cls", check=_check,
    figures=(Figure("F10", "GAP vs CLS localization", gap_cls_figure,
                    stems=lambda cfg: [experiment_section(cfg, "gap_vs_cls")["gap"]]
                    if experiment_section(cfg, "gap_vs_cls") else [],
                    tables=_tables),))
