"""seelike.api: compare_features and compare_models against an independent float64 reference of minibatch
CKA, with real timm models and a plain nn.Sequential; load_tables on a run written by the project's
writers (and on the complete demo run where one is at hand); the README's example, executed."""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import small_run
from conftest import ROOT
from seelike import api, paths
from seelike.cka_tables import COLUMNS
from seelike.models import create_timm_model


# ----------------------------------------------------------------------------- the float64 reference

def ref_hsic(k: np.ndarray, l: np.ndarray, estimator: str) -> float:
    """Song et al. (2012) unbiased HSIC in its trace form, or the biased tr(KHLH)/(n-1)^2; float64."""
    n = k.shape[0]
    if estimator == "biased":
        h = np.eye(n) - np.full((n, n), 1.0 / n)
        return float(np.trace(k @ h @ l @ h)) / (n - 1) ** 2
    kt, lt = k - np.diag(np.diag(k)), l - np.diag(np.diag(l))
    one = np.ones(n)
    return float(np.trace(kt @ lt) + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
                 - 2.0 / (n - 2) * (one @ kt @ lt @ one)) / (n * (n - 3))


def t975_dof2() -> float:
    """Student's t quantile 0.975 for 2 degrees of freedom, closed form: (2p - 1) / sqrt(2 p (1 - p))."""
    p = 0.975
    return (2 * p - 1) / math.sqrt(2 * p * (1 - p))


def ref_table(xs: dict, ys: dict, b: int, estimator: str) -> dict:
    """{(layer_x, layer_y): (cka, se, ci_low, ci_high, batch_std)}: minibatch CKA of consecutive minibatches
    of b examples, jackknife over minibatches, 95% interval with t for m - 1 = 2 degrees of freedom."""
    def flat(a):
        a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a
        return a.reshape(a.shape[0], -1).astype(np.float64)

    fx = {k: flat(v) for k, v in xs.items()}
    fy = {k: flat(v) for k, v in ys.items()}
    n = next(iter(fx.values())).shape[0]
    m = n // b
    assert m == 3, "the closed-form t quantile is for 3 minibatches"
    batches = [slice(s, s + b) for s in range(0, n, b)]

    def per_batch(u, v):
        return np.array([ref_hsic(u[s] @ u[s].T, v[s] @ v[s].T, estimator) for s in batches])

    out = {}
    for kx, u in fx.items():
        for ky, v in fy.items():
            hxy, hxx, hyy = per_batch(u, v), per_batch(u, u), per_batch(v, v)
            cka = hxy.mean() / math.sqrt(hxx.mean() * hyy.mean())
            keep = [np.arange(m) != i for i in range(m)]
            loo = np.array([hxy[k].mean() / math.sqrt(hxx[k].mean() * hyy[k].mean()) for k in keep])
            se = math.sqrt((m - 1) / m * ((loo - loo.mean()) ** 2).sum())
            std = np.std(hxy / np.sqrt(hxx * hyy), ddof=1)
            out[(kx, ky)] = (cka, se, cka - t975_dof2() * se, cka + t975_dof2() * se, std)
    return out


def assert_matches_reference(table: pd.DataFrame, xs: dict, ys: dict, b: int, estimator: str, atol: float):
    want = ref_table(xs, ys, b, estimator)
    assert list(table.columns) == COLUMNS
    assert len(table) == len(want)
    for row in table.itertuples():
        cka, se, lo, hi, std = want[(row.layer_x, row.layer_y)]
        got = (row.cka, row.se, row.ci_low, row.ci_high, row.batch_std)
        np.testing.assert_allclose(got, (cka, se, lo, hi, std), rtol=0, atol=atol,
                                   err_msg=f"{row.layer_x} x {row.layer_y}")
    assert (table.status == "ok").all() and (table.estimator == estimator).all()
    assert (table.n_minibatches == 3).all() and (table.n_examples == 3 * b).all()


def integer_features(rng, *shape) -> np.ndarray:
    """Small integers as float32: every Gram entry is exact in float32 products, so the workflow's
    estimator and the float64 reference must agree to rounding in float64."""
    return rng.integers(-3, 4, size=shape).astype(np.float32)


# ----------------------------------------------------------------------------- compare_features

@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
def test_compare_features_numpy_and_torch_match_float64_reference(estimator):
    rng = np.random.default_rng(0)
    n, b = 48, 16
    tokens = integer_features(rng, n, 5, 6)                         # (n, t, d), numpy
    flat = torch.from_numpy(integer_features(rng, n, 9))            # (n, d), torch
    mixed = tokens[:, :, :4] + integer_features(rng, n, 5, 4)       # related to `tokens`, so CKA is not ~0
    a = {"tokens": tokens, "flat": flat}
    bb = {"mixed": torch.from_numpy(mixed), "plain": integer_features(rng, n, 7)}
    table = api.compare_features(a, bb, estimator=estimator, minibatch_size=b, names=("A", "B"))
    assert_matches_reference(table, a, bb, b, estimator, atol=1e-8)
    assert set(table.model_x) == {"A"} and set(table.model_y) == {"B"}
    assert table.index_x.tolist() == [0, 0, 1, 1] and table.layer_y.tolist() == ["mixed", "plain"] * 2
    assert table.loc[table.layer_y == "mixed", "cka"].iloc[0] > 0.3        # a non-trivial value is compared


def test_compare_features_float64_gaussian_within_float32_product_accuracy():
    """Real-valued float64 features go through float32 Gram products (as extraction's do): ~1e-7."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(96, 4, 8)) + 3.0
    y = np.tanh(x.reshape(96, -1) @ rng.normal(size=(32, 12)))
    a, b = {"x": x}, {"y": torch.from_numpy(y), "x_again": torch.from_numpy(x)}
    table = api.compare_features(a, b, minibatch_size=32)
    assert_matches_reference(table, a, b, 32, "unbiased", atol=1e-6)
    np.testing.assert_allclose(table.loc[table.layer_y == "x_again", "cka"], 1.0, atol=1e-6)


def test_compare_features_single_arrays_and_within():
    rng = np.random.default_rng(2)
    x = integer_features(rng, 48, 10)
    one = api.compare_features(x, x ** 2, minibatch_size=16)
    assert one[["layer_x", "layer_y"]].values.tolist() == [["features", "features"]]
    within = api.compare_features({"x": x, "sq": x ** 2, "cube": x ** 3}, minibatch_size=16)
    assert len(within) == 9 and set(within.model_y) == {"a"}
    np.testing.assert_allclose(within.loc[within.layer_x == within.layer_y, "cka"], 1.0, atol=1e-12)
    grid = within.pivot(index="layer_x", columns="layer_y", values="cka")
    np.testing.assert_allclose(grid.values, grid.values.T, atol=1e-12)


def test_compare_features_default_minibatch_is_the_workflows():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(512, 6))
    table = api.compare_features(x, x + rng.normal(size=(512, 6)))
    assert api.default_minibatch_size() == 256 and table.n_minibatches.iloc[0] == 2


def test_compare_features_bad_inputs_name_what_to_change():
    x = np.ones((40, 3))
    with pytest.raises(ValueError, match=r"unknown measure 'rsa'; allowed: cka"):
        api.compare_features(x, x, measure="rsa", minibatch_size=8)
    with pytest.raises(ValueError, match=r"unknown estimator 'debiased'; allowed: unbiased, biased"):
        api.compare_features(x, x, estimator="debiased", minibatch_size=8)
    with pytest.raises(ValueError, match=r"not a multiple of minibatch_size \(16\).*divide 40: 4, 5, 8, 10, 20, 40"):
        api.compare_features(x, x, minibatch_size=16)
    with pytest.raises(ValueError, match=r"at least 4 examples"):
        api.compare_features(x, x, minibatch_size=2)
    with pytest.raises(ValueError, match=r"b\['short'\] has 39 examples, a\['features'\] has 40"):
        api.compare_features(x, {"short": x[:39]}, minibatch_size=8)
    with pytest.raises(TypeError, match=r"a\['l'\] is a list"):
        api.compare_features({"l": [[1.0]] * 40}, x, minibatch_size=8)


# ----------------------------------------------------------------------------- compare_models

def tiny_vit():
    return create_timm_model("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32,
                                                      "num_heads": 2, "num_classes": 5})


def tiny_resnet():
    return create_timm_model("resnet18", {"num_classes": 5, "channels": [8, 16, 32, 64]})


def images(n: int, seed: int = 0, size: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def hooked(model, modules: list[str], x: torch.Tensor, b: int) -> dict:
    """Outputs of the named modules, captured by hand with forward hooks, forward batches of b."""
    store = {m: [] for m in modules}
    handles = [model.get_submodule(m).register_forward_hook(lambda mod, i, o, m=m: store[m].append(o.detach()))
               for m in modules]
    try:
        with torch.no_grad():
            for s in range(0, len(x), b):
                model(x[s:s + b])
    finally:
        for h in handles:
            h.remove()
    return {m: torch.cat(v) for m, v in store.items()}


def test_compare_models_timm_vit_and_resnet_match_hand_hooked_features():
    torch.manual_seed(0)
    vit, cnn = tiny_vit().eval(), tiny_resnet()
    cnn.train()                                         # restored afterwards
    x = images(24)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(24)), batch_size=8)
    table = api.compare_models(vit, cnn, loader, minibatch_size=12, names=("vit", "cnn"))
    assert cnn.training and not vit.training
    # the workflow's layers: one per transformer block, one per residual unit
    assert table.layer_x.unique().tolist() == ["block0", "block1"]
    assert table.layer_y.unique().tolist() == [f"stage{s}.unit{u}" for s in range(4) for u in range(2)]
    assert (table.n_minibatches == 2).all() and (table.n_examples == 24).all()
    cnn.eval()
    fa = hooked(vit, ["blocks.0", "blocks.1"], x, 12)
    fb = hooked(cnn, [f"layer{s}.{u}" for s in range(1, 5) for u in range(2)], x, 12)
    want = api.compare_features({f"block{i}": v for i, v in enumerate(fa.values())},
                                dict(zip(table.layer_y.unique(), fb.values())), minibatch_size=12)
    np.testing.assert_allclose(table.cka, want.cka, rtol=0, atol=1e-10)
    np.testing.assert_allclose(table.se, want.se, rtol=0, atol=1e-10)
    assert table.cka.between(-1, 1).all() and table.ci_low.lt(table.ci_high).all()


def test_compare_models_plain_sequential_needs_layer_names():
    torch.manual_seed(1)
    seq = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, 6))
    x = images(32, seed=2, size=8)
    loader = [x[s:s + 8] for s in range(0, 32, 8)]             # any iterable of image batches
    with pytest.raises(ValueError, match=r"cannot choose the layers of model_a \(Sequential\).*pass layers_a="):
        api.compare_models(seq, None, loader)
    with pytest.raises(ValueError, match=r"layers_a: layer module '5' not found"):
        api.compare_models(seq, None, loader, layers_a=["1", "5"])
    table = api.compare_models(seq, None, loader, layers_a=["1", "2", "3"])
    assert len(table) == 9 and table.n_minibatches.iloc[0] == 4      # None: the loader's batch size, 8
    feats = hooked(seq, ["1", "2", "3"], x, 8)
    want = api.compare_features(feats, minibatch_size=8)
    np.testing.assert_allclose(table.cka, want.cka, rtol=0, atol=1e-10)


def test_compare_models_left_over_examples_are_an_error():
    seq = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    x = images(20, size=8)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=4)
    with pytest.raises(ValueError, match=r"number of examples = 20 is not a multiple of minibatch_size \(8\)"):
        api.compare_models(seq, None, loader, layers_a=["1"], minibatch_size=8)
    batches = (x[s:s + 4] for s in range(0, 20, 4))             # a generator: the size is known only at the end
    with pytest.raises(ValueError, match=r"yielded 20 examples, not a multiple of minibatch_size 8; 4 were left"):
        api.compare_models(seq, None, batches, layers_a=["1"], minibatch_size=8)


# ----------------------------------------------------------------------------- load_tables

@pytest.fixture(scope="module")
def small_results(tmp_path_factory):
    return small_run.build(tmp_path_factory.mktemp("small_run"))


def test_load_tables_reads_every_table_with_checked_provenance(small_results, tmp_path):
    import shutil

    results = tmp_path / paths.RESULTS
    shutil.copytree(small_results, results)
    tables = api.load_tables(results)
    assert sorted(tables) == ["cka/cnn__cnn", "cka/vit__cnn", "cka/vit__vit", "norm_ratio/vit", "probes/vit"]
    assert {n: t.kind for n, t in tables.items()} == {"cka/cnn__cnn": "cka", "cka/vit__cnn": "cka", "cka/vit__vit": "cka",
                                                      "norm_ratio/vit": "vision", "probes/vit": "experiment"}
    t = tables["cka/vit__cnn"]
    assert list(t.frame.columns) == COLUMNS and len(t.frame) == 2 * 8
    pd.testing.assert_frame_equal(t.frame, pd.read_csv(t.path))
    assert t.provenance == json.loads(Path(str(t.path) + ".prov.json").read_text())
    assert t.provenance["config"]["models"] == ["vit", "cnn"]
    manifests = [paths.fill(paths.MANIFEST, dataset="synth", model=m) for m in ("vit", "cnn")]
    assert api.check_inputs(t.provenance, results) == {m: "ok" for m in manifests}   # recorded as the workflow does
    small_run.under(results, paths.MANIFEST, dataset="synth", model="cnn").write_text("{}")
    assert api.check_inputs(t.provenance, results) == {manifests[0]: "ok", manifests[1]: "changed"}
    assert sorted(api.load_tables(results, kind="cka")) == ["cka/cnn__cnn", "cka/vit__cnn", "cka/vit__vit"]
    assert sorted(api.load_tables(results, kind=["vision", "experiment"])) == ["norm_ratio/vit", "probes/vit"]
    with pytest.raises(ValueError, match=r"unknown table kind\(s\) 'figures'; allowed: cka, "):
        api.load_tables(results, kind="figures")
    assert api.figure_files(results) == {"F1/vit": [small_run.under(results, paths.FIGURE, figure="F1", stem="vit",
                                                                     fmt=f) for f in ("pdf", "png")]}

    # the findings table, once the run has written it
    assert "findings" not in tables
    small_run.write_findings(results)
    findings = api.load_tables(results, kind="findings")["findings"]
    verdicts = findings.frame.verdict.tolist()
    assert findings.kind == "findings" and verdicts[1:] == ["not configured"] * 5
    assert verdicts[0] in ("supported", "not supported", "inconclusive")


@pytest.mark.parametrize("damage, message", [
    (lambda side: side.write_text(side.read_text()[:-40]), r"is not valid JSON"),
    (lambda side: side.unlink(), r"has no provenance: '.*vit__cnn\.csv\.prov\.json' is missing"),
    (lambda side: side.write_text(json.dumps({**json.loads(side.read_text()), "config": {"models": ["x"]}})),
     r"config_hash '[0-9a-f]+' is not the digest of its config"),
    (lambda side: side.write_text(json.dumps({k: v for k, v in json.loads(side.read_text()).items() if k != "inputs"})),
     r"lacks the key\(s\) inputs"),
])
def test_load_tables_names_a_corrupt_provenance_sidecar(small_results, tmp_path, damage, message):
    import shutil

    results = tmp_path / paths.RESULTS
    shutil.copytree(small_results, results)
    table = small_run.under(results, paths.CKA_TABLE, dataset="synth", x="vit", y="cnn")
    damage(Path(str(table) + ".prov.json"))
    with pytest.raises(ValueError, match=message) as err:
        api.load_tables(results)
    assert "vit__cnn.csv" in str(err.value) and "run the workflow again" in str(err.value)
    assert sorted(api.load_tables(results, kind="vision")) == ["norm_ratio/vit"]     # the others still load


def test_load_tables_names_a_corrupt_csv_and_a_missing_folder(small_results, tmp_path):
    import shutil

    results = tmp_path / paths.RESULTS
    shutil.copytree(small_results, results)
    table = small_run.under(results, paths.TABLES["experiment"], table="probes", stem="vit")
    table.write_bytes(b"")
    with pytest.raises(ValueError, match=r"table '.*probes/vit\.csv' cannot be read as CSV"):
        api.load_tables(results, kind="experiment")
    with pytest.raises(FileNotFoundError, match=r"results folder '.*nowhere' does not exist"):
        api.load_tables(tmp_path / "nowhere")


DEMO = Path(os.environ.get("SEELIKE_DEMO_RESULTS", "/work/finaldemo/results"))


@pytest.mark.skipif(not DEMO.is_dir(), reason="no complete demo run at hand (set SEELIKE_DEMO_RESULTS)")
def test_load_tables_on_a_complete_demo_run():
    """Every table the run's figures are drawn from, and the findings, load with their provenance: the
    expected set comes from the registry and the config the run recorded, not from counts."""
    from seelike import config, paths, registry

    tables = api.load_tables(DEMO)
    kinds = {}
    for t in tables.values():
        kinds[t.kind] = kinds.get(t.kind, 0) + 1
        assert len(t.frame) and t.provenance["inputs"], t.name
    cfg = config.load(json.loads((DEMO.parent / paths.RUN_CONFIG).read_text()), check_timm=False)
    expected = set(registry.final_tables(cfg))
    for f, a in registry.figures():
        for stem in registry.figure_stems(cfg, f, a):
            expected |= set(registry.figure_spec(cfg, f.id, stem)["tables"])
    loaded = {str(t.path.resolve().relative_to(DEMO.parent.resolve())) for t in tables.values()}
    assert expected and not expected - loaded, sorted(expected - loaded)
    assert set(kinds) == {"cka", "vision", "experiment", "findings"}, kinds
    vr = tables["cka/vit__resnet"].frame
    assert list(vr.columns) == COLUMNS and vr.ci_low.le(vr.cka).all() and vr.cka.le(vr.ci_high).all()


# ----------------------------------------------------------------------------- the README's example

def test_readme_python_api_example_runs(tmp_path, monkeypatch, capsys):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) == 5
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    table = scope["table"]
    assert list(table.columns) == COLUMNS and len(table) == 2
    printed = capsys.readouterr().out
    assert "ci_low" in printed and "x_squared" in printed
    cka = table.set_index("layer_x").cka
    assert 0.3 < cka["x"] < 0.7 and abs(cka["x_squared"]) < 0.1     # y: a quarter of x's features (~sqrt(1/4))
    assert list(tmp_path.iterdir()) == []                            # it writes no files
