"""benchmarks/bench_extract.py: --configs takes the names of every config table (the opt-in 224 px ones
included) and refuses an unknown name, naming it and the choices, before any model is built."""
from __future__ import annotations

import sys

import pytest
import timm

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))


@pytest.fixture
def bench_extract(monkeypatch):
    """The script as a module; the TQDM_DISABLE it sets for itself on import does not outlive the test."""
    monkeypatch.setenv("TQDM_DISABLE", "1")
    import bench_extract
    return bench_extract


def test_every_config_names_a_timm_or_seelike_architecture(bench_extract):
    tables = {**bench_extract.FULL, **bench_extract.PAPER_SIZE, **bench_extract.QUICK}
    assert len(tables) == len(bench_extract.FULL) + len(bench_extract.PAPER_SIZE) + len(bench_extract.QUICK)
    for name, (arch, kwargs, size, k, repeats) in tables.items():
        assert timm.is_model(arch) or arch.startswith("seelike_"), name
        assert size > 0 and k >= 1 and repeats >= 1, name
    assert {a for a, *_ in bench_extract.PAPER_SIZE.values()} == {"resnet50", "resnetv2_50x1_bit"}
    assert all(size == 224 for _, _, size, _, _ in bench_extract.PAPER_SIZE.values())


def test_unknown_config_is_refused_by_name(bench_extract, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        bench_extract.main(["--configs", "resnet50_224,resnet50_225", "--out", str(tmp_path / "x.json")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unknown resnet50_225" in err and "bit_r50x1_224" in err and "resnet18_32" in err
    assert not (tmp_path / "x.json").exists()
