"""Load, validate and normalise a workflow config.

Validation happens when the DAG is built, so a bad config is reported once, naming the key,
before any job starts. Only the schema check and cheap semantic checks live here; nothing in
this module imports torch unless a timm name has to be checked.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

import yaml

from .plan import MIN_MINIBATCH_SIZE

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
STEPS = ("fetch", "train", "extract", "cka", "vision", "receptive_field", "probe")


class ConfigError(ValueError):
    """A config problem, phrased for the user: the key, what is wrong, what to do."""


def _key(path: Iterable[Any]) -> str:
    parts = [str(p) for p in path]
    return ".".join(parts) if parts else "(top level)"


def load_schema() -> dict:
    with open(SCHEMA_PATH) as fh:
        return yaml.safe_load(fh)


def _fill_defaults(instance: Any, schema: dict, root: dict) -> None:
    """Fill `default` values of object properties in place, following $ref and if/then."""
    if "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/$defs/")
        schema = root["$defs"][ref.split("/")[-1]]
    if not isinstance(instance, dict):
        return
    for name, sub in schema.get("properties", {}).items():
        if name not in instance and "default" in sub:
            instance[name] = copy.deepcopy(sub["default"])
        if name in instance:
            _fill_defaults(instance[name], sub, root)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for name, value in instance.items():
            if name not in schema.get("properties", {}):
                _fill_defaults(value, extra, root)
    for clause in schema.get("allOf", []):
        cond = clause.get("if", {}).get("properties", {})
        if all(instance.get(k) == v.get("const") for k, v in cond.items()) and "then" in clause:
            _fill_defaults(instance, clause["then"], root)


def _schema_error_message(err) -> str:
    import jsonschema  # local: keeps `import seelike.config` cheap

    # oneOf/anyOf errors are vague; the deepest, most specific context error reads better.
    best = jsonschema.exceptions.best_match([err])
    where = _key(best.absolute_path)
    if best.validator == "additionalProperties":
        allowed = sorted(best.schema.get("properties", {}))
        extra = [k for k in best.instance if k not in allowed] if isinstance(best.instance, dict) else []
        hints = []
        for k in extra:
            close = difflib.get_close_matches(k, allowed, n=1)
            hints.append(f"'{k}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        return f"config key {where}: unknown key {', '.join(hints)}; allowed keys: {', '.join(allowed)}"
    if best.validator == "required":
        return f"config key {where}: {best.message}"
    if best.validator == "type":
        return f"config key {where}: {best.instance!r} is not of type {best.validator_value}"
    if best.validator in ("enum", "const"):
        options = best.validator_value if best.validator == "enum" else [best.validator_value]
        return f"config key {where}: {best.instance!r} is not one of {options}"
    return f"config key {where}: {best.message}"


def validate_schema(config: dict) -> dict:
    """Schema check plus defaults. Returns a new, defaults-filled dict."""
    import jsonschema

    schema = load_schema()
    cfg = copy.deepcopy(config)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    if errors:
        raise ConfigError(_schema_error_message(errors[0]))
    _fill_defaults(cfg, schema, schema)
    return cfg


# --- model families -------------------------------------------------------------------------

_VIT_PREFIXES = ("vit_", "deit", "beit", "eva", "cait", "xcit", "flexivit", "samvit", "vitamin")
_MIXER_PREFIXES = ("mixer_", "gmixer", "resmlp")
_CNN_PREFIXES = ("resnet", "resnetv2", "wide_resnet", "resnext", "convnext", "efficientnet", "regnet",
                 "densenet", "vgg", "mobilenet", "bit_", "seresnet", "ecaresnet", "cspresnet")


def family_of_arch(arch: str) -> str:
    """Best guess of a model's family from its timm name; the model card records the real one."""
    a = arch.split(".")[0].lower()
    if a.startswith(_MIXER_PREFIXES) or "mixer" in a:
        return "mixer"
    if a.startswith(_VIT_PREFIXES):
        return "vit"
    if a.startswith(_CNN_PREFIXES):
        return "cnn"
    return "other"


def _check_timm_name(name: str, where: str, pretrained: bool) -> None:
    from .models.build import check_timm_arch  # imports timm (and torch): only when a config names a model

    try:
        check_timm_arch(name)
    except ValueError as e:
        raise ConfigError(f"config key {where}: {e}") from None
    if pretrained and "." not in name:
        import timm

        if not timm.list_pretrained(name + ".*"):
            raise ConfigError(f"config key {where}: timm model '{name}' has no pretrained weights")


def _slug(value) -> str:
    return "none" if value is None else str(value).replace(".", "p").replace("-", "m")


def expand_sweeps(cfg: dict) -> None:
    """`sweep: {key: recipe.remove_skip.block, values: [0, 1, 2]}` on model `m` becomes models
    m_0, m_1, m_2, each with that key set: one registry model per value, no special path."""
    models = {}
    for name, m in cfg["models"].items():
        sweep = m.pop("sweep", None)
        if not sweep:
            models[name] = m
            continue
        for value in sweep["values"]:
            mm = copy.deepcopy(m)
            node, parts = mm, sweep["key"].split(".")
            for part in parts[:-1]:
                if node.get(part) is None:
                    node[part] = {}
                if not isinstance(node[part], dict):
                    raise ConfigError(f"config key models.{name}.sweep.key: '{sweep['key']}' does not name a mapping entry")
                node = node[part]
            node[parts[-1]] = value
            mm["sweep_of"] = {"model": name, "key": sweep["key"], "value": value}
            new = f"{name}_{_slug(value)}"
            if new in cfg["models"] or new in models:
                raise ConfigError(f"config key models.{name}.sweep: the expanded model name '{new}' is already used")
            models[new] = mm
    cfg["models"] = models


def _check_semantics(cfg: dict, check_timm: bool) -> None:
    datasets = cfg["datasets"]
    for dname, d in datasets.items():
        if d["kind"] == "imagefolder":
            root = Path(d["root"]).expanduser()
            if not root.is_dir():
                which = "training" if d.get("split") == "train" else "validation"
                raise ConfigError(
                    f"config key datasets.{dname}.root: image folder '{d['root']}' does not exist "
                    f"(set it to your ImageNet {which} folder: one sub-folder per class)")
    a = cfg["analysis"]["dataset"]
    if datasets.get(a, {}).get("split") == "train":
        raise ConfigError(f"config key analysis.dataset: '{a}' is a training folder (split: train); analyses read "
                          "an evaluation folder (split: val)")

    for mname, m in cfg["models"].items():
        where = f"models.{mname}"
        kind = m["source"]["kind"]
        if kind == "timm_hub":
            m.setdefault("arch", m["source"]["timm_name"].split(".")[0])
            if check_timm:
                _check_timm_name(m["source"]["timm_name"], f"{where}.source.timm_name", pretrained=True)
        else:
            if "arch" not in m:
                raise ConfigError(f"config key {where}.arch: required for source kind '{kind}' (a timm architecture name)")
            if check_timm:
                _check_timm_name(m["arch"], f"{where}.arch", pretrained=False)
        if kind == "local_file" and not Path(m["source"]["path"]).expanduser().is_file():
            raise ConfigError(f"config key {where}.source.path: weights file '{m['source']['path']}' does not exist")
        if kind == "recipe":
            if "recipe" not in m:
                raise ConfigError(f"config key {where}.recipe: required for source kind 'recipe'")
            r = m["recipe"]
            if r["dataset"] not in datasets:
                raise ConfigError(f"config key {where}.recipe.dataset: unknown dataset '{r['dataset']}'; "
                                  f"configured: {', '.join(datasets)}")
            train = datasets[r["dataset"]]
            if train["kind"] == "imagefolder" and train.get("split") != "train":
                raise ConfigError(f"config key {where}.recipe.dataset: image folder '{r['dataset']}' is an evaluation "
                                  "folder; training reads a folder marked split: train (ImageNet training layout)")
            if "test_dataset" in r:
                test = datasets.get(r["test_dataset"])
                if test is None:
                    raise ConfigError(f"config key {where}.recipe.test_dataset: unknown dataset '{r['test_dataset']}'; "
                                      f"configured: {', '.join(datasets)}")
                if test["kind"] != train["kind"] or test.get("split") == "train":
                    raise ConfigError(f"config key {where}.recipe.test_dataset: '{r['test_dataset']}' must be a "
                                      f"{train['kind']} evaluation dataset like the training data")
            elif train["kind"] == "imagefolder":
                raise ConfigError(f"config key {where}.recipe.test_dataset: required when training on an image folder "
                                  "(the evaluation folder with the same classes, for the test accuracy)")
            if "remove_skip" in r:
                if "block" not in r["remove_skip"]:
                    raise ConfigError(f"config key {where}.recipe.remove_skip.block: required (or sweep over it)")
                depth = m.get("kwargs", {}).get("depth")
                block = r["remove_skip"]["block"]
                if depth is not None and block is not None and block >= depth:
                    raise ConfigError(f"config key {where}.recipe.remove_skip.block: block {r['remove_skip']['block']} "
                                      f"does not exist (depth {depth})")
            if "init_from" in r:
                if r["init_from"] not in cfg["models"]:
                    raise ConfigError(f"config key {where}.recipe.init_from: unknown model '{r['init_from']}'")
                if r["init_from"] == mname:
                    raise ConfigError(f"config key {where}.recipe.init_from: a model cannot start from itself")
        elif "recipe" in m:
            raise ConfigError(f"config key {where}.recipe: only allowed with source kind 'recipe' (this model is '{kind}')")
        m.setdefault("kwargs", {})
        m.setdefault("layers", "auto")
        m.setdefault("family", family_of_arch(m["arch"]))

    a = cfg["analysis"]
    if a["dataset"] not in datasets:
        raise ConfigError(f"config key analysis.dataset: unknown dataset '{a['dataset']}'; configured: {', '.join(datasets)}")
    ds = datasets[a["dataset"]]
    if ds["kind"] == "synthetic":
        if a["split"] not in ds["splits"]:
            raise ConfigError(f"config key analysis.split: '{a['split']}' is not a split of dataset '{a['dataset']}'")
        available = ds["splits"][a["split"]]
        if a["n_examples"] > available:
            raise ConfigError(f"config key analysis.n_examples: {a['n_examples']} examples requested but split "
                              f"'{a['split']}' of dataset '{a['dataset']}' has {available}")

    c = cfg["cka"]
    b = c["minibatch_size"]
    # One example plan serves both estimators (shards are reused when only the estimator changes),
    # so the plan's bound holds for both: the unbiased estimator's b >= 4.
    if b < MIN_MINIBATCH_SIZE:
        raise ConfigError(f"config key cka.minibatch_size: {b} is too small: the example plan needs at least "
                          f"{MIN_MINIBATCH_SIZE} examples per minibatch (the unbiased HSIC estimator divides by b - 3)")
    n = a["n_examples"]
    if n % b:
        lo, hi = (n // b) * b, (n // b + 1) * b
        raise ConfigError(f"config key analysis.n_examples: {n} is not a multiple of cka.minibatch_size ({b}); "
                          f"use {lo or hi} or {hi}")
    if c["pairs"] != "all":
        for i, pair in enumerate(c["pairs"]):
            for name in pair:
                if name not in cfg["models"]:
                    raise ConfigError(f"config key cka.pairs[{i}]: unknown model '{name}'; configured: {', '.join(cfg['models'])}")
            if pair[0] == pair[1]:
                raise ConfigError(f"config key cka.pairs[{i}]: a pair needs two different models (within-model CKA is always computed)")

    from .experiments import check as check_experiments  # the `experiments:` section (F8, F10-F13)

    problems = check_experiments(cfg)
    if problems:
        raise ConfigError(problems[0])

    from .analyses import settings as vision  # the `analyses:` section (F3-F9, ViT views)

    try:
        vision.check(cfg)
    except vision.AnalysisConfigError as e:
        raise ConfigError(str(e)) from None


def load(config: dict, check_timm: bool = True) -> dict:
    """Validate a raw config (as Snakemake merged it) and return the normalised copy."""
    cfg = validate_schema(config)
    expand_sweeps(cfg)
    _check_semantics(cfg, check_timm=check_timm)
    return cfg


def load_file(path: str | os.PathLike, check_timm: bool = True) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file '{path}' is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of keys")
    return load(raw, check_timm=check_timm)


# --- derived views used by the rules ---------------------------------------------------------

def digest(obj: Any) -> str:
    """Stable short hash of a JSON-able config subset (keys sorted)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def cross_pairs(cfg: dict) -> list[tuple[str, str]]:
    names = list(cfg["models"])
    if cfg["cka"]["pairs"] == "all":
        return [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    order = {n: i for i, n in enumerate(names)}
    # Canonical order (config order) so that (a, b) and (b, a) name one table.
    return sorted({tuple(sorted(p, key=order.get)) for p in cfg["cka"]["pairs"]}, key=lambda p: (order[p[0]], order[p[1]]))


def mixer_models(cfg: dict) -> list[str]:
    return [n for n, m in cfg["models"].items() if m["family"] == "mixer"]


def step_executor(cfg: dict, step: str) -> dict:
    """Where a step runs and with which resources: executor.resources, overridden per step."""
    if step not in STEPS:
        raise ConfigError(f"unknown step '{step}'; steps: {', '.join(STEPS)}")
    ex = cfg.get("executor", {})
    per_step = ex.get("steps", {}).get(step, {})
    resources = dict(ex.get("resources", {}))
    resources.update(per_step.get("resources", {}))
    return {
        "step": step,
        "executor": per_step.get("executor", ex.get("default", "local")),
        "resources": resources,
        "step_resources": dict(per_step.get("resources", {})),
        "log_dir": ex.get("log_dir", "results/logs/jobs"),
        "cancel_on_interrupt": ex.get("cancel_on_interrupt", True),
        "array_parallelism": ex.get("array_parallelism", 64),
    }
