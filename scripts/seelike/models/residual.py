"""Where a model's attention, residual branches and spatial grids are: what the vision analyses tap.

* :func:`attention_modules` lists the full-sequence attention modules of a ViT (one per block).
* :func:`residual_branches` lists every residual sublayer ``z + f(z)``: the tap that sees the
  stream ``z`` the skip connection carries and either the tap that sees the branch output
  ``f(z)`` itself or the tap that sees the sum ``z + f(z)`` (then ``f = sum - z``).
* :func:`patch_geometry` and :func:`feature_grid` give the spatial grid of a layer and the
  size in input pixels of one grid cell.

Every entry is a plain dict of the layer-dict shape of :mod:`seelike.models.layers`
(``module``, ``tap``), so the taps are registered through the same ``TAP_KINDS``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

from torch import nn

from .layers import is_seq, residual_after_attn, stage_units


class NoAttentionError(ValueError):
    """A model without (full-sequence) attention was asked for attention taps."""


def _is_attention(m: nn.Module) -> bool:
    return all(hasattr(m, a) for a in ("qkv", "num_heads", "head_dim"))


def attention_modules(model: nn.Module, model_name: str = "model") -> List[Dict[str, Any]]:
    """``[{"name": "block{i}", "module": "blocks.{i}.attn", "num_heads": h}, ...]`` in depth order.

    Raises :class:`NoAttentionError` naming the model when it has no timm-style attention
    (qkv projection, ``num_heads``, ``head_dim``) over the whole token sequence.
    """
    blocks = getattr(model, "blocks", None)
    out = []
    if is_seq(blocks) and len(blocks) and not all(is_seq(b) for b in blocks):
        for i, blk in enumerate(blocks):
            attn = getattr(blk, "attn", None)
            if isinstance(attn, nn.Module) and _is_attention(attn):
                out.append({"name": f"block{i}", "module": f"blocks.{i}.attn", "num_heads": int(attn.num_heads)})
    if not out:
        raise NoAttentionError(
            f"model '{model_name}' ({type(model).__name__}) has no attention blocks (a `blocks` list whose "
            f"blocks have a timm Attention `attn` with qkv/num_heads/head_dim); attention analyses apply to ViTs "
            f"only: leave '{model_name}' out of their `models` list")
    return out


def _tap(module: str, tap: str) -> Dict[str, Any]:
    return {"module": module, "tap": tap, "layout": "raw"}   # raw: CNN maps stay NCHW (norms over dim 1)


def _token_block_branches(block: nn.Module, path: str, base: str, names: Tuple[str, str]) -> List[Dict[str, Any]]:
    mid = dict(residual_after_attn(block, path), layout="raw")
    d1, d2 = getattr(block, "drop_path1", None), getattr(block, "drop_path2", None)
    if isinstance(d1, nn.Module) and isinstance(d2, nn.Module) and d1 is not d2:
        # timm Block / ResPostBlock / Beit / Eva: the module whose output is added to the stream
        return [
            {"name": f"{base}.{names[0]}", "kind": names[0], "z": _tap(path, "input"),
             "f": _tap(f"{path}.drop_path1", "output")},
            {"name": f"{base}.{names[1]}", "kind": names[1], "z": mid, "f": _tap(f"{path}.drop_path2", "output")},
        ]
    # Shared or missing branch modules (MlpMixer's one drop_path): f = stream after - stream before.
    return [
        {"name": f"{base}.{names[0]}", "kind": names[0], "z": _tap(path, "input"), "sum": mid},
        {"name": f"{base}.{names[1]}", "kind": names[1], "z": mid, "sum": _tap(path, "output")},
    ]


def _cnn_unit_branch(model: nn.Module, path: str, name: str) -> Dict[str, Any]:
    unit = model.get_submodule(path)
    cls = type(unit).__name__
    entry: Dict[str, Any] = {"name": name, "kind": "unit"}
    down = getattr(unit, "downsample", None)
    short = getattr(unit, "shortcut", None)
    if isinstance(down, nn.Module):
        entry["z"] = _tap(f"{path}.downsample", "output")
    elif isinstance(short, nn.Module):
        entry["z"] = _tap(f"{path}.shortcut", "output")
    else:
        entry["z"] = _tap(path, "input")
    if isinstance(getattr(unit, "act3", None), nn.Module):          # Bottleneck: act3(branch + shortcut)
        entry["sum"] = _tap(f"{path}.act3", "input")
    elif not hasattr(unit, "conv3") and isinstance(getattr(unit, "act2", None), nn.Module) \
            and not cls.startswith("PreAct"):                        # BasicBlock: act2(branch + shortcut)
        entry["sum"] = _tap(f"{path}.act2", "input")
    elif isinstance(getattr(unit, "drop_path", None), nn.Module):   # pre-activation / ConvNeXt: drop_path(branch) + shortcut
        entry["f"] = _tap(f"{path}.drop_path", "output")
    else:
        raise ValueError(f"cannot locate the residual branch of {path} ({cls}) for norm ratios")
    return entry


def residual_branches(model: nn.Module, family: str, model_name: str = "model") -> List[Dict[str, Any]]:
    """Every residual sublayer in depth order.

    Each entry: ``name`` (``block{i}.attn`` / ``block{i}.mlp`` for ViTs, ``block{i}.token_mixing`` /
    ``block{i}.channel_mixing`` for Mixers, ``stage{s}.unit{u}`` for CNN residual units), ``kind``,
    ``z`` (tap of the stream the skip connection adds: the block input, or its projection when
    a CNN unit downsamples) and either ``f`` (tap of the branch output) or ``sum`` (tap of
    ``z + f(z)``, before any activation that follows the addition).
    """
    if family in ("vit", "mixer"):
        blocks = getattr(model, "blocks", None)
        if not (is_seq(blocks) and len(blocks)) or all(is_seq(b) for b in blocks):
            raise ValueError(f"model '{model_name}': norm ratios need a flat `blocks` list of residual blocks")
        names = ("attn", "mlp") if family == "vit" else ("token_mixing", "channel_mixing")
        out = []
        for i, blk in enumerate(blocks):
            out += _token_block_branches(blk, f"blocks.{i}", f"block{i}", names)
        return out
    if family == "cnn":
        stages = stage_units(model)
        if not stages:
            raise ValueError(f"model '{model_name}': cannot find the residual units of {type(model).__name__}")
        return [_cnn_unit_branch(model, p, f"stage{s}.unit{u}") for s, units in enumerate(stages)
                for u, p in enumerate(units)]
    raise ValueError(f"model '{model_name}': norm ratios need a ViT, Mixer or CNN (family {family!r})")


# ----------------------------------------------------------------------------- geometry

def _pair(v) -> Tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    return (int(v[0]), int(v[1]))


def patch_geometry(model: nn.Module, n_spatial: int, input_hw: Tuple[int, int]) -> Tuple[Tuple[int, int], Tuple[float, float]]:
    """(grid (rows, cols), cell size in input pixels (height, width)) of a token model's spatial tokens.

    The patch embedding's own grid and stride when they account for ``n_spatial`` tokens
    (timm ``PatchEmbed``: ``grid_size``, ``proj.stride``; a hybrid's ``HybridEmbed`` projects the
    backbone's feature map, so its stride counts feature pixels of ``feature_ratio`` input pixels each);
    otherwise a square grid over the input.
    """
    for attr in ("patch_embed", "stem"):
        pe = getattr(model, attr, None)
        grid = getattr(pe, "grid_size", None) if pe is not None else None
        if grid is not None:
            g = _pair(grid)
            if g[0] * g[1] == n_spatial:
                proj = getattr(pe, "proj", None)
                stride = getattr(proj, "stride", None) or getattr(pe, "patch_size", None)
                if stride is not None:
                    s, r = _pair(stride), _pair(getattr(pe, "feature_ratio", 1))
                    return g, (float(s[0] * r[0]), float(s[1] * r[1]))
                return g, (input_hw[0] / g[0], input_hw[1] / g[1])
    side = math.isqrt(n_spatial)
    if side * side != n_spatial:
        raise ValueError(f"cannot infer the spatial grid of {n_spatial} tokens ({type(model).__name__} has no "
                         "patch_embed.grid_size matching them)")
    return (side, side), (input_hw[0] / side, input_hw[1] / side)


def feature_grid(raw_shape, layout: str, n_prefix: int) -> Optional[Tuple[int, int]]:
    """Spatial grid of a raw layer output: NCHW -> (h, w), NHWC -> (h, w), tokens -> None (see patch_geometry)."""
    if len(raw_shape) == 4:
        if layout in ("nhwc", "tokens"):
            return int(raw_shape[1]), int(raw_shape[2])
        return int(raw_shape[2]), int(raw_shape[3])
    return None
