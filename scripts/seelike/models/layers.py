"""Which layers of a model the analyses read, and hooks that capture them.

A layer is a small dict, stored in the model card in depth order::

    {"name": "block3", "module": "blocks.3", "kind": "block", "tap": "output", "layout": "tokens"}

``module`` is the dotted path of the ``nn.Module`` that is hooked, ``tap`` says what is
captured (see ``TAP_KINDS``), ``layout`` how the tensor is turned into token layout
(n, t, d). ``kind`` is descriptive ("block", "attn", "mlp", "unit", "module", ...).

``LayerTaps`` registers the hooks. Tap kinds are a registry keyed by string so later
analyses can capture more than activations (attention weights, per-head outputs, branch
norms) without touching this code: ``@register_tap_kind("my_kind")``.
"""

from __future__ import annotations

import difflib
import re
from collections import OrderedDict
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Union

import torch
from torch import nn

LayerSpec = Union[str, Sequence[Union[str, Dict[str, Any]]], Dict[str, Any]]

# ----------------------------------------------------------------------------- family

_VIT_CLASSES = {
    "VisionTransformer", "VisionTransformerDistilled", "VisionTransformerRelPos", "VisionTransformerSAM",
    "Beit", "Eva", "Deit", "DeiT", "CaiT", "Cait", "XCiT", "Xcit", "VisionTransformerHybrid",
    "NaFlexVit", "Hiera", "SwinTransformer", "SwinTransformerV2",
}
_MIXER_CLASSES = {"MlpMixer"}  # also builds timm's ResMLP and gMLP
_CNN_CLASSES = {
    "ResNet", "ResNetV2", "ConvNeXt", "EfficientNet", "RegNet", "DenseNet", "VGG", "ByobNet",
    "MobileNetV3", "Xception", "XceptionAligned", "DLA", "CspNet", "GhostNet", "HRNet", "SelecSls",
    "TResNet", "ReXNet", "NFNet", "NormFreeNet", "Inception3", "InceptionV4", "InceptionResnetV2",
    "DPN", "SENet", "VovNet", "RepVgg", "MobileNetV2",
}


def _mro_names(model: nn.Module) -> List[str]:
    return [c.__name__ for c in type(model).__mro__]


def _has_attention(model: nn.Module) -> bool:
    return any("Attention" in type(m).__name__ for m in model.modules())


def detect_family(model: nn.Module) -> str:
    """'vit' | 'cnn' | 'mixer' | 'other' from the model's class (then a structural guess)."""
    names = set(_mro_names(model))
    if names & _MIXER_CLASSES:
        return "mixer"
    if names & _VIT_CLASSES:
        return "vit"
    if names & _CNN_CLASSES:
        return "cnn"
    has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    if hasattr(model, "patch_embed") and hasattr(model, "blocks") and _has_attention(model):
        return "vit"
    if has_conv and not _has_attention(model) and not hasattr(model, "patch_embed"):
        return "cnn"
    return "other"


# ----------------------------------------------------------------------------- modules

def is_seq(m: Any) -> bool:
    """Whether ``m`` is a container of blocks (ModuleList or Sequential)."""
    return isinstance(m, (nn.ModuleList, nn.Sequential))


def get_module(model: nn.Module, path: str) -> nn.Module:
    """``model.get_submodule(path)`` with an error that names the path and close matches."""
    if path == "":
        return model
    try:
        return model.get_submodule(path)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        close = difflib.get_close_matches(path, names, n=5, cutoff=0.5)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise ValueError(f"layer module {path!r} not found in {type(model).__name__}{hint}") from None


def _layer(name: str, module: str, kind: str, tap: str = "output", layout: str = "tokens", **extra) -> Dict[str, Any]:
    d = {"name": name, "module": module, "kind": kind, "tap": tap, "layout": layout}
    d.update(extra)
    return d


def residual_after_attn(block: nn.Module, path: str) -> Dict[str, str]:
    """Where the residual stream between the attention (token-mixing) and MLP branches is visible.

    Pre-norm blocks (timm Block, Beit, Eva, MixerBlock, ResMLP): the input of ``norm2``.
    Post-norm ``ResPostBlock``: the input of ``mlp``.
    """
    cls = type(block).__name__
    if cls == "ResPostBlock" and hasattr(block, "mlp"):
        return {"module": f"{path}.mlp", "tap": "input"}
    if "Parallel" not in cls and isinstance(getattr(block, "norm2", None), nn.Module):
        return {"module": f"{path}.norm2", "tap": "input"}
    raise ValueError(
        f"cannot locate the residual stream after the attention branch in {path} ({cls}); "
        f"list the sublayers under `layers:` explicitly, e.g. {{'name': ..., 'module': ..., 'tap': 'input'}}")


def _vit_layers(model: nn.Module, sublayers: bool) -> List[Dict[str, Any]]:
    blocks = getattr(model, "blocks", None)
    if is_seq(blocks) and len(blocks) and not all(is_seq(b) for b in blocks):
        paths = [(f"block{i}", f"blocks.{i}") for i in range(len(blocks))]
    else:  # hierarchical (Swin: layers.i.blocks.j): stage{s}.unit{u}, feature maps channels-last
        stages = stage_units(model)
        if not stages:
            raise ValueError(
                f"{type(model).__name__} has no `blocks` list; list the layers explicitly under `layers:`")
        paths = [(f"stage{s}.unit{u}", p) for s, units in enumerate(stages) for u, p in enumerate(units)]
    out = []
    for base, path in paths:
        block = model.get_submodule(path)
        if sublayers:
            r = residual_after_attn(block, path)
            out.append(_layer(f"{base}.attn", r["module"], "attn", tap=r["tap"], block=path))
            out.append(_layer(f"{base}.mlp", path, "mlp", block=path))
        else:
            out.append(_layer(base, path, "block"))
    return out


def _mixer_layers(model: nn.Module, sublayers: bool) -> List[Dict[str, Any]]:
    blocks = getattr(model, "blocks", None)
    if not is_seq(blocks) or len(blocks) == 0:
        raise ValueError(f"{type(model).__name__} has no `blocks` list; list the layers explicitly under `layers:`")
    out = []
    for i, block in enumerate(blocks):
        path = f"blocks.{i}"
        if sublayers:
            r = residual_after_attn(block, path)
            out.append(_layer(f"block{i}.token_mixing", r["module"], "token_mixing", tap=r["tap"], block=path))
            out.append(_layer(f"block{i}.channel_mixing", path, "channel_mixing", block=path))
        else:
            out.append(_layer(f"block{i}", path, "block"))
    return out


def stage_units(model: nn.Module) -> Optional[List[List[str]]]:
    """Module paths of residual units grouped by stage, for the common timm CNN layouts."""
    # timm ResNet: layer1..layer4, each a Sequential of BasicBlock/Bottleneck
    if all(is_seq(getattr(model, f"layer{i}", None)) for i in (1, 2, 3, 4)):
        stages, i = [], 1
        while is_seq(getattr(model, f"layer{i}", None)):
            stages.append([f"layer{i}.{j}" for j in range(len(getattr(model, f"layer{i}")))])
            i += 1
        return stages
    # ResNetV2, ConvNeXt, CspNet, ...: stages.i.blocks.j ; ByobNet: stages.i.j
    stages_mod = getattr(model, "stages", None)
    if is_seq(stages_mod) and len(stages_mod):
        stages = []
        for i, stage in enumerate(stages_mod):
            inner = getattr(stage, "blocks", None)
            if is_seq(inner):
                stages.append([f"stages.{i}.blocks.{j}" for j in range(len(inner))])
            elif is_seq(stage):
                stages.append([f"stages.{i}.{j}" for j in range(len(stage))])
            else:
                stages.append([f"stages.{i}"])
        return stages
    # Swin-like hierarchical transformers: layers.i.blocks.j
    layers_mod = getattr(model, "layers", None)
    if is_seq(layers_mod) and len(layers_mod) and all(is_seq(getattr(st, "blocks", None)) for st in layers_mod):
        return [[f"layers.{i}.blocks.{j}" for j in range(len(st.blocks))] for i, st in enumerate(layers_mod)]
    # EfficientNet / MobileNet: blocks.i.j
    blocks = getattr(model, "blocks", None)
    if is_seq(blocks) and len(blocks) and all(is_seq(b) for b in blocks):
        return [[f"blocks.{i}.{j}" for j in range(len(b))] for i, b in enumerate(blocks)]
    return None


def _cnn_layers(model: nn.Module) -> Optional[List[Dict[str, Any]]]:
    stages = stage_units(model)
    if stages is None:
        return None
    return [_layer(f"stage{s}.unit{u}", path, "unit", layout="nchw")
            for s, units in enumerate(stages) for u, path in enumerate(units)]


def _repeated_blocks(model: nn.Module) -> Optional[List[Dict[str, Any]]]:
    """The first top-level ModuleList/Sequential of >= 2 modules of one class."""
    for name, child in model.named_children():
        if is_seq(child) and len(child) >= 2:
            kinds = {type(c) for c in child}
            if len(kinds) == 1 and any(True for _ in child[0].parameters()):
                return [_layer(f"block{i}", f"{name}.{i}", "block", layout="auto") for i in range(len(child))]
    return None


def _explicit_layers(model: nn.Module, spec: Any) -> List[Dict[str, Any]]:
    if isinstance(spec, dict):
        if set(spec) != {"regex"} or not isinstance(spec["regex"], str):
            raise ValueError(f"layer spec mapping must be {{'regex': '<pattern>'}}, got {spec!r}")
        try:
            pattern = re.compile(spec["regex"])
        except re.error as e:
            raise ValueError(f"layer spec regex {spec['regex']!r} is invalid: {e}") from e
        out = [_layer(n, n, "module", layout="auto") for n, _ in model.named_modules()
               if n and pattern.fullmatch(n)]
        if not out:
            raise ValueError(f"layer spec regex {spec['regex']!r} matches no module of {type(model).__name__}")
        return out
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise ValueError("layer spec list is empty")
        out = []
        for i, item in enumerate(spec):
            if isinstance(item, str):
                layer = _layer(item, item, "module", layout="auto")
            elif isinstance(item, dict) and isinstance(item.get("module"), str):
                layer = _layer(item.get("name", item["module"]), item["module"], item.get("kind", "module"),
                               tap=item.get("tap", "output"), layout=item.get("layout", "auto"),
                               **{k: v for k, v in item.items()
                                  if k not in ("name", "module", "kind", "tap", "layout")})
            else:
                raise ValueError(f"layers[{i}] must be a module path or a mapping with 'module', got {item!r}")
            if layer["tap"] not in TAP_KINDS:
                raise ValueError(f"layers[{i}]: unknown tap {layer['tap']!r}; known: {sorted(TAP_KINDS)}")
            get_module(model, layer["module"])
            out.append(layer)
        names = [layer["name"] for layer in out]
        dups = sorted({n for n in names if names.count(n) > 1})
        if dups:
            raise ValueError(f"layer spec lists duplicate layer names: {dups}")
        return out
    raise ValueError(f"layer spec must be 'auto', a list of module paths or {{'regex': ...}}, got {spec!r}")


def enumerate_layers(model: nn.Module, family: str, sublayers: bool = False,
                     spec: LayerSpec = "auto") -> List[Dict[str, Any]]:
    """The layers to analyse, in depth order.

    ``spec="auto"``:
      * vit: one layer per block output ``block{i}`` (module ``blocks.{i}``); with
        ``sublayers=True`` two per block: ``block{i}.attn`` (residual stream after the
        attention add, the input of ``blocks.{i}.norm2``) and ``block{i}.mlp`` (block output).
      * cnn: every residual unit ``stage{s}.unit{u}`` (0-based; ResNet ``layer{s+1}.{u}``,
        ResNetV2 ``stages.{s}.blocks.{u}``). ``sublayers`` is ignored.
      * mixer: ``block{i}``; with sublayers ``block{i}.token_mixing`` / ``block{i}.channel_mixing``.
      * otherwise: the top-level repeated ModuleList/Sequential, else ValueError.
    A list of module paths (or of layer dicts) or ``{"regex": ...}`` selects modules explicitly.
    """
    if not (isinstance(spec, str) and spec == "auto"):
        return _explicit_layers(model, spec)
    if family == "vit":
        return _vit_layers(model, sublayers)
    if family == "mixer":
        return _mixer_layers(model, sublayers)
    if family == "cnn":
        layers = _cnn_layers(model)
        if layers is not None:
            return layers
    elif family != "other":
        raise ValueError(f"unknown model family {family!r}; expected one of vit, cnn, mixer, other")
    layers = _repeated_blocks(model)
    if layers is None:
        raise ValueError(
            f"cannot find the layers of {type(model).__name__} automatically (family {family!r}); "
            f"list them explicitly under `layers:` (module paths, e.g. 'blocks.0', or {{'regex': ...}})")
    return layers


# ----------------------------------------------------------------------------- taps

def to_tokens(x: torch.Tensor, layout: str = "auto") -> torch.Tensor:
    """Token layout (n, t, d) as a view: NCHW -> (n, h*w, c), NHWC -> (n, h*w, c)."""
    if layout == "raw":
        return x
    if x.dim() == 3:
        return x
    if x.dim() == 4:
        if layout == "nhwc" or layout == "tokens":  # transformer feature maps are channels-last
            return x.flatten(1, 2)
        return x.flatten(2).transpose(1, 2)  # "nchw" / "auto"
    if x.dim() == 2:
        return x.unsqueeze(1)
    raise ValueError(f"cannot put a tensor of shape {tuple(x.shape)} into token layout (layout {layout!r})")


def _first_tensor(x: Any) -> torch.Tensor:
    while isinstance(x, (tuple, list)):
        x = x[0]
    if isinstance(x, dict):
        x = next(iter(x.values()))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"hooked module produced {type(x).__name__}, not a tensor")
    return x


TapFn = Callable[["LayerTaps", Dict[str, Any], nn.Module], List[Any]]
TAP_KINDS: Dict[str, TapFn] = {}


def register_tap_kind(name: str) -> Callable[[TapFn], TapFn]:
    """Register ``fn(taps, layer, module) -> [hook handles]``; it calls ``taps.store(layer, tensor)``."""
    def deco(fn: TapFn) -> TapFn:
        TAP_KINDS[name] = fn
        return fn
    return deco


@register_tap_kind("output")
def _tap_output(taps: "LayerTaps", layer: Dict[str, Any], module: nn.Module) -> List[Any]:
    layout = layer.get("layout", "auto")

    def hook(mod, args, output):
        taps.store(layer, to_tokens(_first_tensor(output), layout))
    return [module.register_forward_hook(hook)]


@register_tap_kind("input")
def _tap_input(taps: "LayerTaps", layer: Dict[str, Any], module: nn.Module) -> List[Any]:
    layout = layer.get("layout", "auto")

    def hook(mod, args):
        taps.store(layer, to_tokens(_first_tensor(args), layout))
    return [module.register_forward_pre_hook(hook)]


def _check_attention(module: nn.Module, layer: Dict[str, Any]) -> None:
    for attr in ("qkv", "num_heads", "head_dim"):
        if not hasattr(module, attr):
            raise ValueError(
                f"tap {layer.get('tap')!r} on {layer['module']!r} needs a timm Attention module "
                f"(with qkv/num_heads/head_dim); got {type(module).__name__}")


class _RestoreAttr:
    """A hook-handle-like object that puts an attribute back when the taps are removed."""

    def __init__(self, obj: Any, attr: str, value: Any):
        self.obj, self.attr, self.value = obj, attr, value

    def remove(self) -> None:
        setattr(self.obj, self.attr, self.value)


@register_tap_kind("attn_weights")
def _tap_attn_weights(taps: "LayerTaps", layer: Dict[str, Any], module: nn.Module) -> List[Any]:
    """Attention probabilities (n, heads, t, t), float32.

    timm 1.0 uses fused scaled_dot_product_attention, which never materialises the weights. While
    this tap is attached the module takes timm's explicit path (``fused_attn = False``; restored
    when the taps are removed) and the softmax output is read where it enters ``attn_drop``
    (an identity in eval mode), so the weights are exactly those the model uses, masks and
    relative-position biases included. Modules without that path get the weights recomputed
    from ``attn.qkv``'s output (q_norm/k_norm and scale applied as in ``Attention.forward``;
    no attention mask).
    """
    _check_attention(module, layer)
    drop = getattr(module, "attn_drop", None)
    if hasattr(module, "fused_attn") and isinstance(drop, nn.Module):
        restore = _RestoreAttr(module, "fused_attn", module.fused_attn)
        module.fused_attn = False

        def explicit(mod, args, attn):
            taps.store(layer, attn.float())
        return [restore, drop.register_forward_hook(explicit)]

    nh, hd = module.num_heads, module.head_dim
    scale = getattr(module, "scale", hd ** -0.5)

    def hook(mod, args, qkv):
        b, t, _ = qkv.shape
        q, k, _v = qkv.reshape(b, t, 3, nh, hd).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = module.q_norm(q), module.k_norm(k)
        attn = (q.float() * scale) @ k.float().transpose(-2, -1)
        taps.store(layer, attn.softmax(dim=-1))
    return [module.qkv.register_forward_hook(hook)]


@register_tap_kind("head_outputs")
def _tap_head_outputs(taps: "LayerTaps", layer: Dict[str, Any], module: nn.Module) -> List[Any]:
    """Per-head attention outputs before the output projection, (n, t, heads, head_dim)."""
    _check_attention(module, layer)
    nh, hd = module.num_heads, module.head_dim

    def hook(mod, args):
        x = _first_tensor(args)
        taps.store(layer, x.reshape(x.shape[0], x.shape[1], nh, hd))
    return [module.proj.register_forward_pre_hook(hook)]


class LayerTaps:
    """Capture the configured layers during a forward pass.

    >>> with LayerTaps(model, card.layers, card.num_prefix_tokens) as taps:
    ...     model(x)
    ...     feats = taps.outputs          # name -> (n, t, d), on the model's device
    ...     taps.clear()                  # before the next batch

    Tensors are detached (``detach=False`` keeps the graph, e.g. for receptive fields) and
    stay on the device. A module that runs twice in one forward keeps its last value.
    Hooks are removed on exit, also when the block raises.

    With ``consume`` (a callable ``consume(name, tensor)``) nothing is kept: each layer's tensor
    is handed to ``consume`` inside its hook, as soon as it exists, and ``outputs`` stays empty.
    Extraction reduces every layer there, so no more than one tapped layer is alive at a time.
    """

    def __init__(self, model: nn.Module, layers: Iterable[Dict[str, Any]], num_prefix_tokens: int = 0,
                 detach: bool = True, consume: Optional[Callable[[str, torch.Tensor], None]] = None):
        self.model = model
        self.layers = [dict(layer) for layer in layers]
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.detach = detach
        self.consume = consume
        self._store: Dict[str, torch.Tensor] = {}
        self._handles: List[Any] = []
        names = [layer["name"] for layer in self.layers]
        dups = sorted({n for n in names if names.count(n) > 1})
        if dups:
            raise ValueError(f"duplicate layer names: {dups}")
        for layer in self.layers:
            tap = layer.get("tap", "output")
            if tap not in TAP_KINDS:
                raise ValueError(f"layer {layer['name']!r}: unknown tap {tap!r}; known: {sorted(TAP_KINDS)}")

    # -- hooks
    def attach(self) -> "LayerTaps":
        if self._handles:
            return self
        try:
            for layer in self.layers:
                module = get_module(self.model, layer["module"])
                self._handles.extend(TAP_KINDS[layer.get("tap", "output")](self, layer, module))
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    def __enter__(self) -> "LayerTaps":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.remove()

    # -- storage
    def store(self, layer: Dict[str, Any], value: torch.Tensor) -> None:
        value = value.detach() if self.detach else value
        if self.consume is not None:
            self.consume(layer["name"], value)
        else:
            self._store[layer["name"]] = value

    def clear(self) -> None:
        self._store.clear()

    @property
    def outputs(self) -> "OrderedDict[str, torch.Tensor]":
        """Captured tensors in layer order (layers that did not run are absent)."""
        return OrderedDict((layer["name"], self._store[layer["name"]])
                           for layer in self.layers if layer["name"] in self._store)

    def missing(self) -> List[str]:
        """Names of layers whose hook did not fire since the last ``clear()``."""
        return [layer["name"] for layer in self.layers if layer["name"] not in self._store]

    def split_prefix(self, tokens: torch.Tensor) -> "tuple[torch.Tensor, torch.Tensor]":
        """(prefix tokens, spatial tokens) of a (n, t, d) tensor."""
        p = self.num_prefix_tokens
        return tokens[:, :p], tokens[:, p:]
