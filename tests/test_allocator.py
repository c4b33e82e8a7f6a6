"""A job process keeps freed memory for reuse (seelike.allocator); the waiting side does not."""
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")


def _kept_mib(code: str) -> float:
    out = subprocess.run([sys.executable, "-c", code], cwd=TESTS, check=True, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(TESTS)})
    return float(out.stdout.strip().splitlines()[-1])


def test_step_process_keeps_freed_memory_and_plain_call_does_not():
    from seelike.allocator import retain_freed_memory

    if not retain_freed_memory():
        pytest.skip("no glibc mallopt here")
    # what a local or SLURM job runs: Step.__call__
    in_job = _kept_mib("from seelike.submit import Step; print(Step('jobs:freed_memory_kept_mib', {})())")
    # an inline step (the Snakemake process itself): glibc's defaults stay
    inline = _kept_mib("from seelike.submit import call_target; print(call_target('jobs:freed_memory_kept_mib', {}))")
    assert in_job > 200, f"the job process gave {256 - in_job:.0f} of 256 MiB back: thresholds not raised"
    assert inline < 50, f"an inline call kept {inline:.0f} MiB: the allocator was changed outside a job"
