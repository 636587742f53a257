"""Folders of images as users have them, for tests/test_own_images.py and test_readme.py:
mixed sizes (16×16 to 512×512, some not square), modes (RGB, RGBA, LA, L, palette with
and without transparency), PNG and JPEG, labelled or unlabelled layouts."""

import os

import numpy as np
from PIL import Image

# (W, H) of the generated images, cycled through: small, large, not square.
SIZES = [(16, 16), (512, 512), (40, 24), (100, 300), (64, 64), (57, 33), (32, 32)]
# PIL mode of each generated image, cycled through; "PT": palette with a transparent index.
MODES = ["RGB", "RGBA", "LA", "L", "P", "PT", "RGB", "L"]


def _user_image(i: int, kind: int) -> Image.Image:
  """Image i of the generated set: its size and mode from SIZES and MODES; colour from
  `kind` (a class), a gradient and noise; alpha (where there is one) a ramp from 0 to 255."""
  w, h = SIZES[i % len(SIZES)]
  mode = MODES[i % len(MODES)]
  rng = np.random.default_rng(i)
  base = np.array([[200, 60, 40], [40, 90, 210], [60, 180, 70]][kind % 3], np.float64)
  ramp = np.linspace(0.5, 1.0, w)[None, :, None]
  rgb = np.clip(base * ramp + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
  alpha = np.broadcast_to(np.linspace(0, 255, h).astype(np.uint8)[:, None], (h, w))
  img = Image.fromarray(rgb)
  if mode == "RGBA":
    return Image.fromarray(np.dstack([rgb, alpha]))
  if mode == "LA":
    return Image.merge("LA", (img.convert("L"), Image.fromarray(np.ascontiguousarray(alpha))))
  if mode in ("P", "PT"):
    img = img.quantize(16)
    if mode == "PT":
      img.info["transparency"] = 0  # palette index 0 is transparent
    return img
  return img.convert(mode)


def write_user_images(root, labelled: bool, n: int = 40, test: int = 10) -> str:
  """A folder of `n` images (and `test` more in a labelled `test` split) like users' own:
  labelled `root/{train,test}/{cat,dog}/*.png`, or unlabelled `root/*.png` with a nested
  folder; every 7th image a JPEG (RGB or L). Returns `root`."""
  root = str(root)
  splits = [("train", n), ("test", test)] if labelled else [("train", n)]
  start = 0
  for split, count in splits:
    for j in range(count):
      i = start + j
      img = _user_image(i, kind=j % 2)
      jpeg = i % 7 == 3 and img.mode in ("RGB", "L")
      name = f"{i:03d}.{'jpg' if jpeg else 'png'}"
      if labelled:
        path = os.path.join(root, split, ("cat", "dog")[j % 2], name)
      else:
        path = os.path.join(root, "more" if i % 5 == 0 else "", name)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      transparency = img.info.get("transparency")
      img.save(path, **({} if transparency is None else {"transparency": transparency}))
    start += count
  return root
