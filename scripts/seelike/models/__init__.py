"""Model registry: cards, checkpoints, hub/local imports, layer enumeration and taps."""

from .build import (CHECKPOINT_FILENAME, ChecksumError, WeightsFileError, build_model, check_timm_arch,
                    import_local_weights, load_weights_into, make_card, pinned_kwargs, read_weights,
                    save_checkpoint, split_timm_name, verify_checkpoint)
from .card import CARD_FILENAME, CardError, ModelCard
from .hub import HubError, download_weights, fetch_from_hub, hub_location
from .layers import (TAP_KINDS, LayerTaps, detect_family, enumerate_layers, get_module, register_tap_kind,
                     to_tokens)

__all__ = [
    "CARD_FILENAME", "CHECKPOINT_FILENAME", "CardError", "ChecksumError", "HubError", "LayerTaps", "ModelCard",
    "TAP_KINDS", "WeightsFileError", "build_model", "check_timm_arch", "detect_family", "download_weights",
    "enumerate_layers", "fetch_from_hub", "get_module", "hub_location", "import_local_weights",
    "load_weights_into", "make_card", "pinned_kwargs", "read_weights", "register_tap_kind", "save_checkpoint",
    "split_timm_name", "to_tokens", "verify_checkpoint",
]
