"""How ViTs see: the vision analyses (F3-F7, F9 of Raghu et al. 2021 and the ViT paper's views).

Each module computes one tidy table (CSV, written atomically, with a provenance sidecar) and
draws its figure from that table only:

    attention_distance  F3/F4 mean attention distance per head and block
    head_cka            F5 CKA of single attention heads with a CNN's layers vs their distance
    receptive_field     F6 effective receptive fields (gradients; its own step)
    norm_ratio          F7 ||z|| / ||f(z)|| of every residual sublayer
    localization        F9 CKA between input patches and final-layer positions
    embeddings          V1 patch-embedding principal components, V2 position-embedding similarity
    attention_maps      V3 attention maps and rollout, V4 attention similarity across layers
    snn                 V5 soft nearest-neighbour loss per layer

`reducers` holds what extraction computes for them in its single pass over the images,
`settings` the `analyses:` config section (which model gets which analysis), `run` the step
entry points. Importing this package imports nothing heavy.
"""

# analysis -> "module:function" computing its table(s) from a spec
TABLES = {
    "attention_distance": "seelike.analyses.attention_distance:compute",
    "head_cka": "seelike.analyses.head_cka:compute",
    "receptive_field": "seelike.analyses.receptive_field:compute",
    "norm_ratio": "seelike.analyses.norm_ratio:compute",
    "localization": "seelike.analyses.localization:compute",
    "patch_embedding": "seelike.analyses.embeddings:compute_patch_embedding",
    "position_embedding": "seelike.analyses.embeddings:compute_position_embedding",
    "attention_maps": "seelike.analyses.attention_maps:compute",
    "snn_loss": "seelike.analyses.snn:compute",
}

# figure id -> "module:function" drawing it from tables
FIGURES = {
    "F3": "seelike.analyses.attention_distance:figure_f3",
    "F4": "seelike.analyses.attention_distance:figure_f4",
    "F5": "seelike.analyses.head_cka:figure",
    "F6": "seelike.analyses.receptive_field:figure",
    "F7": "seelike.analyses.norm_ratio:figure",
    "F9": "seelike.analyses.localization:figure",
    "V1": "seelike.analyses.embeddings:figure_patch_embedding",
    "V2": "seelike.analyses.embeddings:figure_position_embedding",
    "V3": "seelike.analyses.attention_maps:figure_maps",
    "V4": "seelike.analyses.attention_maps:figure_similarity",
    "V5": "seelike.analyses.snn:figure",
}
