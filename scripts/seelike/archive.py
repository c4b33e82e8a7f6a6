"""One archive of a finished run that a researcher can cite and check years later.

The archive (a .tar.gz) holds the figures, tables (the findings among them), HTML report, config, plans, model cards and
extraction manifests, plus MANIFEST.json: the sha256 and size of every file in it, the run's
provenance, and the large files (HDF5 shards, checkpoints) either included or referenced by
checksum (`archive.include_large`). `verify` checks an archive (or its extracted folder) against
its manifest and names every file that does not match; `redraw` rebuilds every figure from the
archived tables.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

from . import paths
from .manifest import SHARD_NAME
from .paths import RESULTS
from .provenance import SIDECAR_SUFFIX, read_sidecar, sidecar_path

MANIFEST = "MANIFEST.json"
#: the tables (each a pattern of seelike.paths); a run archives those its figures were drawn from
TABLE_PATTERNS = (paths.CKA_TABLE, paths.TABLES["dataset"], paths.TABLES["checkpoint"], paths.TABLES["experiment"])
#: the small files of a run: figures, tables (the findings among them), plans, cards, metrics, manifests
SMALL = (paths.FIGURE, *TABLE_PATTERNS, paths.TABLES["summary"], paths.PLAN, paths.CARD, paths.METRICS,
         paths.MANIFEST, paths.VISION_MANIFEST)
#: the large ones, included or referenced by checksum (archive.include_large)
LARGE = (f"{paths.EXTRACT_DIR}/{SHARD_NAME}", f"{paths.VISION_DIR}/{SHARD_NAME}", paths.WEIGHTS)
SMALL_PATTERNS = tuple(g for p in SMALL for g in (paths.as_glob(p), paths.as_glob(p) + SIDECAR_SUFFIX))
LARGE_PATTERNS = tuple(paths.as_glob(p) for p in LARGE)


def _collect(results: Path, patterns) -> list[Path]:
    files = set()
    for pat in patterns:
        files.update(p for p in results.glob(pat) if p.is_file() and ".tmp" not in p.name)
    return sorted(files)


def _of_this_run(files: list[Path], results: Path, config: dict, figures: list[str]) -> list[Path]:
    """The files of the run this config describes: its figures (``figures``, paths as the workflow
    names them, ``results/...``) with the tables their provenance names, and the plans, cards and
    extractions of its datasets and models -- not what earlier configs left in results/."""
    wanted = {str(Path(f).relative_to(RESULTS)) for f in figures}
    drawn_from = set()
    for rel in wanted:
        if sidecar_path(results / rel).is_file():
            drawn_from.update(str(Path(t).relative_to(RESULTS)) for t in read_sidecar(results / rel)["inputs"]
                              if Path(t).parts[:1] == (RESULTS,))
    models, datasets = set(config["models"]), set(config["datasets"])

    def keep(p: Path) -> bool:
        name = str(p.relative_to(results)).removesuffix(SIDECAR_SUFFIX)
        if name in wanted:                  # a target: a figure, or a table no figure draws
            return True
        if paths.match(paths.FIGURE, name) is not None:
            return False
        if any(paths.match(t, name) is not None for t in TABLE_PATTERNS):
            return name in drawn_from
        for pattern in (*SMALL, *LARGE):
            w = paths.match(pattern, name)
            if w is not None:
                return ("model" not in w or w["model"] in models) and ("dataset" not in w or w["dataset"] in datasets)
        return True

    return [p for p in files if keep(p)]


def create(results_dir: str | os.PathLike, out: str | os.PathLike, config: dict, include_large: bool,
           report: str | os.PathLike | None = None, figures: list[str] | None = None) -> dict:
    """Write the archive atomically and return its manifest. ``figures``: the run's figure files
    (``specs.final_targets``); given, only they and what they were drawn from are archived."""
    from . import provenance
    from .fileio import atomic_write, sha256_file

    results = Path(results_dir)
    small = _collect(results, SMALL_PATTERNS)
    large = _collect(results, LARGE_PATTERNS)
    if figures is not None:
        small, large = _of_this_run(small, results, config, figures), _of_this_run(large, results, config, figures)
    members = small + (large if include_large else [])
    if report is not None and Path(report).is_file() and Path(report) not in members:
        members.append(Path(report))
    root = Path(out).name.split(".tar")[0]

    def arcname(p: Path) -> str:
        try:
            return f"{root}/{RESULTS}/{p.relative_to(results)}"
        except ValueError:
            return f"{root}/{RESULTS}/{p.name}"

    entries = {arcname(p): {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in members}
    config_blob = json.dumps(config, indent=2, sort_keys=True).encode()
    entries[f"{root}/config.json"] = {"sha256": _sha256_bytes(config_blob), "bytes": len(config_blob)}
    referenced = {} if include_large else {
        str(p.relative_to(results)): {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in large}
    manifest = {"format": "seelike-archive", "version": 1, "root": root, "files": entries,
                "referenced": referenced, "include_large": include_large,
                "provenance": provenance.collect({"run_name": config.get("run_name")}),
                "config_hash": provenance.digest(config)}
    blob = json.dumps(manifest, indent=2, sort_keys=True).encode()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as tmp:
        with tarfile.open(tmp, "w:gz") as tar:
            _add_bytes(tar, f"{root}/{MANIFEST}", blob)
            _add_bytes(tar, f"{root}/config.json", config_blob)
            for p in members:
                tar.add(p, arcname=arcname(p), recursive=False)
    return manifest


def _sha256_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def verify(path: str | os.PathLike) -> list[str]:
    """Problems found, one line per file that does not match (empty list: the archive is intact)."""
    path = Path(path)
    if path.is_dir():
        return _verify_dir(path)
    problems = []
    try:
        with tarfile.open(path, "r:gz") as tar:
            names = [m for m in tar.getmembers() if m.isfile()]
            manifest_member = next((m for m in names if m.name.endswith("/" + MANIFEST)), None)
            if manifest_member is None:
                return [f"{path}: no {MANIFEST} in the archive"]
            manifest = json.load(tar.extractfile(manifest_member))
            seen = set()
            for m in names:
                if m.name == manifest_member.name:
                    continue
                seen.add(m.name)
                want = manifest["files"].get(m.name)
                if want is None:
                    problems.append(f"{m.name}: not listed in {MANIFEST}")
                    continue
                digest = _sha256_bytes(tar.extractfile(m).read())
                if digest != want["sha256"] or m.size != want["bytes"]:
                    problems.append(f"{m.name}: sha256 {digest[:12]}..., {m.size} bytes; manifest says "
                                    f"{want['sha256'][:12]}..., {want['bytes']} bytes")
            for name in sorted(set(manifest["files"]) - seen):
                problems.append(f"{name}: listed in {MANIFEST} but missing from the archive")
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        problems.append(f"{path}: unreadable archive ({e})")
    return problems


def _verify_dir(folder: Path) -> list[str]:
    from .fileio import read_json, sha256_file

    mf = folder / MANIFEST
    if not mf.is_file():
        return [f"{folder}: no {MANIFEST}"]
    try:
        manifest = read_json(mf, "archive manifest")
        files, root = manifest["files"], manifest["root"]
        if not isinstance(files, dict):
            raise ValueError(f"archive manifest '{mf}': 'files' is not a mapping")
    except (ValueError, KeyError, TypeError) as e:
        return [f"{mf}: unreadable manifest ({e})"]
    problems = []
    listed = set()
    for name, want in files.items():
        rel = name[len(root) + 1:]
        listed.add(rel)
        p = folder / rel
        if not p.is_file():
            problems.append(f"{name}: missing")
        elif sha256_file(p) != want["sha256"] or p.stat().st_size != want["bytes"]:
            problems.append(f"{name}: contents differ from {MANIFEST}")
    for p in folder.rglob("*"):
        rel = str(p.relative_to(folder))
        if p.is_file() and rel != MANIFEST and rel not in listed:
            problems.append(f"{root}/{rel}: not listed in {MANIFEST}")
    return problems


def redraw(folder: str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """Redraw every figure of an extracted archive from its archived tables into out_dir."""
    import importlib

    folder, out_dir = Path(folder), Path(out_dir)
    results = folder / RESULTS
    drawn, stems = [], set()
    for sidecar in sorted(results.glob(paths.as_glob(paths.FIGURE) + SIDECAR_SUFFIX)):
        result = str(sidecar).removesuffix(SIDECAR_SUFFIX)
        record = read_sidecar(result)
        spec = record.get("figure_spec")
        stem = result.rsplit(".", 1)[0]
        if not spec or stem in stems:
            continue  # one sidecar per figure (any of its formats) is enough: its spec lists every output
        stems.add(stem)
        spec = json.loads(json.dumps(spec))
        # Paths in the spec are relative to the run's working directory: point them into the archive.
        for key in ("tables",):
            if key in spec:
                spec[key] = [str(folder / t) for t in spec[key]]
        spec["outputs"] = [str(out_dir / Path(o).relative_to(RESULTS)) for o in spec["outputs"]]
        module, _, func = spec["draw"].partition(":")
        getattr(importlib.import_module(module), func)(spec)
        drawn += [Path(o) for o in spec["outputs"]]
    return drawn
