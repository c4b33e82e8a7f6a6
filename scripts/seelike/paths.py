"""Every path under ``results/``, once, as a Snakemake wildcard pattern.

The rules use these patterns as their outputs; the spec builders fill them in with :func:`fill`.
No other module builds a results path from strings. ``results/README.md`` describes the layout.
"""
from __future__ import annotations

import re

RESULTS = "results"

RUN_CONFIG = f"{RESULTS}/.seelike/config.json"            # the effective config of the last DAG build
RENDERED = f"{RESULTS}/data/{{dataset}}/{{split}}-{{key}}.npy"   # key: the render key (seelike.data)
PLAN = f"{RESULTS}/plans/{{dataset}}.json"
MODEL_DIR = f"{RESULTS}/models/{{model}}"
CARD = f"{MODEL_DIR}/card.json"
WEIGHTS = f"{MODEL_DIR}/weights.safetensors"
METRICS = f"{MODEL_DIR}/metrics.csv"                     # a trained model's metrics per epoch
EXTRACT_DIR = f"{RESULTS}/extract/{{dataset}}/{{model}}"
MANIFEST = f"{EXTRACT_DIR}/manifest.json"
# The vision pass: the vision analyses' taps (attention, norm ratios, localization, receptive fields), a
# forward pass of its own so that no vision setting reruns the Grams above or the CKA tables.
VISION_DIR = f"{EXTRACT_DIR}/vision"
VISION_MANIFEST = f"{VISION_DIR}/manifest.json"
CKA_TABLE = f"{RESULTS}/cka/{{dataset}}/{{x}}__{{y}}.csv"
# The tables of registered analyses, by where they are computed from.
TABLES = {
    "dataset": f"{RESULTS}/vision/{{dataset}}/{{table}}/{{stem}}.csv",      # from the analysis dataset's images
    "checkpoint": f"{RESULTS}/vision/checkpoint/{{table}}/{{stem}}.csv",   # the weights alone
    "experiment": f"{RESULTS}/experiments/{{table}}/{{stem}}.csv",         # cards, manifests of retrained models
    "summary": f"{RESULTS}/{{table}}/{{stem}}.csv",                          # other tables (findings: stem = dataset)
}
FIGURE = f"{RESULTS}/figures/{{figure}}/{{stem}}.{{fmt}}"
ARCHIVE = f"{RESULTS}/archive/{{run_name}}.tar.gz"
LOGS = f"{RESULTS}/logs"
JOB_LOGS = f"{LOGS}/jobs"                                     # submitted jobs: <step>/<name>/<job id>/

_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ANY_FIELD = re.compile(r"\{[^{}]*\}")     # a wildcard, or a format field such as {shard:05d}


def wildcards(pattern: str) -> list[str]:
    """The wildcard names of a pattern, in order."""
    return _FIELD.findall(pattern)


def fill(pattern: str, **values) -> str:
    """The pattern with every wildcard filled; a missing value is an error naming it."""
    missing = [w for w in wildcards(pattern) if w not in values]
    if missing:
        raise KeyError(f"path pattern '{pattern}' needs {', '.join(missing)}")
    return partial(pattern, **values)


def partial(pattern: str, **values) -> str:
    """The pattern with the given wildcards filled and the others left for Snakemake."""
    return _FIELD.sub(lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), pattern)


def _relative(pattern: str) -> str:
    """The pattern relative to ``results/`` (unchanged when it lies elsewhere)."""
    return pattern[len(RESULTS) + 1:] if pattern.startswith(RESULTS + "/") else pattern


def file_name(pattern: str) -> str:
    """The last part of a pattern whose file name is fixed (``card.json`` of :data:`CARD`)."""
    name = pattern.rsplit("/", 1)[-1]
    if _ANY_FIELD.search(name):
        raise ValueError(f"path pattern '{pattern}' has no fixed file name")
    return name


def as_glob(pattern: str) -> str:
    """The pattern as a glob relative to ``results/`` (what :meth:`pathlib.Path.glob` takes from the
    results folder): every wildcard or format field becomes ``*``."""
    return _ANY_FIELD.sub("*", _relative(pattern))


def match(pattern: str, rel: str) -> dict | None:
    """The wildcards of ``rel`` (a path relative to ``results/``) under the pattern, or None when it is not
    one of the pattern's paths. A wildcard matches within one folder; a format field like {shard:05d}
    is matched but not returned."""
    regex = []
    for i, piece in enumerate(re.split(f"({_ANY_FIELD.pattern})", _relative(pattern))):
        wildcard = _FIELD.fullmatch(piece) if i % 2 else None    # odd pieces are the fields
        regex.append(re.escape(piece) if i % 2 == 0 else f"(?P<{wildcard.group(1)}>[^/]+)" if wildcard else "[^/]+")
    m = re.fullmatch("".join(regex), rel)
    return None if m is None else m.groupdict()


def log(pattern: str) -> str:
    """The log file of a rule whose first output has this pattern: the same path under results/logs,
    ending in .log (a figure's {fmt} dropped)."""
    rel = re.sub(r"\.\{fmt\}$", "", _relative(pattern))
    rel = re.sub(r"\.(csv|json|npy|tar\.gz)$", "", rel)
    return f"{LOGS}/{rel}.log"


# ----------------------------------------------------------------------------- filled in

def dataset_key(cfg: dict) -> str:
    """The dataset the analyses read."""
    return cfg["analysis"]["dataset"]


def plan(dataset: str) -> str:
    return fill(PLAN, dataset=dataset)


def model_dir(model: str) -> str:
    return fill(MODEL_DIR, model=model)


def card(model: str) -> str:
    return fill(CARD, model=model)


def extract_dir(cfg: dict, model: str) -> str:
    return fill(EXTRACT_DIR, dataset=dataset_key(cfg), model=model)


def manifest(cfg: dict, model: str) -> str:
    return fill(MANIFEST, dataset=dataset_key(cfg), model=model)


def vision_dir(cfg: dict, model: str) -> str:
    return fill(VISION_DIR, dataset=dataset_key(cfg), model=model)


def vision_manifest(cfg: dict, model: str) -> str:
    return fill(VISION_MANIFEST, dataset=dataset_key(cfg), model=model)


def cka_table(cfg: dict, x: str, y: str) -> str:
    return fill(CKA_TABLE, dataset=dataset_key(cfg), x=x, y=y)


def table(cfg: dict, source: str, name: str, stem: str) -> str:
    """A registered analysis' table `name` for `stem` (a model, or a pair `a__b`)."""
    return partial(TABLES[source], dataset=dataset_key(cfg), table=name, stem=stem)


def figures(cfg: dict, figure: str, stem: str) -> list[str]:
    """One file per configured format (figures.formats)."""
    return [fill(FIGURE, figure=figure, stem=stem, fmt=fmt) for fmt in cfg["figures"]["formats"]]


def archive(run_name: str) -> str:
    return fill(ARCHIVE, run_name=run_name)
