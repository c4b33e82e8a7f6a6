"""The bottom of seelike's import graph: the error that names a config key, and the digest of a config
subset. Everything may import this module; it imports nothing of seelike's."""
from __future__ import annotations

import hashlib
import json
from typing import Any


class ConfigError(ValueError):
    """A config problem, phrased for the user: the key, what is wrong, what to do."""


def digest(obj: Any) -> str:
    """Stable short hash of a JSON-able config subset (keys sorted)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
