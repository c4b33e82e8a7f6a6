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


def off_heap(a) -> np.ndarray:
    """A copy of array ``a`` in an anonymous memory map of its own, outside malloc's heap (freed when
    the array is, by the kernel). For results a job keeps while later minibatches run."""
    a = np.asarray(a)
    if a.nbytes == 0:
        return a.copy()
    buf = mmap.mmap(-1, a.nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _POPULATE)
    out = np.frombuffer(buf, dtype=a.dtype, count=a.size).reshape(a.shape)
    out[...] = a
    return out
