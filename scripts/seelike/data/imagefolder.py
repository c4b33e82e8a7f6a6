"""Read an ImageNet-validation-style folder: ``root/<class_dir>/<image files>``.

* Classes are the sub-folders of ``root`` (hidden ones ignored), sorted by name; the
  label is the position in that list. Empty class folders are kept in the list (so labels
  stay aligned with the full sorted class list, e.g. the 1000 ImageNet synsets) and
  reported with a warning.
* Images are found recursively below each class folder by extension (case-insensitive);
  files with other extensions are ignored (counted in ``ignored_files``). Samples are
  sorted by their ``/``-separated path relative to ``root``.
* Every image is converted to RGB: modes with transparency (RGBA, LA, PA, P with a
  transparency entry, RGB/L with a transparency colour) are **alpha-composited on white**;
  CMYK, grayscale (``1``, ``L``), palette and other modes use PIL's ``convert("RGB")``;
  16/32-bit integer grayscale is scaled from the 16-bit range to 8 bits, float grayscale
  from [0, 1] (or clipped to [0, 255] when larger). EXIF orientation is not applied (as in
  the standard ImageNet evaluation pipelines).
* Bad files: a file with an image extension that PIL cannot decode raises
  ``BadImageError`` naming it when it is loaded (``on_bad_file="error"``, the default).
  With ``on_bad_file="skip"`` every file is fully decoded once when the dataset is built;
  undecodable ones are dropped, listed in ``dataset.skipped`` as ``(relpath, reason)`` and
  logged as a warning. ``known_bad`` (the relpaths an earlier check found unreadable, e.g. a
  plan's ``excluded``) skips exactly those files without decoding the others: what every job
  of a plan does instead of decoding the whole folder again.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable

import numpy as np
import pandas as pd
import torch
import torch.utils.data
from PIL import Image

log = logging.getLogger(__name__)

__all__ = [
    "IMG_EXTENSIONS",
    "BadImageError",
    "ImageFolderDataset",
    "count_image_files",
    "load_rgb",
    "scan_image_folder",
    "timm_data_config",
    "timm_eval_transform",
]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".tif", ".tiff", ".webp", ".gif")
ON_BAD_FILE = ("error", "skip")


class BadImageError(OSError):
    """A file that should be an image cannot be decoded. ``.path`` names it."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"cannot read image file {path}: {reason}")
        self.path = path
        self.reason = reason


# ----------------------------------------------------------------------------- scanning
def _classes(root, extensions) -> tuple[str, tuple, list[str]]:
    """(root, lower-case extensions, class folders) of an image folder: its non-hidden sub-folders, sorted.
    The one place that says what a class folder is, for the reader and for the count by name."""
    root = os.fspath(root)
    if not os.path.exists(root):
        raise FileNotFoundError(f"image folder {root} does not exist")
    if not os.path.isdir(root):
        raise NotADirectoryError(f"image folder {root} is not a directory")
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    with os.scandir(root) as it:
        classes = sorted(e.name for e in it if not e.name.startswith(".") and e.is_dir())
    return root, exts, classes


def _scan(root, extensions):
    root, exts, classes = _classes(root, extensions)
    if not classes:
        raise ValueError(
            f"image folder {root} has no class sub-folders; expected the layout "
            f"{root}/<class_name>/<image files>"
        )
    samples, ignored, empty = [], [], []
    for label, cls in enumerate(classes):
        found = []
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, cls), followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fn in filenames:
                if fn.startswith("."):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, fn), root).replace(os.sep, "/")
                (found if fn.lower().endswith(exts) else ignored).append(rel)
        if not found:
            empty.append(cls)
        samples.extend((rel, label) for rel in found)
    samples.sort()
    ignored.sort()
    if not samples:
        raise ValueError(
            f"image folder {root} contains no image files (extensions {', '.join(exts)}) "
            f"in its {len(classes)} class folder(s)"
        )
    if empty:
        log.warning("image folder %s: %d empty class folder(s): %s", root, len(empty), ", ".join(empty[:20]))
    if ignored:
        log.info("image folder %s: ignored %d file(s) without an image extension, e.g. %s", root, len(ignored), ignored[:5])
    return classes, samples, ignored, empty


def scan_image_folder(root, extensions: Iterable[str] = IMG_EXTENSIONS) -> tuple[list[str], list[tuple[str, int]]]:
    """Return ``(classes, samples)``: sorted class-folder names and sorted
    ``(relpath, label)`` pairs (relpath relative to ``root``, ``/``-separated).

    Raises ``FileNotFoundError`` (missing root) or ``ValueError`` (no class folders, no
    images), each naming the folder.
    """
    classes, samples, _, _ = _scan(root, extensions)
    return classes, samples


def count_image_files(root, extensions: Iterable[str] = IMG_EXTENSIONS) -> dict[str, int]:
    """``{class folder: number of image files}`` of the folder ``_scan`` would read, in class order,
    by file name only: the same classes (non-hidden sub-folders, sorted), the same files (found
    recursively, hidden files and folders left out, image extensions case-insensitive), nothing
    opened or decoded, no list of paths built. ``{}`` when ``root`` has no class folders. Cheap
    enough for the DAG build: directory listings only.
    With ``on_bad_file="skip"`` unreadable files are dropped later: the count is an upper bound.
    Raises ``FileNotFoundError`` / ``NotADirectoryError`` like ``_scan``."""
    root, exts, classes = _classes(root, extensions)

    def count(folder: str) -> int:
        n = 0
        try:
            it = os.scandir(folder)
        except OSError:                 # os.walk in _scan skips a folder it cannot list
            return 0
        with it:
            for e in it:
                if e.name.startswith("."):
                    continue
                if e.is_dir():          # follows links, like os.walk(followlinks=True) in _scan
                    n += count(e.path)
                elif e.name.lower().endswith(exts):
                    n += 1
        return n

    return {cls: count(os.path.join(root, cls)) for cls in classes}


# ----------------------------------------------------------------------------- decoding
def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        "transparency" in im.info and mode in ("P", "L", "RGB", "1")
    ):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode in ("I", "F") or mode.startswith("I;16"):
        a = np.asarray(im, dtype=np.float64)
        if mode == "F":
            a = a * 255.0 if np.nanmax(a, initial=0.0) <= 1.0 else a
        else:
            a = a / 257.0
        a = np.clip(np.nan_to_num(a), 0, 255).round().astype(np.uint8)
        return Image.fromarray(a).convert("RGB")
    return im.convert("RGB")


def load_rgb(path) -> Image.Image:
    """Decode ``path`` fully and return an RGB PIL image (see module docstring for the
    conversions). Raises ``BadImageError`` naming the path if it cannot be decoded."""
    path = os.fspath(path)
    try:
        with Image.open(path) as im:
            im.load()
            out = _to_rgb(im)
            return im.copy() if out is im else out  # `im` is unusable once closed
    except FileNotFoundError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise BadImageError(path, f"{type(e).__name__}: {e}") from e


# ----------------------------------------------------------------------------- timm
def timm_data_config(model_or_pretrained_cfg) -> dict:
    """Resolve timm's eval data config (input_size, interpolation, mean, std, crop_pct,
    crop_mode) from a model (``nn.Module``), a pretrained config (dict or timm
    ``PretrainedCfg``) or a timm model name (``"vit_base_patch16_224.augreg_in21k"``)."""
    import timm.data
    import timm.models

    obj = model_or_pretrained_cfg
    if isinstance(obj, torch.nn.Module):
        return timm.data.resolve_data_config(model=obj)
    if isinstance(obj, str):
        cfg = timm.models.get_pretrained_cfg(obj)
        if cfg is None:
            raise ValueError(f"timm has no pretrained config for model name {obj!r}")
        obj = cfg
    if hasattr(obj, "to_dict"):
        obj = obj.to_dict()
    if isinstance(obj, dict):
        if not obj:
            raise ValueError("timm_eval_transform: the pretrained config is empty; pass the model or its timm name")
        return timm.data.resolve_data_config(pretrained_cfg=dict(obj))
    raise TypeError(
        f"timm_eval_transform needs a model, a pretrained config or a timm model name, got {type(obj).__name__}"
    )


def timm_eval_transform(model_or_pretrained_cfg) -> Callable:
    """Each model's own eval preprocessing: ``timm.data.create_transform(**cfg,
    is_training=False)`` with ``cfg`` from :func:`timm_data_config`. Takes a PIL image,
    returns a float32 tensor (3, H, W)."""
    import timm.data

    return timm.data.create_transform(**timm_data_config(model_or_pretrained_cfg), is_training=False)


def default_imagefolder_transform() -> Callable:
    """timm's generic ImageNet eval transform: resize to 224 / 0.875 (bilinear), centre
    crop 224, ImageNet mean/std. Used when no transform is given; pass
    ``timm_eval_transform(model)`` to match a model's own preprocessing."""
    import timm.data

    return timm.data.create_transform(224, is_training=False)


# ----------------------------------------------------------------------------- dataset
def _check_file(path: str):
    try:
        load_rgb(path)
        return None
    except (BadImageError, FileNotFoundError) as e:
        return getattr(e, "reason", str(e))


class ImageFolderDataset(torch.utils.data.Dataset):
    """Items ``(image tensor (3, H, W) float32, label int, index int)``; ``index`` is the
    position in ``samples`` (after skipping bad files).

    Attributes: ``root``, ``classes``, ``class_to_idx``, ``samples`` (``(relpath, label)``),
    ``skipped`` (``(relpath, reason)`` for ``on_bad_file="skip"``), ``empty_classes``,
    ``ignored_files`` (files without an image extension).
    """

    def __init__(
        self,
        root,
        transform: Callable | None = None,
        extensions: Iterable[str] = IMG_EXTENSIONS,
        on_bad_file: str = "error",
        num_check_workers: int | None = None,
        known_bad: Iterable[str] | None = None,
    ):
        if on_bad_file not in ON_BAD_FILE:
            raise ValueError(f"on_bad_file must be one of {ON_BAD_FILE}, got {on_bad_file!r}")
        if known_bad and on_bad_file != "skip":
            raise ValueError(f"image folder {root}: files listed as unreadable ({len(list(known_bad))}) but "
                             f"on_bad_file is {on_bad_file!r}, not 'skip'")
        self.root = os.fspath(root)
        self.on_bad_file = on_bad_file
        self.classes, samples, self.ignored_files, self.empty_classes = _scan(self.root, extensions)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.skipped: list[tuple[str, str]] = []
        if self.ignored_files:
            # A stray file in a class folder is a bad input like a corrupt image: named, then skipped or fatal.
            shown = ", ".join(os.path.join(self.root, r) for r in self.ignored_files[:5])
            if on_bad_file == "error":
                raise ValueError(f"image folder {self.root}: {len(self.ignored_files)} file(s) are not images "
                                 f"(by extension): {shown}; remove them or set on_bad_file: skip")
            self.skipped += [(r, "not an image file (extension)") for r in self.ignored_files]
            log.warning("image folder %s: skipped %d non-image file(s): %s", self.root, len(self.ignored_files), shown)
        if on_bad_file == "skip" and known_bad is not None:
            bad = set(known_bad) - set(self.ignored_files)
            reason = "listed as unreadable by an earlier check"
            self.skipped += [(rel, reason) for rel, _ in samples if rel in bad]
            samples = [(rel, label) for rel, label in samples if rel not in bad]
        elif on_bad_file == "skip":
            workers = num_check_workers or min(8, os.cpu_count() or 1)
            paths = [os.path.join(self.root, rel) for rel, _ in samples]
            with ThreadPoolExecutor(workers) as ex:
                reasons = list(ex.map(_check_file, paths, chunksize=64))
            kept = []
            for (rel, label), reason in zip(samples, reasons):
                (kept.append((rel, label)) if reason is None else self.skipped.append((rel, reason)))
            if self.skipped:
                log.warning(
                    "image folder %s: skipped %d unreadable file(s): %s",
                    self.root,
                    len(self.skipped),
                    "; ".join(f"{r} ({why})" for r, why in self.skipped[:20]),
                )
            if not kept:
                raise ValueError(f"image folder {self.root}: all {len(samples)} image files are unreadable")
            samples = kept
        self.samples: list[tuple[str, int]] = samples
        self.transform = transform if transform is not None else default_imagefolder_transform()

    def __len__(self) -> int:
        return len(self.samples)

    def path(self, i: int) -> str:
        return os.path.join(self.root, self.samples[i][0])

    def load(self, i: int) -> Image.Image:
        """The RGB PIL image of item ``i`` (no transform)."""
        return load_rgb(self.path(i))

    def __getitem__(self, i):
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for image folder {self.root} of size {len(self)}")
        img = self.load(i)
        return self.transform(img), int(self.samples[i][1]), i

    def meta(self) -> pd.DataFrame:
        """``index``, ``relpath``, ``label``, ``class_name`` per item."""
        return pd.DataFrame(
            {
                "index": np.arange(len(self), dtype=np.int64),
                "relpath": [r for r, _ in self.samples],
                "label": np.array([l for _, l in self.samples], dtype=np.int64),
                "class_name": [self.classes[l] for _, l in self.samples],
            }
        )
