"""Shared fixtures: the real SLURM test cluster, small workflow configs, a Snakemake runner."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = ROOT / "workflow" / "Snakefile"

# Tests never reach the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SEELIKE_CACHE", str(Path(os.environ.get("TMPDIR", "/tmp")) / "seelike-test-cache"))


def _load_cluster_module():
    name = "seelike_tests_slurm_cluster"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parent / "slurm" / "cluster.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def slurm_required() -> bool:
    """In CI (root, apt) the cluster tests must run: unavailability fails instead of skipping."""
    if os.environ.get("SEELIKE_REQUIRE_SLURM", "") not in ("", "0"):
        return True
    return os.environ.get("CI", "") not in ("", "0", "false") and os.geteuid() == 0


@pytest.fixture(scope="session")
def slurm_cluster():
    mod = _load_cluster_module()
    try:
        info = mod.ensure_cluster()
    except mod.ClusterUnavailable as exc:
        if slurm_required():
            pytest.fail(f"SLURM test cluster unavailable: {exc.reason}\n{exc.output}")
        pytest.skip(f"SLURM test cluster unavailable: {exc.reason}")
    print(f"\nSLURM test cluster ready in {info.start_seconds:.1f} s (started here: {info.started_here})")
    yield info
    if info.started_here and not mod.keep_cluster():
        mod.stop_cluster()


def tiny_config(**overrides) -> dict:
    """A workflow config small enough for a test: 16 px images, two-block models, one epoch."""
    cfg = {
        "run_name": "tiny", "device": "cpu", "precision": "fp32",
        "datasets": {"synth": {"kind": "synthetic", "n_classes": 10, "image_size": 16, "seed": 0,
                               "splits": {"train": 512, "test": 128, "analysis": 64}}},
        "models": {
            "vit": {"arch": "vit_tiny_patch16_224", "source": {"kind": "recipe"},
                    "kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2,
                               "mlp_ratio": 2.0, "num_classes": 10},
                    "recipe": {"dataset": "synth", "epochs": 1, "batch_size": 64, "lr": 0.002}},
            "resnet": {"arch": "resnet18", "source": {"kind": "recipe"},
                       "kwargs": {"num_classes": 10, "channels": [8, 16, 32, 64]},
                       "recipe": {"dataset": "synth", "epochs": 1, "batch_size": 64, "lr": 0.002}},
            "mixer": {"arch": "seelike_mixer", "source": {"kind": "recipe"},
                      "kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "num_blocks": 2, "num_classes": 10},
                      "recipe": {"dataset": "synth", "epochs": 1, "batch_size": 64, "lr": 0.002}},
        },
        "analysis": {"dataset": "synth", "n_examples": 64, "seed": 0},
        "extraction": {"minibatches_per_shard": 2, "full_tokens": 4},
        "cka": {"minibatch_size": 16},
        "executor": {"default": "local"},
    }
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def snakemake(workdir: Path, configfile: Path, *args, check=True, timeout=900,
              snakefile: Path = SNAKEFILE) -> subprocess.CompletedProcess:
    """Run the real workflow with the installed snakemake, in `workdir`."""
    exe = shutil.which("snakemake") or str(Path(sys.executable).parent / "snakemake")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    env.pop("TQDM_DISABLE", None)   # set by benchmark modules some tests import; the workflow draws its bars
    cmd = [exe, "-s", str(snakefile), "--directory", str(workdir), "--configfile", str(configfile), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="session")
def tiny_local_run(tmp_path_factory):
    """The tiny workflow run once with the local executor; tests read its results."""
    workdir = tmp_path_factory.mktemp("tiny_local")
    cfgfile = write_config(workdir / "tiny.yaml", tiny_config(executor={"default": "local", "resources": {"cpus": 1}}))
    snakemake(workdir, cfgfile, "--cores", "2")
    return workdir, cfgfile


def write_image_names(root: Path, n_classes: int, per_class: int, ext: str = ".JPEG") -> Path:
    """An image folder of empty files named like images (`root/c0000/00000.JPEG`, ...): the config
    checks count by name and never decode, so empty files stand for images."""
    for c in range(n_classes):
        d = root / f"c{c:04d}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            os.close(os.open(d / f"{i:05d}{ext}", os.O_CREAT | os.O_WRONLY))
    root.mkdir(parents=True, exist_ok=True)
    return root
