"""Figures of a run (matplotlib, Agg): written as PNGs to ``WORKDIR/figures/``.

- ``reconstructions.png``: test inputs above their reconstructions ``g(f(x))``;
- ``similarity.png``: ``|cos|`` between test samples sorted by label, ``|Z Zᵀ|`` and
  ``|Z Ẑᵀ|`` (docs/method.md#evaluation-protocols writes them ``|ZᵀZ|``, ``|ZᵀẐ|`` with samples as
  columns); block-diagonal = structured;
- ``spectra.png``: singular values of each class's features (normalised by the largest);
  a few large values per class = low-dimensional class subspaces;
- ``pca.png``: the test features on their top two principal components, by label;
- ``training_curves.png``: every scalar the trainer logged (TensorBoard event files in
  the workdir), one panel per tag.

Without test labels, ``similarity.png`` and ``spectra.png`` (both are about classes) are
left out and ``pca.png`` has one colour.
"""

from __future__ import annotations

import io
import math
import os
from typing import Mapping, Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=wrong-import-position
import numpy as np  # noqa: E402

from uctrl_jax import image_grid  # noqa: E402
from uctrl_jax import workdir_files  # noqa: E402
from uctrl_jax.evaluators import common  # noqa: E402


def _unit(Z: np.ndarray) -> np.ndarray:
  """Rows of ``Z: (n, ...)``, flattened, as float64 unit vectors."""
  return common.l2_normalize(np.asarray(Z, np.float64).reshape(len(Z), -1))


def save(fig, path: str) -> str:
  """Writes ``fig`` as a PNG atomically (an interrupted evaluation leaves the old figure) and
  closes it; creates the directory."""
  png = io.BytesIO()
  fig.savefig(png, format="png", dpi=100, bbox_inches="tight")
  plt.close(fig)
  workdir_files.write_bytes_atomic(path, png.getvalue())
  return path


def save_panels(fig, axes, titles, xlabel: str, path: str, legend_fontsize: int = 8) -> str:
  """Titles, x label and grid on each panel of a row, the legend on the first; ``save``."""
  for ax, title in zip(axes, titles):
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=legend_fontsize)
  fig.tight_layout()
  return save(fig, path)


def balanced_subset(labels: np.ndarray, per_class: int) -> np.ndarray:
  """Indices of the first ``per_class`` samples of each label, sorted by label."""
  labels = np.asarray(labels)
  return np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)])


def reconstructions(x: np.ndarray, xhat: np.ndarray, path: str, num: int = 16) -> str:
  """Inputs ``x: (n, H, W, C)`` above ``xhat`` (first ``num`` of each, two row pairs)."""
  k = max(1, min(num, len(x)) // 2)
  rows = [x[:k], xhat[:k]]
  if len(x) >= 2 * k:
    rows += [x[k : 2 * k], xhat[k : 2 * k]]
  return image_grid.save_png(path, image_grid.image_grid(rows))


def similarity(
  Z: np.ndarray, Zhat: Optional[np.ndarray], labels: np.ndarray, path: str, per_class: int = 50
) -> str:
  """Heatmaps of ``|cos|`` between samples sorted by label: ``Z`` vs ``Z`` (and vs ``Ẑ``)."""
  idx = balanced_subset(labels, per_class)
  Z = _unit(Z[idx])
  panels = [("|Z Zᵀ| (real vs real)", np.abs(Z @ Z.T))]
  if Zhat is not None:
    panels.append(("|Z Ẑᵀ| (real vs reconstructed)", np.abs(Z @ _unit(Zhat[idx]).T)))
  return _heatmaps(
    panels,
    np.asarray(labels)[idx],
    path,
    f"|cos| between test samples sorted by label ({per_class} per class)",
  )


def similarity_runs(
  runs: Sequence[tuple[str, np.ndarray]], labels: np.ndarray, path: str, per_class: int = 50
) -> str:
  """``|Z Zᵀ|`` heatmaps of several runs side by side, ``runs = [(title, Z (n, d)), ...]``,
  all on the same test samples ``labels: (n,)``, sorted by label."""
  idx = balanced_subset(labels, per_class)
  units = [(title, _unit(Z[idx])) for title, Z in runs]
  panels = [(title, np.abs(U @ U.T)) for title, U in units]
  return _heatmaps(
    panels,
    np.asarray(labels)[idx],
    path,
    f"|cos| between test features sorted by label ({per_class} per class)",
  )


def _heatmaps(
  panels: Sequence[tuple[str, np.ndarray]], sorted_labels: np.ndarray, path: str, title: str
) -> str:
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5), squeeze=False)
  bounds = np.flatnonzero(np.diff(sorted_labels)) + 0.5  # class boundaries
  for ax, (name, M) in zip(axes[0], panels):
    im = ax.imshow(M, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    for b in bounds:
      ax.axhline(b, color="w", lw=0.3)
      ax.axvline(b, color="w", lw=0.3)
    ax.set_title(name)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(im, ax=ax, fraction=0.046)
  fig.suptitle(title)
  return save(fig, path)


def spectra(
  Z: np.ndarray, labels: np.ndarray, path: str, class_names: Optional[Sequence[str]] = None
) -> str:
  """Normalised singular values of each class's features, one line per class."""
  Z, labels = _unit(Z), np.asarray(labels)
  fig, ax = plt.subplots(figsize=(6, 4))
  for c in np.unique(labels):
    s = np.linalg.svd(Z[labels == c], compute_uv=False)
    name = class_names[c] if class_names is not None and c < len(class_names) else str(c)
    ax.plot(np.arange(1, len(s) + 1), s / s[0], label=name, lw=1)
  ax.set_yscale("log")
  ax.set_xlabel("component")
  ax.set_ylabel("singular value / largest")
  ax.set_title("per-class singular values of Z")
  ax.legend(fontsize=7, ncol=2)
  return save(fig, path)


def pca(
  Z: np.ndarray,
  labels: Optional[np.ndarray],
  path: str,
  class_names: Optional[Sequence[str]] = None,
) -> str:
  """The features on their top two principal components, coloured by label (None: one
  colour)."""
  if labels is None:
    labels, class_names = np.zeros(len(Z), np.int64), ["all (no labels)"]
  Z, labels = _unit(Z), np.asarray(labels)
  centred = Z - Z.mean(0)
  _, _, Vt = np.linalg.svd(centred, full_matrices=False)
  P = centred @ Vt[:2].T
  fig, ax = plt.subplots(figsize=(6, 5))
  for c in np.unique(labels):
    name = class_names[c] if class_names is not None and c < len(class_names) else str(c)
    ax.scatter(P[labels == c, 0], P[labels == c, 1], s=3, label=name, alpha=0.6)
  ax.set_xlabel("PC 1")
  ax.set_ylabel("PC 2")
  ax.set_title("test features, top two principal components")
  ax.legend(fontsize=7, markerscale=3, ncol=2, loc="upper right")  # "best" is slow on 10k points
  return save(fig, path)


# Tags of `--mode=eval`'s metrics (evaluate.write_scalars) in the same event files: the
# evaluation's points, not training curves.
EVAL_FULL = "eval_full/"


def read_scalars(workdir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """``{tag: (steps, values)}`` of every scalar in the TensorBoard event files of ``workdir``.

  clu writes TF2 summaries (scalars as tensors); TF1-style scalars are read too.
  """
  # pylint: disable=import-outside-toplevel  (tensorboard is slow to import; only here)
  from tensorboard.backend.event_processing import event_accumulator as ea
  from tensorboard.util import tensor_util

  series: dict[str, dict[int, float]] = {}
  for path in sorted(workdir_files.path(workdir).glob("events.out.tfevents.*")):
    acc = ea.EventAccumulator(os.fspath(path), size_guidance={ea.TENSORS: 0, ea.SCALARS: 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in tags.get("tensors", []):
      for e in acc.Tensors(tag):
        value = tensor_util.make_ndarray(e.tensor_proto)
        if value.size == 1 and np.issubdtype(value.dtype, np.number):
          series.setdefault(tag, {})[e.step] = float(value.reshape(()))
    for tag in tags.get("scalars", []):
      for e in acc.Scalars(tag):
        series.setdefault(tag, {})[e.step] = float(e.value)
  return {
    tag: (np.array(sorted(v)), np.array([v[s] for s in sorted(v)]))
    for tag, v in sorted(series.items())
  }


def training_curves(workdir: str, path: str) -> Optional[str]:
  """One panel per scalar the trainer logged; None when the workdir has none."""
  series = {k: v for k, v in read_scalars(workdir).items() if not k.startswith(EVAL_FULL)}
  if not series:
    return None
  cols = 4
  rows = math.ceil(len(series) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), squeeze=False)
  for ax, (tag, (steps, values)) in zip(axes.flat, series.items()):
    ax.plot(steps, values, lw=1, marker="." if len(steps) < 30 else None)  # few points: visible
    ax.set_title(tag, fontsize=8)
    ax.tick_params(labelsize=7)
  for ax in list(axes.flat)[len(series) :]:
    ax.axis("off")
  fig.tight_layout()
  return save(fig, path)


def write_all(
  out_dir: str,
  *,
  x_test: np.ndarray,
  xhat_test: Optional[np.ndarray],
  z_test: np.ndarray,
  zhat_test: Optional[np.ndarray],
  y_test: Optional[np.ndarray],
  workdir: Optional[str] = None,
  class_names: Optional[Sequence[str]] = None,
) -> Mapping[str, str]:
  """Every figure of the module docstring into ``out_dir`` (local or ``gs://...``):
  ``{name: path}``."""

  def at(name: str) -> str:
    return os.fspath(workdir_files.path(out_dir, name))

  paths = {}
  if xhat_test is not None:
    paths["reconstructions"] = reconstructions(x_test, xhat_test, at("reconstructions.png"))
  if y_test is not None:
    paths["similarity"] = similarity(z_test, zhat_test, y_test, at("similarity.png"))
    paths["spectra"] = spectra(z_test, y_test, at("spectra.png"), class_names)
  paths["pca"] = pca(z_test, y_test, at("pca.png"), class_names)
  if workdir is not None:
    curves = training_curves(workdir, at("training_curves.png"))
    if curves:
      paths["training_curves"] = curves
  return paths
