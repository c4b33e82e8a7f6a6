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


def test_extraction_of_synthetic_images_uses_a_folder_trained_models_own_preprocessing(folders, tmp_path):
    """The fast path that feeds synthetic tensors straight to a model is for models whose card says
    exactly that preprocessing (trained on synthetic images); a recipe trained on a folder records
    timm's resize and crop (and maybe ImageNet's normalisation) and must get them."""
    from seelike import train
    from seelike.extract import sees_synthetic_natively
    from seelike.models import ModelCard
    from seelike.train_data import synthetic_preprocessing

    cfg = folder_config(*folders)
    cfg["models"]["vit"]["recipe"]["steps"] = 1
    train.train_model(_spec(cfg, tmp_path / "m"))
    card = ModelCard.load(tmp_path / "m" / "card.json")
    synth = {"kind": "synthetic", "image_size": 32, "n_classes": 4, "seed": 1}
    assert card.source["kind"] == "recipe" and card.input_size[-1] == 32
    assert card.pretrained_cfg["crop_pct"] != 1.0                   # timm's eval crop, which the images need
    assert not sees_synthetic_natively(card, synth)
    card.pretrained_cfg = dict(card.pretrained_cfg, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], crop_pct=1.0)
    assert not sees_synthetic_natively(card, synth)                 # ImageNet normalisation
    card.pretrained_cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in synthetic_preprocessing(32).items()}
    assert sees_synthetic_natively(card, synth)                     # what training on synthetic images records
    assert not sees_synthetic_natively(card, dict(synth, image_size=64))
    assert not sees_synthetic_natively(card, {"kind": "imagefolder", "root": str(folders[1])})


def test_training_refuses_more_classes_than_outputs(folders, tmp_path):
    from seelike import train

    cfg = folder_config(*folders)
    cfg["models"]["vit"]["kwargs"]["num_classes"] = 3
    with pytest.raises(ValueError, match=r"4 classes but the model has 3 outputs.*models\.vit\.kwargs\.num_classes"):
        train.train_model(_spec(cfg, tmp_path / "m"))


def _tiny_vit(num_classes: int, seed: int = 0):
    import torch
    from seelike.models.build import create_timm_model

    torch.manual_seed(seed)
    return create_timm_model("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2,
                                                      "num_heads": 2, "num_classes": num_classes}, pretrained=False)


def test_resume_restores_the_rng_states_from_cpu_tensors_whatever_the_device(tmp_path):
    """A requeued GPU job must restart: torch.set_rng_state takes only a CPU ByteTensor, so the saved state may
    not follow the training device. The meta device stands in for CUDA here: it is not the CPU either."""
    import warnings

    import torch
    from seelike import train

    cpu, meta = torch.device("cpu"), torch.device("meta")
    model = _tiny_vit(4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    rng = np.random.default_rng(3)
    rng.random(5)
    path = tmp_path / train.STATE_FILE
    torch.save(train.training_state(model, opt, 7, [{"step": 7}], rng, "h", cpu), path)
    saved = torch.load(path, weights_only=False)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)   # anything but the saved state
        gpu_model = _tiny_vit(4).to(meta)
        gpu_opt = torch.optim.AdamW(gpu_model.parameters(), lr=1e-3)
        gpu_rng = np.random.default_rng(0)
        assert train.resume_training_state(path, "another recipe", gpu_model, gpu_opt, gpu_rng, meta) is None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # copying into meta parameters is a no-op, and torch says so
            resumed = train.resume_training_state(path, "h", gpu_model, gpu_opt, gpu_rng, meta)
        assert resumed == (7, [{"step": 7}])
        assert torch.equal(torch.get_rng_state(), saved["torch_rng"])
        assert gpu_rng.bit_generator.state == rng.bit_generator.state
    moments = [s["exp_avg"] for s in gpu_opt.state.values()]
    assert moments and all(m.device == meta for m in moments)   # the optimizer state follows its parameters

    # Resuming on the CPU puts back the very weights and moments.
    cpu_model = _tiny_vit(4, seed=5)
    cpu_opt = torch.optim.AdamW(cpu_model.parameters(), lr=1e-3)
    with torch.random.fork_rng(devices=[]):
        train.resume_training_state(path, "h", cpu_model, cpu_opt, np.random.default_rng(0), cpu)
    for (k, a), b in zip(model.state_dict().items(), cpu_model.state_dict().values()):
        assert torch.equal(a, b), k
    for p, q in zip(model.parameters(), cpu_model.parameters()):
        assert torch.equal(opt.state[p]["exp_avg_sq"], cpu_opt.state[q]["exp_avg_sq"])


def test_resume_on_cuda_restores_its_generator_from_a_cpu_tensor(tmp_path, monkeypatch):
    """The CUDA generator's state travels with the rest (dropout on the GPU draws from it) and is handed back
    to torch.cuda.set_rng_state as the CPU ByteTensor it takes. No GPU here: the CUDA RNG calls are stood in for."""
    import torch
    from seelike import train

    cuda, given = torch.device("cuda"), {}
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": torch.arange(16, dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state",
                        lambda state, device="cuda": given.update(state=state, device=device))
    model = _tiny_vit(4)
    opt = torch.optim.AdamW(model.parameters())
    torch.save(train.training_state(model, opt, 3, [], np.random.default_rng(0), "h", cuda), tmp_path / "s.pt")
    with torch.random.fork_rng(devices=[]):
        train.resume_training_state(tmp_path / "s.pt", "h", model, opt, np.random.default_rng(0), cuda)
    assert given["device"] == cuda and given["state"].device.type == "cpu" and given["state"].dtype == torch.uint8
    assert torch.equal(given["state"], torch.arange(16, dtype=torch.uint8))


def test_init_from_loads_the_tensors_that_fit_and_keeps_the_new_head():
    import torch
    from seelike import train

    source, model = _tiny_vit(10, seed=1), _tiny_vit(4, seed=2)
    with torch.no_grad():   # as after training: no tensor of the source equals its initialisation (norms are ones)
        for p in source.parameters():
            p.add_(torch.rand_like(p))
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    skipped = train.load_matching(model, source.state_dict())
    assert skipped == {"shape": ["head.weight [10, 32] -> [4, 32]", "head.bias [10] -> [4]"],
                       "missing": [], "unexpected": []}
    src = source.state_dict()
    for k, v in model.state_dict().items():
        if k.startswith("head."):
            assert torch.equal(v, fresh[k]), k
        else:
            assert torch.equal(v, src[k]) and not torch.equal(v, fresh[k]), k
    note = train.describe_not_loaded(skipped)
    assert "shape differs, left at initialisation: head.weight [10, 32] -> [4, 32], head.bias [10] -> [4]" in note

    # Names on one side only are reported as such, and the rest still loads.
    extra = {**src, "extra.weight": torch.zeros(1)}
    del extra["norm.bias"]
    skipped = train.load_matching(_tiny_vit(10), extra)
    assert skipped["missing"] == ["norm.bias"] and skipped["unexpected"] == ["extra.weight"] and not skipped["shape"]
    assert train.describe_not_loaded({"shape": [], "missing": [], "unexpected": []}) == ""


def test_fine_tuning_into_fewer_classes(folders, tmp_path, capsys):
    """recipe.init_from a 10-class model into a 4-class one: the head is left at its initialisation (the
    documented behaviour) instead of stopping the run on the size mismatch."""
    from seelike import train

    cfg = folder_config(*folders)
    recipe = cfg["models"]["vit"]["recipe"]
    recipe.update(steps=2, checkpoint_every_steps=100)
    source_cfg = json.loads(json.dumps(cfg))
    source_cfg["models"]["vit"]["kwargs"]["num_classes"] = 10
    train.train_model(_spec(source_cfg, tmp_path / "source"))

    def still(out_dir, **extra):   # lr 0: the run's final weights are the ones it started from
        spec = {**_spec(cfg, out_dir), **extra}
        spec["recipe"] = {**spec["recipe"], "lr": 0.0}
        train.train_model(spec)
        return load_safetensors(out_dir / "weights.safetensors")

    capsys.readouterr()
    tuned = still(tmp_path / "tuned", init_card=str(tmp_path / "source" / "card.json"))
    log = capsys.readouterr().out
    assert "fine-tuning 'vit' from 'source' (shape differs, left at initialisation: head.weight [10, 32] -> [4, 32], " \
           "head.bias [10] -> [4])" in log
    scratch = still(tmp_path / "scratch")
    source = load_safetensors(tmp_path / "source" / "weights.safetensors")
    assert tuned.keys() == scratch.keys()
    for k in tuned:
        expected = scratch[k] if k.startswith("head.") else source[k]
        np.testing.assert_array_equal(tuned[k].numpy(), expected.numpy(), err_msg=k)


def test_fp32_precision_turns_tf32_off_for_the_forward():
    """precision "fp32" is float32 on GPUs too: cuDNN's TF32 default and any TF32 matmul setting
    are off inside the forward's context and restored after it (the flags exist without a GPU)."""
    import torch

    from seelike.runtime import autocast

    old = torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
    try:
        with autocast(torch.device("cpu"), "fp32"):
            assert torch.backends.cudnn.allow_tf32 is False
            assert torch.get_float32_matmul_precision() == "highest"
        assert torch.backends.cudnn.allow_tf32 is True and torch.get_float32_matmul_precision() == "high"
        with autocast(torch.device("cpu"), "bf16"):
            assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    finally:
        torch.backends.cudnn.allow_tf32 = old[0]
        torch.set_float32_matmul_precision(old[1])


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_fp32_keeps_tf32_off_in_the_backward_passes_of_training_and_receptive_fields(folders, tmp_path):
    """precision "fp32" covers the backward pass too: training's gradients and the receptive fields'
    input gradients run with cuDNN's TF32 and TF32 matmuls off, whatever was set around them (a global
    module backward hook records the flags while every module's gradient is computed)."""
    import torch

    from seelike import train
    from seelike.analyses.receptive_field import receptive_fields

    seen = []

    def record(module, grad_input, grad_output):
        seen.append((torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()))

    old = torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
    handle = torch.nn.modules.module.register_module_full_backward_hook(record)
    try:
        spec = _spec(folder_config(*folders), tmp_path / "m")
        assert spec.get("precision", "fp32") == "fp32"
        train.train_model(spec)
        assert seen and set(seen) == {(False, "highest")}, set(seen)
        seen.clear()
        conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3))
        receptive_fields(conv, torch.randn(2, 3, 9, 9), [{"name": "c", "module": "2", "tap": "output", "layout": "nchw"}])
        assert seen and set(seen) == {(False, "highest")}, set(seen)
        assert torch.backends.cudnn.allow_tf32 is True and torch.get_float32_matmul_precision() == "high"
    finally:
        handle.remove()
        torch.backends.cudnn.allow_tf32 = old[0]
        torch.set_float32_matmul_precision(old[1])


def test_resume_keeps_the_fp16_loss_scale(tmp_path):
    """fp16 training's GradScaler state (scale, growth tracker) travels with the training state. A CPU
    GradScaler stands in for the CUDA one: the state_dict is the same."""
    import torch
    from seelike import train

    cpu = torch.device("cpu")
    model = _tiny_vit(4)
    opt = torch.optim.AdamW(model.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    scaler.scale(model(torch.randn(2, 3, 32, 32)).sum()).backward()
    next(model.parameters()).grad.fill_(float("inf"))     # an overflow: the step is skipped, the scale halves
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 2.0 ** 15
    torch.save(train.training_state(model, opt, 1, [], np.random.default_rng(0), "h", cpu, scaler), tmp_path / "s.pt")

    fresh = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    with torch.random.fork_rng(devices=[]):
        assert train.resume_training_state(tmp_path / "s.pt", "h", model, opt, np.random.default_rng(0), cpu,
                                           fresh) == (1, [])
    assert fresh.get_scale() == 2.0 ** 15 and fresh.state_dict() == scaler.state_dict()

    # without fp16 there is no scaler state to save, and a disabled scaler ignores one
    torch.save(train.training_state(model, opt, 1, [], np.random.default_rng(0), "h", cpu,
                                    torch.amp.GradScaler("cpu", enabled=False)), tmp_path / "plain.pt")
    assert "scaler" not in torch.load(tmp_path / "plain.pt", weights_only=False)
    with torch.random.fork_rng(devices=[]):
        train.resume_training_state(tmp_path / "s.pt", "h", model, opt, np.random.default_rng(0), cpu,
                                    torch.amp.GradScaler("cpu", enabled=False))
