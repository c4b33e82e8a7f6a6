"""The deterministic example plan (seelike.plan)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from seelike.plan import Plan, check_same_plan, make_plan, plan_differences

ARGS = dict(dataset="demo:abc123", n_examples=96, minibatch_size=8, minibatches_per_shard=5, seed=3)


def plan(**kw):
    a = {**ARGS, **kw}
    available = a.pop("available", np.arange(200))
    return make_plan(available=available, **a)


def test_deterministic_and_independent_of_available_order():
    p, q = plan(), plan()
    assert p == q and p.digest() == q.digest()
    rng = np.random.default_rng(1)
    r = plan(available=rng.permutation(200))
    assert r == p
    assert len(set(p.indices)) == p.n_examples == len(p.indices)
    assert set(p.indices) <= set(range(200))
    assert p.indices != tuple(sorted(p.indices))  # shuffled
    assert plan(seed=4).indices != p.indices


def test_identical_in_another_process():
    """Every model's extraction builds its plan in its own process: no dependence on
    Python hash randomisation or global state."""
    p = plan()
    code = (
        "import numpy as np; from seelike.plan import make_plan; "
        "print(make_plan('demo:abc123', np.arange(200)[::-1], 96, 8, 5, 3).digest())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == p.digest()


def test_golden_order():
    """Pins the order algorithm (blake2b of 'seed:index'); changing it changes every plan."""
    p = make_plan("x", np.arange(20), 8, 4, 1, 0)
    import hashlib

    keys = sorted(range(20), key=lambda i: hashlib.blake2b(f"0:{i}".encode(), digest_size=16).digest())
    assert list(p.indices) == keys[:8]


def test_prefix_stable_and_superset_stable():
    small, big = plan(n_examples=48), plan(n_examples=96)
    assert big.indices[:48] == small.indices
    more = plan(available=np.arange(400), n_examples=400 // 8 * 8)
    kept = [i for i in more.indices if i < 200]
    assert tuple(kept[:96]) == plan().indices


def test_shards_cover_minibatches_without_overlap():
    p = plan()  # 96 examples, 12 minibatches of 8, 5 per shard -> 3 shards (5, 5, 2)
    assert p.n_minibatches == 12 and p.n_shards == 3
    shards = list(p.shards())
    assert [len(s.minibatches) for s in shards] == [5, 5, 2]
    all_idx = np.concatenate([s.example_indices for s in shards])
    all_mb = np.concatenate([s.minibatch_ids for s in shards])
    assert list(all_idx) == list(p.indices)  # coverage, plan order, no overlap
    assert list(all_mb) == list(np.repeat(np.arange(12), 8))
    assert [s.start for s in shards] == [0, 40, 80]
    for s in shards:
        assert s.example_indices.dtype == np.int64 and len(s.minibatch_ids) == s.n_examples
    with pytest.raises(IndexError, match="3 shard"):
        p.shard(3)


def test_minibatches_mix_classes():
    labels = np.arange(1000) % 10  # like the synthetic dataset: class = index % 10
    p = make_plan("d", np.arange(1000), 512, 32, 4, 0)
    for m in range(p.n_minibatches):
        batch = p.indices_array[m * 32 : (m + 1) * 32]
        assert len(np.unique(labels[batch])) >= 5


def test_roundtrip_and_digest_covers_every_field():
    p = plan()
    d = p.to_dict()
    assert d["version"] == 1 and isinstance(d["indices"], list)
    assert Plan.from_dict(json.loads(json.dumps(d))) == p
    assert Plan.from_json(p.to_json()).digest() == p.digest()
    variants = {
        "dataset": dict(dataset="demo:other"),
        "n_examples": dict(n_examples=88),
        "minibatch_size": dict(minibatch_size=12),
        "minibatches_per_shard": dict(minibatches_per_shard=4),
        "seed": dict(seed=9),
        "indices": dict(available=np.arange(1, 201)),
    }
    digests = {p.digest()}
    for key, kw in variants.items():
        q = plan(**kw)
        digests.add(q.digest())
        assert key in plan_differences(p, q), key
    assert len(digests) == len(variants) + 1
    # only the indices differ when the seed-sorted order is permuted by hand
    swapped = list(p.indices)
    swapped[0], swapped[1] = swapped[1], swapped[0]
    q = Plan(**{**{k: v for k, v in d.items() if k != "version"}, "indices": swapped})
    assert q.digest() != p.digest()
    assert plan_differences(p, q) == ["indices"]
    assert plan_differences(p, d) == [] and plan_differences(d, p.to_dict()) == []
    # same examples in the same order, only grouped differently
    assert plan_differences(p, plan(minibatch_size=12)) == ["minibatch_size"]
    assert plan_differences(p, plan(n_examples=48, seed=0)) == ["n_examples", "seed", "indices"]


def test_check_same_plan_names_sources_and_keys():
    check_same_plan(plan(), plan().to_dict(), "vit", "resnet")
    with pytest.raises(ValueError, match=r"vit and resnet differ in seed, indices"):
        check_same_plan(plan(), plan(seed=1), "vit", "resnet")


def test_errors():
    with pytest.raises(ValueError, match=r"n_examples=256 is larger than the 200 examples"):
        plan(n_examples=256)
    with pytest.raises(ValueError, match=r"n_examples = 100 is not a multiple of minibatch_size \(8\); use 96 or 104"):
        plan(n_examples=100)
    with pytest.raises(ValueError, match=r"use 192\b.*at most 200"):
        plan(n_examples=198, minibatch_size=16)  # 208 would exceed the 200 available
    with pytest.raises(ValueError, match=r"minibatch_size = 3 is too small: the example plan needs at least 4 examples per minibatch"):
        plan(minibatch_size=3, n_examples=96)
    with pytest.raises(ValueError, match="duplicate"):
        plan(available=np.array([1, 2, 3, 3, 4, 5, 6, 7, 8, 9]), n_examples=8)
    with pytest.raises(ValueError, match="minibatches_per_shard"):
        plan(minibatches_per_shard=0)
    with pytest.raises(ValueError, match="integer"):
        plan(available=np.linspace(0, 1, 200))
    with pytest.raises(ValueError, match="missing key"):
        Plan.from_dict({"dataset": "x"})
    with pytest.raises(ValueError, match="version"):
        Plan.from_dict({**plan().to_dict(), "version": 99})


def test_n_examples_none_takes_largest_multiple():
    p = plan(n_examples=None)
    assert p.n_examples == 200 and p.n_shards == 5  # 25 minibatches, 5 per shard
    assert plan(n_examples=None, minibatch_size=16).n_examples == 192


def test_excluded_files_travel_with_the_plan_and_leave_other_digests_alone():
    plain = make_plan("ds:x", np.arange(40), 16, 4, 2, 0)
    assert "excluded" not in plain.to_dict()            # plans without excluded files keep their digests
    ex = make_plan("ds:x", np.arange(40), 16, 4, 2, 0, excluded=["b/2.jpg", "a/1.jpg", "b/2.jpg"])
    assert ex.excluded == ("a/1.jpg", "b/2.jpg") and ex.to_dict()["excluded"] == ["a/1.jpg", "b/2.jpg"]
    assert Plan.from_dict(ex.to_dict()).digest() == ex.digest() != plain.digest()
    assert plan_differences(plain, ex) == ["excluded"]
    with pytest.raises(ValueError, match="excluded must be a sequence of relative file paths"):
        make_plan("ds:x", np.arange(40), 16, 4, 2, 0, excluded="a/1.jpg")
