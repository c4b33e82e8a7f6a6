"""HDF5 shard round trip and rejection of shards that must not be used."""

import h5py
import numpy as np
import pytest

from seelike.plan import Plan
from seelike.store import ShardError, layer_path, read_array, read_grams, validate_shard, write_shard

PLAN = {"dataset": "synth:abc", "n_examples": 8, "minibatch_size": 4, "minibatches_per_shard": 2, "seed": 0,
        "indices": list(range(10, 18))}


def make_shard(path, grams=None, pooled=None, plan=PLAN, **override):
    """Shard 0 of a 1-shard plan; ``override`` replaces write_shard arguments or arrays (by path)."""
    rng = np.random.default_rng(0)
    layers = ["block0", "block1"]
    x = rng.normal(size=(2, 8, 5))
    grams = grams if grams is not None else {l: np.stack([x[i, :4] @ x[i, :4].T, x[i, 4:] @ x[i, 4:].T]) for i, l in enumerate(layers)}
    arrays = {layer_path(l, "gram"): g for l, g in grams.items()}
    arrays.update({layer_path(l, "pooled_mean"): (pooled if pooled is not None else x[i]).astype(np.float32) for i, l in enumerate(layers)})
    arrays["labels"] = np.arange(8)
    arrays["logits"] = rng.normal(size=(8, 3)).astype(np.float32)
    arrays.update({k: v for k, v in override.items() if "/" in k or k in ("labels", "logits")})
    args = dict(model="m", dataset="synth", shard_index=0, n_shards=1, plan=plan, plan_digest=Plan.from_dict(plan).digest(),
                layers=layers, example_indices=np.arange(10, 18), minibatch_ids=np.repeat([0, 1], 4),
                arrays=arrays, provenance={"config_hash": "h"})
    args.update({k: v for k, v in override.items() if k in args})
    write_shard(path, **args)
    return grams


def test_round_trip(tmp_path):
    p = tmp_path / "s.h5"
    grams = make_shard(p)
    info = validate_shard(p, expected_plan=PLAN, expected_layers=["block0", "block1"])
    assert info.layers == ["block0", "block1"] and info.model == "m"
    np.testing.assert_array_equal(info.example_indices, np.arange(10, 18))
    g = read_grams(p, ["block0", "block1"])
    assert g.shape == (2, 2, 4, 4) and g.dtype == np.float64
    np.testing.assert_array_equal(g[:, 1], grams["block1"])
    # read into a slot of a larger stack (a CKA table stacks several models' layers): only that slot is written
    big = np.full((2, 5, 4, 4), -7.0)
    assert read_grams(p, ["block1", "block0"], out=big, at=2) is big
    np.testing.assert_array_equal(big[:, 2], grams["block1"])
    np.testing.assert_array_equal(big[:, 3], grams["block0"])
    assert (big[:, [0, 1, 4]] == -7.0).all()
    with pytest.raises(ValueError, match="C-contiguous float64"):
        read_grams(p, ["block0", "block1"], out=big, at=4)           # does not fit
    with pytest.raises(ValueError, match="C-contiguous float64"):
        read_grams(p, ["block0"], out=big[:, 1:], at=0)               # a view with gaps
    with pytest.raises(ShardError, match="block0/gram has shape"):
        read_grams(p, ["block0"], out=np.empty((3, 1, 4, 4)))         # other minibatch count
    assert read_array(p, "labels").tolist() == list(range(8))
    assert not list(tmp_path.glob("*.tmp*")), "temporary file left behind"


def test_truncated_shard_rejected(tmp_path):
    p = tmp_path / "s.h5"
    make_shard(p)
    size = p.stat().st_size
    with open(p, "r+b") as fh:
        fh.truncate(size // 2)
    with pytest.raises(ShardError, match="s.h5"):
        validate_shard(p)


def test_nan_shard_names_layer_and_example(tmp_path):
    p = tmp_path / "s.h5"
    pooled = np.zeros((8, 5))
    pooled[5, 2] = np.nan
    make_shard(p, pooled=pooled)
    with pytest.raises(ShardError) as e:
        validate_shard(p)
    assert "block0" in str(e.value) and "dataset index 15" in str(e.value)


def test_inf_in_gram_names_minibatch_example(tmp_path):
    p = tmp_path / "s.h5"
    g = np.ones((2, 4, 4))
    g[1, 2, 3] = np.inf
    make_shard(p, grams={"block0": np.ones((2, 4, 4)), "block1": g})
    with pytest.raises(ShardError) as e:
        validate_shard(p)
    assert "block1" in str(e.value) and "dataset index 16" in str(e.value)


def test_plan_mismatch_names_keys(tmp_path):
    p = tmp_path / "s.h5"
    make_shard(p)
    other = dict(PLAN, minibatch_size=8, minibatches_per_shard=1)
    with pytest.raises(ShardError) as e:
        validate_shard(p, expected_plan=other)
    assert "minibatch_size" in str(e.value)


TWO_SHARDS = dict(PLAN, minibatches_per_shard=1)       # shard 0: examples 10-13, shard 1: 14-17


@pytest.mark.parametrize("case,override,match", [
    ("shard 1 saved as shard 0", dict(plan=TWO_SHARDS, n_shards=2, shard_index=1, example_indices=np.arange(14, 18),
                                      minibatch_ids=np.repeat([1], 4), **{layer_path(l, "gram"): np.eye(4)[None] for l in ("block0", "block1")},
                                      labels=np.arange(4), logits=np.zeros((4, 3), np.float32),
                                      **{layer_path(l, "pooled_mean"): np.zeros((4, 5), np.float32) for l in ("block0", "block1")}),
     "holds shard 1, expected shard 0"),
    ("a Gram short of a minibatch", {layer_path("block1", "gram"): np.eye(4)[None]}, r"'layers/block1/gram' has shape \(1, 4, 4\), expected \(2, 4, 4\)"),
    ("Grams of another minibatch size", {layer_path("block0", "gram"): np.stack([np.eye(8)] * 2)}, "expected \\(2, 4, 4\\)"),
    ("labels of 3 examples", {"labels": np.arange(3)}, r"'labels' has shape \(3,\), expected \(8,\)"),
    ("logits of 5 examples", {"logits": np.zeros((5, 3), np.float32)}, "'logits' has shape .*expected 8 rows"),
    ("pooled rows missing", {layer_path("block1", "pooled_mean"): np.zeros((5, 5), np.float32)}, "pooled_mean' has shape .*expected 8 rows"),
    ("a forged plan digest", {"plan_digest": "x"}, "plan_digest attribute does not match"),
    ("examples not the plan's", {"example_indices": np.arange(8)}, "example indices or minibatch ids are not those of shard 0"),
    ("minibatches not the plan's", {"minibatch_ids": np.repeat([1, 0], 4)}, "example indices or minibatch ids are not those of shard 0"),
    ("a shard index past the plan", {"shard_index": 3}, "says shard 3 of 1"),
])
def test_shard_inconsistent_with_its_own_plan_rejected(tmp_path, case, override, match):
    """Each of these shards is complete, finite and carries the expected plan, yet inconsistent with it:
    accepted, CKA would count a minibatch twice or pair Grams with the wrong examples."""
    p = tmp_path / "shard-00000.h5"
    make_shard(p, **override)
    plan = override.get("plan", PLAN)
    with pytest.raises(ShardError, match=match):
        validate_shard(p, expected_plan=plan, expected_shard=0)


def test_missing_layer_rejected(tmp_path):
    p = tmp_path / "s.h5"
    make_shard(p)
    with pytest.raises(ShardError, match="layers/block7/gram"):
        validate_shard(p, expected_layers=["block0", "block7"])


def test_incomplete_flag_rejected(tmp_path):
    p = tmp_path / "s.h5"
    make_shard(p)
    with h5py.File(p, "a") as f:
        f.attrs["complete"] = 0
    with pytest.raises(ShardError, match="never completed"):
        validate_shard(p)


def test_failed_write_leaves_nothing(tmp_path):
    p = tmp_path / "s.h5"
    with pytest.raises(Exception):
        write_shard(p, model="m", dataset="d", shard_index=0, n_shards=1, plan=PLAN, plan_digest="d", layers=["a"],
                    example_indices=np.arange(4), minibatch_ids=np.zeros(4), arrays={"bad": object()}, provenance={})
    assert list(tmp_path.iterdir()) == []


def test_shards_are_plain_unless_compression_is_asked_for(tmp_path):
    """By default nothing is compressed (gzip cost more CPU than the Grams, for ~30% of the pooled
    features' size); with compression="gzip" every large array but the Grams is; every array reads
    back exactly either way."""
    rng = np.random.default_rng(1)
    arrays = {layer_path("a", "gram"): rng.normal(size=(1, 64, 64)),
              layer_path("a", "pooled_mean"): rng.normal(size=(64, 96)).astype(np.float32),
              layer_path("a", "tokens"): np.maximum(rng.normal(size=(8, 17, 96)), 0).astype(np.float32),
              "reductions/r/x": np.zeros((64, 96), np.float32), "labels": np.arange(64)}
    for compression, want in ((None, {}), ("gzip", {layer_path("a", "pooled_mean"): "gzip",
                                                    layer_path("a", "tokens"): "gzip", "reductions/r/x": "gzip"})):
        p = tmp_path / f"{compression}.h5"
        write_shard(p, model="m", dataset="d", shard_index=0, n_shards=1, plan=PLAN, plan_digest="d", layers=["a"],
                    example_indices=np.arange(64), minibatch_ids=np.zeros(64, int), arrays=arrays, provenance={},
                    compression=compression)
        with h5py.File(p, "r") as f:
            got = {k: f[k].compression for k in arrays if f[k].compression}
            for k, a in arrays.items():
                np.testing.assert_array_equal(f[k][()], a)
        assert got == want


@pytest.mark.parametrize("mb,example", [(1, 5), (0, 2), (1, 7)])
def test_nan_gram_row_and_column_names_that_example(tmp_path, mb, example):
    """A non-finite example spoils its whole Gram row and column; the message names that example,
    not the first row in memory order (row 0, which holds a NaN in that column too)."""
    p = tmp_path / "s.h5"
    g = np.stack([np.eye(4) + 1.0, np.eye(4) + 2.0])
    local = example - 4 * mb
    g[mb, local, :] = np.nan
    g[mb, :, local] = np.nan
    make_shard(p, grams={"block0": np.ones((2, 4, 4)), "block1": g})
    with pytest.raises(ShardError) as e:
        validate_shard(p)
    assert "block1" in str(e.value) and f"dataset index {10 + example} (minibatch {mb})" in str(e.value)


def test_nan_gram_names_the_row_with_most_non_finite_values(tmp_path):
    """A partly spoilt Gram: the example whose row (and column) holds the most non-finite values is named."""
    p = tmp_path / "s.h5"
    g = np.stack([np.eye(4) + 1.0, np.eye(4) + 2.0])
    g[0, 0, 3] = g[0, 3, 0] = np.inf            # one pair
    g[0, 2, :3] = g[0, :3, 2] = np.nan          # row/column 2 mostly NaN
    make_shard(p, grams={"block0": g, "block1": np.ones((2, 4, 4))})
    with pytest.raises(ShardError) as e:
        validate_shard(p)
    assert "block0" in str(e.value) and "dataset index 12 (minibatch 0)" in str(e.value)


def test_large_arrays_are_written_from_their_own_memory_and_read_back_exactly(tmp_path, monkeypatch):
    """Arrays of 64 KiB and more go into the file straight from their memory: write_shard's own
    allocations stay far below the shard's size (tracemalloc traces numpy's and Python's), and every
    array, whatever its dtype, order or byte order, or compression, reads back exactly."""
    import tracemalloc

    from seelike import fileio

    monkeypatch.setattr(fileio, "_DIRECT_CHUNK", 1 << 20)    # small against the shard: the buffers

    rng = np.random.default_rng(2)
    base = rng.normal(size=(512, 2048))
    arrays = {layer_path("a", "gram"): rng.normal(size=(8, 256, 256)),                  # 4 MiB float64
              layer_path("a", "pooled_mean"): base.astype(np.float32),                 # 4 MiB
              layer_path("a", "tokens"): base[:, ::2].astype(np.float16)[:, :1000],     # a strided view
              layer_path("a", "big_endian"): base[:64].astype(">f8"),                   # through HDF5
              "reductions/r/counts": rng.integers(0, 255, size=(300_000,), dtype=np.uint8),
              "reductions/r/ids": np.arange(100_000, dtype=np.int64),
              "reductions/r/empty": np.zeros((0, 9), np.float32),
              "labels": np.arange(512)}
    total = sum(a.nbytes for a in arrays.values())
    for compression in (None, "gzip"):
        p = tmp_path / f"{compression}.h5"
        tracemalloc.start()
        try:
            write_shard(p, model="m", dataset="d", shard_index=0, n_shards=1, plan=PLAN, plan_digest="d",
                        layers=["a"], example_indices=np.arange(512), minibatch_ids=np.zeros(512, int),
                        arrays=arrays, provenance={}, compression=compression)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        if compression is None:
            # 2 MB of copies (the strided view made contiguous and the big-endian array, which HDF5
            # writes) and the O_DIRECT writers' chunk buffers; a shard image in memory would be all
            # 11.6 MB
            assert peak < total / 4 + fileio._DIRECT_WRITERS * fileio._DIRECT_CHUNK, (peak, total)
        with h5py.File(p, "r") as f:
            assert int(f.attrs["complete"]) == 1
            for k, a in arrays.items():
                got = f[k][()]
                assert got.dtype == a.dtype and got.shape == a.shape, k
                np.testing.assert_array_equal(got, a)
        assert p.stat().st_size < total + (1 << 20) or compression
    assert not list(tmp_path.glob("*.tmp*"))


def test_write_segments_gives_the_same_bytes_with_and_without_direct_io(tmp_path, monkeypatch):
    """write_segments lays its segments down in order (a later one over an earlier one), zeros in the
    gaps, cut at the size: byte for byte what a reference built in memory holds, whether the file goes
    through O_DIRECT's aligned chunks (sizes around the chunk and alignment edges, a segment across
    chunks, one past the end) or, where the filesystem refuses O_DIRECT, through plain pwrite calls."""
    import errno
    import os

    from seelike import fileio

    rng = np.random.default_rng(5)
    chunk = fileio._DIRECT_CHUNK

    def case(size):
        segs = [(0, rng.integers(0, 256, 700, dtype=np.uint8).tobytes())]           # a "superblock"
        big = rng.normal(size=(size // 3) // 8)                                      # an array, across chunks
        segs.append((5000, big))
        segs.append((100, b"\x07" * 300))                                            # over the first one
        segs.append((5000 + big.nbytes + 4096, rng.integers(0, 256, 9000, dtype=np.uint8)))  # after a gap
        segs.append((size - 10, b"\xff" * 50))                                       # past the end: cut
        ref = bytearray(size)
        for off, d in segs:
            b = memoryview(d).cast("B").tobytes()[:max(0, size - off)]
            ref[off:off + len(b)] = b
        return segs, bytes(ref)

    direct_ok = True
    probe = tmp_path / "probe"
    probe.touch()
    try:
        os.close(os.open(probe, os.O_WRONLY | getattr(os, "O_DIRECT", 0)))
    except OSError as e:
        assert e.errno == errno.EINVAL
        direct_ok = False
    used = []
    real = fileio._write_direct
    monkeypatch.setattr(fileio, "_write_direct", lambda fd, segs, size: (used.append(size), real(fd, segs, size)))
    sizes = [fileio._DIRECT_MIN - 1, fileio._DIRECT_MIN, chunk, chunk + 1, 2 * chunk + 4095, 3 * chunk + 12345]

    def write_every_size(prefix):
        for size in sizes:
            segs, ref = case(size)
            p = tmp_path / f"{prefix}{size}.bin"
            p.touch()
            fileio.write_segments(p, segs, size)
            assert p.read_bytes() == ref, size

    write_every_size("direct")
    if direct_ok and getattr(os, "O_DIRECT", 0):
        assert used == sizes[1:]           # every file of 1 MiB or more went through O_DIRECT

    # a filesystem that refuses O_DIRECT: the same bytes through pwrite
    real_open = os.open

    def no_direct(path, flags, *a):
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *a)

    monkeypatch.setattr(os, "open", no_direct)
    used.clear()
    write_every_size("fallback")
    assert used == []
