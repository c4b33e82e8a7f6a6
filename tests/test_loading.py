"""Extraction's data loader: workers default to the job's CPUs (none for in-memory items on a CPU),
pinned memory and prefetch on CUDA, and extraction gives the same shard whatever the worker count."""
from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
import torch

from seelike import runtime
from seelike.data import open_dataset, reads_from_memory


def test_job_cpus_is_what_the_job_was_given(monkeypatch):
    allowed = len(os.sched_getaffinity(0))
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert runtime.job_cpus() == allowed                              # the CPUs the process may run on
    monkeypatch.setenv("OMP_NUM_THREADS", "1")                        # the step's resources.cpus
    assert runtime.job_cpus() == 1
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", str(allowed))           # SLURM's --cpus-per-task wins
    assert runtime.job_cpus() == allowed
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", str(allowed + 64))      # never more than the process may use
    assert runtime.job_cpus() == allowed


def test_loader_options(monkeypatch):
    monkeypatch.setattr(runtime, "job_cpus", lambda: 6)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert runtime.loader_options(cpu, "auto", reads_from_memory=False) == {"num_workers": 6, "pin_memory": False}
    assert runtime.loader_options(cpu, "auto", reads_from_memory=True) == {"num_workers": 0, "pin_memory": False}
    assert runtime.loader_options(cuda, "auto", reads_from_memory=True) == {
        "num_workers": 6, "pin_memory": True, "prefetch_factor": runtime.PREFETCH_BATCHES}
    assert runtime.loader_options(cuda, "auto", reads_from_memory=False, batches=4)["num_workers"] == 4
    assert runtime.loader_options(cuda, 0, reads_from_memory=False) == {"num_workers": 0, "pin_memory": True}
    assert runtime.loader_options(cpu, 3, reads_from_memory=True)["num_workers"] == 3   # as configured
    with pytest.raises(ValueError, match=r"extraction\.num_workers.*auto"):
        runtime.loader_options(cpu, "many", reads_from_memory=False)


def test_reads_from_memory(tmp_path):
    from torch.utils.data import Subset
    from seelike.data import rendered_split_name, write_rendered_split

    cfg = {"kind": "synthetic", "n_classes": 4, "image_size": 16, "seed": 0, "splits": {"train": 0, "test": 0,
                                                                                        "analysis": 8}}
    rendered = write_rendered_split(cfg, "analysis", tmp_path / rendered_split_name(cfg, "analysis"))
    assert reads_from_memory(Subset(open_dataset(cfg, "analysis", rendered=rendered), [0, 1]))
    assert not reads_from_memory(open_dataset(cfg, "analysis"))                          # rendered on the fly
    assert not reads_from_memory(open_dataset(cfg, "analysis", rendered=rendered, transform=lambda im: im))


def test_extraction_is_the_same_with_loader_workers(tmp_path, monkeypatch):
    """Workers change who loads the images, not what is stored: the shard's arrays are identical."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_pipeline import dataset_cfg, extract_spec, make_model_dir
    from seelike.data import dataset_fingerprint, rendered_split_name, write_rendered_split
    from seelike.extract import extract_shard
    from seelike.plan import make_plan

    cfg = dataset_cfg(64)
    rendered = write_rendered_split(cfg, "analysis", tmp_path / rendered_split_name(cfg, "analysis"))
    card = make_model_dir(tmp_path / "models", "vit", "vit_tiny_patch16_224",
                          {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2,
                           "num_classes": 10}, seed=0)
    plan = make_plan(f"synth:{dataset_fingerprint(cfg)}", np.arange(64), 64, 16, 4, 0)
    shards = {}
    for workers in (0, 2):
        spec = extract_spec("vit", card, cfg, plan, tmp_path / f"w{workers}", full_tokens=4, rendered=rendered)
        shards[workers] = extract_shard(dict(spec, num_workers=workers), 0)
    with h5py.File(shards[0], "r") as a, h5py.File(shards[2], "r") as b:
        names = []
        a.visit(lambda n: names.append(n) if isinstance(a[n], h5py.Dataset) else None)
        assert names and sorted(names) == sorted(n for n in names if n in b)
        for n in names:
            np.testing.assert_array_equal(a[n][()], b[n][()], err_msg=n)
