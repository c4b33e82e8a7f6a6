"""F11, F13: closed-form ridge probes (seelike.probes) of every layer, from the stored features.

Per layer: the token mean, the CLS token (if any) and every token position (for the examples
whose full tokens are stored), full and k-shot. F11 shows one model per figure (a GAP model beside
its CLS twin of `experiments.gap_vs_cls`), F13 every probed model by relative depth.
`experiments.probes` names the models. Table columns: model, layer, index, feature (mean, cls,
token), position, kind (full, k_shot), k, accuracy, lam, n_train, n_test.
"""
from __future__ import annotations


import numpy as np

from .. import paths
from ..base import ConfigError
from ..plotting import finish_figure, layer_axis, pyplot
from ..registry import Analysis, Figure, check_model_list
from .common import experiment_section, read_table, shard_paths, write_table

#: Per-token probes fit on `train_fraction` of the examples with stored tokens and score the rest:
#: below this count (10 test examples at the default 3/4) an accuracy says little.
MIN_TOKEN_PROBE_EXAMPLES = 40


def probe_models(cfg: dict) -> list[str]:
    s = experiment_section(cfg, "probes")
    return [] if not s else [n for n in cfg["models"] if n in s.get("models", [])]


def _features(shards: list, layer: str, key: str) -> np.ndarray:
    from ..store import layer_path, read_array

    parts = []
    for path in shards:
        try:
            parts.append(read_array(path, layer_path(layer, key)))
        except Exception:
            if key == "tokens":
                break  # tokens exist only for the plan's first examples
            raise
    return np.concatenate(parts) if parts else np.zeros((0,))


def probe_table(spec: dict) -> str:
    """Probe accuracy per layer: token mean, CLS token (if any), each token position; full and k-shot."""
    import pandas as pd
    from ..data.subsets import k_per_class
    from ..manifest import load_manifest
    from ..probes import fit_probe
    from ..store import read_array

    m = load_manifest(spec["manifest"])
    shards = shard_paths(m)
    labels = np.concatenate([read_array(p, "labels") for p in shards])
    # the data's classes, not the model's outputs (a pretrained head may have 1000 or 21843)
    n_classes = int(labels.max()) + 1
    n = len(labels)
    n_train = int(round(spec.get("train_fraction", 0.75) * n))
    tr, te = np.arange(n_train), np.arange(n_train, n)  # plan order is already a fixed shuffle
    k = int(spec.get("k_shot", 0))
    try:
        shots = k_per_class(labels, k, among=tr) if k else None
    except ValueError as e:
        raise ValueError(f"{e}: the k-shot probes draw from the probes' training part ({n_train} of the {n} analysis "
                         f"examples); lower experiments.probes.k_shot (0 switches them off) or raise "
                         f"analysis.n_examples") from None
    rows = []
    for idx, layer in enumerate(m["layers"]):
        feats = {"mean": _features(shards, layer, "pooled_mean")}
        cls = None
        try:
            cls = _features(shards, layer, "pooled_cls")
        except Exception:
            pass
        if cls is not None and len(cls):
            feats["cls"] = cls
        for feature, x in feats.items():
            for kind, train_idx in (("full", tr),) + ((("k_shot", shots),) if shots is not None else ()):
                r = fit_probe(x[train_idx], labels[train_idx], x[te], labels[te], n_classes)
                rows.append({"model": m["model"], "layer": layer, "index": idx, "feature": feature, "position": -1,
                             "kind": kind, "k": k if kind == "k_shot" else None, "accuracy": r.accuracy,
                             "lam": r.lam, "n_train": r.n_train, "n_test": r.n_test})
        if spec.get("tokens", True):
            tokens = _features(shards, layer, "tokens")
            if len(tokens) >= MIN_TOKEN_PROBE_EXAMPLES:
                nt = len(tokens)
                cut = int(round(spec.get("train_fraction", 0.75) * nt))
                ttr, tte = np.arange(cut), np.arange(cut, nt)
                for p in range(tokens.shape[1]):
                    r = fit_probe(tokens[ttr, p], labels[ttr], tokens[tte, p], labels[tte], n_classes)
                    rows.append({"model": m["model"], "layer": layer, "index": idx, "feature": "token", "position": p,
                                 "kind": "full", "k": None, "accuracy": r.accuracy, "lam": r.lam,
                                 "n_train": r.n_train, "n_test": r.n_test})
    return write_table(pd.DataFrame(rows), spec["out"], spec, inputs=[spec["manifest"]])


def _f11_title(tables: list) -> str:
    """F11's title: the model(s) and the features actually probed (two tables: a CLS-trained model
    beside its GAP-trained twin, the order of :func:`_f11_tables`)."""
    feats = {"mean": "token mean", "cls": "CLS token", "token": "single tokens"}
    shown = [name for f, name in feats.items() if any((t.feature == f).any() for t in tables)]
    what = ", ".join(shown)
    if len(tables) == 2:
        cls_model, gap_model = (t.model.iloc[0] for t in tables)
        return f"F11: linear probes per layer ({what}), CLS-trained {cls_model} beside GAP-trained {gap_model}"
    return f"F11: linear probes per layer of {tables[0].model.iloc[0]} ({what})"


def probe_figure(spec: dict) -> None:
    """F11 (one model per table, side by side) or F13 (all models, token-mean probe, by relative depth)."""
    plt = pyplot()
    tables = [read_table(t) for t in spec["tables"]]
    if spec["figure"] == "F13":
        kinds = [kind for kind in ("full", "k_shot") if any((t.kind == kind).any() for t in tables)]
        fig, axes = plt.subplots(1, len(kinds), figsize=(4.5 * len(kinds), 3.6), squeeze=False)
        for ax, kind in zip(axes[0], kinds):
            for t in tables:
                s = t[(t.feature == "mean") & (t.kind == kind)].sort_values("index")
                if len(s):
                    depth = s["index"] / max(1, s["index"].max())
                    ax.plot(depth, s.accuracy, "o-", ms=3, label=t.model.iloc[0])
            ax.set_xlabel("relative depth")
            ax.set_ylabel("probe accuracy (token mean)")
            ax.set_title("full probe" if kind == "full" else "k-shot probe", fontsize=9)
        axes[0][0].legend(fontsize=7)
        fig.suptitle("F13: linear probes of every layer across models", fontsize=9)
    else:
        fig, axes = plt.subplots(1, len(tables), figsize=(4.4 * len(tables), 3.8), squeeze=False, layout="constrained")
        styles = {"mean": ("o-", "tab:blue", "token mean"), "cls": ("s-", "tab:orange", "CLS token")}
        for ax, t in zip(axes[0], tables):
            for feature, (style, colour, label) in styles.items():
                s = t[(t.feature == feature) & (t.kind == "full")].sort_values("index")
                if len(s):
                    ax.plot(s["index"], s.accuracy, style, ms=3, color=colour, label=label)
            tok = t[t.feature == "token"]
            if len(tok):
                g = tok.groupby("index").accuracy
                ax.plot(g.mean().index, g.mean().values, "^-", ms=3, color="tab:green",
                        label="single tokens, mean over token positions")
                ax.fill_between(g.min().index, g.min().values, g.max().values, color="tab:green", alpha=0.15,
                                label="single tokens, range (min to max) over token positions")
            layers = t.drop_duplicates("index").sort_values("index")
            layer_axis(ax, "x", layers["index"], layers.layer, "layer", "layer")
            ax.set_ylabel("probe accuracy")
            if len(tables) > 1:
                ax.set_title(t.model.iloc[0], fontsize=9)
        legend = {}
        for ax in axes[0]:
            for handle, label in zip(*ax.get_legend_handles_labels()):
                legend.setdefault(label, handle)
        fig.legend(legend.values(), legend.keys(), loc="outside lower center", ncol=2, fontsize=7)
        fig.suptitle(_f11_title(tables), fontsize=9)
    finish_figure(fig, spec)


# ----------------------------------------------------------------------------- registration

def _analysis_classes(cfg: dict) -> int | None:
    """Classes of the analysis dataset: a synthetic dataset's n_classes, an image folder's class folders."""
    import os

    ds = (cfg.get("datasets") or {}).get((cfg.get("analysis") or {}).get("dataset"))
    if not ds:
        return None
    if ds.get("kind") == "synthetic":
        return int(ds.get("n_classes", 10))
    root = os.path.expanduser(str(ds.get("root", "")))
    if not os.path.isdir(root):
        return None
    with os.scandir(root) as entries:   # the reader's classes: non-hidden sub-folders
        return sum(1 for e in entries if e.is_dir() and not e.name.startswith("."))


def _check(cfg: dict) -> None:
    probes = experiment_section(cfg, "probes")
    if not probes:
        return
    check_model_list(cfg, "experiments.probes.models", probes.get("models") or [])
    full_tokens = int((cfg.get("extraction") or {}).get("full_tokens", 0))
    n_examples = int((cfg.get("analysis") or {}).get("n_examples", full_tokens))
    if probes.get("tokens", True) and min(full_tokens, n_examples) < MIN_TOKEN_PROBE_EXAMPLES:
        which = (f"extraction.full_tokens is {full_tokens}" if full_tokens <= n_examples
                 else f"analysis.n_examples is {n_examples}")
        raise ConfigError(f"config key experiments.probes.tokens: per-token probes (F11) fit on the examples whose "
                          f"full tokens are stored, at least {MIN_TOKEN_PROBE_EXAMPLES}, but {which}; raise it "
                          f"or set experiments.probes.tokens: false")
    if probes.get("k_shot", 10):
        k, n_train = int(probes["k_shot"]), int(round(probes.get("train_fraction", 0.75) * n_examples))
        n_classes = _analysis_classes(cfg)
        if n_classes and k * n_classes > n_train:
            raise ConfigError(f"config key experiments.probes.k_shot: {k}-shot probes need {k} training examples of "
                              f"each of the {n_classes} classes, but the probes fit on {n_train} examples "
                              f"(train_fraction of analysis.n_examples {n_examples}); lower k_shot (0 switches the "
                              f"k-shot probes off) or raise analysis.n_examples")


def _probe_table(cfg: dict, model: str) -> str:
    return paths.table(cfg, "experiment", "probes", model)


def _f11_tables(cfg: dict, model: str) -> list[str]:
    """A GAP model's probes are drawn beside its CLS twin's."""
    pair = experiment_section(cfg, "gap_vs_cls")
    return [_probe_table(cfg, m) for m in ([pair["cls"], model] if pair.get("gap") == model else [model])]


ANALYSIS = Analysis(
    name="probes", source="experiment", compute=probe_table, step="probe", check=_check, stems=probe_models,
    inputs=lambda cfg, model: [paths.manifest(cfg, model)],
    spec=lambda cfg, model: {"manifest": paths.manifest(cfg, model),
                             **{k: cfg["experiments"]["probes"][k] for k in ("k_shot", "train_fraction", "tokens")}},
    figures=(Figure("F11", "linear probes per layer", probe_figure, tables=_f11_tables),
             Figure("F13", "linear probes across models", probe_figure,
                    stems=lambda cfg: ["all"] if probe_models(cfg) else [],
                    tables=lambda cfg, stem: [_probe_table(cfg, m) for m in probe_models(cfg)])),
    code=("probes.py", "data/subsets.py"))
