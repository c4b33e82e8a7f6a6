"""The one registry of analyses and figures.

Every module under ``seelike/analyses/`` that defines ``ANALYSIS`` (an :class:`Analysis`) is an
analysis: it declares its name, the model families it applies to, its extraction taps, its table
function and its figures (each with a caption ``workflow/report/<id>.rst`` and a report category).
The rules generate one table rule and one figure rule per entry, the steps dispatch through
:func:`compute` and :func:`draw`, and the final targets are the figures' stems. Adding an analysis
is one module and one caption.

Light: importing this module, or discovering the analyses, imports neither torch nor matplotlib.
"""
from __future__ import annotations

import functools
import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from . import paths
from .base import ConfigError

PACKAGE = Path(__file__).resolve().parent
FAMILIES = ("vit", "mixer", "cnn", "other")
# Spec keys that name files: a spec's provenance config is every other key (plus the code digest).
PATH_KEYS = frozenset({"out", "outputs", "tables", "manifest", "manifest_cnn", "card", "cards", "plan_file",
                       "distances", "out_similarity"})

Stems = Callable[[dict], list]                 # cfg -> stems (a model name, or a pair "a__b")
PerStem = Callable[[dict, str], object]        # (cfg, stem) -> value


@dataclass(frozen=True)
class Figure:
    """A figure family. Default stems and tables: one figure per stem of its analysis, drawn from that
    stem's (first) table."""
    id: str                                    # "F3", "V1": the folder under results/figures and the caption name
    title: str                                 # report category, after the id
    draw: Callable[[dict], None]               # draws spec["tables"] into spec["outputs"]
    stems: Optional[Stems] = None
    tables: Optional[PerStem] = None           # (cfg, stem) -> list of table paths
    extra: Optional[PerStem] = None            # (cfg, stem) -> extra spec keys (titles, labels)

    @property
    def category(self) -> str:
        """The report category: the id with its number zero-padded (F01 ... F14, V01), then the title.
        Snakemake's report lists categories sorted as text; padded, that order is the natural one."""
        _, head, num = natural_key(self.id)
        return f"{head}{num:02d} {self.title}" if head != self.id else f"{self.id} {self.title}"

    @property
    def caption(self) -> str:
        return f"{self.id}.rst"


@dataclass(frozen=True)
class Analysis:
    """One analysis: what it taps during extraction, the table it computes, the figures drawn from it."""
    name: str
    families: tuple = FAMILIES                 # model families `models: auto` selects
    why: str = ""                              # why other families do not qualify (config errors)
    source: Optional[str] = None               # "dataset", "checkpoint", "experiment": where its table lives;
                                               # None: no table of its own (figures of the CKA tables)
    compute: Optional[Callable[[dict], object]] = None   # spec -> path(s); never imports matplotlib
    tables: tuple = ()                         # the tables it writes (default: its name)
    step: Optional[str] = None                 # executor.steps entry its job runs under; None: in the rule
    stems: Optional[Stems] = None              # default: models_for(cfg, name)
    inputs: Optional[PerStem] = None           # (cfg, stem) -> input files; default: the stem's manifest/card
    spec: Optional[PerStem] = None             # (cfg, stem) -> the step's settings
    taps: Optional[Callable[[dict, str], dict]] = None   # (cfg, model) -> the vision pass's taps ({} if none);
                                               # an analysis with taps reads the vision pass (vision_manifest)
    check: Optional[Callable[[dict], None]] = None       # raises ConfigError naming the key
    settings: Optional[dict] = None            # JSON-schema properties of `analyses.<name>` besides enabled and
                                               # models; None: the analysis has no `analyses:` entry
    figures: tuple = ()
    report_rows: Optional[dict] = None         # a table that is a report item: row name -> the ids of the figures
                                               # that show it ("F1 F2"), linked on the report's first page
    code: tuple = ()                           # other package modules whose change reruns it
    module: str = field(default="", compare=False)       # set at discovery: the declaring module's file

    @property
    def table_names(self) -> tuple:
        return self.tables or ((self.name,) if self.source else ())


# ----------------------------------------------------------------------------- discovery

@functools.lru_cache(maxsize=1)
def _discover() -> dict:
    from . import analyses as pkg

    found: dict = {}
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{pkg.__name__}.{info.name}")
        a = getattr(module, "ANALYSIS", None)
        if a is None:
            continue
        if not isinstance(a, Analysis):
            raise TypeError(f"{module.__name__}.ANALYSIS must be a seelike.registry.Analysis")
        if a.name in found:
            raise ValueError(f"analysis '{a.name}' is declared twice ({found[a.name].module} and {module.__file__})")
        rel = str(Path(module.__file__).resolve().relative_to(PACKAGE))
        found[a.name] = Analysis(**{**a.__dict__, "module": rel})
    figures: dict = {}
    for a in found.values():
        for f in a.figures:
            if f.id in figures:
                raise ValueError(f"figure '{f.id}' is declared by both '{figures[f.id][1].name}' and '{a.name}'")
            figures[f.id] = (f, a)
    return {"analyses": found, "figures": figures}


def analyses() -> list[Analysis]:
    return list(_discover()["analyses"].values())


def get(name: str) -> Analysis:
    found = _discover()["analyses"]
    if name not in found:
        raise KeyError(f"unknown analysis '{name}'; registered: {', '.join(found)}")
    return found[name]


def figures() -> list[tuple[Figure, Analysis]]:
    return list(_discover()["figures"].values())


def figure(figure_id: str) -> tuple[Figure, Analysis]:
    found = _discover()["figures"]
    if figure_id not in found:
        raise KeyError(f"unknown figure '{figure_id}'; registered: {', '.join(found)}")
    return found[figure_id]


def with_tables() -> list[Analysis]:
    return [a for a in analyses() if a.source and a.compute]


def natural_key(figure_id: str) -> tuple:
    """F1, F2, ..., F14, then V1..V5, then anything else."""
    head = figure_id.rstrip("0123456789")
    num = figure_id[len(head):]
    return ({"F": 0, "V": 1}.get(head, 2), head, int(num) if num else 0)


# ----------------------------------------------------------------------------- the `analyses:` section

def config_schema() -> dict:
    """The schema of the `analyses:` section: an entry per analysis that has settings there."""
    return {a.name: {"type": "object", "additionalProperties": False,
                     "properties": {"enabled": {"type": "boolean", "default": True},
                                    "models": {"$ref": "#/$defs/analysis_models", "default": "auto"},
                                    **a.settings}}
            for a in analyses() if a.settings is not None}


def section(cfg: dict, name: str) -> dict:
    return (cfg.get("analyses") or {}).get(name) or {}


def enabled(cfg: dict, name: str) -> bool:
    """An analysis of the `analyses:` section runs when its key is there and `enabled` is not false."""
    return name in (cfg.get("analyses") or {}) and bool(section(cfg, name).get("enabled", True))


def models_for(cfg: dict, name: str) -> list[str]:
    """Models the analysis runs on (config order); [] when it is switched off."""
    if not enabled(cfg, name):
        return []
    sel = section(cfg, name).get("models", "auto")
    if sel == "auto":
        return [n for n, m in cfg["models"].items() if m.get("family") in get(name).families]
    return [n for n in cfg["models"] if n in sel]


def check_model_list(cfg: dict, key: str, names, families=None, why: str = "") -> None:
    """Every name in `names` (config key `key`) is a configured model, of `families` if given."""
    models = cfg["models"]
    for i, name in enumerate(names):
        where = f"{key}[{i}]"
        if name not in models:
            raise ConfigError(f"config key {where}: unknown model '{name}'; configured: {', '.join(models)}")
        fam = models[name].get("family")
        if families is not None and fam not in families:
            raise ConfigError(f"config key {where}: model '{name}' is a {fam} model; {why}")


def check(cfg: dict) -> None:
    """Every analysis' config check, after the core checks (raises ConfigError naming the key)."""
    for a in analyses():
        sel = section(cfg, a.name).get("models", "auto") if a.name in (cfg.get("analyses") or {}) else "auto"
        if sel != "auto":
            check_model_list(cfg, f"analyses.{a.name}.models", sel, a.families, a.why or a.name)
        if a.check:
            a.check(cfg)


# ----------------------------------------------------------------------------- specs the rules hand the steps

def stems(cfg: dict, a: Analysis) -> list[str]:
    return list(a.stems(cfg) if a.stems else models_for(cfg, a.name))


def figure_stems(cfg: dict, f: Figure, a: Analysis) -> list[str]:
    return list(f.stems(cfg) if f.stems else stems(cfg, a))


def code_digest(a: Analysis, drawing: bool = False) -> str:
    """Digest of the code that makes the analysis' tables (and, with `drawing`, its figures): a change
    to it reruns them, and only them."""
    from .provenance import code_digest as digest_of

    return digest_of(*dict.fromkeys((a.module, "analyses/common.py", *a.code, *(("plotting.py",) if drawing else ()))))


def table_paths(cfg: dict, a: Analysis, stem: str) -> list[str]:
    return [paths.table(cfg, a.source, t, stem) for t in a.table_names]


def table_inputs(cfg: dict, a: Analysis, stem: str) -> list[str]:
    if a.inputs:
        return list(a.inputs(cfg, stem))
    if a.source == "checkpoint":
        return [paths.card(stem)]
    if a.source == "dataset":
        return [manifest_of(cfg, a, stem)]
    return []


def _provenance(spec: dict, **more) -> dict:
    return {**{k: v for k, v in spec.items() if k not in PATH_KEYS}, **more}


def table_spec(cfg: dict, name: str, stem: str) -> dict:
    """The spec of analysis `name`'s table step for `stem`."""
    a = get(name)
    spec = {"analysis": a.name, "model": stem}
    if a.source == "checkpoint" and not a.inputs:
        spec["card"] = paths.card(stem)
    elif a.source == "dataset":
        spec["dataset_key"] = paths.dataset_key(cfg)
        if not a.inputs:
            spec["manifest"] = manifest_of(cfg, a, stem)
    spec.update(a.spec(cfg, stem) if a.spec else {})
    spec["out"] = table_paths(cfg, a, stem)[0]
    spec["provenance_config"] = _provenance(spec, code=code_digest(a))
    return spec


def figure_spec(cfg: dict, figure_id: str, stem: str) -> dict:
    """The spec of figure `figure_id` for `stem`: its tables, outputs and drawing settings."""
    f, a = figure(figure_id)
    tables = list(f.tables(cfg, stem)) if f.tables else table_paths(cfg, a, stem)[:1]
    extra = dict(f.extra(cfg, stem)) if f.extra else {}
    spec = {"figure": f.id, "stem": stem, "tables": [str(t) for t in tables],
            "outputs": paths.figures(cfg, f.id, stem), "dpi": cfg["figures"]["dpi"], **extra}
    spec["provenance_config"] = {"figure": f.id, "stem": stem, "code": code_digest(a, drawing=True), **extra}
    return spec


def extraction_taps(cfg: dict, model: str) -> dict:
    """What the vision pass of `model` must tap and reduce for the analyses that cover it ({}: no
    vision pass)."""
    taps: dict = {}
    for a in analyses():
        if a.taps:
            taps.update(a.taps(cfg, model) or {})
    return taps


def vision_models(cfg: dict) -> list[str]:
    """The models with a vision pass: those some analysis taps."""
    return [m for m in cfg["models"] if extraction_taps(cfg, m)]


def manifest_of(cfg: dict, a: Analysis, model: str) -> str:
    """The extraction an analysis of `source: dataset` reads for `model`: its vision pass when the
    analysis taps one, else the Grams' pass."""
    return paths.vision_manifest(cfg, model) if a.taps else paths.manifest(cfg, model)


def final_figures(cfg: dict) -> list[str]:
    """Every figure file the config asks for."""
    out = []
    for f, a in sorted(figures(), key=lambda fa: natural_key(fa[0].id)):
        for stem in figure_stems(cfg, f, a):
            out += paths.figures(cfg, f.id, stem)
    return out


def final_tables(cfg: dict) -> list[str]:
    """The tables of analyses that draw no figure (the findings): targets in their own right."""
    return [p for a in with_tables() if not a.figures for stem in stems(cfg, a) for p in table_paths(cfg, a, stem)]


# ----------------------------------------------------------------------------- step entry points

def compute(spec: dict):
    """Compute analysis `spec["analysis"]`'s table(s) (runs in the submitted job, or in the rule)."""
    return get(spec["analysis"]).compute(spec)


def draw(spec: dict) -> None:
    """Draw figure `spec["figure"]` from its tables."""
    figure(spec["figure"])[0].draw(spec)
