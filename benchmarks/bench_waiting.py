"""Memory of the waiting side: N steps in flight on SLURM, each waited on by its own process.

    python benchmarks/bench_waiting.py            # 100 jobs (--jobs N)
    python benchmarks/bench_waiting.py --quick    # 10 jobs

Each child does what a rule's `seelike step extract` process does on the login node (the heaviest
waiting side: it also validates shards and reads the model card) and then waits on a SLURM job
through seelike.submit.run_step. With the jobs queued or running, the parent sums the children's
RSS and PSS (PSS splits shared pages fairly) and checks none imported torch.

Goal: the waiting processes stay light and none imports torch. Needs a running SLURM cluster
(tests/slurm/cluster.sh start). Prints a table and writes benchmarks/out/bench_waiting.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def hold(seconds: float) -> float:
    """The job: just wait (the job side is not what is measured)."""
    time.sleep(seconds)
    return seconds


def child(index: int, folder: str, report: str) -> None:
    # The waiting side's imports, as in seelike.cli.step_extract.
    from seelike import cli, config, manifest, plan, provenance, store  # noqa: F401
    from seelike.models import ModelCard  # noqa: F401
    from seelike.submit import StepFailed, run_step

    with open(report, "a") as fh:
        fh.write(json.dumps({"index": index, "pid": os.getpid(), "torch": "torch" in sys.modules}) + "\n")
    settings = config.step_executor({"executor": {"default": "slurm", "log_dir": folder,
                                                  "resources": {"cpus": 1, "time_min": 10, "mem_gb": 0.1}}}, "extract")
    try:
        run_step(settings, "bench_waiting:hold", {"seconds": 600}, name=f"bench{index}")
    except (StepFailed, KeyboardInterrupt):
        pass


def memory_kb(pid: int) -> tuple[int, int]:
    rss = pss = 0
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    return rss, pss


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--out", default=str(HERE / "out" / "bench_waiting.json"))
    ap.add_argument("--child", type=int)
    ap.add_argument("--folder")
    ap.add_argument("--report")
    ap.add_argument("--quick", action="store_true", help="10 jobs")
    args = ap.parse_args()
    if args.child is not None:
        child(args.child, args.folder, args.report)
        return 0
    n = 10 if args.quick else args.jobs
    if subprocess.run(["sinfo"], capture_output=True).returncode:
        sys.exit("bench_waiting: no SLURM cluster answers (start one: tests/slurm/cluster.sh start)")
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_waiting_{os.getpid()}"
    work.mkdir(parents=True)
    report = work / "children.jsonl"
    env = dict(os.environ, PYTHONPATH=f"{HERE}:{os.environ.get('PYTHONPATH', '')}")
    procs = [subprocess.Popen([sys.executable, __file__, "--child", str(i), "--folder", str(work / "jobs"),
                               "--report", str(report)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for i in range(n)]
    t0 = time.time()
    try:
        while time.time() - t0 < 300:
            queued = subprocess.run(["squeue", "-h", "-o", "%j"], capture_output=True, text=True).stdout.split()
            if sum(1 for q in queued if q.startswith("seelike-extract-bench")) >= n:
                break
            time.sleep(1)
        time.sleep(3)  # let the waiters settle into their polling loop
        mems = [memory_kb(p.pid) for p in procs if p.poll() is None]
        children = [json.loads(l) for l in report.read_text().splitlines()]
    finally:
        subprocess.run(["scancel", "--name", ",".join(f"seelike-extract-bench{i}" for i in range(n))])
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
    rss = sum(m[0] for m in mems) / 1024
    pss = sum(m[1] for m in mems) / 1024
    result = {"jobs_in_flight": n, "waiting_processes": len(mems), "total_rss_mib": round(rss, 1),
              "total_pss_mib": round(pss, 1), "rss_per_process_mib": round(rss / max(1, len(mems)), 1),
              "any_imported_torch": any(c["torch"] for c in children), "seconds_to_submit_all": round(time.time() - t0, 1)}
    print(f"| jobs in flight | waiting processes | total RSS (MiB) | total PSS (MiB) | RSS per process (MiB) | torch imported |")
    print(f"|---|---|---|---|---|---|")
    print(f"| {n} | {len(mems)} | {result['total_rss_mib']} | {result['total_pss_mib']} | {result['rss_per_process_mib']} | {result['any_imported_torch']} |")
    from seelike.fileio import write_json_atomic

    write_json_atomic(args.out, result, nan_as_null=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
