"""Datasets: one factory for every ``datasets:`` entry of the config.

Two kinds:

``synthetic``
    ``{"kind": "synthetic", "n_classes": 10, "image_size": 32, "seed": 0,
    "splits": {"train": 10000, "test": 2000, "analysis": 1024}}`` - procedural shapes,
    rendered on the fly (see :mod:`seelike.data.synthetic`). Default transform:
    uint8 -> float in [0, 1] -> normalise with mean = std = 0.5 per channel.
``imagefolder``
    ``{"kind": "imagefolder", "root": "/path/to/val", "on_bad_file": "error"}`` - an
    ImageNet-validation-style folder (see :mod:`seelike.data.imagefolder`). It is a single
    evaluation split: ``split`` may be any of ``IMAGEFOLDER_SPLITS``; ``"train"`` is
    refused so a recipe can never silently train on the evaluation images. A folder in the
    ImageNet training layout is a separate entry with ``"split": "train"``, which only
    training reads (see :mod:`seelike.train_data`). Default
    transform: timm's generic ImageNet eval transform (224 px); pass
    ``timm_eval_transform(model)`` for a model's own preprocessing.

Items of every dataset are ``(image tensor (3, H, W) float32, label int, index int)``
with ``index`` the item's position in the split, which is what example plans refer to.
A given ``transform`` receives a PIL RGB image for both kinds.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import pandas as pd

from ..fileio import record_checksum, sha256_file, verify_checksum
from .imagefolder import (
    BadImageError,
    ImageFolderDataset,
    load_rgb,
    scan_image_folder,
    timm_data_config,
    timm_eval_transform,
)
from .synthetic import (
    CLASS_NAMES,
    SyntheticDataset,
    SyntheticSpec,
    render,
    render_masks,
    render_labels,
    render_meta,
    split_indices,
)

__all__ = [
    "CLASS_NAMES",
    "IMAGEFOLDER_SPLITS",
    "IMAGEFOLDER_TRAIN_SPLIT",
    "BadImageError",
    "ImageFolderDataset",
    "SyntheticDataset",
    "SyntheticSpec",
    "dataset_fingerprint",
    "dataset_listing",
    "dataset_meta",
    "dataset_size",
    "imagefolder_args",
    "load_rgb",
    "load_split_arrays",
    "open_dataset",
    "open_rendered_split",
    "reads_from_memory",
    "render",
    "render_masks",
    "render_labels",
    "render_meta",
    "render_key",
    "rendered_split_name",
    "scan_image_folder",
    "split_indices",
    "timm_data_config",
    "timm_eval_transform",
    "write_rendered_split",
]

#: Split names an evaluation ``imagefolder`` dataset answers to (all mean "the whole folder").
IMAGEFOLDER_SPLITS = ("analysis", "test", "val", "validation")
#: The one split name of a folder marked ``split: train`` (ImageNet training layout), read only by training.
IMAGEFOLDER_TRAIN_SPLIT = "train"
_IMAGEFOLDER_KEYS = {"kind", "root", "on_bad_file", "split"}
CACHE_ENV = "SEELIKE_CACHE"


def _kind(cfg: Mapping) -> str:
    if not isinstance(cfg, Mapping):
        raise TypeError(f"a dataset config must be a mapping, got {type(cfg).__name__}")
    kind = cfg.get("kind")
    if kind not in ("synthetic", "imagefolder"):
        raise ValueError(f"dataset config: 'kind' must be 'synthetic' or 'imagefolder', got {kind!r}")
    return kind


def imagefolder_args(cfg: Mapping, split: str) -> dict:
    """``root`` and ``on_bad_file`` of an imagefolder dataset asked for ``split``. A folder is either an
    evaluation folder (``split: val``, the default: analyses and test accuracy) or a training folder
    (``split: train``: training only), so a recipe never trains on the images it is analysed or tested on."""
    unknown = sorted(set(cfg) - _IMAGEFOLDER_KEYS)
    if unknown:
        raise ValueError(f"imagefolder dataset: unknown key(s) {unknown}; allowed: {sorted(_IMAGEFOLDER_KEYS)}")
    if "root" not in cfg or not cfg["root"]:
        raise ValueError("imagefolder dataset: 'root' (the folder holding <class>/<image> files) is required")
    folder_split = cfg.get("split", "val")
    if folder_split == IMAGEFOLDER_TRAIN_SPLIT:
        if split != IMAGEFOLDER_TRAIN_SPLIT:
            raise ValueError(f"imagefolder dataset {cfg['root']} is a training folder (split: train); asked for "
                             f"split {split!r}: analyses and test accuracy read evaluation folders only")
    elif split not in IMAGEFOLDER_SPLITS:
        raise ValueError(
            f"imagefolder dataset {cfg['root']} has a single evaluation split; asked for split "
            f"{split!r}, which must be one of {IMAGEFOLDER_SPLITS} (to train on a folder, give it its own "
            f"dataset entry with split: train)"
        )
    return {"root": os.path.expanduser(os.fspath(cfg["root"])), "on_bad_file": cfg.get("on_bad_file", "error")}


def open_dataset(cfg: Mapping, split: str, transform: Callable | None = None, *, preload: bool = False, cache_dir=None,
                 rendered=None, plan=None):
    """A ``torch.utils.data.Dataset`` over ``split`` of the dataset described by ``cfg``.

    Synthetic only (ignored for image folders): ``rendered`` is the split's file from
    :func:`write_rendered_split` (read through a memory map: a job reads only its items);
    ``preload=True`` renders the whole split once up front (through :func:`load_split_arrays`,
    cached under ``cache_dir`` / ``SEELIKE_CACHE``); otherwise items are rendered on demand.

    ``plan`` (a :class:`seelike.plan.Plan` made from this dataset): the dataset must still be the
    one the plan was made from (same fingerprint: for an image folder the same files under the
    same names), or ``ValueError`` -- otherwise the plan's indices would silently point at other
    examples. An image folder under ``on_bad_file: skip`` then skips the plan's ``excluded`` files
    instead of decoding every file to find the unreadable ones."""
    if _kind(cfg) == "synthetic":
        spec = SyntheticSpec.from_config(cfg)
        if plan is not None:
            _check_plan_fingerprint(plan, spec.fingerprint(), f"synthetic dataset (seed {spec.seed})",
                                    "its settings or the renderer's version changed since, so the plan's indices "
                                    "would render other images")
        if rendered is not None:
            arrays = open_rendered_split(cfg, split, rendered)
        else:
            arrays = load_split_arrays(cfg, split, cache_dir=cache_dir) if preload else None
        return SyntheticDataset(spec, split, transform=transform, arrays=arrays)
    args = imagefolder_args(cfg, split)
    if plan is None:
        return ImageFolderDataset(transform=transform, **args)
    known_bad = plan.excluded if args["on_bad_file"] == "skip" else None
    ds = ImageFolderDataset(transform=transform, known_bad=known_bad, **args)
    fingerprint = folder_fingerprint(ds.classes, ds.samples, args["on_bad_file"])
    if known_bad is not None and fingerprint != _planned_fingerprint(plan)[1]:
        # A plan from before `excluded` existed lists nothing: find the bad files the slow way.
        ds = ImageFolderDataset(transform=transform, **args)
        fingerprint = folder_fingerprint(ds.classes, ds.samples, args["on_bad_file"])
    _check_plan_fingerprint(plan, fingerprint, f"image folder {args['root']}",
                            "files were added, removed or renamed since, so the plan's indices would point at "
                            "other images")
    return ds


def reads_from_memory(ds) -> bool:
    """Whether an item of ``ds`` (a dataset from :func:`open_dataset`, or a ``torch.utils.data.Subset``
    of one) is a copy out of memory: a synthetic split read from its rendered file (or preloaded) and
    fed without a transform. Decoding a file, rendering a scene or running a transform is work that
    data loader workers can take off the forward; such a copy is not (see seelike.runtime.loader_options)."""
    import torch.utils.data

    while isinstance(ds, torch.utils.data.Subset):
        ds = ds.dataset
    return isinstance(ds, SyntheticDataset) and ds.arrays is not None and ds.transform is None


def _planned_fingerprint(plan) -> tuple[str, str]:
    """(dataset key, fingerprint) of a plan's ``dataset`` string ``"<key>:<fingerprint>"``."""
    key, _, fingerprint = plan.dataset.rpartition(":")
    return key, fingerprint


def _check_plan_fingerprint(plan, fingerprint: str, what: str, why: str) -> None:
    key, planned = _planned_fingerprint(plan)
    if planned != fingerprint:
        raise ValueError(
            f"{what} no longer matches the example plan of dataset '{key}' (fingerprint {planned[:12]} when "
            f"planned, {fingerprint[:12]} now): {why}. Plan again: rerun with --forcerun plan (every model's "
            f"shards are then extracted again)")


def dataset_listing(cfg: Mapping, split: str) -> tuple[int, str, list[str]]:
    """``(size, fingerprint, excluded)`` of ``split`` from one look at the data, for a plan: an image
    folder under ``on_bad_file: skip`` is decoded once (the files it skips are ``excluded``)."""
    if _kind(cfg) == "synthetic":
        return dataset_size(cfg, split), dataset_fingerprint(cfg), []
    args = imagefolder_args(cfg, split)
    if args["on_bad_file"] == "skip":
        ds = ImageFolderDataset(transform=_identity, **args)
        return len(ds), folder_fingerprint(ds.classes, ds.samples, "skip"), [r for r, _ in ds.skipped]
    classes, samples = scan_image_folder(args["root"])
    return len(samples), folder_fingerprint(classes, samples, args["on_bad_file"]), []


def dataset_size(cfg: Mapping, split: str) -> int:
    """Number of items of ``split`` (imagefolder: after skipping bad files when configured)."""
    if _kind(cfg) == "synthetic":
        a, b = SyntheticSpec.from_config(cfg).split_range(split)
        return b - a
    args = imagefolder_args(cfg, split)
    if args["on_bad_file"] == "skip":
        return len(ImageFolderDataset(transform=_identity, **args))
    return len(scan_image_folder(args["root"])[1])


def dataset_meta(cfg: Mapping, split: str) -> pd.DataFrame:
    """Per-item table with ``index`` (split position) and ``label``. Synthetic adds
    ``global_index``, ``class_name``, ``cx``, ``cy``, ``size``, ``rotation``; imagefolder
    adds ``relpath`` and ``class_name``."""
    if _kind(cfg) == "synthetic":
        return SyntheticDataset(SyntheticSpec.from_config(cfg), split).meta()
    return ImageFolderDataset(transform=_identity, **imagefolder_args(cfg, split)).meta()


def dataset_fingerprint(cfg: Mapping) -> str:
    """sha256 hex of what determines the dataset's content, for plan ``dataset`` strings.

    Synthetic: the canonical config plus the renderer version. Imagefolder: the class list,
    the sorted ``(relpath, label)`` list and ``on_bad_file`` (not the root path, so the
    same files mounted elsewhere give the same fingerprint; file contents are not hashed).
    """
    if _kind(cfg) == "synthetic":
        return SyntheticSpec.from_config(cfg).fingerprint()
    args = imagefolder_args(cfg, _any_split(cfg))
    if args["on_bad_file"] == "skip":
        ds = ImageFolderDataset(transform=_identity, **args)
        classes, samples = ds.classes, ds.samples
    else:
        classes, samples = scan_image_folder(args["root"])
    return folder_fingerprint(classes, samples, args["on_bad_file"])


def folder_fingerprint(classes: list, samples: list, on_bad_file: str) -> str:
    """dataset_fingerprint of an image folder already listed (its classes and (relpath, label) samples)."""
    payload = {"kind": "imagefolder", "on_bad_file": on_bad_file, "classes": classes,
               "samples": [list(s) for s in samples]}
    return hashlib.sha256(json.dumps(payload, separators=(",", ":")).encode()).hexdigest()


def _any_split(cfg: Mapping) -> str:
    return IMAGEFOLDER_TRAIN_SPLIT if cfg.get("split") == IMAGEFOLDER_TRAIN_SPLIT else "analysis"


def _identity(x):
    return x


def load_split_arrays(cfg: Mapping, split: str, cache_dir=None, rendered=None) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic only: ``(images uint8 (N, H, W, 3), labels int64 (N,))`` of a whole split,
    in split order, in memory. Read from ``rendered`` (the split's file from
    :func:`write_rendered_split`) when given; otherwise rendered, and cached as
    ``synthetic-<key>.npz`` under ``cache_dir`` (or the ``SEELIKE_CACHE`` environment
    variable; no caching when neither is set). ``<key>`` is :meth:`SyntheticSpec.render_key`,
    so splits with identical pixels share a file. The file is written under a temporary name
    and renamed, so it is never half-written."""
    if _kind(cfg) != "synthetic":
        raise ValueError(
            f"load_split_arrays works for synthetic datasets only (got kind {cfg.get('kind')!r}); "
            f"use open_dataset for image folders"
        )
    if rendered is not None:
        images, labels = open_rendered_split(cfg, split, rendered)
        return np.array(images), labels
    spec = SyntheticSpec.from_config(cfg)
    key = spec.render_key(split)
    cache_dir = cache_dir if cache_dir is not None else os.environ.get(CACHE_ENV) or None
    path = Path(cache_dir) / f"synthetic-{key[:32]}.npz" if cache_dir else None
    if path is not None and path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["key"]) == key:
                    return z["images"], z["labels"]
        except (OSError, ValueError, KeyError):
            pass  # unreadable or foreign cache file: render again and overwrite it
    images, labels, _ = render(spec, split_indices(spec, split))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, images=images, labels=labels, key=np.array(key))
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
    return images, labels


# ----------------------------------------------------------------------------- rendered splits
# The workflow renders each synthetic split it reads once (rule `render`) instead of once per
# training or extraction job: every model of a run reads the same pixels.

def render_key(cfg: Mapping, split: str) -> str:
    """16 hex digits of :meth:`SyntheticSpec.render_key`: exactly what determines the split's pixels, so a
    changed dataset config names another file."""
    return SyntheticSpec.from_config(cfg).render_key(split)[:16]


def rendered_split_name(cfg: Mapping, split: str) -> str:
    """The file name the render rule gives a split (seelike.paths.RENDERED)."""
    from .. import paths

    return Path(paths.fill(paths.RENDERED, dataset="_", split=split, key=render_key(cfg, split))).name


def write_rendered_split(cfg: Mapping, split: str, out, block: int = 2048) -> Path:
    """Render a synthetic split into ``out`` (a .npy of uint8 (N, H, W, 3), split order), a block of
    images at a time, under a temporary name renamed when complete. ``out``'s name must be
    :func:`rendered_split_name`."""
    from tqdm import tqdm

    out = Path(out)
    if out.name != rendered_split_name(cfg, split):
        raise ValueError(f"rendered split '{out}' must be named '{rendered_split_name(cfg, split)}' for this "
                         "dataset config (the name carries the render key)")
    spec = SyntheticSpec.from_config(cfg)
    idx = split_indices(spec, split)
    s = spec.image_size
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(idx), s, s, 3))
        with tqdm(total=len(idx), desc=f"render {split}", unit="img", mininterval=5) as bar:
            for a in range(0, len(idx), block):
                arr[a:a + block] = render(spec, idx[a:a + block])[0]
                bar.update(len(idx[a:a + block]))
        arr.flush()
        del arr
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        record_checksum(out, sha256_file(tmp))   # checked by open_rendered_split at every read
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def open_rendered_split(cfg: Mapping, split: str, path) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` of a file from :func:`write_rendered_split`: images memory-mapped
    read-only, labels from their indices (:func:`render_labels`). Checked before use: the file's name (render
    key), its sha256 against the one recorded when it was written, shape and dtype, and the first and last
    images re-rendered and compared exactly (a renderer that changed).
    Raises ValueError naming the file."""
    path = Path(path)
    spec = SyntheticSpec.from_config(cfg)
    want = rendered_split_name(cfg, split)
    if path.name != want:
        raise ValueError(f"rendered split '{path}' is not this dataset's split '{split}' (expected a file named "
                         f"'{want}'); run the workflow's render rule again")
    if not path.is_file():
        raise ValueError(f"rendered split '{path}' is missing; run the workflow again (its render rule writes it)")
    verify_checksum(path, "rendered split", "delete it and run the workflow again (its render rule rewrites it)")
    try:
        images = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise ValueError(f"rendered split '{path}' is unreadable (truncated or corrupt?): {e}") from None
    idx = split_indices(spec, split)
    shape = (len(idx), spec.image_size, spec.image_size, 3)
    if images.dtype != np.uint8 or images.shape != shape:
        raise ValueError(f"rendered split '{path}' holds {images.dtype} {images.shape}, expected uint8 {shape}")
    if len(idx):
        ends = np.unique([0, len(idx) - 1])
        if not np.array_equal(np.asarray(images[ends]), render(spec, idx[ends])[0]):
            raise ValueError(f"rendered split '{path}' differs from a fresh rendering of its first or last image "
                             "(corrupt, or written by another renderer version); delete it and run the workflow again")
    return images, render_labels(spec, idx)
