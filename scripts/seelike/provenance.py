"""What produced a result: config subset and its hash, code version, package versions, host, job.

Collected without importing torch (versions come from package metadata), so the light
submitting side can record provenance too.
"""
from __future__ import annotations

import datetime as _dt
import functools
import importlib.metadata as md
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable

from . import __version__
from .base import digest

PACKAGES = ("torch", "torchvision", "timm", "h5py", "numpy", "submitit", "snakemake", "pandas", "matplotlib")
REPO_ROOT = Path(__file__).resolve().parents[2]


@functools.lru_cache(maxsize=None)
def code_digest(*modules: str) -> str:
    """Digest of the source of these package modules (paths inside seelike/, e.g. "plotting.py",
    "analyses/common.py"). A step's provenance config carries it, so that editing the code that makes
    a result reruns the step."""
    root = Path(__file__).resolve().parent
    texts = [(root / m).read_text() for m in modules]
    return digest(texts[0] if len(texts) == 1 else texts)


@functools.lru_cache(maxsize=1)
def git_state() -> dict:
    """Commit of the checkout the package runs from, and whether it had uncommitted changes."""
    def git(*args):
        return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=10)
    try:
        head = git("rev-parse", "HEAD")
        if head.returncode:
            return {"commit": None, "dirty": None}
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "scripts", "workflow")
        return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}


@functools.lru_cache(maxsize=1)
def package_versions() -> dict:
    out = {}
    for p in PACKAGES:
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = None
    return out


def cuda_version() -> str | None:
    torch = sys.modules.get("torch")  # only if the step already imported it
    if torch is None:
        return None
    return getattr(torch.version, "cuda", None)


def collect(config_subset: Any = None, inputs: Iterable[str | os.PathLike] = (),
            input_digests: dict | None = None) -> dict:
    """Provenance record for one result. `inputs` are hashed unless their digests are given."""
    from .fileio import sha256_file

    digests = dict(input_digests or {})
    for p in inputs:
        digests.setdefault(str(p), sha256_file(p))
    return {
        "seelike_version": __version__,
        "git": git_state(),
        "python": platform.python_version(),
        "packages": package_versions(),
        "cuda": cuda_version(),
        "host": socket.gethostname(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config": config_subset,
        "config_hash": digest(config_subset) if config_subset is not None else None,
        "inputs": digests,
    }


#: What a result file's provenance sidecar adds to its name.
SIDECAR_SUFFIX = ".prov.json"


def sidecar_path(path: str | os.PathLike) -> Path:
    return Path(str(path) + SIDECAR_SUFFIX)


def write_sidecar(path: str | os.PathLike, record: dict) -> Path:
    """Provenance beside a result file that cannot carry it (CSV, PNG, PDF)."""
    from .fileio import write_json_atomic

    out = sidecar_path(path)
    write_json_atomic(out, record)
    return out


#: Keys every record written by :func:`collect` holds.
RECORD_KEYS = ("seelike_version", "git", "python", "packages", "host", "created", "config", "config_hash", "inputs")


class ProvenanceError(ValueError):
    """A provenance sidecar that is missing, unreadable, or not a record :func:`collect` writes."""


def read_sidecar(path: str | os.PathLike) -> dict:
    """The provenance record beside the result file ``path``, checked: a JSON object with every key of
    :data:`RECORD_KEYS`, ``inputs`` a mapping of file to sha256, and ``config_hash`` the digest of
    ``config``. Raises ProvenanceError naming the sidecar and what to do."""
    from .fileio import read_json

    side = sidecar_path(path)
    remedy = f"delete '{path}' and run the workflow again to rewrite both"
    record = read_json(side, "provenance", remedy, ProvenanceError,
                       missing=f"result '{path}' has no provenance: '{side}' is missing")
    if not isinstance(record, dict):
        raise ProvenanceError(f"provenance '{side}' holds a {type(record).__name__}, not a record; {remedy}")
    missing = [k for k in RECORD_KEYS if k not in record]
    if missing:
        raise ProvenanceError(f"provenance '{side}' lacks the key(s) {', '.join(missing)}; {remedy}")
    inputs = record["inputs"]
    if not isinstance(inputs, dict) or not all(isinstance(v, str) for v in inputs.values()):
        raise ProvenanceError(f"provenance '{side}': 'inputs' must map each input file to its sha256; {remedy}")
    if record["config"] is not None and digest(record["config"]) != record["config_hash"]:
        raise ProvenanceError(f"provenance '{side}': config_hash {record['config_hash']!r} is not the digest of its "
                              f"config ({digest(record['config'])!r}): the record was edited or corrupted; {remedy}")
    return record
