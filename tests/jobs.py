"""Plain step functions for the cluster tests: the jobs import them by name (tests/ on PYTHONPATH)."""
import time


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def freed_memory_kept_mib() -> float:
    """MiB of a freed 256 MiB buffer still resident in this process (glibc returns an mmap'd block at once)."""
    import numpy as np

    def rss_mib() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2 ** 20

    before = rss_mib()
    a = np.ones(256 * 2 ** 20 // 8)    # touched: resident
    del a
    return rss_mib() - before
