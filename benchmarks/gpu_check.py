"""GPU check: what one GPU does with the paper's models, in one run of at most 8 minutes.

    python benchmarks/gpu_check.py                  # one CUDA GPU -> benchmarks/out/gpu_check.json
    python benchmarks/gpu_check.py --smoke          # the same code paths on CPU, tiny models (well under a minute)
    python benchmarks/gpu_check.py --budget-s 300   # start no new measurement after 300 s
    python benchmarks/gpu_check.py --sections extract,grams

Sections. Each runs inside try/except: an error is recorded in the JSON under its section (with the
traceback's last lines) and the run goes on; a measurement that would start after the time budget
(`--budget-s`, default 420 s on a GPU, 150 s with --smoke) is recorded as skipped. Progress goes to
stderr; the table to stdout; the JSON to `--out`, rewritten after every section (`meta.complete` is
false until the run ends), so a run stopped from outside keeps the sections it finished.

extract   ViT-B/16, BiT-R50x1 (timm resnetv2_50x1_bit) and Mixer-B/16 at 224 px, b = 256, random
          weights, in bf16 and fp32 (`precision`): a bare forward (`seelike.runtime.autocast`, images
          already on the device; median of 3 after a warm-up) against the extract job's own code path,
          `seelike.extract.extract_shard`, over shards of k = 4 minibatches: the Grams' pass (held to the
          goal) and, timed apart, the model's vision pass with every vision tap the paper config
          (config/config.yaml's `analyses:`) attaches to the model (a forward of its own by design: "vision"). Specs, plan and rendered split
          come from the workflow's own steps (`seelike.specs`, `seelike.cli.step_plan`,
          `seelike.cli.step_render`) on a synthetic 224 px dataset whose tensors the models take as they
          are, so no JPEG decoding is timed here (see `loading`). Shard 0 also stores the full tokens of the
          plan's first `extraction.full_tokens` (64) examples; shard 1, timed against k bare forwards, is
          the steady state. overhead = shard 1 / (k x bare) - 1, with and without the model build (timed
          apart); "write", part of it: shard 1's HDF5 write, what extract_shard spent after the
          "seconds" its provenance records. GPU goal: at most 25%. "tf32 Grams": shard 1 again with `extraction.gram_precision:
          tf32` (TF32 Grams of centred features), held to the same goal. "loader": the time extraction's own data loader
          (`seelike.runtime.loader_options`, num_workers auto) takes to hand the shard's minibatches to the
          device with nothing else running, as % of the k bare forwards (above 100%: loading binds).
memory    (CUDA only) peak `torch.cuda.max_memory_allocated` of the bare forward and of each extract_shard
          against config/README.md's device estimate: 1.25 x parameters + input + the family's working set.
grams     for each Gram precision: `highest` (`extraction.gram_precision: fp32`, float32 products,
          TF32 off), `tf32` (`extraction.gram_precision: tf32`: seelike.cka.gram(precision="tf32"),
          torch.set_float32_matmul_precision("high") inside its full-float32 context; the same as
          torch.backends.cuda.matmul.allow_tf32 = True), `medium` (set_float32_matmul_precision("medium"):
          whatever reduced type torch picks on that GPU; on CUDA TF32, as `high`, per PyTorch's docs)
          and `bf16` (the chunks rounded to bfloat16, then multiplied in float32: the products of two
          bf16 values are exact in float32, so its error is a bf16 matmul's with float32 accumulation,
          its time a float32 one's), over every layer of one fp32 minibatch of each model; its time, and
          the largest |CKA - CKA_float64| over all layer pairs (unbiased minibatch CKA,
          `seelike.cka.hsic_all_pairs` + `cka_from_minibatch_hsic`) against Grams of the same features
          centred and multiplied in float64. On CPU TF32 does not exist: `tf32` and `medium` run the
          code path and are marked as not applicable (benchmarks/bench_gram_precision.py emulates TF32 and
          bf16 inputs on CPU instead).
loading   images/s of one process decoding and transforming JPEGs (500 x 375, ViT-B/16's timm eval
          transform) and of a DataLoader with the job's CPUs as workers (`seelike.runtime.job_cpus`,
          what `extraction.num_workers: auto` gives; batches small enough that each worker decodes at
          least 4, the workers' start-up included), against the bf16 forward's images/s from `extract`.
workflow  a demo-sized workflow (config/demo.yaml's synthetic data and its ViT, ResNet and Mixer, 2
          epochs) run by Snakemake with `device: cuda` and the local executor, after the ViT's training
          was interrupted halfway by the scheduler's signal (SIGUSR2, what SLURM sends before a time limit,
          as tests/test_train_folder.py simulates it): the workflow's model step must resume that state,
          and its final weights must equal an uninterrupted training's (bit for bit on a CPU; on a GPU
          non-deterministic kernels may leave rounding differences, reported as the largest one). --smoke: a one-model 16 px
          config with the inline executor (a job process's start-up would cost more than its work on 2
          cores). The analyses are config/demo.yaml's on those three models (`gpu_workflow_analyses`), so
          every vision tap, receptive fields' gradients and attention maps included, runs on the device.
fp16      the workflow's ViT trained with `precision: fp16`, interrupted halfway by the same signal and
          resumed: on CUDA the saved state must carry the GradScaler's loss scale and the resumed run start
          from the saved step; on a CPU (--smoke) fp16 autocast is bf16 and no scaler state is expected.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")   # random weights only: never reach the hub

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from seelike.allocator import retain_freed_memory  # noqa: E402
from seelike.fileio import write_json_atomic  # noqa: E402
from bench_pipeline import OUT, make_model_dir  # noqa: E402

# name -> (timm architecture, kwargs): the paper's models at 224 px (names as in config/config.yaml)
GPU_MODELS = {
    "vit_b16": ("vit_base_patch16_224", {"num_classes": 1000}),
    "r50x1": ("resnetv2_50x1_bit", {"num_classes": 1000}),
    "mixer_b16": ("mixer_b16_224", {"num_classes": 1000}),
}
# --smoke: the same families (and for the CNN the same timm class) at 32 px, small enough for a 2-core CPU
SMOKE_MODELS = {
    "vit_b16": ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2,
                                         "mlp_ratio": 2.0, "num_classes": 10}),
    "r50x1": ("resnetv2_18", {"channels": [16, 32, 64, 128], "num_classes": 10}),   # timm's ResNetV2, as BiT
    "mixer_b16": ("seelike_mixer", {"img_size": 32, "patch_size": 8, "embed_dim": 64, "num_blocks": 2,
                                    "num_classes": 10}),
}
PRECISIONS = ("bf16", "fp32")
GRAM_MODES = ("highest", "tf32", "medium", "bf16")
SECTIONS = ("extract", "memory", "grams", "loading", "workflow", "fp16")
GOAL_PCT = 25.0


class Budget:
    """The run's time budget: measurements that would start after it are skipped."""

    def __init__(self, seconds: float):
        self.t0, self.seconds = time.monotonic(), seconds

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def check(self, what: str) -> None:
        if self.left() <= 0:
            raise OverBudget(f"time budget of {self.seconds:.0f} s spent before {what}")


class OverBudget(Exception):
    pass


def say(msg: str) -> None:
    print(f"# [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def section(results: dict, name: str, budget: Budget, fn, *args, saved=None):
    """Run one section, recording its result, its error or why it was skipped; never raises. ``saved``
    (called after the section) writes what the run has so far, so a run stopped from outside (a job's
    time limit, a hung GPU) still leaves every finished section on disk."""
    say(f"section {name}")
    t = time.perf_counter()
    try:
        budget.check(f"section '{name}'")
        out = fn(*args)
        results[name] = {"status": "ok", **(out or {})}
    except OverBudget as e:
        results[name] = {"status": "skipped", "reason": str(e)}
    except Exception as e:   # noqa: BLE001 -- the next sections still run
        results[name] = {"status": "error", "error": f"{type(e).__name__}: {e}",
                         "traceback": traceback.format_exc().splitlines()[-12:]}
        say(f"section {name} failed: {type(e).__name__}: {e}")
    results[name]["seconds"] = round(time.perf_counter() - t, 2)
    if saved is not None:
        saved()
    return results[name]


# ----------------------------------------------------------------------------- the extraction setup

class Setup:
    """A working directory holding what the extract rule's inputs would be: the models' cards and
    checkpoints (random weights), the rendered analysis split and the example plan, for one config."""

    def __init__(self, args, device: torch.device, workdir: Path):
        import yaml
        from seelike import config as sc

        self.args, self.device, self.workdir = args, device, workdir
        self.models = SMOKE_MODELS if args.smoke else GPU_MODELS
        self.size, self.b, self.k = (32, 16, 2) if args.smoke else (224, 256, 4)
        self.full_tokens = 4 if args.smoke else 64
        self.n = 2 * self.k * self.b                                     # two shards
        paper = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
        analyses = paper["analyses"]
        analyses["attention_distance"]["less_data"] = []                # the paper's in1k ViTs are not here
        for key in ("attention_distance", "localization", "receptive_field", "attention_maps"):
            if "n_images" in analyses.get(key, {}):
                analyses[key]["n_images"] = min(analyses[key]["n_images"], self.n)
        self.raw = {
            "run_name": "gpu_check", "device": "cuda" if device.type == "cuda" else "cpu", "precision": "fp32",
            "datasets": {"synth": {"kind": "synthetic", "n_classes": 10, "image_size": self.size, "seed": 0,
                                   "splits": {"train": 0, "test": 0, "analysis": self.n}}},
            "models": {}, "analysis": {"dataset": "synth", "n_examples": self.n, "seed": 0},
            "extraction": {"minibatches_per_shard": self.k, "full_tokens": self.full_tokens},
            "cka": {"minibatch_size": self.b}, "analyses": analyses, "executor": {"default": "inline"},
        }
        os.chdir(workdir)
        for name, (arch, kwargs) in self.models.items():
            say(f"setup: random {arch} -> results/models/{name}")
            card = make_model_dir(Path("results/models"), name, arch, kwargs, seed=0,
                                  input_size=(3, self.size, self.size))
            self.raw["models"][name] = {"arch": arch, "kwargs": kwargs,
                                        "source": {"kind": "local_file", "path": str(card.parent / "weights.safetensors")}}
        self.cfg = sc.load(self.raw, check_timm=False)
        from seelike import cli, specs

        say(f"setup: render {self.n} images at {self.size} px and plan them")
        cli.step_render(specs.render_spec(self.cfg, "synth", "analysis"))
        cli.step_plan(specs.plan_spec(self.cfg))

    def config(self, precision: str, gram_precision: str = "fp32") -> dict:
        from seelike import config as sc

        extraction = dict(self.raw.get("extraction", {}), gram_precision=gram_precision)
        return sc.load(dict(self.raw, precision=precision, extraction=extraction), check_timm=False)

    def job_spec(self, name: str, precision: str, vision: bool = False, gram_precision: str = "fp32") -> dict:
        """What `seelike step extract` hands each shard's job (seelike.cli.step_extract): the Grams' pass
        (with `extraction.gram_precision`), or with `vision` the model's vision pass."""
        from seelike import specs
        from seelike.plan import read_plan_file

        make = specs.vision_extract_spec if vision else specs.extract_spec
        spec = make(self.config(precision, gram_precision), name)
        return specs.shard_job_spec(spec, read_plan_file(spec["plan_file"]))

    def shard_loading_s(self, shard: int) -> tuple[float, dict]:
        """Seconds the extract job's data loader (seelike.runtime.loader_options with extraction.num_workers
        auto, as extract_shard builds it) takes to hand over one shard's minibatches to the device, alone."""
        from torch.utils.data import DataLoader, Subset
        from seelike import specs
        from seelike.data import open_dataset, reads_from_memory
        from seelike.plan import Plan, read_plan_file
        from seelike.runtime import loader_options

        spec = specs.extract_spec(self.cfg, next(iter(self.models)))
        plan = Plan.from_dict(read_plan_file(spec["plan_file"]))
        ds = open_dataset(self.cfg["datasets"]["synth"], "analysis", rendered=spec["rendered"])
        items = Subset(ds, [int(i) for i in plan.shard(shard).example_indices])
        opts = loader_options(self.device, "auto", reads_from_memory(items), batches=-(-len(items) // self.b))

        def load():
            for x, _, _ in DataLoader(items, batch_size=self.b, shuffle=False, **opts):
                x.to(self.device, non_blocking=True)
        load()      # untimed: the first pinned blocks and worker start-up, which the timed shards reuse too
        return timed(load, self.device), opts

    def card(self, name: str):
        from seelike import paths
        from seelike.models import ModelCard

        return ModelCard.load(paths.card(name)), Path(paths.card(name)).parent

    def minibatch(self) -> torch.Tensor:
        """The plan's first minibatch as the models see it (the rendered split, no transform)."""
        from seelike import specs
        from seelike.data import open_dataset

        spec = specs.extract_spec(self.cfg, next(iter(self.models)))
        ds = open_dataset(self.cfg["datasets"]["synth"], "analysis", rendered=spec["rendered"])
        return torch.stack([item[0] for item in ds.__getitems__(list(range(self.b)))])


def formula_bytes(model, card, x: torch.Tensor) -> dict:
    """config/README.md's device estimate ("Extraction memory"): 1.25 P + the minibatch's input + the
    family's forward working set Wf; the formula itself is bench_memory.formula_bytes's."""
    from bench_memory import formula_bytes as extraction_formula

    f = extraction_formula(model, card, card.family, x.shape[0], full_tokens=0)
    device = f["params"] + f["params"] // 4 + f["inputs"] // 2 + f["work"]
    return {"params_bytes": f["params"], "activations_bytes": f["work"], "formula_bytes": device}


# ----------------------------------------------------------------------------- sections

def run_extract(setup: Setup, budget: Budget, out: dict, mem: dict) -> dict:
    from seelike.extract import extract_shard
    from seelike.models import build_model
    from seelike.runtime import autocast

    device, cuda = setup.device, setup.device.type == "cuda"
    x_cpu = setup.minibatch()
    out["loading_s"], out["loader"] = setup.shard_loading_s(1)
    rows = []
    for name, (arch, _) in setup.models.items():
        card, card_dir = setup.card(name)
        for precision in PRECISIONS:
            row = {"model": name, "arch": arch, "precision": precision, "b": setup.b, "k": setup.k,
                   "image_size": setup.size}
            rows.append(row)
            try:
                budget.check(f"{name} {precision}")
                say(f"extract: {name} {precision}: bare forward")
                gc.collect()
                if cuda:
                    torch.cuda.empty_cache()
                t_build = time.perf_counter()
                model = build_model(card, card_dir, device=str(device), verify=False)
                sync(device)
                row["build_s"] = time.perf_counter() - t_build
                x = x_cpu.to(device)
                with torch.no_grad(), autocast(device, precision):
                    model(x)
                    if cuda:
                        sync(device)
                        torch.cuda.reset_peak_memory_stats(device)
                    bare = [timed(lambda: model(x), device) for _ in range(3)]
                row["bare_s"] = statistics.median(bare)
                row["bare_img_s"] = setup.b / row["bare_s"]
                if cuda:
                    row["bare_peak_bytes"] = torch.cuda.max_memory_allocated(device)
                row.update(formula_bytes(model, card, x))
                del model, x
                gc.collect()
                if cuda:
                    torch.cuda.empty_cache()
                spec = setup.job_spec(name, precision)
                for shard in (0, 1):
                    budget.check(f"{name} {precision} shard {shard}")
                    say(f"extract: {name} {precision}: extract_shard {shard}")
                    if cuda:
                        torch.cuda.reset_peak_memory_stats(device)
                    row[f"shard{shard}_s"] = timed(lambda: extract_shard(spec, shard), device)
                    if cuda:
                        row[f"shard{shard}_peak_bytes"] = torch.cuda.max_memory_allocated(device)
                    row[f"shard{shard}_file_bytes"] = Path(spec["out"].format(shard=shard)).stat().st_size
                # what extract_shard spent after its provenance's "seconds" (taken once the loop, the
                # checkpoint's hash and the provenance are done): the shard's HDF5 write, fsync included
                row["shard1_write_s"] = row["shard1_s"] - shard_seconds(Path(spec["out"].format(shard=1)))
                tf32 = setup.job_spec(name, precision, gram_precision="tf32")
                budget.check(f"{name} {precision} shard 1, TF32 Grams")
                say(f"extract: {name} {precision}: extract_shard 1 with extraction.gram_precision tf32")
                row["shard1_tf32_s"] = timed(lambda: extract_shard(tf32, 1), device)
                shutil.rmtree(spec["out_dir"], ignore_errors=True)
                vision = setup.job_spec(name, precision, vision=True)
                if vision.get("taps"):
                    budget.check(f"{name} {precision} vision pass")
                    say(f"extract: {name} {precision}: extract_shard 1 of the vision pass")
                    if cuda:
                        torch.cuda.reset_peak_memory_stats(device)
                    row["vision_shard1_s"] = timed(lambda: extract_shard(vision, 1), device)
                    if cuda:
                        row["vision_shard1_peak_bytes"] = torch.cuda.max_memory_allocated(device)
                    shutil.rmtree(vision["out_dir"], ignore_errors=True)
                    row["taps"] = sorted(vision["taps"])
                kb = setup.k * row["bare_s"]
                row["overhead_pct"] = 100.0 * (row["shard1_s"] / kb - 1.0)
                row["write_pct_of_bare"] = 100.0 * row["shard1_write_s"] / kb
                row["overhead_excl_build_pct"] = 100.0 * ((row["shard1_s"] - row["build_s"]) / kb - 1.0)
                row["overhead_tf32_excl_build_pct"] = 100.0 * ((row["shard1_tf32_s"] - row["build_s"]) / kb - 1.0)
                row["goal_met"] = None if setup.args.smoke else row["overhead_excl_build_pct"] <= GOAL_PCT
                row["goal_met_tf32"] = None if setup.args.smoke else row["overhead_tf32_excl_build_pct"] <= GOAL_PCT
                row["loading_pct_of_bare"] = 100.0 * out["loading_s"] / kb   # the loader alone, same shard
                if "vision_shard1_s" in row:   # one more forward by design: reported, not held to the goal
                    row["vision_over_bare_pct"] = 100.0 * (row["vision_shard1_s"] / kb - 1.0)
            except OverBudget as e:
                row["skipped"] = str(e)
            except Exception as e:   # noqa: BLE001 -- the next model still runs
                row["error"] = f"{type(e).__name__}: {e}"
                row["traceback"] = traceback.format_exc().splitlines()[-8:]
                say(f"extract: {name} {precision} failed: {row['error']}")
    out["rows"] = rows
    if cuda:
        mem["rows"] = [{"model": r["model"], "precision": r["precision"],
                        **{k: r.get(k) for k in ("bare_peak_bytes", "shard0_peak_bytes", "shard1_peak_bytes",
                                                 "vision_shard1_peak_bytes", "params_bytes", "activations_bytes",
                                                 "formula_bytes")},
                        "extract_over_formula": (r["shard1_peak_bytes"] / r["formula_bytes"]
                                                 if r.get("shard1_peak_bytes") and r.get("formula_bytes") else None),
                        "extract_over_bare": (r["shard1_peak_bytes"] / r["bare_peak_bytes"]
                                              if r.get("shard1_peak_bytes") and r.get("bare_peak_bytes") else None)}
                       for r in rows]
    return out


def gram_call(mode: str):
    """seelike.cka.gram(a, center="auto") under the Gram precision `mode` (GRAM_MODES)."""
    import seelike.cka as cka

    if mode in ("highest", "tf32"):     # the config option's own path
        return lambda a: cka.gram(a, center="auto", precision="fp32" if mode == "highest" else "tf32")
    if mode == "bf16":
        return lambda a: cka.gram(a.to(torch.bfloat16), center="auto")
    return lambda a: cka.gram(a, center="auto", precision="medium")


@contextlib.contextmanager
def medium_precision():
    """Let cka.gram(precision="medium") run under torch.set_float32_matmul_precision("medium")."""
    import seelike.cka as cka
    from seelike.runtime import full_fp32

    original = cka.gram_matmul

    @contextlib.contextmanager
    def ctx(precision="fp32", device="cpu"):
        with full_fp32():
            torch.set_float32_matmul_precision("medium" if precision == "medium" else "highest")
            yield

    cka.gram_matmul = ctx
    try:
        yield
    finally:
        cka.gram_matmul = original


def float64_gram(a: torch.Tensor) -> torch.Tensor:
    """Reference: the Gram of the minibatch-centred features, centred and multiplied in float64."""
    from seelike.cka import flat_features

    f = flat_features(a).to(torch.float64)
    f = f - f.mean(dim=0)
    return f @ f.T


def cka_matrix(grams: list) -> np.ndarray:
    from seelike.cka import cka_from_minibatch_hsic, hsic_all_pairs

    g = np.stack([k.cpu().numpy() for k in grams])
    return cka_from_minibatch_hsic(hsic_all_pairs(g, "unbiased")[None]).cka


def run_grams(setup: Setup, budget: Budget) -> dict:
    from seelike.models import LayerTaps, build_model
    from seelike.runtime import full_fp32

    device, cuda = setup.device, setup.device.type == "cuda"
    x_cpu = setup.minibatch()
    rows = []
    for name in setup.models:
        budget.check(f"grams of {name}")
        say(f"grams: {name}")
        card, card_dir = setup.card(name)
        model = build_model(card, card_dir, device=str(device), verify=False)
        with torch.no_grad(), full_fp32(), LayerTaps(model, card.layers, card.num_prefix_tokens) as taps:
            model(x_cpu.to(device))
            acts = dict(taps.outputs)
            taps.clear()
        del model, taps
        ref = cka_matrix([float64_gram(a) for a in acts.values()])
        for mode in GRAM_MODES:
            call = gram_call(mode)
            with medium_precision() if mode == "medium" else contextlib.nullcontext():
                call(next(iter(acts.values())))          # warm-up
                grams = []
                t = timed(lambda: grams.extend(call(a) for a in acts.values()), device)
            err = np.abs(cka_matrix(grams) - ref)
            rows.append({"model": name, "mode": mode, "layers": len(acts), "b": setup.b, "gram_s": t,
                         "max_abs_cka_error": float(np.nanmax(err)), "mean_abs_cka_error": float(np.nanmean(err)),
                         "applies": cuda or mode in ("highest", "bf16")})
        del acts
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    note = None if cuda else "on CPU TF32 does not exist: tf32 and medium run the code path, their numbers are highest's"
    return {"rows": rows, "note": note}


def run_loading(setup: Setup, budget: Budget, extract: dict) -> dict:
    from torch.utils.data import DataLoader
    from bench_loading import folder_card, write_jpegs
    from seelike.data import ImageFolderDataset, timm_eval_transform
    from seelike.models import ModelCard
    from seelike.runtime import job_cpus

    n = 32 if setup.args.smoke else 512
    tmp = setup.workdir / "jpegs"
    root = write_jpegs(tmp / "folder", n, (500, 375))
    card = ModelCard.load(folder_card(tmp / "models", "vit", "vit_base_patch16_224", {"num_classes": 10}))
    ds = ImageFolderDataset(root, transform=timm_eval_transform(card.pretrained_cfg))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)          # as in a loader worker
    try:
        ds[0]
        t = time.perf_counter()
        for i in range(len(ds)):
            ds[i]
        per_worker = n / (time.perf_counter() - t)
    finally:
        torch.set_num_threads(threads)
    budget.check("the DataLoader measurement")
    workers = job_cpus()
    # small batches, so that every worker decodes at least 4 of them (the workers' start-up included)
    b = max(1, n // (4 * workers))
    t = time.perf_counter()
    for _ in DataLoader(ds, batch_size=b, num_workers=workers, pin_memory=setup.device.type == "cuda"):
        pass
    loader = n / (time.perf_counter() - t)
    shutil.rmtree(tmp, ignore_errors=True)
    fwd = {r["model"]: r.get("bare_img_s") for r in extract.get("rows", []) if r["precision"] == "bf16"}
    return {"images": n, "decode_img_s_per_worker": per_worker, "workers": workers, "loader_batch": b,
            "loader_img_s": loader,
            "bf16_forward_img_s": fwd,
            "workers_needed": {m: (v / per_worker if v else None) for m, v in fwd.items()}}


# ----------------------------------------------------------------------------- the workflow run

def workflow_config(smoke: bool, device: str) -> dict:
    import yaml

    if smoke:
        return {
            "run_name": "gpu_check_smoke", "device": device, "precision": "fp32",
            "datasets": {"synth": {"kind": "synthetic", "n_classes": 10, "image_size": 16, "seed": 0,
                                   "splits": {"train": 256, "test": 64, "analysis": 32}}},
            "models": {"vit": {"arch": "vit_tiny_patch16_224", "source": {"kind": "recipe"},
                               "kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2,
                                          "mlp_ratio": 2.0, "num_classes": 10},
                               "recipe": {"dataset": "synth", "epochs": 1, "batch_size": 32, "lr": 0.002}}},
            "analysis": {"dataset": "synth", "n_examples": 32, "seed": 0},
            "extraction": {"minibatches_per_shard": 2, "full_tokens": 4},
            "cka": {"minibatch_size": 16},
            # inline: on 2 CPU cores a job process's start-up would cost more than the whole smoke workflow's
            # work; the model step resumes the saved state the same way in either process
            "executor": {"default": "inline", "resources": {"cpus": 1}},
        }
    demo = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    models = {m: demo["models"][m] for m in ("vit", "resnet", "mixer")}
    for m in models.values():
        m["recipe"]["epochs"] = min(m["recipe"]["epochs"], 2)
    return {
        "run_name": "gpu_check", "device": device, "precision": "fp32",
        "datasets": {"synth": demo["datasets"]["synth"]}, "models": models,
        "analysis": dict(demo["analysis"]), "extraction": {"minibatches_per_shard": 4, "full_tokens": 16},
        "analyses": gpu_workflow_analyses(demo["analyses"], set(models)),
        "cka": {"minibatch_size": 64, "pairs": [["vit", "resnet"], ["vit", "mixer"]]},
        "executor": {"default": "local", "resources": {"cpus": 4}},
    }


def render_training_data(cfg: dict, name: str) -> None:
    """Render model `name`'s training and test splits into the working directory, as its render jobs do."""
    from seelike import cli, specs

    recipe = cfg["models"][name]["recipe"]
    for split in specs.model_rendered(cfg, name):
        dataset = (recipe.get("test_dataset") if split == "test" else None) or recipe["dataset"]
        cli.step_render(specs.render_spec(cfg, dataset, split))


def training_steps(raw: dict, spec: dict) -> int:
    """The optimizer steps of `spec`'s recipe on the synthetic training split (train.train_model's count)."""
    steps_per_epoch = max(1, raw["datasets"]["synth"]["splits"]["train"] // spec["recipe"]["batch_size"])
    return int(round(spec["recipe"]["epochs"] * steps_per_epoch))


def run_fp16(setup_args, device: torch.device, workdir: Path, budget: Budget) -> dict:
    """The workflow's ViT trained with `precision: fp16`, interrupted halfway by the scheduler's signal,
    then resumed as a requeued job resumes it: on CUDA the saved state must hold the GradScaler's loss
    scale (train.training_state) and the resumed run start from it; on a CPU fp16 autocast runs as bf16
    and no scaler exists, so the state must hold none."""
    import io

    from seelike import config as sc, specs, train

    raw = workflow_config(setup_args.smoke, "cuda" if device.type == "cuda" else "cpu")
    raw["precision"] = "fp16"
    cfg = sc.load(raw, check_timm=False)
    run = workdir / "fp16"
    run.mkdir(parents=True, exist_ok=True)
    cwd = os.getcwd()
    os.chdir(run)
    try:
        say("fp16: render the ViT's splits")
        render_training_data(cfg, "vit")
        spec = specs.model_spec(cfg, "vit")
        total = training_steps(raw, spec)
        say(f"fp16: train 'vit' in fp16 until a scheduler signal at step {total // 2} of {total}")
        saved_at = interrupted_training(spec, total // 2)
        state = torch.load(Path(spec["out_dir"]) / train.STATE_FILE, weights_only=False, map_location="cpu")
        scaler = state.get("scaler")
        budget.check("the resumed fp16 training")
        say("fp16: resume it")
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            metrics = train.train_model(spec)
    finally:
        os.chdir(cwd)
    resumed = f"at step {saved_at}/{total}" in log.getvalue()
    expected = device.type == "cuda"
    acc = float(metrics["test_accuracy"])
    return {"precision": "fp16", "train_steps": total, "signal_at_step": total // 2, "state_saved_at_step": saved_at,
            "scaler_saved": scaler is not None, "scaler_expected": expected,
            "loss_scale_at_save": None if scaler is None else float(scaler["scale"]),
            "resumed_from_saved_state": resumed, "test_accuracy": acc, "chance": float(metrics["chance"]),
            "ok": resumed and (scaler is not None) == expected and math.isfinite(acc)}


def gpu_workflow_analyses(demo: dict, models: set[str]) -> dict:
    """config/demo.yaml's analyses on the models the GPU workflow trains: every vision tap (attention
    distances and maps, per-head outputs, receptive fields' input gradients, norm ratios, localization
    Grams) and the checkpoint views run on the device. An analysis none of whose models is trained is
    left out; a `less_data` model that is not trained is dropped."""
    out = {}
    for name, settings in demo.items():
        settings = dict(settings)
        if isinstance(settings.get("models"), list):
            settings["models"] = [m for m in settings["models"] if m in models]
            if not settings["models"]:
                continue
        if "less_data" in settings:
            settings["less_data"] = [m for m in settings["less_data"] if m in models]
        if settings.get("cnn") not in (None, "auto") and settings["cnn"] not in models:
            continue
        out[name] = settings
    return out


def interrupted_training(spec: dict, stop_at: int) -> int:
    """Train `spec` until the scheduler's signal (SIGUSR2) arrives at step `stop_at`, as
    tests/test_train_folder.py simulates it: training saves its state and hands the signal on, here to a
    handler that ends the run. Returns the step the saved state holds."""
    from seelike import train

    class Preempted(Exception):
        pass

    def preempted(signum, frame):
        raise Preempted()

    lr_at = train.lr_at

    def signal_at(step, *rest):
        if step == stop_at:
            os.kill(os.getpid(), signal.SIGUSR2)
        return lr_at(step, *rest)

    old = signal.signal(signal.SIGUSR2, preempted)
    train.lr_at = signal_at
    try:
        train.train_model(spec)
    except Preempted:
        pass
    else:
        raise RuntimeError(f"training of '{spec['name']}' finished before the signal at step {stop_at}")
    finally:
        train.lr_at = lr_at
        signal.signal(signal.SIGUSR2, old)
    state = torch.load(Path(spec["out_dir"]) / train.STATE_FILE, weights_only=False, map_location="cpu")
    return int(state["step"])


def run_workflow(setup_args, device: torch.device, workdir: Path, budget: Budget) -> dict:
    from safetensors.numpy import load_file
    from seelike import config as sc, paths, specs

    raw = workflow_config(setup_args.smoke, "cuda" if device.type == "cuda" else "cpu")
    run = workdir / "workflow"
    run.mkdir(parents=True, exist_ok=True)
    cfgfile = run / "config.yaml"
    cfgfile.write_text(json.dumps(raw))
    # snakemake as a module of this interpreter: its console script may not be on a PATH this process can
    # derive (wheels installed with pip --target on a GPU node without internet, benchmarks/gpu_node.sh)
    exe = [sys.executable, "-m", "snakemake"]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    # as many jobs at once as the machine has cores for at the jobs' own threads (resources.cpus)
    cores = str(max(1, min(os.cpu_count() or 1, 16) // int(raw["executor"]["resources"]["cpus"])))

    def snakemake(*extra):
        left = budget.left()
        if left <= 5:
            raise OverBudget("time budget spent before the workflow's next Snakemake call")
        cmd = [*exe, "-s", str(ROOT / "workflow" / "Snakefile"), "--directory", str(run), "--configfile",
               str(cfgfile), "--cores", cores, *extra]
        t = time.perf_counter()
        # a session of its own: on timeout Snakemake and every job it started (local jobs outlive a killed
        # parent) are stopped together, before the work folder is removed under them
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=left)
        except subprocess.TimeoutExpired:
            for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                try:
                    proc.communicate(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
            raise OverBudget(f"the workflow ran past the time budget (stopped after {left:.0f} s)") from None
        if proc.returncode != 0:
            raise RuntimeError(f"snakemake {' '.join(extra)} failed ({proc.returncode}):\n"
                               f"{out[-2000:]}\n{err[-3000:]}")
        return time.perf_counter() - t

    cfg = sc.load(raw, check_timm=False)
    cwd, threads = os.getcwd(), torch.get_num_threads()
    os.chdir(run)
    try:
        from seelike import train

        say("workflow: render the ViT's training and test splits (what its render jobs run)")
        t = time.perf_counter()
        render_training_data(cfg, "vit")
        t_render = time.perf_counter() - t
        spec = specs.model_spec(cfg, "vit")
        total = training_steps(raw, spec)
        # the torch threads of the workflow's training job (resources.cpus): CPU sums then add up alike
        torch.set_num_threads(int(raw["executor"]["resources"]["cpus"]))
        say(f"workflow: train 'vit' until a scheduler signal at step {total // 2} of {total}")
        saved_at = interrupted_training(spec, total // 2)
        say("workflow: an uninterrupted training of the same recipe, for the weights")
        budget.check("the uninterrupted reference training")
        train.train_model(dict(spec, out_dir=str(workdir / "reference_vit")))
    finally:
        torch.set_num_threads(threads)
        os.chdir(cwd)
    say("workflow: the whole workflow (resumes 'vit')")
    t_run = snakemake()
    text = (run / paths.log(paths.model_dir("vit"))).read_text()     # the model rule's log
    resumed = "resuming 'vit' from" in text and f"at step {saved_at}/{total}" in text
    a = load_file(str(workdir / "reference_vit" / "weights.safetensors"))
    b = load_file(str(run / paths.model_dir("vit") / "weights.safetensors"))
    diff = max(float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)))) for k in a)
    targets = [t for t in specs.final_targets(cfg) if not (run / t).is_file()]
    card = json.loads((run / paths.card("vit")).read_text())
    return {"device": raw["device"], "models": list(raw["models"]), "train_steps": total, "signal_at_step": total // 2,
            "state_saved_at_step": saved_at, "resumed_from_saved_state": resumed,
            "weights_max_abs_diff_vs_uninterrupted": diff, "weights_identical": diff == 0.0,
            # bit-equal weights are expected on a CPU; on a GPU, non-deterministic kernels (cuDNN's
            # convolution backward, atomics) may leave differences of float32 rounding that training grows
            "weights_identical_expected": device.type != "cuda",
            "missing_targets": targets, "render_s": t_render, "workflow_s": t_run,
            "card_cuda": (card.get("provenance") or {}).get("cuda"),
            "ok": resumed and not targets}


# ----------------------------------------------------------------------------- report

def gb(v) -> str:
    return f"{v / 1e9:.2f}" if isinstance(v, (int, float)) else "-"


def fmt(v, spec: str) -> str:
    return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def shard_seconds(path: Path) -> float:
    """The "seconds" extract_shard records in a shard's provenance: its time up to the HDF5 write."""
    import h5py

    with h5py.File(path, "r") as f:
        return float(json.loads(f.attrs["provenance"])["seconds"])


def print_report(results: dict) -> None:
    ex = results.get("extract")
    if ex:
        print(f"\nextract (status {ex['status']}): extract_shard of a k-minibatch shard against k bare forwards")
        print(f"{'model':<10} {'prec':<5} {'b':>4} {'bare img/s':>10} {'shard0 s':>9} {'shard1 s':>9} {'build s':>8} "
              f"{'overhead':>9} {'excl build':>10} {'tf32 Grams':>10} {'write':>7} {'loader':>8} {'vision':>8}"
              f"  goal <=25% (fp32; tf32)")
        for r in ex.get("rows", []):
            state = r.get("error") or r.get("skipped")
            if state:
                print(f"{r['model']:<10} {r['precision']:<5} {r['b']:>4}  {state[:90]}")
                continue
            goal = "n/a (smoke)" if r["goal_met"] is None else "; ".join(
                "met" if r[k] else "NOT met" for k in ("goal_met", "goal_met_tf32"))
            print(f"{r['model']:<10} {r['precision']:<5} {r['b']:>4} {r['bare_img_s']:>10.1f} {r['shard0_s']:>9.2f} "
                  f"{r['shard1_s']:>9.2f} {r['build_s']:>8.2f} {r['overhead_pct']:>8.1f}% "
                  f"{r['overhead_excl_build_pct']:>9.1f}% {r['overhead_tf32_excl_build_pct']:>9.1f}% "
                  f"{r['write_pct_of_bare']:>6.1f}% {r['loading_pct_of_bare']:>7.1f}% "
                  f"{fmt(r.get('vision_over_bare_pct'), '.1f'):>7}%  {goal}")
        print(f"loader: extraction's own data loader ({ex.get('loader')}) handing one shard's minibatches to the "
              f"device alone, {fmt(ex.get('loading_s'), '.2f')} s, as % of the k bare forwards")
        print("tf32 Grams: shard 1 again with extraction.gram_precision tf32, excluding the build")
        print("write: shard 1's HDF5 write (after the provenance's 'seconds'), part of 'overhead', as % of the "
              "k bare forwards")
        print("vision: shard 1 of the model's vision pass (every paper tap, receptive fields in shard 0 only) "
              "over k bare forwards - 1")
    mem = results.get("memory")
    if mem:
        print(f"\nmemory (status {mem['status']}{': ' + mem['reason'] if mem.get('reason') else ''})")
    if mem and mem.get("rows"):
        print(f"{'model':<10} {'prec':<5} {'bare GB':>8} {'extract GB':>10} {'vision GB':>9} {'formula GB':>10} "
              f"{'extract/formula':>15} {'extract/bare':>12}")
        for r in mem["rows"]:
            print(f"{r['model']:<10} {r['precision']:<5} {gb(r['bare_peak_bytes']):>8} {gb(r['shard1_peak_bytes']):>10} "
                  f"{gb(r.get('vision_shard1_peak_bytes')):>9} {gb(r['formula_bytes']):>10} "
                  f"{fmt(r['extract_over_formula'], '.2f'):>15} {fmt(r['extract_over_bare'], '.2f'):>12}")
    gr = results.get("grams")
    if gr:
        print(f"\ngrams (status {gr['status']}): seelike.cka.gram per matmul precision, one minibatch, every layer"
              + (f"; {gr['note']}" if gr.get("note") else ""))
    if gr and gr.get("rows"):
        print(f"{'model':<10} {'mode':<8} {'layers':>6} {'Grams s':>9} {'max |dCKA|':>11} {'mean |dCKA|':>11}")
        for r in gr["rows"]:
            print(f"{r['model']:<10} {r['mode']:<8} {r['layers']:>6} {r['gram_s']:>9.4f} {r['max_abs_cka_error']:>11.2e} "
                  f"{r['mean_abs_cka_error']:>11.2e}" + ("" if r["applies"] else "  (n/a on CPU)"))
    ld = results.get("loading")
    if ld and ld["status"] == "ok":
        print(f"\nloading (status ok): decode + transform per worker {ld['decode_img_s_per_worker']:.1f} img/s; "
              f"DataLoader with {ld['workers']} workers {ld['loader_img_s']:.1f} img/s")
        for m, v in ld["bf16_forward_img_s"].items():
            print(f"  {m}: bf16 forward {fmt(v, '.1f')} img/s -> {fmt(ld['workers_needed'][m], '.1f')} workers to keep up")
    wf = results.get("workflow")
    if wf and wf["status"] == "ok":
        print(f"\nworkflow (status ok): device {wf['device']}, models {', '.join(wf['models'])}: signal at step "
              f"{wf['signal_at_step']}/{wf['train_steps']}, state saved at {wf['state_saved_at_step']}, resumed: "
              f"{wf['resumed_from_saved_state']}, weights vs uninterrupted max |diff| "
              f"{wf['weights_max_abs_diff_vs_uninterrupted']:.3g}"
              f"{'' if wf.get('weights_identical_expected', True) else ' (GPU: 0 not expected)'}, missing targets: {len(wf['missing_targets'])}, "
              f"workflow {wf['workflow_s']:.0f} s")
    fp = results.get("fp16")
    if fp and fp["status"] == "ok":
        print(f"\nfp16 (status ok): signal at step {fp['signal_at_step']}/{fp['train_steps']}, state saved at "
              f"{fp['state_saved_at_step']}, loss scale saved: {fp['scaler_saved']} "
              f"({'expected' if fp['scaler_expected'] else 'none expected: no GradScaler off CUDA'}"
              f"{'' if fp['loss_scale_at_save'] is None else ', scale ' + format(fp['loss_scale_at_save'], 'g')}), "
              f"resumed: {fp['resumed_from_saved_state']}, test accuracy {fp['test_accuracy']:.3f} "
              f"(chance {fp['chance']:.3f})")
    print()
    for name, r in results.items():
        if r.get("status") in ("error", "skipped"):
            print(f"{name}: {r['status']}: {r.get('error') or r.get('reason')}")


def dev_shm_bytes() -> int | None:
    """Size of /dev/shm, through which DataLoader workers hand their batches over (None where absent)."""
    try:
        return shutil.disk_usage("/dev/shm").total
    except OSError:
        return None


#: /dev/shm below this (bytes) is reported before the run: each loader worker holds 2 minibatches of
#: 154 MB (b = 256, 224 px) there, and a worker short of it dies with a bus error
DEV_SHM_WARN = 4 << 30


def machine(device: torch.device) -> dict:
    from seelike.runtime import job_cpus

    meta = {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor() or
            platform.machine(), "cpu_count": os.cpu_count(), "job_cpus": job_cpus(), "device": str(device),
            "host": platform.node(), "dev_shm_bytes": dev_shm_bytes()}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        meta.update(gpu=p.name, gpu_memory_bytes=p.total_memory, capability=f"{p.major}.{p.minor}",
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return meta


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny models on CPU: the same code paths, well under a minute")
    ap.add_argument("--budget-s", type=float, default=None, help="start no measurement after this (420; --smoke 150)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {', '.join(SECTIONS)}")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--keep", action="store_true", help="keep the working directory")
    ap.add_argument("--out", type=Path, default=None, help="JSON (default benchmarks/out/gpu_check[_smoke].json)")
    args = ap.parse_args(argv)
    out = args.out or OUT / ("gpu_check_smoke.json" if args.smoke else "gpu_check.json")
    budget = Budget(args.budget_s or (150.0 if args.smoke else 420.0))
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(SECTIONS))
    if unknown:
        ap.error(f"unknown section(s) {unknown}; sections: {', '.join(SECTIONS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    retain_freed_memory()
    if args.smoke:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        print("gpu_check: no CUDA device is visible; run with --smoke for the CPU code paths", file=sys.stderr)
        return 2
    shm = dev_shm_bytes()
    if device.type == "cuda" and shm is not None and shm < DEV_SHM_WARN:
        say(f"warning: /dev/shm holds {shm / 2**30:.2f} GiB; the loader's workers pass their minibatches through "
            f"it (2 x 154 MB each at b = 256, 224 px) and die with a bus error when it is full: a container "
            f"needs --shm-size (or extraction.num_workers lower)")
    results: dict = {}

    def saved(complete: bool = False) -> dict:
        meta = dict(machine(device), smoke=args.smoke, budget_s=budget.seconds, total_wall_s=budget.elapsed(),
                    sections=wanted, date=time.strftime("%Y-%m-%d"), complete=complete)
        write_json_atomic(out, {"meta": meta, "results": results}, indent=1, nan_as_null=True)
        return meta

    cwd = os.getcwd()
    workdir = Path(tempfile.mkdtemp(prefix="seelike-gpu-check-"))
    try:
        setup = None
        if {"extract", "memory", "grams", "loading"} & set(wanted):
            def make_setup():
                nonlocal setup
                setup = Setup(args, device, workdir)
                return {"models": {k: v[0] for k, v in setup.models.items()}, "b": setup.b, "k": setup.k,
                        "image_size": setup.size}
            section(results, "setup", budget, make_setup, saved=saved)
        mem: dict = {}
        if setup is not None:
            if "extract" in wanted or "memory" in wanted:
                section(results, "extract", budget, run_extract, setup, budget, {}, mem, saved=saved)
            if "memory" in wanted:
                if device.type != "cuda":
                    results["memory"] = {"status": "skipped", "reason": "CUDA only: torch.cuda.max_memory_allocated "
                                         "measures GPU memory; this run is on CPU"}
                else:
                    results["memory"] = {"status": results["extract"]["status"], **mem}
            if "grams" in wanted:
                section(results, "grams", budget, run_grams, setup, budget, saved=saved)
            if "loading" in wanted:
                section(results, "loading", budget, run_loading, setup, budget, results.get("extract", {}), saved=saved)
        if "workflow" in wanted:
            os.chdir(cwd)
            section(results, "workflow", budget, run_workflow, args, device, workdir, budget, saved=saved)
        if "fp16" in wanted:
            os.chdir(cwd)
            section(results, "fp16", budget, run_fp16, args, device, workdir, budget, saved=saved)
    finally:
        os.chdir(cwd)
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    meta = saved(complete=True)
    print_report(results)
    print(f"\nwrote {out} ({meta['total_wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
