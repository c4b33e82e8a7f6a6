"""The paper config submits at most 60 SLURM jobs: counted on its dry-run DAG.

A job of the DAG becomes a SLURM job when its rule runs a step (what `seelike step <rule>` submits through
seelike.submit) whose executor, per seelike.config.step_executor, is `slurm`. One extraction of one
model is one job array (its shards), so it counts as one; so is its vision pass. Rules that run no step (render, plan, figures,
archive, fetching pretrained weights, the tables computed from other tables) and steps placed inline
run in the rule's process on the host running Snakemake.
"""
from __future__ import annotations

import re
from collections import Counter

import pytest
import yaml

from conftest import ROOT, snakemake, write_config, write_image_names
from seelike import config as sc, registry

MAX_SLURM_JOBS = 60

# rules whose process runs no step at all (cli.py: step_render, step_plan, step_figure, step_archive)
NO_STEP = re.compile(r"^(all|render|plan|archive|figure_\w+)$")


def planned(proc) -> list[tuple[str, dict]]:
    """(rule, wildcards) of every job a dry run prints."""
    jobs, rule = [], None
    for line in proc.stdout.splitlines():
        m = re.match(r"^(?:local)?(?:rule|checkpoint) (\w+):$", line.strip())
        if m:
            if rule is not None:
                jobs.append((rule, wildcards))
            rule, wildcards = m.group(1), {}
        elif rule is not None and line.strip().startswith("wildcards:"):
            wildcards = dict(kv.split("=", 1) for kv in line.strip()[len("wildcards:"):].strip().split(", "))
    if rule is not None:
        jobs.append((rule, wildcards))
    return jobs


def submitted_step(cfg: dict, rule: str, wildcards: dict) -> str | None:
    """The step the job's `seelike step` command submits (seelike.cli), or None for a rule that runs
    none."""
    if NO_STEP.match(rule):
        return None
    if rule == "model":   # recipes train through the `train` step; hub and local weights are read on the host
        return "train" if cfg["models"][wildcards["model"]]["source"]["kind"] == "recipe" else None
    if rule in ("extract", "cka"):
        return rule
    if rule == "extract_vision":   # a model's vision pass: the extract step again
        return "extract"
    if rule.startswith("table_"):
        return registry.get(rule[len("table_"):]).step
    raise AssertionError(f"rule '{rule}' is new to this test: say which step it submits in submitted_step")


@pytest.fixture(scope="module")
def paper_dry_run(tmp_path_factory):
    """The paper config (folders of empty files named like images) and its dry run's jobs."""
    tmp_path = tmp_path_factory.mktemp("paper")
    raw = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    # empty files named like images: the config counts them by name (1000 classes, 3% of the training
    # folder fills a batch of 1024)
    raw["datasets"]["imagenet_val"]["root"] = str(write_image_names(tmp_path / "val", 1000, 11))
    raw["datasets"]["imagenet_train"]["root"] = str(write_image_names(tmp_path / "train", 10, 3500))
    proc = snakemake(tmp_path, write_config(tmp_path / "paper.yaml", raw), "-n")
    return sc.load(raw, check_timm=False), planned(proc)


def slurm_jobs(cfg: dict, jobs: list[tuple[str, dict]]) -> Counter:
    steps = (submitted_step(cfg, rule, wc) for rule, wc in jobs)
    return Counter(s for s in steps if s is not None and sc.step_executor(cfg, s)["executor"] == "slurm")


def test_paper_dag_submits_at_most_60_slurm_jobs(paper_dry_run):
    cfg, jobs = paper_dry_run
    assert len(jobs) > 300, len(jobs)      # the whole DAG was parsed, figures included
    per_step = slurm_jobs(cfg, jobs)
    n_models = len(cfg["models"])
    recipes = sum(m["source"]["kind"] == "recipe" for m in cfg["models"].values())
    # the heavy steps are submitted: every training, one extraction array per model and one vision-pass
    # array per model some vision analysis taps (receptive fields included: no job of their own)
    vision = registry.vision_models(cfg)
    assert per_step["train"] == recipes == 10 and n_models == 20 and len(vision) >= 10, (per_step, vision)
    assert per_step["extract"] == n_models + len(vision), (per_step, vision)
    assert sum(rule == "extract_vision" for rule, _ in jobs) == len(vision)
    # the tables (vision, checkpoint views, CKA) run on the host
    assert per_step["vision"] == 0 and per_step["cka"] == 0, per_step
    print(f"SLURM jobs of the paper DAG: {sum(per_step.values())} {dict(per_step)}")
    assert sum(per_step.values()) <= MAX_SLURM_JOBS, (
        f"the paper DAG submits {sum(per_step.values())} SLURM jobs (goal: at most {MAX_SLURM_JOBS}): {dict(per_step)}")


def test_table_steps_run_on_the_host_unless_placed(paper_dry_run):
    """vision and cka run on the host (seelike.config.runs_on_host, which their rules' `localrule:` reads);
    a config that places such a step on SLURM gets it submitted (and counted) again, one job per table."""
    cfg, jobs = paper_dry_run
    assert sc.runs_on_host(cfg, "cka") and sc.runs_on_host(cfg, "vision") and sc.runs_on_host(cfg, None)
    assert not sc.runs_on_host(cfg, "extract") and not sc.runs_on_host(cfg, "train")
    placed = dict(cfg, executor=dict(cfg["executor"], steps=dict(cfg["executor"]["steps"], cka={"executor": "slurm"})))
    assert not sc.runs_on_host(placed, "cka")
    n_cka = sum(rule == "cka" for rule, _ in jobs)
    assert n_cka >= 31 and slurm_jobs(placed, jobs)["cka"] == n_cka
