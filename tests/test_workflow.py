"""The real workflow: DAGs of both shipped configs, bad configs through Snakemake, a small end-to-end run."""
from __future__ import annotations

import copy

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import ROOT, snakemake, tiny_config, write_config
from seelike import config as sc


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
    # 8 models (4 base + 4 from the retraining sweeps); 8 within + 4 configured pairs + 1 more data-scale pair
    assert jobs["model"] == 8 and jobs["extract"] == 8 and jobs["plan"] == 1
    assert jobs["extract_vision"] == 4     # vit, resnet, vit_gap and vit_frac_0p3: those a vision analysis covers
    # each synthetic split read is rendered once: synth train/test/analysis
    assert jobs["render"] == 3
    assert jobs["cka"] == 13 and jobs["figure_f1"] == 8 and jobs["figure_f2"] == 4 and jobs["figure_f14"] == 1
    assert jobs["table_findings"] == 1
    for fig in ("f3", "f4", "f5", "f6", "f7", "f8", "f9", "f10", "f11", "f12", "f13", "v1", "v2", "v3", "v4", "v5"):
        assert jobs.get(f"figure_{fig}", 0) >= 1, fig
    assert sum(jobs.values()) == 97, jobs


def test_catalog_test_config_dry_runs(tmp_path):
    """.test/config.yaml, the config the Snakemake workflow catalog's CI dry-runs: the tiny models with a
    few vision analyses, whose generated table and figure rules must be planned."""
    proc = snakemake(tmp_path, ROOT / ".test" / "config.yaml", "-n", "--quiet", "rules")
    jobs = planned_jobs(proc)
    assert jobs["model"] == 3 and jobs["extract"] == 3 and jobs["cka"] == 6, jobs
    assert jobs["figure_f1"] == 3 and jobs["figure_f2"] == 3 and jobs["figure_f14"] == 1, jobs
    for analysis in ("attention_distance", "head_cka", "receptive_field", "norm_ratio", "snn_loss"):
        assert jobs.get(f"table_{analysis}", 0) >= 1, analysis
    for fig in ("f3", "f5", "f6", "f7", "v5"):
        assert jobs.get(f"figure_{fig}", 0) >= 1, fig


def test_snakefmt_and_lint(tmp_path):
    """The workflow keeps the Snakemake catalog's conventions: snakefmt-formatted, and `snakemake --lint`
    finds nothing."""
    import subprocess
    import sys

    snakefmt = Path(sys.executable).parent / "snakefmt"
    fmt = subprocess.run([str(snakefmt), "--check", "workflow/"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert fmt.returncode == 0, f"run `snakefmt workflow/`:\n{fmt.stdout[-3000:]}{fmt.stderr[-3000:]}"
    lint = snakemake(tmp_path, ROOT / "config" / "demo.yaml", "--lint", check=False)
    out = lint.stdout + lint.stderr
    assert lint.returncode == 0 and "Lints for" not in out, out[-6000:]


def test_rendered_split_names_match_what_the_render_step_checks():
    """The DAG names each rendered split from the config; the step, from its spec as JSON with sorted
    keys; the demo's YAML lists its splits in another order, and the names must agree all the same
    (synthetic splits lie in name order, not mapping order)."""
    from seelike import specs
    from seelike.data import rendered_split_name

    cfg = sc.load(yaml.safe_load((ROOT / "config" / "demo.yaml").read_text()), check_timm=False)
    assert list(cfg["datasets"]["synth"]["splits"]) != sorted(cfg["datasets"]["synth"]["splits"])  # a real reordering
    for name in cfg["models"]:
        for split, path in specs.model_rendered(cfg, name).items():
            ds = cfg["models"][name]["recipe"].get("test_dataset") if split == "test" else None
            spec = json.loads(json.dumps(specs.render_spec(cfg, ds or cfg["models"][name]["recipe"]["dataset"], split),
                                         sort_keys=True))
            assert spec["out"] == path and Path(path).name == rendered_split_name(spec["dataset"], split)
    spec = json.loads(json.dumps(specs.extract_spec(cfg, "vit"), sort_keys=True))
    assert Path(spec["rendered"]).name == rendered_split_name(spec["dataset"], spec["split"])


def test_paper_dag_builds(tmp_path):
    from conftest import write_image_names

    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    # empty files named like images: the config counts them by name (1000 classes, 3% of the training
    # folder fills a batch of 1024)
    cfg["datasets"]["imagenet_val"]["root"] = str(write_image_names(tmp_path / "val", 1000, 11))
    cfg["datasets"]["imagenet_train"]["root"] = str(write_image_names(tmp_path / "train", 10, 3500))
    proc = snakemake(tmp_path, write_config(tmp_path / "paper.yaml", cfg), "-n", "--quiet", "rules")
    jobs = planned_jobs(proc)
    n_models = len(sc.load(cfg, check_timm=False)["models"])   # sweeps expanded: 10 public + 10 retrained
    assert n_models == 20
    for fig in ("f8", "f10", "f11", "f12", "f13"):   # the paper-scale retraining experiments
        assert jobs.get(f"figure_{fig}", 0) >= 1, fig
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
def test_end_to_end_tiny_workflow(tiny_local_run):
    from seelike.cka import student_t_quantile

    tmp_path, cfgfile = tiny_local_run
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
        t = student_t_quantile(0.975, int(table.n_minibatches.iloc[0]) - 1)   # the jackknife's t interval
        np.testing.assert_allclose(table.cka - table.ci_low, t * table.se, rtol=1e-5, atol=1e-9)   # CSV precision
        np.testing.assert_allclose(table.ci_high - table.cka, t * table.se, rtol=1e-5, atol=1e-9)
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
    assert "F01 within-model CKA" in html and "F14 MLP-Mixer CKA" in html


TINY_ANALYSES = {"attention_distance": {"n_images": 48, "less_data": ["vit"]},   # vit stands in for F4's model
                 "head_cka": {"blocks": 1}, "receptive_field": {"n_images": 8}, "norm_ratio": {},
                 "localization": {}, "patch_embedding": {"n_components": 6}, "position_embedding": {},
                 "attention_maps": {"n_images": 3}, "snn_loss": {}}


@pytest.mark.slow
def test_end_to_end_tiny_workflow_vision_analyses(tiny_local_run, tmp_path):
    """The finished tiny run with every vision analysis switched on: the models, their Grams and the CKA tables
    are reused; each model gets a vision pass (one pass over the images, with its receptive-field gradients,
    serves F3, F5, F6, F7, F9 and the attention views), every figure is drawn from its table, and the report
    has a caption for each. Then the reruns a vision setting plans: a key that only selects (n_images of
    the attention distances, the CNN layers F5 plots) reruns its tables and figures; a tap setting (the
    localization positions) reruns the vision passes, never the Grams' pass or a CKA table."""
    import shutil

    from seelike import config as sc
    from seelike import specs

    src, cfgfile = tiny_local_run
    run = tmp_path / "run"
    shutil.copytree(src, run, symlinks=True, ignore=shutil.ignore_patterns("locks", "incomplete"))
    cfg = yaml.safe_load(cfgfile.read_text())
    cfg["analyses"] = TINY_ANALYSES
    vfile = write_config(run / "vision.yaml", cfg)
    planned = planned_jobs(snakemake(run, vfile, "-n", "--quiet", "rules"))
    assert planned["extract_vision"] == 3 and planned["table_receptive_field"] == 3, planned
    assert not {"model", "extract", "cka"} & set(planned), planned
    snakemake(run, vfile, "--cores", "2")
    res, vis = run / "results", run / "results" / "vision" / "synth"

    dist = pd.read_csv(vis / "attention_distance" / "vit.csv")
    assert len(dist) == 2 * 2 and (dist.n_images == 48).all()
    # a 4 x 4 grid of 4 px patches: distances lie between 0 and the largest centre distance
    assert dist.distance.between(0, 12 * 2 ** 0.5).all() and dist.uniform_distance.iloc[0] > 0
    heads = pd.read_csv(vis / "head_cka" / "vit__resnet.csv")
    assert len(heads) == 2 * 8 and (heads.status == "ok").all() and heads.mean_distance.notna().all()
    nr = pd.read_csv(vis / "norm_ratio" / "vit.csv")
    assert len(nr) == 4 * 2 and (nr.ratio > 0).all() and set(nr.tokens) == {"cls", "spatial"}
    assert len(pd.read_csv(vis / "norm_ratio" / "resnet.csv")) == 8
    for name in ("vit", "resnet", "mixer"):
        loc = pd.read_csv(vis / "localization" / f"{name}.csv")
        assert (loc.status == "ok").all() and loc.diagonal.any()
        rf = pd.read_csv(vis / "receptive_field" / f"{name}.csv")
        assert (rf.n_images == 8).all() and (rf.value >= 0).all() and rf.value.max() > 0
    assert pd.read_csv(res / "vision" / "checkpoint" / "patch_embedding" / "vit.csv").component.nunique() == 6
    sim = pd.read_csv(vis / "attention_similarity" / "vit.csv")
    np.testing.assert_allclose(sim[sim.index_x == sim.index_y].similarity, 1.0, atol=1e-9)
    for target in specs.final_targets(sc.load(cfg)):
        assert (run / target).stat().st_size > 1000, target
        assert (run / (target + ".prov.json")).is_file()
    again = snakemake(run, vfile, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr

    def plan_after(**analyses):
        edited = copy.deepcopy(cfg)
        for name, settings in analyses.items():
            edited["analyses"][name] = {**edited["analyses"][name], **settings}
        return planned_jobs(snakemake(run, write_config(run / "edited.yaml", edited), "-n", "--quiet", "rules"))

    # selecting fewer of the stored images: the distances, the head table that reads them, their figures
    assert plan_after(attention_distance={"n_images": 20}) == {
        "table_attention_distance": 1, "table_head_cka": 1, "figure_f3": 1, "figure_f4": 1, "figure_f5": 1,
        "all": 1}
    assert plan_after(head_cka={"cnn_layers": ["layer1.0", "layer4.1"]}) == {"table_head_cka": 1, "figure_f5": 1,
                                                                           "all": 1}
    # a tap setting: the vision passes and what reads them; the Grams and CKA tables stay
    moved = plan_after(localization={"positions": [[0.25, 0.25], [0.75, 0.5]]})
    assert moved["extract_vision"] == 3 and moved["table_localization"] == 3, moved
    assert not {"model", "extract", "cka", "figure_f1", "figure_f2", "figure_f14"} & set(moved), moved
    # the Grams' matmul precision: the Grams' passes and the CKA tables; no model, no vision pass
    tf32 = copy.deepcopy(cfg)
    tf32.setdefault("extraction", {})["gram_precision"] = "tf32"
    regrams = planned_jobs(snakemake(run, write_config(run / "edited.yaml", tf32), "-n", "--quiet", "rules"))
    assert regrams["extract"] == 3 and regrams["cka"] >= 1 and regrams["figure_f1"] >= 1, regrams
    assert not {"model", "extract_vision", "table_localization", "table_attention_distance"} & set(regrams), regrams

    snakemake(run, vfile, "--report", str(tmp_path / "report.html"))
    html = (tmp_path / "report.html").read_text(errors="replace")
    for category in ("F03 attention distance", "F04 attention distance, less data", "F05 attention heads vs CNN",
                     "F06 receptive fields", "F07 norm ratios", "F09 localization", "V01 patch-embedding components",
                     "V05 class separation by depth"):
        assert category in html, category


@pytest.mark.slow
def test_every_result_carries_provenance(tiny_local_run):
    import h5py

    res = tiny_local_run[0] / "results"

    def check(record, where):
        for key in ("config", "config_hash", "git", "packages", "cuda", "host", "slurm_job_id", "inputs", "seelike_version"):
            assert key in record, f"{where}: provenance lacks {key}"
        assert record["git"]["commit"], where
        for pkg in ("torch", "timm", "h5py"):
            assert record["packages"][pkg], f"{where}: no {pkg} version"
        for path, digest in record["inputs"].items():
            assert len(digest) == 64, f"{where}: input {path} has no sha256"

    results = [p for p in res.rglob("*") if p.is_file() and p.suffix in (".csv", ".png", ".pdf", ".json")
               and not p.name.endswith(".prov.json") and "logs" not in p.parts and ".seelike" not in p.parts
               and p.name != "card.json" and p.name != "manifest.json"]
    assert len(results) >= 20  # plan, 6 CKA tables, 7 figures in 2 formats
    for p in results:
        side = Path(str(p) + ".prov.json")
        assert side.is_file(), f"{p} has no provenance sidecar"
        check(json.loads(side.read_text()), side)
        if p.suffix in (".csv", ".png", ".pdf") and "plans" not in p.parts:
            assert json.loads(side.read_text())["inputs"], f"{p}: no input checksums"
    for card in res.glob("models/*/card.json"):
        check(json.loads(card.read_text())["provenance"], card)
    for manifest in res.glob("extract/*/*/manifest.json"):
        check(json.loads(manifest.read_text())["provenance"], manifest)
    for shard in res.glob("extract/*/*/shard-*.h5"):
        with h5py.File(shard) as f:
            record = json.loads(f.attrs["provenance"])
        check(record, shard)
        assert any(len(d) == 64 for d in record["inputs"].values())  # the checkpoint's sha256


def test_readme_demo_command_runs_the_intended_targets(tmp_path):
    """`make demo` (the README's first command) hands Snakemake the targets and the config it means to:
    snakemake 9's --configfile takes several files, so targets placed after it were read as config files."""
    import shlex
    import subprocess

    from snakemake.cli import get_argument_parser

    lines = subprocess.run(["make", "--no-print-directory", "-n", "demo"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.splitlines()
    calls = [line for line in lines if "bin/snakemake " in line]
    assert len(calls) == 2, lines
    parser = get_argument_parser()
    for line in calls:
        argv = shlex.split(line.split("bin/snakemake", 1)[1])
        args = parser.parse_args(argv)
        assert [str(p) for p in args.configfile] == ["config/demo.yaml"], line
    assert sorted(parser.parse_args(shlex.split(calls[0].split("bin/snakemake", 1)[1])).targets) == ["all", "archive"]
    # and the first one plans the whole demo
    proc = subprocess.run(calls[0] + f" --dry-run --quiet rules --directory {shlex.quote(str(tmp_path))}", shell=True,
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    jobs = planned_jobs(proc)
    assert jobs["archive"] == 1 and jobs["figure_f1"] >= 1, jobs
