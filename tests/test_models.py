"""Model registry: cards, checkpoints, hub cache, layer enumeration and taps (tiny real timm models)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # these tests never reach the network

import json
from pathlib import Path

import numpy as np
import pytest
import torch

timm = pytest.importorskip("timm")

from seelike import fileio  # noqa: E402
from seelike.models import (CardError, ChecksumError, HubError, LayerTaps, ModelCard,  # noqa: E402
                            WeightsFileError, arch_family, build_model, check_timm_arch, detect_family, enumerate_layers,
                            fetch_from_hub, import_local_weights, make_card, register_tap_kind, save_checkpoint)
from seelike.models import build as build_mod  # noqa: E402

VIT_KW = dict(img_size=32, patch_size=8, depth=3, embed_dim=48, num_heads=3, num_classes=10)
MIXER_KW = dict(img_size=32, num_classes=10)  # mixer_s16_224 fixes patch_size/num_blocks: 2x2 tokens, 8 blocks


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)


def _seed(s=0):
    torch.manual_seed(s)


@pytest.fixture(scope="module")
def vit():
    _seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **VIT_KW).eval()


@pytest.fixture(scope="module")
def resnet18():
    _seed(1)
    return timm.create_model("resnet18", pretrained=False, num_classes=10).eval()


@pytest.fixture(scope="module")
def resnet26():
    _seed(2)
    return timm.create_model("resnet26", pretrained=False, num_classes=10).eval()


@pytest.fixture(scope="module")
def resnetv2():
    _seed(3)
    return timm.create_model("resnetv2_50x1_bit", pretrained=False, num_classes=10).eval()


@pytest.fixture(scope="module")
def mixer():
    _seed(4)
    return timm.create_model("mixer_s16_224", pretrained=False, **MIXER_KW).eval()


def _img(n=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g)


def _n_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# ----------------------------------------------------------------------------- fileio

def test_atomic_write_success_and_failure(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with fileio.atomic_write(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_text("hello")
        assert not target.exists()
    assert target.read_text() == "hello"
    with pytest.raises(RuntimeError):
        with fileio.atomic_write(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "hello"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]  # temp removed


def test_cpu_budget_follows_the_jobs_threads(monkeypatch):
    allowed = len(os.sched_getaffinity(0))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert fileio.cpu_budget() == allowed
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert fileio.cpu_budget() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", str(allowed + 5))   # never more than the CPUs it may use
    assert fileio.cpu_budget() == allowed
    monkeypatch.setenv("OMP_NUM_THREADS", "junk")
    assert fileio.cpu_budget() == allowed


def test_sha256_and_json(tmp_path, monkeypatch):
    import hashlib
    p = tmp_path / "x.bin"
    p.write_bytes(b"abc" * 1000)
    assert fileio.sha256_file(p) == hashlib.sha256(b"abc" * 1000).hexdigest()
    # several files at once, in order, whatever the number of threads (sizes straddle the 1 MiB chunk)
    blobs = [os.urandom(n) for n in (0, 1, (1 << 20) - 1, (1 << 20) + 7, 3 << 20)]
    paths = []
    for i, blob in enumerate(blobs):
        paths.append(tmp_path / f"f{i}.bin")
        paths[-1].write_bytes(blob)
    want = [hashlib.sha256(b).hexdigest() for b in blobs]
    for workers in (1, 2, 7, None):
        assert fileio.sha256_files(paths, workers=workers) == want
    assert fileio.sha256_files([]) == []
    # the mapped file hashed slice by slice, slices that do not divide it included
    monkeypatch.setattr(fileio, "_HASH_SLICE", 4099)
    assert [fileio.sha256_file(p) for p in paths] == want
    with pytest.raises(FileNotFoundError):
        fileio.sha256_files(paths + [tmp_path / "missing.bin"], workers=2)
    fileio.write_json_atomic(tmp_path / "a.json", {"t": (1, 2), "p": tmp_path})
    assert json.loads((tmp_path / "a.json").read_text()) == {"t": [1, 2], "p": str(tmp_path)}
    with pytest.raises(ValueError, match="b.json"):
        fileio.write_json_atomic(tmp_path / "b.json", {"x": float("nan")})
    assert not (tmp_path / "b.json").exists()
    fileio.write_json_atomic(tmp_path / "c.json", {"x": [float("nan"), np.float32("-inf"), np.float64(0.5), 2.0]},
                             nan_as_null=True)
    assert json.loads((tmp_path / "c.json").read_text()) == {"x": [None, None, 0.5, 2.0]}

    class Bad(ValueError):
        pass

    assert fileio.read_json(tmp_path / "a.json", "thing") == {"t": [1, 2], "p": str(tmp_path)}
    with pytest.raises(Bad, match=r"^thing '.*nope\.json' does not exist; do this$"):
        fileio.read_json(tmp_path / "nope.json", "thing", "do this", Bad)
    with pytest.raises(ValueError, match=r"^it is gone$"):
        fileio.read_json(tmp_path / "nope.json", "thing", missing="it is gone")
    (tmp_path / "cut.json").write_text('{"x": [1, 2')
    with pytest.raises(ValueError, match=r"thing '.*cut\.json' is not valid JSON \(.*\); it is corrupt or was cut short; do this$"):
        fileio.read_json(tmp_path / "cut.json", "thing", "do this")
    (tmp_path / "latin.json").write_bytes(b'{"x": "\xe9"}')
    with pytest.raises(ValueError, match=r"thing '.*latin\.json' cannot be read \(.*utf-8"):
        fileio.read_json(tmp_path / "latin.json", "thing")
    with pytest.raises(ValueError, match="cannot be read"):
        fileio.read_json(tmp_path, "thing")                      # a folder


# ----------------------------------------------------------------------------- families and layers

def test_detect_family(vit, resnet18, resnet26, resnetv2, mixer):
    assert detect_family(vit) == "vit"
    assert detect_family(resnet18) == "cnn"
    assert detect_family(resnet26) == "cnn"
    assert detect_family(resnetv2) == "cnn"
    assert detect_family(mixer) == "mixer"
    assert detect_family(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))) == "other"


DEMO_VIT_KW = dict(img_size=32, patch_size=8, embed_dim=96, depth=6, num_heads=3, mlp_ratio=2.0, num_classes=10)


@pytest.mark.parametrize("arch, kwargs, family", [
    ("vit_tiny_patch16_224", DEMO_VIT_KW, "vit"),
    ("vit_tiny_patch16_224", dict(DEMO_VIT_KW, global_pool="avg", class_token=False), "vit"),
    ("resnet18", {"num_classes": 10, "channels": [32, 64, 128, 256]}, "cnn"),
    ("seelike_mixer", {"img_size": 32, "patch_size": 8, "embed_dim": 96, "num_blocks": 6,
                       "mlp_ratio": [0.5, 2.0], "num_classes": 10}, "mixer"),
    ("vit_base_patch32_224", None, "vit"),
    ("vit_base_patch32_224.augreg_in21k", {}, "vit"),
    ("resnetv2_50x1_bit", None, "cnn"),
    ("mixer_b16_224", None, "mixer"),
    ("swin_tiny_patch4_window7_224", None, "vit"),
])
def test_arch_family_is_the_built_models_family(arch, kwargs, family):
    """arch_family builds on the meta device (no weights) and classifies with detect_family: the
    family the model card records, for seelike's own registered archs and tagged names too."""
    assert arch_family(arch, kwargs) == family


def test_arch_family_matches_detect_family_on_a_real_build_and_is_cached(monkeypatch):
    kw = dict(DEMO_VIT_KW, depth=2)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **kw)
    builds = []
    create = build_mod.create_timm_model
    monkeypatch.setattr(build_mod, "create_timm_model", lambda *a, **k: builds.append(a) or create(*a, **k))
    assert arch_family("vit_tiny_patch16_224", kw) == detect_family(model) == "vit"
    assert arch_family("vit_tiny_patch16_224", dict(reversed(list(kw.items())))) == "vit"   # key order ignored
    assert len(builds) == 1


def test_arch_family_rejects_unknown_archs_and_kwargs():
    with pytest.raises(ValueError, match="unknown timm architecture"):
        arch_family("vit_tinyy_patch16_224")
    with pytest.raises(ValueError, match="rejected the kwargs"):
        arch_family("resnet18", {"no_such_kwarg": 1})


def test_enumerate_layers(vit, resnet18, resnet26, resnetv2, mixer):
    names = [layer["name"] for layer in enumerate_layers(vit, "vit")]
    assert names == ["block0", "block1", "block2"]
    assert [layer["module"] for layer in enumerate_layers(vit, "vit")] == ["blocks.0", "blocks.1", "blocks.2"]
    sub = enumerate_layers(vit, "vit", sublayers=True)
    assert [layer["name"] for layer in sub] == ["block0.attn", "block0.mlp", "block1.attn", "block1.mlp",
                                                "block2.attn", "block2.mlp"]
    assert sub[0]["module"] == "blocks.0.norm2" and sub[0]["tap"] == "input"
    assert sub[1]["module"] == "blocks.0" and sub[1]["tap"] == "output"

    r18 = enumerate_layers(resnet18, "cnn")
    assert [layer["name"] for layer in r18] == [f"stage{s}.unit{u}" for s in range(4) for u in range(2)]
    assert r18[0]["module"] == "layer1.0" and r18[-1]["module"] == "layer4.1"
    assert len(enumerate_layers(resnet26, "cnn")) == 8  # bottleneck [2, 2, 2, 2]
    v2 = enumerate_layers(resnetv2, "cnn")
    assert len(v2) == 16  # [3, 4, 6, 3]
    assert v2[0]["module"] == "stages.0.blocks.0" and v2[-1]["name"] == "stage3.unit2"

    mx = enumerate_layers(mixer, "mixer")
    assert [layer["name"] for layer in mx] == [f"block{i}" for i in range(8)]
    assert [layer["name"] for layer in enumerate_layers(mixer, "mixer", sublayers=True)][:2] == [
        "block0.token_mixing", "block0.channel_mixing"]


def test_enumerate_layers_explicit_and_fallback(vit):
    layers = enumerate_layers(vit, "vit", spec=["blocks.0", "blocks.2.attn"])
    assert [layer["module"] for layer in layers] == ["blocks.0", "blocks.2.attn"]
    layers = enumerate_layers(vit, "vit", spec={"regex": r"blocks\.\d+\.mlp"})
    assert [layer["name"] for layer in layers] == ["blocks.0.mlp", "blocks.1.mlp", "blocks.2.mlp"]
    with pytest.raises(ValueError, match="blocks.9"):
        enumerate_layers(vit, "vit", spec=["blocks.9"])
    with pytest.raises(ValueError, match="matches no module"):
        enumerate_layers(vit, "vit", spec={"regex": "nothing_here"})
    seq = torch.nn.Sequential(torch.nn.Linear(4, 4))
    seq.body = torch.nn.ModuleList([torch.nn.Linear(4, 4) for _ in range(3)])
    assert [layer["module"] for layer in enumerate_layers(seq, "other")] == ["body.0", "body.1", "body.2"]
    with pytest.raises(ValueError, match="layers:"):
        enumerate_layers(torch.nn.Linear(3, 3), "other")


# ----------------------------------------------------------------------------- taps

def _vit_tokens(vit, x):
    x = vit.patch_embed(x)
    x = vit._pos_embed(x)
    x = vit.patch_drop(x)
    return vit.norm_pre(x)


def test_taps_vit_blocks_and_sublayers(vit):
    x = _img()
    layers = enumerate_layers(vit, "vit") + enumerate_layers(vit, "vit", sublayers=True)[0::2]
    with torch.no_grad(), LayerTaps(vit, layers, vit.num_prefix_tokens) as taps:
        vit(x)
        out = taps.outputs
        assert list(out) == [layer["name"] for layer in layers]
        h = _vit_tokens(vit, x)
        for i, blk in enumerate(vit.blocks):
            after_attn = h + blk.attn(blk.norm1(h))  # residual stream after the attention add
            h = blk(h)
            torch.testing.assert_close(out[f"block{i}.attn"], after_attn)
            torch.testing.assert_close(out[f"block{i}"], h)
            assert out[f"block{i}"].shape == (2, 1 + 16, 48)
            assert not out[f"block{i}"].requires_grad
        prefix, spatial = taps.split_prefix(out["block0"])
        assert prefix.shape == (2, 1, 48) and spatial.shape == (2, 16, 48)
        taps.clear()
        assert not taps.outputs and taps.missing() == [layer["name"] for layer in layers]
    assert _n_hooks(vit) == 0


def test_taps_attention_weights_and_heads(vit):
    x = _img()
    assert vit.blocks[0].attn.fused_attn in (True, False)  # timm 1.0 fuses by default: weights not materialised
    layers = [{"name": "w1", "module": "blocks.1.attn", "tap": "attn_weights"},
              {"name": "h1", "module": "blocks.1.attn", "tap": "head_outputs"}]
    with torch.no_grad(), LayerTaps(vit, layers) as taps:
        vit(x)
        w, heads = taps.outputs["w1"], taps.outputs["h1"]
        blk = vit.blocks[1]
        z = blk.norm1(vit.blocks[0](_vit_tokens(vit, x)))
        assert w.shape == (2, 3, 17, 17) and heads.shape == (2, 17, 3, 16)
        torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, 17))
        v = blk.attn.qkv(z).reshape(2, 17, 3, 3, 16).permute(2, 0, 3, 1, 4)[2]
        torch.testing.assert_close((w @ v).transpose(1, 2), heads, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(blk.attn.proj(heads.reshape(2, 17, 48)), blk.attn(z), atol=1e-5, rtol=1e-5)
    assert _n_hooks(vit) == 0


def test_taps_cnn_token_layout(resnet18, resnetv2):
    x = _img(seed=1)
    layers = enumerate_layers(resnet18, "cnn")
    with torch.no_grad(), LayerTaps(resnet18, layers, 0) as taps:
        resnet18(x)
        out = taps.outputs
        h = resnet18.maxpool(resnet18.act1(resnet18.bn1(resnet18.conv1(x))))
        for s in range(4):
            for u, unit in enumerate(getattr(resnet18, f"layer{s + 1}")):
                h = unit(h)
                n, c, hh, ww = h.shape
                tok = out[f"stage{s}.unit{u}"]
                assert tok.shape == (n, hh * ww, c)
                torch.testing.assert_close(tok, h.flatten(2).transpose(1, 2))
                pos = min(hh * ww - 1, ww + 1)  # row-major: (row 1, col 1)
                torch.testing.assert_close(tok[:, pos, :], h[:, :, pos // ww, pos % ww])
    assert _n_hooks(resnet18) == 0

    layers = enumerate_layers(resnetv2, "cnn")[:4]
    with torch.no_grad(), LayerTaps(resnetv2, layers, 0) as taps:
        resnetv2(x)
        h = resnetv2.stem(x)
        for u in range(3):
            h = resnetv2.stages[0].blocks[u](h)
            torch.testing.assert_close(taps.outputs[f"stage0.unit{u}"], h.flatten(2).transpose(1, 2))
        assert taps.outputs["stage1.unit0"].shape[1:] == (4 * 4, 512)
    assert _n_hooks(resnetv2) == 0


def test_taps_mixer(mixer):
    x = _img(seed=2)
    layers = enumerate_layers(mixer, "mixer", sublayers=True)
    with torch.no_grad(), LayerTaps(mixer, layers, 0) as taps:
        mixer(x)
        h = mixer.stem(x)
        for i, blk in enumerate(mixer.blocks):
            tm = h + blk.mlp_tokens(blk.norm1(h).transpose(1, 2)).transpose(1, 2)
            h = blk(h)
            torch.testing.assert_close(taps.outputs[f"block{i}.token_mixing"], tm)
            torch.testing.assert_close(taps.outputs[f"block{i}.channel_mixing"], h)
        assert h.shape == (2, 4, 512)


def test_taps_removed_on_error_and_registry(vit):
    layers = enumerate_layers(vit, "vit")
    with pytest.raises(RuntimeError, match="boom"):
        with LayerTaps(vit, layers):
            assert _n_hooks(vit) == 3
            raise RuntimeError("boom")
    assert _n_hooks(vit) == 0
    with pytest.raises(ValueError, match="unknown tap"):
        LayerTaps(vit, [{"name": "a", "module": "blocks.0", "tap": "nope"}])

    @register_tap_kind("test_norm")
    def _norm(taps, layer, module):
        return [module.register_forward_hook(lambda m, a, o: taps.store(layer, o.norm(dim=-1)))]

    with torch.no_grad(), LayerTaps(vit, [{"name": "n0", "module": "blocks.0", "tap": "test_norm"}]) as taps:
        vit(_img())
        assert taps.outputs["n0"].shape == (2, 17)
    assert _n_hooks(vit) == 0


# ----------------------------------------------------------------------------- cards and checkpoints

def _registered(tmp_path, model, arch, kwargs, name="m", **mk):
    d = tmp_path / name
    ckpt = save_checkpoint(model, d / "weights.safetensors")
    card = make_card(name, arch, kwargs, {"kind": "recipe", "recipe": "test"}, model, ckpt, **mk)
    card.save(d / "card.json")
    return card, d


def test_card_round_trip_and_build(tmp_path, vit):
    card, d = _registered(tmp_path, vit, "vit_tiny_patch16_224", VIT_KW, sublayers=True,
                          metrics={"test_accuracy": 0.5})
    assert card.family == "vit" and card.num_prefix_tokens == 1 and card.input_size == [3, 32, 32]
    assert card.num_classes == 10 and card.pretrained_cfg["input_size"] == [3, 32, 32]
    assert card.layers[0]["name"] == "block0.attn" and card.checkpoint == "weights.safetensors"
    loaded = ModelCard.load(d / "card.json")
    assert loaded == card
    assert ModelCard.load(d) == card
    model = build_model(loaded, d)
    assert not model.training
    for (k, a), (k2, b) in zip(vit.state_dict().items(), model.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    x = _img()
    with torch.no_grad():
        torch.testing.assert_close(model(x), vit(x))
    cfg = timm.data.resolve_data_config({}, pretrained_cfg=loaded.pretrained_cfg)
    assert tuple(cfg["input_size"]) == (3, 32, 32)


def test_build_skips_random_init_only_where_the_checkpoint_supplies_every_tensor(tmp_path, vit, resnet18, mixer):
    """build_model builds on the meta device and takes the checkpoint's tensors (no random init);
    the result equals the model that was saved -- BatchNorm statistics and a removed skip included.
    An architecture with buffers outside its state_dict (Swin's relative position index) is built
    the ordinary way."""
    from types import SimpleNamespace
    from seelike.models.modify import apply

    _seed(5)
    no_skip = apply(timm.create_model("vit_tiny_patch16_224", pretrained=False, **VIT_KW).eval(),
                    {"remove_skip": {"block": 1, "branch": "both"}})
    cases = [(vit, "vit_tiny_patch16_224", VIT_KW, None), (resnet18, "resnet18", {"num_classes": 10}, None),
             (mixer, "mixer_s16_224", MIXER_KW, None),
             (no_skip, "vit_tiny_patch16_224", VIT_KW, {"remove_skip": {"block": 1, "branch": "both"}})]
    x = _img()
    for i, (model, arch, kw, mods) in enumerate(cases):
        card, d = _registered(tmp_path, model, arch, kw, name=f"m{i}", modifications=mods,
                              input_size=[3, 32, 32])
        bare = build_mod._create_uninitialised(card)
        assert bare is not None and all(p.is_meta for p in bare.parameters()), arch
        built = build_model(card, d)
        assert not any(t.is_meta for t in (*built.parameters(), *built.buffers()))
        for (k, a), (k2, b) in zip(model.state_dict().items(), built.state_dict().items()):
            assert k == k2 and a.dtype == b.dtype and torch.equal(a, b), (arch, k)
        with torch.no_grad():
            assert torch.equal(built(x), model(x)), arch
    swin = SimpleNamespace(arch="swin_tiny_patch4_window7_224", modifications=None,
                           kwargs=dict(img_size=56, embed_dim=32, depths=(1, 1), num_heads=(1, 2), num_classes=10))
    assert build_mod._create_uninitialised(swin) is None


def test_build_takes_the_ordinary_path_for_plain_tensor_attributes(monkeypatch):
    """A module holding a tensor that is neither parameter nor buffer would keep a meta tensor."""
    from types import SimpleNamespace

    class WithTable(torch.nn.Linear):
        def __init__(self):
            super().__init__(2, 2)
            self.table = torch.arange(4.0)

    monkeypatch.setattr(build_mod, "create_timm_model", lambda *a, **k: WithTable())
    card = SimpleNamespace(arch="x", kwargs={}, modifications=None)
    assert build_mod._create_uninitialised(card) is None
    monkeypatch.setattr(build_mod, "create_timm_model", lambda *a, **k: torch.nn.Linear(2, 2))
    assert build_mod._create_uninitialised(card).weight.is_meta


def test_meta_build_skips_value_initialisers_but_not_shape_changes():
    """Under the meta build, initialisers return their tensor untouched; ops that change shape still run,
    and tensors off the meta device are initialised as usual."""
    class Passed(torch.overrides.TorchFunctionMode):   # sees what the mode under test lets through
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.names.append(getattr(func, "__name__", ""))
            return func(*args, **(kwargs or {}))

    with torch.device("meta"), Passed() as passed, build_mod._MetaInitIsFree():
        w = torch.empty(3, 5)
        assert torch.nn.init.trunc_normal_(w, std=0.02) is w and w.is_meta and w.shape == (3, 5)
        assert w.clamp_(-1, 1).mul_(2) is w
        w.unsqueeze_(0)
        assert w.shape == (1, 3, 5)
    assert "unsqueeze_" in passed.names
    assert not {"uniform_", "erfinv_", "clamp_", "mul_"} & set(passed.names), passed.names
    with build_mod._MetaInitIsFree():
        real = torch.zeros(4)
        torch.nn.init.ones_(real)
        assert real.tolist() == [1.0] * 4


def test_card_cnn_input_size_and_gap_vit(tmp_path, resnet26):
    card, d = _registered(tmp_path, resnet26, "resnet26", {"num_classes": 10}, input_size=[3, 32, 32])
    assert card.family == "cnn" and card.num_prefix_tokens == 0 and card.input_size == [3, 32, 32]
    assert card.layers[0] == {"name": "stage0.unit0", "module": "layer1.0", "kind": "unit", "tap": "output",
                              "layout": "nchw"}
    build_model(ModelCard.load(d), d)
    gap_kw = dict(VIT_KW, global_pool="avg", class_token=False)
    gap = timm.create_model("vit_tiny_patch16_224", **gap_kw)
    card, d = _registered(tmp_path, gap, "vit_tiny_patch16_224", gap_kw, name="gap")
    assert card.num_prefix_tokens == 0
    assert build_model(ModelCard.load(d), d).num_prefix_tokens == 0


def test_card_load_errors(tmp_path, vit):
    card, d = _registered(tmp_path, vit, "vit_tiny_patch16_224", VIT_KW)
    data = json.loads((d / "card.json").read_text())
    del data["sha256"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(CardError, match=r"bad\.json.*'sha256'"):
        ModelCard.load(bad)
    data = json.loads((d / "card.json").read_text())
    data["num_prefix_tokens"] = "one"
    bad.write_text(json.dumps(data))
    with pytest.raises(CardError, match=r"bad\.json.*num_prefix_tokens"):
        ModelCard.load(bad)
    bad.write_text("{not json")
    with pytest.raises(CardError, match="not valid JSON"):
        ModelCard.load(bad)
    with pytest.raises(CardError, match="does not exist"):
        ModelCard.load(tmp_path / "nope.json")


@pytest.mark.parametrize("damage", ["modify", "truncate"])
def test_checksum_mismatch_detected_before_loading(tmp_path, vit, monkeypatch, damage):
    card, d = _registered(tmp_path, vit, "vit_tiny_patch16_224", VIT_KW)
    ckpt = d / "weights.safetensors"
    raw = bytearray(ckpt.read_bytes())
    if damage == "modify":
        raw[-10] ^= 0xFF
    else:
        raw = raw[: len(raw) // 2]
    ckpt.write_bytes(bytes(raw))

    def no_load(*a, **k):
        raise AssertionError("checkpoint was read before its checksum was verified")
    monkeypatch.setattr(build_mod, "_read_safetensors", no_load)
    monkeypatch.setattr(build_mod, "create_timm_model", no_load)
    with pytest.raises(ChecksumError) as err:
        build_model(ModelCard.load(d), d)
    msg = str(err.value)
    assert str(ckpt) in msg and card.sha256 in msg and fileio.sha256_file(ckpt) in msg


def test_missing_checkpoint(tmp_path, vit):
    card, d = _registered(tmp_path, vit, "vit_tiny_patch16_224", VIT_KW)
    (d / "weights.safetensors").unlink()
    with pytest.raises(WeightsFileError, match="weights.safetensors.*does not exist"):
        build_model(card, d)


# ----------------------------------------------------------------------------- local weights

def test_import_local_weights(tmp_path, vit):
    from safetensors.torch import save_file
    src = tmp_path / "src.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(src))
    card = import_local_weights("local", "vit_tiny_patch16_224", VIT_KW, src, tmp_path / "out",
                                expected_sha256=fileio.sha256_file(src))
    assert card.source == {"kind": "local_file", "path": str(src.resolve()), "sha256": fileio.sha256_file(src)}
    model = build_model(ModelCard.load(tmp_path / "out"), tmp_path / "out")
    for k, v in vit.state_dict().items():
        assert torch.equal(model.state_dict()[k], v)

    pth = tmp_path / "src.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in vit.state_dict().items()}}, pth)
    import_local_weights("local2", "vit_tiny_patch16_224", VIT_KW, pth, tmp_path / "out2")
    model = build_model(ModelCard.load(tmp_path / "out2"), tmp_path / "out2")
    assert torch.equal(model.pos_embed, vit.pos_embed)

    with pytest.raises(ChecksumError, match="src.safetensors"):
        import_local_weights("x", "vit_tiny_patch16_224", VIT_KW, src, tmp_path / "o3", expected_sha256="0" * 64)
    for bad, data in [("trunc.safetensors", src.read_bytes()[:300]), ("trunc.pth", pth.read_bytes()[:300])]:
        (tmp_path / bad).write_bytes(data)
        with pytest.raises(WeightsFileError, match=bad.replace(".", r"\.") + ".*truncated or corrupt"):
            import_local_weights("x", "vit_tiny_patch16_224", VIT_KW, tmp_path / bad, tmp_path / "o4")
    with pytest.raises(WeightsFileError, match="does not fit.*depth"):
        import_local_weights("x", "vit_tiny_patch16_224", dict(VIT_KW, depth=2), src, tmp_path / "o5")
    assert not (tmp_path / "o4" / "card.json").exists()


# ----------------------------------------------------------------------------- hub

HUB_NAME = "vit_tiny_patch16_224.augreg_in21k"
HUB_KW = dict(img_size=32, patch_size=8, depth=3, embed_dim=48, num_heads=3)  # num_classes from the tag: 21843
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _fake_hub_cache(root: Path, repo_id: str, files: dict) -> Path:
    """The real huggingface_hub cache layout: blobs + snapshots/<commit>/<file> symlinks + refs/main."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for fname, writer in files.items():
        tmp = repo / "blobs" / ("tmp-" + fname)
        writer(tmp)
        blob = repo / "blobs" / fileio.sha256_file(tmp)
        tmp.rename(blob)
        os.symlink(os.path.relpath(blob, snap), snap / fname)
    return root


@pytest.fixture(scope="module")
def hub_model():
    _seed(5)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=21843, **HUB_KW).eval()


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_fetch_from_local_hub_cache(tmp_path, hub_model, fmt):
    from safetensors.torch import save_file
    sd = {k: v.contiguous().clone() for k, v in hub_model.state_dict().items()}
    cfg = timm.models.get_pretrained_cfg(HUB_NAME)
    if fmt == "safetensors":
        files = {"model.safetensors": lambda p: save_file(sd, str(p))}
    else:
        files = {"pytorch_model.bin": lambda p: torch.save(sd, p)}
    cache = _fake_hub_cache(tmp_path / "hub", cfg.hf_hub_id, files)
    card = fetch_from_hub("vit_ti_hub", HUB_NAME, tmp_path / "reg", cache_dir=cache, local_files_only=True,
                          kwargs=HUB_KW)
    assert card.source["kind"] == "timm_hub" and card.source["timm_name"] == HUB_NAME
    assert card.source["hf_hub_id"] == cfg.hf_hub_id and card.source["revision"] == COMMIT
    assert card.source["filename"] == ("model.safetensors" if fmt == "safetensors" else "pytorch_model.bin")
    assert card.arch == "vit_tiny_patch16_224" and card.kwargs["num_classes"] == 21843
    assert card.pretrained_cfg["hf_hub_id"] == cfg.hf_hub_id and "file" not in card.pretrained_cfg
    assert card.input_size == [3, 32, 32] and card.provenance["head_reinitialized"] is False
    model = build_model(ModelCard.load(tmp_path / "reg"), tmp_path / "reg")
    got = model.state_dict()
    assert set(got) == set(sd)
    for k, v in sd.items():
        assert torch.equal(got[k], v), k


def test_model_step_takes_the_configured_layers_for_every_source(tmp_path, vit, hub_model):
    """`models.<name>.layers` chooses the layers of fetched and imported models too, not only of
    trained ones."""
    from safetensors.torch import save_file
    from seelike.cli import step_model

    src = tmp_path / "src.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(src))
    cfg = timm.models.get_pretrained_cfg(HUB_NAME)
    cache = _fake_hub_cache(tmp_path / "hub", cfg.hf_hub_id, {"model.safetensors": lambda p: save_file(
        {k: v.contiguous().clone() for k, v in hub_model.state_dict().items()}, str(p))})
    sources = {"local": ({"kind": "local_file", "path": str(src)}, VIT_KW),
               "hub": ({"kind": "timm_hub", "timm_name": HUB_NAME, "cache_dir": str(cache)}, HUB_KW)}
    for name, (source, kwargs) in sources.items():
        out = tmp_path / name
        step_model({"name": name, "arch": "vit_tiny_patch16_224", "kwargs": kwargs, "source": source,
                    "layers": ["blocks.0", "blocks.2"], "out_dir": str(out)})
        card = ModelCard.load(out)
        assert [l["module"] for l in card.layers] == ["blocks.0", "blocks.2"], name


def test_fetch_missing_from_cache_and_unknown_names(tmp_path):
    with pytest.raises(HubError, match=r"timm/vit_tiny_patch16_224\.augreg_in21k.*cache"):
        fetch_from_hub("x", HUB_NAME, tmp_path / "reg", cache_dir=tmp_path / "empty", local_files_only=True,
                       kwargs=HUB_KW)
    with pytest.raises(ValueError, match=r"vit_bse_patch32_224.*vit_base_patch32_224"):
        fetch_from_hub("x", "vit_bse_patch32_224.augreg_in21k", tmp_path / "reg", cache_dir=tmp_path,
                       local_files_only=True)
    with pytest.raises(ValueError, match=r"'augreg_in22k'.*vit_base_patch32_224\.augreg_in21k"):
        check_timm_arch("vit_base_patch32_224.augreg_in22k")
    with pytest.raises(ValueError, match="resnet_500"):
        check_timm_arch("resnet_500")
    check_timm_arch("resnetv2_50x1_bit.goog_in21k")
    check_timm_arch("mixer_b16_224")
    assert not (tmp_path / "reg" / "card.json").exists()
