"""The paper's six findings as numbers: one row per finding, computed from the tables the other
analyses write (docs/paper.md states the findings; the README shows the demo's table).

Each finding is one or more *tests*: a statistic with a standard error, its 95% interval
(value +- 1.96 se, or a bootstrap's percentiles) and a threshold. The verdict of a finding is

* ``supported`` when every test's interval lies above its threshold,
* ``not supported`` when some test's interval lies at or below its threshold,
* ``inconclusive`` otherwise (an interval straddles its threshold).

The row shows the first test; ``detail`` lists every test and the numbers behind it. A finding
whose models are not configured gets the verdict ``not configured`` and names what to add.

Intervals come from what each table stores:

* CKA and localization tables hold a jackknife standard error per cell (over CKA minibatches).
  The se of a mean of cells is taken as the mean of their se's (exact when the cells' errors are
  perfectly correlated, an upper bound otherwise); the se of a difference of two such terms is
  sqrt(se1^2 + se2^2) (an upper bound when the terms' errors are not negatively correlated).
* Attention distances hold a per-head se over images: the fraction of local heads gets its
  interval from a parametric bootstrap (every head's distance drawn from a normal with its se;
  the 2.5 and 97.5 percentiles of the drawn fractions).
* Test accuracies are binomial proportions over the test images (normal approximation).

The statistics (their names are the ``statistic`` column):

1. ``far_cka_vit - far_cka_cnn``: within-model CKA of layers at least ``FAR`` apart in relative
   depth (layer index / (layers - 1)), mean over such pairs, ViT minus CNN. A ViT's uniform
   representation keeps it high; a CNN's stages make it fall.
2. ``local_heads_more - local_heads_less``: fraction of the lower half's attention heads whose mean
   distance is below ``LOCAL`` x the distance of uniform attention, more-data model (of the
   less-data model's architecture when one is configured) minus less-data model; the more-data
   model must also have local heads (fraction above 0).
3. ``accuracy_cost``: test accuracy of the baseline minus that of the model whose skip connection
   was removed at the ablated block nearest the middle of the depth.
4. ``peak_cls - peak_gap``: localization peak (CKA of the input patch at p with the final-layer
   token at p, minus the mean over the other positions q, averaged over the configured p), CLS
   model minus GAP model; the CLS model's peak must also be above 0.
5. ``same_layer_cka_rise``: mean same-layer CKA with the full-data model of the subset model
   trained on the largest data fraction minus that of the smallest.
6. ``mixer_vit - mixer_cnn``: CKA of each Mixer layer with the layer of the other model at the
   nearest relative depth, mean over Mixer layers, with the ViT minus with the CNN.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import paths
from ..registry import Analysis, models_for, section
from .common import experiment_section, read_table, write_table

Z95 = 1.959963984540054
FAR = 0.5            # finding 1: layer pairs at least this far apart in relative depth
LOCAL = 0.8          # finding 2: a head is local below this fraction of the uniform distance
BOOTSTRAP = 2000     # finding 2: parametric bootstrap draws (fixed seed)

STATEMENTS = {
    1: "ViT representations are more uniform across depth than a CNN's",
    2: "ViT lower layers have local heads; a ViT trained on less data has fewer",
    3: "Skip connections matter in ViTs: removing one in a middle block costs accuracy",
    4: "A CLS-trained ViT keeps spatial information in its last layer; a GAP-trained one less",
    5: "Representations of models trained on more data are closer to the full-data model's",
    6: "MLP-Mixer representations are closer to a ViT's than to a CNN's",
}
FIGURES = {1: "F1 F2", 2: "F3 F4", 3: "F7 F8", 4: "F9 F10", 5: "F12 F13", 6: "F14"}
COLUMNS = ["finding", "statement", "verdict", "statistic", "value", "ci_low", "ci_high", "threshold", "figures",
           "models", "tables", "detail"]


@dataclass(frozen=True)
class Test:
    statistic: str
    value: float
    se: float
    threshold: float = 0.0
    bounds: tuple | None = None            # an interval of its own (a bootstrap's percentiles)

    @property
    def interval(self) -> tuple[float, float]:
        if self.bounds is not None:
            return float(self.bounds[0]), float(self.bounds[1])
        return self.value - Z95 * self.se, self.value + Z95 * self.se

    def describe(self) -> str:
        lo, hi = self.interval
        return f"{self.statistic} = {self.value:.4f} [{lo:.4f}, {hi:.4f}] vs {self.threshold:g}"


def verdict(tests: list[Test]) -> str:
    """supported / not supported / inconclusive (see the module docstring)."""
    if not tests or any(not math.isfinite(t.value) or not math.isfinite(t.se) for t in tests):
        return "inconclusive"
    if any(t.interval[1] <= t.threshold for t in tests):
        return "not supported"
    if all(t.interval[0] > t.threshold for t in tests):
        return "supported"
    return "inconclusive"


def _mean_se(se) -> float:
    se = np.asarray(se, dtype=float)
    return float(se.mean()) if se.size else float("nan")


def _diff(name: str, a: tuple[float, float], b: tuple[float, float], threshold: float = 0.0) -> Test:
    return Test(name, a[0] - b[0], math.hypot(a[1], b[1]), threshold)


def _ok(t):
    """The cells whose CKA is defined (status ok)."""
    return t[t["status"] == "ok"] if "status" in t else t


def _relative(index) -> np.ndarray:
    index = np.asarray(index, dtype=float)
    top = index.max()
    return index / top if top > 0 else np.zeros_like(index)


# ----------------------------------------------------------------------------- the statistics
# Each takes DataFrames of the tables it reads and returns (tests, detail).

def far_cka(within) -> tuple[float, float]:
    """(mean, se) of the within-model CKA of layer pairs at least FAR apart in relative depth."""
    t = _ok(within)
    t = t[t.index_x < t.index_y]
    n = int(max(within.index_x.max(), within.index_y.max()))
    far = t[(t.index_y - t.index_x) / max(n, 1) >= FAR - 1e-12]
    if far.empty:
        return float("nan"), float("nan")
    return float(far.cka.mean()), _mean_se(far.se)


def uniformity(vit, cnn) -> tuple[list[Test], str]:
    a, b = far_cka(vit), far_cka(cnn)
    return ([_diff("far_cka_vit - far_cka_cnn", a, b)],
            f"mean CKA of layers >= {FAR:g} apart in relative depth: ViT {a[0]:.3f}, CNN {b[0]:.3f}")


def local_fraction(dist, rng=None, draws: int = 0):
    """Fraction of the lower half's heads below LOCAL x uniform distance; with `draws`, also the
    bootstrap draws of that fraction."""
    blocks = np.sort(dist.block_index.unique())
    lower = dist[dist.block_index.isin(blocks[: max(1, len(blocks) // 2)])]
    d = lower.distance.to_numpy(float)
    cut = LOCAL * lower.uniform_distance.to_numpy(float)
    frac = float((d < cut).mean())
    if not draws:
        return frac
    se = np.nan_to_num(lower.se.to_numpy(float))
    sim = d[None, :] + rng.standard_normal((draws, d.size)) * se[None, :]
    return frac, (sim < cut[None, :]).mean(axis=1)


def local_heads(more, less) -> tuple[list[Test], str]:
    rng = np.random.default_rng(0)
    fm, dm = local_fraction(more, rng, BOOTSTRAP)
    fl, dl = local_fraction(less, rng, BOOTSTRAP)
    tests = [Test("local_heads_more - local_heads_less", fm - fl, float(np.std(dm - dl)),
                  bounds=tuple(np.percentile(dm - dl, [2.5, 97.5]))),
             Test("local_heads_more", fm, float(np.std(dm)), bounds=tuple(np.percentile(dm, [2.5, 97.5])))]
    return tests, (f"lower-half heads below {LOCAL:g} x uniform distance: more data {fm:.0%} "
                   f"({len(more)} heads in all), less data {fl:.0%}")


def _binomial(p: float, n: float) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n and n > 0 else float("nan")


def skip_cost(acc, depth: int, n_test: float | None = None) -> tuple[list[Test], str]:
    """acc: the skip_ablation table (baseline row and one row per ablated block)."""
    base = acc[acc.baseline.astype(bool)]
    ablated = acc[~acc.baseline.astype(bool)].copy()
    if base.empty or ablated.empty:
        return [], "the skip_ablation table needs its baseline and at least one ablated model"
    centre = (depth - 1) / 2
    ablated["off"] = (ablated.block - centre).abs()
    mid = ablated.sort_values(["off", "block"]).iloc[0]
    pb = float(base.test_accuracy.iloc[0])
    pm = float(mid.test_accuracy)
    n = n_test if n_test else (float(acc.n_test.dropna().iloc[0]) if "n_test" in acc and acc.n_test.notna().any()
                               else float("nan"))
    se = math.hypot(_binomial(pb, n), _binomial(pm, n))
    others = ", ".join(f"block {int(r.block)}: {r.test_accuracy:.3f}" for r in ablated.sort_values("block").itertuples())
    return ([Test("accuracy_cost", pb - pm, se)],
            f"test accuracy {pb:.3f} with every skip; without the skip at {others} ({int(n) if n == n else '?'} test images)")


def norm_ratio_detail(ratios) -> str:
    """The ViT's norm ratios, CLS against spatial tokens, as numbers for the detail column."""
    if ratios is None or ratios.empty:
        return ""
    g = ratios.groupby("tokens").ratio.median()
    return "; median norm ratio ||z||/||f(z)||: " + ", ".join(f"{k} {v:.2f}" for k, v in g.items())


def localization_peak(loc) -> tuple[float, float]:
    """(peak, se): CKA at q = p minus the mean over q != p, averaged over the positions p."""
    t = _ok(loc)
    peaks, ses = [], []
    for _, g in t.groupby(["p_row", "p_col"]):
        diag, off = g[g.diagonal.astype(bool)], g[~g.diagonal.astype(bool)]
        if diag.empty or off.empty:
            continue
        peaks.append(float(diag.cka.iloc[0]) - float(off.cka.mean()))
        ses.append(math.hypot(float(diag.se.iloc[0]), _mean_se(off.se)))
    if not peaks:
        return float("nan"), float("nan")
    return float(np.mean(peaks)), _mean_se(ses)


def localization(cls, gap) -> tuple[list[Test], str]:
    a, b = localization_peak(cls), localization_peak(gap)
    return ([_diff("peak_cls - peak_gap", a, b), Test("peak_cls", a[0], a[1])],
            f"localization peak (CKA at p minus elsewhere, final layer): CLS {a[0]:.3f}, GAP {b[0]:.3f}")


def same_layer_cka(pair, full: str) -> tuple[float, float]:
    t = _ok(pair)
    same = t[t.index_x == t.index_y]
    if same.empty:
        return float("nan"), float("nan")
    return float(same.cka.mean()), _mean_se(same.se)


def data_scale(pairs: dict, fractions: dict, full: str) -> tuple[list[Test], str]:
    """pairs: subset model -> its CKA table with the full model; fractions: subset model -> fraction."""
    order = sorted(pairs, key=lambda m: fractions[m])
    lo, hi = order[0], order[-1]
    a, b = same_layer_cka(pairs[hi], full), same_layer_cka(pairs[lo], full)
    each = ", ".join(f"{fractions[m]:.0%} {same_layer_cka(pairs[m], full)[0]:.3f}" for m in order)
    return [_diff("same_layer_cka_rise", a, b)], f"mean same-layer CKA with {full}: {each}"


def depth_matched(pair, mixer: str) -> tuple[float, float]:
    """(mean, se) over the Mixer's layers of the CKA with the other model's layer nearest in relative depth."""
    t = _ok(pair)
    if t.empty:
        return float("nan"), float("nan")
    mx, other = ("x", "y") if t.model_x.iloc[0] == mixer else ("y", "x")
    rm = dict(zip(t[f"index_{mx}"], _relative(t[f"index_{mx}"])))
    ro = dict(zip(t[f"index_{other}"], _relative(t[f"index_{other}"])))
    vals, ses = [], []
    for i, r in sorted(rm.items()):
        j = min(ro, key=lambda k: (abs(ro[k] - r), k))
        cell = t[(t[f"index_{mx}"] == i) & (t[f"index_{other}"] == j)]
        if len(cell):
            vals.append(float(cell.cka.iloc[0]))
            ses.append(float(cell.se.iloc[0]))
    return (float(np.mean(vals)), _mean_se(ses)) if vals else (float("nan"), float("nan"))


def mixer_closer(with_vit, with_cnn, mixer: str) -> tuple[list[Test], str]:
    a, b = depth_matched(with_vit, mixer), depth_matched(with_cnn, mixer)
    return ([_diff("mixer_vit - mixer_cnn", a, b)],
            f"depth-matched CKA of {mixer}: with the ViT {a[0]:.3f}, with the CNN {b[0]:.3f}")


# ----------------------------------------------------------------------------- which tables, from the config

def _first(cfg: dict, names, family: str):
    return next((n for n in names if cfg["models"][n].get("family") == family), None)


def _pair_table(cfg: dict, a: str, b: str) -> str:
    order = list(cfg["models"])
    x, y = sorted((a, b), key=order.index)
    return paths.cka_table(cfg, x, y)


def _cka_pairs(cfg: dict) -> set:
    from .cka_maps import cross_pairs

    return {frozenset(p) for p in cross_pairs(cfg)}


def plan(cfg: dict) -> list[dict]:
    """Per finding: {"finding", "models", "tables" (role -> path), ...} or {"finding", "missing"}."""
    from .data_scale import models as data_scale_models
    from .skip_ablation import models as skip_models

    models = list(cfg["models"])
    out = []

    vit, cnn = _first(cfg, models, "vit"), _first(cfg, models, "cnn")
    if vit and cnn:
        out.append({"finding": 1, "models": {"vit": vit, "cnn": cnn},
                    "tables": {"vit": _pair_table(cfg, vit, vit), "cnn": _pair_table(cfg, cnn, cnn)}})
    else:
        out.append({"finding": 1, "missing": "a ViT and a CNN under models:"})

    dist = models_for(cfg, "attention_distance")
    less = [m for m in section(cfg, "attention_distance").get("less_data", []) if m in dist]
    more = [m for m in dist if m not in less]
    if less and more:
        # the more-data twin of the less-data model: the same architecture when one is configured
        arch = cfg["models"][less[0]].get("arch")
        twin = next((m for m in more if cfg["models"][m].get("arch") == arch), more[0])
        out.append({"finding": 2, "models": {"more": twin, "less": less[0]},
                    "tables": {r: paths.table(cfg, "dataset", "attention_distance", m)
                               for r, m in (("more", twin), ("less", less[0]))}})
    else:
        out.append({"finding": 2, "missing": "a ViT trained on less data in analyses.attention_distance.less_data, "
                                             "and one trained on more data in analyses.attention_distance.models"})

    skip = skip_models(cfg)
    if skip and skip[1]:
        base = skip[0]
        depth = int((cfg["models"][base].get("kwargs") or {}).get("depth", 0)) or None
        entry = {"finding": 3, "models": {"baseline": base, "ablated": skip[1]}, "depth": depth,
                 "tables": {"skip_ablation": paths.table(cfg, "experiment", "skip_ablation", base)}}
        vits = [m for m in models_for(cfg, "norm_ratio") if cfg["models"][m].get("family") == "vit"]
        if vits:
            entry["models"]["norm_ratio"] = vits[0]
            entry["tables"]["norm_ratio"] = paths.table(cfg, "dataset", "norm_ratio", vits[0])
        out.append(entry)
    else:
        out.append({"finding": 3, "missing": "experiments.skip_ablation with a baseline and ablated models"})

    pair = experiment_section(cfg, "gap_vs_cls")
    gc = (pair["cls"], pair["gap"]) if pair else None
    loc = models_for(cfg, "localization")
    if gc and gc[0] in loc and gc[1] in loc:
        out.append({"finding": 4, "models": {"cls": gc[0], "gap": gc[1]},
                    "tables": {r: paths.table(cfg, "dataset", "localization", m) for r, m in zip(("cls", "gap"), gc)}})
    else:
        out.append({"finding": 4, "missing": "experiments.gap_vs_cls, with both of its models in "
                                             "analyses.localization.models"})

    ds = data_scale_models(cfg)
    if ds and len(ds[1]) >= 2:
        full, subs = ds
        fractions = {m: float((cfg["models"][m].get("recipe") or {}).get("train_fraction", 1.0)) for m in subs}
        out.append({"finding": 5, "models": {"full": full, "subsets": subs}, "fractions": fractions,
                    "tables": {m: _pair_table(cfg, full, m) for m in subs}})
    else:
        out.append({"finding": 5, "missing": "experiments.data_scale with at least two subset models"})

    from .cka_maps import mixer_models

    pairs = _cka_pairs(cfg)
    found = None
    for mixer in mixer_models(cfg):
        v = next((m for m in models if cfg["models"][m].get("family") == "vit" and frozenset((mixer, m)) in pairs), None)
        c = next((m for m in models if cfg["models"][m].get("family") == "cnn" and frozenset((mixer, m)) in pairs), None)
        if v and c:
            found = (mixer, v, c)
            break
    if found:
        mixer, v, c = found
        out.append({"finding": 6, "models": {"mixer": mixer, "vit": v, "cnn": c},
                    "tables": {"vit": _pair_table(cfg, mixer, v), "cnn": _pair_table(cfg, mixer, c)}})
    else:
        out.append({"finding": 6, "missing": "an MLP-Mixer paired in cka.pairs with a ViT and with a CNN"})
    return out


# ----------------------------------------------------------------------------- the step

def evaluate(entry: dict, read) -> tuple[list[Test], str]:
    """The tests of one planned finding; `read(path, kind)` returns a table (kind: a key of NEEDS)."""
    k, m, t = entry["finding"], entry["models"], entry["tables"]
    if k == 1:
        return uniformity(read(t["vit"], "cka"), read(t["cnn"], "cka"))
    if k == 2:
        return local_heads(read(t["more"], "attention_distance"), read(t["less"], "attention_distance"))
    if k == 3:
        acc = read(t["skip_ablation"], "skip_ablation")
        depth = entry.get("depth") or int(acc.block.max()) + 1
        tests, detail = skip_cost(acc, depth)
        return tests, detail + (norm_ratio_detail(read(t["norm_ratio"], "norm_ratio")) if "norm_ratio" in t else "")
    if k == 4:
        return localization(read(t["cls"], "localization"), read(t["gap"], "localization"))
    if k == 5:
        return data_scale({s: read(p, "cka") for s, p in t.items()}, entry["fractions"], m["full"])
    if k == 6:
        return mixer_closer(read(t["vit"], "cka"), read(t["cnn"], "cka"), m["mixer"])
    raise ValueError(f"unknown finding {k}")


def row(entry: dict, read) -> dict:
    k = entry["finding"]
    base = {"finding": k, "statement": STATEMENTS[k], "figures": FIGURES[k]}
    if "missing" in entry:
        return {**base, "statistic": "", "value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"),
                "threshold": float("nan"), "verdict": "not configured", "models": "", "tables": "",
                "detail": f"add {entry['missing']}"}
    tests, detail = evaluate(entry, read)
    first = tests[0] if tests else Test("", float("nan"), float("nan"))
    lo, hi = first.interval
    more = "; ".join(t.describe() for t in tests)
    models = " ".join(f"{r}={','.join(v) if isinstance(v, list) else v}" for r, v in entry["models"].items())
    return {**base, "statistic": first.statistic, "value": first.value, "ci_low": lo, "ci_high": hi,
            "threshold": first.threshold, "verdict": verdict(tests), "models": models,
            "tables": " ".join(sorted(set(entry["tables"].values()))), "detail": f"{detail}. Tests: {more}"}


# The columns each kind of input table must have, by the folder it lives in.
NEEDS = {
    "cka": ("model_x", "index_x", "model_y", "index_y", "cka", "se"),
    "attention_distance": ("block_index", "distance", "se", "uniform_distance"),
    "skip_ablation": ("block", "baseline", "test_accuracy"),
    "norm_ratio": ("tokens", "ratio"),
    "localization": ("p_row", "p_col", "diagonal", "cka", "se"),
}


def compute(spec: dict) -> str:
    """spec: plan (from :func:`plan`), out, provenance_config."""
    import pandas as pd

    cache: dict = {}

    def read(path, kind):
        if path not in cache:
            cache[path] = read_table(path, NEEDS[kind])
        return cache[path]

    table = pd.DataFrame([row(e, read) for e in spec["plan"]], columns=COLUMNS)
    return write_table(table, spec["out"], spec, inputs=sorted(cache))


def format_table(table, detail: bool = False) -> str:
    """The findings as a Markdown table (README, terminal); `detail` adds each row's numbers below it."""
    lines = ["| # | finding | statistic | value [95% interval] | verdict | figures |", "|---|---|---|---|---|---|"]
    for r in table.itertuples():
        if r.verdict == "not configured":
            value = "-"
        else:
            value = f"{r.value:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]"
        lines.append(f"| {r.finding} | {r.statement} | {r.statistic if isinstance(r.statistic, str) else '-'} | "
                     f"{value} | {r.verdict} | {r.figures} |")
    if detail:
        lines += [""] + [f"{r.finding}. {r.detail}" for r in table.itertuples()]
    return "\n".join(lines)


def _inputs(cfg: dict, stem: str) -> list[str]:
    return sorted({p for e in plan(cfg) for p in e.get("tables", {}).values()})


ANALYSIS = Analysis(
    name="findings", source="summary", compute=compute,
    stems=lambda cfg: [paths.dataset_key(cfg)],
    inputs=_inputs,
    spec=lambda cfg, stem: {"plan": plan(cfg)},
    report_rows={f"finding {k}": ids for k, ids in FIGURES.items()},
    code=("analyses/cka_maps.py", "analyses/data_scale.py", "analyses/skip_ablation.py"))
