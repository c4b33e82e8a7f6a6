"""Extraction reducers of the vision analyses: what one pass over the images keeps for F3-F9.

Switched on per model by ``spec["taps"]`` (see :func:`seelike.registry.extraction_taps`); with no
taps none of this runs and extraction is unchanged. Statistics taken during the forward pass
are reduced inside their hooks ("streaming"), so attention weights, per-head outputs and
branch outputs of all blocks are never held at once: the extra memory is one block's worth.

Store paths (all per shard; sums over images are sums, so shards combine exactly). Attention
distances are stored for every image, so that a table selects its images without a new pass:

    reductions/geometry/{grid, cell, input_size}             spatial grid of the tokens / final map
    reductions/attention_distance/<block>/minibatch_sums (m, 4, heads) float64: per CKA minibatch, sums over
                              its images of [renormalised, renormalised^2, raw, prefix mass]
    reductions/attention_distance/<block>/minibatch_counts (m,)  images of each minibatch
    reductions/attention_distance/<block>/per_image (n, 3, heads) float32: [renormalised, raw, prefix mass] of
                              every image (float32 means: the exact values the sums add), for a selection
                              that ends inside a minibatch
    reductions/attention_distance/<block>/index               block depth index
    reductions/attention_maps/{weights (k, blocks, heads, t, t), images (k, C, H, W), example_indices (k,)}
    reductions/heads/<block>/gram (m, heads, b, b), .../index  per-head Grams per CKA minibatch
    reductions/norm_ratio/<sublayer>/{z_norm_sum, f_norm_sum, ratio_sum, count, ratio_count} (2,) [cls, spatial]
    reductions/norm_ratio/<sublayer>/index
    layers/<layer>/positions/gram (m', Q, b, b) float32        per-position Grams of the localization layer
    reductions/localization/input/gram (m', P, b, b)           Grams of the input cells at the chosen positions
    reductions/localization/{positions (P, 2), grid (2,), cell (2,), minibatch_ids (m',), layer_index}
    reductions/receptive_field/<layer>/{sum (H, W) float64, grid (2,), centre (2,), index}   sum over the shard's
                              selected images of |d centre output / d pixel| (its own backward passes, after
                              the forward passes of the shard)
    reductions/receptive_field/count                          images summed
"""
from __future__ import annotations

import numpy as np

from ..allocator import OffHeapRows, off_heap
from ..reducer import Reducer
from . import geometry

ATTN_DIST = "reductions/attention_distance"
ATTN_MAPS = "reductions/attention_maps"
HEADS = "reductions/heads"
NORM_RATIO = "reductions/norm_ratio"
LOCALIZATION = "reductions/localization"
GEOMETRY = "reductions/geometry"


class _Sink:
    """Stands in for LayerTaps when a tap kind stores a tensor: hands it to a callback at once."""

    def __init__(self, callback, role: str = ""):
        self.callback, self.role = callback, role

    def store(self, layer: dict, value) -> None:
        self.callback(layer["name"], self.role, value.detach())


def _attach(model, layer: dict, sink: _Sink) -> list:
    from ..models.layers import TAP_KINDS, get_module

    return TAP_KINDS[layer["tap"]](sink, layer, get_module(model, layer["module"]))


def _rows(global_positions: np.ndarray, limit: int) -> np.ndarray:
    return np.flatnonzero(global_positions < limit)


def _take(t, rows: np.ndarray):
    """t[rows] (rows along dim 0), without a copy when every row is taken."""
    import torch

    if len(rows) == t.shape[0]:
        return t
    return t[torch.as_tensor(rows, device=t.device)]


def attention_distances(attn, dist, num_prefix_tokens: int):
    """Mean attention distance of every image and head, in the units of `dist`.

    attn: (b, heads, t, t) attention probabilities (rows: queries); dist: (N, N) distances between
    the N patch centres; the first `num_prefix_tokens` tokens (CLS, registers, distillation) are
    left out as queries and as keys. For query patch q: raw_q = sum_k a_qk d_qk over the patches
    k, renormalised_q = raw_q / sum_k a_qk (the expected distance under the query's attention
    restricted to the patches). Returns float64 (b, heads) tensors: the mean over query patches of
    renormalised_q, of raw_q, and the mean attention the queries put on prefix tokens.
    """
    p = int(num_prefix_tokens)
    spatial = attn[:, :, p:, p:].float()                 # queries and keys: patches only
    mass = spatial.sum(-1)                               # (b, h, N) attention on patches
    raw = (spatial * dist.to(spatial)).sum(-1)           # sum_k a_qk d_qk
    ren = raw / mass.clamp_min(1e-30)
    return ren.mean(-1).double(), raw.mean(-1).double(), (1.0 - mass.mean(-1)).double()


class AttentionReducer(Reducer):
    """Per-head mean attention distance of every image (F3/F4) and the full attention of the first examples."""
    name = "attention"

    def __init__(self, attn: list[dict], num_prefix_tokens: int, geometry_fn, input_size, shard_offset: int,
                 distances: bool = False, n_maps: int = 0):
        """geometry_fn(n_patches) -> (grid, cell size in input pixels), asked once the token count is known.
        distances: the attention distances of every image; n_maps: the full attention of the plan's first
        n_maps examples."""
        self.attn, self.p, self.offset = attn, int(num_prefix_tokens), int(shard_offset)
        self.geometry_fn, self.input_size = geometry_fn, [int(v) for v in input_size]
        self.grid = self.cell = self.dist = None
        self.distances, self.n_maps = bool(distances), int(n_maps)
        self._dist_t = None
        self.sums = {a["name"]: [] for a in attn}     # per minibatch: (4, heads) float64 on the device
        self.per_image = {a["name"]: [] for a in attn}   # per minibatch: (b, 3, heads) float32 on the device
        self.maps = {a["name"]: [] for a in attn}
        self.images, self.map_examples = [], []
        self._map_rows = np.zeros(0, dtype=int)

    def attach(self, model):
        handles = []
        for a in self.attn:
            handles += _attach(model, {"name": a["name"], "module": a["module"], "tap": "attn_weights"},
                               _Sink(self._consume))
        return handles

    def begin(self, positions, example_indices):
        self._map_rows = _rows(self.offset + np.asarray(positions), self.n_maps)
        self._examples = np.asarray(example_indices)

    def _consume(self, name, role, a):
        import torch

        if self.grid is None:
            grid, cell = self.geometry_fn(a.shape[-1] - self.p)
            self.grid, self.cell = tuple(int(g) for g in grid), tuple(float(c) for c in cell)
            self.dist = geometry.pixel_distances(self.grid, self.cell)
        if self.distances:
            if self._dist_t is None or self._dist_t.device != a.device:
                self._dist_t = torch.as_tensor(self.dist, dtype=torch.float32, device=a.device)
            n_sp = self.dist.shape[0]
            if a.shape[-1] - self.p != n_sp:
                raise ValueError(f"attention of {name} has {a.shape[-1]} tokens; expected {self.p} prefix + {n_sp} "
                                 f"patches (grid {self.grid})")
            ren, raw, prefix = attention_distances(a, self._dist_t, self.p)
            self.sums[name].append(torch.stack([ren, ren * ren, raw, prefix]).sum(1))   # (4, heads), no host sync
            self.per_image[name].append(torch.stack([ren, raw, prefix], 1).float())       # float32 values, exactly
        if self._map_rows.size:
            self.maps[name].append(off_heap(_take(a, self._map_rows).float().cpu().numpy()))

    def update(self, batch):
        if self._map_rows.size:
            self.images.append(off_heap(_take(batch.inputs, self._map_rows).float().cpu().numpy()))
            self.map_examples.append(self._examples[self._map_rows])

    def result(self):
        import torch

        out = {}
        if self.grid is not None:   # the token grid, for the tables (constant per model)
            out.update({f"{GEOMETRY}/grid": np.asarray(self.grid, dtype=np.int64),
                        f"{GEOMETRY}/cell": np.asarray(self.cell, dtype=np.float64),
                        f"{GEOMETRY}/input_size": np.asarray(self.input_size, dtype=np.int64)})
        if self.distances:
            for i, a in enumerate(self.attn):
                base, name = f"{ATTN_DIST}/{a['name']}", a["name"]
                out[f"{base}/minibatch_sums"] = torch.stack(self.sums[name]).cpu().numpy()
                per_image = torch.cat(self.per_image[name]).cpu().numpy()
                out[f"{base}/per_image"] = per_image
                out[f"{base}/minibatch_counts"] = np.asarray([len(t) for t in self.per_image[name]], dtype=np.int64)
                out[f"{base}/index"] = np.asarray(i, dtype=np.int64)
        if self.images:
            out[f"{ATTN_MAPS}/weights"] = np.stack([np.concatenate(self.maps[a["name"]]) for a in self.attn], axis=1)
            out[f"{ATTN_MAPS}/images"] = np.concatenate(self.images)
            out[f"{ATTN_MAPS}/example_indices"] = np.concatenate(self.map_examples).astype(np.int64)
        return out


class HeadGramReducer(Reducer):
    """Per-head Grams of the attention heads' outputs (before the output projection), per CKA minibatch."""
    name = "heads"

    def __init__(self, attn: list[dict], minibatches: int = 1):
        """minibatches: how many the shard has (their Grams' room is reserved up front)."""
        self.attn = attn
        self.grams = {a["name"]: OffHeapRows(minibatches) for a in attn}

    def attach(self, model):
        handles = []
        for a in self.attn:
            handles += _attach(model, {"name": a["name"], "module": a["module"], "tap": "head_outputs"},
                               _Sink(self._consume))
        return handles

    def _consume(self, name, role, x):
        import torch
        from ..runtime import full_fp32

        # x: (b, t, heads, head_dim); one Gram per head over all tokens, like the layer Grams: float32
        # products (at full float32 precision) of each head's flattened output, in one batched product.
        h = x.permute(2, 0, 1, 3).reshape(x.shape[2], x.shape[0], -1).float()    # (heads, b, t * head_dim)
        with torch.no_grad(), full_fp32():
            self.grams[name].append((h @ h.transpose(1, 2)).double().cpu().numpy()[None])

    def update(self, batch):
        pass

    def result(self):
        out = {}
        for i, a in enumerate(self.attn):
            out[f"{HEADS}/{a['name']}/gram"] = self.grams[a["name"]].array()
            out[f"{HEADS}/{a['name']}/index"] = np.asarray(i, dtype=np.int64)
        return out


def token_norms(t):
    """Per-position L2 norms over channels: (b, c, h, w) -> (b, h*w); (b, t, d) -> (b, t); float32."""
    import torch

    if t.dim() == 4:
        return t.norm(dim=1, dtype=torch.float32).flatten(1)
    if t.dim() == 3:
        return t.norm(dim=-1, dtype=torch.float32)
    raise ValueError(f"norm ratio: unexpected activation shape {tuple(t.shape)}")


class NormRatioReducer(Reducer):
    """||z|| and ||f(z)|| of every residual sublayer per token, summed for prefix (CLS) and spatial tokens."""
    name = "norm_ratio"
    STATS = ("z_norm_sum", "f_norm_sum", "ratio_sum", "count", "ratio_count")

    def __init__(self, branches: list[dict], num_prefix_tokens: int):
        self.branches, self.p = branches, int(num_prefix_tokens)
        self.acc = {}     # sublayer -> (5, 2) float64 on the device: STATS x [cls, spatial]
        self._z, self._zn, self._fn = {}, {}, {}

    def attach(self, model):
        handles = []
        for b in self.branches:
            for role in ("z", "f", "sum"):
                if role in b:
                    layer = dict(b[role], name=b["name"])
                    handles += _attach(model, layer, _Sink(self._consume, role))
        return handles

    def begin(self, positions, example_indices):
        self._z.clear(), self._zn.clear(), self._fn.clear()

    def _consume(self, name, role, t):
        if role == "z":
            self._zn[name] = token_norms(t)
            if "sum" in self._branch(name):
                self._z[name] = (t, t._version)   # kept (no copy) until the sum's hook; in-place ops are detected
        elif role == "f":
            self._fn[name] = token_norms(t)
        else:
            z, version = self._z.pop(name, (None, None))
            if z is None:
                raise RuntimeError(f"norm ratio of {name}: the sum was tapped before the residual stream")
            if z._version != version:
                raise RuntimeError(f"norm ratio of {name}: the residual stream was modified in place before the "
                                   "branch was added to it; f(z) cannot be recovered as (z + f(z)) - z")
            self._fn[name] = token_norms(t.float() - z.float())
        if name in self._zn and name in self._fn:
            self._accumulate(name, self._zn.pop(name), self._fn.pop(name))

    def _branch(self, name):
        if not hasattr(self, "_by_name"):
            self._by_name = {b["name"]: b for b in self.branches}
        return self._by_name[name]

    def _accumulate(self, name, zn, fn):
        import torch

        if zn.shape != fn.shape:   # e.g. a CNN shortcut tapped before a downsampling branch: per-example means
            zn, fn = zn.mean(1, keepdim=True), fn.mean(1, keepdim=True)
        zn, fn = zn.double(), fn.double()
        pos = fn > 0
        ratio = torch.where(pos, zn / fn.clamp_min(1e-300), torch.zeros_like(zn))
        per_token = torch.stack([zn, fn, ratio, torch.ones_like(zn), pos.double()])   # (5, b, t)
        p = self.p if zn.shape[1] > self.p else 0
        sums = torch.stack([per_token[:, :, :p].sum((1, 2)), per_token[:, :, p:].sum((1, 2))], 1)   # (5, 2)
        self.acc[name] = sums if name not in self.acc else self.acc[name] + sums

    def update(self, batch):
        pass

    def result(self):
        out = {}
        for i, b in enumerate(self.branches):
            acc = self.acc[b["name"]].cpu().numpy() if b["name"] in self.acc else np.zeros((5, 2))
            for k, v in zip(self.STATS, acc):
                out[f"{NORM_RATIO}/{b['name']}/{k}"] = v
            out[f"{NORM_RATIO}/{b['name']}/index"] = np.asarray(i, dtype=np.int64)
        return out


class PositionGramReducer(Reducer):
    """Per-position Grams of one layer (F9's final layer) and of the input cells at chosen positions."""
    name = "localization"

    def __init__(self, layer: str, layer_index: int, grid, cell, input_hw, positions: list, n_images: int,
                 shard_offset: int, num_prefix_tokens: int, resolve=None, rank=None, minibatches: int = 1):
        """`positions`: grid cells (row, col). With `resolve` (a callable returning layer, layer_index, grid,
        cell, positions) these are found after the first minibatch's forward pass instead (layer ... positions:
        None); `rank(name)` then tells, inside that pass, which layers `resolve` may pick (None: not this one),
        and the highest-ranked layer seen is the one kept. `minibatches`: how many the shard has (room for
        the Grams of those among them that hold the first `n_images` images is reserved up front)."""
        self.input_hw, self.resolve, self.rank = input_hw, resolve, rank
        if resolve is None:
            self._set(layer, layer_index, grid, cell, positions)
        self.n_images, self.offset, self.p = int(n_images), int(shard_offset), int(num_prefix_tokens)
        self.minibatches = int(minibatches)
        self.layer_grams = self.input_grams = None      # OffHeapRows, made at the first minibatch that has Grams
        self.minibatch_ids = []
        self._held = None        # (rank, layer, tokens): the one layer output kept past the forward pass
        self._active = False

    def _set(self, layer, layer_index, grid, cell, positions):
        self.layer, self.layer_index = layer, int(layer_index)
        self.grid, self.cell = tuple(int(g) for g in grid), tuple(float(c) for c in cell)
        self.rows, self.cols = geometry.cell_bounds(self.grid, self.cell, self.input_hw)
        self.positions = [tuple(p) for p in positions]

    def begin(self, positions, example_indices):
        self._held = None
        first = self.offset + int(positions[0])
        self._active = first < self.n_images
        if self._active and self.layer_grams is None:
            # the shard's minibatches from this one on that start below n_images (at most the shard's)
            rows = min(self.minibatches, -(-(self.n_images - first) // max(1, len(positions))))
            self.layer_grams, self.input_grams = OffHeapRows(rows), OffHeapRows(rows)

    def consume(self, layer, a):
        if not self._active:
            return
        if self.resolve is None:
            if layer == self.layer:
                self._held = (0, layer, a)
            return
        r = self.rank(layer)
        if r is not None and (self._held is None or r > self._held[0]):
            self._held = (r, layer, a)

    def update(self, batch):
        import torch
        from ..cka import gram
        from ..runtime import full_fp32

        if self.resolve is not None:
            self._set(*self.resolve())
            self.resolve = None
        held, self._held = self._held, None
        if not self._active:
            return
        if held is None or held[1] != self.layer:
            raise RuntimeError(f"localization layer {self.layer}: its output was not kept during the forward pass")
        tok = held[2]
        spatial = tok[:, self.p:] if tok.shape[1] == self.p + self.grid[0] * self.grid[1] else tok
        if spatial.shape[1] != self.grid[0] * self.grid[1]:
            raise ValueError(f"localization layer {self.layer}: {spatial.shape[1]} positions, expected grid {self.grid}")
        s = spatial.transpose(0, 1).float()                            # (Q, b, d)
        with torch.no_grad(), full_fp32():
            # float32 products, stored as float32: the same bits a float64 copy would hold, half the bytes
            self.layer_grams.append((s @ s.transpose(1, 2)).cpu().numpy().astype(np.float32, copy=False)[None])
        x = batch.inputs
        cells = [x[:, :, self.rows[r]:self.rows[r + 1], self.cols[c]:self.cols[c + 1]] for r, c in self.positions]
        self.input_grams.append(np.stack([gram(c, center="auto").cpu().numpy() for c in cells])[None])
        self.minibatch_ids.append(batch.minibatch_id)

    def result(self):
        from ..store import layer_path

        q, pcount = self.grid[0] * self.grid[1], len(self.positions)
        kept = bool(self.layer_grams)
        b = self.layer_grams.array().shape[-1] if kept else 0
        return {
            layer_path(self.layer, "positions/gram"): (self.layer_grams.array() if kept
                                                       else np.zeros((0, q, b, b), dtype=np.float32)),
            f"{LOCALIZATION}/input/gram": self.input_grams.array() if kept else np.zeros((0, pcount, b, b)),
            f"{LOCALIZATION}/positions": np.asarray(self.positions, dtype=np.int64).reshape(-1, 2),
            f"{LOCALIZATION}/grid": np.asarray(self.grid, dtype=np.int64),
            f"{LOCALIZATION}/cell": np.asarray(self.cell, dtype=np.float64),
            f"{LOCALIZATION}/minibatch_ids": np.asarray(self.minibatch_ids, dtype=np.int64),
            f"{LOCALIZATION}/layer_index": np.asarray(self.layer_index, dtype=np.int64),
        }


class ReceptiveFieldReducer(Reducer):
    """Effective receptive fields (F6) of the plan's first `n_images` images: they are kept during the
    shard's forward passes, then differentiated in chunks of `batch_size`, one backward pass per layer
    (:func:`seelike.analyses.receptive_field.receptive_fields`), once the taps are detached."""
    name = "receptive_field"

    def __init__(self, model, layers: list[dict], num_prefix_tokens: int, n_images: int, batch_size: int,
                 shard_offset: int):
        self.model, self.layers, self.p = model, layers, int(num_prefix_tokens)
        self.n_images, self.batch_size, self.offset = int(n_images), int(batch_size), int(shard_offset)
        self.inputs, self._rows = [], np.zeros(0, dtype=int)

    def begin(self, positions, example_indices):
        self._rows = _rows(self.offset + np.asarray(positions), self.n_images)

    def update(self, batch):
        if self._rows.size:
            self.inputs.append(_take(batch.inputs, self._rows).detach().cpu())

    def result(self):
        import torch
        from .receptive_field import RECEPTIVE_FIELD, receptive_fields

        if not self.inputs:
            return {}
        x = torch.cat(self.inputs)
        device = next(self.model.parameters()).device
        for p in self.model.parameters():
            p.requires_grad_(False)
        sums, meta = {}, {}
        for chunk in torch.split(x, self.batch_size):
            for name, (g, grid, cell) in receptive_fields(self.model, chunk.to(device), self.layers, self.p).items():
                sums[name] = sums.get(name, 0.0) + g
                meta[name] = (grid, cell)
        out = {f"{RECEPTIVE_FIELD}/count": np.asarray(len(x), dtype=np.int64)}
        for i, layer in enumerate(self.layers):
            base = f"{RECEPTIVE_FIELD}/{layer['name']}"
            grid, cell = meta[layer["name"]]
            out.update({f"{base}/sum": sums[layer["name"]], f"{base}/grid": np.asarray(grid, dtype=np.int64),
                        f"{base}/centre": np.asarray(cell, dtype=np.int64), f"{base}/index": np.asarray(i, dtype=np.int64)})
        return out


class LayerShapes(Reducer):
    """Records the raw output shape of every layer during the first forward pass (then unhooks), so the
    grids of CNN feature maps are known without an extra pass."""
    name = "layer_shapes"

    def __init__(self, layer_specs: list[dict]):
        self.layer_specs, self.shapes, self._handles = layer_specs, {}, []

    def attach(self, model):
        from ..models.layers import get_module

        def record(name, t) -> None:   # hooks must return None (a value would replace the input/output)
            while isinstance(t, (tuple, list)):
                t = t[0]
            self.shapes.setdefault(name, tuple(t.shape))

        for layer in self.layer_specs:
            module, name = get_module(model, layer["module"]), layer["name"]
            # prepend: the shape is known before any other hook on the module sees its output
            if layer.get("tap", "output") == "input":
                h = module.register_forward_pre_hook(lambda m, a, n=name: record(n, a), prepend=True)
            else:
                h = module.register_forward_hook(lambda m, a, o, n=name: record(n, o), prepend=True)
            self._handles.append(h)
        return list(self._handles)

    def update(self, batch):
        while self._handles:          # shapes known: no more hooks on the way
            self._handles.pop().remove()

    def result(self):
        return {}


# ----------------------------------------------------------------------------- setup

def grids_from_shapes(model, layer_specs: list[dict], shapes: dict, num_prefix_tokens: int, hw) -> dict:
    """{layer: (grid, cell size in input pixels)} for the layers whose raw output shape has a spatial grid."""
    from ..models.residual import feature_grid, patch_geometry

    out = {}
    for layer in layer_specs:
        shape = shapes.get(layer["name"])
        if shape is None:
            continue
        g = feature_grid(shape, layer.get("layout", "auto"), num_prefix_tokens)
        if g is not None:
            out[layer["name"]] = (g, (hw[0] / g[0], hw[1] / g[1]))
        elif len(shape) == 3 and shape[1] > num_prefix_tokens:
            try:
                out[layer["name"]] = patch_geometry(model, shape[1] - num_prefix_tokens, hw)
            except ValueError:
                pass
    return out


def layer_grids(model, layer_specs: list[dict], input_size, num_prefix_tokens: int, device) -> dict:
    """grids_from_shapes after one forward pass of a blank image (a tool; extraction records the shapes of
    its first minibatch instead)."""
    import torch

    probe = LayerShapes(layer_specs)
    handles = probe.attach(model)
    try:
        with torch.no_grad():
            model(torch.zeros((1, *input_size), device=device))
    finally:
        for h in handles:
            h.remove()
    return grids_from_shapes(model, layer_specs, probe.shapes, num_prefix_tokens,
                             (int(input_size[1]), int(input_size[2])))


def _localizable(g) -> bool:
    """Whether a layer with this (grid, cell) can be F9's layer: a spatial map of at least 2 x 2."""
    return g is not None and g[0][0] >= 2 and g[0][1] >= 2


def _localization_layer(model_name: str, layers: list[str], grids: dict, requested: str | None) -> str:
    if requested:
        if requested not in layers:
            raise ValueError(f"config key analyses.localization.layers.{model_name}: '{requested}' is not a layer of "
                             f"'{model_name}'; layers: {', '.join(layers)}")
        if requested not in grids:
            raise ValueError(f"analyses.localization: layer '{requested}' of '{model_name}' has no spatial grid")
        return requested
    for name in reversed(layers):   # the final layer, unless its map is smaller than 2 x 2
        if _localizable(grids.get(name)):
            return name
    raise ValueError(f"analyses.localization: no layer of '{model_name}' has a spatial grid of at least 2 x 2")


def vision_reducers(taps: dict, *, model, card, model_name: str, layer_specs: list[dict], shard_offset: int,
                    device, minibatches: int = 1) -> list[Reducer]:
    """The reducers ``taps`` switches on for this model (empty dict: none, and no extra work);
    ``minibatches``: how many the shard has."""
    if not taps:
        return []
    from ..models.residual import attention_modules, patch_geometry, residual_branches

    input_size = [int(v) for v in card.input_size]
    hw = (input_size[1], input_size[2])
    p = card.num_prefix_tokens
    out: list[Reducer] = []
    if "attention_distance" in taps or "attention_maps" in taps or "heads" in taps:
        attn = attention_modules(model, model_name)
        n_maps = int(taps.get("attention_maps", {}).get("n_images", 0))
        if "attention_distance" in taps or n_maps:
            out.append(AttentionReducer(attn, p, lambda n: patch_geometry(model, n, hw), input_size, shard_offset,
                                        "attention_distance" in taps, n_maps))
        if "heads" in taps:
            out.append(HeadGramReducer(attn[:int(taps["heads"]["blocks"])], minibatches))
    if "norm_ratio" in taps:
        out.append(NormRatioReducer(residual_branches(model, card.family, model_name), p))
    if "localization" in taps:
        t = taps["localization"]
        names = [l["name"] for l in layer_specs]
        probe = LayerShapes(layer_specs)

        def resolve():
            grids = grids_from_shapes(model, layer_specs, probe.shapes, p, hw)
            layer = _localization_layer(model_name, names, grids, t.get("layer"))
            grid, cell = grids[layer]
            return layer, names.index(layer), grid, cell, geometry.cells_from_fractions(t["positions"], grid)

        def rank(name):   # inside the first forward pass: may `resolve` pick this layer? (its shape is known)
            if t.get("layer"):
                return 0 if name == t["layer"] else None
            spec = layer_specs[names.index(name)]
            return names.index(name) if _localizable(grids_from_shapes(model, [spec], probe.shapes, p, hw).get(name)) \
                else None

        if t.get("layer") and t["layer"] not in names:   # a bad name fails before the first minibatch
            _localization_layer(model_name, names, {}, t["layer"])
        out += [probe, PositionGramReducer(None, 0, None, None, hw, None, int(t["n_images"]), shard_offset, p,
                                           resolve=resolve, rank=rank, minibatches=minibatches)]
    if "receptive_field" in taps and shard_offset < int(taps["receptive_field"]["n_images"]):
        from .receptive_field import choose_layers

        rf = taps["receptive_field"]
        chosen = choose_layers(card.layer_names, rf["layers"])
        out.append(ReceptiveFieldReducer(model, [l for l in card.layers if l["name"] in chosen], p, rf["n_images"],
                                         rf["batch_size"], shard_offset))
    return out
