# One job per shard (a job array on SLURM); the manifest lists the validated shards beside it. The pass for
# the CKA Grams (pooled features, logits, full tokens); no vision setting enters its spec.
rule extract:
    input:
        card=paths.CARD,
        plan=paths.PLAN,
        rendered=specs.extract_rendered_inputs(CFG),
    output:
        paths.MANIFEST,
    log:
        paths.log(paths.EXTRACT_DIR),
    wildcard_constraints:
        model=one_of(MODELS),
    conda:
        CONDA_ENV
    params:
        spec=lambda wc: spec_json(specs.extract_spec(CFG, wc.model)),
    shell:
        step_shell("extract")


# The vision pass of a model some vision analysis taps (seelike.registry.extraction_taps): a forward pass of
# its own over the same plan, the same step. A vision setting reruns it, never the Grams above or the CKA.
rule extract_vision:
    input:
        card=paths.CARD,
        plan=paths.PLAN,
        rendered=specs.extract_rendered_inputs(CFG),
    output:
        paths.VISION_MANIFEST,
    log:
        paths.log(paths.VISION_DIR),
    wildcard_constraints:
        model=one_of(registry.vision_models(CFG)),
    conda:
        CONDA_ENV
    params:
        spec=lambda wc: spec_json(specs.vision_extract_spec(CFG, wc.model)),
    shell:
        step_shell("extract")
