"""Incremental reruns: each edit plans exactly the jobs that depend on what changed (dry-run summary)."""
from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import snakemake, write_config
from test_workflow import planned_jobs

pytestmark = pytest.mark.slow


@pytest.fixture
def finished_run(tiny_local_run, tmp_path):
    """A private copy of the finished tiny run (results and Snakemake's metadata)."""
    src, cfgfile = tiny_local_run
    dst = tmp_path / "run"
    shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns("locks", "incomplete"))
    cfg = yaml.safe_load(cfgfile.read_text())
    return dst, cfg


def plan_after(run, cfg) -> dict:
    cfgfile = write_config(run / "edited.yaml", cfg)
    return planned_jobs(snakemake(run, cfgfile, "-n", "--quiet", "rules"))


def test_nothing_changed_nothing_runs(finished_run):
    run, cfg = finished_run
    assert plan_after(run, cfg) == {}


def test_adding_a_model_runs_only_its_chain_and_its_pairs(finished_run):
    run, cfg = finished_run
    cfg["models"]["vit2"] = copy.deepcopy(cfg["models"]["vit"])
    cfg["models"]["vit2"]["recipe"]["seed"] = 1
    # its model, extraction, within table + pairs with the three others, F1, three F2, the Mixer's F14
    assert plan_after(run, cfg) == {"model": 1, "extract": 1, "cka": 4, "figure_f1": 1, "figure_f2": 3,
                                    "figure_f14": 1, "all": 1}


def test_changing_one_models_recipe_reruns_its_chain(finished_run):
    run, cfg = finished_run
    cfg["models"]["resnet"]["recipe"]["lr"] = 0.001
    # ... and the findings table, which reads the CNN's within-model table
    assert plan_after(run, cfg) == {"model": 1, "extract": 1, "cka": 3, "figure_f1": 1, "figure_f2": 2,
                                    "figure_f14": 1, "table_findings": 1, "all": 1}


def test_changing_the_estimator_reruns_tables_and_figures_only(finished_run):
    run, cfg = finished_run
    cfg["cka"]["estimator"] = "biased"
    assert plan_after(run, cfg) == {"cka": 6, "figure_f1": 3, "figure_f2": 3, "figure_f14": 1, "table_findings": 1,
                                    "all": 1}


def test_changing_the_minibatch_size_keeps_the_models(finished_run):
    run, cfg = finished_run
    cfg["cka"]["minibatch_size"] = 8
    assert plan_after(run, cfg) == {"plan": 1, "extract": 3, "cka": 6, "figure_f1": 3, "figure_f2": 3,
                                    "figure_f14": 1, "table_findings": 1, "all": 1}


def test_changing_figure_dpi_reruns_figures_only(finished_run):
    run, cfg = finished_run
    cfg["figures"] = {"dpi": 100}
    assert plan_after(run, cfg) == {"figure_f1": 3, "figure_f2": 3, "figure_f14": 1, "all": 1}


def test_executor_settings_rerun_nothing(finished_run):
    run, cfg = finished_run
    cfg["executor"] = {"default": "inline", "resources": {"cpus": 2, "time_min": 30}}
    assert plan_after(run, cfg) == {}


def test_changing_plotting_code_reruns_only_figures(finished_run, tmp_path):
    """A copy of the workflow whose heatmap code differs: only the heatmap figures are planned."""
    run, cfg = finished_run
    repo = tmp_path / "repo"
    root = Path(__file__).resolve().parents[1]
    for part in ("workflow", "scripts", "config"):
        shutil.copytree(root / part, repo / part, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    figures = repo / "scripts" / "seelike" / "plotting.py"
    text = figures.read_text()
    assert 'colormaps["magma"]' in text
    figures.write_text(text.replace('colormaps["magma"]', 'colormaps["viridis"]'))
    cfgfile = write_config(run / "edited.yaml", cfg)
    proc = snakemake(run, cfgfile, "-n", "--quiet", "rules", snakefile=repo / "workflow" / "Snakefile")
    assert planned_jobs(proc) == {"figure_f1": 3, "figure_f2": 3, "figure_f14": 1, "all": 1}


def test_replacing_a_local_weights_file_rebuilds_its_model(finished_run, tmp_path):
    """A `local_file` model's weights are an input of its model step: a new file at the same path
    rebuilds the card (and, through it, everything downstream) instead of going unnoticed."""
    import os

    from safetensors.torch import load_file, save_file

    run, cfg = finished_run
    weights = tmp_path / "weights.safetensors"
    shutil.copy(run / "results" / "models" / "vit" / "weights.safetensors", weights)
    cfg["models"]["vit_file"] = {"arch": cfg["models"]["vit"]["arch"], "kwargs": cfg["models"]["vit"]["kwargs"],
                                 "source": {"kind": "local_file", "path": str(weights)}}
    cfgfile = write_config(run / "edited.yaml", cfg)
    card = "results/models/vit_file/card.json"
    snakemake(run, cfgfile, "--cores", "1", card)
    assert planned_jobs(snakemake(run, cfgfile, "--cores", "1", card, "-n", "--quiet", "rules")) == {}
    sd = load_file(str(weights))
    save_file({k: v * 1.5 for k, v in sd.items()}, str(weights))     # retrained elsewhere, same path
    later = (run / card).stat().st_mtime + 10
    os.utime(weights, (later, later))
    assert planned_jobs(snakemake(run, cfgfile, "--cores", "1", card, "-n", "--quiet", "rules")) == {"model": 1}
