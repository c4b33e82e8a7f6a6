"""The extraction manifest: the list of validated shards of one (model, dataset) and their checksums.

The manifest is the only output Snakemake tracks for an extraction; shard files live beside it.
A shard already on disk is reused when it validates and was made from the same model card and
checkpoint, plan and extraction settings, so a rerun after a failure redoes only the missing shards.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

SHARD_NAME = "shard-{shard:05d}.h5"


def shard_path(out_dir: str | os.PathLike, shard: int) -> Path:
    return Path(out_dir) / SHARD_NAME.format(shard=shard)


def reusable(path: Path, shard: int, plan: dict, config_hash: str, checkpoint_sha256: str, card_sha256: str) -> bool:
    """Shard ``shard`` on disk at ``path`` validates and came from the same inputs and settings: the
    card as well as the checkpoint, since the card alone says which layers are tapped and how images
    are preprocessed."""
    from .store import ShardError, validate_shard

    if not path.is_file():
        return False
    try:
        info = validate_shard(path, expected_plan=plan, expected_shard=shard)
    except ShardError as e:
        print(f"seelike: will redo {path}: {e}", flush=True)
        return False
    prov = info.provenance
    inputs = set(prov.get("inputs", {}).values())
    same = prov.get("config_hash") == config_hash and {checkpoint_sha256, card_sha256} <= inputs
    if not same:
        print(f"seelike: will redo {path}: made from other inputs or settings", flush=True)
    return same


def write_manifest(manifest: str | os.PathLike, *, model: str, dataset: str, plan: dict, plan_digest: str,
                   shard_files: list[Path], provenance: dict) -> dict:
    """Validate every shard (``shard_files[i]`` must hold shard i), then write the manifest with their
    sha256 and sizes."""
    from .fileio import sha256_files, write_json_atomic
    from .store import validate_shard

    shard_files = list(shard_files)
    infos = [validate_shard(p, expected_plan=plan, expected_shard=i) for i, p in enumerate(shard_files)]
    layers = infos[0].layers if infos else None
    for p, info in zip(shard_files, infos):
        if info.layers != layers:
            raise ValueError(f"shard '{p}' has layers {info.layers}, shard 0 has {layers}")
    shards = [{"file": p.name, "shard_index": info.shard_index, "sha256": digest, "bytes": p.stat().st_size,
               "n_examples": int(len(info.example_indices))}
              for p, info, digest in zip(shard_files, infos, sha256_files(shard_files))]
    doc = {"model": model, "dataset": dataset, "plan_digest": plan_digest, "plan": plan, "layers": layers,
           "shards": shards, "provenance": provenance}
    write_json_atomic(manifest, doc)
    return doc


def load_manifest(manifest: str | os.PathLike) -> dict:
    path = Path(manifest)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"extraction manifest '{path}' is unreadable: {e}") from None
    for key in ("model", "plan", "layers", "shards"):
        if key not in doc:
            raise ValueError(f"extraction manifest '{path}' lacks key '{key}'")
    doc["dir"] = str(path.parent)
    return doc
