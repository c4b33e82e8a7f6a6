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
    from .data import dataset_fingerprint, dataset_size
    from .fileio import write_json_atomic
    from .plan import make_plan

    # Plans refer to positions within the split, the index every dataset item carries.
    indices = np.arange(dataset_size(spec["dataset"], spec["split"]))
    plan = make_plan(f"{spec['dataset_key']}:{dataset_fingerprint(spec['dataset'])}", indices, spec["n_examples"],
                     spec["minibatch_size"], spec["minibatches_per_shard"], spec["seed"])
    write_json_atomic(spec["out"], plan.to_dict())


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
        fetch_from_hub(spec["name"], src["timm_name"], out_dir, cache_dir=src.get("cache_dir"),
                       kwargs=spec.get("kwargs") or None)
    elif kind == "local_file":
        from .models import import_local_weights

        src = spec["source"]
        import_local_weights(spec["name"], spec["arch"], spec.get("kwargs", {}), src["path"], out_dir,
                             expected_sha256=src.get("sha256"))
    else:
        raise SystemExit(f"seelike: unknown model source kind '{kind}'")


def step_extract(spec: dict) -> None:
    from . import provenance
    from .config import digest
    from .manifest import reusable, shard_path, write_manifest
    from .models import ModelCard
    from .plan import Plan
    from .submit import run_array

    plan = json.loads(Path(spec["plan_file"]).read_text())
    card = ModelCard.load(spec["card"])
    config_hash = digest(spec["provenance_config"])
    out_dir = Path(spec["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    n_shards = -(-plan["n_examples"] // (plan["minibatch_size"] * plan["minibatches_per_shard"]))
    files = [shard_path(out_dir, s) for s in range(n_shards)]
    todo = [s for s in range(n_shards) if not reusable(files[s], plan, config_hash, card.sha256)]
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


def step_figure(spec: dict) -> None:
    from .figures import plot_cka

    plot_cka(spec)


STEPS = {"plan": step_plan, "model": step_model, "extract": step_extract, "cka": step_cka, "figure": step_figure}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="seelike", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("step", help="run one workflow step (called by the Snakemake rules)")
    p.add_argument("name", choices=sorted(STEPS))
    p.add_argument("--spec", required=True, help="the step's spec as JSON")
    v = sub.add_parser("validate", help="validate a config file and print the normalised config")
    v.add_argument("configfile")
    args = parser.parse_args(argv)

    from .config import ConfigError
    from .submit import StepFailed

    try:
        if args.command == "validate":
            from .config import load_file

            print(json.dumps(load_file(args.configfile), indent=2))
            return 0
        STEPS[args.name](json.loads(args.spec))
        return 0
    except (ConfigError, StepFailed) as e:
        print(f"seelike: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
