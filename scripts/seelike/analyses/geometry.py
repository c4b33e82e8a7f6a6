"""Pixel geometry of spatial grids: patch centres, distances, grid cells of the input image.

A grid of ``(rows, cols)`` cells, each ``(height, width)`` input pixels (a ViT's patches: the
patch size; a CNN feature map: the input size over the map size). Pixel ``(row i, column j)``
covers ``[i, i+1) x [j, j+1)``, so the centre of cell ``(r, c)`` is at
``((r + 1/2) * height, (c + 1/2) * width)``. Numpy only.
"""
from __future__ import annotations

import numpy as np


def patch_centres(grid, cell) -> np.ndarray:
    """(rows * cols, 2) float64 centres (y, x) in input pixels, row-major like the tokens."""
    gh, gw = int(grid[0]), int(grid[1])
    ch, cw = float(cell[0]), float(cell[1])
    r, c = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    return np.stack([(r.ravel() + 0.5) * ch, (c.ravel() + 0.5) * cw], axis=1)


def pixel_distances(grid, cell) -> np.ndarray:
    """(N, N) float64 Euclidean distances in input pixels between the cell centres."""
    p = patch_centres(grid, cell)
    return np.sqrt(((p[:, None, :] - p[None, :, :]) ** 2).sum(-1))


def cells_from_fractions(fractions, grid) -> list[tuple[int, int]]:
    """Grid cells at the given (row, col) fractions of the image, in order, duplicates dropped.

    A fraction f in [0, 1] maps to cell ``min(g - 1, floor(f * g))``: (0, 0) is the top-left
    cell, (0.5, 0.5) the centre (for an even grid, the cell right-below the centre).
    """
    gh, gw = int(grid[0]), int(grid[1])
    out = []
    for fr, fc in fractions:
        cell = (min(gh - 1, int(np.floor(float(fr) * gh))), min(gw - 1, int(np.floor(float(fc) * gw))))
        if cell not in out:
            out.append(cell)
    return out


def cell_bounds(grid, cell, input_hw) -> tuple[np.ndarray, np.ndarray]:
    """Integer pixel boundaries (rows + 1,), (cols + 1,) of the cells within the input image."""
    h, w = int(input_hw[0]), int(input_hw[1])
    gh, gw = int(grid[0]), int(grid[1])
    rows = np.clip(np.round(np.arange(gh + 1) * float(cell[0])), 0, h).astype(int)
    cols = np.clip(np.round(np.arange(gw + 1) * float(cell[1])), 0, w).astype(int)
    return rows, cols


def centre_cell(grid) -> tuple[int, int]:
    """The centre cell of a grid (for an even side, the one right-below the centre)."""
    return int(grid[0]) // 2, int(grid[1]) // 2
