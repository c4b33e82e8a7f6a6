# The registered analyses (seelike.registry): one rule per table and one per figure family,
# generated from the registry. Which model gets which analysis: the `analyses:` and `experiments:`
# config sections; what each computes and draws: its module under scripts/seelike/analyses/. Their
# input and params functions are in rules/common.smk.
#
# The HTML report (workflow/report/workflow.rst is its first page) holds one item per figure: the
# file of the first format in REPORT_FORMATS that figures.formats lists; the other formats stay in
# results/figures. Each figure family is a category named by registry.Figure.category, each item is
# labelled by its model(s). Summary tables (the findings) are items of FINDINGS_CATEGORY, a name
# that sorts before the figures'; the first page shows every table item of the report.
REPORT_FORMATS = ("png", "svg", "pdf")
REPORT_FORMAT = next(f for f in REPORT_FORMATS if f in FORMATS)
FINDINGS_CATEGORY = "Checked findings"


for analysis in registry.with_tables():
    outputs = [
        paths.partial(paths.TABLES[analysis.source], dataset=DATASET, table=t)
        for t in analysis.table_names
    ]

    rule:
        name:
            f"table_{analysis.name}"
        input:
            table_inputs(analysis),
        output:
            (
                [
                    report(
                        o,
                        category=FINDINGS_CATEGORY,
                        labels={"table": t, **(analysis.report_rows or {})},
                    )
                    for o, t in zip(outputs, analysis.table_names)
                ]
                if analysis.source == "summary"
                else outputs
            ),
        log:
            paths.log(outputs[0]),
        wildcard_constraints:
            stem=one_of(registry.stems(CFG, analysis)),
        localrule: seelike_config.runs_on_host(CFG, analysis.step)
        conda:
            CONDA_ENV
        params:
            spec=table_spec(analysis),
        shell:
            step_shell("table")


for figure, analysis in registry.figures():
    pattern = paths.partial(paths.FIGURE, figure=figure.id)
    caption = Path(workflow.basedir, "report", figure.caption)
    if not caption.is_file():
        raise WorkflowError(
            f"seelike: figure {figure.id} of analysis '{analysis.name}' has no caption: write "
            f"{caption} (see workflow/report/F1.rst for the form)"
        )

    rule:
        name:
            f"figure_{figure.id.lower()}"
        input:
            figure_tables(figure.id),
        output:
            [
                (
                    report(
                        paths.partial(pattern, fmt=fmt),
                        caption=str(caption),
                        category=figure.category,
                        labels=lambda wc: {"model": wc.stem.replace("__", " vs ")},
                    )
                    if fmt == REPORT_FORMAT
                    else paths.partial(pattern, fmt=fmt)
                )
                for fmt in FORMATS
            ],
        log:
            paths.log(pattern),
        wildcard_constraints:
            stem=one_of(registry.figure_stems(CFG, figure, analysis)),
        localrule: True
        conda:
            CONDA_ENV
        params:
            spec=figure_spec(figure.id),
        shell:
            step_shell("figure")
