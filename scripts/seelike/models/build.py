"""Checkpoints and cards: save, verify, rebuild, import local weights, check timm names."""

from __future__ import annotations

import difflib
import functools
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .. import paths
from ..fileio import PathLike, atomic_write, sha256_file, to_jsonable
from .card import CARD_FILENAME, ModelCard
from .layers import LayerSpec, detect_family, enumerate_layers

CHECKPOINT_FILENAME = paths.file_name(paths.WEIGHTS)


class ChecksumError(ValueError):
    """A file's sha256 differs from the digest recorded for it."""


class WeightsFileError(ValueError):
    """A weights file is missing, truncated, corrupt, or does not fit the architecture."""


# ----------------------------------------------------------------------------- timm names

def import_timm():
    """The timm module, with seelike's own architectures (seelike.models.archs) registered."""
    import timm  # imported lazily: config validation imports this module
    from . import archs  # noqa: F401  (registers seelike's small architectures with timm)
    return timm


def split_timm_name(name: str) -> Tuple[str, str]:
    """'vit_base_patch32_224.augreg_in21k' -> ('vit_base_patch32_224', 'augreg_in21k')."""
    arch, _, tag = name.partition(".")
    return arch, tag


def _suggest(name: str, candidates: Sequence[str], n: int = 5) -> List[str]:
    close = difflib.get_close_matches(name, candidates, n=n, cutoff=0.6)
    if len(close) < n:
        stem = name.split(".")[0].split("_")[0]
        close += [c for c in candidates if c.startswith(stem + "_") and c not in close][: n - len(close)]
    return close


def check_timm_arch(arch_or_name: str) -> None:
    """Raise ValueError if ``arch_or_name`` (optionally ``arch.tag``) is not in timm's registry.

    Local and fast: only timm's in-process registry is consulted, never the network.
    """
    if not isinstance(arch_or_name, str) or not arch_or_name.strip():
        raise ValueError(f"timm model name must be a non-empty string, got {arch_or_name!r}")
    if ":" in arch_or_name:
        raise ValueError(
            f"timm model name {arch_or_name!r}: 'hf-hub:'/'local-dir:' names are not supported; use a timm "
            f"registry name (e.g. 'vit_base_patch32_224.augreg_in21k') or a local_file source")
    timm = import_timm()
    arch, tag = split_timm_name(arch_or_name)
    if not timm.is_model(arch):
        close = _suggest(arch, timm.list_models())
        hint = f"; did you mean: {', '.join(close)}?" if close else f"; see timm.list_models('*{arch[:4]}*')"
        raise ValueError(f"unknown timm architecture {arch!r} (from {arch_or_name!r}){hint}")
    if tag:
        tags = timm.list_pretrained(f"{arch}.*")
        if arch_or_name not in tags:
            close = _suggest(arch_or_name, tags, n=8) or tags[:8]
            hint = f"; available: {', '.join(close)}" if close else "; it has no pretrained weights in timm"
            raise ValueError(f"unknown pretrained tag {tag!r} for timm architecture {arch!r}{hint}")


def pinned_kwargs(timm_name: str, kwargs: Optional[Dict[str, Any]], model: Optional[nn.Module] = None
                  ) -> Dict[str, Any]:
    """kwargs that rebuild ``timm_name`` (maybe tagged) from its bare architecture name.

    timm fills num_classes/global_pool/in_chans/img_size from the *tag's* pretrained cfg;
    the card stores the bare architecture, so tag-specific values are written out.
    """
    timm = import_timm()
    out = dict(kwargs or {})
    arch, tag = split_timm_name(timm_name)
    if model is not None and isinstance(getattr(model, "num_classes", None), int):
        out.setdefault("num_classes", int(model.num_classes))
    if tag:
        tagged = timm.models.get_pretrained_cfg(timm_name)
        default = timm.models.get_pretrained_cfg(arch)
        tagged = tagged.to_dict() if tagged is not None else {}
        default = default.to_dict() if default is not None else {}
        if tagged.get("num_classes") is not None and tagged["num_classes"] >= 0:
            out.setdefault("num_classes", tagged["num_classes"])
        if tagged.get("global_pool") is not None and tagged.get("global_pool") != default.get("global_pool"):
            out.setdefault("global_pool", tagged["global_pool"])
        t_in, d_in = tagged.get("input_size"), default.get("input_size")
        if t_in and d_in and tuple(t_in) != tuple(d_in):
            if t_in[0] != d_in[0]:
                out.setdefault("in_chans", t_in[0])
            if tagged.get("fixed_input_size") and tuple(t_in[1:]) != tuple(d_in[1:]):
                out.setdefault("img_size", list(t_in[1:]))
    return out


# ----------------------------------------------------------------------------- checkpoints

def save_checkpoint(model: nn.Module, path: PathLike) -> Path:
    """Write ``model.state_dict()`` as safetensors, atomically (CPU, contiguous, no shared storage)."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors: Dict[str, torch.Tensor] = {}
    storages = set()
    for key, value in model.state_dict().items():
        t = value.detach().to("cpu").contiguous()
        if t.numel():
            sid = t.untyped_storage().data_ptr()
            if sid in storages:  # safetensors refuses tensors that share memory (tied weights)
                t = t.clone()
            else:
                storages.add(sid)
        tensors[key] = t
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    return path


def verify_checkpoint(path: PathLike, expected_sha256: str, card_path: Optional[PathLike] = None) -> str:
    """Check the file exists and its sha256 matches; returns the digest."""
    path = Path(path)
    whose = f" (named by {card_path})" if card_path else ""
    if not path.is_file():
        raise WeightsFileError(f"checkpoint {path}{whose} does not exist")
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise ChecksumError(
            f"checkpoint {path}{whose} does not match its recorded sha256: expected {expected_sha256}, "
            f"actual {actual} ({path.stat().st_size} bytes); the file was modified, truncated or replaced; "
            f"re-run the step that produced it")
    return actual


def _read_safetensors(path: Path, device: str = "cpu") -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    try:
        return load_file(str(path), device=device)
    except Exception as e:  # SafetensorError, OSError, ...
        raise WeightsFileError(
            f"cannot read weights file {path}: {e} (the file may be truncated or corrupt)") from e


def _load_strict(model: nn.Module, state_dict: Dict[str, torch.Tensor], path: PathLike, assign: bool = False) -> None:
    """``load_state_dict(strict=True)`` with an error naming the file and the mismatching keys;
    ``assign=True`` makes the checkpoint's tensors the model's own (for a model built on the meta device)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) (e.g. {', '.join(missing[:5])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) (e.g. {', '.join(unexpected[:5])})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es) (e.g. {'; '.join(shapes[:3])})")
        raise WeightsFileError(
            f"weights file {path} does not fit {type(model).__name__}: {'; '.join(parts)}; "
            f"check the architecture and its kwargs (img_size, patch_size, depth, num_classes, ...)")
    if assign:
        # the checkpoint's tensors become the parameters: give them the dtypes the model declares
        state_dict = {k: v.to(own[k].dtype) if v.dtype != own[k].dtype else v for k, v in state_dict.items()}
    model.load_state_dict(state_dict, strict=True, assign=assign)


def create_timm_model(arch: str, kwargs: Optional[Dict[str, Any]] = None, modifications: Optional[Dict[str, Any]] = None,
                      **extra) -> nn.Module:
    """timm.create_model plus the card's architecture modifications (seelike.models.modify)."""
    from . import modify

    check_timm_arch(arch)
    kwargs = dict(kwargs or {})
    try:
        model = import_timm().create_model(arch, **extra, **kwargs)
    except TypeError as e:
        raise ValueError(f"timm.create_model({arch!r}) rejected the kwargs {kwargs}: {e}") from e
    return modify.apply(model, modifications)


def arch_family(arch: str, kwargs: Optional[Dict[str, Any]] = None) -> str:
    """The family ('vit' | 'cnn' | 'mixer' | 'other') of the timm architecture ``arch`` (maybe
    ``arch.tag``) built with ``kwargs``: :func:`~seelike.models.layers.detect_family` of the model,
    built on the meta device (no memory, no weights, no initialisation), so it is the family that
    the model card of that model will record. Cached per (arch, kwargs).

    Raises ValueError for an unknown architecture or tag, or kwargs timm rejects."""
    return _arch_family(arch, json.dumps(to_jsonable(dict(kwargs or {})), sort_keys=True))


@functools.lru_cache(maxsize=None)
def _arch_family(arch: str, kwargs_json: str) -> str:
    check_timm_arch(arch)
    bare, _tag = split_timm_name(arch)   # the family is the architecture's; a tag only picks weights
    with torch.device("meta"), _MetaInitIsFree():
        model = create_timm_model(bare, json.loads(kwargs_json), pretrained=False)
    return detect_family(model)


def build_model(card: ModelCard, card_dir: PathLike, device: str = "cpu", verify: bool = True) -> nn.Module:
    """Rebuild the model a card describes: verify the checkpoint's sha256, load strictly, eval mode.

    ``card_dir`` is the directory holding card.json and the checkpoint (or the card file itself).
    ``verify=False`` leaves the sha256 check to the caller, who must run :func:`verify_checkpoint`
    before using any result (extraction hashes while the model runs: a ViT-H checkpoint is 2.5 GB).
    """
    card_dir = Path(card_dir)
    if card_dir.is_file():
        card_dir = card_dir.parent
    ckpt = card_dir / card.checkpoint
    if verify:
        verify_checkpoint(ckpt, card.sha256, card_dir / CARD_FILENAME)
    state_dict = _read_safetensors(ckpt)
    model = _create_uninitialised(card)
    if model is not None:
        _load_strict(model, state_dict, ckpt, assign=True)   # strict: every tensor replaced
    else:
        model = create_timm_model(card.arch, card.kwargs, card.modifications, pretrained=False)
        _load_strict(model, state_dict, ckpt)
    model.pretrained_cfg = dict(card.pretrained_cfg)
    return model.to(device).eval()


# In-place ops that only change values, which initialisers chain (timm's trunc_normal_: uniform_,
# erfinv_, mul_, add_, clamp_). On a meta tensor they compute nothing, but PyTorch still runs
# their Python reference decompositions, most of the time of a meta build. Ops that change shape
# or strides (unsqueeze_, t_, resize_, ...) are not listed and still run.
_VALUE_ONLY_INPLACE = frozenset({
    "uniform_", "normal_", "trunc_normal_", "erfinv_", "mul_", "add_", "sub_", "div_", "clamp_", "clamp_min_",
    "clamp_max_", "fill_", "zero_", "copy_", "exponential_", "bernoulli_", "random_", "sqrt_", "abs_", "neg_",
    "masked_fill_", "fill_diagonal_", "log_normal_", "geometric_", "cauchy_", "exp_", "log_", "pow_"})


class _MetaInitIsFree(torch.overrides.TorchFunctionMode):
    """Value-only in-place ops on meta tensors return the tensor at once (shape, dtype, strides kept)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if (getattr(func, "__name__", "") in _VALUE_ONLY_INPLACE and args and isinstance(args[0], torch.Tensor)
                and args[0].is_meta):
            return args[0]
        return func(*args, **(kwargs or {}))


def _create_uninitialised(card: ModelCard) -> Optional[nn.Module]:
    """The card's model built on the meta device (no memory, no random initialisation), or None when
    that is not safe: the architecture cannot be built there, or it has buffers outside its
    state_dict (non-persistent ones computed at construction, e.g. Swin's relative position index)
    or plain tensor attributes, which a checkpoint cannot supply. timm's random initialisation, which
    the checkpoint overwrites at once, is most of the time of an ordinary build, paid once per
    extraction shard (benchmarks/bench_extract.py times the model build)."""
    try:
        with torch.device("meta"), _MetaInitIsFree():
            model = create_timm_model(card.arch, card.kwargs, card.modifications, pretrained=False)
    except Exception:  # the ordinary build below raises whatever is really wrong, with its message
        return None
    persistent = set(model.state_dict())
    if any(name not in persistent for name, _ in model.named_buffers()):
        return None
    # plain tensor attributes (neither parameter nor buffer) set at construction would stay meta
    if any(isinstance(v, torch.Tensor) for m in model.modules() for v in vars(m).values()):
        return None
    return model


# ----------------------------------------------------------------------------- cards

def live_input_size(model: nn.Module, kwargs: Dict[str, Any]) -> Optional[List[int]]:
    in_chans = int(kwargs.get("in_chans", 3))
    if "img_size" in kwargs and kwargs["img_size"] is not None:
        s = kwargs["img_size"]
        h, w = (s, s) if isinstance(s, int) else tuple(s)
        return [in_chans, int(h), int(w)]
    for attr in ("patch_embed", "stem"):
        sub = getattr(model, attr, None)
        size = getattr(sub, "img_size", None) if sub is not None else None
        if size is not None:
            h, w = (size, size) if isinstance(size, int) else tuple(size)
            return [in_chans, int(h), int(w)]
    return None


def clean_pretrained_cfg(cfg: Any) -> Dict[str, Any]:
    """A timm pretrained cfg (dataclass, dict or None) as the JSON-able dict a card stores."""
    if cfg is None:
        return {}
    if hasattr(cfg, "to_dict"):
        cfg = cfg.to_dict()
    cfg = dict(cfg)
    for k in ("file", "state_dict"):  # load-time overrides, never part of a card
        cfg.pop(k, None)
    return to_jsonable(cfg)


def make_card(name: str, arch: str, kwargs: Optional[Dict[str, Any]], source: Dict[str, Any],
              model: nn.Module, checkpoint_path: PathLike, sublayers: bool = False,
              layer_spec: LayerSpec = "auto", *, input_size: Optional[Sequence[int]] = None,
              metrics: Optional[Dict[str, Any]] = None, provenance: Optional[Dict[str, Any]] = None,
              pretrained_cfg: Optional[Dict[str, Any]] = None,
              modifications: Optional[Dict[str, Any]] = None) -> ModelCard:
    """Describe ``model`` (already saved at ``checkpoint_path``) as a card.

    Family, layers, prefix tokens, input size and the preprocessing cfg come from the live
    model. ``input_size`` overrides the size (CNNs have none of their own; a model trained
    at 32 px should say so). The card is not written; call ``card.save(dir)``.
    """
    timm = import_timm()
    kwargs = to_jsonable(dict(kwargs or {}))
    bare_arch, _tag = split_timm_name(arch)
    check_timm_arch(bare_arch)
    family = detect_family(model)
    layers = enumerate_layers(model, family, sublayers=sublayers, spec=layer_spec)
    num_prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
    cfg = clean_pretrained_cfg(pretrained_cfg if pretrained_cfg is not None
                               else getattr(model, "pretrained_cfg", None))
    if input_size is not None:
        size = [int(v) for v in input_size]
    else:
        size = live_input_size(model, kwargs) or [int(v) for v in cfg.get("input_size", (3, 224, 224))]
    if len(size) != 3:
        raise ValueError(f"model {name!r}: input_size must be [C, H, W], got {size}")
    if cfg.get("input_size") is not None and list(cfg["input_size"]) != size:
        for k in ("test_input_size", "test_crop_pct", "min_input_size"):
            cfg.pop(k, None)
    cfg["input_size"] = size
    num_classes = getattr(model, "num_classes", None)
    if not isinstance(num_classes, int):
        num_classes = int(kwargs.get("num_classes", cfg.get("num_classes", 0)))
    cfg["num_classes"] = int(num_classes)
    prov = {
        "timm_version": timm.__version__,
        "torch_version": torch.__version__,
        "model_class": f"{type(model).__module__}.{type(model).__name__}",
        "num_params": int(sum(p.numel() for p in model.parameters())),
    }
    prov.update(provenance or {})
    card = ModelCard(
        name=name, arch=bare_arch, kwargs=to_jsonable(pinned_kwargs(arch, kwargs, model)), family=family, source=to_jsonable(dict(source)),
        checkpoint=Path(checkpoint_path).name, sha256=sha256_file(checkpoint_path), layers=layers,
        num_prefix_tokens=num_prefix, input_size=size, num_classes=int(num_classes), pretrained_cfg=cfg,
        metrics=to_jsonable(dict(metrics or {})), provenance=to_jsonable(prov),
        modifications=to_jsonable(dict(modifications or {})),
    )
    return card.validate(f"model card for {name!r}")


def _arch_filter_fn(model: nn.Module):
    return getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)


def read_weights(path: PathLike) -> Dict[str, torch.Tensor]:
    """A state dict from .safetensors / .pth / .pt / .bin / .ckpt (unwrapping 'state_dict', 'model', EMA)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    from timm.models import load_state_dict
    try:
        sd = load_state_dict(str(path), use_ema=True, weights_only=True)
    except Exception as e:
        raise WeightsFileError(
            f"cannot read weights file {path}: {type(e).__name__}: {e} (the file may be truncated or corrupt, "
            f"or not a PyTorch checkpoint of plain tensors)") from e
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsFileError(f"weights file {path} does not hold a state dict of tensors")
    return dict(sd)


def load_weights_into(model: nn.Module, path: PathLike) -> Dict[str, Any]:
    """Load a local weights file strictly, applying the architecture's timm checkpoint filter if needed.

    ``.npz`` (big_vision / original JAX ViT, BiT) goes through ``model.load_pretrained``.
    Returns notes for the card's provenance.
    """
    path = Path(path)
    if path.suffix == ".npz":
        if not hasattr(model, "load_pretrained"):
            raise WeightsFileError(f"weights file {path}: {type(model).__name__} cannot load .npz checkpoints")
        try:
            model.load_pretrained(str(path))
        except Exception as e:
            raise WeightsFileError(f"cannot load .npz weights file {path}: {type(e).__name__}: {e}") from e
        return {"loader": "timm load_pretrained (npz)"}
    sd = read_weights(path)
    try:
        _load_strict(model, sd, path)
        return {"loader": "strict"}
    except WeightsFileError as first:
        fn = _arch_filter_fn(model)
        if fn is None:
            raise
        try:
            filtered = fn(dict(sd), model)
        except Exception:
            raise first from None
        try:
            _load_strict(model, filtered, path)
        except WeightsFileError:
            raise first from None
        return {"loader": f"strict after {type(model).__module__}.checkpoint_filter_fn"}


def import_local_weights(name: str, arch: str, kwargs: Optional[Dict[str, Any]], weights_path: PathLike,
                         out_dir: PathLike, expected_sha256: Optional[str] = None, *,
                         sublayers: bool = False, layer_spec: LayerSpec = "auto",
                         input_size: Optional[Sequence[int]] = None) -> ModelCard:
    """Register a local .safetensors/.pth/.npz file: out_dir/weights.safetensors + out_dir/card.json."""
    weights_path = Path(weights_path).resolve()
    if not weights_path.is_file():
        raise WeightsFileError(f"weights file {weights_path} (model {name!r}) does not exist")
    src_sha = sha256_file(weights_path)
    if expected_sha256 is not None and src_sha != expected_sha256.lower():
        raise ChecksumError(
            f"weights file {weights_path} (model {name!r}) does not match the configured sha256: "
            f"expected {expected_sha256}, actual {src_sha}")
    kwargs = dict(kwargs or {})
    model = create_timm_model(arch, kwargs, pretrained=False)
    notes = load_weights_into(model, weights_path)
    model.eval()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = save_checkpoint(model, out_dir / CHECKPOINT_FILENAME)
    card = make_card(
        name, arch, kwargs,
        {"kind": "local_file", "path": str(weights_path), "sha256": src_sha},
        model, ckpt, sublayers=sublayers, layer_spec=layer_spec, input_size=input_size,
        provenance={"import": notes},
    )
    card.save(out_dir / CARD_FILENAME)
    return card
