"""The single-node SLURM test cluster (tests/slurm/cluster.sh) works with submitit.

Run with ``pytest tests/test_slurm_cluster.py -m slurm``. The module starts the cluster
if it is not running (root needed; skipped with the reason otherwise, or failed when
SEELIKE_REQUIRE_SLURM=1) and stops it again at the end only if it started it and
SEELIKE_SLURM_KEEP is unset.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

submitit = pytest.importorskip("submitit")
cloudpickle = pytest.importorskip("cloudpickle")

pytestmark = pytest.mark.slurm

# The jobs unpickle the functions below in a fresh interpreter that cannot import this
# test module, so ship them by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def cluster(slurm_cluster):
    return slurm_cluster


@pytest.fixture
def executor(cluster, tmp_path):
    # A fresh folder per test: job ids restart at 1 whenever the cluster state is wiped.
    ex = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    # Keep timeout_min >= 3 with submitit's default 90 s signal delay: slurmctld sends the
    # warning signal from a check that runs every 30 s once now >= end - delay - 30 s, so
    # with 2 min it can hit a job in its first second, before submitit's handler exists
    # (the job then dies of SIGUSR2).
    ex.update_parameters(**cluster.submitit_parameters(timeout_min=5))
    return ex


def result_within(job, seconds: float):
    """job.result(), failing the test instead of hanging when it does not return in time."""
    box: dict = {}

    def target():
        try:
            box["value"] = job.result()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"job {job.job_id} result() still blocked after {seconds} s (state {job.state})")
    if "error" in box:
        raise box["error"]
    return box["value"]


def sacct_states(job_id: str, duplicates: bool = False) -> list[str]:
    """States sacct records for the allocation(s) of job_id (array: one line per task)."""
    cmd = ["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", str(job_id)]
    if duplicates:
        cmd.insert(1, "-D")
    deadline = time.monotonic() + 10
    while True:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows = [line.split("|") for line in out.splitlines() if line.strip()]
        if rows or time.monotonic() > deadline:
            return [state for _, state in rows]
        time.sleep(0.3)  # the controller hands records to slurmdbd asynchronously


def squeue_state(job_id: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True).stdout.strip()


def wait_until(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.2)


# ----------------------------------------------------------------- job functions


def add(a, b):
    return a + b


def whoami():
    env = submitit.JobEnvironment()
    return {"job_id": env.job_id, "hostname": env.hostname, "slurm_job_id": os.environ.get("SLURM_JOB_ID")}


def explode(message):
    raise ValueError(message)


def sleep_then(seconds, value):
    time.sleep(seconds)
    return value


def square(x):
    return {"x": x, "square": x * x, "task": os.environ.get("SLURM_ARRAY_TASK_ID")}


class Resumable(submitit.helpers.Checkpointable):
    """Spins until the time-limit signal; submitit checkpoints it (pickling self) and
    requeues; the second attempt sees attempts == 1 in the pickled state and returns."""

    def __init__(self):
        self.attempts = 0
        self.progress = 0

    def __call__(self):
        self.attempts += 1
        if self.attempts == 1:
            while True:  # stopped by USR2 -> checkpoint -> requeue
                time.sleep(0.1)
                self.progress += 1
        return {"attempts": self.attempts, "progress": self.progress, "job_id": os.environ.get("SLURM_JOB_ID")}


# ----------------------------------------------------------------- tests


def test_round_trip(executor):
    t0 = time.monotonic()
    job = executor.submit(add, 2, 3)
    assert result_within(job, 60) == 5
    print(f"round trip {time.monotonic() - t0:.2f} s")
    info = result_within(executor.submit(whoami), 60)
    assert info["slurm_job_id"] == info["job_id"]


def test_sacct_sees_completed_job(executor):
    job = executor.submit(add, 1, 1)
    assert result_within(job, 60) == 2
    wait_until(lambda: sacct_states(job.job_id) == ["COMPLETED"], 15, f"sacct to report job {job.job_id} COMPLETED")
    # submitit's own view comes from sacct too
    assert job.watcher.get_state(job.job_id, mode="force") == "COMPLETED"


def test_raising_job_reports_its_error(executor):
    job = executor.submit(explode, "boom from the job")
    with pytest.raises(submitit.core.utils.FailedJobError) as excinfo:
        result_within(job, 60)
    assert "ValueError: boom from the job" in str(excinfo.value)
    assert isinstance(job.exception(), submitit.core.utils.FailedJobError)
    wait_until(lambda: sacct_states(job.job_id) == ["FAILED"], 15, f"sacct to report job {job.job_id} FAILED")


def test_cancelled_job_is_reported_and_not_waited_on_forever(executor):
    job = executor.submit(sleep_then, 300, "never")
    t0 = time.monotonic()
    wait_until(lambda: squeue_state(job.job_id) == "RUNNING", 30, "the job to start")  # sacct lags a bit
    print(f"job running after {time.monotonic() - t0:.2f} s")
    t0 = time.monotonic()
    job.cancel()
    # Without slurmdbd the state would stay UNKNOWN here and result() would block forever.
    wait_until(lambda: job.watcher.get_state(job.job_id, mode="force").startswith("CANCELLED"), 15, "CANCELLED")
    # submitit then waits _results_timeout_s (15 s) for a result file; a cancelled job
    # never writes one, so shorten that wait for this test.
    job._results_timeout_s = 2
    with pytest.raises(submitit.core.utils.UncompletedJobError, match="has not produced any output"):
        result_within(job, 60)
    print(f"cancel reported after {time.monotonic() - t0:.2f} s")
    assert job.state.startswith("CANCELLED")
    assert sacct_states(job.job_id)[0].startswith("CANCELLED")


def test_job_array_of_four(executor):
    jobs = executor.map_array(square, range(4))
    assert len({job.job_id.split("_")[0] for job in jobs}) == 1, "one array job"
    results = [result_within(job, 90) for job in jobs]
    assert [r["square"] for r in results] == [0, 1, 4, 9]
    assert [r["task"] for r in results] == ["0", "1", "2", "3"]
    array_id = jobs[0].job_id.split("_")[0]
    wait_until(lambda: sacct_states(array_id) == ["COMPLETED"] * 4, 15, f"sacct to list 4 completed tasks of {array_id}")


def test_gpu_request_is_rejected_at_submission(executor):
    executor.update_parameters(gpus_per_node=1)
    with pytest.raises(Exception, match=r"Invalid generic resource \(gres\) specification"):
        executor.submit(add, 1, 2)


def test_impossible_request_is_rejected_at_submission(executor, cluster):
    executor.update_parameters(cpus_per_task=cluster.cpus + 1)
    with pytest.raises(Exception, match="More processors requested than permitted"):
        executor.submit(add, 1, 2)


def test_time_limit_signal_checkpoint_requeue_resume(executor):
    # Slurm sends the warning signal from a periodic check (every ~30 s), once
    # now >= end - signal_delay - 30 s. With a 60 s limit and a 25 s delay it lands
    # 5-35 s after the start: never before submitit has installed its handler.
    # The requeued job waits AuthInfo=cred_expire (10 s here, 120 s by default).
    executor.update_parameters(timeout_min=1, slurm_signal_delay_s=25)
    t0 = time.monotonic()
    job = executor.submit(Resumable())
    result = result_within(job, 150)
    print(f"timeout + requeue + resume took {time.monotonic() - t0:.1f} s")
    assert result["attempts"] == 2
    assert result["progress"] > 0  # state from the first attempt survived the checkpoint
    assert result["job_id"] == job.job_id  # same job, requeued
    # The result file is written before the job step ends: wait for the final record.
    wait_until(
        lambda: sacct_states(job.job_id, duplicates=True) == ["REQUEUED", "COMPLETED"],
        15,
        f"sacct to show job {job.job_id} REQUEUED then COMPLETED (now {sacct_states(job.job_id, duplicates=True)})",
    )
    assert "Requeued job" in (job.stderr() or "") + (job.stdout() or "")
