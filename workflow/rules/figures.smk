# Figures are drawn from the tables on disk; each has a caption in workflow/report/.
from seelike.provenance import code_digest

FORMATS = CFG["figures"]["formats"]


def _figure_spec(tables, titles, stem, figure, suptitle):
    return spec_json({
        "tables": tables, "titles": titles, "suptitle": suptitle, "dpi": CFG["figures"]["dpi"],
        "outputs": specs.figure_paths(CFG, figure, stem),
        "provenance_config": {"figure": figure, "stem": stem, "code": code_digest("figures.py")},
    })


rule figure_f1:
    input:
        lambda wc: specs.cka_table_path(CFG, wc.model, wc.model),
    output:
        report(expand("results/figures/F1/{{model}}.{fmt}", fmt=FORMATS), caption="../report/F1.rst",
               category="F1 within-model CKA", subcategory="{model}"),
    params:
        spec=lambda wc: _figure_spec([specs.cka_table_path(CFG, wc.model, wc.model)], [f"{wc.model}"], wc.model, "F1",
                                            f"F1: CKA between all layers of {wc.model}"),
    log:
        "results/logs/figures/F1/{model}.log",
    localrule: True
    conda:
        CONDA_ENV
    shell:
        step_shell("figure")


rule figure_f2:
    input:
        lambda wc: specs.cka_table_path(CFG, wc.x, wc.y),
    output:
        report(expand("results/figures/F2/{{x}}__{{y}}.{fmt}", fmt=FORMATS), caption="../report/F2.rst",
               category="F2 cross-model CKA", subcategory="{x} vs {y}"),
    params:
        spec=lambda wc: _figure_spec([specs.cka_table_path(CFG, wc.x, wc.y)], [f"{wc.x} vs {wc.y}"], f"{wc.x}__{wc.y}", "F2",
                                            f"F2: CKA between {wc.x} and {wc.y}"),
    log:
        "results/logs/figures/F2/{x}__{y}.log",
    localrule: True
    conda:
        CONDA_ENV
    shell:
        step_shell("figure")


rule figure_f14:
    input:
        lambda wc: [specs.cka_table_path(CFG, a, b) for a, b in specs.f14_panels(CFG, wc.mixer)],
    output:
        report(expand("results/figures/F14/{{mixer}}.{fmt}", fmt=FORMATS), caption="../report/F14.rst",
               category="F14 MLP-Mixer CKA", subcategory="{mixer}"),
    params:
        spec=lambda wc: _figure_spec(
            [specs.cka_table_path(CFG, a, b) for a, b in specs.f14_panels(CFG, wc.mixer)], [f"{a} vs {b}" for a, b in specs.f14_panels(CFG, wc.mixer)], wc.mixer, "F14",
            f"F14: {wc.mixer} within itself and against ViTs and CNNs"),
    log:
        "results/logs/figures/F14/{mixer}.log",
    localrule: True
    conda:
        CONDA_ENV
    shell:
        step_shell("figure")
