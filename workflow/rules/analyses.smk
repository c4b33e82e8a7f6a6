# The registered analyses (seelike.registry): one rule per table and one per figure family,
# generated from the registry. Which model gets which analysis: the `analyses:` and `experiments:`
# config sections; what each computes and draws: its module under scripts/seelike/analyses/. Their
# input and params functions are in rules/common.smk.


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
            outputs,
        log:
            paths.log(outputs[0]),
        wildcard_constraints:
            stem=one_of(registry.stems(CFG, analysis)),
        localrule: analysis.step is None
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
            report(
                expand(pattern, fmt=FORMATS, allow_missing=True),
                caption=str(caption),
                category=figure.category,
                subcategory="{stem}",
            ),
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
