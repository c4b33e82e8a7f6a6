"""Model registry: cards, checkpoints, hub/local imports, layer enumeration and taps.

Names resolve lazily (PEP 562): reading a model card must not import torch, because the
process that waits for a SLURM job on the login node reads cards too.
"""
from __future__ import annotations

import importlib

_WHERE = {
    "build": ["CHECKPOINT_FILENAME", "ChecksumError", "WeightsFileError", "arch_family", "build_model", "check_timm_arch",
              "import_local_weights", "load_weights_into", "make_card", "pinned_kwargs", "read_weights",
              "save_checkpoint", "split_timm_name", "verify_checkpoint", "create_timm_model"],
    "card": ["CARD_FILENAME", "CardError", "ModelCard"],
    "hub": ["HubError", "download_weights", "fetch_from_hub", "hub_location"],
    "layers": ["TAP_KINDS", "LayerTaps", "detect_family", "enumerate_layers", "get_module", "register_tap_kind",
               "to_tokens"],
}
_MODULE_OF = {name: mod for mod, names in _WHERE.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    mod = _MODULE_OF.get(name)
    if mod is None:
        raise AttributeError(f"module 'seelike.models' has no attribute '{name}'")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
