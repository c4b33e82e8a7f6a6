"""Small architectures registered with timm for the CPU demo and tests.

timm's registered MLP-Mixers hard-code patch size, depth and width, so a Mixer small enough to
train on CPU in the demo needs a registered name of its own. Registering it makes it a timm
model like any other: the card names it, build_model creates it, no special path.
"""
from __future__ import annotations

from timm.models import register_model
from timm.models.mlp_mixer import MlpMixer

_CFG = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bilinear", "crop_pct": 1.0,
        "num_classes": 10, "first_conv": "stem.proj", "classifier": "head"}


@register_model
def seelike_mixer(pretrained: bool = False, **kwargs) -> MlpMixer:
    """An MlpMixer whose patch size, depth and width all come from kwargs (defaults: a 32 px demo size)."""
    if pretrained:
        raise ValueError("seelike_mixer has no pretrained weights; train it from a recipe")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # timm's factory adds these
        kwargs.pop(key, None)
    args = dict(img_size=32, patch_size=4, num_blocks=6, embed_dim=96, mlp_ratio=(0.5, 2.0), num_classes=10)
    args.update(kwargs)
    model = MlpMixer(**args)
    model.pretrained_cfg = dict(_CFG, input_size=(3, args["img_size"], args["img_size"]), num_classes=args["num_classes"])
    model.default_cfg = model.pretrained_cfg
    return model
