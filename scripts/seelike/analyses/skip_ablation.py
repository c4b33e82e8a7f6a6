"""F8: ViTs trained with the skip connection at block i removed.

Test accuracy of each ablated model and its baseline, from the model cards (table columns: model,
block, branch, baseline, test_accuracy, chance, n_test: the test images, empty for cards without it), beside each ablated model's within-model CKA.
The models are ordinary recipes of the registry (usually a sweep over recipe.remove_skip.block);
`experiments.skip_ablation` names them.
"""
from __future__ import annotations

from .. import paths
from ..base import ConfigError
from ..plotting import cka_colorbar, draw_heatmap, finish_figure, pyplot
from ..registry import Analysis, Figure, check_model_list
from .common import experiment_section, read_table, sweep_members, write_table


def models(cfg: dict) -> tuple[str, list[str]] | None:
    """(baseline, ablated models), or None when experiments.skip_ablation is not configured."""
    s = experiment_section(cfg, "skip_ablation")
    if not s:
        return None
    chosen = s.get("models") or sweep_members(cfg, s.get("sweep", ""))
    return s["baseline"], [m for m in chosen if m != s["baseline"]]


def skip_table(spec: dict) -> str:
    """Accuracy of each ablated model and its baseline, from the model cards."""
    import pandas as pd

    from ..models.card import ModelCard

    rows = []
    for name, card_path in spec["cards"].items():
        card = ModelCard.load(card_path)
        if "test_accuracy" not in card.metrics:
            raise ValueError(f"model card {card_path} of '{name}' records no test_accuracy: the model was not "
                             f"evaluated; run the workflow again with --forcerun on its training")
        rs = card.modifications.get("remove_skip") or {}
        rows.append({"model": name, "block": rs.get("block", -1), "branch": rs.get("branch", "none") if rs else "none",
                     "baseline": name == spec["baseline"], "test_accuracy": card.metrics["test_accuracy"],
                     "chance": card.metrics.get("chance"), "n_test": card.metrics.get("n_test")})
    table = pd.DataFrame(rows).sort_values(["baseline", "block"], ascending=[False, True])
    return write_table(table, spec["out"], spec, inputs=list(spec["cards"].values()))


def skip_figure(spec: dict) -> None:
    """F8: accuracy against the block whose skip was removed, then each ablated model's CKA heatmap
    (one colour bar for them all)."""
    plt = pyplot()
    acc = read_table(spec["tables"][0])
    heat = [read_table(t) for t in spec["tables"][1:]]
    fig, axes = plt.subplots(1, 1 + len(heat), figsize=(4.2 * (1 + len(heat)) + 0.8, 3.8), squeeze=False,
                             layout="constrained")
    ax = axes[0][0]
    ab = acc[~acc.baseline].sort_values("block")
    ax.plot(ab.block, ab.test_accuracy, "o-", label="skip removed at block i")
    ax.set_xticks(ab.block.tolist())
    base = acc[acc.baseline]
    if len(base):
        ax.axhline(float(base.test_accuracy.iloc[0]), color="k", ls="--", label=f"{base.model.iloc[0]} (all skips)")
    if acc.chance.notna().any():
        ax.axhline(float(acc.chance.dropna().iloc[0]), color="grey", ls=":", label="chance")
    ax.set_xlabel("block i")
    ax.set_ylabel("test accuracy")
    ax.set_title("F8: accuracy without the skip at block i", fontsize=9)
    ax.legend(fontsize=7)
    where = {r.model: (int(r.block), r.branch) for r in ab.itertuples()}
    im = None
    for a, t in zip(axes[0][1:], heat):
        model = t.model_x.iloc[0]
        block, branch = where.get(model, (None, None))
        skips = {"both": "attention and MLP skips", "attn": "attention skip", "mlp": "MLP skip"}.get(branch, branch)
        title = f"{model}: CKA, no {skips} at block {block}" if block is not None else f"{model}: CKA"
        im = draw_heatmap(a, t, title)
    if im is not None:
        cka_colorbar(fig, im, axes[0][1:])
    finish_figure(fig, spec)


# ----------------------------------------------------------------------------- registration

def _check(cfg: dict) -> None:
    s = experiment_section(cfg, "skip_ablation")
    if not s:
        return
    names = cfg["models"]
    if s.get("baseline") not in names:
        raise ConfigError(f"config key experiments.skip_ablation.baseline: unknown model '{s.get('baseline')}'")
    if s.get("sweep") and not sweep_members(cfg, s["sweep"]):
        raise ConfigError(f"config key experiments.skip_ablation.sweep: no model is a sweep of '{s['sweep']}'")
    check_model_list(cfg, "experiments.skip_ablation.models", s.get("models") or [])


def _cards(cfg: dict) -> dict:
    baseline, ablated = models(cfg)
    return {m: paths.card(m) for m in [baseline] + ablated}


def _f8_tables(cfg: dict, baseline: str) -> list[str]:
    return [paths.table(cfg, "experiment", "skip_ablation", baseline)] + [
        paths.cka_table(cfg, m, m) for m in models(cfg)[1]]


ANALYSIS = Analysis(
    name="skip_ablation", source="experiment", compute=skip_table, check=_check,
    stems=lambda cfg: [models(cfg)[0]] if models(cfg) else [],
    inputs=lambda cfg, baseline: list(_cards(cfg).values()),
    spec=lambda cfg, baseline: {"baseline": baseline, "cards": _cards(cfg)},
    figures=(Figure("F8", "skip connections removed", skip_figure, tables=_f8_tables),))
