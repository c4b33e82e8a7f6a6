# Retraining experiments (F8, F10-F13): every retrained model is an ordinary model of the registry;
# these rules only read what the other rules wrote (cards, shards, CKA and localization tables).
from seelike import experiments
from seelike.provenance import code_digest

EXP = experiments.figure_stems(CFG)
EXP_MODELS = "|".join(MODELS)


# The modules these steps run: a change to any of them reruns the experiment tables and figures.
_EXP_CODE = code_digest("experiments.py", "probes.py", "data/subsets.py", "figures.py", "analyses/common.py")


def _exp_spec(function, out, tables=(), **extra):
    spec = {"function": function, "out": out, "tables": [str(t) for t in as_list(tables)], **extra}
    spec["provenance_config"] = {"function": function, "code": _EXP_CODE,
                                 **{k: v for k, v in extra.items() if k != "outputs"}}
    return spec_json(spec)


def _exp_figure(figure, stem, function, tables, **extra):
    return _exp_spec(function, specs.figure_paths(CFG, figure, stem)[0], tables, figure=figure,
                     outputs=specs.figure_paths(CFG, figure, stem), dpi=CFG["figures"]["dpi"], **extra)


def _f8_tables(wc):
    return [f"results/experiments/skip_ablation/{wc.baseline}.csv"] + [
        specs.cka_table_path(CFG, m, m) for m in experiments.skip_ablation(CFG)[1]]


def _f10_tables(wc):
    cls = CFG["experiments"]["gap_vs_cls"]["cls"]
    return [vision.table_path(CFG, "localization", cls), vision.table_path(CFG, "localization", wc.gap)]


def _f11_tables(wc):
    """A GAP model's probes are drawn beside its CLS twin's."""
    pair = CFG["experiments"].get("gap_vs_cls", {})
    models = [pair["cls"], wc.model] if pair.get("gap") == wc.model else [wc.model]
    return [f"results/experiments/probes/{m}.csv" for m in models]


def _f12_tables(wc):
    return [specs.cka_table_path(CFG, a, b) for a, b in experiments.cka_pairs(CFG)]


def _f13_tables(wc):
    return [f"results/experiments/probes/{m}.csv" for m in experiments.probe_models(CFG)]


rule skip_ablation_table:
    input:
        lambda wc: [f"results/models/{m}/card.json" for m in [experiments.skip_ablation(CFG)[0]] + experiments.skip_ablation(CFG)[1]],
    output:
        "results/experiments/skip_ablation/{baseline}.csv",
    params:
        spec=lambda wc: _exp_spec("seelike.experiments:skip_table", f"results/experiments/skip_ablation/{wc.baseline}.csv",
                                  baseline=wc.baseline, cards={m: f"results/models/{m}/card.json" for m in
                                                 [experiments.skip_ablation(CFG)[0]] + experiments.skip_ablation(CFG)[1]}),
    log:
        "results/logs/experiments/skip_ablation/{baseline}.log",
    localrule: True
    conda:
        CONDA_ENV
    shell:
        step_shell("experiment")


rule figure_f8:
    input:
        _f8_tables,
    output:
        report(expand("results/figures/F8/{{baseline}}.{fmt}", fmt=FORMATS), caption="../report/F8.rst",
               category="F8 skip connections removed", subcategory="{baseline}"),
    params:
        spec=lambda wc: _exp_figure("F8", wc.baseline, "seelike.experiments:skip_figure", _f8_tables(wc)),
    log:
        "results/logs/figures/F8/{baseline}.log",
    localrule: True
    conda:
        CONDA_ENV
    shell:
        step_shell("experiment")


rule figure_f10:
    input:
        _f10_tables,
    output:
        report(expand("results/figures/F10/{{gap}}.{fmt}", fmt=FORMATS), caption="../report/F10.rst",
               category="F10 GAP vs CLS localization", subcategory="{gap}"),
    params:
        spec=lambda wc: _exp_figure("F10", wc.gap, "seelike.experiments:gap_cls_figure", _f10_tables(wc)),
    log:
        "results/logs/figures/F10/{gap}.log",
    localrule: True
    conda:
        CONDA_ENV
    shell:
        step_shell("experiment")


rule probe_table:
    input:
        lambda wc: f"results/extract/{DATASET}/{wc.model}/manifest.json",
    output:
        "results/experiments/probes/{model}.csv",
    params:
        spec=lambda wc: _exp_spec(
            "seelike.experiments:probe_table", f"results/experiments/probes/{wc.model}.csv",
            manifest=f"results/extract/{DATASET}/{wc.model}/manifest.json", submit_as="probe",
            **{k: CFG["experiments"]["probes"][k] for k in ("k_shot", "train_fraction", "tokens")}),
    log:
        "results/logs/experiments/probes/{model}.log",
    wildcard_constraints:
        model=EXP_MODELS,
    conda:
        CONDA_ENV
    shell:
        step_shell("experiment")


rule figure_f11:
    input:
        _f11_tables,
    output:
        report(expand("results/figures/F11/{{model}}.{fmt}", fmt=FORMATS), caption="../report/F11.rst",
               category="F11 linear probes per layer", subcategory="{model}"),
    params:
        spec=lambda wc: _exp_figure("F11", wc.model, "seelike.experiments:probe_figure", _f11_tables(wc)),
    log:
        "results/logs/figures/F11/{model}.log",
    wildcard_constraints:
        model=EXP_MODELS,
    localrule: True
    conda:
        CONDA_ENV
    shell:
        step_shell("experiment")


rule figure_f13:
    input:
        _f13_tables,
    output:
        report(expand("results/figures/F13/all.{fmt}", fmt=FORMATS), caption="../report/F13.rst",
               category="F13 linear probes across models"),
    params:
        spec=lambda wc: _exp_figure("F13", "all", "seelike.experiments:probe_figure", _f13_tables(wc)),
    log:
        "results/logs/figures/F13/all.log",
    localrule: True
    conda:
        CONDA_ENV
    shell:
        step_shell("experiment")


rule figure_f12:
    input:
        _f12_tables,
    output:
        report(expand("results/figures/F12/{{full}}.{fmt}", fmt=FORMATS), caption="../report/F12.rst",
               category="F12 data scale", subcategory="{full}"),
    params:
        spec=lambda wc: _exp_figure(
            "F12", wc.full, "seelike.experiments:data_scale_figure", _f12_tables(wc), full=wc.full,
            labels=[f"{(CFG['models'][s].get('recipe') or {}).get('train_fraction', 1.0):.0%} ({s})"
                    for s in experiments.data_scale(CFG)[1]]),
    log:
        "results/logs/figures/F12/{full}.log",
    localrule: True
    conda:
        CONDA_ENV
    shell:
        step_shell("experiment")
