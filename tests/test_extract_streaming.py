"""Extraction reduces every tapped layer inside its forward hook and drops it (seelike.extract.LayerStream).

The shards (the Grams' pass and the vision pass) must hold exactly what reducing the layers after the
forward pass gives: the reference here
is that post-forward path, written out independently (LayerTaps holding every layer's output until
the forward ends, then Grams, pooled features, tokens, per-position Grams), and every float array
must be bit-equal to it, not merely close.
"""
from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

MODELS = {
    "vit": ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2,
                                     "num_classes": 10}),
    "resnet": ("resnet18", {"num_classes": 10, "channels": [8, 16, 32, 64]}),
}
N, B, FULL_TOKENS, LOC_IMAGES = 48, 16, 20, 40


def _post_forward_reference(card_path, cfg, plan, rendered, shard, loc_layer):
    """The shard's arrays as the post-forward path computes them: every layer held until the forward ends."""
    from torch.utils.data import DataLoader, Subset

    from seelike.cka import gram
    from seelike.extract import open_for_model
    from seelike.models import LayerTaps, ModelCard, build_model
    from seelike.runtime import full_fp32

    card = ModelCard.load(card_path)
    model = build_model(card, card_path.parent, device=torch.device("cpu"), verify=False)
    layers = [l["name"] for l in card.layers]
    p = card.num_prefix_tokens
    sp = plan.shard(shard)
    ds = Subset(open_for_model(card, cfg, "analysis", plan, rendered=rendered), [int(i) for i in sp.example_indices])
    offset = shard * plan.minibatches_per_shard * B
    ref = {f"layers/{l}/{k}": [] for l in layers for k in ("gram", "pooled_mean", "pooled_cls", "tokens")}
    ref.update(logits=[], positions=[])
    pos = 0
    with LayerTaps(model, card.layers, p) as taps, torch.no_grad():
        for x, y, idx in DataLoader(ds, batch_size=B, shuffle=False):
            taps.clear()
            with full_fp32():
                out = model(x)
            acts = taps.outputs
            keep = np.flatnonzero(np.arange(pos, pos + len(y)) + offset < FULL_TOKENS)
            for l in layers:
                a = acts[l]
                ref[f"layers/{l}/gram"].append(gram(a, center="auto").numpy())
                ref[f"layers/{l}/pooled_mean"].append(a.float()[:, p:].mean(1).numpy())
                if p:
                    ref[f"layers/{l}/pooled_cls"].append(a.float()[:, 0].numpy())
                if keep.size:
                    ref[f"layers/{l}/tokens"].append(a[keep].float().numpy())
            if offset + pos < LOC_IMAGES:
                s = acts[loc_layer][:, p:].transpose(0, 1).float()
                with full_fp32():
                    ref["positions"].append((s @ s.transpose(1, 2)).numpy())   # stored as float32
            ref["logits"].append(out.float().numpy())
            pos += len(y)
    stack = {"gram", "positions"}
    return {k: (np.stack(v) if k.rsplit("/", 1)[-1] in stack else np.concatenate(v)) for k, v in ref.items() if v}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_streamed_shard_is_bit_equal_to_the_post_forward_reduction(tmp_path, name):
    from bench_pipeline import dataset_cfg, extract_spec, make_model_dir
    from seelike.data import dataset_fingerprint, rendered_split_name, write_rendered_split
    from seelike.extract import extract_shard
    from seelike.models import ModelCard
    from seelike.plan import make_plan
    from seelike.specs import shard_job_spec, vision_pass

    cfg = dataset_cfg(N)
    rendered = write_rendered_split(cfg, "analysis", tmp_path / rendered_split_name(cfg, "analysis"))
    plan = make_plan(f"synth:{dataset_fingerprint(cfg)}", np.arange(N), N, B, 2, 0)   # 2 shards of 2 minibatches
    arch, kwargs = MODELS[name]
    card = make_model_dir(tmp_path / "models", name, arch, kwargs, seed=0)
    spec = extract_spec(name, card, cfg, plan, tmp_path / "out", full_tokens=FULL_TOKENS, rendered=rendered)
    # the vision pass: the same plan through the same step, with the taps and without the Grams
    taps = {"norm_ratio": {}, "localization": {"positions": [[0, 0], [1, 1]], "n_images": LOC_IMAGES, "layer": None}}
    vision = shard_job_spec(vision_pass(spec, tmp_path / "vision", taps), spec["plan"])
    for shard in range(plan.n_shards):
        stored = {}
        for s in (spec, vision):
            with h5py.File(extract_shard(s, shard), "r") as f:
                assert f.attrs["kind"] == s.get("kind", "activations")
                if s is vision:
                    loc_index = int(f["reductions/localization/layer_index"][()])
                    assert not any(k.endswith("/gram") and "positions" not in k for k in f.attrs["datasets"])
                f.visititems(lambda k, obj: stored.update({k: obj[()]}) if isinstance(obj, h5py.Dataset) else None)
        names = [l["name"] for l in ModelCard.load(card).layers]
        loc_layer = names[loc_index]
        ref = _post_forward_reference(card, cfg, plan, rendered, shard, loc_layer)
        ref[f"layers/{loc_layer}/positions/gram"] = ref.pop("positions", np.zeros((0,)))
        if shard == 1:                                        # the second shard is past FULL_TOKENS and LOC_IMAGES
            assert not any(k.endswith("/tokens") for k in stored)
            assert stored[f"layers/{loc_layer}/positions/gram"].shape[0] == 1
        for key, want in ref.items():
            if key.endswith("positions/gram") and want.size == 0:
                continue
            got = stored[key]
            assert got.dtype == want.dtype and got.shape == want.shape, key
            assert got.tobytes() == want.tobytes(), f"{name} shard {shard}: {key} differs from the post-forward path"
        assert all(k in stored for k in ref), sorted(set(ref) - set(stored))


@pytest.mark.parametrize("worker", [False, True])
def test_a_layer_that_runs_twice_in_one_forward_is_refused(worker):
    from seelike.extract import GramReducer, LayerStream
    from seelike.models import LayerTaps

    block = torch.nn.Linear(4, 4)
    net = torch.nn.Sequential(block, torch.nn.ReLU(), block)        # the same module twice
    with (LayerStream(["l"], [GramReducer(["l"])], worker=worker) as stream,
          LayerTaps(net, [{"name": "l", "module": "0"}], consume=stream) as taps, torch.no_grad()):
        stream.begin(np.arange(3))
        with pytest.raises(RuntimeError, match="ran twice"):
            net(torch.randn(3, 4))
        assert not taps.outputs                                      # nothing is held


@pytest.mark.parametrize("worker", [False, True])
def test_a_non_finite_layer_stops_the_forward_pass_naming_layer_and_example(worker):
    from seelike.extract import GramReducer, LayerStream, NonFiniteActivation
    from seelike.models import LayerTaps

    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    with torch.no_grad():
        net[1].bias[0] = float("inf")
    reducer = GramReducer(["a", "b"])
    layers = [{"name": "a", "module": "0"}, {"name": "b", "module": "1"}]
    with (LayerStream(["a", "b"], [reducer], worker=worker) as stream, LayerTaps(net, layers, consume=stream),
          torch.no_grad()):
        stream.begin(np.arange(100, 103))
        with pytest.raises(NonFiniteActivation, match=r"layer 'b'.*dataset index 100"):
            net(torch.randn(3, 4))
    assert len(reducer.grams["a"]) == 1 and not reducer.grams["b"]     # checked before any reducer saw it


def test_gram_reducer_reads_the_offset_sample_once_for_a_layer_far_below_the_limit(monkeypatch):
    """GramReducer reads a layer's offset sample on its first minibatch, and on later ones only if that
    first sample was not far below OFFSET_LIMIT. Every Gram stays bit-equal to gram(center="auto") of
    its minibatch -- also for a layer whose offset grows past the limit after its first minibatch,
    which the exact check on the uncentred Gram sends to the centred product -- and H K H (float64
    reference)."""
    import seelike.cka
    from seelike.cka import OFFSET_LIMIT, gram
    from seelike.extract import GramReducer
    from seelike.store import layer_path

    calls = []
    real = seelike.cka.offset_ratio_estimate
    monkeypatch.setattr(seelike.cka, "offset_ratio_estimate", lambda x: calls.append(1) or real(x))
    g = torch.Generator().manual_seed(3)
    n, d, mbs = 64, 3000, 4

    def minibatch(ratio):
        u = torch.randn(n, d, generator=g, dtype=torch.float64)
        u = (u - u.mean(0)) / u.norm() * np.sqrt(n)
        mu = torch.randn(d, generator=g, dtype=torch.float64)
        return (u + mu / mu.norm() * np.sqrt(ratio)).float()

    ratios = {"low": [0.3] * mbs, "high": [20 * OFFSET_LIMIT] * mbs, "turns": [0.3, 0.3, 3 * OFFSET_LIMIT, 0.3]}
    xs = {l: [minibatch(r) for r in rs] for l, rs in ratios.items()}
    reducer = GramReducer(list(ratios), minibatches=mbs)
    counts = {}
    for l in ratios:
        calls.clear()
        for x in xs[l]:
            reducer.consume(l, x)
        counts[l] = len(calls)
    assert counts == {"low": 1, "high": mbs, "turns": 1}
    got = reducer.result()
    for l in ratios:
        stack = got[layer_path(l, "gram")]
        for i, x in enumerate(xs[l]):
            assert np.array_equal(stack[i], gram(x, center="auto").numpy()), (l, i)
            xd = x.double() - x.double().mean(0)
            want = (xd @ xd.T).numpy()
            assert np.abs(stack[i] - want).max() <= 4e-6 * np.abs(want).max(), (l, i)


def test_a_worker_reduces_in_its_own_thread_what_inline_reduction_gives():
    """LayerStream(worker=True), extraction's CPU path: every layer is reduced in one other thread, in
    the forward's order, with the forward's grad mode and torch threads, into the same bytes as inline;
    closing it ends the thread."""
    import threading

    from seelike.extract import GramReducer, LayerStream, PooledReducer, Reducer
    from seelike.models import LayerTaps

    class Where(Reducer):
        name = "where"

        def __init__(self):
            self.seen = []

        def consume(self, layer, a):
            self.seen.append((layer, threading.current_thread(), torch.is_grad_enabled(), torch.get_num_threads()))

        def result(self):
            return {}

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(300, 300), torch.nn.GELU(), torch.nn.Linear(300, 40))
    names = ["fc1", "act", "fc2"]
    layers = [{"name": "fc1", "module": "0"}, {"name": "act", "module": "1"}, {"name": "fc2", "module": "2"}]
    xs = [torch.randn(64, 300) + 3.0 for _ in range(3)]
    results, where = {}, {}
    for worker in (False, True):
        reducers = [GramReducer(names, minibatches=3), PooledReducer(names, 0, examples=192), Where()]
        with (LayerStream(names, reducers, worker=worker) as stream, LayerTaps(net, layers, consume=stream),
              torch.no_grad()):
            for i, x in enumerate(xs):
                stream.begin(np.arange(64 * i, 64 * (i + 1)))
                net(x)
                stream.end()
        if worker:
            assert not reducers[2].seen[0][1].is_alive()     # closed with the block
        results[worker] = {k: v for r in reducers[:2] for k, v in r.result().items()}
        where[worker] = reducers[2].seen
    assert results[True].keys() == results[False].keys() and results[True]
    for key, want in results[False].items():
        assert results[True][key].tobytes() == want.tobytes(), key
    me = threading.current_thread()
    assert [l for l, *_ in where[True]] == names * 3 == [l for l, *_ in where[False]]
    assert {t for _, t, _, _ in where[False]} == {me} and len({t for _, t, _, _ in where[True]}) == 1
    assert me not in {t for _, t, _, _ in where[True]}
    assert all(not grad and threads == torch.get_num_threads() for _, _, grad, threads in where[True])
