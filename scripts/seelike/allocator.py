"""Keep freed memory in the process for reuse instead of handing it back to the kernel (glibc).

With glibc's defaults, every tensor above the malloc mmap threshold (128 KiB, rising to at most
32 MiB) is a fresh mmap that is unmapped again when freed, and the top of the heap is trimmed when
more than twice that is free. A forward pass allocates and frees its activations once per
minibatch, so every minibatch pays again for zero-filling page faults on the same hundreds of
megabytes, which can cost as much as the forward itself on a CPU (benchmarks/bench_extract.py
measures extraction with this setting; benchmarks/README.md has the latest table). Jobs (extraction, training, CKA) call ``retain_freed_memory()`` once at
start: the process keeps its peak heap until it exits, which is what a batch job's memory request
(`resources.mem_gb`) is sized for anyway.

What a job keeps from minibatch to minibatch (a reducer's Grams, pooled features, tokens) goes off
that heap (:func:`off_heap`): small arrays that stay alive between the forward's large transient
tensors would split the heap's free space, so that the next minibatch's activations no longer fit
in it and the heap grows. ViT-B/16 at b = 256 on the 2-core VM (benchmarks/bench_memory.py, one
fresh process per run): extraction peaked at 5.58, 5.89 and 6.82 GB in three runs with its results
on the heap, at 5.10, 5.72 and 5.88 GB off it; the bare forward alone at 4.61-5.54 GB.

The Snakemake process and inline steps are left alone (their memory is not a job's to keep).
Other C libraries (musl, macOS) have no such switch; the call then does nothing and says so.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import mmap

import numpy as np

# mallopt parameter numbers from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MAX_INT = 2 ** 31 - 1


@functools.lru_cache(maxsize=1)
def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds to their maximum; True when the C library accepted
    both, False where there is no glibc (nothing changed then)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success, 0 when it refuses the value
    return bool(mallopt(_M_MMAP_THRESHOLD, _MAX_INT)) & bool(mallopt(_M_TRIM_THRESHOLD, _MAX_INT))


#: Linux's MAP_POPULATE: the kernel maps every page of a new map in one call, where the copy into
#: it would otherwise take one page fault per page. Copying the full tokens of a ResNet-50 layer at
#: 224 px (32 images, 103 MB) took 0.07-0.25 s into a plain map and 0.06-0.07 s into a populated one
#: on the 2-core VM.
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


def off_heap_empty(shape, dtype) -> np.ndarray:
    """An uninitialised array in an anonymous memory map of its own, outside malloc's heap (freed when
    the array is, by the kernel), its pages mapped up front."""
    shape, dtype = tuple(int(s) for s in shape), np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    if count * dtype.itemsize == 0:
        return np.empty(shape, dtype)
    buf = mmap.mmap(-1, count * dtype.itemsize, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _POPULATE)
    return np.frombuffer(buf, dtype=dtype, count=count).reshape(shape)


def off_heap(a) -> np.ndarray:
    """A copy of array ``a`` in an anonymous memory map of its own, outside malloc's heap (freed when
    the array is, by the kernel). For results a job keeps while later minibatches run."""
    a = np.asarray(a)
    if a.nbytes == 0:
        return a.copy()
    out = off_heap_empty(a.shape, a.dtype)
    out[...] = a
    return out


class OffHeapRows:
    """An array built by appending blocks of rows along its first axis, kept off the heap: what a reducer
    collects over a shard's minibatches (a Gram per minibatch, a block of pooled features per minibatch).

    The rows are copied into one memory map (:func:`off_heap_empty`) reserved for ``rows`` rows on the
    first append, so that an append is one copy and :meth:`array` is a view of the rows appended, not a
    final concatenation; an append beyond the reservation moves the rows to a map of twice the size. A
    map per minibatch instead costs its own ``mmap`` and page faults: 0.23 ms for a 256 x 256 float64
    Gram against 0.04 ms for the copy into a reserved map (2-core AVX2 VM, 2026-12-04, min of 50), about
    1.5% of a ResNet-18 forward at 32 px with its 8 Grams and pooled features.
    """

    def __init__(self, rows: int = 1):
        self.reserved = max(1, int(rows))
        self.rows = 0
        self._buf: np.ndarray | None = None

    def append(self, block) -> None:
        """Copy ``block`` (k, ...) in as the next k rows; every block has the first block's trailing
        shape and dtype."""
        block = np.asarray(block)
        if block.ndim < 1:
            raise ValueError("OffHeapRows.append: expected an array of rows, got a scalar")
        self._room(len(block), block.shape[1:], block.dtype)[...] = block
        self.rows += len(block)

    def fill(self, shape, dtype, write) -> None:
        """Append ``shape[0]`` rows of ``shape[1:]`` and ``dtype`` written in place: ``write(rows)`` gets
        their space in the map (uninitialised) and fills it, and they count as appended once it
        returns. For a result computed straight into its rows (GramReducer's Grams), not copied in."""
        shape = tuple(int(s) for s in shape)
        if len(shape) < 1:
            raise ValueError("OffHeapRows.fill: expected the shape of a block of rows, got ()")
        write(self._room(shape[0], shape[1:], np.dtype(dtype)))
        self.rows += shape[0]

    def _room(self, k: int, trailing: tuple, dtype: np.dtype) -> np.ndarray:
        """The space of the next ``k`` rows (uninitialised), the map reserved or grown to hold them."""
        if self._buf is None:
            self._buf = off_heap_empty((max(self.reserved, k),) + tuple(trailing), dtype)
        elif tuple(trailing) != self._buf.shape[1:] or dtype != self._buf.dtype:
            raise ValueError(f"OffHeapRows: rows of shape {tuple(trailing)} and dtype {dtype} "
                             f"after rows of shape {self._buf.shape[1:]} and dtype {self._buf.dtype}")
        end = self.rows + k
        if end > len(self._buf):
            grown = off_heap_empty((max(2 * len(self._buf), end),) + self._buf.shape[1:], self._buf.dtype)
            grown[:self.rows] = self._buf[:self.rows]
            self._buf = grown
        return self._buf[self.rows:end]

    def __len__(self) -> int:
        return self.rows

    def array(self) -> np.ndarray:
        """The rows appended so far, as one array (a view of the map). ValueError when none were."""
        if self._buf is None:
            raise ValueError("OffHeapRows.array: no rows were appended")
        return self._buf[:self.rows]
