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
    num_prefix_tokens: int
    inputs: Any = None            # the model's input (b, C, H, W) on the device


class Reducer:
    """Consumes minibatches, returns arrays keyed by store path. Subclasses declare `name`.

    Per minibatch: `begin` before the forward pass; `consume` inside it, once per tapped layer, as
    soon as that layer's output exists; `update` after it. A layer's tensor is reduced in `consume`
    and dropped, so that only one tapped layer is alive at a time; a reducer that needs a layer
    after the forward keeps that one reference itself, and only that one. A reducer that needs more
    than the layers' outputs registers its own hooks in `attach` (and reduces inside them too).
    """
    name = "reducer"

    def attach(self, model) -> list:
        """Hook handles (anything with .remove()) registered on the model for the whole shard."""
        return []

    def begin(self, positions: np.ndarray, example_indices: np.ndarray) -> None:
        """Called before the forward pass of the minibatch at these shard positions."""

    def consume(self, layer: str, activation) -> None:
        """Inside the forward pass: `activation` (b, t, d), token layout, on the device, of tapped `layer`."""

    def update(self, batch: Batch) -> None:
        """After the forward pass of the minibatch."""

    def result(self) -> dict:
        raise NotImplementedError
