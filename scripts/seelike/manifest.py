"""The extraction manifest: the list of validated shards of one (model, dataset) and their checksums.

The manifest is the only output Snakemake tracks for an extraction; shard files live beside it.
A shard already on disk is reused when it validates and was made from the same model card and
checkpoint, plan and extraction settings, so a rerun after a failure redoes only the missing shards.
"""
from __future__ import annotations

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
    kind = infos[0].kind if infos else None
    for p, info in zip(shard_files, infos):
        if info.layers != layers:
            raise ValueError(f"shard '{p}' has layers {info.layers}, shard 0 has {layers}")
        if info.kind != kind:
            raise ValueError(f"shard '{p}' is of kind '{info.kind}', shard 0 of kind '{kind}'")
    shards = [{"file": p.name, "shard_index": info.shard_index, "sha256": digest, "bytes": p.stat().st_size,
               "n_examples": int(len(info.example_indices))}
              for p, info, digest in zip(shard_files, infos, sha256_files(shard_files))]
    doc = {"model": model, "kind": kind, "dataset": dataset, "plan_digest": plan_digest, "plan": plan, "layers": layers,
           "shards": shards, "provenance": provenance}
    write_json_atomic(manifest, doc)
    return doc


def load_manifest(manifest: str | os.PathLike) -> dict:
    from .fileio import read_json

    path = Path(manifest)
    remedy = "run the workflow again with --forcerun on the extraction that writes it"
    doc = read_json(path, "extraction manifest", remedy)
    if not isinstance(doc, dict):
        raise ValueError(f"extraction manifest '{path}' holds a {type(doc).__name__}, not a mapping; {remedy}")
    for key in ("model", "plan", "layers", "shards"):
        if key not in doc:
            raise ValueError(f"extraction manifest '{path}' lacks key '{key}'; {remedy}")
    doc["dir"] = str(path.parent)
    return doc


def shard_digests(manifests: list[dict]) -> dict[Path, str]:
    """sha256 of every shard file the manifests list (those that exist), hashed on all the job's cores."""
    from .fileio import sha256_files

    paths = [Path(m["dir"]) / e["file"] for m in manifests for e in m["shards"]]
    paths = [p for p in dict.fromkeys(paths) if p.is_file()]
    return dict(zip(paths, sha256_files(paths)))


def checked_shard(manifest: dict, entry: dict, expected_plan: dict | None = None, digests: dict | None = None):
    """The one way a step opens a shard: the :class:`~seelike.store.ShardInfo` of a shard of a manifest
    that is exactly what extraction wrote (sha256 against the manifest) and still valid (structure,
    layers, shard index, plan: the manifest's own unless ``expected_plan`` is given).

    ``digests``: the shards' sha256 already computed (:func:`shard_digests`), else hashed here.
    A shard that fails is removed together with its extraction's manifest, so the next run of the
    workflow re-extracts it (only it: the other shards validate and are reused)."""
    from .fileio import sha256_file
    from .store import ShardError, validate_shard

    path = Path(manifest["dir"]) / entry["file"]
    try:
        if not path.is_file():
            raise ShardError(f"shard '{path}' listed in the extraction manifest is missing")
        digest = (digests or {}).get(path) or sha256_file(path)
        if digest != entry["sha256"]:
            raise ShardError(f"shard '{path}' changed since extraction: sha256 {digest[:16]}..., the manifest "
                             f"recorded {entry['sha256'][:16]}... (bit flip or overwrite)")
        # The manifest records a shard's sha256 only after validating its values, so matching bytes are
        # validated bytes: only the structure and plan are checked again, not every value.
        info = validate_shard(path, expected_plan=expected_plan or manifest["plan"], expected_layers=manifest["layers"],
                              expected_shard=entry["shard_index"], check_values=False)
    except ShardError as e:
        raise discard_shard(manifest, path, str(e)) from None
    return info


def discard_shard(manifest: dict, path: Path, problem: str):
    """Remove a bad shard and its extraction's manifest, so that the next run re-extracts it (only it:
    the other shards validate and are reused); returns the ShardError to raise."""
    from .store import ShardError

    manifest_path = Path(manifest["dir"]) / "manifest.json"
    Path(path).unlink(missing_ok=True)
    manifest_path.unlink(missing_ok=True)
    return ShardError(f"{problem}; removed it and '{manifest_path}': run the workflow again to re-extract it")


def checked_shards(manifest: dict, expected_plan: dict | None = None) -> list:
    """Every shard of a manifest through :func:`checked_shard` (hashed on all the job's cores first)."""
    digests = shard_digests([manifest])
    return [checked_shard(manifest, entry, expected_plan, digests) for entry in manifest["shards"]]
