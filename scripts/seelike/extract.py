"""Extraction: run a model over one shard of the plan and store what the analyses need.

Per CKA minibatch and layer we keep the b x b Gram (float32 products, float64 sums), pooled
features (CLS token and token mean), and full tokens only for the first `full_tokens` examples of
the plan. Reductions are small objects with one method per minibatch, so later analyses (attention
distances, norm ratios, per-position Grams) add a reducer rather than restructure the store.

Every tapped layer is reduced inside its forward hook, as soon as its output exists (finite check,
Gram, pooled features, the first examples' tokens), and dropped: the peak is the forward pass's own
working set plus about one layer and its Gram's float32 chunk (README, "Extraction memory").
"""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .allocator import OffHeapRows
from .reducer import Batch, Reducer


class NonFiniteActivation(FloatingPointError):
    """NaN/Inf in a layer's activations (e.g. fp16 overflow): names the layer and the first bad example."""


class GramReducer(Reducer):
    """Each layer's Gram of every minibatch (float64, b x b), stacked: ``minibatches`` is how many the
    shard has, reserved up front (:class:`seelike.allocator.OffHeapRows`).

    ``gram(center="auto")`` reads a sample of a layer's features before its product, to centre an
    offset-dominated layer first (:func:`seelike.cka.offset_ratio_estimate`). The reducer reads it on a
    layer's first minibatch only when the layer is far below the limit there (a sampled ratio under
    half of :data:`seelike.cka.OFFSET_LIMIT`): the later minibatches of such a layer go straight to
    the uncentred product, whose exact check still centres the features and multiplies again should
    one of them be offset-dominated after all. The sample costs 0.2-0.3 ms a layer on 2 cores
    whatever its size, 1.3% of a ResNet-18 forward at 32 px (8 layers)."""
    name = "gram"

    def __init__(self, layers, precision: str = "fp32", minibatches: int = 1):
        self.layers, self.precision = layers, precision
        self.grams = {l: OffHeapRows(minibatches) for l in layers}
        self.low_offset: dict[str, bool] = {}     # layer -> its first minibatch's sample far below the limit

    def consume(self, layer, a):
        import torch

        from .cka import OFFSET_LIMIT, gram, offset_ratio_estimate

        if self.low_offset.get(layer):
            est = 0.0
        else:
            est = offset_ratio_estimate(a)
            self.low_offset.setdefault(layer, est < OFFSET_LIMIT / 2)
        kw = dict(center="auto", precision=self.precision, offset_estimate=est)
        if a.device.type == "cpu":      # straight into its row of the shard's results
            n = a.shape[0]
            self.grams[layer].fill((1, n, n), np.float64, lambda row: gram(a, out=torch.from_numpy(row[0]), **kw))
        else:
            self.grams[layer].append(gram(a, **kw).cpu().numpy()[None])

    def result(self):
        from .store import layer_path

        return {layer_path(l, "gram"): g.array() for l, g in self.grams.items()}


class PooledReducer(Reducer):
    """CLS token (when the model has prefix tokens) and the mean over spatial tokens, float32, of the
    shard's ``examples`` (reserved up front)."""
    name = "pooled"

    def __init__(self, layers, num_prefix_tokens, examples: int = 1):
        self.layers, self.p = layers, num_prefix_tokens
        self.cls = {l: OffHeapRows(examples) for l in layers}
        self.mean = {l: OffHeapRows(examples) for l in layers}

    def consume(self, layer, a):
        import torch

        a = a.float()
        if a.device.type == "cpu":   # straight into their rows of the shard's results
            n, d = a.shape[0], a.shape[-1]
            if self.p:
                self.cls[layer].fill((n, d), np.float32, lambda rows: torch.from_numpy(rows).copy_(a[:, 0]))
            self.mean[layer].fill((n, d), np.float32,
                                  lambda rows: torch.mean(a[:, self.p:], dim=1, out=torch.from_numpy(rows)))
            return
        if self.p:   # on the host, then copied into the rows
            self.cls[layer].append(a[:, 0].cpu().numpy())
        self.mean[layer].append(a[:, self.p:].mean(1).cpu().numpy())

    def result(self):
        from .store import layer_path

        out = {}
        for l in self.layers:
            out[layer_path(l, "pooled_mean")] = self.mean[l].array()
            if self.p:
                out[layer_path(l, "pooled_cls")] = self.cls[l].array()
        return out


class TokenReducer(Reducer):
    """Full token activations of the plan's first `limit` examples (float32), collected in one reserved
    map per layer (:class:`seelike.allocator.OffHeapRows`) for those of them the shard holds: of its
    ``examples`` (default: as many as the limit allows), the ones before the limit."""
    name = "tokens"

    def __init__(self, layers, plan_positions_limit: int, shard_offset: int, examples: int | None = None):
        self.layers, self.limit, self.offset = layers, plan_positions_limit, shard_offset
        rows = max(0, plan_positions_limit - shard_offset)
        if examples is not None:
            rows = min(rows, int(examples))
        self.tokens = {l: OffHeapRows(rows) for l in layers}   # mapped at the first append only
        self._sel = np.zeros(0, dtype=np.int64)

    def begin(self, positions, example_indices):
        self._sel = np.flatnonzero((np.asarray(positions) + self.offset) < self.limit)

    def consume(self, layer, a):
        sel = self._sel
        if sel.size:
            # the plan's first examples are a run of rows: a view of them, not an indexed copy
            rows = a[int(sel[0]):int(sel[-1]) + 1] if int(sel[-1]) - int(sel[0]) + 1 == sel.size else a[sel]
            self.tokens[layer].append(rows.float().cpu().numpy())

    def result(self):
        from .store import layer_path

        return {layer_path(l, "tokens"): t.array() for l, t in self.tokens.items() if len(t)}


@contextmanager
def attached(reducers, model):
    """The reducers' own hooks, removed on exit (also when the block raises)."""
    handles = []
    try:
        for r in reducers:
            handles += r.attach(model)
        yield
    finally:
        while handles:
            handles.pop().remove()


class LayerStream:
    """LayerTaps' ``consume`` during extraction: each tapped layer's output, as soon as it exists, is
    checked for NaN/Inf and handed to every reducer's ``consume``, then dropped. Each tapped layer must
    run exactly once per forward pass (a module run twice would be reduced twice).

    ``worker``: reduce in a thread of its own, the forward waiting for it (the same order, one layer at
    a time), so that the reductions' allocations come from that thread's malloc arena, not the main
    one that holds the forward's activations. On a CPU the reductions' temporaries (0.25-64 MB at
    b = 256), made between the forward's allocations of hundreds of MB in one heap whose freed memory
    is kept (:func:`seelike.allocator.retain_freed_memory`), split the blocks the forward has just
    freed, so that its next activations no longer fit them and the heap grows: a Mixer-B/16 forward at
    b = 256 on 2 cores peaked at 4.7-5.7 GB inline against 3.7 GB in a worker, a bare forward's peak
    (benchmarks/bench_memory.py). Close it (a context manager) to stop the thread."""

    def __init__(self, layers: list[str], reducers: list[Reducer], worker: bool = False):
        import torch

        self.layers, self.reducers = list(layers), reducers
        self.seen: set[str] = set()
        self.example_indices = np.zeros(0, dtype=np.int64)
        self._worker = None
        if worker:
            from concurrent.futures import ThreadPoolExecutor

            # the torch threads this process uses (a new thread starts with OpenMP's default)
            self._worker = ThreadPoolExecutor(1, thread_name_prefix="seelike-reduce", initializer=torch.set_num_threads,
                                              initargs=(torch.get_num_threads(),))

    def __enter__(self) -> "LayerStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=True)
            self._worker = None

    def begin(self, example_indices: np.ndarray) -> None:
        self.example_indices = example_indices
        self.seen.clear()

    def __call__(self, layer: str, activation) -> None:
        import torch

        if layer in self.seen:
            raise RuntimeError(f"layer '{layer}' ran twice in one forward pass; extraction taps each layer once")
        self.seen.add(layer)
        grad = torch.is_grad_enabled()      # per thread: the worker reduces with the forward's
        if self._worker is None:
            self._reduce(layer, activation, grad)
        else:
            self._worker.submit(self._reduce, layer, activation, grad).result()

    def _reduce(self, layer: str, activation, grad: bool) -> None:
        import torch

        from .runtime import full_fp32

        # Reductions are float32 at full precision, outside the forward's autocast (a hook runs inside it).
        with full_fp32(), torch.set_grad_enabled(grad):
            check_finite({layer: activation}, self.example_indices)
            for r in self.reducers:
                r.consume(layer, activation)

    def end(self) -> None:
        missing = [l for l in self.layers if l not in self.seen]
        if missing:
            raise RuntimeError(f"tapped layers that did not run in the forward pass: {', '.join(missing)}")


def check_finite(activations: dict, example_indices: np.ndarray) -> None:
    import torch

    from .cka import flat_features

    for layer, a in activations.items():
        flat = flat_features(a)
        # One float32 sum reads the activations once: it is finite only if every element is (Inf
        # and NaN propagate; Inf - Inf is NaN). A non-finite sum, rare, gets the per-example scan,
        # which also tells a true NaN/Inf from a sum that merely overflowed.
        if bool(torch.isfinite(flat.sum(dtype=torch.float32))):
            continue
        bad = ~torch.isfinite(flat).all(dim=1)
        if bool(bad.any()):
            first = int(torch.nonzero(bad)[0, 0])
            raise NonFiniteActivation(
                f"layer '{layer}': NaN or Inf in activations, first bad example: dataset index "
                f"{int(example_indices[first])} (reduce precision issues: use precision fp32 or bf16)")


def select_layers(model, card, sublayers: bool) -> list[dict]:
    """The card's layers (one per block or stage unit), or for ViTs with sublayers on, the residual
    stream after each attention and after each MLP, enumerated from the live model."""
    if not sublayers or card.family != "vit":
        return list(card.layers)
    from .models import enumerate_layers

    return enumerate_layers(model, card.family, sublayers=True)


def sees_synthetic_natively(card, dataset_cfg: dict) -> bool:
    """Whether the card's preprocessing of a synthetic image is exactly the dataset's own tensor
    (full image at its size, mean = std = 0.5): decided from the preprocessing, not from how the
    model was made, since a recipe trained on an image folder records ImageNet's normalisation."""
    from .train_data import synthetic_preprocessing

    if dataset_cfg["kind"] != "synthetic":
        return False
    size = dataset_cfg.get("image_size")
    own, cfg = synthetic_preprocessing(size), card.pretrained_cfg or {}
    return all(_same(cfg.get(k), own[k]) for k in ("input_size", "mean", "std", "crop_pct"))


def open_for_model(card, dataset_cfg: dict, split: str, plan, rendered=None):
    """The plan's dataset as the card's model sees it, checked against the plan (see
    :func:`seelike.data.open_dataset`). Each model sees images through its card's preprocessing
    (timm's for pretrained models, what training used for recipes); synthetic images take the
    equivalent fast path when that preprocessing is the synthetic data's own."""
    from .data import open_dataset
    from .data.imagefolder import timm_eval_transform

    transform = None if sees_synthetic_natively(card, dataset_cfg) else timm_eval_transform(card.pretrained_cfg)
    return open_dataset(dataset_cfg, split, transform=transform, rendered=rendered, plan=plan)


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a is not None and b is not None and float(a) == float(b)


@contextmanager
def checkpoint_verified(card, card_path):
    """Take the sha256 of the card's checkpoint in a thread while the body runs, and check it on leaving:
    the body (building the model, running it) must not write anything before then. hashlib releases the
    GIL, so the hash overlaps the model build (single-threaded Python) and, on a GPU node, the forward
    passes, whose CPU waits on the GPU. When the body fails, a bad checkpoint is reported first: it is the
    likelier cause. benchmarks/bench_extract.py times the model build under it, as extraction starts."""
    from concurrent.futures import ThreadPoolExecutor

    from .models import verify_checkpoint

    card_path = Path(card_path)
    with ThreadPoolExecutor(1, thread_name_prefix="seelike-verify") as pool:
        verified = pool.submit(verify_checkpoint, card_path.parent / card.checkpoint, card.sha256, card_path)
        try:
            yield
        except BaseException:
            verified.result()
            raise
        verified.result()


def extract_shard(spec: dict, shard_index: int) -> str:
    """spec keys: model, kind ("activations": the Grams' pass; "vision": the vision pass, with taps), card
    (path), dataset_key, dataset (config entry), split, plan (dict), out (path template with {shard}), device,
    precision, sublayers, full_tokens and gram_precision (activations), taps (vision), num_workers (int or "auto"),
    provenance_config; optional: rendered (the split's file from the render rule, synthetic datasets)."""
    from . import provenance
    from .models import ModelCard, build_model
    from .plan import Plan
    from .store import write_shard
    from . import runtime

    t_start = time.time()
    card_path = Path(spec["card"])
    card = ModelCard.load(card_path)
    device = runtime.device(spec.get("device", "cpu"))
    plan = Plan.from_dict(spec["plan"])
    with checkpoint_verified(card, card_path):
        model = build_model(card, card_path.parent, device=device, verify=False)
        layers, arrays = _reduce_shard(spec, shard_index, card, model, plan, device)
    out_path = Path(spec["out"].format(shard=shard_index))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # the card's own digest too: a rerun reuses a shard only if its card (layers, preprocessing) is unchanged
    prov = provenance.collect(spec.get("provenance_config"), inputs=[card_path],
                              input_digests={str(card_path.parent / card.checkpoint): card.sha256})
    prov["seconds"] = round(time.time() - t_start, 3)
    sp = plan.shard(shard_index)
    write_shard(out_path, kind=spec.get("kind", "activations"), model=spec["model"], dataset=spec["dataset_key"],
                shard_index=shard_index,
                n_shards=plan.n_shards, plan=plan.to_dict(), plan_digest=plan.digest(), layers=layers,
                example_indices=sp.example_indices, minibatch_ids=sp.minibatch_ids, arrays=arrays,
                provenance=prov)
    return str(out_path)


def _reduce_shard(spec: dict, shard_index: int, card, model, plan, device) -> tuple[list, dict]:
    """Run the model over the shard's minibatches through every reducer: (layer names, arrays to store)."""
    import torch
    from torch.utils.data import DataLoader, Subset
    from tqdm import tqdm

    from .data import reads_from_memory
    from .models import LayerTaps
    from .runtime import autocast, loader_options

    sp = plan.shard(shard_index)
    layer_specs = select_layers(model, card, spec.get("sublayers", False))
    layers = [l["name"] for l in layer_specs]
    ds = open_for_model(card, spec["dataset"], spec["split"], plan, rendered=spec.get("rendered"))
    b = plan.minibatch_size
    shard_items = Subset(ds, [int(i) for i in sp.example_indices])
    loader = DataLoader(shard_items, batch_size=b, shuffle=False,
                        **loader_options(device, spec.get("num_workers", "auto"), reads_from_memory(shard_items),
                                        batches=-(-len(shard_items) // b)))
    shard_offset = shard_index * plan.minibatches_per_shard * b
    vision = spec.get("kind") == "vision"
    if spec.get("taps") and not vision:
        raise ValueError(f"extraction of '{spec['model']}': vision taps belong to its vision pass (spec kind "
                         f"'vision', seelike.specs.vision_extract_spec), not to the Grams' pass")
    if vision:  # the vision pass: only the vision analyses' taps (F3-F9); the Grams are the other pass's
        from .analyses.reducers import vision_reducers

        reducers = vision_reducers(spec["taps"], model=model, card=card, model_name=spec["model"],
                                   layer_specs=layer_specs, shard_offset=shard_offset, device=device,
                                   minibatches=len(loader))
    else:
        reducers = [GramReducer(layers, spec.get("gram_precision", "fp32"), minibatches=len(loader)),
                    PooledReducer(layers, card.num_prefix_tokens, examples=len(shard_items)),
                    TokenReducer(layers, int(spec.get("full_tokens", 0)), shard_offset, examples=len(shard_items))]
    logits, labels = OffHeapRows(len(shard_items)), []
    precision = spec.get("precision", "fp32")
    bar = tqdm(total=len(sp.example_indices), desc=f"extract {spec['model']}{' (vision pass)' if vision else ''} shard {shard_index}",
               file=sys.stderr, unit="img", mininterval=5)
    pos = 0
    # on a CPU the reductions run in a thread of their own, for the forward's heap (LayerStream)
    with (LayerStream(layers, reducers, worker=device.type == "cpu") as stream,
          LayerTaps(model, layer_specs, card.num_prefix_tokens, consume=stream), attached(reducers, model),
          torch.no_grad()):
        for x, y, idx in loader:
            n = len(y)
            idx = np.asarray(idx)
            if not np.array_equal(idx, sp.example_indices[pos:pos + n]):
                raise RuntimeError(f"data loader order differs from the plan in shard {shard_index}")
            for r in reducers:
                r.begin(np.arange(pos, pos + n), idx)
            stream.begin(idx)
            x = x.to(device, non_blocking=True)
            with autocast(device, precision):
                out = model(x)       # every tapped layer is reduced inside its hook (LayerStream)
            stream.end()
            batch = Batch(minibatch_id=int(sp.minibatch_ids[pos]), positions=np.arange(pos, pos + n),
                          example_indices=idx, num_prefix_tokens=card.num_prefix_tokens, inputs=x)
            for r in reducers:
                r.update(batch)
            if not vision:
                logits.append(out.float().cpu().numpy())
                labels.append(np.asarray(y))
            pos += n
            bar.update(n)
            del x, out, batch     # not alive beside the next minibatch's forward (on a GPU: one input less)
    bar.close()
    arrays = {} if vision else {"logits": logits.array(), "labels": np.concatenate(labels).astype(np.int64)}
    for r in reducers:
        arrays.update(r.result())
    return layers, arrays
