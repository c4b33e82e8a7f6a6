"""F7: how much a residual sublayer changes the stream: ||z|| / ||f(z)||.

z is the stream the skip connection carries into the sum (the block input; a CNN unit that
downsamples adds the projected input, which is then z), f(z) the branch output. Norms are taken
per token (per spatial position of a CNN map) over channels and summed over all examples of the
plan, separately for prefix tokens (the CLS token) and spatial tokens.

Table columns: model, sublayer, kind (attn, mlp, token_mixing, channel_mixing, unit), index,
tokens (cls, spatial), ratio (mean ||z|| / mean ||f(z)||, the plotted value), mean_token_ratio
(mean over tokens of ||z_t|| / ||f(z)_t||), z_norm, f_norm (means), n_tokens.
"""
from __future__ import annotations

from .common import by_unit, read_group, read_table, shard_paths, write_table
from .reducers import NORM_RATIO
from ..plotting import finish_figure, layer_axis, pyplot
from ..registry import Analysis, Figure, models_for

GROUPS = ("cls", "spatial")


def compute(spec: dict) -> str:
    """spec: manifest, model, out, provenance_config."""
    import pandas as pd
    from ..manifest import load_manifest

    manifest = load_manifest(spec["manifest"])
    totals = {}
    for path in shard_paths(manifest):
        for unit, st in by_unit(read_group(path, NORM_RATIO, "norm ratios")).items():
            t = totals.setdefault(unit, {k: 0.0 for k in ("z_norm_sum", "f_norm_sum", "ratio_sum", "count", "ratio_count")})
            for k in t:
                t[k] = t[k] + st[k]
            t["index"] = int(st["index"])
    rows = []
    for unit, t in totals.items():
        kind = unit.rpartition(".")[2] if not unit.startswith("stage") else "unit"
        for g, group in enumerate(GROUPS):
            n = float(t["count"][g])
            if n == 0:
                continue
            z, f = t["z_norm_sum"][g] / n, t["f_norm_sum"][g] / n
            rc = float(t["ratio_count"][g])
            rows.append({"model": spec["model"], "sublayer": unit, "kind": kind, "index": t["index"], "tokens": group,
                         "ratio": z / f if f > 0 else float("inf"),
                         "mean_token_ratio": t["ratio_sum"][g] / rc if rc else float("nan"),
                         "z_norm": z, "f_norm": f, "n_tokens": int(n)})
    table = pd.DataFrame(rows).sort_values(["index", "tokens"])
    return write_table(table, spec["out"], spec, inputs=[spec["manifest"]])


def figure(spec: dict) -> None:
    """spec: tables (one norm_ratio table), outputs, dpi."""
    plt = pyplot()
    t = read_table(spec["tables"][0])
    model = t.model.iloc[0]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.16 * t["index"].nunique() + 3), 4.0))
    styles = {"cls": dict(marker="s", ls="-"), "spatial": dict(marker="o", ls="-")}
    colours = {"attn": "tab:blue", "mlp": "tab:orange", "token_mixing": "tab:blue", "channel_mixing": "tab:orange",
               "unit": "tab:green"}
    for (kind, tokens), s in t.groupby(["kind", "tokens"], sort=False):
        s = s.sort_values("index")
        ax.plot(s["index"], s["ratio"], color=colours.get(kind, "k"), ms=4, lw=1,
                label=f"{kind}, {'CLS token' if tokens == 'cls' else 'spatial tokens'}", **styles[tokens])
    units = t.drop_duplicates("index").sort_values("index")
    layer_axis(ax, "x", units["index"], units["sublayer"], "sublayer", "sublayer")
    ax.set_yscale("log")
    ax.axhline(1.0, color="0.6", lw=0.8, ls="--")
    ax.set_ylabel("||z|| / ||f(z)||")
    ax.set_title(f"F7: norm ratio of the residual stream to the branch, {model}", fontsize=9)
    ax.legend(fontsize=7)
    finish_figure(fig, spec)


# ----------------------------------------------------------------------------- registration

def _taps(cfg: dict, model: str) -> dict:
    return {"norm_ratio": {}} if model in models_for(cfg, "norm_ratio") else {}


SETTINGS = {}   # analyses.norm_ratio, besides enabled and models


ANALYSIS = Analysis(
    name="norm_ratio", settings=SETTINGS, families=("vit", "mixer", "cnn"), why="norm ratios need residual blocks (a ViT, Mixer or CNN)",
    source="dataset", compute=compute, step="vision", taps=_taps,
    figures=(Figure("F7", "norm ratios", figure),),
    code=("analyses/reducers.py",))
