"""`image_folder:PATH` sources: image files in one of three layouts, listed and checked
up front (headers only), decoded by tf.data as they are read.

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
Every image must have the same size and 1 or 3 channels; grayscale images in a
folder that also holds colour ones are read as RGB (gray copied to the three
channels), palette PNGs as RGB, 16-bit PNGs scaled to 8 bits, each logged once.
"""

from __future__ import annotations

import os

from absl import logging
import numpy as np
import tensorflow as tf

from uctrl_jax.datasets.errors import DataError, few
from uctrl_jax.datasets.source import DatasetInfo, IndexedSource, check_label_ids, unlabelled

# tf.io.decode_image reads only these; anything else in an image folder is an error.
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
# PIL modes read as they are or converted (the kinds of `_CONVERSION_NOTES`; None: as is).
_GRAY_MODES = {
  "1": None,
  "L": None,
  "I;16": "16-bit",
  "I;16B": "16-bit",
  "I;16L": "16-bit",
  "I": "16-bit",
}
_COLOUR_MODES = {"RGB": None, "P": "palette"}
# What each conversion does, logged once per folder.
_CONVERSION_NOTES = {
  "16-bit": "16-bit images are scaled to 8 bits",
  "palette": "palette images are read as RGB",
  "grayscale": "grayscale images are read as RGB (gray in all 3 channels), "
  "as the folder holds colour images too",
}
# The layouts of the module docstring, for the messages of an empty folder.
_LAYOUTS = "PATH/SPLIT/LABEL/*.png (labelled), PATH/SPLIT/*.png or PATH/*.png (unlabelled)."


class ImageFolderSource(IndexedSource):
  """Image files listed and checked up front (`_scan_image_folder`), decoded by tf."""

  def __init__(self, name: str, root: str):
    self._files, class_names, self._shape = _scan_image_folder(root)
    self.info = DatasetInfo(
      name=name,
      image_shape=self._shape,
      num_classes=len(class_names),
      num_examples={k: len(paths) for k, (paths, _) in self._files.items()},
      class_names=class_names,
      unlabelled_splits=tuple(k for k, (_, y) in self._files.items() if y is None),
    )

  def _stored_paths(self, split):
    return self._files[split][0]

  def _examples(self, split, positions):
    paths, labels = self._files[split]
    paths = paths[positions]
    labels = unlabelled(len(paths)) if labels is None else labels[positions]
    shape = self._shape

    def decode(example):
      image = tf.io.decode_image(
        tf.io.read_file(example["path"]), channels=shape[-1], expand_animations=False
      )
      return {"image": tf.ensure_shape(image, shape), "label": example["label"]}

    return tf.data.Dataset.from_tensor_slices({"path": paths, "label": labels}).map(
      decode, num_parallel_calls=tf.data.AUTOTUNE
    )


def _scan_image_folder(root: str):
  """Lists and checks the images of `image_folder:root` (layouts: module docstring).

  Reads only the image headers (PIL opens lazily), so it is cheap next to
  decoding the images.

  Returns:
    ({split: (paths (n,) str, labels (n,) int32 or None)}, class_names,
     (H, W, C)).
  """
  layout = _layout(root)
  ids = _class_ids({c for groups in layout.values() for c, _ in groups if c is not None}, root)
  (w, h), colour = _check_images(root, layout)
  files = {}
  for split, groups in layout.items():
    paths = np.array([p for _, ps in groups for p in ps])
    labels = (
      None
      if groups[0][0] is None
      else np.concatenate([np.full(len(ps), ids[c], np.int32) for c, ps in groups])
    )
    files[split] = (paths, labels)
  class_names = tuple(sorted(ids, key=ids.get))
  return files, class_names, (h, w, 3 if colour else 1)


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


def _check_images(root: str, layout) -> tuple[tuple[int, int], bool]:
  """(W, H), the size every image of `layout` must share, and whether any is colour (then
  all are read as RGB); logs each conversion (`_CONVERSION_NOTES`) once."""
  first_of_size: dict[tuple[int, int], str] = {}
  conversions: dict[str, list[str]] = {}  # kind -> paths converted
  gray, colour = [], []
  for groups in layout.values():
    for _, paths in groups:
      for path in paths:
        size, is_colour, kind = _read_header(path)
        (colour if is_colour else gray).append(path)
        if kind:
          conversions.setdefault(kind, []).append(path)
        if first_of_size and size not in first_of_size:
          (w0, h0), first = next(iter(first_of_size.items()))
          raise DataError(
            f"image_folder {root!r} mixes image sizes: {path!r} is "
            f"{size[0]}x{size[1]}, {first!r} is {w0}x{h0}; resize them to one "
            "size first."
          )
        first_of_size.setdefault(size, path)
  if colour and gray:
    conversions["grayscale"] = gray
  for kind, paths in conversions.items():
    logging.info(
      "image_folder %s: %s: %d image(s), the first %s",
      root,
      _CONVERSION_NOTES[kind],
      len(paths),
      paths[0],
    )
  (size,) = first_of_size
  return size, bool(colour)


def _read_header(path: str) -> tuple[tuple[int, int], bool, str | None]:
  """(size (W, H), whether colour, its conversion (`_CONVERSION_NOTES`) or None) of one
  image, from its header; a DataError for an unreadable image or one whose channels are
  not 1 or 3."""
  from PIL import Image, UnidentifiedImageError  # pylint: disable=g-import-not-at-top

  try:
    with Image.open(path) as img:
      size, mode, info = img.size, img.mode, img.info
  except (UnidentifiedImageError, OSError) as e:
    raise DataError(f"image_folder: {path!r} is not a readable image: {e}") from e
  if mode in _GRAY_MODES:
    return size, False, _GRAY_MODES[mode]
  if mode in _COLOUR_MODES and "transparency" not in info:
    return size, True, _COLOUR_MODES[mode]
  bands = Image.getmodebands(mode) + ("transparency" in info)
  raise DataError(
    f"image_folder: {path!r} has {bands} channels (mode {mode}"
    f"{' with transparency' if 'transparency' in info else ''}); expected 1 "
    "(grayscale) or 3 (RGB): convert it first, e.g. PIL's "
    "Image.convert('RGB')."
  )
