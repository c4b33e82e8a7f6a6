"""Compare two runs' results byte for byte: every CSV table and every model card.

    python scripts/compare_results.py RUN_A/results RUN_B/results

A refactor must leave these identical. Two things are compared apart, since they record the run
rather than its results: a card's `provenance` (code version, host, times) and the wall-clock
`images_per_s` column of a model's metrics.csv. Exits 1 when anything else differs.
"""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pandas as pd

RUN_ONLY_COLUMNS = {"metrics.csv": ["images_per_s"]}


def results_files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*")
                  if p.is_file() and (p.suffix == ".csv" or p.name == "card.json") and "archive" not in p.parts)


def same(a: Path, b: Path) -> bool:
    if a.name == "card.json":
        x, y = json.loads(a.read_text()), json.loads(b.read_text())
        x.pop("provenance", None)
        y.pop("provenance", None)
        return json.dumps(x, sort_keys=True) == json.dumps(y, sort_keys=True)
    if a.name in RUN_ONLY_COLUMNS:
        drop = RUN_ONLY_COLUMNS[a.name]
        x, y = (pd.read_csv(io.BytesIO(p.read_bytes())) for p in (a, b))
        return x.drop(columns=drop, errors="ignore").equals(y.drop(columns=drop, errors="ignore"))
    return a.read_bytes() == b.read_bytes()


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    a, b = Path(args[0]), Path(args[1])
    fa, fb = results_files(a), results_files(b)
    only = sorted(set(fa) ^ set(fb))
    for rel in only:
        print(f"ONLY IN {'A' if rel in fa else 'B'}: {rel}")
    differ = [rel for rel in sorted(set(fa) & set(fb)) if not same(a / rel, b / rel)]
    for rel in differ:
        print(f"DIFFERS: {rel}")
    print(f"{len(set(fa) & set(fb))} tables and cards compared: {len(differ)} differ, {len(only)} in one run only")
    return 1 if differ or only else 0


if __name__ == "__main__":
    sys.exit(main())
