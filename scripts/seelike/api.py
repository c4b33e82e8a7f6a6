"""Python API: compare representations with the workflow's CKA estimator, and read a run's tables.

* :func:`compare_features` -- every layer of one set of activations against every layer of another
  (numpy or torch, any shape (n, ...), flattened per example).
* :func:`compare_models` -- two ``torch.nn.Module`` s over a DataLoader, through hooks on named modules.
* :func:`load_tables` -- a run's CKA, vision, experiment and findings tables with their provenance.

Both comparisons use the estimator of the workflow's CKA tables: per minibatch of ``minibatch_size``
examples, each layer's Gram of its minibatch-centred features (:func:`seelike.cka.gram`, float32 products
summed in float64), the HSIC of every layer pair (:func:`seelike.cka.hsic_all_pairs`), averaged over
minibatches in float64; the result is the tidy table of :data:`seelike.cka_tables.COLUMNS` with the
jackknife standard error over minibatches and a 95% interval. Nothing is written to disk.

Importing this module imports neither torch nor matplotlib; the comparisons import torch when called.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from . import paths

#: The similarity measures the workflow computes (config section ``cka``): linear CKA.
MEASURES = ("cka",)

#: Kinds of table :func:`load_tables` reads, by the ``paths.TABLES`` source they live under.
_KIND_OF_SOURCE = {"dataset": "vision", "checkpoint": "vision", "experiment": "experiment"}

__all__ = ["MEASURES", "Table", "compare_features", "compare_models", "load_table", "load_tables", "table_files",
           "figure_files", "check_inputs", "results_file", "locate", "default_minibatch_size"]


# ----------------------------------------------------------------------------- comparisons

def default_minibatch_size() -> int:
    """The workflow's default ``cka.minibatch_size`` (from the config schema)."""
    from .config import load_schema

    return int(load_schema()["properties"]["cka"]["properties"]["minibatch_size"]["default"])


def _check_measure(where: str, measure: str, estimator: str) -> None:
    from .cka import ESTIMATORS

    if measure not in MEASURES:
        raise ValueError(f"{where}: unknown measure {measure!r}; allowed: {', '.join(MEASURES)}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"{where}: unknown estimator {estimator!r}; allowed: {', '.join(ESTIMATORS)} "
                         "(the values of config key cka.estimator)")


def _check_minibatch(where: str, n: int, b: int) -> int:
    """The workflow's minibatch check (at least 4 examples, n a multiple of b), with the divisors of n
    that would do."""
    from .plan import MIN_MINIBATCH_SIZE, MinibatchError, check_minibatch

    try:
        return check_minibatch(n, b, limit=n, names=("the number of examples", "minibatch_size"),
                               where=f"{where}: ")
    except MinibatchError as e:
        fits = [d for d in range(MIN_MINIBATCH_SIZE, n + 1) if n % d == 0]
        hint = (f"; minibatch sizes that divide {n}: {', '.join(map(str, fits[:12]))}"
                + (", ..." if len(fits) > 12 else "")) if fits else ""
        raise ValueError(f"{e}{hint}") from None


def _feature_layers(x, side: str) -> dict:
    """``{layer name: array}`` of one side of compare_features, checked."""
    import numpy as np
    import torch

    layers = dict(x) if isinstance(x, Mapping) else {"features": x}
    if not layers:
        raise ValueError(f"compare_features: {side} holds no layers; pass a dict of layer name -> array (n, ...)")
    for name, arr in layers.items():
        if not isinstance(arr, (np.ndarray, torch.Tensor)):
            raise TypeError(f"compare_features: {side}[{name!r}] is a {type(arr).__name__}; expected a numpy array "
                            "or torch tensor of shape (n, ...)")
        if arr.ndim < 1 or arr.shape[0] < 1:
            raise ValueError(f"compare_features: {side}[{name!r}] has shape {tuple(arr.shape)}; expected (n, ...) "
                             "with one row per example")
    return layers


def compare_features(a, b=None, measure: str = "cka", estimator: str = "unbiased", minibatch_size: int | None = None,
                     names: tuple[str, str] = ("a", "b")):
    """CKA of every layer of ``a`` with every layer of ``b``, as a tidy DataFrame.

    a, b: dicts of layer name -> activations, or single arrays (one layer named ``features``); numpy arrays
        or torch tensors (any device, any floating dtype) of shape (n, ...), row i of every layer being
        example i. Each example's features are flattened, so (n, d), (n, tokens, d) and (n, c, h, w) all work.
        ``b=None`` compares ``a`` with itself (a within-model table).
    measure: ``"cka"`` (linear CKA; :data:`MEASURES`).
    estimator: ``"unbiased"`` (minibatch CKA with unbiased HSIC, Nguyen et al. 2021) or ``"biased"``;
        config key ``cka.estimator``.
    minibatch_size: examples per minibatch, at least 4, dividing n; None: the workflow's default
        ``cka.minibatch_size`` (:func:`default_minibatch_size`). ``minibatch_size=n`` with
        ``estimator="biased"`` is the full-batch CKA of Kornblith et al. (2019), without a standard error.
    names: the ``model_x`` / ``model_y`` values of the table.

    Returns the columns of the workflow's CKA tables (:data:`seelike.cka_tables.COLUMNS`): model_x,
    layer_x, index_x, model_y, layer_y, index_y, cka, se (jackknife over minibatches), ci_low, ci_high
    (95%, Student's t with minibatches - 1 degrees of freedom), batch_std, n_minibatches, n_examples,
    estimator, status ("ok", or why the pair's CKA is undefined).
    """
    from .cka import hsic_from_features
    from .cka_tables import hsic_table

    _check_measure("compare_features", measure, estimator)
    la = _feature_layers(a, "a")
    lb = None if b is None else _feature_layers(b, "b")
    n = next(iter(la.values())).shape[0]
    for side, layers in (("a", la), ("b", lb or {})):
        for name, arr in layers.items():
            if arr.shape[0] != n:
                raise ValueError(f"compare_features: {side}[{name!r}] has {arr.shape[0]} examples, "
                                 f"a[{next(iter(la))!r}] has {n}; every layer must hold the same examples in the "
                                 "same order")
    bsize = _check_minibatch("compare_features", n, default_minibatch_size() if minibatch_size is None
                             else minibatch_size)
    feats = list(la.values()) + list((lb or {}).values())
    # center="auto": the centred Gram extraction stores (float64 features are always centred before the cast)
    hsic = hsic_from_features(feats, bsize, estimator, center="auto")
    rows = [(names[0], i, k) for i, k in enumerate(la)]
    if lb is not None:
        rows += [(names[1], i, k) for i, k in enumerate(lb)]
    return hsic_table(hsic, rows, len(la), lb is None, n, estimator, remedy="pass a larger minibatch_size")


def _model_layers(model, layers, side: str) -> list[dict]:
    """The layer specs to hook: the workflow's automatic choice (``layers: auto``) for timm ViTs, CNNs and
    MLP-Mixers, else the module names given."""
    from .models import detect_family, enumerate_layers

    family = detect_family(model)
    if layers is None or (isinstance(layers, str) and layers == "auto"):
        if family == "other":
            examples = [n for n, _ in model.named_modules() if n][:6]
            raise ValueError(f"compare_models: cannot choose the layers of {side} ({type(model).__name__}) "
                             "automatically: the automatic choice covers timm ViTs, CNNs and MLP-Mixers (one layer "
                             f"per block or residual unit); pass layers_{side[-1]}= a list of its module names"
                             + (f", e.g. {examples}" if examples else ""))
        return enumerate_layers(model, family)
    if isinstance(layers, str):
        layers = [layers]
    try:
        return enumerate_layers(model, family, spec=layers if isinstance(layers, dict) else list(layers))
    except ValueError as e:
        raise ValueError(f"compare_models: layers_{side[-1]}: {e}") from None


def _images(item):
    import torch

    x = item[0] if isinstance(item, (tuple, list)) else item
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"compare_models: the loader yielded {type(x).__name__}; expected image tensors (n, c, h, w) "
                        "or tuples (images, ...)")
    return x


def compare_models(model_a, model_b, loader, layers_a=None, layers_b=None, minibatch_size: int | None = None,
                   device: str = "cpu", estimator: str = "unbiased", names: tuple[str, str] = ("a", "b")):
    """CKA of every hooked layer of ``model_a`` with every hooked layer of ``model_b`` over ``loader``.

    model_a, model_b: ``torch.nn.Module`` s (timm or not) taking the loader's images; ``model_b=None``
        compares ``model_a`` with itself. Both are moved to ``device`` (``Module.to``) and run in eval
        mode under ``torch.no_grad``; their train/eval mode is restored afterwards.
    loader: an iterable (e.g. a ``DataLoader``) yielding image tensors or tuples ``(images, ...)``; both
        models see the same images in the same order.
    layers_a, layers_b: None (or "auto"): the layers the workflow taps with ``layers: auto``, one per
        transformer or mixer block or residual unit, for models :func:`seelike.models.detect_family`
        recognises (timm ViTs, CNNs, MLP-Mixers); other modules (an ``nn.Sequential``, your own class)
        need a list of module names (``dict(model.named_modules())`` keys) or ``{"regex": ...}``.
        Each layer's output is captured by a forward hook.
    minibatch_size: examples per CKA minibatch, which is also the forward batch (the loader's batches are
        regrouped); None: the size of the loader's first batch. The number of examples must be a
        multiple of it.
    estimator, names: as in :func:`compare_features`.

    Per minibatch each layer's Gram is taken as extraction takes it and only the Grams are kept, so memory
    is one forward pass plus (layers x minibatch^2) float64 per minibatch. Writes no files. Returns the
    tidy table of :func:`compare_features`.
    """
    import contextlib

    import numpy as np
    import torch

    from .cka import gram, hsic_all_pairs
    from .cka_tables import hsic_table
    from .models import LayerTaps

    _check_measure("compare_models", "cka", estimator)
    same = model_b is None
    models = [model_a] if same else [model_a, model_b]
    specs = [_model_layers(m, layers, side) for m, layers, side in zip(models, (layers_a, layers_b),
                                                                         ("model_a", "model_b"))]
    dev = torch.device(device)
    per_batch: list = []
    all_taps = [LayerTaps(m, s) for m, s in zip(models, specs)]

    def run(x) -> None:
        grams = []
        for side, model, taps in zip(("model_a", "model_b"), models, all_taps):
            taps.clear()
            model(x.to(dev))
            missing = taps.missing()
            if missing:
                raise ValueError(f"compare_models: layer(s) {', '.join(missing)} of {side} did not run in the "
                                 "forward pass; pass layers that the model's forward calls")
            grams += [gram(t, center="auto").cpu().numpy() for t in taps.outputs.values()]
            taps.clear()
        per_batch.append(hsic_all_pairs(np.stack(grams), estimator))

    modes = [m.training for m in models]
    b, n, pending, count = minibatch_size, 0, [], 0
    try:
        for m in models:
            m.to(dev).eval()
        with contextlib.ExitStack() as stack, torch.no_grad():
            for taps in all_taps:
                stack.enter_context(taps)
            for item in loader:
                x = _images(item)
                if not n and not count:       # the first batch: fix the minibatch size, check what is known
                    b = x.shape[0] if b is None else b
                    total = _loader_size(loader)
                    _check_minibatch("compare_models", b if total is None else total, b)
                pending.append(x)
                count += x.shape[0]
                if count >= b:
                    merged = torch.cat(pending) if len(pending) > 1 else pending[0]
                    whole = count // b * b
                    for s in range(0, whole, b):
                        run(merged[s:s + b])
                    pending = [merged[whole:]] if count > whole else []
                    n, count = n + whole, count - whole
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
    if count:
        raise ValueError(f"compare_models: the loader yielded {n + count} examples, not a multiple of "
                         f"minibatch_size {b}; {count} were left over. Give the loader a multiple of {b} examples "
                         f"(e.g. DataLoader(..., batch_size={b}, drop_last=True)) or pass a minibatch_size that "
                         "divides the number of examples")
    if not per_batch:
        raise ValueError("compare_models: the loader yielded no examples")
    rows = [(name, i, layer["name"]) for name, layers in zip(names, specs) for i, layer in enumerate(layers)]
    return hsic_table(np.stack(per_batch), rows, len(specs[0]), same, n, estimator,
                      remedy="pass a larger minibatch_size")


def _loader_size(loader) -> int | None:
    """Examples a DataLoader will yield, when it can tell (a sized sampler)."""
    sampler, bs = getattr(loader, "sampler", None), getattr(loader, "batch_size", None)
    if sampler is None or not bs:
        return None
    try:
        total = len(sampler)
    except TypeError:
        return None
    return total // bs * bs if getattr(loader, "drop_last", False) else total


# ----------------------------------------------------------------------------- a run's files

def results_file(results: str | os.PathLike, path: str) -> Path:
    """Where a path the workflow records (``paths.RESULTS``/..., relative to the run's working directory)
    lies for a results folder at ``results``; other paths are returned as they are."""
    prefix = paths.RESULTS + "/"
    return Path(results) / path[len(prefix):] if str(path).startswith(prefix) else Path(path)


def locate(results: str | os.PathLike, pattern: str, **fixed) -> list[tuple[Path, dict]]:
    """``[(file, {wildcard: value})]``: the files under the results folder ``results`` that match a
    ``seelike.paths`` pattern (e.g. ``paths.CARD``), sorted; wildcards in ``fixed`` are filled in first. A
    wildcard at the end of the pattern (a figure's format) holds no dot."""
    results = Path(results)
    rel = paths.partial(pattern, **fixed)[len(paths.RESULTS) + 1:]
    names = paths.wildcards(rel)
    regex, glob, at = "", "", 0
    for m in re.finditer(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", rel):
        literal = rel[at:m.start()]
        regex += re.escape(literal)
        glob += literal + "*"
        last = m.end() == len(rel)
        regex += f"(?P<{m.group(1)}>{'[^/.]+' if last else '[^/]+?'})"
        at = m.end()
    regex += re.escape(rel[at:])
    glob += rel[at:]
    found = []
    compiled = re.compile(regex)
    for p in sorted(results.glob(glob)):
        m = compiled.fullmatch(p.relative_to(results).as_posix())
        if m and p.is_file():
            found.append((p, {k: m.group(k) for k in names}))
    return found


def _table_specs() -> list[tuple[str, str, str | None]]:
    """(kind, pattern, table name) of every table location: the CKA tables, each registered analysis'
    tables, and the findings table."""
    from . import registry

    specs = [("cka", paths.CKA_TABLE, None)]
    for a in registry.with_tables():
        for t in a.table_names:
            specs.append((_KIND_OF_SOURCE.get(a.source, t), paths.TABLES[a.source], t))
    findings = ("findings", paths.TABLES["summary"], "findings")
    if not any(s[1:] == findings[1:] for s in specs):
        specs.append(findings)
    return specs


def _datasets(results: Path, specs) -> list[str]:
    found = set()
    for _, pattern, table in specs:
        if "dataset" in paths.wildcards(pattern):
            found |= {w["dataset"] for _, w in locate(results, pattern, **({"table": table} if table else {}))}
        elif pattern == paths.TABLES["summary"]:
            found |= {w["stem"] for _, w in locate(results, pattern, table=table)}
    return sorted(found)


def _run_dataset(results: Path) -> str | None:
    """The analysis dataset of the config of the run's last DAG build, if recorded."""
    import json

    try:
        return json.loads(results_file(results, paths.RUN_CONFIG).read_text())["analysis"]["dataset"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def table_files(results: str | os.PathLike = paths.RESULTS, kind: str | Iterable[str] | None = None,
                dataset: str | None = None) -> dict[str, tuple[str, Path]]:
    """``{name: (kind, path)}`` of the tables under ``results``, without reading them (see :func:`load_tables`
    for names, kinds and ``dataset``)."""
    results = Path(results)
    if not results.is_dir():
        raise FileNotFoundError(f"results folder '{results}' does not exist; pass the folder a run wrote (the "
                                f"'{paths.RESULTS}' folder in the directory where snakemake ran)")
    specs = _table_specs()
    kinds = list(dict.fromkeys(k for k, _, _ in specs))
    wanted = set(kinds) if kind is None else {kind} if isinstance(kind, str) else set(kind)
    unknown = sorted(wanted - set(kinds))
    if unknown:
        raise ValueError(f"unknown table kind(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(kinds)}")
    if dataset is None:
        found = _datasets(results, specs)
        if len(found) > 1:
            dataset = _run_dataset(results)
            if dataset not in found:
                raise ValueError(f"results folder '{results}' holds tables of the datasets {', '.join(found)}; "
                                 "pass dataset= (seelike show: --dataset) to choose one")
        elif found:
            dataset = found[0]
    out: dict[str, tuple[str, Path]] = {}
    for k, pattern, table in specs:
        if k not in wanted:
            continue
        fixed = {"table": table} if table else {}
        if "dataset" in paths.wildcards(pattern):
            if dataset is None:
                continue
            fixed["dataset"] = dataset
        elif pattern == paths.TABLES["summary"]:
            if dataset is None:
                continue
            fixed["stem"] = dataset
        for p, w in locate(results, pattern, **fixed):
            if k == "cka":
                name = f"cka/{w['x']}__{w['y']}"
            elif "stem" in w:
                name = f"{table}/{w['stem']}"
            else:
                name = table
            out.setdefault(name, (k, p))
    return out


@dataclass(frozen=True, eq=False)
class Table:
    """One table of a run: its short name (what ``seelike show`` accepts), kind ("cka", "vision",
    "experiment", "findings"), file, contents and validated provenance record."""
    name: str
    kind: str
    path: Path
    frame: Any = field(repr=False)        # pandas.DataFrame
    provenance: dict = field(repr=False)


def load_table(path: str | os.PathLike, name: str | None = None, kind: str = "") -> Table:
    """One tidy CSV table with its provenance sidecar (``<table>.prov.json``), both checked
    (:func:`seelike.analyses.common.read_table`, :func:`seelike.provenance.read_sidecar`): a missing,
    unparseable or empty table, or a missing or corrupt sidecar, raises an error naming the file."""
    from .analyses.common import read_table
    from .provenance import read_sidecar

    path = Path(path)
    return Table(name=name or path.stem, kind=kind, path=path, frame=read_table(path), provenance=read_sidecar(path))


def load_tables(results: str | os.PathLike = paths.RESULTS, kind: str | Iterable[str] | None = None,
                dataset: str | None = None) -> dict[str, Table]:
    """Every table of a run, ``{name: Table}``, each with its checked provenance.

    results: the run's results folder. kind: None (all), or one or more of "cka" (``cka/<x>__<y>``),
    "vision" (``<analysis table>/<stem>``, e.g. ``attention_distance/vit``, ``head_cka/vit__resnet``,
    ``patch_embedding/vit``), "experiment" (``skip_ablation/<baseline>``, ``probes/<model>``) and
    "findings" (``findings``, once the run has written it). dataset: the analysis dataset whose tables
    to read; None: the only one present (or, when several are, the one of the run's last DAG build).
    A corrupt CSV or provenance sidecar raises ValueError naming the file.
    """
    return {name: load_table(p, name, k) for name, (k, p) in table_files(results, kind, dataset).items()}


def figure_files(results: str | os.PathLike = paths.RESULTS) -> dict[str, list[Path]]:
    """``{"<figure id>/<stem>": [files, one per format]}`` of the figures under ``results``."""
    from .provenance import SIDECAR_SUFFIX

    out: dict[str, list[Path]] = {}
    for p, w in locate(Path(results), paths.FIGURE):
        if p.name.endswith(SIDECAR_SUFFIX):          # the sidecars beside the figures
            continue
        out.setdefault(f"{w['figure']}/{w['stem']}", []).append(p)
    return out


def check_inputs(record: dict, results: str | os.PathLike = paths.RESULTS) -> dict[str, str]:
    """``{input: "ok" | "changed" | "missing"}``: whether each input a provenance record names still has
    the sha256 recorded when the result was made (paths resolved under the results folder ``results``)."""
    from .fileio import sha256_file

    out = {}
    for name, digest in (record.get("inputs") or {}).items():
        p = results_file(results, name)
        out[name] = "missing" if not p.is_file() else "ok" if sha256_file(p) == digest else "changed"
    return out
