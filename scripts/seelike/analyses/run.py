"""Step entry points of the vision analyses: compute a table, draw a figure."""
from __future__ import annotations

import importlib


def _resolve(target: str):
    module, _, func = target.partition(":")
    return getattr(importlib.import_module(module), func)


def compute(spec: dict):
    """Compute the table(s) of `spec["analysis"]` (runs in the submitted job)."""
    from . import TABLES

    if spec["analysis"] not in TABLES:
        raise ValueError(f"unknown vision analysis '{spec['analysis']}'; known: {', '.join(TABLES)}")
    return _resolve(TABLES[spec["analysis"]])(spec)


def draw(spec: dict):
    """Draw figure `spec["figure"]` from its tables (light: runs in the rule's process)."""
    from . import FIGURES

    if spec["figure"] not in FIGURES:
        raise ValueError(f"unknown vision figure '{spec['figure']}'; known: {', '.join(FIGURES)}")
    return _resolve(FIGURES[spec["figure"]])(spec)
