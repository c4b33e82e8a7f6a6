"""A job process keeps freed memory for reuse (seelike.allocator); the waiting side does not."""
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")


def _kept_mib(code: str) -> float:
    out = subprocess.run([sys.executable, "-c", code], cwd=TESTS, check=True, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(TESTS)})
    return float(out.stdout.strip().splitlines()[-1])


def test_step_process_keeps_freed_memory_and_plain_call_does_not():
    from seelike.allocator import retain_freed_memory

    if not retain_freed_memory():
        pytest.skip("no glibc mallopt here")
    # what a local or SLURM job runs: Step.__call__
    in_job = _kept_mib("from seelike.submit import Step; print(Step('jobs:freed_memory_kept_mib', {})())")
    # an inline step (the Snakemake process itself): glibc's defaults stay
    inline = _kept_mib("from seelike.submit import call_target; print(call_target('jobs:freed_memory_kept_mib', {}))")
    assert in_job > 200, f"the job process gave {256 - in_job:.0f} of 256 MiB back: thresholds not raised"
    assert inline < 50, f"an inline call kept {inline:.0f} MiB: the allocator was changed outside a job"


def test_off_heap_copies_into_a_memory_map_of_its_own():
    """Results a job keeps between minibatches live outside malloc's heap: equal values, dtype and shape,
    no memory shared with the source, in an anonymous mmap; empty arrays too."""
    import mmap

    import numpy as np

    from seelike.allocator import off_heap

    rng = np.random.default_rng(0)
    for a in (rng.standard_normal((3, 5, 7)), rng.standard_normal((256, 256)).astype(np.float32),
              np.arange(12, dtype=np.int64)[::2], np.zeros((0, 4), np.float32)):
        b = off_heap(a)
        assert b.dtype == a.dtype and b.shape == a.shape and np.array_equal(a, b)
        assert not np.shares_memory(a, b)
        if a.size:
            base = b
            while isinstance(base, np.ndarray):
                base = base.base
            assert isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap)
            b[(0,) * b.ndim] += 1      # writable, and the source is untouched
            assert not np.array_equal(a, b)


def test_off_heap_rows_append_into_one_map_and_grow_past_the_reservation():
    """Blocks of rows appended one by one read back as their concatenation, whether they fit the
    reservation or not, in one anonymous map; a block of another shape or dtype is refused."""
    import mmap

    import numpy as np

    from seelike.allocator import OffHeapRows

    rng = np.random.default_rng(1)
    for reserved in (1, 3, 4, 100):
        blocks = [rng.standard_normal((k, 5, 5)) for k in (1, 2, 1)]
        rows = OffHeapRows(reserved)
        assert len(rows) == 0 and not rows
        with pytest.raises(ValueError, match="no rows"):
            rows.array()
        want = np.concatenate(blocks)
        for b in blocks:
            rows.append(b)
            b[...] = 0                      # copied in, not referenced
        got = rows.array()
        assert len(rows) == 4 and got.shape == (4, 5, 5) and got.dtype == np.float64 and got.flags.c_contiguous
        assert np.array_equal(got, want)
        base = got
        while isinstance(base, np.ndarray):
            base = base.base
        assert isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap)
    rows = OffHeapRows(2)
    a = rng.standard_normal((2, 3)).astype(np.float32)
    b = rng.standard_normal((5, 3)).astype(np.float32)
    rows.append(a)
    rows.append(b)
    assert np.array_equal(rows.array(), np.concatenate([a, b]))
    with pytest.raises(ValueError, match="shape"):
        rows.append(np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match="dtype"):
        rows.append(np.zeros((1, 3), np.float64))


def test_off_heap_rows_fill_writes_rows_in_place_and_counts_them_once_written():
    """``fill`` hands the writer the next rows' space in the map (reserved, or grown past the reservation
    with the earlier rows kept) and counts them only when it returns: a writer that raises leaves the
    count as it was. Rows of another shape or dtype are refused, as by append."""
    import numpy as np

    from seelike.allocator import OffHeapRows

    rng = np.random.default_rng(2)
    for reserved in (1, 2, 5):
        rows = OffHeapRows(reserved)
        want = rng.standard_normal((4, 3, 3))
        rows.append(want[:1])
        for i in range(1, 4):
            rows.fill((1, 3, 3), np.float64, lambda r, i=i: r.__setitem__(Ellipsis, want[i:i + 1]))
        assert len(rows) == 4 and np.array_equal(rows.array(), want)
        with pytest.raises(RuntimeError, match="writer failed"):
            rows.fill((1, 3, 3), np.float64, lambda r: (_ for _ in ()).throw(RuntimeError("writer failed")))
        assert len(rows) == 4 and np.array_equal(rows.array(), want)
        with pytest.raises(ValueError, match="shape"):
            rows.fill((1, 3, 4), np.float64, lambda r: None)
        with pytest.raises(ValueError, match="dtype"):
            rows.fill((1, 3, 3), np.float32, lambda r: None)
    first = OffHeapRows(3)
    first.fill((2, 2), np.int64, lambda r: r.__setitem__(Ellipsis, [[1, 2], [3, 4]]))
    assert first.array().tolist() == [[1, 2], [3, 4]]
