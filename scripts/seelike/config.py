"""Load, validate and normalise a workflow config.

Validation happens when the DAG is built, so a bad config is reported once, naming the key,
before any job starts. Only the schema check and cheap semantic checks live here; nothing in
this module imports torch unless a timm name has to be checked.
"""
from __future__ import annotations

import copy
import difflib
import os
import re
from pathlib import Path
from typing import Any, Iterable

import yaml

from . import paths, registry
from .base import ConfigError
from .plan import MinibatchError, check_minibatch


SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
# Steps whose jobs executor.steps can place. Fetching from the hub is not one: it always runs on the host
# running Snakemake (compute nodes often have no internet).
STEPS = ("train", "extract", "cka", "vision", "probe")
# Steps whose work is seconds, less than a job's start-up and queue wait: the analyses' tables and the
# checkpoint views (vision) and the CKA tables (cka) read stored reductions. They run in the rule's own
# process on the host running Snakemake (`inline`) unless executor.steps.<step>.executor places them.
HOST_STEPS = ("vision", "cka")


def _key(path: Iterable[Any]) -> str:
    parts = [str(p) for p in path]
    return ".".join(parts) if parts else "(top level)"


def load_schema() -> dict:
    """workflow/schemas/config.schema.yaml, with the `analyses:` entries the registered analyses declare."""
    with open(SCHEMA_PATH) as fh:
        schema = yaml.safe_load(fh)
    schema["properties"]["analyses"]["properties"] = registry.config_schema()
    return schema


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


def _schema_error_parts(err) -> tuple[list, str]:
    """(path, what is wrong) of a schema error, the path as a list of keys and indices."""
    import jsonschema  # local: keeps `import seelike.config` cheap

    # oneOf/anyOf errors are vague; the deepest, most specific context error reads better.
    best = jsonschema.exceptions.best_match([err])
    path = list(best.absolute_path)
    if best.validator == "additionalProperties":
        allowed = sorted(best.schema.get("properties", {}))
        extra = [k for k in best.instance if k not in allowed] if isinstance(best.instance, dict) else []
        hints = []
        for k in extra:
            close = difflib.get_close_matches(k, allowed, n=1)
            hints.append(f"'{k}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        return path, f"unknown key {', '.join(hints)}; allowed keys: {', '.join(allowed)}"
    if best.validator == "enum" and path == ["executor", "steps"] and best.instance == "fetch":
        return path + ["fetch"], ("there is no fetch step to place: pretrained weights are always fetched on the host "
                                  "running Snakemake (compute nodes often have no internet); remove this entry")
    if best.validator == "enum" and path == ["executor", "steps"] and best.instance == "receptive_field":
        return path + ["receptive_field"], ("receptive fields are computed in each model's vision pass, a job of "
                                            "the `extract` step: place `extract` instead and remove this entry")
    if best.validator == "required" and isinstance(best.instance, dict):
        missing = [k for k in best.validator_value if k not in best.instance]
        if missing:
            return path + [missing[0]], "required, but not given"
    if best.validator == "type":
        return path, f"{best.instance!r} is not of type {best.validator_value}"
    if best.validator in ("enum", "const"):
        options = best.validator_value if best.validator == "enum" else [best.validator_value]
        return path, f"{best.instance!r} is not one of {options}"
    return path, best.message


def _schema_error_message(err) -> str:
    path, text = _schema_error_parts(err)
    return f"config key {_key(path)}: {text}"


def _schema_errors(cfg: dict, schema: dict) -> list:
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    return sorted(validator.iter_errors(cfg), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))


def validate_schema(config: dict, schema: dict | None = None) -> dict:
    """Schema check plus defaults (sweeps not expanded). Returns a new, defaults-filled dict."""
    schema = schema or load_schema()
    cfg = copy.deepcopy(config)
    errors = _schema_errors(cfg, schema)
    if errors:
        raise ConfigError(_schema_error_message(errors[0]))
    _fill_defaults(cfg, schema, schema)
    return cfg


# --- config files ----------------------------------------------------------------------------

def _mark(mark) -> str:
    """A YAML position as people count it: 'line 5, column 7' (PyYAML counts from 0)."""
    return f"line {mark.line + 1}, column {mark.column + 1}"


def yaml_error_message(path: str | os.PathLike, err: yaml.YAMLError, text: str | None = None) -> str:
    """A YAML syntax error, naming the file, the line and column where the parser stopped and what
    it expected; where the construct it was reading began, that too. `text`: the file's text, to
    place a reader error (a character YAML does not allow), which PyYAML names by position only."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    if mark is None and isinstance(err, yaml.reader.ReaderError) and text is not None:
        line = text.count("\n", 0, err.position)
        column = err.position - (text.rfind("\n", 0, err.position) + 1)
        ch = f"U+{err.character:04X}" if isinstance(err.character, int) else repr(err.character)
        return (f"config file '{path}' line {line + 1}, column {column + 1}: not valid YAML: the character {ch} "
                "is not allowed in YAML; remove it")
    if mark is None:
        return f"config file '{path}': not valid YAML: {str(err).replace('<unicode string>', str(path))}"
    problem = getattr(err, "problem", None) or getattr(err, "context", None) or type(err).__name__
    text = f"config file '{path}' {_mark(mark)}: not valid YAML: {problem}"
    context, context_mark = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context and context_mark is not None and context != problem:
        text += f" ({context} at {_mark(context_mark)})"
    if getattr(err, "note", None):
        text += f"; {err.note}"
    return text + "; fix it there (a tab in the indentation or an unclosed bracket or quote is the usual cause)"

def check_duplicate_keys(path: str | os.PathLike) -> None:
    """Raise ConfigError naming the file, line, column and key of a key given twice in one mapping.

    YAML loaders (and Snakemake's) keep the last of two equal keys and drop the first without a
    word: a second `cka:` block or a model defined twice would silently replace the first. Keys
    merged in with `<<: *anchor` are overrides, not duplicates. A file that is not YAML (or JSON)
    is left to the loader that reads it.
    """
    try:
        root = yaml.compose(Path(path).read_text(), Loader=yaml.SafeLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return
    done: set[int] = set()

    def walk(node, where):
        if id(node) in done:          # an anchor's node, already checked where it was defined
            return
        done.add(id(node))
        if isinstance(node, yaml.MappingNode):
            seen = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                if isinstance(key_node, yaml.ScalarNode):
                    ident = (key_node.tag, key_node.value)
                    at = _mark(key_node.start_mark)
                    if ident in seen:
                        dotted = ".".join(where + [key_node.value])
                        raise ConfigError(f"config file '{path}' {at}: duplicate key '{dotted}' (first given "
                                          f"at {seen[ident]}); YAML keeps only the last one, so remove or "
                                          "rename one of them")
                    seen[ident] = at
                    walk(value_node, where + [key_node.value])
                else:
                    walk(value_node, where)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, where[:-1] + [f"{where[-1]}[{i}]"] if where else [f"[{i}]"])

    if root is not None:
        walk(root, [])


def check_config_files(paths: Iterable[str | os.PathLike]) -> None:
    """Checks of the config files as written (before Snakemake merges them): duplicate keys."""
    for path in paths:
        check_duplicate_keys(path)


# --- model families -------------------------------------------------------------------------

def _family(name: str, m: dict) -> str:
    """The model's family from its timm class (the same detector the model card uses)."""
    from .models import arch_family  # imports timm (and torch): the family is a property of the class

    try:
        return arch_family(m["arch"], m.get("kwargs") or {})
    except Exception as e:  # timm's own error for bad kwargs, or an unknown architecture
        raise ConfigError(f"config key models.{name}.kwargs: timm cannot build '{m['arch']}' with these arguments "
                          f"({type(e).__name__}: {e})") from None


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


_MODEL_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def _deref(node: dict, root: dict) -> dict:
    if isinstance(node, dict) and "$ref" in node:
        return root["$defs"][node["$ref"].split("/")[-1]]
    return node


def _keys_of(node: dict, root: dict) -> dict | None:
    """The keys a schema node's mapping allows (its own and its if/then branches'), {} for a value
    that is not a mapping, None for a free-form mapping (any key, e.g. `kwargs`)."""
    node = _deref(node, root)
    props = dict(node.get("properties", {}))
    for clause in node.get("allOf", []):
        props.update(_deref(clause.get("then", {}), root).get("properties", {}))
    if not props and node.get("type") == "object" and node.get("additionalProperties", True) is not False:
        return None
    return props


def _model_key_paths(node: dict, root: dict, prefix: str = "") -> list[str]:
    out = []
    for k, sub in (_keys_of(node, root) or {}).items():
        out.append(prefix + k)
        out += _model_key_paths(sub, root, prefix + k + ".")
    return out


def check_sweep_keys(cfg: dict, schema: dict | None = None) -> None:
    """Each `models.<name>.sweep.key` must be a key a model can have (checked before expansion, so
    that a misspelt key is named as the user wrote it, not as an unknown key of an expanded model)."""
    schema = schema or load_schema()
    model_schema = schema["properties"]["models"]["additionalProperties"]
    for name, m in cfg["models"].items():
        sweep = m.get("sweep")
        if not sweep:
            continue
        where = f"config key models.{name}.sweep.key"
        key, parts = sweep["key"], sweep["key"].split(".")
        if parts[0] in ("sweep", "sweep_of"):
            raise ConfigError(f"{where}: '{key}' names the sweep itself; sweep over a key of the model")
        if "" in parts:
            raise ConfigError(f"{where}: '{key}' is not a dotted key path (e.g. recipe.lr)")
        node = model_schema
        for part in parts:
            keys = _keys_of(node, schema)
            if keys is None:          # a free-form mapping (kwargs): any key below it
                break
            if part not in keys:
                known = [p for p in _model_key_paths(model_schema, schema) if p.split(".")[0] != "sweep"]
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else f"; a model's keys: {', '.join(known)}"
                raise ConfigError(f"{where}: '{key}' is not a key of a model{hint}")
            node = keys[part]


def expand_sweeps(cfg: dict) -> dict[str, dict]:
    """`sweep: {key: recipe.remove_skip.block, values: [0, 1, 2]}` on model `m` becomes models
    m_0, m_1, m_2, each with that key set: one registry model per value, no special path.

    Returns where each expanded model came from: {name: {"model", "key", "value", "index"}}.
    """
    models, origins = {}, {}
    for name, m in cfg["models"].items():
        sweep = m.pop("sweep", None)
        if not sweep:
            models[name] = m
            continue
        for i, value in enumerate(sweep["values"]):
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
            if not _MODEL_NAME.match(new):
                raise ConfigError(f"config key models.{name}.sweep.values[{i}]: {value!r} would make the model name "
                                  f"'{new}'; sweep values must be numbers, null or names (letters, digits, _ and -)")
            if new in cfg["models"] or new in models:
                raise ConfigError(f"config key models.{name}.sweep: the expanded model name '{new}' is already used")
            models[new] = mm
            origins[new] = {"model": name, "key": sweep["key"], "value": value, "index": i}
    cfg["models"] = models
    return origins


def _sweep_message(name: str, origin: dict, rest: list, text: str, semantic: bool = False) -> str:
    """A problem of expanded model `name` at key path `rest`, named by the sweep that made the model."""
    base, key, i = origin["model"], origin["key"], origin["index"]
    rest_key = ".".join(str(p) for p in rest)
    if rest[:len(key.split("."))] == key.split("."):
        return f"config key models.{base}.sweep.values[{i}]: {text} (this value sets models.{name}.{rest_key})"
    if semantic:   # a key the user wrote in the swept model; the sweep only made the model it failed in
        return (f"config key models.{base}{'.' + rest_key if rest_key else ''}: {text} (in models.{name}, made by "
                f"models.{base}.sweep with {key} = {origin['value']!r})")
    return (f"config key models.{base}.sweep.values[{i}]: with {key} = {origin['value']!r}, "
            f"models.{name}{'.' + rest_key if rest_key else ''}: {text}")


def _name_sweeps_in(err: ConfigError, origins: dict) -> ConfigError:
    """A semantic error about an expanded model, renamed to the sweep entry the user wrote."""
    m = re.match(r"config key models\.([A-Za-z0-9_-]+)((?:\.[^:\s]+)?): (.*)$", str(err), re.S)
    if not m or m.group(1) not in origins:
        return err
    rest = [p for p in m.group(2).lstrip(".").split(".") if p]
    return ConfigError(_sweep_message(m.group(1), origins[m.group(1)], rest, m.group(3), semantic=True))


# --- image folders: counted by file name when the DAG is built -----------------------------

def _image_folder_counts(dname: str, d: dict) -> dict[str, int]:
    """{class folder: image files} of image folder dataset `dname`, counted by name as its reader
    lists them (data/imagefolder.py: non-hidden class sub-folders, image extensions), nothing
    decoded; ConfigError naming datasets.<name>.root when the reader would find no images at all.
    An empty class folder next to full ones is left to the reader, which keeps it (labels stay aligned
    with the full class list) and warns."""
    from .data.imagefolder import IMG_EXTENSIONS, count_image_files   # imports torch, as _family does

    where = f"config key datasets.{dname}.root"
    root = Path(d["root"]).expanduser()
    which = "training" if d.get("split") == "train" else "validation"
    if not root.is_dir():
        raise ConfigError(f"{where}: image folder '{d['root']}' does not exist "
                          f"(set it to your ImageNet {which} folder: one sub-folder per class)")
    try:
        counts = count_image_files(root)
    except OSError as e:
        raise ConfigError(f"{where}: cannot list image folder '{d['root']}' ({e}); check its permissions") from None
    layout = f"{str(d['root']).rstrip('/')}/<class>/<image files>"
    if not counts:
        raise ConfigError(f"{where}: image folder '{d['root']}' has no class sub-folders; expected the layout {layout} "
                          f"(set root to the folder that holds the class folders of your ImageNet {which} set)")
    if not any(counts.values()):
        n = len(counts)
        raise ConfigError(f"{where}: image folder '{d['root']}' holds no image files in its {n} class "
                          f"folder{'s' if n != 1 else ''} (image files are found by extension, in any case: "
                          f"{', '.join(IMG_EXTENSIONS)}; hidden files are skipped); put the images into the class "
                          f"folders ({layout}) or set root to the folder that holds them")
    return counts


def _describe_folder(dname: str, d: dict, counts: dict[str, int]) -> str:
    n = len(counts)
    return f"image folder '{d['root']}' (datasets.{dname}.root, {n} class folder{'s' if n != 1 else ''})"


def _check_analysis_count(a: dict, d: dict, counts: dict[str, int], minibatch_size) -> None:
    """analysis.n_examples images must be in the folder (an upper bound: on_bad_file: skip may drop some)."""
    n = sum(counts.values())
    if a["n_examples"] <= n:
        return
    from .plan import MIN_MINIBATCH_SIZE

    fit = n // minibatch_size * minibatch_size if isinstance(minibatch_size, int) and minibatch_size > 0 else 0
    hint = (f"lower analysis.n_examples to {fit} (the largest multiple of cka.minibatch_size {minibatch_size} that "
            f"fits), or " if fit >= MIN_MINIBATCH_SIZE else "")
    raise ConfigError(f"config key analysis.n_examples: {a['n_examples']} examples requested but "
                      f"{_describe_folder(a['dataset'], d, counts)} holds {n} image files (counted by file name); "
                      f"{hint}add images to the folder, or set datasets.{a['dataset']}.root to a folder with at "
                      f"least {a['n_examples']}")


def _check_recipe_count(where: str, r: dict, d: dict, counts: dict[str, int]) -> None:
    """A recipe needs one full batch of training images: batch_size images among those it keeps.

    train_fraction keeps max(1, round(fraction * n)) images of each class holding n (stratified_subset in
    data/subsets.py), so the count by class name is exact up to unreadable files (on_bad_file: skip).
    Training would run on fewer (every step one short batch), but not the recipe as written."""
    bs, f = int(r["batch_size"]), float(r.get("train_fraction", 1.0))
    n = sum(counts.values())
    kept = n if f >= 1.0 else sum(max(1, int(round(f * c))) for c in counts.values() if c)
    if kept >= bs:
        return
    held = f"holds {n} image files" + (f", of which train_fraction {f:g} keeps {kept}" if f < 1.0 else "")
    raise ConfigError(f"config key {where}.recipe.batch_size: one batch needs {bs} training images, but "
                      f"{_describe_folder(r['dataset'], d, counts)} {held} (counted by file name); lower batch_size "
                      f"to at most {kept}{', raise train_fraction' if f < 1.0 else ''}, or set "
                      f"datasets.{r['dataset']}.root to a folder with more images")


def _check_semantics(cfg: dict, check_timm: bool) -> None:
    datasets = cfg["datasets"]
    counts = {dname: _image_folder_counts(dname, d) for dname, d in datasets.items() if d["kind"] == "imagefolder"}
    a = cfg["analysis"]["dataset"]
    if datasets.get(a, {}).get("split") == "train":
        raise ConfigError(f"config key analysis.dataset: '{a}' is a training folder (split: train); analyses read "
                          "an evaluation folder (split: val)")

    for mname, m in cfg["models"].items():
        where = f"models.{mname}"
        kind = m["source"]["kind"]
        if isinstance(m.get("layers"), dict):
            try:
                re.compile(m["layers"]["regex"])
            except re.error as e:
                raise ConfigError(f"config key {where}.layers.regex: {m['layers']['regex']!r} is not a valid "
                                  f"regular expression ({e})") from None
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
            if train["kind"] == "imagefolder":
                _check_recipe_count(where, r, train, counts[r["dataset"]])
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
        m.setdefault("family", _family(mname, m))

    _check_init_from_cycles(cfg["models"])

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
    else:
        _check_analysis_count(a, ds, counts[a["dataset"]], cfg["cka"]["minibatch_size"])

    c = cfg["cka"]
    # One example plan serves both estimators (shards are reused when only the estimator changes),
    # so the plan's bound holds for both.
    try:
        check_minibatch(a["n_examples"], c["minibatch_size"], names=("analysis.n_examples", "cka.minibatch_size"),
                        where="")
    except MinibatchError as e:
        text = str(e).removeprefix(f"{e.key} = ")   # the key leads the message already
        raise ConfigError(f"config key {e.key}: {text}") from None
    if c["pairs"] != "all":
        for i, pair in enumerate(c["pairs"]):
            for name in pair:
                if name not in cfg["models"]:
                    raise ConfigError(f"config key cka.pairs[{i}]: unknown model '{name}'; configured: {', '.join(cfg['models'])}")
            if pair[0] == pair[1]:
                raise ConfigError(f"config key cka.pairs[{i}]: a pair needs two different models (within-model CKA is always computed)")

    registry.check(cfg)   # the `analyses:` and `experiments:` sections, each by its analysis


def _check_init_from_cycles(models: dict) -> None:
    """`init_from` chains must end in a model trained from its own initialisation."""
    for start in models:
        chain, name = [], start
        while name in models and name not in chain:
            chain.append(name)
            name = (models[name].get("recipe") or {}).get("init_from")
        if name in chain and name == start:
            cycle = chain + [start]
            raise ConfigError(f"config key models.{start}.recipe.init_from: models {' -> '.join(cycle)} start from "
                              "each other in a cycle; one of them must train without init_from")


def load(config: dict, check_timm: bool = True) -> dict:
    """Validate a raw config (as Snakemake merged it) and return the normalised copy.

    The config as written is checked against the schema first, then its sweeps are expanded and
    every expanded model is checked again, like a hand-written one: a swept value is as valid as
    the key it sets. Problems of an expanded model are named by the sweep entry that made it.
    """
    schema = load_schema()
    cfg = validate_schema(config, schema)
    check_sweep_keys(cfg, schema)
    origins = expand_sweeps(cfg)
    marks = {name: cfg["models"][name].pop("sweep_of") for name in origins}
    errors = _schema_errors(cfg, schema)
    if errors:
        path, text = _schema_error_parts(errors[0])
        if len(path) >= 2 and path[0] == "models" and path[1] in origins:
            raise ConfigError(_sweep_message(path[1], origins[path[1]], path[2:], text))
        raise ConfigError(f"config key {_key(path)}: {text}")
    _fill_defaults(cfg, schema, schema)   # again: the defaults of mappings a sweep created (remove_skip.branch)
    for name, mark in marks.items():
        cfg["models"][name]["sweep_of"] = mark
    try:
        _check_semantics(cfg, check_timm=check_timm)
    except ConfigError as e:
        raise _name_sweeps_in(e, origins) from None
    return cfg


def load_file(path: str | os.PathLike, check_timm: bool = True) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    try:
        text = path.read_text()
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file '{path}' is not UTF-8 text ({e}); save it as UTF-8") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(yaml_error_message(path, e, text)) from None
    check_duplicate_keys(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of keys")
    return load(raw, check_timm=check_timm)


# --- derived views used by the rules ---------------------------------------------------------

def runs_on_host(cfg: dict, step: str | None) -> bool:
    """Whether a rule whose work runs under `step` (None: a rule that runs no step) computes in its own
    process on the host running Snakemake rather than in a submitted job: a Snakemake `localrule`."""
    return step is None or step_executor(cfg, step)["executor"] == "inline"


def step_executor(cfg: dict, step: str) -> dict:
    """Where a step runs and with which resources: executor.resources, overridden per step. The steps of
    HOST_STEPS run inline unless executor.steps places them; the others where executor.default says."""
    if step not in STEPS:
        raise ConfigError(f"unknown step '{step}'; steps: {', '.join(STEPS)}")
    ex = cfg.get("executor", {})
    per_step = ex.get("steps", {}).get(step, {})
    resources = dict(ex.get("resources", {}))
    resources.update(per_step.get("resources", {}))
    return {
        "step": step,
        "executor": per_step.get("executor", "inline" if step in HOST_STEPS else ex.get("default", "local")),
        "resources": resources,
        "step_resources": dict(per_step.get("resources", {})),
        "log_dir": ex.get("log_dir", paths.JOB_LOGS),
        "cancel_on_interrupt": ex.get("cancel_on_interrupt", True),
        "array_parallelism": ex.get("array_parallelism", 64),
    }
