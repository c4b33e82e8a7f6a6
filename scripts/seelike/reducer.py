"""The reducer interface: what extraction hands each reducer per minibatch, and what a reducer does
with it. Extraction's own reducers (Grams, pooled features, tokens) are in seelike.extract; the
vision analyses' reducers are in seelike.analyses.reducers.

No torch import: a Batch carries tensors, but this module never touches them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Batch", "Reducer"]


@dataclass
class Batch:
    """What a reducer sees for one minibatch."""
    minibatch_id: int
    positions: np.ndarray         # positions of these examples within the shard
    example_indices: np.ndarray   # dataset indices
    activations: dict             # layer name -> tensor (b, t, d), token layout
    num_prefix_tokens: int
    inputs: Any = None            # the model's input (b, C, H, W) on the device


class Reducer:
    """Consumes minibatches, returns arrays keyed by store path. Subclasses declare `name`.

    A reducer that needs more than the layers' outputs registers its own hooks in `attach` (and
    reduces inside them, so nothing is held across blocks); `begin` runs before each forward pass.
    """
    name = "reducer"

    def attach(self, model) -> list:
        """Hook handles (anything with .remove()) registered on the model for the whole shard."""
        return []

    def begin(self, positions: np.ndarray, example_indices: np.ndarray) -> None:
        """Called before the forward pass of the minibatch at these shard positions."""

    def update(self, batch: Batch) -> None:
        raise NotImplementedError

    def result(self) -> dict:
        raise NotImplementedError
