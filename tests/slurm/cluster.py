"""Python side of the single-node SLURM test cluster (see ``cluster.sh`` next to this file).

Typical use in a conftest (import it by path, or as ``slurm.cluster`` with tests/ on
sys.path, which pytest's default rootdir-relative "prepend" import mode gives)::

    import pytest
    from slurm.cluster import ClusterUnavailable, ensure_cluster, keep_cluster, stop_cluster

    @pytest.fixture(scope="session")
    def slurm_cluster():
        try:
            info = ensure_cluster()
        except ClusterUnavailable as exc:
            pytest.skip(f"SLURM test cluster unavailable: {exc.reason}")
        yield info
        if info.started_here and not keep_cluster():
            stop_cluster()

``ensure_cluster()`` starts the cluster only when it is not already accepting jobs, and
``stop_cluster()`` only stops daemons that ``cluster.sh`` started (by their recorded PIDs).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "cluster.sh"

PARTITION = "debug"
NODE = "localhost"
CLUSTER_NAME = "seelike"
LOG_DIR = Path("/var/log/slurm")
STATE_DIR = Path("/var/lib/slurm")
RUN_DIR = Path("/run/seelike-slurm")
SLURM_CONF = Path("/etc/slurm/slurm.conf")

# cluster.sh exit codes
_EXIT_REASONS = {
    3: "prerequisites missing",
    4: "package install failed",
    5: "a daemon failed to start",
}


class ClusterUnavailable(RuntimeError):
    """The SLURM test cluster cannot be used here; ``reason`` says why (use it in pytest.skip)."""

    def __init__(self, reason: str, output: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.output = output


@dataclasses.dataclass(frozen=True)
class ClusterInfo:
    partition: str
    node: str
    cluster_name: str
    cpus: int
    real_memory_mb: int
    slurm_conf: Path
    log_dir: Path
    state_dir: Path
    started_here: bool  # True when this call started (some) daemons
    start_seconds: float  # wall time of ensure_cluster()
    output: str  # what cluster.sh printed

    def submitit_parameters(self, **overrides) -> dict:
        """Parameters for ``submitit.AutoExecutor.update_parameters`` on this cluster."""
        params = {"slurm_partition": self.partition, "timeout_min": 5, "cpus_per_task": 1}
        params.update(overrides)
        return params


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        env=_clean_env(),
    )


def _clean_env() -> dict:
    # A test session run inside a SLURM allocation must not leak SLURM_* into the
    # client commands (they would target the outer job).
    return {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}


def cluster_ready(timeout: float = 10.0) -> bool:
    """Cheap check (no root needed): controller up and the node accepts jobs."""
    if shutil.which("scontrol") is None or shutil.which("sinfo") is None or not SLURM_CONF.exists():
        return False
    try:
        ping = _run(["scontrol", "ping"], timeout)
        if "is UP" not in ping.stdout:
            return False
        st = _run(["sinfo", "-h", "-N", "-n", NODE, "-p", PARTITION, "-o", "%T"], timeout).stdout.split()
    except (subprocess.TimeoutExpired, OSError):
        return False
    return bool(st) and st[0] in {"idle", "mixed", "allocated", "completing"}


def _node_resources() -> tuple[int, int]:
    try:
        out = _run(["scontrol", "show", "node", NODE, "-o"], 10).stdout
    except (subprocess.TimeoutExpired, OSError):
        return 0, 0
    fields = dict(f.split("=", 1) for f in out.split() if "=" in f)
    try:
        return int(fields.get("CPUTot", 0)), int(fields.get("RealMemory", 0))
    except ValueError:
        return 0, 0


def _info(started_here: bool, seconds: float, output: str) -> ClusterInfo:
    cpus, mem = _node_resources()
    return ClusterInfo(
        partition=PARTITION,
        node=NODE,
        cluster_name=CLUSTER_NAME,
        cpus=cpus,
        real_memory_mb=mem,
        slurm_conf=SLURM_CONF,
        log_dir=LOG_DIR,
        state_dir=STATE_DIR,
        started_here=started_here,
        start_seconds=seconds,
        output=output,
    )


def ensure_cluster(timeout: float = 600.0) -> ClusterInfo:
    """Return a running cluster, starting (and if needed installing) it first.

    Raises ClusterUnavailable with a one-line reason when that is not possible: not root
    and no cluster running, no apt-get, package install failed, a daemon did not start.
    Safe to call from several processes at once (cluster.sh serialises on a lock file).
    """
    t0 = time.monotonic()
    if cluster_ready():
        return _info(False, time.monotonic() - t0, "cluster already running")
    if os.geteuid() != 0:
        raise ClusterUnavailable(
            "no SLURM test cluster is running and starting one needs root "
            f"(run `sudo {SCRIPT} start` first)"
        )
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        raise ClusterUnavailable("SLURM is not installed and there is no apt-get to install it")
    try:
        proc = _run(["bash", str(SCRIPT), "start"], timeout)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout if isinstance(exc.stdout, str) else (exc.stdout or b"").decode(errors="replace")
        raise ClusterUnavailable(f"`cluster.sh start` did not finish within {timeout:.0f} s", out) from None
    if proc.returncode != 0:
        errors = [line for line in proc.stdout.splitlines() if "ERROR:" in line]
        detail = errors[-1].split("ERROR:", 1)[1].strip() if errors else proc.stdout.strip()[-300:]
        kind = _EXIT_REASONS.get(proc.returncode, f"cluster.sh exited {proc.returncode}")
        raise ClusterUnavailable(f"{kind}: {detail} (logs in {LOG_DIR})", proc.stdout)
    started = re.search(r"\] started \S+ \(pid \d+\)", proc.stdout) is not None
    return _info(started, time.monotonic() - t0, proc.stdout)


def stop_cluster(timeout: float = 120.0) -> str:
    """Stop the daemons cluster.sh started (only those, by recorded PID). Returns its output."""
    if os.geteuid() != 0:
        return "not root: nothing stopped"
    proc = _run(["bash", str(SCRIPT), "stop"], timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"cluster.sh stop failed ({proc.returncode}):\n{proc.stdout}")
    return proc.stdout


def keep_cluster() -> bool:
    """SEELIKE_SLURM_KEEP=1 asks the test session to leave the cluster running."""
    return os.environ.get("SEELIKE_SLURM_KEEP", "") not in ("", "0")
