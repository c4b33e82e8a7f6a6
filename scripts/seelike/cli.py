"""Command line: the entry points the Snakemake rules call, plus config validation.

`seelike step <name> --spec JSON` is what a rule runs. It imports no torch: heavy work is submitted
through seelike.submit, which waits for the job (inline, local process, or SLURM).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _settings(step: str) -> dict:
    from .config import step_executor

    executor = json.loads(os.environ.get("SEELIKE_EXECUTOR", "{}"))
    return step_executor({"executor": executor}, step)


def step_plan(spec: dict) -> None:
    import numpy as np
    from .data import dataset_listing
    from .plan import make_plan, write_plan_file

    # Plans refer to positions within the split, the index every dataset item carries.
    size, fingerprint, excluded = dataset_listing(spec["dataset"], spec["split"])
    plan = make_plan(f"{spec['dataset_key']}:{fingerprint}", np.arange(size), spec["n_examples"],
                     spec["minibatch_size"], spec["minibatches_per_shard"], spec["seed"], excluded=excluded)
    write_plan_file(spec["out"], plan)
    from . import provenance

    provenance.write_sidecar(spec["out"], provenance.collect({k: v for k, v in spec.items() if k != "out"}))


def step_render(spec: dict) -> None:
    from .data import write_rendered_split

    write_rendered_split(spec["dataset"], spec["split"], spec["out"])


def _add_provenance(card, out_dir: Path, spec: dict) -> None:
    """Cards of fetched or imported weights carry the same provenance record as trained ones."""
    from . import provenance

    card.provenance = {**card.provenance, **provenance.collect(
        {k: v for k, v in spec.items() if k != "out_dir"},
        input_digests={str(out_dir / card.checkpoint): card.sha256})}
    card.save(out_dir / "card.json")


def step_model(spec: dict) -> None:
    from .submit import run_step

    kind = spec["source"]["kind"]
    out_dir = Path(spec["out_dir"])
    if kind == "recipe":
        run_step(_settings("train"), "seelike.train:train_model", {"spec": spec}, name=spec["name"],
                 marker=out_dir / "card.json")
    elif kind == "timm_hub":
        # Always here, on the submitting host: compute nodes often have no internet.
        from .models import fetch_from_hub

        src = spec["source"]
        card = fetch_from_hub(spec["name"], src["timm_name"], out_dir, cache_dir=src.get("cache_dir"),
                              kwargs=spec.get("kwargs") or None, layer_spec=spec.get("layers", "auto"))
        _add_provenance(card, out_dir, spec)
    elif kind == "local_file":
        from .models import import_local_weights

        src = spec["source"]
        card = import_local_weights(spec["name"], spec["arch"], spec.get("kwargs", {}), src["path"], out_dir,
                                    expected_sha256=src.get("sha256"), layer_spec=spec.get("layers", "auto"))
        _add_provenance(card, out_dir, spec)
    else:
        raise SystemExit(f"seelike: unknown model source kind '{kind}'")


def check_checkpoint(card, card_path: Path) -> None:
    """The weights must be the ones the card describes; if not, remove both so the next run rebuilds
    the model (retrains, refetches or re-imports it) instead of analysing the wrong weights."""
    from .fileio import sha256_file
    from .submit import StepFailed

    weights = card_path.parent / card.checkpoint
    actual = sha256_file(weights) if weights.is_file() else None
    if actual == card.sha256:
        return
    what = "is missing" if actual is None else f"has sha256 {actual[:16]}..., its card says {card.sha256[:16]}..."
    weights.unlink(missing_ok=True)
    card_path.unlink(missing_ok=True)
    raise StepFailed(f"checkpoint '{weights}' of model '{card.name}' {what}; removed it and '{card_path}': "
                     "run the workflow again to rebuild the model")


def step_extract(spec: dict) -> None:
    from . import provenance
    from .base import digest
    from .fileio import sha256_file
    from .manifest import reusable, shard_path, write_manifest
    from .models import ModelCard
    from .plan import Plan, read_plan_file
    from .submit import run_array

    plan = read_plan_file(spec["plan_file"])
    card = ModelCard.load(spec["card"])
    check_checkpoint(card, Path(spec["card"]))
    config_hash = digest(spec["provenance_config"])
    out_dir = Path(spec["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    n_shards = -(-plan["n_examples"] // (plan["minibatch_size"] * plan["minibatches_per_shard"]))
    files = [shard_path(out_dir, s) for s in range(n_shards)]
    card_sha256 = sha256_file(spec["card"])
    todo = [s for s in range(n_shards) if not reusable(files[s], s, plan, config_hash, card.sha256, card_sha256)]
    job_spec = dict(spec, plan=plan, out=str(out_dir / "shard-{shard:05d}.h5"))
    if todo:
        print(f"seelike: extracting {len(todo)} of {n_shards} shard(s) of '{spec['model']}'", flush=True)
        run_array(_settings("extract"), "seelike.extract:extract_shard",
                  [{"spec": job_spec, "shard_index": s} for s in todo], name=f"{spec['model']}",
                  marker=out_dir / "manifest.json")
    write_manifest(out_dir / "manifest.json", model=spec["model"], dataset=spec["dataset_key"], plan=plan,
                   plan_digest=Plan.from_dict(plan).digest(), shard_files=files,
                   provenance=provenance.collect(spec["provenance_config"], inputs=[spec["card"]]))


def step_cka(spec: dict) -> None:
    from .submit import run_step

    name = Path(spec["out"]).stem
    run_step(_settings("cka"), "seelike.cka_tables:compute_pair", {"spec": spec}, name=name, marker=spec["out"])


def step_table(spec: dict) -> None:
    """The table(s) of a registered analysis: submitted under its executor step, or computed here when
    it has none (light work of seconds, less than a job's start-up)."""
    from . import registry
    from .submit import run_step

    analysis = registry.get(spec["analysis"])
    if analysis.step:
        name = f"{analysis.name}-{Path(spec['out']).stem}"
        run_step(_settings(analysis.step), "seelike.registry:compute", {"spec": spec}, name=name, marker=spec["out"])
    else:
        registry.compute(spec)


def step_figure(spec: dict) -> None:
    """A registered figure, drawn from its tables (light: runs in the rule's process)."""
    from . import registry

    registry.draw(spec)


def step_archive(spec: dict) -> None:
    """Write the run's archive; the HTML report is made first (Snakemake's own --report)."""
    import subprocess

    from .archive import create
    from .config import load
    from .submit import StepFailed

    out = Path(spec["out"])
    report = out.parent / (out.name.split(".tar")[0] + ".report.html")
    # --nolock: the report only reads the run's metadata, and our caller holds the lock.
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", spec["snakefile"], "--configfile",
                           spec["config_file"], "--report", str(report), "--nolock"], capture_output=True, text=True)
    if proc.returncode:
        raise StepFailed(f"the HTML report for the archive failed:\n{proc.stderr[-3000:]}")
    from .specs import final_targets

    config = load(json.loads(Path(spec["config_file"]).read_text()), check_timm=False)
    from .paths import RESULTS

    manifest = create(RESULTS, out, config, spec["include_large"], report=report, figures=final_targets(config))
    print(f"seelike: archived {len(manifest['files'])} files into {spec['out']}"
          + (f", {len(manifest['referenced'])} large files referenced by sha256" if manifest["referenced"] else ""))


def archive_command(args) -> int:
    from . import archive

    if args.action == "verify":
        problems = archive.verify(args.path)
        for p in problems:
            print(f"MISMATCH {p}")
        print(f"seelike: {args.path}: " + ("intact" if not problems else f"{len(problems)} file(s) do not match"))
        return 1 if problems else 0
    if not args.out:
        print("seelike: archive redraw needs --out FOLDER", file=sys.stderr)
        return 2
    drawn = archive.redraw(args.path, args.out)
    print(f"seelike: redrew {len(drawn)} figure file(s) into {args.out}")
    return 0


# The one step registry: `seelike step <name>` is what a rule runs.
STEPS = {"plan": step_plan, "render": step_render, "model": step_model, "extract": step_extract, "cka": step_cka,
         "table": step_table, "figure": step_figure, "archive": step_archive}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="seelike", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("step", help="run one workflow step (called by the Snakemake rules)")
    p.add_argument("name", choices=sorted(STEPS))
    p.add_argument("--spec", required=True, help="the step's spec as JSON")
    v = sub.add_parser("validate", help="validate a config file and print the normalised config")
    v.add_argument("configfile")
    a = sub.add_parser("archive", help="verify an archive of a run, or redraw its figures from its tables")
    a.add_argument("action", choices=["verify", "redraw"])
    a.add_argument("path", help="the .tar.gz (verify) or its extracted folder (verify, redraw)")
    a.add_argument("--out", help="redraw: folder for the redrawn figures")
    args = parser.parse_args(argv)

    from .config import ConfigError
    from .store import ShardError
    from .submit import StepFailed

    try:
        if args.command == "validate":
            from .config import load_file

            print(json.dumps(load_file(args.configfile), indent=2))
            return 0
        if args.command == "archive":
            return archive_command(args)
        STEPS[args.name](json.loads(args.spec))
        return 0
    except (ConfigError, StepFailed, ShardError) as e:
        print(f"seelike: {e}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as e:
        # seelike's own errors about bad input (weights, images, plans) are phrased for the user;
        # anything else is a bug and keeps its traceback.
        if type(e).__module__.startswith("seelike."):
            print(f"seelike: {e}", file=sys.stderr)
            return 1
        raise
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
