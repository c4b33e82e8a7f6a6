"""F12: same-layer CKA of models trained on subsets of the data with the full-data model, from the
pair tables (`experiments.data_scale` names the full model and the subsets, usually a sweep over
recipe.train_fraction)."""
from __future__ import annotations

from .. import paths
from ..base import ConfigError
from ..plotting import finish_figure, layer_axis, pyplot
from ..registry import Analysis, Figure, check_model_list
from .common import experiment_section, read_table, sweep_members


def models(cfg: dict) -> tuple[str, list[str]] | None:
    """(full-data model, subset models), or None when experiments.data_scale is not configured."""
    s = experiment_section(cfg, "data_scale")
    if not s:
        return None
    subsets = s.get("subsets") or sweep_members(cfg, s.get("sweep", ""))
    return s["full"], [m for m in subsets if m != s["full"]]


def cka_pairs(cfg: dict) -> list[tuple[str, str]]:
    """The pair tables F12 reads, in config order."""
    ds = models(cfg)
    if not ds:
        return []
    order = list(cfg["models"])
    return [tuple(sorted((ds[0], sub), key=order.index)) for sub in ds[1]]


def data_scale_figure(spec: dict) -> None:
    """F12: same-layer CKA of each subset-trained model with the full-data model, a line per fraction,
    its band the table's 95% interval (jackknife over minibatches)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 3.8), layout="constrained")
    full = spec["full"]
    n_minibatches = set()
    for table, label in zip(spec["tables"], spec["labels"]):
        t = read_table(table)
        same = t[t.index_x == t.index_y].sort_values("index_x")
        line, = ax.plot(same.index_x, same.cka, "o-", ms=3, label=label)
        ax.fill_between(same.index_x, same.ci_low, same.ci_high, alpha=0.2, color=line.get_color())
        n_minibatches |= set(t.n_minibatches.astype(int))
    t = read_table(spec["tables"][0])
    layers = t[t.index_x == t.index_y].sort_values("index_x")
    column = "layer_x" if layers.model_x.iloc[0] == full else "layer_y"
    layer_axis(ax, "x", layers.index_x, layers[column], f"{full} layer", column)
    ax.set_ylabel(f"CKA with the same layer of {full}")
    ax.set_ylim(0, 1.02)
    mb = "/".join(str(n) for n in sorted(n_minibatches))
    ax.fill_between([], [], [], color="0.6", alpha=0.4,
                    label=f"shaded: 95% interval of the CKA\n(jackknife over its {mb} minibatches)")
    ax.legend(fontsize=7, title="training data", title_fontsize=7)
    ax.set_title("F12: representations of models trained on less data", fontsize=9)
    finish_figure(fig, spec)


# ----------------------------------------------------------------------------- registration

def _check(cfg: dict) -> None:
    s = experiment_section(cfg, "data_scale")
    if not s:
        return
    if s.get("full") not in cfg["models"]:
        raise ConfigError(f"config key experiments.data_scale.full: unknown model '{s.get('full')}'")
    if s.get("sweep") and not sweep_members(cfg, s["sweep"]):
        raise ConfigError(f"config key experiments.data_scale.sweep: no model is a sweep of '{s['sweep']}'")
    check_model_list(cfg, "experiments.data_scale.subsets", s.get("subsets") or [])


def _labels(cfg: dict) -> list[str]:
    return [f"{(cfg['models'][s].get('recipe') or {}).get('train_fraction', 1.0):.0%} ({s})" for s in models(cfg)[1]]


ANALYSIS = Analysis(
    name="data_scale", check=_check,
    figures=(Figure("F12", "data scale", data_scale_figure,
                    stems=lambda cfg: [models(cfg)[0]] if models(cfg) else [],
                    tables=lambda cfg, full: [paths.cka_table(cfg, a, b) for a, b in cka_pairs(cfg)],
                    extra=lambda cfg, full: {"full": full, "labels": _labels(cfg)}),))
