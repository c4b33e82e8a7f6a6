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

from . import paths


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
    card.save(out_dir / paths.file_name(paths.CARD))


def step_model(spec: dict) -> None:
    from .submit import run_step

    kind = spec["source"]["kind"]
    out_dir = Path(spec["out_dir"])
    if kind == "recipe":
        run_step(_settings("train"), "seelike.train:train_model", {"spec": spec}, name=spec["name"],
                 marker=out_dir / paths.file_name(paths.CARD))
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
    from .specs import shard_job_spec
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
    job_spec = shard_job_spec(spec, plan)
    if todo:
        what = "the vision pass of " if spec.get("kind") == "vision" else ""
        print(f"seelike: extracting {len(todo)} of {n_shards} shard(s) of {what}'{spec['model']}'", flush=True)
        run_array(_settings("extract"), "seelike.extract:extract_shard",
                  [{"spec": job_spec, "shard_index": s} for s in todo],
                  name=spec["model"] + ("-vision" if spec.get("kind") == "vision" else ""),
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

    from .fileio import read_json

    config = load(read_json(spec["config_file"], "run config", "run the workflow again: building its DAG rewrites it"),
                  check_timm=False)
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


# ----------------------------------------------------------------------------- seelike status / show

def _listing(names, limit: int = 12) -> str:
    names = list(names)
    more = f", ... (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more if names else "none"


def _run_paths(results: Path):
    """The run's working directory (where snakemake runs: the results folder's parent) and how a path
    under it is shown."""
    workdir = results.resolve().parent

    def shown(path) -> str:
        try:
            return str(Path(path).resolve().relative_to(Path.cwd()))
        except ValueError:
            return str(path)
    return workdir, shown


def _dag_summary(results: Path, configfile: str | None) -> tuple[list[dict] | None, str]:
    """Rows of `snakemake --summary` for the run's working directory (a dry run: nothing is made), or
    None and the reason."""
    import subprocess

    from .paths import RESULTS
    from .provenance import REPO_ROOT

    if results.resolve().name != RESULTS:
        return None, (f"the DAG check runs snakemake in the folder holding '{RESULTS}/'; '{results}' is not named "
                      f"'{RESULTS}', so it was skipped")
    snakefile = REPO_ROOT / "workflow" / "Snakefile"
    if not snakefile.is_file():
        return None, f"the workflow's Snakefile is not at '{snakefile}' (run seelike from a checkout of the repository)"
    cmd = [sys.executable, "-m", "snakemake", "-s", str(snakefile), "--directory", str(results.resolve().parent),
           "--summary"] + (["--configfile", str(Path(configfile).resolve())] if configfile else [])
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        lines = [l for l in (proc.stderr + proc.stdout).splitlines() if "seelike:" in l] or \
            (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        return None, "snakemake could not build the DAG:\n    " + "\n    ".join(lines)
    rows, header = [], None
    for line in proc.stdout.splitlines():
        cells = line.split("\t")
        if header is None:
            if cells[0] == "output_file":
                header = cells
            continue
        if len(cells) == len(header):
            rows.append(dict(zip(header, cells)))
    if header is None:
        return None, "snakemake --summary printed no table:\n" + proc.stdout[-2000:] + proc.stderr[-2000:]
    return rows, ""


def status_command(args) -> int:
    """What a run holds, what the configured DAG would still make and why, and where the logs are."""
    import collections
    import textwrap
    import time

    from . import api, paths
    from .models import CardError, ModelCard

    results = Path(args.results)
    if not results.is_dir():
        print(f"seelike: results folder '{results}' does not exist; pass --results with the folder a run "
              f"wrote (the '{paths.RESULTS}' folder where snakemake ran)", file=sys.stderr)
        return 1
    workdir, shown = _run_paths(results)
    run_config = api.results_file(results, paths.RUN_CONFIG)
    if args.configfile:
        configfile, config_note = args.configfile, args.configfile
    elif run_config.is_file():
        configfile, config_note = str(run_config), f"{shown(run_config)} (the config of the run's last DAG build)"
    else:
        configfile, config_note = None, "the demo config (no --configfile given and the run recorded none)"
    print(f"seelike status of {shown(results)}")
    print(f"config: {config_note}\n")

    cards = api.locate(results, paths.CARD)
    print(f"models with cards ({len(cards)}):")
    for path, w in cards:
        try:
            card = ModelCard.load(path)
            acc = (card.metrics or {}).get("test_accuracy")
            print(f"  {w['model']:<18} {card.arch} ({card.family}), {len(card.layers)} layers"
                  + (f", test accuracy {acc:.3f}" if isinstance(acc, (int, float)) else ""))
        except (CardError, OSError, ValueError) as e:
            print(f"  {w['model']:<18} unreadable card: {e}")
    extractions = api.locate(results, paths.MANIFEST)
    by_dataset = collections.defaultdict(list)
    for _, w in extractions:
        by_dataset[w["dataset"]].append(w["model"])
    print(f"extractions ({len(extractions)}): "
          + ("; ".join(f"{d}: {_listing(m)}" for d, m in sorted(by_dataset.items())) or "none"))
    try:
        tables = api.table_files(results)
    except ValueError as e:       # several datasets and no recorded choice
        print(f"tables: {e}")
        tables = {}
    kinds = collections.defaultdict(list)
    for name, (kind, _) in tables.items():
        kinds[kind].append(name)
    print(f"tables ({len(tables)}):")
    for kind, names in kinds.items():
        print(f"  {kind} ({len(names)}): {_listing(names, 8)}")
    if "findings" not in kinds:
        print("  findings: not written yet")
    figures = api.figure_files(results)
    by_id = collections.defaultdict(list)
    for key in figures:
        fid, stem = key.split("/", 1)
        by_id[fid].append(stem)
    from .registry import natural_key

    n_files = sum(len(v) for v in figures.values())
    print(f"figures ({len(figures)} in {n_files} files): "
          + ("; ".join(f"{fid} {_listing(by_id[fid], 4)}" for fid in sorted(by_id, key=natural_key)) or "none"))
    archives = api.locate(results, paths.ARCHIVE)
    print(f"archive: {_listing(shown(p) for p, _ in archives)}\n")

    status = 0
    if args.no_dag:
        print("workflow: not checked (--no-dag)")
    else:
        here = "this folder" if workdir == Path.cwd().resolve() else shown(workdir)
        print(f"workflow (snakemake --summary, a dry run in {here}):")
        rows, problem = _dag_summary(results, configfile)
        if rows is None:
            print(f"  {problem}")
            status = 1
        else:
            todo = [r for r in rows if r.get("plan") != "no update"]
            print(f"  {len(rows)} outputs in the configured DAG: {len(rows) - len(todo)} up to date, "
                  f"{len(todo)} to (re)make")
            reasons = collections.defaultdict(collections.Counter)
            for r in todo:   # "ok" with an update pending: an input of the output is remade first
                reason = r.get("status", "?")
                reasons["an input is remade" if reason == "ok" else reason][r.get("rule", "?")] += 1
            for reason, rules in sorted(reasons.items(), key=lambda kv: -sum(kv[1].values())):
                # a no-break space keeps each "rule xN" on one line (textwrap breaks at ASCII spaces only)
                print(textwrap.fill(f"{reason} ({sum(rules.values())}): "
                                    + ", ".join(f"{rule}\u00a0x{c}" for rule, c in rules.items()),
                                    width=110, initial_indent="    ", subsequent_indent="      ").replace("\u00a0", " "))
            logged = [r["log-file(s)"] for r in todo
                      if r.get("status") == "missing" and r.get("log-file(s)", "-") not in ("", "-")
                      and api.results_file(results, r["log-file(s)"].split(",")[0]).is_file()]
            if logged:
                print(f"    missing outputs whose step has run before (see its log): "
                      f"{_listing(dict.fromkeys(shown(api.results_file(results, l.split(',')[0])) for l in logged), 6)}")
            in_dag = {api.results_file(results, r["output_file"]).resolve() for r in rows}
            present = [p for _, p in tables.values()] + [p for files in figures.values() for p in files]
            stray = [p for p in present if p.resolve() not in in_dag]
            if stray:
                print(f"  {len(stray)} table/figure file(s) not in this config's DAG (from another config): "
                      f"{_listing((shown(p) for p in stray), 6)}")
            cfg = f" --configfile {configfile}" if configfile else ""
            if todo:
                where = "" if workdir == Path.cwd().resolve() else f"in {shown(workdir)}: "
                print(f"  next: {where}snakemake --cores N{cfg} (add -n to list every job and its reason)")
            else:
                print("  everything the config asks for is up to date")

    logs, jobs = api.results_file(results, paths.LOGS), api.results_file(results, paths.JOB_LOGS)
    rule_logs = sorted(logs.rglob("*.log"), key=lambda p: p.stat().st_mtime) if logs.is_dir() else []
    job_dirs = [p for p in jobs.glob("*/*/*") if p.is_dir()] if jobs.is_dir() else []
    print(f"\nlogs: {shown(logs)}/<output path>.log for each rule ({len(rule_logs)}), "
          f"{shown(jobs)}/<step>/<name>/<job id>/ for each submitted job ({len(job_dirs)})")
    for p in rule_logs[-3:][::-1]:
        print(f"  {time.strftime('%Y-%m-%d %H:%M', time.localtime(p.stat().st_mtime))}  {shown(p)}")
    return status


def _provenance_lines(record: dict, results: Path, indent: str = "  ") -> list[str]:
    import json

    from . import api

    git = record.get("git") or {}
    commit = (git.get("commit") or "unknown")[:12]
    state = {True: ", uncommitted changes", False: ", clean"}.get(git.get("dirty"), "")
    lines = [f"{indent}made {record.get('created')} by seelike {record.get('seelike_version')} (commit {commit}{state}) "
             f"on {record.get('host')}" + (f", SLURM job {record['slurm_job_id']}" if record.get("slurm_job_id") else "")]
    config = json.dumps(record.get("config"), sort_keys=True)
    lines.append(f"{indent}config (hash {record.get('config_hash')}): "
                 + (config if len(config) <= 300 else config[:300] + " ..."))
    checked = api.check_inputs(record, results)
    meaning = {"ok": "unchanged", "changed": "CHANGED since (the result is stale)", "missing": "missing now"}
    lines.append(f"{indent}inputs ({len(checked)}):")
    lines += [f"{indent}  {name}: {meaning[s]}" for name, s in checked.items()]
    return lines


def _results_of(path: Path, default: Path) -> Path:
    """The results folder a file lies in: the nearest ancestor named like paths.RESULTS, else `default`."""
    from .paths import RESULTS

    for parent in path.resolve().parents:
        if parent.name == RESULTS:
            return parent
    return default


def _show_table(table, results: Path, rows: int) -> int:
    frame = table.frame
    print(f"table {table.name}" + (f" ({table.kind})" if table.kind else "") + f": {table.path}")
    print(f"{len(frame)} rows x {len(frame.columns)} columns")
    if table.kind == "findings":
        from .analyses.findings import format_table

        print(format_table(frame, detail=True))
    elif rows and len(frame) > rows:
        print(frame.to_string(max_rows=rows, min_rows=rows))
        print(f"(the first and last {rows // 2} of {len(frame)} rows; --rows 0 prints them all, "
              f"seelike.api.load_tables loads them as DataFrames)")
    else:
        print(frame.to_string())
    print("provenance:")
    print("\n".join(_provenance_lines(table.provenance, results)))
    return 0


def _caption(figure_id: str, stem: str) -> tuple[Path, str] | None:
    """The figure's caption as the report shows it (workflow/report/<ID>.rst, rendered for `stem`)."""
    from types import SimpleNamespace

    from .provenance import REPO_ROOT
    from .registry import figure

    try:
        f, _ = figure(figure_id)
    except KeyError:
        return None
    path = REPO_ROOT / "workflow" / "report" / f.caption
    if not path.is_file():
        return None
    text = path.read_text()
    try:
        import jinja2

        text = jinja2.Template(text).render(snakemake=SimpleNamespace(wildcards=SimpleNamespace(stem=stem)))
    except ImportError:
        pass
    return path, text.strip()


def _show_figure(key: str, files: list[Path], results: Path) -> int:
    import textwrap

    from .provenance import read_sidecar

    from .registry import figure

    fid, stem = key.split("/", 1)
    try:
        title = f": {figure(fid)[0].title}"
    except KeyError:
        title = ""
    print(f"figure {key}{title}")
    for p in files:
        print(f"  {p}")
    cap = _caption(fid, stem)
    if cap:
        path, text = cap
        print(f"caption ({path.relative_to(path.parents[2])}):")
        for para in text.split("\n\n"):
            print(textwrap.fill(" ".join(para.split()), width=100, initial_indent="  ", subsequent_indent="  "))
    print("provenance:")
    print("\n".join(_provenance_lines(read_sidecar(files[0]), results)))
    return 0


SHOW_HELP = """\
NAME is what to show, in any of these forms:
  a file                   results/cka/synth/vit__resnet.csv, results/figures/F1/vit.png
  cka/<x>__<y>             a CKA table, e.g. cka/vit__resnet; cka/<m> is cka/<m>__<m> (within m)
  <table>/<stem>           a vision or experiment table, e.g. attention_distance/vit,
                           head_cka/vit__resnet, patch_embedding/vit, probes/vit, skip_ablation/vit5_none
  findings                 the findings table of the analysis dataset
  <figure id>/<stem>       a figure, e.g. F1/vit, f2/vit__resnet, V5/synth; a bare id (F1) lists its stems
  a path under results/    without its suffix, e.g. cka/synth/vit__resnet or figures/F1/vit

A table prints with its provenance (what made it, from which inputs, and whether they changed since);
a figure prints its files, its caption (workflow/report/<ID>.rst) and its provenance.
`seelike status` lists everything a run holds."""


def _resolve(query: str, tables: dict, figures: dict, results: Path):
    """("table", name) | ("figure", key) | ("choose", [keys]) | ("unknown", [close matches])."""
    import difflib

    from .paths import RESULTS

    q = query.strip().strip("/")
    q = q[len(RESULTS) + 1:] if q.startswith(RESULTS + "/") else q
    for suffix in (".csv", ".png", ".pdf", ".svg"):
        q = q.removesuffix(suffix)
    if q in tables:
        return "table", q
    if q.startswith("cka/") and "__" not in q and f"{q}__{q[4:]}" in tables:
        return "table", f"{q}__{q[4:]}"
    fig_ids = {k.split("/", 1)[0].upper(): k.split("/", 1)[0] for k in figures}
    head, _, rest = q.partition("/")
    if head.upper() in fig_ids:
        fid = fig_ids[head.upper()]
        if rest and f"{fid}/{rest}" in figures:
            return "figure", f"{fid}/{rest}"
        if not rest:
            stems = [k for k in figures if k.startswith(fid + "/")]
            return ("figure", stems[0]) if len(stems) == 1 else ("choose", stems)
    by_path = {p.relative_to(results).with_suffix("").as_posix(): ("table", n) for n, (_, p) in tables.items()}
    by_path.update({files[0].relative_to(results).with_suffix("").as_posix(): ("figure", k)
                    for k, files in figures.items()})
    if q in by_path:
        return by_path[q]
    names = list(tables) + list(figures) + sorted(set(fig_ids.values()))
    close = difflib.get_close_matches(q, names, n=6, cutoff=0.5)
    close += [n for n in names if q and q.lower() in n.lower() and n not in close][:8 - len(close)]
    return "unknown", close


def show_command(args) -> int:
    from . import api

    results = Path(args.results)
    direct = Path(args.name)
    if direct.is_file() and direct.suffix == ".csv":
        return _show_table(api.load_table(direct, name=direct.stem), _results_of(direct, results), args.rows)
    if direct.is_file() and direct.suffix in (".png", ".pdf", ".svg"):
        siblings = sorted(p for p in direct.parent.glob(direct.stem + ".*") if p.suffix in (".png", ".pdf", ".svg"))
        return _show_figure(f"{direct.parent.name}/{direct.stem}", siblings, _results_of(direct, results))
    if not results.is_dir():
        print(f"seelike: results folder '{results}' does not exist and '{args.name}' is not a file; pass --results "
              "with the folder a run wrote", file=sys.stderr)
        return 1
    tables = api.table_files(results, dataset=args.dataset)
    figures = api.figure_files(results)
    what, found = _resolve(args.name, tables, figures, results)
    if what == "table":
        kind, path = tables[found]
        return _show_table(api.load_table(path, found, kind), results, args.rows)
    if what == "figure":
        return _show_figure(found, figures[found], results)
    if what == "choose":
        print(f"seelike: '{args.name}' is a figure drawn for {len(found)} stems: {_listing(found, 20)}; "
              f"name one, e.g. seelike show {found[0]}", file=sys.stderr)
        return 1
    hint = f"; close matches: {', '.join(found)}" if found else ""
    print(f"seelike: no table or figure '{args.name}' in '{results}'{hint}. `seelike status --results {results}` "
          "lists what the run holds; `seelike show --help` lists the accepted forms", file=sys.stderr)
    return 1


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
    from .paths import RESULTS

    st = sub.add_parser("status", help="what a run holds, what the configured DAG would still make, where the logs are",
                        description="Lists the run's model cards, extractions, tables and figures; dry-runs the "
                        "workflow (snakemake --summary, nothing is made) with the config to report which outputs "
                        "would be made or remade and why; and says where the logs are. Like any snakemake run, the "
                        "dry run records the config it was given in the results folder (.seelike/config.json).")
    st.add_argument("--configfile", help="the run's config (default: the config of the run's last DAG build, "
                    "recorded in the results folder; else the demo)")
    st.add_argument("--results", default=RESULTS, help="the run's results folder (default: %(default)s)")
    st.add_argument("--no-dag", action="store_true", help="skip the snakemake dry run")
    sh = sub.add_parser("show", help="print a table or a figure's files and caption, with provenance",
                        description="Print a table of a run, or a figure's files and caption, with provenance.",
                        epilog=SHOW_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    sh.add_argument("name", help="a table or figure (forms below)")
    sh.add_argument("--results", default=RESULTS, help="the run's results folder (default: %(default)s)")
    sh.add_argument("--dataset", help="the analysis dataset, when the results folder holds several")
    sh.add_argument("--rows", type=int, default=40, help="table rows to print, first and last half (0: all; "
                    "default %(default)s)")
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
        if args.command in ("status", "show"):
            try:
                return (status_command if args.command == "status" else show_command)(args)
            except BrokenPipeError:            # the output piped into `head` or a pager that quit
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                return 0
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
