"""The rule's log holds each job's stdout and stderr and ends with the job's log folder; no `%j` folders."""
from __future__ import annotations

import pytest


from seelike.config import step_executor
from seelike.submit import StepFailed, run_step


def _settings(tmp_path):
    # cka runs on the host unless placed (seelike.config.HOST_STEPS): placed here as a local job
    return step_executor({"executor": {"default": "local", "log_dir": str(tmp_path / "jobs"),
                                       "steps": {"cka": {"executor": "local"}}}}, "cka")


def test_local_job_output_reaches_the_step_log_and_names_its_folder(tmp_path, capsys):
    script = tmp_path / "job.py"
    script.write_text("import sys\nprint('progress 50%')\nprint('a warning', file=sys.stderr)\n")
    run_step(_settings(tmp_path), "runpy:run_path", {"path_name": str(script)}, name="talker")
    out = capsys.readouterr().out
    assert "progress 50%" in out and "a warning" in out, out
    last = out.strip().splitlines()[-1]
    folders = [p for p in (tmp_path / "jobs" / "cka" / "talker").iterdir()]
    assert [p.name for p in folders if p.name == "%j"] == [], folders
    assert len(folders) == 1 and last.endswith(str(folders[0])) and "log folder" in last, (last, folders)


def test_failing_job_output_reaches_the_step_log(tmp_path, capsys):
    script = tmp_path / "bad.py"
    script.write_text("print('loaded 3 shards')\nraise SystemExit('bad shard')\n")
    try:
        run_step(_settings(tmp_path), "runpy:run_path", {"path_name": str(script)}, name="failer")
    except StepFailed as e:
        assert "bad shard" in str(e)
    else:
        raise AssertionError("the step did not fail")
    out = capsys.readouterr().out
    assert "loaded 3 shards" in out and "log folder" in out.strip().splitlines()[-1]
    assert not (tmp_path / "jobs" / "cka" / "failer" / "%j").exists()


@pytest.mark.slow
def test_rule_logs_of_the_tiny_run_hold_the_jobs_output(tiny_local_run):
    """Under the local executor every rule log names its jobs' log folder and holds what they printed
    (training's and extraction's progress bars), and no literal `%j` folder is left behind."""
    run, _ = tiny_local_run
    logs = run / "results" / "logs"
    extract = (logs / "extract" / "synth" / "vit.log").read_text()
    assert "extract vit shard 0" in extract and "log folder" in extract.strip().splitlines()[-1], extract[-2000:]
    model = (logs / "models" / "vit.log").read_text()
    assert "----- job" in model and "log folder" in model, model[-2000:]
    assert not [p for p in (logs / "jobs").rglob("%j")]


@pytest.mark.parametrize("visible", ["3,5", "GPU-5f2c", None])
def test_local_job_sees_the_gpus_of_the_process_that_submits_it(tmp_path, monkeypatch, visible):
    """submitit's LocalExecutor hides every GPU from its jobs (CUDA_VISIBLE_DEVICES="") unless given a
    GPU count; a local job sees what the Snakemake process sees, so `device: cuda` finds the GPU."""
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    seen = run_step(_settings(tmp_path), "os:getenv", {"key": "CUDA_VISIBLE_DEVICES", "default": "<unset>"},
                    name="gpus")
    assert seen == (visible if visible is not None else "<unset>")
