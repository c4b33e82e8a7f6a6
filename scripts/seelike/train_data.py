"""Where training batches come from: a rendered synthetic split held in memory, or an image folder
(ImageNet training layout) streamed through worker processes with timm's training transforms.

Both give the same thing to the training loop: the labels of the training set (for stratified
subsets), once bound to the model its `preprocessing` (the timm data config the card records), a
stream of (images, labels) batches for given example indices, the test set's batches, and the
digests of what was trained on for provenance. The batch order is a function of
(seed, epoch) only, so a resumed run sees the same examples in the same order.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np


def normalize_uint8(images: np.ndarray):
    """uint8 (N, H, W, 3) -> float (N, 3, H, W), mean = std = 0.5: the synthetic datasets' preprocessing."""
    import torch

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - 0.5) / 0.5


def array_digest(*arrays) -> str:
    """sha256 of the exact pixels and labels a model trained on (a rendered dataset has no file to hash)."""
    import hashlib

    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def synthetic_preprocessing(size: int) -> dict:
    """timm-style preprocessing of what training on a synthetic split saw (normalize_uint8, full image), so that
    timm_eval_transform(card.pretrained_cfg) feeds any image source to the model the same way."""
    return {"input_size": (3, size, size), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
            "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center"}


class ArraySource:
    """A synthetic dataset's train and test splits rendered once into memory."""

    def __init__(self, spec: dict):
        from .data import load_split_arrays

        r = spec["recipe"]
        rendered = spec.get("rendered") or {}   # the workflow's render rule: each split rendered once
        self.dataset_name = r["dataset"]
        self.x_train, self.labels = load_split_arrays(spec["dataset"], "train", rendered=rendered.get("train"))
        test_cfg = spec.get("test_dataset") or spec["dataset"]
        self.x_test, self.y_test = load_split_arrays(test_cfg, "test", rendered=rendered.get("test"))
        self.input_hw = (int(self.x_train.shape[1]), int(self.x_train.shape[2]))

    def keep(self, positions: np.ndarray) -> None:
        self.x_train, self.labels = self.x_train[positions], self.labels[positions]

    def inputs(self) -> dict:
        return {f"dataset:{self.dataset_name}/train ({len(self.labels)} images as trained on)":
                array_digest(self.x_train, self.labels)}

    def bind(self, model) -> None:
        self.preprocessing = synthetic_preprocessing(self.input_hw[0])

    def batches(self, index_batches, rng, augment: bool, device, length: int = 0) -> Iterator:
        import torch

        for _, idx in index_batches:
            x = normalize_uint8(self.x_train[idx]).to(device)
            y = torch.from_numpy(self.labels[idx]).to(device)
            if augment:
                # Random translation by up to 1/8 of the side: cheap, keeps the object label valid.
                pad = max(1, x.shape[-1] // 8)
                dx, dy = rng.integers(-pad, pad + 1, size=2)
                x = torch.roll(x, shifts=(int(dy), int(dx)), dims=(2, 3))
            yield x, y

    def test_batches(self, batch_size: int, device) -> Iterator:
        import torch

        for s in range(0, len(self.x_test), batch_size):
            yield (normalize_uint8(self.x_test[s:s + batch_size]).to(device),
                   torch.from_numpy(self.y_test[s:s + batch_size]).to(device))


class _IndexBatches:
    """A batch sampler over (step, positions) batches, generated lazily (300 ImageNet epochs are 384M indices).
    Each item is asked for as (position, augmentation seed), the seed a function of (recipe seed, step,
    position): a resumed run draws the same crops and flips whichever worker reads the image."""

    def __init__(self, index_batches, length: int, seed: int):
        self.index_batches, self.length, self.seed = index_batches, length, int(seed)

    def __iter__(self):
        for step, idx in self.index_batches:
            yield [(int(i), (self.seed * 1_000_003 + step) * 10_000_019 + int(i)) for i in idx]

    def __len__(self):
        return self.length


class FolderSource:
    """An image folder with the ImageNet training layout, read by DataLoader workers.

    Training images go through timm's training transform (random resized crop and flip; RandAugment
    when `recipe.auto_augment` names a policy) at the model's input size and normalisation; the test
    folder through the model's evaluation transform. The two folders must list the same classes."""

    def __init__(self, spec: dict):
        from .data import ImageFolderDataset, IMAGEFOLDER_TRAIN_SPLIT, imagefolder_args

        r = spec["recipe"]
        self.spec, self.recipe = spec, r
        self.train_args = imagefolder_args(spec["dataset"], IMAGEFOLDER_TRAIN_SPLIT)
        if not spec.get("test_dataset"):
            raise ValueError(f"model '{spec['name']}': training on image folder '{self.train_args['root']}' needs "
                             f"recipe.test_dataset (an evaluation folder with the same classes)")
        self.test_args = imagefolder_args(spec["test_dataset"], "test")
        # Listing only here; the transforms need the model (its input size and normalisation).
        self.train = ImageFolderDataset(transform=None, **self.train_args)
        self.test = ImageFolderDataset(transform=None, **self.test_args)
        if self.train.classes != self.test.classes:
            only_train = sorted(set(self.train.classes) - set(self.test.classes))[:5]
            only_test = sorted(set(self.test.classes) - set(self.train.classes))[:5]
            raise ValueError(f"model '{spec['name']}': the training folder {self.train.root} and the test folder "
                             f"{self.test.root} list different classes (only in training: {only_train}; "
                             f"only in test: {only_test})")
        self.labels = np.asarray([label for _, label in self.train.samples], dtype=np.int64)
        self.workers = int(r.get("num_workers", 4))
        self._positions = np.arange(len(self.labels))

    def keep(self, positions: np.ndarray) -> None:
        self._positions, self.labels = self._positions[positions], self.labels[positions]

    def bind(self, model) -> None:
        self.preprocessing = self._data_config(model)

    def _data_config(self, model) -> dict:
        """timm's data config of the architecture (its normalisation, interpolation, crop), at the size the
        model was built for: timm keeps the default 224 px in the config when img_size is changed."""
        from .data import timm_data_config
        from .models.build import live_input_size

        cfg = dict(timm_data_config(model))
        live = live_input_size(model, self.spec.get("kwargs", {}))
        if live is not None:
            cfg["input_size"] = tuple(live)
        return {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in cfg.items()}

    def inputs(self) -> dict:
        from .data import folder_fingerprint

        # The folders as listed above (a second listing would re-check every file under on_bad_file: skip).
        return {f"dataset:{self.recipe['dataset']} folder index ({len(self.train)} files, names and labels)":
                folder_fingerprint(self.train.classes, self.train.samples, self.train.on_bad_file),
                f"dataset:{self.recipe['test_dataset']} folder index ({len(self.test)} files, names and labels)":
                folder_fingerprint(self.test.classes, self.test.samples, self.test.on_bad_file)}

    def _loader(self, dataset, batch_sampler, device):
        import torch

        # pinned batches only for a CUDA device: pinning for a CPU run on a GPU node would start a CUDA
        # context for nothing
        return torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler, num_workers=self.workers,
                                           pin_memory=torch.device(device).type == "cuda",
                                           persistent_workers=False, prefetch_factor=4 if self.workers else None)

    def batches(self, index_batches, rng, augment: bool, device, length: int = 0) -> Iterator:
        from timm.data import create_transform

        cfg = self.preprocessing
        if augment:
            tf = create_transform(cfg["input_size"], is_training=True, mean=cfg["mean"], std=cfg["std"],
                                  interpolation=cfg.get("interpolation", "bilinear"),
                                  auto_augment=self.recipe.get("auto_augment"))
        else:
            from .data import timm_eval_transform

            tf = timm_eval_transform(cfg)
        ds = _Subset(self.train, self._positions, tf)
        for x, y, _ in self._loader(ds, _IndexBatches(index_batches, length, self.recipe.get("seed", 0)), device):
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    def test_batches(self, batch_size: int, device) -> Iterator:
        from .data import timm_eval_transform

        ds = _Subset(self.test, np.arange(len(self.test)), timm_eval_transform(self.preprocessing))
        n = len(self.test)
        order = ((0, np.arange(s, min(n, s + batch_size))) for s in range(0, n, batch_size))
        for x, y, _ in self._loader(ds, _IndexBatches(order, (n + batch_size - 1) // batch_size, 0), device):
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


class _Subset:
    """Items of `dataset` at `positions`, read with `transform` (picklable for DataLoader workers)."""

    def __init__(self, dataset, positions, transform):
        self.dataset, self.positions, self.transform = dataset, np.asarray(positions), transform

    def __len__(self):
        return len(self.positions)

    def __getitem__(self, item):
        import random

        import torch

        i, seed = item
        j = int(self.positions[int(i)])
        # timm's transforms draw from Python's and torch's generators.
        random.seed(seed)
        torch.manual_seed(seed % (2**63))
        return self.transform(self.dataset.load(j)), int(self.dataset.samples[j][1]), j


def training_source(spec: dict):
    kind = spec["dataset"]["kind"]
    if kind == "synthetic":
        return ArraySource(spec)
    if kind == "imagefolder":
        return FolderSource(spec)
    raise ValueError(f"model '{spec['name']}': cannot train on a dataset of kind {kind!r}")
