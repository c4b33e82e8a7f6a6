"""The HDF5 activation store: one file per (model, dataset, shard).

Layout (schema version 1):

    /                         attrs: format, schema_version, kind, model, dataset, shard_index, n_shards,
                                     plan_digest, layers (JSON list, depth order),
                                     datasets (JSON list of every array path written), provenance (JSON),
                                     complete = 1 (set last)
    /plan/json                scalar string: the whole plan (a dataset: attributes stop at 64 KiB)
    /plan/example_indices     (n,)   dataset index of every example, plan order
    /plan/minibatch_ids       (n,)   global CKA minibatch of every example
    /labels                   (n,)
    /logits                   (n, C)
    /layers/<layer>/gram      (m, b, b) float64   one Gram per CKA minibatch of the shard, of the features
                                                centred over the minibatch (H X X^T H; cka.gram center="auto")
    /layers/<layer>/pooled_cls  (n, d)            CLS token (models with prefix tokens)
    /layers/<layer>/pooled_mean (n, d)            mean over spatial tokens (CNN: spatial mean)
    /layers/<layer>/tokens    (k, t, d)           full tokens of the first k examples only
    /layers/<layer>/<other>   any per-layer reduction a later analysis adds
    /reductions/<name>/...    model-level reductions (attention distances, norm ratios, ...)
                              (the vision analyses' paths: seelike/analyses/reducers.py)

`kind` is "activations" (the pass for CKA: labels, logits, Grams, pooled features and tokens of
every layer) or "vision" (the vision pass: only the vision analyses' reductions, below; no Grams).

Every array lands under a path recorded in the `datasets` attribute, so validation checks
whatever reductions were switched on without knowing them. A shard is written in full under a
temporary name and renamed when complete; a reader never sees a partial file.
"""
from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

FORMAT = "seelike-shard"
SCHEMA_VERSION = 1
KINDS = ("activations", "vision")


class ShardError(ValueError):
    """A shard that must not be used, with the file named."""


def configure_file_locking(setting) -> None:
    """HDF5 file locking fails on some shared filesystems (NFS, Lustre); the config can turn it off.

    Must run before h5py opens a file; HDF5 reads the variable once per process.
    """
    if setting in ("auto", None):
        return
    os.environ["HDF5_USE_FILE_LOCKING"] = "TRUE" if setting in (True, "true") else "FALSE"


@dataclass
class ShardInfo:
    path: Path
    model: str
    dataset: str
    shard_index: int
    n_shards: int
    plan_digest: str
    plan: dict
    layers: list[str]
    datasets: list[str]
    provenance: dict
    example_indices: np.ndarray
    minibatch_ids: np.ndarray
    kind: str = "activations"


def layer_path(layer: str, name: str) -> str:
    if "/" in layer:
        raise ValueError(f"layer name '{layer}' must not contain '/'")
    return f"layers/{layer}/{name}"


def write_shard(path: str | os.PathLike, *, kind: str = "activations", model: str, dataset: str, shard_index: int, n_shards: int,
                plan: dict, plan_digest: str, layers: list[str], example_indices: np.ndarray,
                minibatch_ids: np.ndarray, arrays: Mapping[str, np.ndarray], provenance: dict,
                compression: str | None = None) -> Path:
    """Write a complete shard atomically. `arrays` maps store paths (see layout) to arrays.

    Uncompressed by default: Grams (most of a shard) do not compress, and gzip bought ~30% on pooled
    features and ~45% on full token maps for more CPU than the Grams themselves -- 2.4 s per
    8-minibatch ResNet-50 shard at 64 px for its pooled features, 26% of the forward passes stored
    (lzf: 0.81 of the size in 1.4 s; plain: 0.08 s). `compression` applies to arrays of >= 4096
    values other than Grams.
    """
    import h5py
    from .fileio import atomic_write, write_segments

    path = Path(path)
    all_arrays = dict(arrays)
    all_arrays["plan/example_indices"] = np.asarray(example_indices, dtype=np.int64)
    all_arrays["plan/minibatch_ids"] = np.asarray(minibatch_ids, dtype=np.int64)
    # HDF5 writes into memory only (a full disk then raises an ordinary OSError below, whereas HDF5
    # failing inside its own flush leaves state that crashes later), and what it writes is the file's
    # structure: each large uncompressed array gets its space allocated in the file, never filled, and
    # is written into it from its own memory (seelike.fileio.write_segments: with O_DIRECT, through two
    # 4 MiB buffers), so the shard is never held twice in memory (a shard of a large model holds GBs:
    # full tokens, pooled features), nor once more in the page cache.
    image = _StructureImage()
    direct: list[tuple[int, np.ndarray]] = []
    with h5py.File(image, "w") as f:
        f.create_dataset("plan/json", data=json.dumps(plan, sort_keys=True))
        for key, arr in all_arrays.items():
            arr = np.asarray(arr)
            use = compression if arr.size >= 4096 and not key.endswith("/gram") else None
            if use is None and arr.nbytes >= _DIRECT_BYTES and arr.dtype.kind in "iuf" and arr.dtype.isnative:
                dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)   # (the low-level calls: h5py >= 3.8)
                dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
                dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
                ds = f.create_dataset(key, shape=arr.shape, dtype=arr.dtype, dcpl=dcpl)
                direct.append((ds.id.get_offset(), arr))
            else:
                f.create_dataset(key, data=arr, compression=use)
        f.attrs.update({
            "format": FORMAT, "schema_version": SCHEMA_VERSION, "kind": kind, "model": model, "dataset": dataset,
            "shard_index": shard_index, "n_shards": n_shards, "plan_digest": plan_digest,
            "layers": json.dumps(list(layers)),
            "datasets": json.dumps(sorted(all_arrays)), "provenance": json.dumps(provenance, default=str),
        })
        f.attrs["complete"] = 1  # last: a file without it was never finished
    with atomic_write(path) as tmp:
        write_segments(tmp, image.writes + [(offset, np.ascontiguousarray(arr)) for offset, arr in direct],
                       image.size)
    return path


#: Arrays of at least this many bytes are written into the file from their own memory (write_shard).
_DIRECT_BYTES = 1 << 16


class _StructureImage:
    """A file object for h5py that keeps what HDF5 writes to it (the file's structure, attributes and
    small arrays), in the order written, and nothing else: ranges never written (the large arrays'
    allocated space) read as zeros and take no memory. ``writes`` replayed in order onto an empty
    file, then truncated to ``size``, give the file HDF5 made."""

    def __init__(self):
        self.writes: list[tuple[int, bytes]] = []
        self.pos = 0
        self.size = 0

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.size}[whence]
        self.pos = base + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def write(self, data) -> int:
        data = bytes(data)       # HDF5's buffer is valid only during the call
        self.writes.append((self.pos, data))
        self.pos += len(data)
        self.size = max(self.size, self.pos)
        return len(data)

    def readinto(self, buffer) -> int:
        out = memoryview(buffer).cast("B")
        lo, hi = self.pos, self.pos + len(out)
        out[:] = bytes(len(out))
        for offset, data in self.writes:         # later writes over earlier ones, as in a file
            a, b = max(lo, offset), min(hi, offset + len(data), self.size)
            if a < b:
                out[a - lo:b - lo] = data[a - offset:b - offset]
        self.pos = hi
        return len(out)

    def read(self, n: int = -1) -> bytes:
        buf = bytearray(max(0, self.size - self.pos) if n is None or n < 0 else n)
        self.readinto(buf)
        return bytes(buf)

    def truncate(self, size: int | None = None) -> int:
        self.size = self.pos if size is None else int(size)
        # bytes cut off stay cut off, also if the file grows again
        self.writes = [(o, d[:self.size - o]) for o, d in self.writes if o < self.size]
        return self.size

    def flush(self) -> None:
        pass


def _first_nonfinite(arr: np.ndarray) -> tuple[int, ...] | None:
    """Index of a non-finite value of ``arr`` that points at its culprit, None if all are finite.

    Usually the first in memory order (its leading index is the first bad example). In a stack of
    square matrices (..., b, b) -- Grams, where one bad example spoils its whole row and column, so
    that every row holds a non-finite value and the first one is in row 0 -- the first matrix with
    one, and in it the row with the most non-finite values (the lowest such row: in a symmetric Gram
    the example whose row and column are bad), at its first bad column."""
    bad = ~np.isfinite(arr)
    if not bad.any():
        return None
    if arr.ndim < 3 or arr.shape[-1] != arr.shape[-2]:
        return tuple(int(i) for i in np.argwhere(bad)[0])
    lead = tuple(int(i) for i in np.argwhere(bad.any(axis=(-2, -1)))[0])
    m = bad[lead]
    row = int(np.argmax(m.sum(axis=1)))
    return lead + (row, int(np.flatnonzero(m[row])[0]))


def describe_nonfinite(key: str, where: tuple[int, ...], example_indices: np.ndarray,
                       minibatch_ids: np.ndarray) -> str:
    """Name the layer and the bad example (dataset index) of a non-finite value at ``where``; for a
    Gram (m, b, b), ``where`` is (minibatch, row, column) and row names the example (see
    :func:`_first_nonfinite`: the one whose row and column are non-finite)."""
    parts = key.split("/")
    layer = parts[1] if parts[0] == "layers" and len(parts) > 2 else None
    what = f"layer '{layer}' ({parts[-1]})" if layer else f"'{key}'"
    if key.endswith("/gram"):
        mb_local, row = where[0], where[1]
        mbs = np.unique(minibatch_ids)
        members = np.flatnonzero(minibatch_ids == mbs[mb_local]) if mb_local < len(mbs) else []
        if len(members) > row:
            pos = members[row]
            return f"{what}: non-finite value, first bad example: dataset index {int(example_indices[pos])} (minibatch {int(mbs[mb_local])})"
        return f"{what}: non-finite value in minibatch {mb_local}"
    if len(where) and where[0] < len(example_indices) and not key.startswith("reductions/"):
        return f"{what}: non-finite value, first bad example: dataset index {int(example_indices[where[0]])}"
    return f"{what}: non-finite value at {where}"


def validate_shard(path: str | os.PathLike, *, expected_plan: dict | None = None,
                   expected_layers: Iterable[str] | None = None, expected_shard: int | None = None,
                   check_values: bool = True) -> ShardInfo:
    """Open a shard and check it is usable: complete, every layer and dataset present, values finite,
    plan as expected, and the shard consistent with its own plan: its index (``expected_shard`` when
    given), examples and minibatches are the plan's, and every Gram, label, logit and pooled row is
    there for them. Raises ShardError naming the file and the problem."""
    import h5py
    from .plan import plan_differences

    path = Path(path)
    if not path.is_file():
        raise ShardError(f"shard '{path}' does not exist")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ShardError(f"shard '{path}' is not a readable HDF5 file (truncated or corrupt?): {e}") from None
    try:
        with f:
            a = f.attrs
            if a.get("format") != FORMAT:
                raise ShardError(f"shard '{path}' is not a seelike shard (format attribute missing)")
            if int(a.get("schema_version", -1)) != SCHEMA_VERSION:
                raise ShardError(f"shard '{path}' has schema version {a.get('schema_version')}, expected {SCHEMA_VERSION}")
            if int(a.get("complete", 0)) != 1:
                raise ShardError(f"shard '{path}' was never completed")
            layers = json.loads(a["layers"])
            datasets = json.loads(a["datasets"])
            kind = str(a.get("kind", "activations"))
            if kind not in KINDS:
                raise ShardError(f"shard '{path}' is of kind '{kind}'; known kinds: {', '.join(KINDS)}")
            plan_text = f["plan/json"][()]
            plan = json.loads(plan_text)
            ex = f["plan/example_indices"][()]
            mb = f["plan/minibatch_ids"][()]
            missing = [d for d in datasets if d not in f]
            if kind == "activations":   # the vision pass stores no Grams
                if expected_layers is not None:
                    missing += [layer_path(l, "gram") for l in expected_layers if layer_path(l, "gram") not in f]
                missing += [layer_path(l, "gram") for l in layers if layer_path(l, "gram") not in f]
            elif expected_layers is not None and list(expected_layers) != layers:
                raise ShardError(f"shard '{path}' has layers {layers}, expected {list(expected_layers)}")
            if missing:
                raise ShardError(f"shard '{path}' lacks {', '.join(sorted(set(missing)))}")
            if expected_plan is not None:
                diff = plan_differences(plan, expected_plan)
                if diff:
                    raise ShardError(f"shard '{path}' was extracted with a different plan; differing keys: {', '.join(diff)}")
            _check_against_own_plan(path, f, plan_text, ex, mb, layers, expected_shard)
            if check_values:
                for key in datasets:
                    ds = f[key]
                    if ds.dtype.kind != "f":
                        continue
                    arr = ds[()]  # reading every chunk also surfaces bit flips caught by HDF5's checksums/decompression
                    where = _first_nonfinite(arr)
                    if where is not None:
                        raise ShardError(f"shard '{path}': " + describe_nonfinite(key, where, ex, mb))
            return ShardInfo(path=path, model=str(a["model"]), dataset=str(a["dataset"]),
                             shard_index=int(a["shard_index"]), n_shards=int(a["n_shards"]),
                             plan_digest=str(a["plan_digest"]), plan=plan, layers=layers, datasets=datasets,
                             provenance=json.loads(a["provenance"]), example_indices=ex, minibatch_ids=mb, kind=kind)
    except ShardError:
        raise
    except (OSError, KeyError, ValueError) as e:
        raise ShardError(f"shard '{path}' is damaged: {e}") from None


@functools.lru_cache(maxsize=8)
def _parsed_plan(plan_text) -> tuple:
    """(Plan, digest) of a shard's plan JSON; every shard of a plan holds the same text, so a CKA table
    parses it once, not once per shard and model."""
    from .plan import Plan

    p = Plan.from_dict(json.loads(plan_text))
    return p, p.digest()


def _check_against_own_plan(path: Path, f, plan_text, ex: np.ndarray, mb: np.ndarray, layers: list[str],
                            expected_shard: int | None) -> None:
    """A shard copied under another shard's name, or with a short array, would otherwise pass: CKA
    would count some minibatches twice or pair Grams with the wrong examples."""
    a = f.attrs
    try:
        p, digest = _parsed_plan(plan_text)
    except (TypeError, ValueError) as e:
        raise ShardError(f"shard '{path}' holds an invalid plan: {e}") from None
    if str(a["plan_digest"]) != digest:
        raise ShardError(f"shard '{path}': its plan_digest attribute does not match the plan it holds")
    index, n_shards = int(a["shard_index"]), int(a["n_shards"])
    if n_shards != p.n_shards or not 0 <= index < n_shards:
        raise ShardError(f"shard '{path}' says shard {index} of {n_shards}; its plan has {p.n_shards} shard(s)")
    if expected_shard is not None and index != expected_shard:
        raise ShardError(f"shard '{path}' holds shard {index}, expected shard {expected_shard} (a copied or renamed file?)")
    sp = p.shard(index)
    if not (np.array_equal(ex, sp.example_indices) and np.array_equal(mb, sp.minibatch_ids)):
        raise ShardError(f"shard '{path}': its example indices or minibatch ids are not those of shard {index} of its plan")
    n, m, b = sp.n_examples, len(sp.minibatches), p.minibatch_size
    want = {"labels": (n,)}
    want.update({layer_path(l, "gram"): (m, b, b) for l in layers})
    for key, shape in want.items():
        if key in f and f[key].shape != shape:
            raise ShardError(f"shard '{path}': '{key}' has shape {f[key].shape}, expected {shape}")
    rows = ["logits"] + [layer_path(l, k) for l in layers for k in ("pooled_cls", "pooled_mean")]
    for key in rows:
        if key in f and (f[key].ndim < 1 or f[key].shape[0] != n):
            raise ShardError(f"shard '{path}': '{key}' has shape {f[key].shape}, expected {n} rows (one per example)")


def read_grams(path: str | os.PathLike, layers: list[str], out: np.ndarray | None = None, at: int = 0) -> np.ndarray:
    """(m, L, b, b) float64 Grams of the listed layers, minibatches in plan order.

    With ``out`` (a C-contiguous float64 (m, L', b, b) array) layer ``j`` is read straight into
    ``out[:, at + j]`` and ``out`` is returned: the Grams of several models go into one stack
    without the two extra copies that stacking per file and then across files cost."""
    import h5py

    with h5py.File(path, "r") as f:
        dsets = [f[layer_path(l, "gram")] for l in layers]
        if out is None:
            if not dsets:
                raise ValueError("read_grams: no layers given")
            m, b = dsets[0].shape[0], dsets[0].shape[-1]
            out = np.empty((m, len(dsets), b, b))
        elif not (out.flags.c_contiguous and out.dtype == np.float64 and out.ndim == 4
                  and at + len(dsets) <= out.shape[1]):
            raise ValueError(f"read_grams: out must be C-contiguous float64 (m, >= {at + len(dsets)}, b, b), "
                             f"got {out.dtype} {out.shape}")
        want = (out.shape[0], out.shape[2], out.shape[3])
        for j, ds in enumerate(dsets):
            if ds.shape != want:
                raise ShardError(f"shard '{path}': {ds.name} has shape {ds.shape}, expected {want}")
            ds.read_direct(out, dest_sel=np.s_[:, at + j])
    return out


def read_array(path: str | os.PathLike, key: str) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as f:
        if key not in f:
            raise ShardError(f"shard '{path}' has no dataset '{key}'")
        return f[key][()]
