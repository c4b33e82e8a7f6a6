"""The one place that decides where a step runs: inline, submitit's local executor, or SLURM.

The waiting side only handles strings ("module:function") and JSON-able kwargs, so it never
imports torch or holds model data; the job imports the target when it starts.
A record of the submitted job ids and of what each computes (a digest of the function's name and its
kwargs) sits beside the step's output (`<output>.job.json`), so a restarted Snakemake re-attaches to SLURM
jobs that are still queued or running, but only when they were submitted for the very tasks it asks for.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import importlib
import json
import os
import signal
from pathlib import Path
from typing import Any, Sequence

LOCAL_TIMEOUT_MIN = 7 * 24 * 60  # submitit's local default is 2 minutes; a step has no such limit locally
DEFAULT_SLURM_TIME_MIN = 60
ACTIVE_SLURM_STATES = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED",
                       "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT"}


class StepFailed(RuntimeError):
    """A step's job failed; the message names the step, job id, log path and the last stderr lines."""


def call_target(target: str, kwargs: dict, threads: int | None = None) -> Any:
    """Runs inside the job: import the step function by name and call it."""
    if threads:
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        try:
            import torch
            torch.set_num_threads(threads)
        except ImportError:
            pass
    module, _, func = target.partition(":")
    return getattr(importlib.import_module(module), func)(**kwargs)


class Step:
    """The callable a job runs. Checkpointable for submitit: on a time-limit or preemption signal the
    step is requeued as is, and resumable steps (training) continue from the state they saved.
    ``env``: environment variables the job sets before the step starts (None: unset)."""

    def __init__(self, target: str, kwargs: dict, threads: int | None = None, env: dict | None = None):
        self.target, self.kwargs, self.threads, self.env = target, kwargs, threads, dict(env or {})

    def __call__(self):
        from .allocator import retain_freed_memory

        for key, value in getattr(self, "env", {}).items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        retain_freed_memory()   # this process is the job's own (local or SLURM): keep freed memory for reuse
        return call_target(self.target, self.kwargs, self.threads)

    def checkpoint(self, *args, **kwargs):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(Step(self.target, self.kwargs, self.threads, getattr(self, "env", {})))


def local_job_env() -> dict:
    """What a local job restores of the submitting process's environment: its GPU visibility.
    submitit's LocalExecutor starts every job with ``CUDA_VISIBLE_DEVICES=""`` (no GPU) unless told a
    GPU count, so a job with ``device: cuda`` would find no GPU; the job sees the GPUs the process
    that runs Snakemake sees instead (None: the variable unset, every GPU visible)."""
    return {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}


def slurm_parameters(resources: dict, job_name: str) -> dict:
    """Map the config's resource keys to submitit SlurmExecutor parameters."""
    p: dict[str, Any] = {"job_name": job_name, "time": int(resources.get("time_min", DEFAULT_SLURM_TIME_MIN))}
    if resources.get("partition"):
        p["partition"] = resources["partition"]
    if resources.get("account"):
        p["account"] = resources["account"]
    if resources.get("qos"):
        p["qos"] = resources["qos"]
    if resources.get("cpus"):
        p["cpus_per_task"] = int(resources["cpus"])
    if resources.get("mem_gb"):
        p["mem"] = f"{int(round(float(resources['mem_gb']) * 1024))}M"
    if resources.get("gpus"):
        gtype = resources.get("gpu_type")
        p["gres"] = f"gpu:{gtype}:{int(resources['gpus'])}" if gtype else f"gpu:{int(resources['gpus'])}"
    if resources.get("constraint"):
        p["constraint"] = resources["constraint"]
    if resources.get("signal_delay_s"):
        p["signal_delay_s"] = int(resources["signal_delay_s"])
    if resources.get("extra_sbatch"):
        p["additional_parameters"] = dict(resources["extra_sbatch"])
    return p


def _executor(settings: dict, folder: Path, name: str, n_tasks: int = 1):
    import submitit

    kind = settings["executor"]
    res = settings.get("resources", {})
    if kind == "local":
        ex = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(timeout_min=int(res.get("time_min", LOCAL_TIMEOUT_MIN)),
                             signal_delay_s=int(res.get("signal_delay_s", 30)))
        return ex
    if kind == "slurm":
        # Each time-limit signal uses one requeue; long training may need many allotments.
        ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=int(res.get("max_requeues", 10)))
        params = slurm_parameters(res, f"seelike-{settings['step']}-{name}")
        if n_tasks > 1:
            params["array_parallelism"] = int(settings.get("array_parallelism", 64))
        ex.update_parameters(**params)
        return ex
    raise ValueError(f"unknown executor '{kind}' for step '{settings.get('step')}' (use inline, local or slurm)")


# sbatch's words for a bad request -> the resource key that made it.
_SBATCH_KEYS = [("gres", ("gpus", "gpu_type")), ("generic resource", ("gpus", "gpu_type")),
                ("partition", ("partition",)), ("account", ("account",)), ("qos", ("qos",)),
                ("time limit", ("time_min",)), ("memory", ("mem_gb",)), ("mem", ("mem_gb",)),
                ("cpu", ("cpus",)), ("feature", ("constraint",)), ("constraint", ("constraint",))]


def _submission_error(settings: dict, name: str, err: BaseException) -> StepFailed:
    """A rejected submission, phrased with the step and the config key to change."""
    step = settings["step"]
    text = str(err).strip()
    lowered = text.lower()
    keys = next((k for word, k in _SBATCH_KEYS if word in lowered), None)
    where = ""
    if keys:
        per_step = settings.get("step_resources", {})
        key = next((k for k in keys if k in per_step), None)
        prefix = f"executor.steps.{step}.resources" if key else "executor.resources"
        key = key or next((k for k in keys if k in settings.get("resources", {})), keys[0])
        where = f"; check config key {prefix}.{key} (= {settings.get('resources', {}).get(key)!r})"
    return StepFailed(f"step '{step}' ({name}): the scheduler rejected the submission: {text}{where}")


def _tail(path: Path, n: int = 20) -> str:
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "(no log file)"
    return "\n".join("    " + l for l in lines[-n:]) or "    (empty)"


def _failure(step: str, name: str, job, err: BaseException) -> StepFailed:
    state = getattr(job, "state", "?")
    return StepFailed(
        f"step '{step}' ({name}) failed: job {job.job_id}, state {state}\n"
        f"  log: {job.paths.stderr}\n"
        f"  last lines of stderr:\n{_tail(job.paths.stderr)}\n"
        f"  ({type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''})")


def _echo_job_output(job) -> None:
    """Copy a finished job's stdout and stderr (progress bars included) into this process's output,
    which the rule's log file holds, so the rule log tells the whole story under every executor."""
    for what, read in (("stdout", getattr(job, "stdout", None)), ("stderr", getattr(job, "stderr", None))):
        try:
            text = read() if read else None
        except Exception:   # a job whose files are gone (cleaned up, never started) has nothing to copy
            text = None
        if text and text.strip():
            print(f"----- job {job.job_id} {what} -----\n{text.rstrip()}", flush=True)


def _drop_placeholder_folder(folder: Path) -> None:
    """submitit creates the `%j` folder of the path template itself; the jobs' files go to folders named
    by their ids, so the template's own folder is left empty: remove it."""
    if folder.name == "%j" and folder.is_dir():
        try:
            folder.rmdir()   # only when empty
        except OSError:
            pass


def _record_path(marker: str | os.PathLike) -> Path:
    return Path(str(marker) + ".job.json")


def _task_digest(target: str, kwargs: dict) -> str:
    """What one task computes, as a sha256 of the function's name and its kwargs in canonical JSON
    (sorted keys; tuples and paths as JSON lists and strings, as the job record writes them)."""
    from .fileio import to_jsonable

    text = json.dumps(to_jsonable({"target": target, "kwargs": kwargs}), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _write_record(marker, settings: dict, folder: Path, job_ids: list[str], target: str,
                  kwargs_list: Sequence[dict]) -> None:
    from .fileio import write_json_atomic

    write_json_atomic(_record_path(marker), {
        "executor": settings["executor"], "step": settings["step"], "folder": str(folder),
        "job_ids": job_ids, "target": target, "n_tasks": len(kwargs_list),
        "task_digests": [_task_digest(target, kw) for kw in kwargs_list],
        "submitted": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})


def _recorded_jobs_for(rec: dict, target: str, kwargs_list: Sequence[dict]) -> list[str] | None:
    """The recorded job ids that compute exactly the requested tasks, in the order asked, or None when
    any requested task is not one the record's jobs were submitted for (the config changed since), or
    the record does not say what its jobs compute (written before records carried task digests).
    A request for fewer of the same tasks (an array whose other tasks have finished) matches."""
    ids, digests = rec.get("job_ids"), rec.get("task_digests")
    if (not isinstance(ids, list) or not isinstance(digests, list) or not ids or len(ids) != len(digests)
            or rec.get("n_tasks") != len(ids) or rec.get("target") != target or not kwargs_list):
        return None
    job_of = dict(zip(digests, (str(i) for i in ids)))
    wanted = [_task_digest(target, kw) for kw in kwargs_list]
    if any(d not in job_of for d in wanted):
        return None
    return [job_of[d] for d in wanted]


def _slurm_jobs(folder: str, job_ids: Sequence[str]) -> tuple[list, list[str]]:
    """submitit handles for recorded SLURM jobs and their current states (first word of sacct's)."""
    from submitit.slurm.slurm import SlurmJob

    jobs = [SlurmJob(folder=folder, job_id=jid) for jid in job_ids]
    return jobs, [j.state.split()[0] if j.state else "UNKNOWN" for j in jobs]


def _reattach(marker, settings: dict, target: str, kwargs_list: Sequence[dict]) -> list | None:
    """SLURM jobs recorded beside the output that are still queued or running and were submitted for
    the very tasks requested now, else None. Jobs recorded for other work are never adopted (nor
    cancelled: they are the user's); the caller then submits the requested tasks anew."""
    if marker is None or settings["executor"] != "slurm":
        return None
    path = _record_path(marker)
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or rec.get("executor") != "slurm":
        return None
    job_ids = _recorded_jobs_for(rec, target, kwargs_list)
    if job_ids is None:
        recorded = [str(i) for i in rec.get("job_ids") or []] if isinstance(rec.get("job_ids"), list) else []
        _, states = _slurm_jobs(rec.get("folder", "."), recorded) if recorded else ([], [])
        running = [j for j, s in zip(recorded, states) if s in ACTIVE_SLURM_STATES]
        why = ("the record does not say what they compute (written by an older seelike)" if "task_digests" not in rec
               else "they were submitted for different work than requested now (the config changed since)")
        print(f"seelike: not re-attaching to SLURM job(s) {', '.join(recorded) or '(none)'} of step "
              f"'{settings['step']}' recorded in {path}: {why}; submitting the step anew"
              + (f". Job(s) {', '.join(running)} are still queued or running and may still write their old "
                 f"results; cancel them (scancel {' '.join(running)}) if they are no longer wanted" if running else ""),
              flush=True)
        return None
    jobs, states = _slurm_jobs(rec["folder"], job_ids)
    if all(s in ACTIVE_SLURM_STATES or s == "COMPLETED" for s in states) and any(s in ACTIVE_SLURM_STATES for s in states):
        print(f"seelike: re-attaching to SLURM job(s) {', '.join(job_ids)} of step '{settings['step']}' "
              f"(recorded in {path})", flush=True)
        return jobs
    return None


class _Interrupt(Exception):
    pass


def _wait(jobs: Sequence, step: str, name: str, settings: dict, marker) -> list:
    """Wait for every job; on Ctrl-C/SIGTERM cancel them unless the config says to keep them."""
    def on_term(signum, frame):
        raise _Interrupt()

    import threading

    in_main = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGTERM, on_term) if in_main else None
    try:
        results, failures = [], []
        for job in jobs:
            try:
                results.append(job.result())
            except (_Interrupt, KeyboardInterrupt):
                raise
            except Exception as err:  # submitit raises FailedJobError / UncompletedJobError
                failures.append(_failure(step, name, job, err))
                results.append(None)
            _echo_job_output(job)
        folders = sorted({str(Path(job.paths.folder)) for job in jobs})
        print(f"seelike: log folder{'s' if len(folders) > 1 else ''} of step '{step}' ({name}): "
              f"{', '.join(folders)}", flush=True)
        if failures:
            raise StepFailed("\n".join(str(f) for f in failures))
        if marker is not None:
            _record_path(marker).unlink(missing_ok=True)
        return results
    except (_Interrupt, KeyboardInterrupt):
        if settings.get("cancel_on_interrupt", True):
            for job in jobs:
                try:
                    job.cancel(check=False)
                except Exception:
                    pass
            if marker is not None:
                _record_path(marker).unlink(missing_ok=True)
            print(f"seelike: interrupted; cancelled job(s) {', '.join(str(j.job_id) for j in jobs)} of step '{step}'", flush=True)
        else:
            print(f"seelike: interrupted; job(s) {', '.join(str(j.job_id) for j in jobs)} of step '{step}' keep running "
                  "(executor.cancel_on_interrupt is false); the next run re-attaches to them", flush=True)
        raise KeyboardInterrupt
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def run_step(settings: dict, target: str, kwargs: dict, name: str, marker: str | os.PathLike | None = None) -> Any:
    """Run one step function where `settings` (config.step_executor) says, and return its result."""
    return run_array(settings, target, [kwargs], name, marker)[0]


def run_array(settings: dict, target: str, kwargs_list: list[dict], name: str,
              marker: str | os.PathLike | None = None) -> list:
    """Run one step function over many kwargs: a SLURM job array, local processes, or inline calls."""
    step = settings["step"]
    threads = settings.get("resources", {}).get("cpus")
    if settings["executor"] == "inline":
        return [call_target(target, kw, threads) for kw in kwargs_list]
    folder = Path(settings["log_dir"]) / step / name / "%j"
    try:
        return _run_jobs(settings, target, kwargs_list, name, marker, folder, threads)
    finally:
        _drop_placeholder_folder(folder)


def _run_jobs(settings: dict, target: str, kwargs_list: list[dict], name: str, marker, folder: Path,
              threads) -> list:
    step = settings["step"]
    jobs = _reattach(marker, settings, target, kwargs_list)
    if jobs is None:
        if settings["executor"] == "local":
            # Local processes share this machine: run them one wave at a time.
            width = max(1, int(settings.get("local_parallelism", 1)))
            results = []
            for start in range(0, len(kwargs_list), width):
                wave = kwargs_list[start:start + width]
                ex = _executor(settings, folder, name, len(wave))
                jobs = [ex.submit(Step(target, kw, threads, local_job_env())) for kw in wave]
                results += _wait(jobs, step, name, settings, None)
            return results
        ex = _executor(settings, folder, name, len(kwargs_list))
        try:
            if len(kwargs_list) == 1:
                jobs = [ex.submit(Step(target, kwargs_list[0], threads))]
            else:
                with ex.batch():
                    jobs = [ex.submit(Step(target, kw, threads)) for kw in kwargs_list]
        except Exception as err:  # submitit raises FailedJobError with sbatch's stderr
            raise _submission_error(settings, name, err) from None
        ids = [str(j.job_id) for j in jobs]
        print(f"seelike: step '{step}' ({name}) submitted as SLURM job(s) {', '.join(ids)}; logs in {folder}", flush=True)
        if marker is not None:
            _write_record(marker, settings, folder, ids, target, kwargs_list)
    return _wait(jobs, step, name, settings, marker)
