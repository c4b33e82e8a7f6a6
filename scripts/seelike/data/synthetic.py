"""Procedural, offline, deterministic shape dataset (the demo's stand-in for ImageNet).

Every image shows one filled shape (the class) on a textured random background.

* **Deterministic per image.** Image ``index`` of a spec is drawn from its own random
  stream ``np.random.default_rng([seed, index])``: its pixels do not depend on which other
  indices are rendered, in which order, or in which batch.
* **Class = ``index % n_classes``.** Every split (a contiguous index range) is therefore
  class-balanced to within one image.
* **Colour carries no class information.** Every image draws the same random numbers in
  the same order whatever its class; the class only selects the shape. Object and
  background colours are random (hue, saturation) with opposite brightness ("polarity"),
  so the shape is always visible but its colour says nothing about the class.
* **Scale-free.** Positions, sizes and texture frequencies are drawn relative to the image
  side, so the same index at ``image_size=32`` and ``224`` is the same scene at two
  resolutions (only the per-pixel noise differs).
* **Recorded geometry.** ``cx``, ``cy`` (pixels; pixel ``(row i, column j)`` has its centre
  at ``x = j, y = i``) are the centre of the shape's bounding circle and ``size`` its
  diameter in pixels (35 %-70 % of the image side). Every shape lies inside that circle and
  the circle lies inside the image. For most shapes the centre is inside the shape; for
  ring, crescent, semicircle, L and T it may not be.

Rendering is vectorised numpy over chunks of images; only the random draws loop over
indices. ``render(spec, idx, background="plain", noise=False)`` and ``render_masks`` are
debug/test helpers.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import pandas as pd
import torch
import torch.utils.data

__all__ = [
    "CLASS_NAMES",
    "RENDER_VERSION",
    "SIZE_RANGE",
    "SyntheticSpec",
    "SyntheticDataset",
    "render",
    "render_masks",
    "render_meta",
    "render_labels",
    "split_indices",
    "default_synthetic_transform",
]

#: Bump when the pixels of any (seed, index) change; part of every fingerprint/cache key.
RENDER_VERSION = 1

#: Class names in label order; a spec with ``n_classes = k`` uses the first ``k``.
CLASS_NAMES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "cross",
    "ring",
    "star",
    "diamond",
    "horizontal_bar",
    "vertical_bar",
    "crescent",
    "hexagon",
    "ellipse",
    "semicircle",
    "t_shape",
    "l_shape",
    "arrow",
)

#: Bounding-circle diameter as a fraction of the image side.
SIZE_RANGE = (0.35, 0.70)

_DEFAULT_SPLITS = (("train", 10000), ("test", 2000), ("analysis", 1024))

# Layout of the per-image uniform random vector (fixed order: never reorder, only append,
# and bump RENDER_VERSION when anything changes).
_N_BLOBS = 5
_U_POLARITY = 0
_U_OBJ = slice(1, 4)  # hue, saturation, value
_U_BG_A = slice(4, 7)
_U_BG_B = slice(7, 10)
_U_SIZE = 10
_U_CX = 11
_U_CY = 12
_U_ROT = 13
_U_JITTER = 14
_U_GRATING = slice(15, 19)  # frequency, orientation, phase, weight
_U_BLOB_W = 19
_U_NOISE = 20
_U_BLOBS = slice(21, 21 + 4 * _N_BLOBS)  # per blob: x, y, sigma, amplitude
_N_UNIFORM = 21 + 4 * _N_BLOBS

# Pixels per rendering chunk (bounds temporary memory to a few tens of MB).
_CHUNK_PIXELS = 1 << 20


# ----------------------------------------------------------------------------- spec
@dataclass(frozen=True)
class SyntheticSpec:
    """What fully determines the synthetic dataset.

    ``splits`` is a tuple of ``(name, size)`` pairs sorted by name (a mapping or any
    sequence of pairs is accepted and sorted, so the spec stays frozen and hashable).
    Split ``k`` in name order holds the global indices ``[sum(sizes[:k]), sum(sizes[:k+1]))``.
    The order is canonical, not the order of the config file, because a config reaches
    the workflow's steps as JSON with sorted keys: a layout in mapping order would give a
    notebook other images for the same split than the workflow used. Changing the size of
    a split therefore shifts the images of the splits whose names sort after it.
    """

    n_classes: int = 10
    image_size: int = 32
    seed: int = 0
    splits: tuple = field(default=_DEFAULT_SPLITS)

    def __post_init__(self):
        splits = self.splits
        if isinstance(splits, Mapping):
            splits = tuple(splits.items())
        try:
            splits = tuple((str(k), int(v)) for k, v in splits)
        except (TypeError, ValueError) as e:
            raise ValueError(f"synthetic dataset: splits must map split names to sizes, got {self.splits!r}") from e
        names = [k for k, _ in splits]
        if len(set(names)) != len(names):
            raise ValueError(f"synthetic dataset: duplicate split names in {names}")
        object.__setattr__(self, "splits", tuple(sorted(splits)))
        for k, v in splits:
            if v < 0:
                raise ValueError(f"synthetic dataset: split {k!r} has negative size {v}")
        if not isinstance(self.n_classes, (int, np.integer)) or not 2 <= self.n_classes <= len(CLASS_NAMES):
            raise ValueError(
                f"synthetic dataset: n_classes must be an integer in [2, {len(CLASS_NAMES)}] "
                f"(there are {len(CLASS_NAMES)} shapes), got {self.n_classes!r}"
            )
        if not isinstance(self.image_size, (int, np.integer)) or self.image_size < 8:
            raise ValueError(f"synthetic dataset: image_size must be an integer >= 8, got {self.image_size!r}")
        if not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"synthetic dataset: seed must be a non-negative integer, got {self.seed!r}")
        object.__setattr__(self, "n_classes", int(self.n_classes))
        object.__setattr__(self, "image_size", int(self.image_size))
        object.__setattr__(self, "seed", int(self.seed))

    @classmethod
    def from_config(cls, cfg: Mapping) -> "SyntheticSpec":
        """Build from one ``datasets:`` entry (``kind`` is optional; other keys are errors)."""
        cfg = dict(cfg)
        kind = cfg.pop("kind", "synthetic")
        if kind != "synthetic":
            raise ValueError(f"SyntheticSpec.from_config: kind must be 'synthetic', got {kind!r}")
        allowed = {"n_classes", "image_size", "seed", "splits"}
        unknown = sorted(set(cfg) - allowed)
        if unknown:
            raise ValueError(
                f"synthetic dataset: unknown key(s) {unknown}; allowed: {sorted(allowed | {'kind'})}"
            )
        return cls(**cfg)

    def to_config(self) -> dict:
        return {
            "kind": "synthetic",
            "n_classes": self.n_classes,
            "image_size": self.image_size,
            "seed": self.seed,
            "splits": dict(self.splits),
        }

    @property
    def split_sizes(self) -> dict:
        return dict(self.splits)

    @property
    def class_names(self) -> tuple[str, ...]:
        return CLASS_NAMES[: self.n_classes]

    def split_range(self, split: str) -> tuple[int, int]:
        start = 0
        for name, size in self.splits:
            if name == split:
                return start, start + size
            start += size
        raise ValueError(f"synthetic dataset has no split {split!r}; splits: {[k for k, _ in self.splits]}")

    def fingerprint(self) -> str:
        """sha256 of the canonical config plus ``RENDER_VERSION``."""
        return _sha({"render_version": RENDER_VERSION, **self.to_config()})

    def render_key(self, split: str) -> str:
        """sha256 of exactly what determines a split's pixels (used as a cache key)."""
        start, stop = self.split_range(split)
        return _sha(
            {
                "render_version": RENDER_VERSION,
                "n_classes": self.n_classes,
                "image_size": self.image_size,
                "seed": self.seed,
                "start": start,
                "stop": stop,
            }
        )


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def split_indices(spec: SyntheticSpec, split: str) -> np.ndarray:
    """Global render indices of ``split`` (int64, contiguous, disjoint from other splits)."""
    start, stop = spec.split_range(split)
    return np.arange(start, stop, dtype=np.int64)


# ----------------------------------------------------------------------------- drawing
def _as_indices(indices) -> np.ndarray:
    idx = np.asarray(indices)
    if idx.ndim == 0:
        idx = idx[None]
    if idx.ndim != 1:
        raise ValueError(f"indices must be one-dimensional, got shape {idx.shape}")
    if idx.size and not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"indices must be integers, got dtype {idx.dtype}")
    idx = idx.astype(np.int64, copy=False)
    if idx.size and idx.min() < 0:
        raise ValueError(f"indices must be non-negative, got {int(idx.min())}")
    return idx


def _draw(spec: SyntheticSpec, idx: np.ndarray, with_noise: bool):
    """Per-image random draws: uniforms (N, _N_UNIFORM) and optional noise (N, H, W, 3)."""
    n, s = len(idx), spec.image_size
    u = np.empty((n, _N_UNIFORM))
    noise = np.empty((n, s, s, 3), np.float32) if with_noise else None
    for k, i in enumerate(idx.tolist()):
        rng = np.random.default_rng([spec.seed, i])
        u[k] = rng.random(_N_UNIFORM)
        if with_noise:
            rng.standard_normal(dtype=np.float32, out=noise[k])  # always drawn last
    return u, noise


def render_labels(spec: SyntheticSpec, indices) -> np.ndarray:
    """Labels (int64) of the given render indices, without drawing anything: the class of
    an image depends on its index alone (classes cycle), so reading a split's labels costs
    nothing next to ``render_meta``, which draws every image's random vector."""
    return _as_indices(indices) % spec.n_classes


def _params(spec: SyntheticSpec, idx: np.ndarray, u: np.ndarray) -> dict:
    s = spec.image_size
    labels = render_labels(spec, idx)
    size_frac = SIZE_RANGE[0] + (SIZE_RANGE[1] - SIZE_RANGE[0]) * u[:, _U_SIZE]
    half = size_frac / 2
    cx_frac = half + (1 - 2 * half) * u[:, _U_CX]
    cy_frac = half + (1 - 2 * half) * u[:, _U_CY]
    # pixel-centre convention: pixel j spans [j - 0.5, j + 0.5]
    cx = cx_frac * s - 0.5
    cy = cy_frac * s - 0.5
    size = size_frac * s
    rot = 2 * np.pi * u[:, _U_ROT]
    jitter = np.deg2rad(10.0) * (2 * u[:, _U_JITTER] - 1)
    name = np.asarray(CLASS_NAMES)[labels]
    bars = (name == "horizontal_bar") | (name == "vertical_bar")
    rot = np.where(bars, jitter, rot)  # bars keep their orientation (it is the class)
    return dict(labels=labels, cx=cx, cy=cy, size=size, rot=rot)


def _hsv_to_rgb(h, sat, v):
    """Vectorised HSV -> RGB; inputs (N,), outputs (N, 3) in [0, 1]."""
    i = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    p = v * (1 - sat)
    q = v * (1 - f * sat)
    t = v * (1 - (1 - f) * sat)
    table = np.stack(
        [
            np.stack([v, t, p], -1),
            np.stack([q, v, p], -1),
            np.stack([p, v, t], -1),
            np.stack([p, q, v], -1),
            np.stack([t, p, v], -1),
            np.stack([v, p, q], -1),
        ],
        1,
    )  # (N, 6, 3)
    return table[np.arange(len(h)), i]


def _colours(u: np.ndarray):
    light = u[:, _U_POLARITY] < 0.5  # object light on dark background, or the reverse
    o = u[:, _U_OBJ]
    obj_v = np.where(light, 0.72 + 0.28 * o[:, 2], 0.30 * o[:, 2])
    obj = _hsv_to_rgb(o[:, 0], o[:, 1], obj_v)
    bgs = []
    for sl in (_U_BG_A, _U_BG_B):
        b = u[:, sl]
        bg_v = np.where(light, 0.05 + 0.40 * b[:, 2], 0.58 + 0.40 * b[:, 2])
        bgs.append(_hsv_to_rgb(b[:, 0], b[:, 1], bg_v))
    return obj, bgs[0], bgs[1]


# ----------------------------------------------------------------------------- shapes
# Signed distance (negative inside) in units of the bounding-circle radius; (u, v) are
# rotated, centred, radius-normalised coordinates (u to the right, v downwards). Every
# shape lies inside the unit disk.
def _box(u, v, a, b, cu=0.0, cv=0.0):
    return np.maximum(np.abs(u - cu) - a, np.abs(v - cv) - b)


def _polygon(u, v, n, radius):
    rho = np.hypot(u, v)
    seg = 2 * np.pi / n
    phi = np.mod(np.arctan2(v, u), seg) - seg / 2
    return rho * np.cos(phi) - radius * np.cos(np.pi / n)


def _star(u, v, r_out=0.95, r_in=0.42, n=5):
    rho = np.hypot(u, v)
    seg = 2 * np.pi / n
    phi = np.abs(np.mod(np.arctan2(v, u) + seg / 2, seg) - seg / 2)
    p1 = np.array([r_out, 0.0])
    p2 = np.array([r_in * np.cos(seg / 2), r_in * np.sin(seg / 2)])
    e = p2 - p1
    nrm = np.array([e[1], -e[0]]) / np.hypot(*e)
    if nrm @ p1 < 0:
        nrm = -nrm
    return (rho * np.cos(phi) - p1[0]) * nrm[0] + (rho * np.sin(phi) - p1[1]) * nrm[1]


def _sdf_circle(u, v):
    return np.hypot(u, v) - 0.9


def _sdf_square(u, v):
    return _box(u, v, 0.64, 0.64)


def _sdf_triangle(u, v):
    return _polygon(u, v, 3, 0.95)


def _sdf_cross(u, v):
    return np.minimum(_box(u, v, 0.9, 0.24), _box(u, v, 0.24, 0.9))


def _sdf_ring(u, v):
    return np.abs(np.hypot(u, v) - 0.7) - 0.2


def _sdf_diamond(u, v, a=0.93, b=0.5):
    return (np.abs(u) / a + np.abs(v) / b - 1) * (a * b / np.hypot(a, b))


def _sdf_hbar(u, v):
    return _box(u, v, 0.92, 0.24)


def _sdf_vbar(u, v):
    return _box(u, v, 0.24, 0.92)


def _sdf_crescent(u, v):
    return np.maximum(np.hypot(u, v) - 0.9, 0.72 - np.hypot(u - 0.45, v))


def _sdf_hexagon(u, v):
    return _polygon(u, v, 6, 0.9)


def _sdf_ellipse(u, v, a=0.92, b=0.42):
    return (np.hypot(u / a, v / b) - 1) * b


def _sdf_semicircle(u, v):
    return np.maximum(np.hypot(u, v) - 0.92, -v)


def _sdf_t(u, v):
    return np.minimum(_box(u, v, 0.7, 0.17, cv=-0.52), _box(u, v, 0.18, 0.62, cv=0.17))


def _sdf_l(u, v):
    return np.minimum(_box(u, v, 0.17, 0.7, cu=-0.43), _box(u, v, 0.6, 0.17, cv=0.53))


def _sdf_arrow(u, v):
    shaft = _box(u, v, 0.45, 0.14, cu=-0.4)
    head = np.maximum(0.1 - u, (np.abs(v) * 0.8 + 0.5 * u - 0.45) / np.hypot(0.8, 0.5))
    return np.minimum(shaft, head)


_SDF = {
    "circle": _sdf_circle,
    "square": _sdf_square,
    "triangle": _sdf_triangle,
    "cross": _sdf_cross,
    "ring": _sdf_ring,
    "star": _star,
    "diamond": _sdf_diamond,
    "horizontal_bar": _sdf_hbar,
    "vertical_bar": _sdf_vbar,
    "crescent": _sdf_crescent,
    "hexagon": _sdf_hexagon,
    "ellipse": _sdf_ellipse,
    "semicircle": _sdf_semicircle,
    "t_shape": _sdf_t,
    "l_shape": _sdf_l,
    "arrow": _sdf_arrow,
}
assert tuple(_SDF) == CLASS_NAMES


# ----------------------------------------------------------------------------- rendering
def _render_chunk(spec, idx, plain: bool, noise_on: bool, want_image: bool = True):
    s = spec.image_size
    u, noise = _draw(spec, idx, with_noise=want_image and noise_on)
    p = _params(spec, idx, u)
    n = len(idx)
    coords = np.arange(s, dtype=np.float32)

    # object coverage (anti-aliased: alpha = clip(0.5 - signed distance in pixels))
    alpha = np.empty((n, s, s), np.float32)
    radius = (p["size"] / 2).astype(np.float32)
    for lab in np.unique(p["labels"]):
        m = np.flatnonzero(p["labels"] == lab)
        r = radius[m, None, None]
        dx = (coords[None, None, :] - p["cx"][m, None, None].astype(np.float32)) / r
        dy = (coords[None, :, None] - p["cy"][m, None, None].astype(np.float32)) / r
        c = np.cos(p["rot"][m]).astype(np.float32)[:, None, None]
        sn = np.sin(p["rot"][m]).astype(np.float32)[:, None, None]
        uu = c * dx + sn * dy
        vv = -sn * dx + c * dy
        d = _SDF[CLASS_NAMES[lab]](uu, vv)
        alpha[m] = np.clip(0.5 - d * r, 0.0, 1.0)
    if not want_image:
        return None, alpha, p

    obj, bg_a, bg_b = (x.astype(np.float32) for x in _colours(u))
    if plain:
        img = np.broadcast_to(bg_a[:, None, None, :], (n, s, s, 3)).copy()
    else:
        rel = (coords + 0.5) / s  # in (0, 1)
        g = u[:, _U_GRATING]
        freq = (1.0 + 5.0 * g[:, 0]).astype(np.float32)  # cycles per image side
        theta = (np.pi * g[:, 1]).astype(np.float32)
        phase = (2 * np.pi * g[:, 2]).astype(np.float32)
        w_grating = (1.5 * g[:, 3]).astype(np.float32)
        ax = (2 * np.pi * freq * np.cos(theta))[:, None, None] * rel[None, None, :]
        ay = (2 * np.pi * freq * np.sin(theta))[:, None, None] * rel[None, :, None]
        field = w_grating[:, None, None] * np.sin(ax + ay + phase[:, None, None])
        b = u[:, _U_BLOBS].reshape(n, _N_BLOBS, 4).astype(np.float32)
        sigma = 0.05 + 0.25 * b[..., 2]
        amp = (2 * b[..., 3] - 1) * (2.0 * u[:, _U_BLOB_W, None].astype(np.float32))
        gx = np.exp(-0.5 * ((rel[None, None, :] - b[..., 0, None]) / sigma[..., None]) ** 2)
        gy = np.exp(-0.5 * ((rel[None, None, :] - b[..., 1, None]) / sigma[..., None]) ** 2)
        field += np.einsum("nkh,nkw->nhw", amp[..., None] * gy, gx)
        t = (0.5 + 0.5 * np.tanh(field))[..., None]
        img = bg_a[:, None, None, :] * (1 - t) + bg_b[:, None, None, :] * t
    a = alpha[..., None]
    img = img * (1 - a) + obj[:, None, None, :] * a
    if noise_on:
        sigma_n = (0.01 + 0.04 * u[:, _U_NOISE]).astype(np.float32)
        img += sigma_n[:, None, None, None] * noise
    img = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return img, alpha, p


def _chunks(idx: np.ndarray, image_size: int):
    step = max(1, _CHUNK_PIXELS // (image_size * image_size))
    for start in range(0, len(idx), step):
        yield slice(start, start + step)


def _meta(spec, idx, p) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "index": idx,
            "label": p["labels"].astype(np.int64),
            "class_name": np.asarray(CLASS_NAMES, dtype=object)[p["labels"]],
            "cx": p["cx"],
            "cy": p["cy"],
            "size": p["size"],
            "rotation": np.rad2deg(p["rot"]) % 360.0,
        }
    )


def render(
    spec: SyntheticSpec,
    indices,
    *,
    background: str = "texture",
    noise: bool = True,
) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Render global ``indices``.

    Returns ``images`` uint8 (N, H, W, 3), ``labels`` int64 (N,) and ``meta`` with columns
    ``index`` (the global index), ``label``, ``class_name``, ``cx``, ``cy``, ``size``
    (pixels, see module docstring) and ``rotation`` (degrees). ``background="plain"``
    (uniform background colour) and ``noise=False`` are debug switches.
    """
    if background not in ("texture", "plain"):
        raise ValueError(f"background must be 'texture' or 'plain', got {background!r}")
    idx = _as_indices(indices)
    s = spec.image_size
    images = np.empty((len(idx), s, s, 3), np.uint8)
    metas = []
    for sl in _chunks(idx, s):
        img, _, p = _render_chunk(spec, idx[sl], plain=background == "plain", noise_on=noise)
        images[sl] = img
        metas.append(_meta(spec, idx[sl], p))
    meta = pd.concat(metas, ignore_index=True) if metas else render_meta(spec, idx)
    return images, meta["label"].to_numpy(np.int64, copy=True), meta


def render_masks(spec: SyntheticSpec, indices) -> np.ndarray:
    """Object coverage in [0, 1], float32 (N, H, W) (anti-aliased shape mask)."""
    idx = _as_indices(indices)
    s = spec.image_size
    out = np.empty((len(idx), s, s), np.float32)
    for sl in _chunks(idx, s):
        _, alpha, _ = _render_chunk(spec, idx[sl], plain=True, noise_on=False, want_image=False)
        out[sl] = alpha
    return out


def render_meta(spec: SyntheticSpec, indices) -> pd.DataFrame:
    """``render``'s meta table without rendering pixels (cheap)."""
    idx = _as_indices(indices)
    u, _ = _draw(spec, idx, with_noise=False)
    return _meta(spec, idx, _params(spec, idx, u))


# ----------------------------------------------------------------------------- dataset
def default_synthetic_transform(image: np.ndarray):
    """uint8 (H, W, 3) -> float32 tensor (3, H, W): ``x / 255`` then ``(x - 0.5) / 0.5``
    per channel (mean = std = 0.5, so values lie in [-1, 1])."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    return x.div_(127.5).sub_(1.0)


class SyntheticDataset(torch.utils.data.Dataset):
    """torch-style map dataset over one split.

    Items are ``(image tensor (3, H, W) float32, label int, index int)`` where ``index`` is
    the position within the split (``0 .. len-1``; the plan uses these); the global render
    index is ``split_start + index``. Without ``transform`` the default normalisation is
    applied to the uint8 array directly; a given ``transform`` receives a PIL RGB image
    (so timm eval transforms work unchanged). ``arrays`` (images, labels of the whole
    split, e.g. from ``load_split_arrays``) avoids re-rendering. ``__getitems__`` renders
    a whole batch at once (used by ``torch.utils.data.DataLoader``).
    """

    def __init__(self, spec: SyntheticSpec, split: str, transform=None, arrays=None):
        self.spec = spec
        self.split = split
        self.start, self.stop = spec.split_range(split)
        self.transform = transform
        self.classes = list(spec.class_names)
        if arrays is not None:
            images, labels = arrays
            if len(images) != len(self) or len(labels) != len(self):
                raise ValueError(
                    f"arrays hold {len(images)} images / {len(labels)} labels, split {split!r} has {len(self)}"
                )
        self.arrays = arrays

    def __len__(self) -> int:
        return self.stop - self.start

    def _check(self, i: int) -> int:
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for split {self.split!r} of size {len(self)}")
        return i

    def _to_item(self, image: np.ndarray, label: int, i: int):
        if self.transform is None:
            x = default_synthetic_transform(image)
        else:
            from PIL import Image

            x = self.transform(Image.fromarray(np.ascontiguousarray(image)))
        return x, int(label), int(i)

    def __getitem__(self, i):
        return self.__getitems__([i])[0]

    def __getitems__(self, indices):
        pos = [self._check(i) for i in indices]
        if self.arrays is not None:
            images = self.arrays[0][pos]
            labels = self.arrays[1][pos]
        else:
            images, labels, _ = render(self.spec, np.asarray(pos, np.int64) + self.start)
        return [self._to_item(images[k], labels[k], pos[k]) for k in range(len(pos))]

    def meta(self) -> pd.DataFrame:
        """Per-item table: ``index`` (split position), ``global_index`` and render meta."""
        m = render_meta(self.spec, np.arange(self.start, self.stop))
        m = m.rename(columns={"index": "global_index"})
        m.insert(0, "index", np.arange(len(self), dtype=np.int64))
        return m
