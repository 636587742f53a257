"""PNG grids of images, e.g. inputs above their reconstructions ``g(f(x))``."""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
from PIL import Image

from uctrl_jax import workdir_files


# Small images are enlarged (nearest neighbour, whole pixels) until a tile is at least
# this many pixels high: a 28×28 image drawn at 28 px is too small to judge on screen.
MIN_TILE_PX = 84


def image_grid(
  rows: Sequence[np.ndarray], pad: int = 1, min_tile_px: int = MIN_TILE_PX
) -> np.ndarray:
  """Tiles rows of images into one picture.

  Args:
    rows: each (N, H, W, C) float in [-1, 1]; all rows the same shape. C ∈ {1, 3}.
    pad: pixels of white between tiles.
    min_tile_px: each image is repeated ``s = ceil(min_tile_px / H)`` times along both
      axes (nearest neighbour; 1 when ``H ≥ min_tile_px``).
  Returns:
    (R·(s·H + pad) + pad, N·(s·W + pad) + pad, C) uint8.
  """
  rows = [np.asarray(r, np.float32) for r in rows]
  if not rows or any(r.shape != rows[0].shape or r.ndim != 4 for r in rows):
    raise ValueError(
      f"rows must be (N, H, W, C) arrays of one shape; got {[r.shape for r in rows]}"
    )
  scale = max(1, -(-min_tile_px // rows[0].shape[1]))
  rows = [r.repeat(scale, axis=1).repeat(scale, axis=2) for r in rows]
  n, h, w, c = rows[0].shape
  grid = np.full((len(rows) * (h + pad) + pad, n * (w + pad) + pad, c), 255, np.uint8)
  for i, row in enumerate(rows):
    tiles = np.round((np.clip(row, -1, 1) + 1) * 127.5).astype(np.uint8)
    for j in range(n):
      y, x = pad + i * (h + pad), pad + j * (w + pad)
      grid[y : y + h, x : x + w] = tiles[j]
  return grid


def save_png(path: str, grid: np.ndarray) -> str:
  """Writes a (H, W, 1 or 3) uint8 picture atomically (the old file stays whole until the
  new one is complete); returns ``path``."""
  png = io.BytesIO()
  Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(png, format="PNG")
  workdir_files.write_bytes_atomic(path, png.getvalue())
  return path
