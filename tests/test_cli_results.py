"""`seelike status` and `seelike show`, run as the installed console script on a run written by the project's
own writers (tests/small_run.py), with the repository's workflow for the status dry run."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import small_run
from conftest import ROOT
from seelike import paths

SCRIPT = Path(sys.executable).parent / "seelike"
COMMAND = [str(SCRIPT)] if SCRIPT.is_file() else [sys.executable, "-m", "seelike.cli"]
TEST_CONFIG = ROOT / ".test" / "config.yaml"


def seelike(cwd: Path, *args, timeout=300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.run(COMMAND + list(args), cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return small_run.build(tmp_path_factory.mktemp("small_run"))


@pytest.fixture
def run(built, tmp_path):
    """A fresh copy of the small run: the working directory holding results/."""
    shutil.copytree(built, tmp_path / paths.RESULTS)
    return tmp_path


# ----------------------------------------------------------------------------- status

def test_status_lists_the_run_and_what_the_dag_would_make(run):
    proc = seelike(run, "status", "--configfile", str(TEST_CONFIG))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"config: {TEST_CONFIG}" in out
    assert "models with cards (2):" in out and "vit_tiny_patch16_224 (vit), 2 layers, test accuracy 0.250" in out
    assert "cnn                resnet18 (cnn), 8 layers" in out
    assert "extractions (2): synth: cnn, vit" in out
    assert "tables (5):" in out and "cka (3): cka/cnn__cnn, cka/vit__cnn, cka/vit__vit" in out
    assert "vision (1): norm_ratio/vit" in out and "experiment (1): probes/vit" in out
    assert "findings: not written yet" in out
    assert "figures (1 in 2 files): F1 vit" in out
    # the dry run: the test config's models (vit, resnet, mixer) have to be trained first
    dag = out.split("workflow (snakemake --summary")[1]
    assert "outputs in the configured DAG" in dag and "to (re)make" in dag
    assert "missing (" in dag and "model x" in dag and "cka x" in dag and "figure_f1 x" in dag
    # files of the run that this config does not make
    assert "not in this config's DAG" in dag and "vit__cnn.csv" in dag and "probes/vit.csv" in dag
    assert "next: snakemake --cores N --configfile" in dag
    assert "logs: results/logs/<output path>.log for each rule (1)" in out
    assert "results/logs/cka/synth/vit__vit.log" in out
    # the dry run recorded the config, which a later status uses by default
    recorded = run / paths.RESULTS / Path(paths.RUN_CONFIG).relative_to(paths.RESULTS)
    assert json.loads(recorded.read_text())["run_name"] == "tiny"
    again = seelike(run, "status", "--no-dag")
    assert again.returncode == 0 and "config: results/.seelike/config.json (the config of the run's last DAG build)" \
        in again.stdout and "workflow: not checked (--no-dag)" in again.stdout


def test_status_reports_a_bad_config_by_its_key(run, tmp_path):
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    cfg["cka"]["minibatch_size"] = 3
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    proc = seelike(run, "status", "--configfile", str(bad))
    assert proc.returncode == 1
    assert "snakemake could not build the DAG" in proc.stdout
    assert "config key cka.minibatch_size: 3 is too small" in proc.stdout


def test_status_names_a_missing_results_folder(tmp_path):
    proc = seelike(tmp_path, "status", "--results", "elsewhere")
    assert proc.returncode == 1 and "results folder 'elsewhere' does not exist" in proc.stderr


# ----------------------------------------------------------------------------- show

def test_show_tables_by_name_and_path(run):
    proc = seelike(run, "show", "cka/vit__cnn")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("table cka/vit__cnn (cka): results/cka/synth/vit__cnn.csv\n16 rows x 15 columns")
    assert "block1  " in out and "stage3.unit1" in out and "ci_high" in out
    assert "config (hash " in out and '"models": ["vit", "cnn"]' in out
    assert "results/extract/synth/vit/manifest.json: unchanged" in out
    # the same table by its within-model short form, its path under results/, and its file
    assert seelike(run, "show", "cka/vit").stdout.startswith("table cka/vit__vit (cka)")
    assert seelike(run, "show", "vision/synth/norm_ratio/vit").stdout.startswith("table norm_ratio/vit (vision)")
    by_file = seelike(run, "show", str(run / "results" / "experiments" / "probes" / "vit.csv"))
    assert by_file.returncode == 0 and "results/models/vit/card.json: unchanged" in by_file.stdout
    short = seelike(run, "show", "cka/vit__cnn", "--rows", "4")
    assert "(the first and last 2 of 16 rows; --rows 0 prints them all" in short.stdout
    assert len(short.stdout.splitlines()) == len(out.splitlines()) - 16 + 4 + 2     # 4 rows, "...", the note


def test_show_findings_once_written(run):
    assert seelike(run, "show", "findings").returncode == 1
    small_run.write_findings(run / paths.RESULTS)
    proc = seelike(run, "show", "findings")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("table findings (findings): results/findings/synth.csv")
    assert "not configured" in proc.stdout


def test_show_figure_with_caption_and_provenance(run):
    for name in ("F1/vit", "f1/vit", "F1", "results/figures/F1/vit.png", "figures/F1/vit"):
        proc = seelike(run, "show", name)
        assert proc.returncode == 0, (name, proc.stderr)
        out = proc.stdout
        assert out.startswith("figure F1/vit: within-model CKA\n"), name
        assert "results/figures/F1/vit.pdf" in out and "results/figures/F1/vit.png" in out
    assert "caption (workflow/report/F1.rst):" in out
    assert "every pair of layers of ``vit``" in " ".join(out.split())     # the caption rendered for the stem
    assert "results/cka/synth/vit__vit.csv: unchanged" in out
    table = run / "results" / "cka" / "synth" / "vit__vit.csv"
    table.write_text(table.read_text().replace("unbiased", "biased"))
    assert "results/cka/synth/vit__vit.csv: CHANGED since (the result is stale)" in seelike(run, "show", "F1/vit").stdout


def test_show_unknown_or_ambiguous_names_say_what_to_do(run):
    proc = seelike(run, "show", "cka/vit_cnn")
    assert proc.returncode == 1
    assert "no table or figure 'cka/vit_cnn'" in proc.stderr and "close matches: cka/vit__cnn" in proc.stderr
    assert "seelike status --results results" in proc.stderr
    figures = run / "results" / "figures" / "F1"
    for f in list(figures.iterdir()):
        shutil.copy(f, figures / f.name.replace("vit", "vit2"))
    proc = seelike(run, "show", "F1")
    assert proc.returncode == 1 and "F1/vit, F1/vit2; name one, e.g. seelike show F1/vit" in proc.stderr


def test_show_names_a_corrupt_provenance_sidecar(run):
    side = run / "results" / "cka" / "synth" / "vit__cnn.csv.prov.json"
    side.write_text(side.read_text()[:100])
    proc = seelike(run, "show", "cka/vit__cnn")
    assert proc.returncode == 1
    assert "provenance 'results/cka/synth/vit__cnn.csv.prov.json' is not valid JSON" in proc.stderr
    assert "run the workflow again" in proc.stderr


def test_show_help_documents_the_accepted_forms(tmp_path):
    out = seelike(tmp_path, "show", "--help").stdout
    for form in ("cka/<x>__<y>", "<table>/<stem>", "findings", "<figure id>/<stem>", "F1/vit", "attention_distance/vit"):
        assert form in out, form
