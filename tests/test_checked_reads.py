"""Every step that reads a shard checks it the same way (sha256 against the manifest, structure, plan):
one bit flipped in exactly the dataset a step reads makes that step fail, naming the shard, and the
shard and its manifest are removed so that the next run re-extracts them."""
from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import pytest
import yaml

from conftest import snakemake, write_config

pytestmark = pytest.mark.slow

ANALYSES = {"attention_distance": {"n_images": 32}, "head_cka": {"blocks": 1}, "norm_ratio": {},
            "localization": {}, "snn_loss": {}, "receptive_field": {"n_images": 4, "models": ["resnet"]}}


@pytest.fixture(scope="module")
def tables_run(tiny_local_run, tmp_path_factory):
    """The finished tiny run, plus the shard-reading tables of the vision analyses and the probes."""
    src, cfgfile = tiny_local_run
    run = tmp_path_factory.mktemp("checked") / "run"
    shutil.copytree(src, run, symlinks=True, ignore=shutil.ignore_patterns("locks", "incomplete"))
    cfg = yaml.safe_load(cfgfile.read_text())
    cfg["analyses"] = ANALYSES
    cfg["experiments"] = {"probes": {"models": ["vit", "resnet"], "k_shot": 0, "tokens": False}}
    cfgfile = write_config(run / "checked.yaml", cfg)
    snakemake(run, cfgfile, "--cores", "2", *[t for t, _, _ in CASES.values()])
    return run, cfgfile


# step -> (target table, the extraction whose shard is damaged (a model's Grams' pass, or <model>/vision: its
# vision pass), dataset in that shard the step reads)
CASES = {
    "cka": ("results/cka/synth/vit__resnet.csv", "resnet", "layers/{layer}/gram"),
    "attention_distance": ("results/vision/synth/attention_distance/vit.csv", "vit/vision",
                           "reductions/attention_distance/{block}/minibatch_sums"),
    "head_cka": ("results/vision/synth/head_cka/vit__resnet.csv", "vit/vision", "reductions/heads/{block}/gram"),
    "norm_ratio": ("results/vision/synth/norm_ratio/resnet.csv", "resnet/vision",
                   "reductions/norm_ratio/{unit}/z_norm_sum"),
    "localization": ("results/vision/synth/localization/vit.csv", "vit/vision", "reductions/localization/input/gram"),
    "receptive_field": ("results/vision/synth/receptive_field/resnet.csv", "resnet/vision",
                        "reductions/receptive_field/{layer}/sum"),
    "snn_loss": ("results/vision/synth/snn_loss/vit.csv", "vit", "layers/{layer}/pooled_mean"),
    "probes": ("results/experiments/probes/resnet.csv", "resnet", "layers/{layer}/pooled_mean"),
}


def _dataset(f: h5py.File, pattern: str) -> str:
    """The first dataset of the shard matching a pattern with one {placeholder} for a group name."""
    head, _, tail = pattern.partition("{")
    if not tail:
        return pattern
    tail = tail.partition("}")[2]
    for name in f[head.rstrip("/")]:
        if f"{head}{name}{tail}" in f:
            return f"{head}{name}{tail}"
    raise AssertionError(f"no dataset {pattern} in {f.filename}")


def flip_bit(shard: Path, pattern: str) -> str:
    """Flip one bit in the stored bytes of exactly one dataset; returns its name."""
    with h5py.File(shard, "r") as f:
        name = _dataset(f, pattern)
        offset = f[name].id.get_offset()
        assert offset is not None, f"{name} is not stored contiguously"
    data = bytearray(shard.read_bytes())
    data[offset] ^= 0x01
    shard.write_bytes(bytes(data))
    return name


@pytest.mark.parametrize("step", sorted(CASES))
def test_a_flipped_bit_in_what_a_step_reads_fails_that_step_naming_the_shard(tables_run, tmp_path, step):
    src, cfgfile = tables_run
    run = tmp_path / "run"
    shutil.copytree(src, run, symlinks=True, ignore=shutil.ignore_patterns("locks", "incomplete"))
    target, model, pattern = CASES[step]
    shard = run / "results" / "extract" / "synth" / model / "shard-00000.h5"
    flip_bit(shard, pattern)
    (run / target).unlink()
    proc = snakemake(run, run / cfgfile.name, "--cores", "1", target, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert f"shard '{Path('results/extract/synth') / model / 'shard-00000.h5'}' changed since extraction" in out, \
        out[-3000:]
    assert "run the workflow again to re-extract it" in out
    assert not shard.exists() and not (shard.parent / "manifest.json").exists()
