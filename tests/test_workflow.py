"""The real workflow: DAGs of both shipped configs, bad configs through Snakemake, a small end-to-end run."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import ROOT, snakemake, tiny_config, write_config


def planned_jobs(proc) -> dict:
    """Job counts per rule from a dry run's summary table."""
    counts = {}
    table = proc.stdout.split("Job stats:")[-1] if "Job stats:" in proc.stdout else ""
    for line in table.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    return counts


def test_demo_dag_builds(tmp_path):
    proc = snakemake(tmp_path, ROOT / "config" / "demo.yaml", "-n", "--quiet", "rules")
    jobs = planned_jobs(proc)
    assert jobs == {"all": 1, "plan": 1, "model": 3, "extract": 3, "cka": 6, "figure_f1": 3, "figure_f2": 3,
                    "figure_f14": 1}, proc.stdout


def test_paper_dag_builds(tmp_path):
    images = tmp_path / "val"
    (images / "n01440764").mkdir(parents=True)
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["datasets"]["imagenet_val"]["root"] = str(images)
    proc = snakemake(tmp_path, write_config(tmp_path / "paper.yaml", cfg), "-n", "--quiet", "rules")
    jobs = planned_jobs(proc)
    n_models = len(cfg["models"])
    assert jobs["model"] == n_models and jobs["extract"] == n_models and jobs["figure_f1"] == n_models
    assert jobs["figure_f2"] == len(cfg["cka"]["pairs"])
    assert jobs["figure_f14"] == 2  # two Mixers
    # within-model tables + configured pairs + the Mixer panels' pairs not configured already
    assert jobs["cka"] >= n_models + len(cfg["cka"]["pairs"])


@pytest.mark.parametrize("override, key", [
    ({"cka": {"minibatch_size": 3}, "analysis": {"dataset": "synth", "n_examples": 9}}, "cka.minibatch_size"),
    ({"models": {"vit": {"arch": "not_a_timm_model", "source": {"kind": "recipe"},
                         "recipe": {"dataset": "synth"}}}}, "models.vit.arch"),
    ({"datasets": {"synth": {"kind": "imagefolder", "root": "/nonexistent/imagenet/val"}}}, "datasets.synth.root"),
    ({"extraction": {"full_tokens": "many"}}, "extraction.full_tokens"),
])
def test_bad_config_gets_one_clear_message(tmp_path, override, key):
    cfg = tiny_config(**override)
    proc = snakemake(tmp_path, write_config(tmp_path / "bad.yaml", cfg), "-n", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"config key {key}" in out, out
    assert "Traceback" not in out, out


@pytest.mark.slow
def test_end_to_end_tiny_workflow(tmp_path):
    cfgfile = write_config(tmp_path / "tiny.yaml", tiny_config())
    snakemake(tmp_path, cfgfile, "--cores", "2")
    res = tmp_path / "results"
    for name in ("vit", "resnet", "mixer"):
        card = json.loads((res / "models" / name / "card.json").read_text())
        assert card["metrics"]["test_accuracy"] >= 0.0 and card["sha256"]
        manifest = json.loads((res / "extract" / "synth" / name / "manifest.json").read_text())
        assert len(manifest["shards"]) == 2 and manifest["layers"] == [l["name"] for l in card["layers"]]
        table = pd.read_csv(res / "cka" / "synth" / f"{name}__{name}.csv")
        diag = table[table.index_x == table.index_y]
        np.testing.assert_allclose(diag.cka, 1.0, atol=1e-9)
        assert (table.status == "ok").all() and table.se.notna().all()
        for fmt in ("pdf", "png"):
            assert (res / "figures" / "F1" / f"{name}.{fmt}").stat().st_size > 1000
    cross = pd.read_csv(res / "cka" / "synth" / "vit__resnet.csv")
    assert len(cross) == 2 * 8 and cross.cka.between(-0.05, 1.0001).all()
    assert (res / "figures" / "F14" / "mixer.png").is_file()
    assert (res / "figures" / "F2" / "vit__resnet.png.prov.json").is_file()
    # Nothing left to do, and the report builds with a caption for every figure.
    again = snakemake(tmp_path, cfgfile, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr
    snakemake(tmp_path, cfgfile, "--report", str(tmp_path / "report.html"))
    html = (tmp_path / "report.html").read_text(errors="replace")
    assert "F1 within-model CKA" in html and "F14 MLP-Mixer CKA" in html
