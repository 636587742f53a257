"""`image_folder:PATH` sources: image files in one of three layouts, listed and checked
up front, decoded and converted by PIL as they are read.

`.png`/`.jpg`/`.jpeg` files (hidden files and folders are ignored), laid out one of
three ways:
  - `PATH/*.png` (images directly in PATH): one unlabelled split `train`, every
    image under PATH, sub-folders included (they carry no class meaning);
  - `PATH/SPLIT/*.png` (images directly in a split folder): the unlabelled split
    SPLIT, every image under PATH/SPLIT, sub-folders included;
  - `PATH/SPLIT/LABEL/...` (a split folder holding only folders): the labelled
    split SPLIT, class LABEL for every image under PATH/SPLIT/LABEL. Classes are
    numbered in sorted order of their names over all splits; folders named by
    numbers only must be exactly 0..C-1 and keep their number.
Splits may differ in layout (e.g. an unlabelled `train`, a labelled `test`).

Images may differ in size (the input pipeline resizes each to `config.data.image_size`)
and in mode, each converted as PIL's `convert("RGB")` / `convert("L")` would, except:
  - transparency (RGBA, LA, P or L/RGB with a transparent colour) is composited over a
    white background (`BACKGROUND`), as image viewers show it, where `convert` would
    drop the alpha channel and keep whatever colour the transparent pixels store;
  - 16-bit grayscale is scaled to 8 bits (round(v / 257)), where `convert` would clip.
Channels: 3 (RGB) when any image is in colour (every mode but 1, L, LA, I, I;16 —
palette and CMYK images count as colour), grayscale images then copied to the three
channels; 1 when all are grayscale. Each conversion is counted in `info.notes`, which
the start-up summary prints once. An image PIL cannot read completely (not an image,
truncated, corrupt) is a one-line DataError naming the file, found up front: the scan
reads each PNG's chunks (CRC-checked) and decodes each JPEG at 1/8 scale.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import os
from typing import Optional

from absl import logging
import numpy as np
import tensorflow as tf

from uctrl_jax.datasets.errors import DataError, few
from uctrl_jax.datasets.source import DatasetInfo, IndexedSource, check_label_ids, unlabelled

# PIL reads these; anything else in an image folder is an error.
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
# What transparent pixels are composited over (RGB): white, as image viewers show them.
BACKGROUND = (255, 255, 255)
# PIL modes of grayscale images; every other mode is colour.
_GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N")
_16_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
# The layouts of the module docstring, for the messages of an empty folder.
_LAYOUTS = "PATH/SPLIT/LABEL/*.png (labelled), PATH/SPLIT/*.png or PATH/*.png (unlabelled)."


@dataclasses.dataclass(frozen=True)
class _Facts:
  """What the scan learns of one image file, from its header."""

  size: tuple[int, int]  # (H, W)
  mode: str  # PIL's
  transparent: bool  # an alpha channel or a transparent colour


def _conversion(facts: _Facts) -> Optional[str]:
  """How an image of these facts is converted besides PIL's `convert`: "transparency"
  (composited over `BACKGROUND`), "16-bit" (scaled to 8 bits) or None."""
  if facts.transparent:
    return "transparency"
  return "16-bit" if facts.mode in _16_BIT_MODES else None


def load_pixels(path: str, channels: int) -> np.ndarray:
  """(H, W, channels) uint8: the image file at `path` converted by the rules of the module
  docstring to RGB (channels 3) or grayscale (1)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  with Image.open(path) as img:
    kind = _conversion(_facts(img))
    if kind == "transparency":
      rgba = img.convert("RGBA")
      img = Image.alpha_composite(Image.new("RGBA", rgba.size, (*BACKGROUND, 255)), rgba)
    elif kind == "16-bit":
      wide = np.asarray(img, np.int64)
      img = Image.fromarray(np.clip((wide + 128) // 257, 0, 255).astype(np.uint8), "L")
    pixels = np.asarray(img.convert("RGB" if channels == 3 else "L"))
  return pixels.reshape(*pixels.shape[:2], channels)


class ImageFolderSource(IndexedSource):
  """Image files listed and checked up front (`_scan_image_folder`), decoded by PIL."""

  def __init__(self, name: str, root: str):
    self._files, class_names, self._shape, sizes, notes = _scan_image_folder(root)
    self.info = DatasetInfo(
      name=name,
      image_shape=self._shape,
      num_classes=len(class_names),
      num_examples={k: len(paths) for k, (paths, _) in self._files.items()},
      class_names=class_names,
      unlabelled_splits=tuple(k for k, (_, y) in self._files.items() if y is None),
      size_counts=sizes,
      notes=notes,
    )

  def _stored_paths(self, split):
    return self._files[split][0]

  def _examples(self, split, positions):
    paths, labels = self._files[split]
    paths = paths[positions]
    labels = unlabelled(len(paths)) if labels is None else labels[positions]
    shape = self._shape
    load = functools.partial(_load_path, channels=shape[-1])

    def decode(example):
      image = tf.numpy_function(load, [example["path"]], tf.uint8, stateful=False)
      return {"image": tf.ensure_shape(image, shape), "label": example["label"]}

    return tf.data.Dataset.from_tensor_slices({"path": paths, "label": labels}).map(
      decode, num_parallel_calls=tf.data.AUTOTUNE
    )


def _load_path(path: bytes, channels: int) -> np.ndarray:
  """`load_pixels` of a path tf.data hands over as bytes."""
  return load_pixels(os.fsdecode(path), channels)


def _scan_image_folder(root: str):
  """Lists and checks the images of `image_folder:root` (layouts: module docstring).

  Returns:
    ({split: (paths (n,) str, labels (n,) int32 or None)}, class_names,
     (H, W, C) with H = W = None when sizes differ, {(H, W): count}, notes).
  """
  layout = _layout(root)
  ids = _class_ids({c for groups in layout.values() for c, _ in groups if c is not None}, root)
  paths = [p for groups in layout.values() for _, ps in groups for p in ps]
  facts = _inspect(tuple((p, *_stamp(p)) for p in paths))
  colour = any(f.mode not in _GRAY_MODES for f in facts)
  sizes = dict(collections.Counter(f.size for f in facts))
  (h, w), *others = sizes
  files = {}
  for split, groups in layout.items():
    split_paths = np.array([p for _, ps in groups for p in ps])
    labels = (
      None
      if groups[0][0] is None
      else np.concatenate([np.full(len(ps), ids[c], np.int32) for c, ps in groups])
    )
    files[split] = (split_paths, labels)
  class_names = tuple(sorted(ids, key=ids.get))
  shape = (None, None) if others else (h, w)
  notes = _notes(root, paths, facts, colour)
  return files, class_names, (*shape, 3 if colour else 1), sizes, notes


def _layout(root: str) -> dict[str, list[tuple[str | None, list[str]]]]:
  """Split -> [(class folder name, or None when unlabelled; its image paths)] of
  `image_folder:root`, in the layouts of the module docstring."""
  if not os.path.isdir(root):
    raise DataError(f"image_folder {root!r} is not a directory.")
  dirs, has_files = _entries(root)
  layout = {}
  if has_files:
    layout["train"] = [(None, _walk_images(root))]
  for split in [] if has_files else dirs:
    split_dir = os.path.join(root, split)
    classes, split_has_files = _entries(split_dir)
    if split_has_files or not classes:
      layout[split] = [(None, _walk_images(split_dir))]
    else:
      layout[split] = [(c, _walk_images(os.path.join(split_dir, c))) for c in classes]
    for label, paths in layout[split]:
      if not paths:
        where = split_dir if label is None else os.path.join(split_dir, label)
        raise DataError(f"image_folder: {where!r} holds no images; expected {_LAYOUTS}")
  if not layout:
    raise DataError(f"image_folder {root!r} holds no images; expected {_LAYOUTS}")
  return layout


def _entries(path: str) -> tuple[list[str], bool]:
  """(visible sub-folders, sorted; whether `path` holds visible files directly)."""
  names = [n for n in sorted(os.listdir(path)) if not n.startswith(".")]
  dirs = [n for n in names if os.path.isdir(os.path.join(path, n))]
  return dirs, len(dirs) < len(names)


def _walk_images(folder: str) -> list[str]:
  """Paths of the image files under `folder`, sub-folders included, sorted;
  hidden files and folders skipped, any other file a DataError."""
  paths = []
  for dirpath, dirnames, filenames in os.walk(folder):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    for f in sorted(filenames):
      if f.startswith("."):
        continue  # .DS_Store and the like
      path = os.path.join(dirpath, f)
      if not f.lower().endswith(_IMAGE_EXTENSIONS):
        raise DataError(
          f"image_folder: {path!r} is not an image file; image folders may hold "
          f"only {', '.join(_IMAGE_EXTENSIONS)} files."
        )
      paths.append(path)
  return paths


def _class_ids(names: set[str], root: str) -> dict[str, int]:
  """Class folder name -> id: numbers keep their value (and must be 0..C-1),
  names are numbered in sorted order."""
  if not names:
    return {}
  numbered = {n for n in names if n.isdigit()}
  if numbered and numbered != names:
    raise DataError(
      f"image_folder {root!r}: class folders mix numbers and names "
      f"({few(sorted(numbered, key=int)[:3] + sorted(names - numbered)[:3])}); "
      "name them all by number 0..C-1 or all by name."
    )
  if numbered:
    check_label_ids((int(n) for n in names), f"image_folder {root!r} class folders")
    return {n: int(n) for n in names}
  ids = {n: i for i, n in enumerate(sorted(names))}
  logging.info(
    "image_folder %s: classes numbered by sorted name: %s",
    root,
    few([f"{i} {n}" for n, i in ids.items()]),
  )
  return ids


def _stamp(path: str) -> tuple[int, int]:
  """(modification time in ns, size in bytes) of a file: what invalidates its scan."""
  st = os.stat(path)
  return st.st_mtime_ns, st.st_size


@functools.lru_cache(maxsize=4)
def _inspect(stamped: tuple[tuple[str, int, int], ...]) -> tuple[_Facts, ...]:
  """`_Facts` of each (path, mtime, size), checked readable; threads overlap the file
  reads (PIL decodes without the GIL). Cached: a run opens its folder several times."""
  with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
    return tuple(pool.map(_inspect_file, [path for path, _, _ in stamped]))


def _facts(img) -> _Facts:
  """`_Facts` of an opened PIL image."""
  transparent = "A" in img.getbands() or "transparency" in img.info
  return _Facts((img.size[1], img.size[0]), img.mode, transparent)


def _inspect_file(path: str) -> _Facts:
  """`_Facts` of one image file, whose whole data is checked: a PNG's chunks against their
  CRCs, a JPEG decoded at 1/8 scale. A DataError for an image PIL cannot read."""
  from PIL import Image, UnidentifiedImageError  # pylint: disable=g-import-not-at-top

  try:
    with Image.open(path) as img:
      facts = _facts(img)
      if img.format == "PNG":
        img.verify()
      else:
        img.draft(img.mode, (1, 1))  # JPEG: the smallest DCT scale, still every byte
        img.load()
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
    raise DataError(f"image_folder: {path!r} is not a readable image: {e}") from e
  except Image.DecompressionBombError as e:  # over PIL's pixel limit: a one-line error too
    raise DataError(f"image_folder: {path!r} is too large to read: {e}") from e
  return facts


def _notes(root: str, paths, facts, colour: bool) -> tuple[str, ...]:
  """One line per conversion the images of `root` undergo (module docstring): how many
  images of which modes, and the first of them."""
  target = "RGB" if colour else "grayscale"
  what = {
    "transparency": f"with transparency composited over a white background, made {target}",
    "16-bit": "scaled from 16 to 8 bits (round(v / 257))" + (", made RGB" if colour else ""),
    "gray": "made RGB (gray copied to the 3 channels), as the folder holds colour images",
    "mode": f"converted to {target} by PIL",
  }
  groups = collections.defaultdict(list)  # kind -> [(path, facts)]
  for path, f in zip(paths, facts):
    kind = _conversion(f)
    if kind is None and colour and f.mode in _GRAY_MODES:
      kind = "gray"
    elif kind is None and f.mode not in ("RGB", "L"):
      kind = "mode"
    if kind:
      groups[kind].append((path, f))
  lines = []
  for kind, members in groups.items():
    modes = "/".join(sorted({f.mode for _, f in members}))
    lines.append(
      f"image_folder {root}: {len(members)} {modes} image(s) {what[kind]} "
      f"(the first: {members[0][0]})"
    )
  return tuple(lines)
