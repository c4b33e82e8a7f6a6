"""The findings table: each statistic on hand-made tables whose answer is known (one case that supports
the finding, one that does not, one that is inconclusive), the statistics against independent
re-computations, and the step end to end on real CSV files."""
from __future__ import annotations

import copy
import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml

from seelike import config, paths, registry
from seelike.analyses import findings as fd


# ----------------------------------------------------------------------------- hand-made tables

def cka_table(mx, nx, my, ny, value, se=0.01):
    """A CKA table with every (i, j) cell; `value(i, j)` gives the CKA."""
    rows = []
    for i, j in itertools.product(range(nx), range(ny)):
        rows.append({"model_x": mx, "layer_x": f"l{i}", "index_x": i, "model_y": my, "layer_y": f"l{j}",
                     "index_y": j, "cka": value(i, j), "se": se, "ci_low": 0, "ci_high": 1, "status": "ok"})
    return pd.DataFrame(rows)


def within(model, n, far, near=0.95, se=0.01):
    return cka_table(model, n, model, n, lambda i, j: 1.0 if i == j else (far if abs(i - j) / (n - 1) >= 0.5 else near),
                     se)


def distances(model, lower, upper, se=0.1, blocks=6, heads=3, uniform=16.0):
    """Attention distances: the lower half's heads at `lower` (a list per head), the others at `upper`."""
    rows = []
    for b in range(blocks):
        for h in range(heads):
            d = lower[h] if b < blocks // 2 else upper
            rows.append({"model": model, "block": f"block{b}", "block_index": b, "head": h, "distance": d,
                         "se": se, "uniform_distance": uniform})
    return pd.DataFrame(rows)


def skip(base, ablated: dict, n_test=1000):
    rows = [{"model": "base", "block": -1, "branch": "none", "baseline": True, "test_accuracy": base,
             "chance": 0.1, "n_test": n_test}]
    rows += [{"model": f"skip{b}", "block": b, "branch": "both", "baseline": False, "test_accuracy": a,
              "chance": 0.1, "n_test": n_test} for b, a in ablated.items()]
    return pd.DataFrame(rows)


POSITIONS = [(0, 0), (0, 3), (2, 2), (3, 0), (3, 3)]


def localization(model, diag, off, se=0.01, grid=4):
    rows = []
    for (pr, pc) in POSITIONS:
        for qr, qc in itertools.product(range(grid), range(grid)):
            d = (qr, qc) == (pr, pc)
            rows.append({"model": model, "layer": "last", "grid_h": grid, "grid_w": grid, "p_row": pr, "p_col": pc,
                         "q_row": qr, "q_col": qc, "cka": diag if d else off, "se": se, "status": "ok",
                         "diagonal": d, "n_minibatches": 8})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- verdicts

def test_verdict_rules():
    assert fd.verdict([fd.Test("a", 1.0, 0.1)]) == "supported"
    assert fd.verdict([fd.Test("a", -1.0, 0.1)]) == "not supported"
    assert fd.verdict([fd.Test("a", 0.1, 0.1)]) == "inconclusive"
    # every test must clear its threshold; one below it decides "not supported"
    assert fd.verdict([fd.Test("a", 1.0, 0.1), fd.Test("b", 0.1, 0.1)]) == "inconclusive"
    assert fd.verdict([fd.Test("a", 1.0, 0.1), fd.Test("b", -1.0, 0.1)]) == "not supported"
    # an interval that touches the threshold from below is not support; a missing se is no evidence
    assert fd.verdict([fd.Test("a", 0.0, 0.0)]) == "not supported"
    assert fd.verdict([fd.Test("a", 1.0, float("nan"))]) == "inconclusive"
    assert fd.verdict([]) == "inconclusive"
    lo, hi = fd.Test("a", 0.5, 0.1).interval
    assert lo == pytest.approx(0.5 - 1.959964 * 0.1) and hi == pytest.approx(0.5 + 1.959964 * 0.1)


# ----------------------------------------------------------------------------- finding 1

@pytest.mark.parametrize("vit_far, cnn_far, se, expected", [
    (0.90, 0.50, 0.01, "supported"),
    (0.50, 0.90, 0.01, "not supported"),
    (0.70, 0.68, 0.05, "inconclusive"),
])
def test_uniformity(vit_far, cnn_far, se, expected):
    tests, _ = fd.uniformity(within("vit", 6, vit_far, se=se), within("cnn", 9, cnn_far, se=se))
    assert fd.verdict(tests) == expected
    assert tests[0].value == pytest.approx(vit_far - cnn_far)


def test_far_cka_matches_a_direct_computation():
    rng = np.random.default_rng(1)
    vals = rng.uniform(0, 1, (7, 7))
    ses = rng.uniform(0.001, 0.05, (7, 7))
    t = cka_table("m", 7, "m", 7, lambda i, j: vals[i, j])
    t["se"] = [ses[i, j] for i, j in itertools.product(range(7), range(7))]
    t.loc[(t.index_x == 0) & (t.index_y == 6), "status"] = "undefined"   # skipped cells
    cells = [(i, j) for i in range(7) for j in range(i + 1, 7) if (j - i) / 6 >= 0.5 and (i, j) != (0, 6)]
    mean, se = fd.far_cka(t)
    assert mean == pytest.approx(np.mean([vals[c] for c in cells]), abs=1e-12)
    assert se == pytest.approx(np.mean([ses[c] for c in cells]), abs=1e-12)


# ----------------------------------------------------------------------------- finding 2

@pytest.mark.parametrize("more, less, se, expected", [
    ([5.0, 6.0, 15.0], [15.0, 15.5, 15.0], 0.1, "supported"),        # 2 of 3 lower heads local vs none
    ([15.0, 15.5, 15.0], [5.0, 6.0, 15.0], 0.1, "not supported"),
    ([12.7, 15.0, 15.0], [12.9, 15.0, 15.0], 1.0, "inconclusive"),   # both at the cut (12.8), noisy
])
def test_local_heads(more, less, se, expected):
    tests, detail = fd.local_heads(distances("more", more, 15.0, se), distances("less", less, 15.0, se))
    assert fd.verdict(tests) == expected
    cut = fd.LOCAL * 16.0
    assert tests[0].value == pytest.approx(np.mean(np.array(more) < cut) - np.mean(np.array(less) < cut))
    assert "lower-half" in detail


def test_local_heads_need_local_heads_in_the_more_data_model():
    # no local heads anywhere: the difference is 0 and the model has none -> not supported
    tests, _ = fd.local_heads(distances("a", [15.0] * 3, 15.0), distances("b", [15.0] * 3, 15.0))
    assert fd.verdict(tests) == "not supported"


# ----------------------------------------------------------------------------- finding 3

@pytest.mark.parametrize("base, ablated, n, expected", [
    (0.80, {1: 0.5, 3: 0.60}, 1000, "supported"),
    (0.80, {1: 0.5, 3: 0.85}, 1000, "not supported"),
    (0.80, {1: 0.5, 3: 0.79}, 100, "inconclusive"),
])
def test_skip_cost_uses_the_middle_block(base, ablated, n, expected):
    tests, detail = fd.skip_cost(skip(base, ablated, n), depth=6)
    assert fd.verdict(tests) == expected
    assert tests[0].value == pytest.approx(base - ablated[3])       # block 3 is nearest the middle (2.5)
    p1, p2 = base, ablated[3]
    assert tests[0].se == pytest.approx(math.sqrt(p1 * (1 - p1) / n + p2 * (1 - p2) / n))
    assert "block 1: 0.500" in detail


def test_skip_cost_without_test_counts_is_inconclusive():
    acc = skip(0.9, {3: 0.1}).drop(columns="n_test")
    tests, _ = fd.skip_cost(acc, depth=6)
    assert fd.verdict(tests) == "inconclusive"


# ----------------------------------------------------------------------------- finding 4

@pytest.mark.parametrize("cls, gap, se, expected", [
    ((0.8, 0.2), (0.3, 0.25), 0.01, "supported"),
    ((0.3, 0.25), (0.8, 0.2), 0.01, "not supported"),
    ((0.5, 0.3), (0.45, 0.3), 0.1, "inconclusive"),
])
def test_localization(cls, gap, se, expected):
    tests, _ = fd.localization(localization("cls", *cls, se), localization("gap", *gap, se))
    assert fd.verdict(tests) == expected
    assert tests[0].value == pytest.approx((cls[0] - cls[1]) - (gap[0] - gap[1]))


def test_localization_peak_matches_a_direct_computation():
    rng = np.random.default_rng(2)
    t = localization("m", 0, 0)
    t["cka"] = rng.uniform(0, 1, len(t))
    t["se"] = rng.uniform(0.001, 0.05, len(t))
    peaks, ses = [], []
    for p in POSITIONS:
        g = t[(t.p_row == p[0]) & (t.p_col == p[1])]
        d = g[(g.q_row == p[0]) & (g.q_col == p[1])]
        o = g[~((g.q_row == p[0]) & (g.q_col == p[1]))]
        peaks.append(d.cka.iloc[0] - o.cka.mean())
        ses.append(math.sqrt(d.se.iloc[0] ** 2 + o.se.mean() ** 2))
    peak, se = fd.localization_peak(t)
    assert peak == pytest.approx(np.mean(peaks), abs=1e-12)
    assert se == pytest.approx(np.mean(ses), abs=1e-12)


# ----------------------------------------------------------------------------- finding 5

@pytest.mark.parametrize("small, large, se, expected", [
    (0.60, 0.90, 0.01, "supported"),
    (0.90, 0.60, 0.01, "not supported"),
    (0.80, 0.81, 0.05, "inconclusive"),
])
def test_data_scale(small, large, se, expected):
    pairs = {"f10": cka_table("full", 6, "f10", 6, lambda i, j: small if i == j else 0.1, se),
             "f30": cka_table("full", 6, "f30", 6, lambda i, j: large if i == j else 0.1, se)}
    tests, detail = fd.data_scale(pairs, {"f10": 0.1, "f30": 0.3}, "full")
    assert fd.verdict(tests) == expected
    assert tests[0].value == pytest.approx(large - small)
    assert detail.index("10%") < detail.index("30%")


# ----------------------------------------------------------------------------- finding 6

@pytest.mark.parametrize("with_vit, with_cnn, se, expected", [
    (0.8, 0.4, 0.01, "supported"),
    (0.4, 0.8, 0.01, "not supported"),
    (0.6, 0.58, 0.05, "inconclusive"),
])
def test_mixer_closer(with_vit, with_cnn, se, expected):
    # Mixer 6 layers; ViT 6 (stored as x: the pair's first model), CNN 9 layers (stored as y)
    matched_vit = cka_table("vit", 6, "mixer", 6, lambda i, j: with_vit if i == j else 0.0, se)
    matched_cnn = cka_table("mixer", 6, "cnn", 9, lambda i, j: with_cnn if round(i / 5 * 8) == j else 0.0, se)
    tests, _ = fd.mixer_closer(matched_vit, matched_cnn, "mixer")
    assert fd.verdict(tests) == expected
    assert tests[0].value == pytest.approx(with_vit - with_cnn)


def test_depth_matching_picks_the_nearest_relative_depth():
    rng = np.random.default_rng(3)
    vals = rng.uniform(0, 1, (4, 7))
    t = cka_table("mixer", 4, "cnn", 7, lambda i, j: vals[i, j])
    expected = np.mean([vals[i, int(np.argmin([abs(j / 6 - i / 3) for j in range(7)]))] for i in range(4)])
    assert fd.depth_matched(t, "mixer")[0] == pytest.approx(expected, abs=1e-12)


# ----------------------------------------------------------------------------- the plan and the step

@pytest.fixture(scope="module")
def demo_cfg():
    return config.load_file("config/demo.yaml", check_timm=False)


def test_every_finding_is_planned_for_the_demo(demo_cfg):
    plan = fd.plan(demo_cfg)
    assert [e["finding"] for e in plan] == [1, 2, 3, 4, 5, 6]
    assert not [e for e in plan if "missing" in e], "the demo configures every finding"
    inputs = registry.table_inputs(demo_cfg, registry.get("findings"), paths.dataset_key(demo_cfg))
    assert all(p.startswith(paths.RESULTS + "/") for p in inputs)
    assert paths.table(demo_cfg, "summary", "findings", "synth") in registry.final_tables(demo_cfg)


def test_a_finding_without_its_models_says_what_to_add(demo_cfg):
    raw = yaml.safe_load(open("config/demo.yaml"))
    raw = copy.deepcopy(raw)
    raw["models"].pop("mixer")
    raw["cka"]["pairs"] = [p for p in raw["cka"]["pairs"] if "mixer" not in p]
    raw["analyses"]["snn_loss"]["models"] = [m for m in raw["analyses"]["snn_loss"]["models"] if m != "mixer"]
    raw["experiments"]["probes"]["models"] = [m for m in raw["experiments"]["probes"]["models"] if m != "mixer"]
    raw["experiments"].pop("skip_ablation")
    cfg = config.load(raw, check_timm=False)
    rows = {e["finding"]: fd.row(e, None) for e in fd.plan(cfg) if "missing" in e}
    assert set(rows) == {3, 6}
    assert rows[6]["verdict"] == "not configured" and "cka.pairs" in rows[6]["detail"]
    assert "experiments.skip_ablation" in rows[3]["detail"]


def test_the_step_writes_the_table_from_real_files(tmp_path):
    files = {"vit": within("vit", 6, 0.9), "cnn": within("cnn", 9, 0.5),
             "more": distances("more", [5.0, 6.0, 15.0], 15.0), "less": distances("less", [15.0] * 3, 15.0),
             "skip": skip(0.8, {1: 0.5, 3: 0.6}), "cls": localization("cls", 0.8, 0.2),
             "gap": localization("gap", 0.3, 0.25),
             "f10": cka_table("full", 6, "f10", 6, lambda i, j: 0.6 if i == j else 0.1),
             "f30": cka_table("full", 6, "f30", 6, lambda i, j: 0.9 if i == j else 0.1),
             "mv": cka_table("vit", 6, "mixer", 6, lambda i, j: 0.8 if i == j else 0.0),
             "mc": cka_table("mixer", 6, "cnn", 9, lambda i, j: 0.4 if round(i / 5 * 8) == j else 0.0)}
    p = {}
    for k, t in files.items():
        p[k] = str(tmp_path / f"{k}.csv")
        t.to_csv(p[k], index=False)
    plan = [{"finding": 1, "models": {"vit": "vit", "cnn": "cnn"}, "tables": {"vit": p["vit"], "cnn": p["cnn"]}},
            {"finding": 2, "models": {"more": "more", "less": "less"}, "tables": {"more": p["more"], "less": p["less"]}},
            {"finding": 3, "models": {"baseline": "base", "ablated": ["skip1", "skip3"]}, "depth": 6,
             "tables": {"skip_ablation": p["skip"]}},
            {"finding": 4, "models": {"cls": "cls", "gap": "gap"}, "tables": {"cls": p["cls"], "gap": p["gap"]}},
            {"finding": 5, "models": {"full": "full", "subsets": ["f10", "f30"]}, "fractions": {"f10": 0.1, "f30": 0.3},
             "tables": {"f10": p["f10"], "f30": p["f30"]}},
            {"finding": 6, "models": {"mixer": "mixer", "vit": "vit", "cnn": "cnn"},
             "tables": {"vit": p["mv"], "cnn": p["mc"]}}]
    out = tmp_path / "findings" / "synth.csv"
    spec = {"analysis": "findings", "plan": plan, "out": str(out), "provenance_config": {"code": "x"}}
    registry.compute(spec)
    table = pd.read_csv(out)
    assert list(table.columns) == fd.COLUMNS
    assert list(table.verdict) == ["supported"] * 6
    assert (table.ci_low <= table.value).all() and (table.value <= table.ci_high).all()
    assert json.loads((tmp_path / "findings" / "synth.csv.prov.json").read_text())
    assert "| 6 |" in fd.format_table(table)

    # a table that lost a column is named, with the next step
    files["cls"].drop(columns="se").to_csv(p["cls"], index=False)
    with pytest.raises(ValueError, match=r"cls\.csv' lacks the column\(s\) se: rerun"):
        registry.compute(spec)


def test_the_paper_config_plans_every_finding(tmp_path):
    """config/config.yaml configures the models of all six findings: none is 'not configured'."""
    from conftest import write_image_names

    raw = yaml.safe_load(open("config/config.yaml"))
    raw["datasets"]["imagenet_val"]["root"] = str(write_image_names(tmp_path / "val", 1000, 11))
    raw["datasets"]["imagenet_train"]["root"] = str(write_image_names(tmp_path / "train", 10, 3500))
    cfg = config.load(raw, check_timm=False)
    plan = fd.plan(cfg)
    missing = {e["finding"]: e["missing"] for e in plan if "missing" in e}
    assert not missing, missing
    models = {e["finding"]: e["models"] for e in plan}
    family = {n: m["family"] for n, m in cfg["models"].items()}
    assert (family[models[1]["vit"]], family[models[1]["cnn"]], family[models[6]["mixer"]]) == ("vit", "cnn", "mixer")
    # finding 2 compares the less-data ViT with the more-data ViT of its own architecture
    assert cfg["models"][models[2]["more"]]["arch"] == cfg["models"][models[2]["less"]]["arch"]
