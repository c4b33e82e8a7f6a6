"""Retraining experiments (Raghu et al. 2021, F8 and F10-F13), from files the workflow already wrote.

* F8 skip ablation: test accuracy of ViTs trained with the skip connection removed at block i
  (model cards) beside the unablated model, and each ablated model's within-model CKA.
* F10 GAP vs CLS: the localization maps (F9 tables) of a GAP-trained ViT beside the CLS one.
* F11/F13 linear probes: closed-form ridge probes per layer on the token mean, the CLS token and
  every token position, full and k-shot (seelike.probes), from the stored features.
* F12 data scale: CKA of each layer of subset-trained models with the same layer of the full-data
  model (from the pair tables).

The `experiments:` config section names the models; tables first, figures drawn from them.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

RESULTS = "results"


# ----------------------------------------------------------------------------- config views

def section(cfg: dict) -> dict:
    return cfg.get("experiments") or {}


def sweep_members(cfg: dict, base: str) -> list[str]:
    return [n for n, m in cfg["models"].items() if (m.get("sweep_of") or {}).get("model") == base]


def skip_ablation(cfg: dict) -> tuple[str, list[str]] | None:
    s = section(cfg).get("skip_ablation")
    if not s:
        return None
    models = s.get("models") or sweep_members(cfg, s.get("sweep", ""))
    return s["baseline"], [m for m in models if m != s["baseline"]]


def data_scale(cfg: dict) -> tuple[str, list[str]] | None:
    s = section(cfg).get("data_scale")
    if not s:
        return None
    subsets = s.get("subsets") or sweep_members(cfg, s.get("sweep", ""))
    return s["full"], [m for m in subsets if m != s["full"]]


def probe_models(cfg: dict) -> list[str]:
    s = section(cfg).get("probes")
    return [] if not s else [n for n in cfg["models"] if n in s.get("models", [])]


#: Per-token probes fit on `train_fraction` of the examples with stored tokens and score the rest:
#: below this count (10 test examples at the default 3/4) an accuracy says little.
MIN_TOKEN_PROBE_EXAMPLES = 40


def check(cfg: dict) -> list[str]:
    """Semantic problems of the `experiments:` section, phrased with the key."""
    problems, names = [], set(cfg["models"])
    s = section(cfg)
    for key, fields in (("skip_ablation", ("baseline",)), ("data_scale", ("full",)), ("gap_vs_cls", ("gap", "cls"))):
        for f in fields:
            if key in s and s[key].get(f) not in names:
                problems.append(f"config key experiments.{key}.{f}: unknown model '{s[key].get(f)}'")
    for key, sweep_key in (("skip_ablation", "sweep"), ("data_scale", "sweep")):
        if key in s and s[key].get(sweep_key) and not sweep_members(cfg, s[key][sweep_key]):
            problems.append(f"config key experiments.{key}.{sweep_key}: no model is a sweep of '{s[key][sweep_key]}'")
    for key, lst in (("skip_ablation", "models"), ("data_scale", "subsets"), ("probes", "models")):
        for m in (s.get(key) or {}).get(lst, []) or []:
            if m not in names:
                problems.append(f"config key experiments.{key}.{lst}: unknown model '{m}'")
    probes = s.get("probes")
    full_tokens = int((cfg.get("extraction") or {}).get("full_tokens", 0))
    n_examples = int((cfg.get("analysis") or {}).get("n_examples", full_tokens))
    if probes and probes.get("tokens", True) and min(full_tokens, n_examples) < MIN_TOKEN_PROBE_EXAMPLES:
        which = (f"extraction.full_tokens is {full_tokens}" if full_tokens <= n_examples
                 else f"analysis.n_examples is {n_examples}")
        problems.append(f"config key experiments.probes.tokens: per-token probes (F11) fit on the examples whose "
                        f"full tokens are stored, at least {MIN_TOKEN_PROBE_EXAMPLES}, but {which}; raise it "
                        f"or set experiments.probes.tokens: false")
    if probes and probes.get("k_shot", 10):
        k, n_train = int(probes["k_shot"]), int(round(probes.get("train_fraction", 0.75) * n_examples))
        n_classes = _analysis_classes(cfg)
        if n_classes and k * n_classes > n_train:
            problems.append(f"config key experiments.probes.k_shot: {k}-shot probes need {k} training examples of each "
                            f"of the {n_classes} classes, but the probes fit on {n_train} examples "
                            f"(train_fraction of analysis.n_examples {n_examples}); lower k_shot (0 switches the "
                            f"k-shot probes off) or raise analysis.n_examples")
    return problems


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


def cka_pairs(cfg: dict) -> list[tuple[str, str]]:
    """Pair tables the experiments read (F12), in config order."""
    ds = data_scale(cfg)
    if not ds:
        return []
    order = list(cfg["models"])
    return [tuple(sorted((ds[0], sub), key=order.index)) for sub in ds[1]]


def figure_stems(cfg: dict) -> dict:
    out = {}
    if skip_ablation(cfg):
        out["F8"] = [skip_ablation(cfg)[0]]
    if section(cfg).get("gap_vs_cls"):
        out["F10"] = [section(cfg)["gap_vs_cls"]["gap"]]
    if probe_models(cfg):
        out["F11"] = probe_models(cfg)
        out["F13"] = ["all"]
    if data_scale(cfg):
        out["F12"] = [data_scale(cfg)[0]]
    return out


# ----------------------------------------------------------------------------- F8

def skip_table(spec: dict) -> str:
    """Accuracy of each ablated model and its baseline, from the model cards."""
    import pandas as pd
    from .analyses.common import write_table

    rows = []
    for name, card_path in spec["cards"].items():
        card = json.loads(Path(card_path).read_text())
        rs = card.get("modifications", {}).get("remove_skip") or {}
        rows.append({"model": name, "block": rs.get("block", -1), "branch": rs.get("branch", "none") if rs else "none",
                     "baseline": name == spec["baseline"], "test_accuracy": card["metrics"]["test_accuracy"],
                     "chance": card["metrics"].get("chance")})
    table = pd.DataFrame(rows).sort_values(["baseline", "block"], ascending=[False, True])
    return write_table(table, spec["out"], spec, inputs=list(spec["cards"].values()))


def skip_figure(spec: dict) -> None:
    """F8: accuracy against the block whose skip was removed, then each ablated model's CKA heatmap."""
    import pandas as pd
    from .analyses.common import finish_figure, mpl
    from .figures import draw_heatmap

    plt = mpl()
    acc = pd.read_csv(spec["tables"][0])
    heat = [pd.read_csv(t) for t in spec["tables"][1:]]
    fig, axes = plt.subplots(1, 1 + len(heat), figsize=(4.2 * (1 + len(heat)), 3.8), squeeze=False)
    ax = axes[0][0]
    ab = acc[~acc.baseline].sort_values("block")
    ax.plot(ab.block, ab.test_accuracy, "o-", label="skip removed at block i")
    base = acc[acc.baseline]
    if len(base):
        ax.axhline(float(base.test_accuracy.iloc[0]), color="k", ls="--", label=f"{base.model.iloc[0]} (all skips)")
    if acc.chance.notna().any():
        ax.axhline(float(acc.chance.dropna().iloc[0]), color="grey", ls=":", label="chance")
    ax.set_xlabel("block i")
    ax.set_ylabel("test accuracy")
    ax.set_title("F8: accuracy without the skip at block i", fontsize=9)
    ax.legend(fontsize=7)
    for a, t in zip(axes[0][1:], heat):
        draw_heatmap(a, t, f"{t.model_x.iloc[0]}")
    fig.subplots_adjust(wspace=0.5)
    finish_figure(fig, spec)


# ----------------------------------------------------------------------------- F10

def gap_cls_figure(spec: dict) -> None:
    """F10: localization maps (F9 tables) of the CLS model (top) and the GAP model (bottom)."""
    import pandas as pd
    from matplotlib.patches import Rectangle
    from .analyses.common import finish_figure, mpl

    plt = mpl()
    tables = [pd.read_csv(t) for t in spec["tables"]]
    ps = tables[0].drop_duplicates(["p_row", "p_col"])[["p_row", "p_col"]].values.tolist()
    vmax = max(1e-6, max(float(np.nanmax(t.cka.values)) for t in tables))
    fig, axes = plt.subplots(len(tables), len(ps), figsize=(2.2 * len(ps) + 1.0, 2.4 * len(tables)), squeeze=False)
    im = None
    for row, t in zip(axes, tables):
        gh, gw = int(t.grid_h.iloc[0]), int(t.grid_w.iloc[0])
        for ax, (pr, pc) in zip(row, ps):
            s = t[(t.p_row == pr) & (t.p_col == pc)]
            mat = np.full((gh, gw), np.nan)
            mat[s.q_row.values, s.q_col.values] = s.cka.values
            im = ax.imshow(mat, cmap="magma", vmin=0.0, vmax=vmax, interpolation="nearest")
            ax.add_patch(Rectangle((pc - 0.5, pr - 0.5), 1, 1, fill=False, ec="cyan", lw=1.5))
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(t.model.iloc[0], fontsize=9)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="linear CKA")
    fig.suptitle("F10: localization, CLS-trained (top) vs GAP-trained (bottom)", fontsize=9)
    finish_figure(fig, spec)


# ----------------------------------------------------------------------------- F11 / F13 probes

def _features(manifest: dict, layer: str, key: str) -> np.ndarray:
    from .manifest import load_manifest  # noqa: F401  (manifest dicts come from load_manifest)
    from .store import layer_path, read_array

    parts = []
    for entry in manifest["shards"]:
        path = Path(manifest["dir"]) / entry["file"]
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
    from .analyses.common import write_table
    from .data.subsets import k_per_class
    from .manifest import load_manifest
    from .probes import fit_probe
    from .store import read_array

    m = load_manifest(spec["manifest"])
    labels = np.concatenate([read_array(Path(m["dir"]) / e["file"], "labels") for e in m["shards"]])
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
        feats = {"mean": _features(m, layer, "pooled_mean")}
        cls = None
        try:
            cls = _features(m, layer, "pooled_cls")
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
            tokens = _features(m, layer, "tokens")
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


def probe_figure(spec: dict) -> None:
    """F11 (one model per table, side by side) or F13 (all models, token-mean probe, by relative depth)."""
    import pandas as pd
    from .analyses.common import finish_figure, mpl

    plt = mpl()
    tables = [pd.read_csv(t) for t in spec["tables"]]
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
        fig, axes = plt.subplots(1, len(tables), figsize=(4.4 * len(tables), 3.6), squeeze=False)
        for ax, t in zip(axes[0], tables):
            for feature, style in (("mean", "o-"), ("cls", "s-")):
                s = t[(t.feature == feature) & (t.kind == "full")].sort_values("index")
                if len(s):
                    ax.plot(s["index"], s.accuracy, style, ms=3, label=f"{feature} token" if feature == "cls" else "token mean")
            tok = t[t.feature == "token"]
            if len(tok):
                g = tok.groupby("index").accuracy
                ax.plot(g.mean().index, g.mean().values, "^-", ms=3, label="single tokens (mean over positions)")
                ax.fill_between(g.min().index, g.min().values, g.max().values, alpha=0.2)
            ax.set_xticks(sorted(t["index"].unique()))
            ax.set_xticklabels(t.drop_duplicates("index").sort_values("index").layer, rotation=90, fontsize=7)
            ax.set_ylabel("probe accuracy")
            ax.set_title(t.model.iloc[0], fontsize=9)
            ax.legend(fontsize=7)
        fig.suptitle("F11: linear probes per layer (CLS vs GAP side by side)", fontsize=9)
    finish_figure(fig, spec)


# ----------------------------------------------------------------------------- F12

def data_scale_figure(spec: dict) -> None:
    """F12: same-layer CKA of each subset-trained model with the full-data model, a line per fraction."""
    import pandas as pd
    from .analyses.common import finish_figure, mpl

    plt = mpl()
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    full = spec["full"]
    for table, label in zip(spec["tables"], spec["labels"]):
        t = pd.read_csv(table)
        same = t[t.index_x == t.index_y].sort_values("index_x")
        ax.plot(same.index_x, same.cka, "o-", ms=3, label=label)
        ax.fill_between(same.index_x, same.ci_low, same.ci_high, alpha=0.2)
    t = pd.read_csv(spec["tables"][0])
    layers = t[t.index_x == t.index_y].sort_values("index_x")
    names = layers.layer_x if layers.model_x.iloc[0] == full else layers.layer_y
    ax.set_xticks(layers.index_x)
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    ax.set_ylabel(f"CKA with the same layer of {full}")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, title="training data")
    ax.set_title("F12: representations of models trained on less data", fontsize=9)
    finish_figure(fig, spec)
