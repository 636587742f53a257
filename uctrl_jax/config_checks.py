"""The config checks: a run's config, its work directory and main.py's command-line
overrides, checked before anything is compiled.

``validate_config(config, workdir)`` raises ``ConfigError`` (a ``ValueError``) with one
line naming the setting and what is allowed, so a bad value costs seconds instead of a
compile (or an hour of training) and main.py can print it without a traceback:

* names: ``model.encoder``/``decoder``/``upsample``/``dtype``, ``loss.mode``,
  ``loss.sample_distance``/``sample_reduction``, ``train.on_nonfinite``, and the
  dataset (a tfds name, ``npz:PATH`` or ``image_folder:PATH`` whose PATH exists);
* numbers: ``eps_sq > 0``, ``λ ≥ 0``, ``feature_dim``, ``width``, ``encoder_steps``,
  ``num_views``, ``batch_size`` and the ``*_every`` intervals ≥ 1, ``num_steps ≥ 0``;
  ``vae_sigma_sq > 0`` for a VAE; one step per iteration (``encoder_steps = 1``) for the
  encoder-only and the generative modes, whose step is not the game's alternation;
* the global batch divisible by the device count and the process count;
* the image size the models accept (``models.image_size_error``), from
  ``data.image_size`` or, when that is None (keep the stored size), from
  ``image_shape`` once the dataset is open;
* the work directory: creatable and writable, and, if it holds an earlier run's
  ``config.json``, the same architecture, feature dimension, dataset and image shape
  (a resume would restore parameters of the wrong shapes, or continue on other data).
  Settings that only change the schedule (``num_steps``, ``log_every``, ...) may
  change between runs; a changed seed, batch size, objective, training split or
  learning-rate schedule is logged as a warning. A changed ``num_steps`` under the
  ``"cosine"`` schedule (which decays over ``num_steps``) changes the learning rate of
  the steps to come: refused unless ``train.allow_lr_curve_change``, then a warning;
* labels: the supervised ``loss.mode = "ctrl_multi"`` needs a labelled training split
  (``check_training_labels``, once the dataset is open).

``command_line_error`` turns what absl and ml_collections raise while parsing main.py's
flags (an override of a key the config lacks, a value of the wrong type, ...) into one
line, with ml_collections' "did you mean" suggestion.

Importing this module is cheap (no TensorFlow); only a tfds dataset name imports
tensorflow_datasets, to look the name up.
"""

from __future__ import annotations

import difflib
import json
import math
import numbers
import os
import re
import tempfile
from typing import Any, Optional, Sequence

from absl import logging
import jax
import ml_collections

from uctrl_jax import checkpointing
from uctrl_jax import evaluators
from uctrl_jax import models
from uctrl_jax import objectives
from uctrl_jax import rate_reduction as rr
from uctrl_jax import workdir_files

ON_NONFINITE = ("stop", "rollback")

# Saved-config keys that fix the shapes of the checkpointed state or the data it was
# trained on: a resume with any of them changed is refused.
_MUST_MATCH = (
  "model.encoder",
  "model.decoder",
  "model.feature_dim",
  "model.width",
  "model.encoder_depth",
  "model.upsample",
  "data.name",
)
# Keys whose change a resume survives but which make it a different experiment.
_WARN_IF_CHANGED = (
  "seed",
  "train.batch_size",
  "loss.mode",
  "loss.eps_sq",
  "loss.lambda_aug",
  "loss.lambda_self",
  "loss.sample_distance",
  "data.num_views",
  "data.train_split",
  "train.schedule",
  "train.warmup_steps",
  "train.encoder_lr",
  "train.decoder_lr",
  "train.scale_lr_by_batch",
)


class ConfigError(ValueError):
  """A config or work directory that cannot be run; the message is one line."""


def _get(config, dotted: str, default: Any = None) -> Any:
  node = config
  for key in dotted.split("."):
    if node is None or not hasattr(node, "get"):
      return default
    node = node.get(key, None)
  return default if node is None else node


def _is_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _require_int(config, dotted: str, minimum: int) -> None:
  value = _get(config, dotted)
  if not _is_int(value) or value < minimum:
    raise ConfigError(f"config.{dotted} must be an integer ≥ {minimum}; got {value!r}")


def _require_choice(config, dotted: str, choices: Sequence[str]) -> None:
  value = _get(config, dotted)
  if value not in choices:
    raise ConfigError(f"config.{dotted} = {value!r} is not one of {tuple(choices)}")


def _require_number(config, dotted: str, *, positive: bool) -> None:
  value = _get(config, dotted)
  ok = (
    isinstance(value, numbers.Real)
    and not isinstance(value, bool)
    and math.isfinite(value)
    and (value > 0 if positive else value >= 0)
  )
  if not ok:
    raise ConfigError(
      f"config.{dotted} must be a finite number {'> 0' if positive else '≥ 0'}; got {value!r}"
    )


def check_names(config: ml_collections.ConfigDict) -> None:
  """Model, objective and training names against what the code implements."""
  _require_choice(config, "model.encoder", models.ENCODERS)
  _require_choice(config, "model.decoder", models.DECODERS)
  _require_choice(config, "model.upsample", models.UPSAMPLES)
  _require_choice(config, "model.dtype", tuple(models.DTYPES))
  _require_choice(config, "loss.mode", objectives.LOSS_MODES)
  _require_choice(config, "loss.aug_target", rr.AUG_TARGETS)
  _require_choice(config, "loss.sample_distance", rr.SAMPLE_DISTANCES)
  _require_choice(config, "loss.sample_reduction", rr.SAMPLE_REDUCTIONS)
  _require_choice(config, "train.on_nonfinite", ON_NONFINITE)
  _require_choice(config, "train.encoder_bn_on_xhat", ("running", "batch"))
  _require_choice(config, "train.encoder_bn_in_decoder_step", ("running", "batch"))
  _require_choice(config, "train.schedule", ("constant", "cosine"))
  for name in tuple(_get(config, "evals.during_training.names", ()) or ()):
    if name not in evaluators.ALL:
      raise ConfigError(
        f"config.evals.during_training.names has {name!r}, not one of {evaluators.ALL}"
      )


def check_dataset_name(config: ml_collections.ConfigDict) -> None:
  """``data.name`` is a tfds name, or ``npz:``/``image_folder:`` with an existing PATH."""
  name = _get(config, "data.name")
  if not isinstance(name, str) or not name:
    raise ConfigError(f"config.data.name must be a dataset name; got {name!r}")
  kind, sep, path = name.partition(":")
  if sep and kind in ("npz", "image_folder"):
    if not path or not os.path.exists(os.path.expanduser(path)):
      raise ConfigError(f"config.data.name = {name!r}: no such file or directory {path!r}")
    return
  import tensorflow_datasets as tfds  # heavy; only for tfds names

  base = name.split("/", 1)[0].split(":", 1)[0]
  if base not in tfds.list_builders(with_community_datasets=False):
    raise ConfigError(
      f"config.data.name = {name!r} is not a tensorflow-datasets name, "
      "'npz:PATH' or 'image_folder:PATH'"
    )


def check_splits(config: ml_collections.ConfigDict) -> None:
  """For ``npz:``/``image_folder:`` data, the split fields parse as NAME or
  NAME[START:STOP] (their ranges are checked when the data opens), so a typo fails before
  compilation and names its field. tfds names are left to tfds, whose split expressions
  (``train[:50%]+test``, …) are more than this grammar."""
  from uctrl_jax import datasets  # pylint: disable=import-outside-toplevel  (TensorFlow)

  if _get(config, "data.name", "").partition(":")[0] not in ("npz", "image_folder"):
    return
  for dotted in ("data.train_split", "evals.train_split", "evals.test_split"):
    try:
      datasets.parse_split(_get(config, dotted))
    except datasets.DataError as e:
      raise ConfigError(f"config.{dotted}: {e}") from None


def check_numbers(config: ml_collections.ConfigDict) -> None:
  """Positivity and integrality of the numeric settings."""
  _require_number(config, "loss.eps_sq", positive=True)
  _require_number(config, "loss.lambda_aug", positive=False)
  _require_number(config, "loss.lambda_self", positive=False)
  for key in ("rate_weight", "delta_weight"):  # ablation weights of R(Z), ΔR(Z, Ẑ)
    _require_number(config, f"loss.{key}", positive=False)
  if _get(config, "train.host_blas_threads") is not None:
    _require_int(config, "train.host_blas_threads", 1)
  _require_int(config, "train.eval_every", 0)  # 0: no in-training evaluation
  if _get(config, "loss.mode") == "ctrl_multi":
    _require_int(config, "loss.num_classes", 1)
  if _get(config, "loss.mode") == "simclr":
    _require_number(config, "loss.temperature", positive=True)
  mode = _get(config, "loss.mode")
  if mode == "vae":
    _require_number(config, "loss.vae_sigma_sq", positive=True)
  if mode in objectives.ENCODER_ONLY_MODES:
    if _is_int(_get(config, "data.num_views")) and _get(config, "data.num_views") < 2:
      raise ConfigError(
        f"config.loss.mode = {mode!r} compares views with each other: "
        f"config.data.num_views must be ≥ 2; got {_get(config, 'data.num_views')}"
      )
  one_step = {
    **dict.fromkeys(objectives.ENCODER_ONLY_MODES, "trains the encoder alone"),
    **dict.fromkeys(objectives.GENERATIVE_MODES, "updates both networks together"),
  }
  if mode in one_step and _get(config, "train.encoder_steps") != 1:
    raise ConfigError(
      f"config.loss.mode = {mode!r} {one_step[mode]} (one step per iteration): "
      f"config.train.encoder_steps must be 1; got {_get(config, 'train.encoder_steps')!r}"
    )
  _require_int(config, "model.feature_dim", 1)
  _require_int(config, "model.width", 1)
  _require_int(config, "model.encoder_depth", 0)
  if _get(config, "model.encoder_depth") and _get(config, "model.encoder") != "dcgan":
    raise ConfigError(
      "config.model.encoder_depth > 0 needs config.model.encoder = 'dcgan'; got "
      f"{_get(config, 'model.encoder')!r}"
    )
  # The generative modes read no views (objectives.training_views): any count, 0 too.
  _require_int(config, "data.num_views", 1 if objectives.reads_views(config) else 0)
  image_size = _get(config, "data.image_size")
  if image_size is not None:
    _require_int(config, "data.image_size", 1)
  for key in (
    "batch_size",
    "encoder_steps",
    "log_every",
    "image_every",
    "checkpoint_every",
    "max_to_keep",
  ):
    _require_int(config, f"train.{key}", 1)
  _require_int(config, "train.num_steps", 0)
  for key in ("remind_every", "clear_after"):  # the health monitor's, in logged steps
    _require_int(config, f"train.health.{key}", 1)
  for key in ("encoder_lr", "decoder_lr"):
    _require_number(config, f"train.{key}", positive=False)
  for key in ("encoder_b1", "decoder_b1", "b2"):
    value = _get(config, f"train.{key}")
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
      raise ConfigError(f"config.train.{key} must be a number in [0, 1) (Adam's β); got {value!r}")


def check_batch_divisibility(
  config: ml_collections.ConfigDict,
  device_count: Optional[int] = None,
  process_count: Optional[int] = None,
) -> None:
  """The global batch splits evenly over processes (input) and devices (``data`` axis)."""
  batch = config.train.batch_size
  devices = jax.device_count() if device_count is None else device_count
  processes = jax.process_count() if process_count is None else process_count
  if batch % processes:
    raise ConfigError(
      f"config.train.batch_size = {batch} is not divisible by the {processes} processes"
    )
  if batch % devices:
    raise ConfigError(
      f"config.train.batch_size = {batch} is not divisible by the {devices} devices"
    )


def check_image_shape(
  config: ml_collections.ConfigDict, image_shape: Optional[Sequence[int]] = None
) -> None:
  """The (square) image size is one both model families support.

  Args:
    image_shape: (H, W, C) of the batches when known; otherwise ``data.image_size`` is
      checked, and nothing when that is None too.
  """
  if image_shape is not None:
    h, w = (int(v) for v in tuple(image_shape)[:2])
    where = f"the batches' image shape {tuple(image_shape)}"
  else:
    size = _get(config, "data.image_size")
    if size is None:
      return
    h = w = size
    where = f"config.data.image_size = {size}"
  if h != w:
    raise ConfigError(
      f"{where} is not square; set config.data.image_size (e.g. {_nearest_size(max(h, w))}) "
      "to resize every image to S×S"
    )
  error = models.image_size_error(h)
  if error:
    fix = "" if image_shape is None else "; set config.data.image_size to resize the images"
    raise ConfigError(f"{where}: {error}{fix}")


def _nearest_size(size: int) -> int:
  """The accepted image size closest to ``size`` (the smaller one on a tie)."""
  return min(models.accepted_image_sizes(), key=lambda s: (abs(s - size), s))


def check_workdir_writable(workdir: str) -> None:
  """``workdir`` exists (created if needed) and a file can be written in it. A bucket
  (``gs://...``) is left to its first write: it has no directories to create, and a
  test write costs a request."""
  if not workdir:
    raise ConfigError("no work directory given")
  if not workdir_files.is_local(workdir):
    return
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_test_"):
      pass
  except OSError as e:
    raise ConfigError(f"work directory {workdir!r} is not writable: {e.strerror or e}") from None


def flat_config(tree, prefix: str = "") -> dict:
  """``{"train.batch_size": 128, ...}``: the leaves of a nested config (a ``ConfigDict`` or
  its ``to_dict()``) under their dotted keys, in the config's order."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      out.update(flat_config(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = value
  return out


def json_normal(value):
  """JSON normal form, so a tuple in the new config equals the list read back."""
  return json.loads(json.dumps(value, default=str))


def check_workdir_compatible(
  config: ml_collections.ConfigDict, workdir: str, image_shape: Optional[Sequence[int]] = None
) -> None:
  """An earlier run's ``config.json`` in ``workdir`` agrees on what its state depends on.

  Raises ``ConfigError`` naming the first differing key (architecture, feature
  dimension, dataset, image size or shape); logs a warning for changed settings a resume
  survives (``_WARN_IF_CHANGED``). No saved config: nothing to compare.
  """
  path = workdir_files.path(workdir, checkpointing.CONFIG_FILENAME)
  if not path.exists():
    return
  try:
    saved = flat_config(checkpointing.load_config(workdir).to_dict())
  except (OSError, ValueError) as e:  # json.JSONDecodeError is a ValueError
    raise ConfigError(f"cannot read the earlier run's config {path}: {e}") from None
  new = flat_config(config.to_dict())
  keys = list(_MUST_MATCH)
  # data.image_size None means "the stored size": compare the resolved shape instead.
  if image_shape is not None and "data.image_shape" in saved:
    if json_normal(list(image_shape)) != json_normal(saved["data.image_shape"]):
      raise ConfigError(
        f"{workdir} holds a run on images of shape "
        f"{tuple(saved['data.image_shape'])}, this config gives "
        f"{tuple(image_shape)}; use a fresh --workdir"
      )
  elif new.get("data.image_size") is not None:
    keys.append("data.image_size")
  for key in keys:
    # A key the earlier run's code did not know yet cannot be compared.
    if key in saved and json_normal(new.get(key)) != json_normal(saved[key]):
      raise ConfigError(
        f"{workdir} holds a run with config.{key} = {saved.get(key)!r}, this "
        f"config has {new.get(key)!r}; a resume would not fit its "
        "checkpoints: use a fresh --workdir"
      )
  if "loss.mode" in saved:
    old_mode, new_mode = saved["loss.mode"], new.get("loss.mode")
    for what, differs in (
      ("a decoder", lambda m: m in objectives.ENCODER_ONLY_MODES),
      ("a VAE's Gaussian head", objectives.feature_head),
    ):
      if differs(old_mode) != differs(new_mode):
        raise ConfigError(
          f"{workdir} holds a run with config.loss.mode = {old_mode!r}, this config has "
          f"{new_mode!r}: one trains {what}, the other does not, so a resume would not "
          "fit its checkpoints: use a fresh --workdir"
        )
  for key in _WARN_IF_CHANGED:
    if key in saved and json_normal(new.get(key)) != json_normal(saved.get(key)):
      logging.warning(
        "resuming %s with config.%s = %r (was %r): the run changes course here",
        workdir,
        key,
        new.get(key),
        saved.get(key),
      )
  _check_lr_curve_kept(config, workdir, saved, new)


def _has_checkpoint(workdir: str) -> bool:
  directory = workdir_files.path(workdir, checkpointing.CHECKPOINT_SUBDIR)
  return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def _check_lr_curve_kept(config, workdir: str, saved: dict, new: dict) -> None:
  """A resume under a decaying schedule keeps ``num_steps``, the length it decays over."""
  old_steps, new_steps = saved.get("train.num_steps"), new.get("train.num_steps")
  decaying = "cosine" in (saved.get("train.schedule"), new.get("train.schedule"))
  if not decaying or old_steps in (None, new_steps) or not _has_checkpoint(workdir):
    return
  what = (
    f"{workdir} holds a run of config.train.num_steps = {old_steps}, this config has "
    f"{new_steps}: under the cosine schedule, which decays over num_steps, the resumed "
    "steps would follow another learning-rate curve"
  )
  if not config.train.allow_lr_curve_change:
    raise ConfigError(
      f"{what}; keep num_steps, use a fresh --workdir, or set "
      "config.train.allow_lr_curve_change=True"
    )
  logging.warning("%s (config.train.allow_lr_curve_change)", what)


def check_training_labels(config: ml_collections.ConfigDict, info) -> None:
  """The supervised ``loss.mode = "ctrl_multi"`` has labels in ``data.train_split``
  (``info``: the opened dataset's ``datasets.DatasetInfo``)."""
  from uctrl_jax import datasets  # pylint: disable=import-outside-toplevel  (TensorFlow)

  if config.loss.mode == "ctrl_multi" and not datasets.has_labels(info, config.data.train_split):
    raise ConfigError(
      f"config.loss.mode = 'ctrl_multi' is supervised, but config.data."
      f"train_split {config.data.train_split!r} of {info.name!r} has no labels"
    )


def validate_config(
  config: ml_collections.ConfigDict,
  workdir: Optional[str],
  *,
  image_shape: Optional[Sequence[int]] = None,
  device_count: Optional[int] = None,
  process_count: Optional[int] = None,
) -> None:
  """Every check of the module docstring; raises ``ConfigError`` (one line) on the first.

  Args:
    config: the run's config.
    workdir: the run's directory (created if missing); None skips its checks.
    image_shape: (H, W, C) of the batches, when the dataset is already open; needed to
      check a config with ``data.image_size = None``.
    device_count, process_count: default ``jax.device_count()``/``jax.process_count()``
      (these initialise the backend, so call this after ``jax.distributed.initialize``).
  """
  check_names(config)
  check_numbers(config)
  check_image_shape(config, image_shape)
  check_batch_divisibility(config, device_count, process_count)
  check_dataset_name(config)
  check_splits(config)
  if workdir is not None:
    check_workdir_writable(workdir)
    check_workdir_compatible(config, workdir, image_shape)


def unknown_key(config: ml_collections.ConfigDict, dotted: str) -> Optional[str]:
  """The one-line error for the override ``--config.<dotted>`` when ``config`` has no such
  key, with the closest key as a suggestion (ml_collections' rule: difflib, cutoff 0.75);
  None when the key exists."""
  node, parts = config, dotted.split(".")
  for i, key in enumerate(parts):
    if not hasattr(node, "keys"):
      return f"unknown config key {dotted}: config.{'.'.join(parts[:i])} is a value, not a group"
    if key not in node:
      close = difflib.get_close_matches(key, [str(k) for k in node.keys()], 1, 0.75)
      hint = f" (did you mean {'.'.join(parts[:i] + close + parts[i + 1 :])}?)" if close else ""
      return f"unknown config key {dotted}{hint}"
    node = node[key]
  return None


def command_line_error(error: Exception, argv: Sequence[str], config_file: str) -> str:
  """One line for ``error``, raised while main.py's flags ``argv`` were parsed
  (``config_file``: the config file they name, or the default one).

  ml_collections raises KeyError/AttributeError for an override of a key the config
  lacks: the config file is read again and each override's key looked up
  (``unknown_key``); OSError (or a "Error whilst parsing" flag error) for a config file
  that does not load: its last line is the reason. absl's own errors (a value of the
  wrong type, an unknown flag, a missing required flag) are already one line,
  ``flag --NAME=VALUE: reason``.
  """
  if isinstance(error, (KeyError, AttributeError)):
    # pylint: disable-next=import-outside-toplevel
    from ml_collections.config_flags import config_flags

    try:
      config = config_flags.ConfigFileFlagParser("config").parse(config_file)
      overrides = [
        arg.lstrip("-").split("=", 1)[0].split(".", 1)[1]
        for arg in argv
        if re.match(r"--?config\.", arg)
      ]
      for dotted in overrides:
        message = unknown_key(config, dotted)
        if message:
          return message
    except Exception:  # pylint: disable=broad-except  (the file itself fails: said below)
      pass
  text = str(error.args[0] if isinstance(error, KeyError) and error.args else error)
  lines = [line.strip() for line in text.splitlines() if line.strip()] or [type(error).__name__]
  if isinstance(error, OSError) or "Error whilst parsing config file" in text:
    # ml_collections: the file's own error (missing file, its exception) comes last.
    return f"cannot load the config file {config_file}: {lines[-1]}"
  return lines[0][len("flag ") :] if lines[0].startswith("flag --") else lines[0]
