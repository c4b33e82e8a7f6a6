"""Probe closed form against an independent float64 least-squares reference; subsets nested and stratified."""
import numpy as np
import pytest

from seelike.data.subsets import k_per_class, stratified_subset
from seelike.probes import fit_probe, one_hot, ridge_solutions


def reference_ridge(x, y, lam):
    """Augmented least squares: [Xc; sqrt(lam') I] W = [Yc; 0], solved by np.linalg.lstsq."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    scale = np.sqrt(np.mean(xc ** 2))
    d = x.shape[1]
    a = np.vstack([xc / scale, np.sqrt(lam) * np.eye(d)])
    t = np.vstack([yc, np.zeros((d, y.shape[1]))])
    w = np.linalg.lstsq(a, t, rcond=None)[0] / scale
    return w, my - mx @ w


@pytest.mark.parametrize("n,d,scale", [(60, 5, 1.0), (40, 100, 1e3), (50, 20, 1e-4)])
@pytest.mark.parametrize("lam", [1e-3, 1.0, 100.0])
def test_ridge_matches_lstsq_reference(n, d, scale, lam):
    rng = np.random.default_rng(n + d)
    x = rng.normal(size=(n, d)) * scale + 3.0
    y = one_hot(rng.integers(0, 4, n), 4)
    (w, b), = ridge_solutions(x, y, [lam])
    w_ref, b_ref = reference_ridge(x, y, lam)
    np.testing.assert_allclose(w * scale, w_ref * scale, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(b, b_ref, rtol=1e-7, atol=1e-9)


def test_rank_deficient_features():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(30, 3))
    x = np.hstack([base, base, base @ rng.normal(size=(3, 4))])  # rank 3 in 10 dims
    y = one_hot(rng.integers(0, 3, 30), 3)
    (w, b), = ridge_solutions(x, y, [0.5])
    w_ref, b_ref = reference_ridge(x, y, 0.5)
    np.testing.assert_allclose(x @ w + b, x @ w_ref + b_ref, atol=1e-9)


def test_probe_separates_separable_classes_and_not_noise():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 5, 400)
    means = rng.normal(size=(5, 16)) * 4
    x = means[y] + rng.normal(size=(400, 16))
    good = fit_probe(x[:300], y[:300], x[300:], y[300:], 5)
    assert good.accuracy > 0.95
    noise = fit_probe(rng.normal(size=(300, 16)), y[:300], rng.normal(size=(100, 16)), y[300:], 5)
    assert noise.accuracy < 0.45


def test_subsets_are_deterministic_nested_and_stratified():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 10, 5000)
    s3, s10, s30 = (stratified_subset(labels, f, seed=0) for f in (0.03, 0.10, 0.30))
    assert set(s3) <= set(s10) <= set(s30)
    np.testing.assert_array_equal(s10, stratified_subset(labels, 0.10, seed=0))
    assert not np.array_equal(s10, stratified_subset(labels, 0.10, seed=1))
    for sub, f in ((s3, 0.03), (s10, 0.10), (s30, 0.30)):
        for c in range(10):
            assert abs((labels[sub] == c).sum() - f * (labels == c).sum()) <= 1
    shots = k_per_class(labels, 10)
    assert np.bincount(labels[shots]).tolist() == [10] * 10
    with pytest.raises(ValueError, match="fraction"):
        stratified_subset(labels, 0)


def test_k_per_class_refuses_a_class_missing_from_the_pool():
    labels = np.array([0, 1, 2] * 3 + [3, 3, 3])
    with pytest.raises(ValueError, match="2-shot: class 3 has only 0 examples"):
        k_per_class(labels, 2, among=np.arange(9))


def test_probe_table_takes_the_classes_from_the_labels_not_the_model_head(tmp_path):
    """A pretrained model's head (10 outputs here, 1000 or 21843 for timm's) says nothing about the
    analysis data's classes: 12 here."""
    import pandas as pd
    from seelike.analyses.linear_probes import probe_table
    from seelike.manifest import write_manifest
    from seelike.plan import make_plan
    from seelike.store import layer_path, write_shard

    rng = np.random.default_rng(0)
    plan = make_plan("synth:x", np.arange(200), 48, 8, 3, 0)
    labels = plan.indices_array % 12
    feats = np.eye(12)[labels] @ rng.normal(size=(12, 16)) + 0.1 * rng.normal(size=(48, 16))
    files = []
    for s in range(plan.n_shards):
        sp = plan.shard(s)
        sl = slice(sp.start, sp.start + len(sp.example_indices))
        f = feats[sl] - feats[sl].mean(0)
        arrays = {"labels": labels[sl], "logits": np.zeros((len(sp.example_indices), 10), np.float32),
                  layer_path("b0", "gram"): np.stack([f[m * 8:(m + 1) * 8] @ f[m * 8:(m + 1) * 8].T for m in range(3)]),
                  layer_path("b0", "pooled_mean"): feats[sl].astype(np.float32)}
        files.append(tmp_path / f"shard-{s:05d}.h5")
        write_shard(files[-1], model="m", dataset="synth", shard_index=s, n_shards=plan.n_shards, plan=plan.to_dict(),
                    plan_digest=plan.digest(), layers=["b0"], example_indices=sp.example_indices,
                    minibatch_ids=sp.minibatch_ids, arrays=arrays, provenance={"config_hash": "h"})
    write_manifest(tmp_path / "manifest.json", model="m", dataset="synth", plan=plan.to_dict(),
                   plan_digest=plan.digest(), shard_files=files, provenance={})
    out = probe_table({"manifest": str(tmp_path / "manifest.json"), "n_classes": 10, "k_shot": 0,
                       "train_fraction": 0.75, "tokens": False, "out": str(tmp_path / "probes.csv")})
    t = pd.read_csv(out)
    assert list(t.feature) == ["mean"] and t.n_train.iloc[0] == 36 and t.n_test.iloc[0] == 12
    assert t.accuracy.iloc[0] > 0.9       # separable classes: well above the 1/12 of chance
    # F13 without k-shot probes (the paper config's k_shot: 0) draws the full probes' panel alone
    from seelike.analyses.linear_probes import probe_figure

    png = tmp_path / "F13.png"
    probe_figure({"figure": "F13", "tables": [out], "outputs": [str(png)], "dpi": 50})
    assert png.stat().st_size > 0
