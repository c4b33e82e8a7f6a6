"""Architecture modifications a recipe can ask for, recorded in the model card and applied
whenever the model is built (training and extraction build it the same way).

`remove_skip`: the residual connection around the attention and/or MLP branch of block i is
removed, so that sublayer computes f(z) instead of z + f(z) (Raghu et al. 2021, F8).
"""
from __future__ import annotations

from typing import Any, Dict

from torch import nn

BRANCHES = ("attn", "mlp", "both")


class ModificationError(ValueError):
    pass


def _skipless_class(cls: type) -> type:
    """A subclass of a timm ViT block whose forward drops the skip around the chosen branches.

    Swapping the instance's class keeps its parameters, state-dict keys and hook points."""

    def forward(self, x, attn_mask=None, is_causal=False, **kwargs):
        kw = {"attn_mask": attn_mask}
        if is_causal:
            kw["is_causal"] = is_causal
        a = self.drop_path1(self.ls1(self.attn(self.norm1(x), **kw)))
        x = a if "attn" in self.removed_skips else x + a
        m = self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return m if "mlp" in self.removed_skips else x + m

    return type(f"SkipRemoved{cls.__name__}", (cls,), {"forward": forward})


def remove_skip(model: nn.Module, block: int, branch: str = "both") -> nn.Module:
    if branch not in BRANCHES:
        raise ModificationError(f"remove_skip: branch must be one of {BRANCHES}, got {branch!r}")
    blocks = getattr(model, "blocks", None)
    if blocks is None or not isinstance(blocks, (nn.Sequential, nn.ModuleList)):
        raise ModificationError(f"remove_skip: {type(model).__name__} has no .blocks of transformer blocks")
    if not 0 <= block < len(blocks):
        raise ModificationError(f"remove_skip: block {block} does not exist (the model has {len(blocks)} blocks)")
    b = blocks[block]
    needed = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")
    if not all(hasattr(b, n) for n in needed):
        raise ModificationError(f"remove_skip: block {block} ({type(b).__name__}) is not a pre-norm ViT block "
                                "(attention then MLP, each with its own residual connection)")
    if not hasattr(b, "removed_skips"):
        b.__class__ = _skipless_class(type(b))
        b.removed_skips = set()
    b.removed_skips |= {"attn", "mlp"} if branch == "both" else {branch}
    return model


def apply(model: nn.Module, modifications: Dict[str, Any] | None) -> nn.Module:
    """Apply a card's `modifications` mapping, e.g. {"remove_skip": {"block": 3, "branch": "both"}}."""
    for name, args in (modifications or {}).items():
        if name == "remove_skip":
            remove_skip(model, int(args["block"]), args.get("branch", "both"))
        else:
            raise ModificationError(f"unknown model modification '{name}' (known: remove_skip)")
    return model
