"""Shared by the analyses' table functions: reading shard reductions, writing tables (no drawing)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


class MissingReduction(ValueError):
    """A shard lacks what an analysis needs (extraction ran without the analysis' taps)."""


def shard_paths(manifest: dict) -> list[Path]:
    """The manifest's shards, each opened the one way every step opens a shard
    (:func:`seelike.manifest.checked_shard`: sha256 against the manifest, structure, plan); a bad shard
    is removed with its manifest and named in the error."""
    from ..manifest import checked_shards

    return [info.path for info in checked_shards(manifest)]


def read_group(path, group: str, what: str = "") -> dict:
    """Every dataset under `group` of a shard: {relative path: array}; MissingReduction if absent."""
    import h5py

    with h5py.File(path, "r") as f:
        if group not in f:
            raise MissingReduction(f"shard '{path}' has no '{group}'" + (f" ({what})" if what else "") +
                                   ": it was extracted without this analysis' taps; rerun the extraction")
        out = {}

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = obj[()]
        f[group].visititems(visit)
    for k, v in out.items():
        if isinstance(v, np.ndarray) and v.dtype.kind == "f" and not np.isfinite(v).all():
            raise ValueError(f"shard '{path}': non-finite values in '{group}/{k}'")
    return out


def by_unit(arrays: dict) -> dict:
    """{'block0/sum': a, 'block0/index': 0, ...} -> {'block0': {'sum': a, 'index': 0}} in `index` order."""
    units: dict = {}
    for key, v in arrays.items():
        unit, _, stat = key.rpartition("/")
        units.setdefault(unit, {})[stat] = v
    return dict(sorted(units.items(), key=lambda kv: int(kv[1].get("index", 0))))


def read_table(path, columns=(), **read_csv):
    """A table another step wrote, checked before use: present, parseable, not empty, with `columns`.
    Each failure names the file and the next step. ``read_csv``: pandas.read_csv's options (e.g.
    ``keep_default_na=False`` for a table whose text cells may read "NA")."""
    import pandas as pd

    path = Path(path)
    fix = f"rerun the step that writes it (delete it and run the workflow again, or `snakemake --forcerun {path}`)"
    if not path.is_file():
        raise FileNotFoundError(f"table '{path}' is missing: {fix}")
    try:
        table = pd.read_csv(path, **read_csv)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"table '{path}' cannot be read as CSV ({e}): {fix}") from e
    missing = [c for c in columns if c not in table.columns]
    if table.empty or missing:
        what = "is empty" if table.empty else f"lacks the column(s) {', '.join(missing)}"
        raise ValueError(f"table '{path}' {what}: {fix}")
    return table


def write_table(table, out, spec: dict, inputs=()) -> str:
    """Tidy CSV, written atomically, with its provenance sidecar."""
    from .. import provenance
    from ..fileio import atomic_write

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.8g")
    provenance.write_sidecar(out, provenance.collect(spec.get("provenance_config"), inputs=[str(i) for i in inputs]))
    return str(out)


def checkpoint_model(spec: dict):
    """(card, model on the CPU) of spec["card"], for the tables computed from the weights alone."""
    from ..models.build import build_model
    from ..models.card import ModelCard

    card = ModelCard.load(spec["card"])
    return card, build_model(card, Path(spec["card"]).parent, device="cpu")


def experiment_section(cfg: dict, name: str) -> dict:
    """experiments.<name> of the config ({} when absent)."""
    return (cfg.get("experiments") or {}).get(name) or {}


def sweep_members(cfg: dict, base: str) -> list[str]:
    """The models a sweep of model `base` expanded into (config order)."""
    return [n for n, m in cfg["models"].items() if (m.get("sweep_of") or {}).get("model") == base]
