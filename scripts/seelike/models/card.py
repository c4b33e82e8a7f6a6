"""The model card: everything needed to rebuild a model and read its layers.

A model in the registry is a directory holding ``card.json`` and the checkpoint it names
(``weights.safetensors``). Pretrained downloads, local weight files and models the
workflow trains itself all produce the same pair, and every later step reads only that.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

from .. import paths
from ..fileio import PathLike, read_json, to_jsonable, write_json_atomic

CARD_FORMAT_VERSION = 1
CARD_FILENAME = paths.file_name(paths.CARD)

FAMILIES = ("vit", "cnn", "mixer", "other")
SOURCE_KINDS = ("timm_hub", "local_file", "recipe")

# key -> (accepted python types, description used in error messages)
_FIELD_TYPES: Dict[str, tuple] = {
    "name": ((str,), "a string"),
    "arch": ((str,), "a string"),
    "kwargs": ((dict,), "a mapping"),
    "family": ((str,), "a string"),
    "source": ((dict,), "a mapping"),
    "checkpoint": ((str,), "a string"),
    "sha256": ((str,), "a string"),
    "layers": ((list,), "a list"),
    "num_prefix_tokens": ((int,), "an integer"),
    "input_size": ((list,), "a list [C, H, W]"),
    "num_classes": ((int,), "an integer"),
    "pretrained_cfg": ((dict,), "a mapping"),
    "metrics": ((dict,), "a mapping"),
    "provenance": ((dict,), "a mapping"),
    "modifications": ((dict,), "a mapping"),
}


class CardError(ValueError):
    """A model card is missing, unreadable or inconsistent (message names file and key)."""


@dataclass
class ModelCard:
    name: str
    arch: str
    kwargs: Dict[str, Any]
    family: str
    source: Dict[str, Any]
    checkpoint: str
    sha256: str
    layers: List[Dict[str, Any]]
    num_prefix_tokens: int
    input_size: List[int]
    num_classes: int
    pretrained_cfg: Dict[str, Any]
    metrics: Dict[str, Any] = field(default_factory=dict)
    provenance: Dict[str, Any] = field(default_factory=dict)
    modifications: Dict[str, Any] = field(default_factory=dict)  # seelike.models.modify, e.g. remove_skip

    # ------------------------------------------------------------------ helpers
    @property
    def layer_names(self) -> List[str]:
        return [layer["name"] for layer in self.layers]

    def to_dict(self) -> Dict[str, Any]:
        d = {"format_version": CARD_FORMAT_VERSION}
        d.update(to_jsonable(dataclasses.asdict(self)))
        return d

    def validate(self, where: str = "model card") -> "ModelCard":
        """Check types and internal consistency; raise CardError naming ``where`` and the key."""
        for key, (types, desc) in _FIELD_TYPES.items():
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, types):
                raise CardError(f"{where}: key '{key}' must be {desc}, got {type(value).__name__} {value!r:.80}")
        if self.family not in FAMILIES:
            raise CardError(f"{where}: key 'family' must be one of {FAMILIES}, got {self.family!r}")
        kind = self.source.get("kind")
        if kind not in SOURCE_KINDS:
            raise CardError(f"{where}: key 'source.kind' must be one of {SOURCE_KINDS}, got {kind!r}")
        if len(self.input_size) != 3 or not all(isinstance(v, int) and v > 0 for v in self.input_size):
            raise CardError(f"{where}: key 'input_size' must be [C, H, W] positive integers, got {self.input_size!r}")
        if self.num_prefix_tokens < 0:
            raise CardError(f"{where}: key 'num_prefix_tokens' must be >= 0, got {self.num_prefix_tokens}")
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            raise CardError(f"{where}: key 'sha256' must be 64 lower-case hex digits, got {self.sha256!r}")
        if not self.checkpoint or Path(self.checkpoint).name != self.checkpoint:
            raise CardError(
                f"{where}: key 'checkpoint' must be a bare file name next to card.json, got {self.checkpoint!r}")
        seen = set()
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, dict):
                raise CardError(f"{where}: key 'layers[{i}]' must be a mapping, got {layer!r:.80}")
            for k in ("name", "module"):
                if not isinstance(layer.get(k), str):
                    raise CardError(f"{where}: key 'layers[{i}].{k}' must be a string, got {layer.get(k)!r}")
            if layer["name"] in seen:
                raise CardError(f"{where}: key 'layers[{i}].name' duplicates layer name {layer['name']!r}")
            seen.add(layer["name"])
        return self

    # ------------------------------------------------------------------ I/O
    def save(self, path: PathLike) -> Path:
        """Write the card as JSON, atomically. ``path`` may be a directory (card.json inside)."""
        path = Path(path)
        if path.is_dir():
            path = path / CARD_FILENAME
        self.validate(str(path))
        write_json_atomic(path, self.to_dict())
        return path

    @classmethod
    def from_dict(cls, data: Dict[str, Any], where: str = "model card") -> "ModelCard":
        if not isinstance(data, dict):
            raise CardError(f"{where}: expected a JSON object, got {type(data).__name__}")
        version = data.get("format_version", CARD_FORMAT_VERSION)
        if version != CARD_FORMAT_VERSION:
            raise CardError(
                f"{where}: key 'format_version' is {version!r}; this code reads version {CARD_FORMAT_VERSION}")
        names = [f.name for f in dataclasses.fields(cls)]
        required = [f.name for f in dataclasses.fields(cls)
                     if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [k for k in required if k not in data]
        if missing:
            raise CardError(f"{where}: missing required key(s) {', '.join(repr(k) for k in missing)}")
        unknown = sorted(set(data) - set(names) - {"format_version"})
        if unknown:
            raise CardError(f"{where}: unknown key(s) {', '.join(repr(k) for k in unknown)}")
        card = cls(**{k: data[k] for k in names if k in data})
        return card.validate(where)

    @classmethod
    def load(cls, path: PathLike) -> "ModelCard":
        """Read and validate a card. ``path`` may be the card file or its directory."""
        path = Path(path)
        if path.is_dir():
            path = path / CARD_FILENAME
        return cls.from_dict(read_json(path, "model card", error=CardError), where=f"model card {path}")
