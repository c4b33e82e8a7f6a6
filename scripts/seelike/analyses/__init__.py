"""The analyses: one module each, registered by the ``ANALYSIS`` it defines (see seelike.registry).

    cka_maps            F1, F2, F14  CKA heatmaps of the CKA tables
    attention_distance  F3, F4       mean attention distance per head and block
    head_cka            F5           CKA of single attention heads with a CNN's layers vs their distance
    receptive_field     F6           effective receptive fields (gradients, in the vision pass)
    norm_ratio          F7           ||z|| / ||f(z)|| of every residual sublayer
    skip_ablation       F8           accuracy and CKA of ViTs trained without the skip at block i
    localization        F9           CKA between input patches and final-layer positions
    gap_vs_cls          F10          F9 of a GAP-trained ViT beside the CLS one
    linear_probes       F11, F13     closed-form linear probes per layer
    data_scale          F12          CKA of subset-trained models with the full-data model
    patch_embedding     V1           principal components of the patch-embedding filters
    position_embedding  V2           cosine similarity of position embeddings
    attention_maps      V3, V4       attention maps and rollout; attention similarity across layers
    snn                 V5           soft nearest-neighbour loss per layer

`reducers` holds what extraction computes for them in its single pass over the images, `common`
the table helpers, `geometry` patch-grid geometry. Importing this package imports nothing heavy.
"""
