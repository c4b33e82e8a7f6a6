"""Training on an image folder (ImageNet training layout) with timm's training transforms, tested with a
folder of PNGs rendered from the synthetic scenes: config checks, a real run, and an exact resume."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import tiny_config
from seelike import config as sc
from seelike.data import SyntheticSpec, render, split_indices
from safetensors.torch import load_file as load_safetensors


def write_folder(root: Path, split: str, per_class: int, n_classes: int = 4) -> Path:
    spec = SyntheticSpec.from_config({"kind": "synthetic", "n_classes": n_classes, "image_size": 32, "seed": 1,
                                      "splits": {"train": 400, "test": 200, "analysis": 0}})
    images, labels, _ = render(spec, split_indices(spec, split))
    counts = {}
    for img, lab in zip(images, labels):
        if counts.get(lab, 0) >= per_class:
            continue
        counts[lab] = counts.get(lab, 0) + 1
        d = root / f"n{int(lab):08d}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{split}_{counts[lab]:04d}.png")
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    base = tmp_path_factory.mktemp("folders")
    return write_folder(base / "train", "train", 40), write_folder(base / "val", "test", 10)


def folder_config(train: Path, val: Path) -> dict:
    cfg = tiny_config()
    cfg["datasets"] = {"in_train": {"kind": "imagefolder", "root": str(train), "split": "train"},
                       "in_val": {"kind": "imagefolder", "root": str(val)}}
    cfg["models"] = {"vit": {"arch": "vit_tiny_patch16_224", "source": {"kind": "recipe"},
                             "kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2,
                                        "num_classes": 4},
                             "recipe": {"dataset": "in_train", "test_dataset": "in_val", "steps": 12, "batch_size": 16,
                                        "lr": 0.001, "num_workers": 2, "checkpoint_every_steps": 4}}}
    cfg["analysis"] = {"dataset": "in_val", "n_examples": 16}
    cfg["cka"] = {"minibatch_size": 8, "pairs": []}
    return cfg


@pytest.mark.parametrize("mutate, key, message", [
    (lambda c: c["models"]["vit"]["recipe"].update(dataset="in_val"), "models.vit.recipe.dataset", "evaluation folder"),
    (lambda c: c["models"]["vit"]["recipe"].pop("test_dataset"), "models.vit.recipe.test_dataset", "required"),
    (lambda c: c["models"]["vit"]["recipe"].update(test_dataset="in_train"), "models.vit.recipe.test_dataset",
     "evaluation dataset"),
    (lambda c: c["analysis"].update(dataset="in_train"), "analysis.dataset", "training folder"),
    (lambda c: c["datasets"]["in_train"].update(root="/nonexistent/train"), "datasets.in_train.root",
     "ImageNet training folder"),
])
def test_folder_training_config_errors_name_the_key(folders, mutate, key, message):
    cfg = folder_config(*folders)
    mutate(cfg)
    with pytest.raises(sc.ConfigError, match=key.replace(".", r"\.") + ".*" + message):
        sc.load(cfg, check_timm=False)


def test_training_folder_is_never_read_as_an_evaluation_split(folders):
    from seelike.data import open_dataset

    train_cfg = {"kind": "imagefolder", "root": str(folders[0]), "split": "train"}
    with pytest.raises(ValueError, match="training folder"):
        open_dataset(train_cfg, "analysis")
    assert len(open_dataset(train_cfg, "train")) == 160


def _spec(cfg: dict, out_dir: Path) -> dict:
    from seelike.specs import model_spec

    spec = model_spec(sc.load(cfg, check_timm=False), "vit")
    spec["out_dir"] = str(out_dir)
    return spec


def test_folder_training_runs_and_resumes_exactly(folders, tmp_path, monkeypatch):
    from seelike import train

    cfg = folder_config(*folders)
    full = _spec(cfg, tmp_path / "full")
    metrics = train.train_model(full)
    card = json.loads((tmp_path / "full" / "card.json").read_text())
    assert card["input_size"] == [3, 32, 32] and card["metrics"]["train_steps"] == 12
    assert card["pretrained_cfg"]["mean"] == [0.5, 0.5, 0.5]   # the ViT's own normalisation, used for training
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["chance"] == 0.25
    rows = (tmp_path / "full" / "metrics.csv").read_text().splitlines()
    assert rows[0].split(",") == ["epoch", "step", "train_loss", "train_accuracy", "lr", "images_per_s"]
    side = json.loads((tmp_path / "full" / "metrics.csv.prov.json").read_text())
    assert len(side["inputs"]) == 2 and all(len(d) == 64 for d in side["inputs"].values())
    from seelike.data import dataset_fingerprint   # the same digest the plans use for these folders

    assert set(side["inputs"].values()) == {dataset_fingerprint(full["dataset"]), dataset_fingerprint(full["test_dataset"])}

    # The scheduler's signal at step 5: the run checkpoints after that step and hands the signal on.
    class Preempted(Exception):
        pass

    def preempted(signum, frame):
        raise Preempted()

    lr_at = train.lr_at

    def signal_at_step_5(step, *args):
        if step == 5:
            os.kill(os.getpid(), signal.SIGUSR2)
        return lr_at(step, *args)

    part = _spec(cfg, tmp_path / "part")
    old = signal.signal(signal.SIGUSR2, preempted)
    monkeypatch.setattr(train, "lr_at", signal_at_step_5)
    try:
        with pytest.raises(Preempted):
            train.train_model(part)
    finally:
        signal.signal(signal.SIGUSR2, old)
        monkeypatch.setattr(train, "lr_at", lr_at)
    import torch

    state = torch.load(tmp_path / "part" / train.STATE_FILE, weights_only=False)
    assert 5 <= state["step"] < 12 and not (tmp_path / "part" / "card.json").exists()
    train.train_model(part)   # resumes from the checkpoint
    a = load_safetensors(tmp_path / "full" / "weights.safetensors")
    b = load_safetensors(tmp_path / "part" / "weights.safetensors")
    assert a.keys() == b.keys()
    for k in a:   # the same batches, crops and flips: the resumed run ends on the same weights
        np.testing.assert_array_equal(a[k].numpy(), b[k].numpy(), err_msg=k)


def test_training_refuses_more_classes_than_outputs(folders, tmp_path):
    from seelike import train

    cfg = folder_config(*folders)
    cfg["models"]["vit"]["kwargs"]["num_classes"] = 3
    with pytest.raises(ValueError, match=r"4 classes but the model has 3 outputs.*models\.vit\.kwargs\.num_classes"):
        train.train_model(_spec(cfg, tmp_path / "m"))
