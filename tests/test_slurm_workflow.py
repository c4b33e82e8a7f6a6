"""Every heavy step on the real single-node SLURM cluster (tests/slurm/cluster.sh) through submitit."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import SNAKEFILE, snakemake, tiny_config, write_config
from seelike.config import step_executor
from seelike.submit import StepFailed, run_step

pytestmark = pytest.mark.slurm


def sacct(*args) -> list[dict]:
    out = subprocess.run(["sacct", "-n", "-P", "--format", "JobID,JobName,State", *args],
                         capture_output=True, text=True, check=True).stdout
    rows = [dict(zip(("id", "name", "state"), l.split("|"))) for l in out.splitlines() if l.strip()]
    return [r for r in rows if "." not in r["id"]]  # jobs and array tasks, not their steps


def squeue(name: str, states: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-n", name, "-t", states, "-o", "%i"], capture_output=True, text=True)
    return out.stdout.split()


def wait_for(predicate, timeout: float, what: str):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def slurm_settings(step: str, tmp_path: Path, **resources) -> dict:
    settings = step_executor({"executor": {"default": "slurm", "log_dir": str(tmp_path / "jobs"),
                                           "steps": {step: {"executor": "slurm"}},   # cka too (a host step)
                                           "resources": {"time_min": 5, "cpus": 1, **resources}}}, step)
    return settings


def test_demo_dag_on_slurm_matches_local(slurm_cluster, tiny_local_run, tmp_path):
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    cfg = tiny_config(executor={"default": "slurm", "resources": {"cpus": 1, "time_min": 10}})
    cfgfile = write_config(tmp_path / "tiny_slurm.yaml", cfg)
    snakemake(tmp_path, cfgfile, "--cores", "4")
    jobs = sacct("-S", started, "--name", ",".join(f"seelike-{s}-{m}" for s in ("train", "extract")
                                                   for m in ("vit", "resnet", "mixer")))
    train = [j for j in jobs if j["name"].startswith("seelike-train-")]
    assert sorted(j["name"] for j in train) == ["seelike-train-mixer", "seelike-train-resnet", "seelike-train-vit"]
    for model in ("vit", "resnet", "mixer"):
        tasks = [j for j in jobs if j["name"] == f"seelike-extract-{model}"]
        # Both shards of one (model, dataset) ran as one array: ids <array>_<task>, one array id.
        assert len(tasks) == 2 and all("_" in t["id"] for t in tasks), tasks
        assert len({t["id"].split("_")[0] for t in tasks}) == 1
        assert all(t["state"] == "COMPLETED" for t in tasks)
    # the CKA tables run on the host (seelike.config.HOST_STEPS): no SLURM job of theirs
    assert not any(j["name"].startswith("seelike-cka-") for j in sacct("-S", started))
    # Same results as the local executor (one torch thread each, so training is deterministic).
    local = tiny_local_run[0] / "results" / "cka" / "synth"
    for table in sorted(local.glob("*.csv")):
        a = pd.read_csv(table)
        b = pd.read_csv(tmp_path / "results" / "cka" / "synth" / table.name)
        pd.testing.assert_frame_equal(a.drop(columns=["se", "ci_low", "ci_high", "batch_std", "cka"]),
                                      b.drop(columns=["se", "ci_low", "ci_high", "batch_std", "cka"]))
        assert (a.cka - b.cka).abs().max() < 1e-6, table.name


def test_raising_job_shows_its_error(slurm_cluster, tmp_path):
    settings = slurm_settings("cka", tmp_path)
    with pytest.raises(StepFailed) as e:
        run_step(settings, "json:loads", {"s": "{not json"}, name="raiser")
    msg = str(e.value)
    assert "step 'cka' (raiser) failed: job" in msg and "JSONDecodeError" in msg
    log = msg.split("log: ")[1].split()[0]
    assert Path(log).is_file() and "JSONDecodeError" in Path(log).read_text()


def test_cancelled_job_is_reported_not_waited_on(slurm_cluster, tmp_path, monkeypatch):
    # The job imports tests/jobs.py: sbatch exports this environment to the job.
    monkeypatch.setenv("PYTHONPATH", f"{Path(__file__).parent}:{os.environ.get('PYTHONPATH', '')}")
    settings = slurm_settings("extract", tmp_path)
    outcome = {}

    def runner():
        try:
            outcome["result"] = run_step(settings, "jobs:sleep", {"seconds": 300}, name="sleeper")
        except BaseException as err:
            outcome["error"] = f"{type(err).__name__}: {err}"

    t = threading.Thread(target=runner)
    t.start()
    job = wait_for(lambda: squeue("seelike-extract-sleeper", "R"), 60, "the job to run")
    start = time.time()
    subprocess.run(["scancel", job[0]], check=True)
    t.join(60)
    assert not t.is_alive(), "still waiting on a cancelled job"
    assert outcome.get("error", "").startswith("StepFailed") and "CANCELLED" in outcome["error"], outcome
    assert time.time() - start < 45


def test_gpu_request_on_cluster_without_gres_names_step_and_key(slurm_cluster, tmp_path):
    settings = step_executor({"executor": {"default": "slurm", "log_dir": str(tmp_path),
                                           "steps": {"extract": {"resources": {"gpus": 1}}}}}, "extract")
    with pytest.raises(StepFailed) as e:
        run_step(settings, "json:loads", {"s": "1"}, name="gpu")
    msg = str(e.value)
    assert "step 'extract'" in msg and "Invalid generic resource" in msg
    assert "executor.steps.extract.resources.gpus" in msg


def test_training_is_requeued_and_resumes(slurm_cluster, tmp_path):
    # About 80 steps of ~1 s: longer than one allotment before SLURM's warning signal (time limit
    # 2 min, signal 60 s before it; slurmctld checks limits every ~30 s, so the signal comes 30-60 s
    # after the start), so the job must checkpoint, requeue and resume.
    dataset = {"kind": "synthetic", "n_classes": 10, "image_size": 32, "seed": 0,
               "splits": {"train": 2560, "test": 256, "analysis": 64}}
    recipe = {"dataset": "synth", "epochs": 4, "batch_size": 128, "lr": 0.001, "weight_decay": 0.05,
              "warmup_epochs": 0, "seed": 0, "checkpoint_every_steps": 10000, "optimizer": "adamw",
              "label_smoothing": 0.0}
    spec = {"name": "slowvit", "arch": "vit_tiny_patch16_224", "recipe": recipe, "dataset": dataset,
            "kwargs": {"img_size": 32, "patch_size": 4, "embed_dim": 192, "depth": 6, "num_heads": 3, "num_classes": 10},
            "out_dir": str(tmp_path / "model"), "device": "cpu", "precision": "fp32", "spec_hash": "requeue-test",
            "layers": "auto"}
    settings = slurm_settings("train", tmp_path, time_min=2, signal_delay_s=60, cpus=2, max_requeues=30)
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    metrics = run_step(settings, "seelike.train:train_model", {"spec": spec}, name="requeue")
    assert metrics["train_steps"] == 80
    card = json.loads((tmp_path / "model" / "card.json").read_text())
    assert card["metrics"]["train_steps"] == 80
    log = "".join(p.read_text() for p in sorted((tmp_path / "jobs").rglob("*.out")))
    import re
    saved = [int(m) for m in re.findall(r"checkpointed at step (\d+)/80", log)]
    resumed = [int(m) for m in re.findall(r"resuming 'slowvit' .* at step (\d+)/80", log)]
    assert saved and all(0 < k < 80 for k in saved), log[-3000:]
    # Every saved state was resumed from (a signal during start-up requeues before any new save,
    # so a state may be resumed twice), never an older one.
    assert set(resumed) == set(saved) and resumed == sorted(resumed), (saved, resumed)
    def states():  # sacct lags the job's end by a few seconds
        out = subprocess.run(["sacct", "-n", "-P", "-D", "-X", "--format", "JobName,State", "-S", started,
                              "--name", "seelike-train-requeue"], capture_output=True, text=True).stdout
        return out if "REQUEUED" in out and "COMPLETED" in out else None

    # slurmdbd records a job's states asynchronously: minutes late on a loaded 2-core runner
    wait_for(states, 360, "sacct to show the job requeued, then completed")
    assert not (tmp_path / "model" / "train_state.pt").exists()


def test_reattach_after_snakemake_is_killed(slurm_cluster, tmp_path):
    cfg = tiny_config(executor={"default": "slurm", "resources": {"cpus": 1, "time_min": 10}})
    # Training long enough (~30 s) to kill Snakemake while it runs.
    cfg["models"] = {"vit": dict(cfg["models"]["vit"])}
    cfg["models"]["vit"]["kwargs"] = dict(cfg["models"]["vit"]["kwargs"], embed_dim=192, depth=6, num_heads=3)
    cfg["models"]["vit"]["recipe"] = dict(cfg["models"]["vit"]["recipe"], epochs=25)
    cfgfile = write_config(tmp_path / "tiny_reattach.yaml", cfg)
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    cmd = [str(Path(sys.executable).parent / "snakemake"), "-s", str(SNAKEFILE), "--directory", str(tmp_path),
           "--configfile", str(cfgfile), "--cores", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        record = tmp_path / "results" / "models" / "vit" / "card.json.job.json"
        wait_for(lambda: record.is_file() and squeue("seelike-train-vit", "R"), 120, "the training job to run")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # Snakemake and its waiting steps die; the SLURM job does not
        proc.wait()
    job_id = json.loads(record.read_text())["job_ids"][0]
    assert squeue("seelike-train-vit", "R,PD") == [job_id]  # still queued or running
    snakemake(tmp_path, cfgfile, "--unlock")
    snakemake(tmp_path, cfgfile, "--cores", "2", "--rerun-incomplete")
    train_jobs = sacct("--name", "seelike-train-vit", "-S", started)
    assert [j["id"] for j in train_jobs] == [job_id], f"training was submitted again: {train_jobs}"
    log = (tmp_path / "results" / "logs" / "models" / "vit.log").read_text()
    assert f"re-attaching to SLURM job(s) {job_id}" in log
    assert (tmp_path / "results" / "figures" / "F1" / "vit.png").is_file()
    assert not record.exists()


@pytest.mark.parametrize("keep", [False, True])
def test_ctrl_c_cancels_submitted_jobs_unless_configured(slurm_cluster, tmp_path, keep):
    """SIGINT to a waiting step (what Ctrl-C on Snakemake delivers to its process group)."""
    name = f"ctrlc{int(keep)}"
    executor = {"default": "slurm", "log_dir": str(tmp_path / "jobs"), "cancel_on_interrupt": not keep,
                "resources": {"time_min": 5, "cpus": 1}}
    code = ("import json, sys; from seelike.config import step_executor; from seelike.submit import run_step; "
            f"s = step_executor({{'executor': json.loads(sys.argv[1])}}, 'extract'); "
            f"run_step(s, 'jobs:sleep', {{'seconds': 300}}, name={name!r})")
    env = dict(os.environ, PYTHONPATH=f"{Path(__file__).parent}:{os.environ.get('PYTHONPATH', '')}")
    # SIGINT as a terminal delivers it: the child starts with the default disposition, not one inherited
    # from this test process (a SIGINT ignored here would stay ignored there, and Python then raises nothing)
    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(executor)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    job = wait_for(lambda: squeue(f"seelike-extract-{name}", "R,PD"), 60, "the job to be queued")
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    # the interrupt lands once submitit's status poll (sacct, answered by slurmdbd) returns: allow for a slow one
    out = proc.communicate(timeout=180)[0]
    assert proc.returncode != 0
    if keep:
        assert "keep running" in out and squeue(f"seelike-extract-{name}", "R,PD") == job
        subprocess.run(["scancel", job[0]])
    else:
        assert "cancelled job(s)" in out
        wait_for(lambda: not squeue(f"seelike-extract-{name}", "R,PD,CG"), 30, "the job to be cancelled")
