"""One owner for every concept: the registry of analyses and figures, the import graph, light imports."""
from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, snakemake, tiny_config, write_config

PACKAGE = ROOT / "scripts" / "seelike"


def test_every_figure_has_one_owner_and_a_caption_that_uses_its_wildcard():
    from seelike import registry

    figures = registry.figures()
    ids = [f.id for f, _ in figures]
    assert len(ids) == len(set(ids))
    expected = {f"F{i}" for i in range(1, 15)} | {f"V{i}" for i in range(1, 6)}
    assert set(ids) == expected
    for f, a in figures:
        caption = ROOT / "workflow" / "report" / f.caption
        assert caption.is_file(), caption
        # generated figure rules have one wildcard, {stem}
        used = set(re.findall(r"snakemake\.wildcards\.(\w+)", caption.read_text()))
        assert used <= {"stem"}, (f.id, used)
        assert a.module.startswith("analyses/")
    assert sorted(ids, key=registry.natural_key)[:3] == ["F1", "F2", "F3"]
    assert sorted(ids, key=registry.natural_key)[-1] == "V5"


def test_no_module_builds_a_results_path_from_strings():
    """Only seelike.paths spells out results/ paths; other modules fill its patterns."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "paths.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and re.match(r"results(/|$)", node.value):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
            if isinstance(node, ast.JoinedStr):
                first = node.values[0] if node.values else None
                if isinstance(first, ast.Constant) and str(first.value).startswith("results/"):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    for path in (ROOT / "workflow").rglob("*.smk"):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"[\"']results/", line):
                offenders.append(f"{path.relative_to(ROOT)}:{i}")
    assert not offenders, offenders


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(absolute module imported, names taken from it, line) for every import in a package module,
    inside functions too."""
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    package = parts if path.name == "__init__.py" else parts[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.append((module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
    return out


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_import_graph_has_no_circles_and_no_private_names():
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph, private = {}, []
    for name, path in modules.items():
        edges = set()
        for module, names, line in _imports(path):
            for target in [module] + [f"{module}.{n}" for n in names]:
                if target in modules and target != name:
                    edges.add(target)
            if module.startswith("seelike"):
                private += [f"{name}:{line} imports {module}.{n}" for n in names
                            if n.startswith("_") and n not in ("__version__", "__future__")]
        # a package's __init__ is not an edge of its own submodules
        graph[name] = {e for e in edges if not name.startswith(e + ".")}
    assert not private, private

    seen, stack, circles = set(), [], []

    def visit(node):
        if node in stack:
            circles.append(stack[stack.index(node):] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for nxt in sorted(graph[node]):
            visit(nxt)
        stack.pop()

    for node in sorted(graph):
        visit(node)
    assert not circles, circles


def test_light_side_imports_neither_torch_nor_matplotlib():
    """The waiting processes (cli, submit), the config, specs, paths and the registry with every analysis
    discovered stay light: no torch, no matplotlib."""
    code = ("import sys, seelike.config, seelike.specs, seelike.paths, seelike.cli, seelike.submit, seelike.registry\n"
            "seelike.registry.analyses()\n"
            "print(sorted(m for m in ('torch', 'matplotlib', 'timm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


class _AnySpec(dict):
    """A figure spec whose keys other than the tables read as empty (labels, titles, ...)."""

    def __missing__(self, key):
        return []


def _figure_ids() -> list[str]:
    from seelike import registry

    return sorted((f.id for f, _ in registry.figures()), key=registry.natural_key)


@pytest.mark.parametrize("fid", _figure_ids())
@pytest.mark.parametrize("damage", ["header only", "cut short", "missing"])
def test_every_figure_reads_its_tables_through_the_checked_reader(fid, damage, tmp_path):
    """A figure's table that is empty, cut short mid-quote or missing stops the drawing with the checked
    reader's error (seelike.analyses.common.read_table), which names the table and the rerun, not a
    pandas or plotting traceback. Every registered figure family, a new one included."""
    from seelike import registry

    table = tmp_path / "t.csv"
    if damage == "header only":
        table.write_text("model,layer_x,layer_y,cka\n")
    elif damage == "cut short":
        table.write_text('model,layer\n"vit,blocks.0\n')
    spec = _AnySpec(figure=fid, tables=[str(table)] * 3, distances=str(table), outputs=[str(tmp_path / "f.png")],
                    dpi=40)
    with pytest.raises((ValueError, FileNotFoundError), match=r"table '.*t\.csv' (is empty|is missing|cannot be read "
                                                              r"as CSV).*rerun the step that writes it"):
        registry.draw(spec)


def test_table_functions_never_import_matplotlib(tmp_path):
    """Computing a table loads no plotting code: a table from model cards (F8's) computed in a fresh process,
    and no table function's source names the drawing helpers."""
    import inspect

    from seelike import registry

    for a in registry.with_tables():
        source = inspect.getsource(a.compute)
        assert not re.search(r"matplotlib|pyplot|finish_figure|plotting", source), a.name
    from seelike.models.card import ModelCard

    cards = {}
    for name, block in (("base", None), ("abl", 1)):
        card = ModelCard(name=name, arch="vit_tiny_patch16_224", kwargs={}, family="vit",
                         source={"kind": "recipe"}, checkpoint="weights.safetensors", sha256="0" * 64,
                         layers=[{"name": "blocks.0", "module": "blocks.0", "tap": "output"}], num_prefix_tokens=1,
                         input_size=[3, 32, 32], num_classes=10, pretrained_cfg={},
                         metrics={"test_accuracy": 0.5, "chance": 0.1},
                         modifications={"remove_skip": {"block": block, "branch": "both"}} if block else {})
        cards[name] = str(card.save(tmp_path / f"{name}.json"))
    spec = {"analysis": "skip_ablation", "baseline": "base", "cards": cards, "out": str(tmp_path / "t.csv"),
            "provenance_config": {}}
    code = ("import json, sys\nfrom seelike import registry\n"
            f"registry.compute(json.loads({json.dumps(json.dumps(spec))}))\n"
            "print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    assert (tmp_path / "t.csv").read_text().count("\n") == 3
    # a card without the accuracy the table reads: an error that names the card and what to rerun
    from seelike.analyses.skip_ablation import skip_table

    card.metrics = {}
    card.save(tmp_path / "abl.json")
    with pytest.raises(ValueError, match=r"abl\.json of 'abl' records no test_accuracy.*--forcerun"):
        skip_table(dict(spec, out=str(tmp_path / "t2.csv")))


TOY = '''"""T1: parameters of each top-level module of a model, from the checkpoint alone (a toy analysis)."""
from __future__ import annotations

from ..plotting import finish_figure, pyplot
from ..registry import Analysis, Figure
from .common import checkpoint_model, write_table


def compute(spec: dict) -> str:
    import pandas as pd

    _card, model = checkpoint_model(spec)
    rows = [{"model": spec["model"], "module": n, "parameters": sum(p.numel() for p in m.parameters())}
            for n, m in model.named_children()]
    return write_table(pd.DataFrame(rows), spec["out"], spec, inputs=[spec["card"]])


def figure(spec: dict) -> None:
    import pandas as pd

    t = pd.read_csv(spec["tables"][0])
    fig, ax = pyplot().subplots(figsize=(4, 3))
    ax.bar(t.module, t.parameters)
    finish_figure(fig, spec)


ANALYSIS = Analysis(name="toy_params", settings={}, families=("vit",), source="checkpoint", compute=compute,
                    figures=(Figure("T1", "toy parameter counts", figure),))
'''


@pytest.mark.slow
def test_a_new_analysis_is_one_module_and_one_caption(tmp_path):
    """Add a module under analyses/ and a caption, change nothing else: the analysis is planned in the
    DAG, its table and figure are made, and the report shows its caption in its category."""
    repo = tmp_path / "repo"
    for part in ("workflow", "scripts", "config", "envs"):
        shutil.copytree(ROOT / part, repo / part, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (repo / "scripts" / "seelike" / "analyses" / "toy_params.py").write_text(TOY)
    (repo / "workflow" / "report" / "T1.rst").write_text(
        "**T1: toy parameter counts** of ``{{ snakemake.wildcards.stem }}``, one bar per top-level module.\n")
    cfg = tiny_config()
    cfg["models"] = {"vit": cfg["models"]["vit"]}
    cfg["analyses"] = {"toy_params": {}}
    run = tmp_path / "run"
    run.mkdir()
    cfgfile = write_config(run / "toy.yaml", cfg)
    snakefile = repo / "workflow" / "Snakefile"
    dry = snakemake(run, cfgfile, "-n", "--quiet", "rules", snakefile=snakefile)
    assert re.search(r"^table_toy_params\s+1$", dry.stdout, re.M) and re.search(r"^figure_t1\s+1$", dry.stdout, re.M)
    target = "results/figures/T1/vit.png"
    snakemake(run, cfgfile, "--cores", "2", target, snakefile=snakefile)
    table = run / "results" / "vision" / "checkpoint" / "toy_params" / "vit.csv"
    assert "blocks" in table.read_text() and (run / target).stat().st_size > 1000
    snakemake(run, cfgfile, "--report", str(run / "report.html"), target, snakefile=snakefile)
    html = (run / "report.html").read_text(errors="replace")
    assert "T01 toy parameter counts" in html and "one bar per top-level module" in html


def test_every_results_pattern_globs_and_matches_its_own_paths():
    """seelike.paths.as_glob / match (what the archive selects files by): every pattern under results/,
    filled with sample values, is found by its glob and gives those values back; a value that would span
    folders, or another pattern's path, does not match."""
    import fnmatch

    from seelike import paths
    from seelike.manifest import SHARD_NAME

    patterns = [v for v in vars(paths).values() if isinstance(v, str) and v.startswith(paths.RESULTS + "/") and "{" in v]
    patterns += list(paths.TABLES.values()) + [f"{paths.EXTRACT_DIR}/{SHARD_NAME}"]
    assert len(patterns) >= 14
    for pattern in patterns:
        values = {w: f"v{i}_{w}" for i, w in enumerate(paths.wildcards(pattern))}
        full = paths.fill(pattern, **values).format(shard=7) if "{shard" in pattern else paths.fill(pattern, **values)
        rel = full[len(paths.RESULTS) + 1:]
        assert fnmatch.fnmatchcase(rel, paths.as_glob(pattern)), (pattern, rel)
        assert "{" not in paths.as_glob(pattern) and not paths.as_glob(pattern).startswith(paths.RESULTS + "/")
        assert paths.match(pattern, rel) == values, pattern
        if values:
            nested = paths.fill(pattern, **{w: f"a/{v}" for w, v in values.items()}).format(shard=7)
            assert paths.match(pattern, nested[len(paths.RESULTS) + 1:]) is None, pattern
    assert paths.match(paths.CKA_TABLE, "cka/synth/vit__resnet.csv") == {"dataset": "synth", "x": "vit", "y": "resnet"}
    assert paths.match(paths.CKA_TABLE, "vision/synth/t/vit.csv") is None
    assert paths.match(f"{paths.VISION_DIR}/{SHARD_NAME}", "extract/synth/vit/vision/shard-00003.h5") == \
        {"dataset": "synth", "model": "vit"}
    assert paths.match(f"{paths.EXTRACT_DIR}/{SHARD_NAME}", "extract/synth/vit/vision/shard-00003.h5") is None
    assert [paths.file_name(p) for p in (paths.CARD, paths.WEIGHTS, paths.METRICS)] == \
        ["card.json", "weights.safetensors", "metrics.csv"]
    with pytest.raises(ValueError, match="no fixed file name"):
        paths.file_name(paths.CKA_TABLE)
