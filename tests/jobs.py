"""Plain step functions for the cluster tests: the jobs import them by name (tests/ on PYTHONPATH)."""
import time


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds
