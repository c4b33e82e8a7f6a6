"""Train a model recipe (from scratch or from another model's checkpoint) on a synthetic dataset or an image
folder: checkpointed, resumable, with a metrics table.

A run is fully described by its spec; the training state is saved every
`checkpoint_every_steps` steps and when the scheduler signals a time limit, and a restarted
run continues from it to the same number of steps.
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

from . import paths

STATE_FILE = "train_state.pt"
METRICS_FILE = paths.file_name(paths.METRICS)


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def modifications_of(recipe: dict) -> dict:
    """The architecture modifications a recipe asks for (seelike.models.modify)."""
    rs = recipe.get("remove_skip") or {}
    if rs.get("block") is not None:  # block: null is the unablated baseline of a sweep
        return {"remove_skip": {"block": int(rs["block"]), "branch": rs.get("branch", "both")}}
    return {}


def init_card_name(spec: dict) -> str:
    return Path(spec["init_card"]).parent.name


def load_matching(model, source: dict) -> dict:
    """Copy the tensors of `source` whose name and shape match `model`'s (fine-tuning into another head, say);
    the rest keep their initialisation. Returns what was not copied, by reason: shape, missing, unexpected."""
    own = model.state_dict()
    fits = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape}
    # strict=False alone still raises on a shape mismatch.
    model.load_state_dict(fits, strict=False)
    return {"shape": [f"{k} {list(source[k].shape)} -> {list(own[k].shape)}"
                      for k in source if k in own and k not in fits],
            "missing": [k for k in own if k not in source],
            "unexpected": [k for k in source if k not in own]}


def describe_not_loaded(skipped: dict) -> str:
    parts = [f"{what}: {', '.join(skipped[key])}" for key, what in
             (("shape", "shape differs, left at initialisation"), ("missing", "not in the checkpoint"),
              ("unexpected", "not in the model")) if skipped[key]]
    return f" ({'; '.join(parts)})" if parts else ""


def training_state(model, opt, step: int, rows: list, rng, spec_hash, device, scaler=None) -> dict:
    import torch

    state = {"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "rows": rows,
             "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "spec_hash": spec_hash}
    if scaler is not None and scaler.is_enabled():
        # fp16's loss scale, learnt over thousands of steps: a resume without it starts again at 2^16
        # and skips steps on overflow until the scale has come back down
        state["scaler"] = scaler.state_dict()
    if device.type == "cuda":
        # Dropout and drop-path on the GPU draw from the device's generator, not the CPU one.
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    return state


def resume_training_state(path, spec_hash, model, opt, rng, device, scaler=None):
    """Restore the state saved at `path` into model, opt and the generators: (step, rows), or None when it
    belongs to another recipe."""
    import torch

    # Loaded on the CPU whatever the training device: the RNG setters take only CPU ByteTensors, and
    # load_state_dict puts weights and optimizer moments on their parameters' device anyway.
    st = torch.load(path, map_location="cpu", weights_only=False)
    if st.get("spec_hash") != spec_hash:
        return None
    model.load_state_dict(st["model"])
    opt.load_state_dict(st["opt"])
    rng.bit_generator.state = st["rng"]
    torch.set_rng_state(st["torch_rng"])
    if device.type == "cuda" and st.get("cuda_rng") is not None:  # absent from states saved on the CPU
        torch.cuda.set_rng_state(st["cuda_rng"], device)
    if scaler is not None and scaler.is_enabled() and st.get("scaler"):   # absent unless saved under fp16
        scaler.load_state_dict(st["scaler"])
    return st["step"], st["rows"]


class _StopRequested(Exception):
    pass


def evaluate(model, source, device, precision, batch_size=256) -> tuple[float, int]:
    """(test accuracy, number of test images)."""
    import torch

    from .runtime import autocast

    model.eval()
    correct = seen = 0
    with torch.no_grad(), autocast(device, precision):
        for x, y in source.test_batches(batch_size, device):
            correct += int((model(x).argmax(-1) == y).sum())
            seen += len(y)
    return correct / max(1, seen), seen


def train_model(spec: dict) -> dict:
    """spec keys: name, arch, kwargs, recipe, dataset (config entry), out_dir, device, precision, cache_dir,
    layers (spec), provenance_config. Returns the card's metrics."""
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from .train_data import training_source
    from .fileio import atomic_write
    from .models import make_card, save_checkpoint
    from .models.build import create_timm_model
    from . import provenance, runtime

    out_dir = Path(spec["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    r = spec["recipe"]
    device = runtime.device(spec.get("device", "cpu"))
    precision = spec.get("precision", "fp32")
    torch.manual_seed(r["seed"])
    rng = np.random.default_rng(r["seed"])

    if spec.get("cache_dir"):
        os.environ.setdefault("SEELIKE_CACHE", spec["cache_dir"])
    source = training_source(spec)
    if r.get("train_fraction", 1.0) < 1.0:
        from .data.subsets import stratified_subset

        keep = stratified_subset(source.labels, r["train_fraction"], seed=r.get("subset_seed", 0))
        source.keep(keep)
        print(f"seelike: training '{spec['name']}' on {len(keep)} examples ({r['train_fraction']:.0%}, stratified)", flush=True)
    inputs = source.inputs()
    n, bs = len(source.labels), int(r["batch_size"])
    steps_per_epoch = max(1, n // bs)
    # A step budget (recipe.steps) keeps the number of updates fixed across data fractions.
    total = int(r["steps"]) if r.get("steps") else int(round(r["epochs"] * steps_per_epoch))
    warmup = int(round(r.get("warmup_epochs", 0) * steps_per_epoch))

    modifications = modifications_of(r)
    model = create_timm_model(spec["arch"], spec.get("kwargs", {}), modifications, pretrained=False).to(device)
    source.bind(model)
    n_classes = int(getattr(model, "num_classes", 0) or 0)
    if n_classes and int(source.labels.max()) >= n_classes:
        raise ValueError(f"model '{spec['name']}': the training data has {int(source.labels.max()) + 1} classes but the "
                         f"model has {n_classes} outputs; set models.{spec['name']}.kwargs.num_classes")
    if spec.get("init_card"):
        from .models import ModelCard, build_model

        init_card = ModelCard.load(spec["init_card"])
        init = build_model(init_card, Path(spec["init_card"]).parent)
        inputs[str(Path(spec["init_card"]).parent / init_card.checkpoint)] = init_card.sha256
        skipped = load_matching(model, init.state_dict())
        print(f"seelike: fine-tuning '{spec['name']}' from '{init_card_name(spec)}'" + describe_not_loaded(skipped),
              flush=True)
    if r.get("optimizer", "adamw") == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=r["lr"], momentum=0.9, weight_decay=r["weight_decay"], nesterov=True)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=r["lr"], weight_decay=r["weight_decay"])
    scaler = torch.amp.GradScaler(enabled=(precision == "fp16" and device.type == "cuda"))

    state_path = out_dir / STATE_FILE
    step, rows = 0, []
    if state_path.is_file():
        resumed = resume_training_state(state_path, spec.get("spec_hash"), model, opt, rng, device, scaler)
        if resumed is not None:
            step, rows = resumed
            print(f"seelike: resuming '{spec['name']}' from {state_path} at step {step}/{total}", flush=True)
        else:
            print(f"seelike: ignoring {state_path}: it belongs to a different recipe", flush=True)

    def save_state():
        with atomic_write(state_path) as tmp:
            torch.save(training_state(model, opt, step, rows, rng, spec.get("spec_hash"), device, scaler), tmp)

    # SLURM (through submitit) sends USR2 before a time limit or preemption: stop at the next
    # step boundary with a consistent checkpoint, then let the job be requeued.
    stop = {"flag": False, "signum": None}

    def on_signal(signum, frame):
        stop["flag"], stop["signum"] = True, signum
    handlers = {}
    for sig in (signal.SIGUSR2,):
        try:
            handlers[sig] = signal.signal(sig, on_signal)
        except ValueError:  # not in the main thread (inline executor inside a worker thread)
            pass

    def index_batches(first):
        # The permutation of each epoch is derived from (seed, epoch) so a resumed run sees the same order.
        perm_epoch, perm = None, None
        for s in range(first, total):
            epoch, i = divmod(s, steps_per_epoch)
            if epoch != perm_epoch:
                perm_epoch, perm = epoch, np.random.default_rng([r["seed"], epoch]).permutation(n)
            yield s, np.sort(perm[i * bs:(i + 1) * bs])

    bar = tqdm(total=total, initial=step, desc=f"train {spec['name']}", file=sys.stderr, mininterval=5)
    epoch_loss, epoch_correct, epoch_seen, t0 = 0.0, 0, 0, time.time()

    batches = source.batches(index_batches(step), rng, r.get("augment", True), device, length=total - step)
    try:
        while step < total:
            x, y = next(batches)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, warmup, r["lr"])
            model.train()
            with runtime.autocast(device, precision):
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=r.get("label_smoothing", 0.0))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training '{spec['name']}' diverged at step {step}: loss {loss.item()}; lower recipe.lr")
            opt.zero_grad(set_to_none=True)
            # fp32 is full float32 in the backward pass too: outside the forward's context cuDNN would run
            # the convolutions' gradients in TF32 (torch.backends.cudnn.allow_tf32 is on by default)
            with runtime.full_fp32() if precision == "fp32" else contextlib.nullcontext():
                scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            step += 1
            bar.update(1)
            epoch_loss += loss.item() * len(y)
            epoch_correct += int((logits.argmax(-1) == y).sum())
            epoch_seen += len(y)
            if step % steps_per_epoch == 0 or step == total:
                dt = time.time() - t0
                rows.append({"epoch": step / steps_per_epoch, "step": step, "train_loss": epoch_loss / epoch_seen,
                             "train_accuracy": epoch_correct / epoch_seen, "lr": opt.param_groups[0]["lr"],
                             "images_per_s": epoch_seen / max(dt, 1e-9)})
                epoch_loss, epoch_correct, epoch_seen, t0 = 0.0, 0, 0, time.time()
            if step % int(r.get("checkpoint_every_steps", 200)) == 0 or stop["flag"]:
                save_state()
            if stop["flag"] and step < total:
                raise _StopRequested()
    except _StopRequested:
        print(f"seelike: '{spec['name']}' checkpointed at step {step}/{total} on a scheduler signal", flush=True)
        bar.close()
        # Hand the signal to whoever handled it before us: submitit requeues the job (the step is
        # checkpointable and resumes from the state just saved); without submitit it ends the process.
        for sig, h in handlers.items():
            signal.signal(sig, h)
        os.kill(os.getpid(), stop["signum"])
        time.sleep(60)  # the handler exits the process; never fall through to the final save
        raise SystemExit(1)
    finally:
        bar.close()
        for sig, h in handlers.items():
            signal.signal(sig, h)

    batches.close()
    acc, n_test = evaluate(model, source, device, precision)
    import pandas as pd

    with atomic_write(out_dir / METRICS_FILE) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    provenance.write_sidecar(out_dir / METRICS_FILE, provenance.collect({k: v for k, v in spec.items() if k != "out_dir"},
                                                                        input_digests=inputs))
    ckpt = out_dir / paths.file_name(paths.WEIGHTS)
    save_checkpoint(model.cpu(), ckpt)
    card = make_card(spec["name"], spec["arch"], spec.get("kwargs", {}),
                     {"kind": "recipe", "recipe": r, "dataset": spec["dataset"]}, model, ckpt,
                     sublayers=False, layer_spec=spec.get("layers", "auto"),
                     input_size=list(source.preprocessing["input_size"]),
                     pretrained_cfg=source.preprocessing, modifications=modifications)
    card.metrics = {"test_accuracy": acc, "chance": 1.0 / (int(source.labels.max()) + 1),
                    "n_test": n_test, "train_steps": total, "n_train": int(n), "seed": r["seed"]}
    card.provenance = {**card.provenance, **provenance.collect({k: v for k, v in spec.items() if k != "out_dir"},
                                                                input_digests=inputs)}
    card.save(out_dir / paths.file_name(paths.CARD))
    state_path.unlink(missing_ok=True)
    print(f"seelike: trained '{spec['name']}': test accuracy {acc:.3f} (chance {card.metrics['chance']:.3f})", flush=True)
    return card.metrics

