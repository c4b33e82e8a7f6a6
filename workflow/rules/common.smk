# The functions the Snakefile and the rule files share. Snakemake's lint wants functions kept apart
# from rules, in a common module included before the rules; this is it.


def _uses_conda():
    try:
        return any(
            "conda" in str(m).lower()
            for m in workflow.deployment_settings.deployment_method
        )
    except AttributeError:
        return False


def step_shell(step):
    """The shell command of a rule: run the step with its spec; on failure, put the end of its log
    (which names the job id, its log file and its stderr) where Snakemake shows errors.
    """
    return (
        f"{SEELIKE} step {step} --spec {{params.spec:q}} > {{log}} 2>&1 || "
        f"{{{{ echo 'seelike: step {step} failed; end of {{log}}:' >&2; tail -n 40 {{log}} >&2; exit 1; }}}}"
    )


def one_of(names):
    """A wildcard constraint that matches exactly these names (none: matches nothing)."""
    import re

    return "|".join(re.escape(n) for n in names) or "(?!)"


# Params take only wildcards, never `input`/`output`: Snakemake leaves params derived from those
# out of its params rerun trigger, and a changed figure setting must rerun the figure.
def spec_json(spec):
    return json.dumps(spec, sort_keys=True)


# The model step's inputs: the card of the model it starts from, the rendered splits it trains on,
# and local weight files.
def model_inputs(wc):
    recipe = CFG["models"][wc.model].get("recipe") or {}
    init = [paths.card(recipe["init_from"])] if recipe.get("init_from") else []
    return (
        init
        + specs.model_rendered_inputs(CFG, wc.model)
        + specs.model_weight_inputs(CFG, wc.model)
    )


# Input and params functions of the rules generated from seelike.registry (rules/analyses.smk).
def table_inputs(analysis):
    return lambda wc: registry.table_inputs(CFG, analysis, wc.stem)


def table_spec(analysis):
    return lambda wc: spec_json(registry.table_spec(CFG, analysis.name, wc.stem))


def figure_tables(figure_id):
    return lambda wc: registry.figure_spec(CFG, figure_id, wc.stem)["tables"]


def figure_spec(figure_id):
    return lambda wc: spec_json(registry.figure_spec(CFG, figure_id, wc.stem))
