"""The vision analyses (F3-F9, ViT views) against known answers and independent float64 references."""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import timm
import torch
from torch import nn

import seelike.models.archs  # noqa: F401  (registers seelike_mixer)
from seelike.analyses import geometry
from seelike.analyses.attention_distance import selected_sums
from seelike.analyses.attention_maps import layer_similarity, rollout
from seelike.analyses.patch_embedding import patch_embedding_conv, principal_components
from seelike.analyses.position_embedding import position_cosine
from seelike.analyses.head_cka import plotted_cnn_layers
from seelike.analyses.localization import localization_cka
from seelike.analyses.receptive_field import choose_layers, receptive_fields
from seelike.analyses.reducers import (AttentionReducer, NormRatioReducer, PositionGramReducer, attention_distances,
                                       layer_grids)
from seelike.analyses.snn import snn_loss
from seelike.extract import attached
from seelike.reducer import Batch
from seelike.models.layers import LayerTaps, enumerate_layers
from seelike.models.residual import NoAttentionError, attention_modules, residual_branches


def _vit(img=(16, 32), patch=(4, 8), depth=2, heads=2, dim=16, **kw):
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=img, patch_size=patch, embed_dim=dim, depth=depth,
                             num_heads=heads, mlp_ratio=2.0, num_classes=3, **kw).eval()


def _centres_reference(grid, cell):
    """Independent: patch centres by explicit loops."""
    return [((r + 0.5) * cell[0], (c + 0.5) * cell[1]) for r in range(grid[0]) for c in range(grid[1])]


def _mean_pairwise_reference(grid, cell):
    pts = _centres_reference(grid, cell)
    total = sum(math.dist(a, b) for a in pts for b in pts)
    return total / len(pts) ** 2


# ----------------------------------------------------------------------------- F3 attention distance

def test_identity_attention_has_distance_zero():
    grid, cell, p = (3, 5), (4.0, 6.0), 1
    n = p + grid[0] * grid[1]
    attn = torch.eye(n).expand(2, 3, n, n)
    d = torch.as_tensor(geometry.pixel_distances(grid, cell))
    ren, raw, prefix = attention_distances(attn, d, p)
    assert torch.all(ren == 0) and torch.all(raw == 0) and torch.all(prefix == 0)


@pytest.mark.parametrize("grid, cell", [((4, 4), (8, 8)), ((3, 5), (4.0, 6.0)), ((14, 14), (16, 16))])
def test_uniform_attention_is_the_mean_pairwise_patch_distance(grid, cell):
    n_sp, p = grid[0] * grid[1], 2     # two prefix tokens (CLS + distillation), left out
    n = p + n_sp
    attn = torch.full((1, 2, n, n), 1.0 / n)
    ren, raw, prefix = attention_distances(attn, torch.as_tensor(geometry.pixel_distances(grid, cell)), p)
    ref = _mean_pairwise_reference(grid, cell)
    np.testing.assert_allclose(ren.numpy(), ref, rtol=1e-5)                # renormalised over the patches
    np.testing.assert_allclose(raw.numpy(), ref * n_sp / n, rtol=1e-5)     # raw: prefix keys carry weight 0
    np.testing.assert_allclose(prefix.numpy(), p / n, rtol=1e-5)


def test_attention_distance_through_a_real_vit_with_rectangular_patches():
    """qkv = 0 makes every attention row uniform over all tokens: the taps, the explicit attention path and
    the reducer must give the independently computed mean pairwise distance of the 4 x 4 grid of 4 x 8 patches."""
    vit = _vit()
    for blk in vit.blocks:
        nn.init.zeros_(blk.attn.qkv.weight)
        nn.init.zeros_(blk.attn.qkv.bias)
    attn = attention_modules(vit, "v")
    assert [a["module"] for a in attn] == ["blocks.0.attn", "blocks.1.attn"]
    layers = enumerate_layers(vit, "vit")
    grids = layer_grids(vit, layers, [3, 16, 32], 1, "cpu")
    (grid, cell) = grids["block1"]
    assert grid == (4, 4) and cell == (4.0, 8.0)
    from seelike.models.residual import patch_geometry

    r = AttentionReducer(attn, 1, lambda n: patch_geometry(vit, n, (16, 32)), [3, 16, 32], shard_offset=0,
                         distances=True, n_maps=1)
    x = torch.randn(4, 3, 16, 32)
    assert vit.blocks[0].attn.fused_attn
    with torch.no_grad(), attached([r], vit):
        assert not vit.blocks[0].attn.fused_attn          # explicit path only while tapping
        r.begin(np.arange(4), np.arange(10, 14))
        vit(x)
        r.update(Batch(0, np.arange(4), np.arange(10, 14), 1, inputs=x))
    assert vit.blocks[0].attn.fused_attn                  # restored
    out = r.result()
    ref = _mean_pairwise_reference((4, 4), (4.0, 8.0))
    units = {b: {k: out[f"reductions/attention_distance/{b}/{k}"]
                 for k in ("minibatch_sums", "minibatch_counts", "per_image", "index")} for b in ("block0", "block1")}
    for b in ("block0", "block1"):
        assert out[f"reductions/attention_distance/{b}/per_image"].shape == (4, 3, 2)   # every image, every head
        np.testing.assert_allclose(out[f"reductions/attention_distance/{b}/per_image"][:, 0], ref, rtol=1e-5)
    for b, (acc, count, _) in selected_sums(units, 0, 3).items():           # n_images: the first 3 of the plan
        assert count == 3
        np.testing.assert_allclose(acc[0] / 3, ref, rtol=1e-5)
        np.testing.assert_allclose(acc[3] / 3, 1 / 17, rtol=1e-4)
    assert out["reductions/attention_maps/weights"].shape == (1, 2, 2, 17, 17)
    np.testing.assert_allclose(out["reductions/attention_maps/weights"], 1 / 17, rtol=1e-5)
    assert out["reductions/attention_maps/example_indices"].tolist() == [10]
    assert out["reductions/geometry/grid"].tolist() == [4, 4] and out["reductions/geometry/cell"].tolist() == [4, 8]


@pytest.mark.parametrize("n_images", [1, 7, 8, 13, 16, 29, 40, 1000])
def test_selected_attention_distances_match_a_float64_reference(n_images):
    """A table's selection of the stored images (whole minibatches from their stored sums, the last one from
    its per-image values) against sums taken directly in float64 over the first n_images images, with
    adversarial values (large offsets, tiny spreads), across two shards of three and two minibatches."""
    rng = np.random.default_rng(n_images)
    heads, counts = 3, [[8, 8, 8], [8, 5]]                   # plan positions 0-23 in shard 0, 24-36 in shard 1
    values = (1e4 + rng.standard_normal((37, 3, heads)) * 1e-3).astype(np.float32)
    values[:, 2] = rng.random((37, heads)).astype(np.float32)
    ref = values[:n_images].astype(np.float64)
    want = np.stack([ref[:, 0].sum(0), (ref[:, 0] ** 2).sum(0), ref[:, 1].sum(0), ref[:, 2].sum(0)])
    got, n, start = 0.0, 0, 0
    for shard in counts:
        v = values[start:start + sum(shard)].astype(np.float64)
        edges = np.cumsum([0] + shard)
        sums = np.stack([np.stack([v[a:b, 0].sum(0), (v[a:b, 0] ** 2).sum(0), v[a:b, 1].sum(0), v[a:b, 2].sum(0)])
                         for a, b in zip(edges[:-1], edges[1:])])
        unit = {"minibatch_sums": sums, "minibatch_counts": np.asarray(shard), "index": 0,
                "per_image": values[start:start + sum(shard)]}
        acc, c, _ = selected_sums({"block0": unit}, start, n_images)["block0"]
        if c:
            got, n = got + acc, n + c
        start += sum(shard)
    assert n == min(n_images, 37)
    np.testing.assert_allclose(got, want, rtol=1e-13)


def test_explicit_attention_tap_matches_the_model():
    vit = _vit(img=32, patch=8)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = vit(x)
        with LayerTaps(vit, [{"name": "w", "module": "blocks.1.attn", "tap": "attn_weights"}]) as taps:
            out = vit(x)
            w = taps.outputs["w"]
        blk = vit.blocks[1]
        z = blk.norm1(vit.blocks[0](vit._pos_embed(vit.patch_embed(x))))
        q, k, _ = blk.attn.qkv(z).reshape(2, 17, 3, 2, 8).permute(2, 0, 3, 1, 4)
        torch.testing.assert_close(w, ((q @ k.transpose(-2, -1)) * 8 ** -0.5).softmax(-1), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)   # the explicit path computes the same
    assert vit.blocks[1].attn.fused_attn


def test_model_without_attention_gets_a_clear_error():
    cnn = timm.create_model("resnet18", num_classes=3).eval()
    with pytest.raises(NoAttentionError, match="model 'my_resnet'.*no attention"):
        attention_modules(cnn, "my_resnet")
    mixer = timm.create_model("seelike_mixer", img_size=16, patch_size=4, embed_dim=16, num_blocks=2)
    with pytest.raises(NoAttentionError, match="'mix'"):
        attention_modules(mixer, "mix")


# ----------------------------------------------------------------------------- F7 norm ratios

class Scale(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c

    def forward(self, x, *args, **kwargs):
        return self.c * x


def _norm_ratios(model, family, x, p):
    r = NormRatioReducer(residual_branches(model, family), p)
    with torch.no_grad(), attached([r], model):
        r.begin(np.arange(len(x)), np.arange(len(x)))
        model(x)
    out = r.result()
    names = [b["name"] for b in r.branches]
    with np.errstate(divide="ignore", invalid="ignore"):   # groups without tokens (no CLS) are 0 / 0
        return {n: out[f"reductions/norm_ratio/{n}/z_norm_sum"] / out[f"reductions/norm_ratio/{n}/f_norm_sum"]
                for n in names}, {n: out[f"reductions/norm_ratio/{n}/ratio_sum"] /
                                  out[f"reductions/norm_ratio/{n}/ratio_count"] for n in names}


def test_norm_ratio_of_scaled_branches_vit():
    """Branches f(z) = c z (norm and attention/MLP replaced by a scaling): ratio 1/c for CLS and spatial tokens."""
    vit = _vit(img=32, patch=8)
    scales = {"block0.attn": 0.5, "block0.mlp": 4.0, "block1.attn": 0.1, "block1.mlp": 2.0}
    for i, blk in enumerate(vit.blocks):
        blk.norm1, blk.norm2 = nn.Identity(), nn.Identity()
        blk.attn, blk.mlp = Scale(scales[f"block{i}.attn"]), Scale(scales[f"block{i}.mlp"])
    br = residual_branches(vit, "vit")
    assert [b["f"]["module"] for b in br] == ["blocks.0.drop_path1", "blocks.0.drop_path2", "blocks.1.drop_path1",
                                                "blocks.1.drop_path2"]   # the branch outputs tapped directly
    ratio, token_ratio = _norm_ratios(vit, "vit", torch.randn(3, 3, 32, 32), 1)
    for name, c in scales.items():
        np.testing.assert_allclose(ratio[name], [1 / c, 1 / c], rtol=1e-5)
        np.testing.assert_allclose(token_ratio[name], [1 / c, 1 / c], rtol=1e-5)


def test_norm_ratio_of_scaled_branches_mixer_and_resnet():
    mixer = timm.create_model("seelike_mixer", img_size=16, patch_size=4, embed_dim=16, num_blocks=2).eval()
    for blk, (c1, c2) in zip(mixer.blocks, [(0.25, 3.0), (1.5, 0.2)]):
        blk.norm1, blk.norm2 = nn.Identity(), nn.Identity()
        blk.mlp_tokens, blk.mlp_channels = Scale(c1), Scale(c2)
    ratio, _ = _norm_ratios(mixer, "mixer", torch.randn(2, 3, 16, 16), 0)   # f = stream after - stream before
    for name, c in [("block0.token_mixing", 0.25), ("block0.channel_mixing", 3.0), ("block1.token_mixing", 1.5),
                    ("block1.channel_mixing", 0.2)]:
        np.testing.assert_allclose(ratio[name][1], 1 / c, rtol=1e-5)
        assert ratio[name][0] == 0 or np.isnan(ratio[name][0])            # no CLS token

    res = timm.create_model("resnet18", num_classes=3).eval()
    unit = res.layer1[0]
    unit.conv1 = unit.bn1 = unit.act1 = unit.conv2 = nn.Identity()
    unit.bn2 = Scale(0.125)     # branch = x / 8; the unit input is a ReLU output, so act2 keeps the sum
    ratio, _ = _norm_ratios(res, "cnn", torch.randn(2, 3, 64, 64), 0)
    np.testing.assert_allclose(ratio["stage0.unit0"][1], 8.0, rtol=1e-5)
    assert residual_branches(res, "cnn")[2]["z"]["module"] == "layer2.0.downsample"   # z: the projected input


# ----------------------------------------------------------------------------- F6 receptive fields

@pytest.mark.parametrize("k, stride", [(3, 1), (5, 1), (3, 2)])
def test_receptive_field_of_one_convolution_is_its_kernel_support(k, stride):
    torch.manual_seed(1)
    conv = nn.Conv2d(2, 4, k, stride=stride, padding=k // 2)
    model = nn.Sequential(conv).eval()
    x = torch.randn(5, 2, 17, 17)
    res = receptive_fields(model, x, [{"name": "conv", "module": "0", "tap": "output", "layout": "nchw"}])
    g, grid, (r, c) = res["conv"]
    assert grid == ((17 + 2 * (k // 2) - k) // stride + 1,) * 2 and (r, c) == (grid[0] // 2, grid[1] // 2)
    w = conv.weight.detach().double().numpy()
    expected = np.zeros((17, 17))
    top, left = r * stride - k // 2, c * stride - k // 2
    for i, j in itertools.product(range(k), range(k)):   # d sum_out y[out, r, c] / d x[in, top+i, left+j]
        if 0 <= top + i < 17 and 0 <= left + j < 17:
            expected[top + i, left + j] = sum(abs(w[:, ch, i, j].sum()) for ch in range(2)) * len(x)
    assert ((g > 0) == (expected > 0)).all()           # exactly the kernel's support
    np.testing.assert_allclose(g, expected, rtol=1e-5, atol=1e-12)


def test_receptive_field_layer_choice():
    names = [f"block{i}" for i in range(12)]
    assert choose_layers(names, "auto") == ["block0", "block4", "block7", "block11"]
    assert choose_layers(names[:2], "auto") == ["block0", "block1"]
    assert choose_layers(names, "all") == names
    with pytest.raises(ValueError, match="analyses.receptive_field.layers: nope"):
        choose_layers(names, ["nope"])


# ----------------------------------------------------------------------------- F9 localization

def test_patches_passed_through_unchanged_give_a_diagonal_localization_map():
    """A 'model' whose final tokens are its input patches: CKA(p, p) = 1 and the other positions near 0."""
    grid, cell, b, m = (3, 3), (4, 4), 32, 4
    torch.manual_seed(2)
    positions = geometry.cells_from_fractions([[0, 0], [0.5, 0.5], [1, 1], [0, 1]], grid)
    assert positions == [(0, 0), (1, 1), (2, 2), (0, 2)]
    r = PositionGramReducer("final", 0, grid, cell, (12, 12), positions, n_images=10_000, shard_offset=0,
                            num_prefix_tokens=1)
    for mb in range(m):
        x = torch.rand(b, 3, 12, 12)
        patches = x.unfold(2, 4, 4).unfold(3, 4, 4).permute(0, 2, 3, 1, 4, 5).reshape(b, 9, 48)
        tokens = torch.cat([torch.randn(b, 1, 48), patches], 1)          # a CLS token, then the patches
        pos = np.arange(mb * b, (mb + 1) * b)
        r.begin(pos, np.arange(b))
        r.consume("final", tokens)
        r.update(Batch(mb, pos, np.arange(b), 1, inputs=x))
    out = r.result()
    assert out["layers/final/positions/gram"].shape == (m, 9, b, b)
    cka, se, status, n = localization_cka(out["reductions/localization/input/gram"], out["layers/final/positions/gram"])
    assert n == m and (status == "ok").all()
    for i, (pr, pc) in enumerate(positions):
        q = pr * grid[1] + pc
        np.testing.assert_allclose(cka[i, q], 1.0, atol=1e-9)
        assert np.abs(np.delete(cka[i], q)).max() < 0.15


def test_cells_and_bounds():
    assert geometry.cells_from_fractions([[0.1, 0.1], [0.1, 0.9], [0.5, 0.5]], (2, 2)) == [(0, 0), (0, 1), (1, 1)]
    rows, cols = geometry.cell_bounds((7, 7), (32 / 7, 32 / 7), (32, 32))
    assert rows[0] == 0 and rows[-1] == 32 and np.all(np.diff(rows) > 0)
    np.testing.assert_allclose(geometry.patch_centres((2, 3), (4, 2)),
                               np.array(_centres_reference((2, 3), (4, 2))))


# ----------------------------------------------------------------------------- ViT paper's views

def test_patch_embedding_components_of_known_filters():
    """Filters a_i u + b_i v with u, v orthonormal, a, b orthogonal zero-mean: PC1 = u, PC2 = v, variance 0.8 / 0.2."""
    vit = _vit(img=32, patch=8, dim=32)
    conv = patch_embedding_conv(vit, "v")
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((3 * 64, 2)))
    u, v = q[:, 0], q[:, 1]
    a = np.tile([2.0, -2.0], 16)                       # zero mean, |a|^2 = 128
    bb = np.tile([1.0, 1.0, -1.0, -1.0], 8)             # zero mean, orthogonal to a, |b|^2 = 32
    w = np.outer(a, u) + np.outer(bb, v) + 0.3         # plus a constant filter offset (removed by centring)
    with torch.no_grad():
        conv.weight.copy_(torch.as_tensor(w.reshape(32, 3, 8, 8)))
    comps, ratio = principal_components(conv.weight.detach().numpy(), 5)
    np.testing.assert_allclose(ratio[:2], [0.8, 0.2], atol=1e-6)
    np.testing.assert_allclose(ratio[2:], 0, atol=1e-6)
    np.testing.assert_allclose(np.abs(comps[0].ravel() @ u), 1, atol=1e-6)
    np.testing.assert_allclose(np.abs(comps[1].ravel() @ v), 1, atol=1e-6)


def test_position_cosine_rollout_similarity_snn():
    e = np.eye(4)[:, :3] * 2.0
    np.testing.assert_allclose(position_cosine(np.concatenate([np.eye(3) * 5, [[1, 1, 0]]])),
                               position_cosine(np.concatenate([np.eye(3), [[1, 1, 0]]])))
    np.testing.assert_allclose(position_cosine(e)[:3, :3], np.eye(3))
    # rollout of identity attention is the identity; identical layers have similarity 1
    eye = np.broadcast_to(np.eye(5), (3, 2, 5, 5))
    np.testing.assert_allclose(rollout(eye)[-1], np.eye(5))
    w = np.random.default_rng(0).random((2, 3, 2, 5, 5))
    w[:, 1] = w[:, 0]
    sim = layer_similarity(w)
    assert sim.shape == (3, 3) and abs(sim[0, 1] - 1) < 1e-12 and sim[0, 2] < 1
    # rollout of one layer: 0.5 A + 0.5 I, row-normalised
    a = np.random.default_rng(1).random((1, 2, 4, 4))
    a /= a.sum(-1, keepdims=True)
    np.testing.assert_allclose(rollout(a)[0], 0.5 * a[0].mean(0) + 0.5 * np.eye(4))
    # soft nearest neighbour: far-apart classes -> ~0; identical points -> -log(same / others)
    x = np.repeat(np.array([[0.0], [100.0]]), 4, axis=0)
    y = np.repeat([0, 1], 4)
    loss, n = snn_loss(x + 0.01 * np.arange(8)[:, None], y, [1.0])
    assert n == 8 and loss[0] / n < 1e-6
    loss, n = snn_loss(np.zeros((8, 2)), y, [1.0])
    np.testing.assert_allclose(loss[0] / n, -math.log(3 / 7))


def test_head_cka_layers_plotted():
    layers = [f"stage{s}.unit{u}" for s in range(4) for u in range(2)]
    assert plotted_cnn_layers(layers, "auto") == ["stage0.unit0", "stage0.unit1"]
    with pytest.raises(ValueError, match="cnn_layers"):
        plotted_cnn_layers(layers, ["x"])


# ----------------------------------------------------------------------------- config

def _cfg():
    """The tiny test config plus a second ViT trained on less data, every analysis on with its defaults."""
    import copy

    from conftest import tiny_config

    cfg = tiny_config()
    cfg["models"]["vit_small_data"] = copy.deepcopy(cfg["models"]["vit"])
    cfg["analyses"] = {a: {} for a in ("attention_distance", "head_cka", "receptive_field", "norm_ratio",
                                       "localization", "patch_embedding", "position_embedding", "attention_maps",
                                       "snn_loss")}
    cfg["analyses"]["attention_distance"]["less_data"] = ["vit_small_data"]
    return cfg


def test_analyses_config_selection_taps_and_errors():
    from seelike import config as sc
    from seelike import registry, specs
    from seelike.analyses import head_cka

    def vision_targets(c):   # the figures of the vision analyses (F3-F7, F9, V1-V5)
        return [t for t in specs.final_targets(c) if t.split("/")[2] in
                {"F3", "F4", "F5", "F6", "F7", "F9", "V1", "V2", "V3", "V4", "V5"}]

    cfg = sc.load(_cfg())
    assert registry.models_for(cfg, "attention_distance") == ["vit", "vit_small_data"]
    assert registry.models_for(cfg, "norm_ratio") == ["vit", "resnet", "mixer", "vit_small_data"]
    assert registry.models_for(cfg, "patch_embedding") == ["vit", "mixer", "vit_small_data"]
    assert head_cka.pairs(cfg) == [("vit", "resnet"), ("vit_small_data", "resnet")]
    taps = specs.vision_extract_spec(cfg, "vit")["taps"]
    assert set(taps) == {"attention_distance", "attention_maps", "heads", "norm_ratio", "localization", "receptive_field"}
    assert taps["attention_distance"] == {}          # every image is stored; the table selects
    assert registry.table_spec(cfg, "attention_distance", "vit")["n_images"] == 64   # 5000 capped at n_examples
    assert set(specs.vision_extract_spec(cfg, "resnet")["taps"]) == {"norm_ratio", "localization", "receptive_field"}
    # the Grams' pass carries no vision setting at all
    assert "taps" not in specs.extract_spec(cfg, "vit") and "n_images" not in json.dumps(specs.extract_spec(cfg, "vit"))
    assert registry.vision_models(cfg) == ["vit", "resnet", "mixer", "vit_small_data"]
    assert "results/figures/F4/synth.png" in vision_targets(cfg)
    # no `analyses` section: no taps, no vision pass, no vision targets
    bare = _cfg()
    del bare["analyses"]
    bare = sc.load(bare)
    assert registry.vision_models(bare) == [] and vision_targets(bare) == []
    # switched off
    off = _cfg()
    off["analyses"]["norm_ratio"] = {"enabled": False}
    assert "norm_ratio" not in specs.vision_extract_spec(sc.load(off), "vit")["taps"]

    def bad(mutate, key, *words):
        c = _cfg()
        mutate(c["analyses"])
        with pytest.raises(sc.ConfigError) as e:
            sc.load(c)
        assert f"config key {key}" in str(e.value) and all(w in str(e.value) for w in words), str(e.value)

    bad(lambda a: a["attention_distance"].update(models=["resnet"]), "analyses.attention_distance.models[0]",
        "'resnet' is a cnn model", "ViT")
    bad(lambda a: a["attention_distance"].update(less_data=["nope"]), "analyses.attention_distance.less_data[0]",
        "unknown model 'nope'")
    bad(lambda a: a["head_cka"].update(cnn="mixer"), "analyses.head_cka.cnn", "not a CNN")
    bad(lambda a: a["localization"].update(positions=[[0.5, 2.0]]), "analyses.localization.positions.0.1")
    bad(lambda a: a.update(attention_distanse={}), "analyses", "did you mean 'attention_distance'")


def test_per_head_grams_give_the_cka_of_the_heads_outputs():
    """Per-head Grams from the head_outputs taps, combined with another model's Grams, equal the minibatch CKA
    of the heads' outputs computed independently (attention weights x values, by hand, float64)."""
    from seelike.analyses.reducers import HeadGramReducer
    from seelike.cka import cka_all_pairs_from_features, cka_from_minibatch_hsic, gram, hsic_all_pairs

    vit = _vit(img=32, patch=8)
    attn = attention_modules(vit, "v")[:1]
    r = HeadGramReducer(attn)
    b, m = 12, 3
    xs = [torch.randn(b, 3, 32, 32) for _ in range(m)]
    other = [torch.randn(b, 5, 7) for _ in range(m)]           # "a CNN layer" of the same examples
    with torch.no_grad(), attached([r], vit):
        for x in xs:
            vit(x)
    grams = r.result()["reductions/heads/block0/gram"]         # (m, heads, b, b)
    hsic = [hsic_all_pairs(np.concatenate([g, gram(o).numpy()[None]])) for g, o in zip(grams, other)]
    res = cka_from_minibatch_hsic(np.stack(hsic))
    heads = []
    with torch.no_grad():
        for x in xs:
            blk = vit.blocks[0]
            z = blk.norm1(vit._pos_embed(vit.patch_embed(x))).double()
            w, bias = blk.attn.qkv.weight.double(), blk.attn.qkv.bias.double()
            q, k, v = (z @ w.T + bias).reshape(b, 17, 3, 2, 8).permute(2, 0, 3, 1, 4)
            a = ((q @ k.transpose(-2, -1)) * 8 ** -0.5).softmax(-1)
            heads.append((a @ v).permute(1, 0, 2, 3))           # (heads, b, t, hd)
    feats = [torch.cat([h[i] for h in heads]) for i in range(2)] + [torch.cat(other).double()]
    ref = cka_all_pairs_from_features(feats, minibatch_size=b, center=False)
    np.testing.assert_allclose(res.cka, ref.cka, atol=1e-6)


def test_per_head_grams_are_float32_products_inside_the_forwards_autocast():
    """The head reducer runs in a forward hook, inside extraction's autocast: its Grams must still be
    float32 products (bf16 ones are ~1e-3 off), as for every other Gram."""
    from seelike.analyses.reducers import HEADS, HeadGramReducer

    vit = _vit(img=32, patch=8)
    attn = attention_modules(vit, "v")[:1]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 17, 2, 8, generator=g) + 0.5               # (b, t, heads, head_dim)
    outside, inside = HeadGramReducer(attn), HeadGramReducer(attn)
    outside._consume(attn[0]["name"], "head_outputs", x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside._consume(attn[0]["name"], "head_outputs", x)
    want = np.einsum("bthd,cthd->hbc", x.double().numpy(), x.double().numpy())
    for r in (outside, inside):
        got = r.result()[f"{HEADS}/{attn[0]['name']}/gram"][0]
        assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()


def test_norm_ratio_refuses_a_stream_modified_in_place():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1, self.norm2, self.mlp = nn.Identity(), nn.Identity(), Scale(2.0)

        def forward(self, x):
            s = x + 0.5 * x
            x.mul_(3.0)                      # modifies the stream the skip connection carried into s
            return s + self.mlp(self.norm2(s))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.Sequential(Block(), Block())

        def forward(self, x):
            return self.blocks(x)

    net = Net()
    branches = residual_branches(net, "mixer")
    assert "sum" in branches[0]                      # no branch modules of its own: f = sum - z
    r = NormRatioReducer(branches, 0)
    with torch.no_grad(), attached([r], net), pytest.raises(RuntimeError, match="modified in place"):
        r.begin(np.arange(2), np.arange(2))
        net(torch.randn(2, 4, 3))


@pytest.mark.parametrize("arch, kwargs, size, expect_layer", [
    ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=3),
     32, "block1"),
    ("resnet18", dict(num_classes=3, channels=[8, 16, 32, 64]), 32, "stage2.unit1"),   # final map 1x1 -> 2x2 layer
])
def test_all_taps_leave_the_outputs_unchanged(arch, kwargs, size, expect_layer):
    from seelike.analyses.reducers import vision_reducers
    from seelike.extract import GramReducer, LayerStream
    from seelike.models.card import ModelCard
    from seelike.models.layers import detect_family

    torch.manual_seed(0)
    model = timm.create_model(arch, **kwargs).eval()
    family = detect_family(model)
    layers = enumerate_layers(model, family)
    card = ModelCard(name="m", arch=arch, kwargs={}, family=family, source={"kind": "recipe"},
                     checkpoint="w.safetensors", sha256="0" * 64, layers=layers,
                     num_prefix_tokens=int(getattr(model, "num_prefix_tokens", 0) or 0),
                     input_size=[3, size, size], num_classes=3, pretrained_cfg={})
    taps = {"norm_ratio": {}, "localization": {"positions": [[0, 0], [1, 1]], "n_images": 100, "layer": None}}
    if family == "vit":
        taps.update(attention_distance={"n_images": 100}, attention_maps={"n_images": 2}, heads={"blocks": 1})
    x = torch.randn(2, 8, 3, size, size)
    names = [l["name"] for l in layers]
    with torch.no_grad():
        ref = [model(xb) for xb in x]
    reducers = [GramReducer(names)] + vision_reducers(taps, model=model, card=card, model_name="m", layer_specs=layers,
                                                      shard_offset=0, device="cpu")
    stream = LayerStream(names, reducers)
    with LayerTaps(model, layers, card.num_prefix_tokens, consume=stream), attached(reducers, model), torch.no_grad():
        for mb, xb in enumerate(x):
            idx = np.arange(mb * 8, mb * 8 + 8)
            for r in reducers:
                r.begin(idx, idx)
            stream.begin(idx)
            out = model(xb)
            stream.end()
            torch.testing.assert_close(out, ref[mb], rtol=0, atol=1e-5)
            for r in reducers:
                r.update(Batch(mb, idx, idx, card.num_prefix_tokens, inputs=xb))
    arrays = {k: v for r in reducers for k, v in r.result().items()}
    assert int(arrays["reductions/localization/layer_index"]) == names.index(expect_layer)
    assert arrays[f"layers/{expect_layer}/positions/gram"].shape[:2] == (2, int(np.prod(arrays["reductions/localization/grid"])))
    assert all(np.isfinite(v).all() for v in arrays.values() if v.dtype.kind == "f")
    with torch.no_grad():   # every hook removed, fused attention restored
        torch.testing.assert_close(model(x[0]), ref[0], rtol=0, atol=1e-5)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(getattr(m, "fused_attn", True) for m in model.modules())


@pytest.mark.parametrize("name, grid, cell", [
    ("vit_tiny_r_s16_p8_224", (2, 2), (32.0, 32.0)),   # backbone /4, then 8x8 patches of its feature map
    ("vit_small_r26_s32_224", (2, 2), (32.0, 32.0)),   # backbone /32, then 1x1 patches
    ("vit_tiny_patch16_224", (4, 4), (16.0, 16.0)),
])
def test_patch_geometry_is_in_input_pixels_for_hybrids(name, grid, cell):
    """A hybrid's patch embedding strides over the backbone's feature map: attention distances (F3/F4)
    and localization cells (F9) need its patches in input pixels."""
    import timm
    from seelike.models.residual import patch_geometry

    model = timm.create_model(name, pretrained=False, img_size=64, num_classes=10)
    assert patch_geometry(model, grid[0] * grid[1], (64, 64)) == (grid, cell)
    assert grid[0] * cell[0] == 64
