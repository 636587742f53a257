"""The config of a command on an existing run (``--mode=eval``, ``--mode=embed``): the run
is self-contained, so its own ``config.json`` (completed with the settings added since,
``loading.complete_config``) says what the model was trained on and is.

What the command line may still say:

* ``--config.evals.*``: evaluation options (which evaluators, how many examples, ...);
* ``--config.data.data_dir`` / ``data.download``: where this machine finds the same data;
* ``--config=FILE`` (old habit: the training's file, repeated): its ``config.evals`` is
  used, and its data and model must agree with the run's;
* any other override (data, model, loss, train, ...) only with the run's own value: a
  different one is a ``ConfigError`` saying why (the model was trained on the run's).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import ml_collections

from uctrl_jax import loading
from uctrl_jax import config_checks

# Overrides that say where this machine finds the run's data, not what the data are.
_WHERE_THE_DATA_ARE = ("data.data_dir", "data.download")
# What a config file must agree on with the run (keys of the run's saved config.json).
_FILE_MUST_AGREE = ("data.name", "data.image_size", "model.")


def _same(a: Any, b: Any) -> bool:
  """Equal in JSON normal form (a tuple on the command line, a list in config.json)."""
  return config_checks.json_normal(a) == config_checks.json_normal(b)


def _changes_the_run(key: str) -> bool:
  return not key.startswith("evals.") and key not in _WHERE_THE_DATA_ARE


def for_existing_run(
  workdir: str,
  given: Optional[ml_collections.ConfigDict],
  *,
  overrides: Mapping[str, Any],
  config_file: Optional[str] = None,
) -> ml_collections.ConfigDict:
  """The config to evaluate or embed the run in ``workdir`` with.

  Args:
    workdir: the run's directory (its ``config.json``).
    given: the command line's config (``--config`` or the default file, overrides
      applied); only its ``evals`` (and where the data are) are taken.
    overrides: ``{"evals.knn.k": 5, ...}``, the ``--config.KEY=VALUE`` flags given.
    config_file: the ``--config=FILE`` given on the command line, or None.
  Returns:
    The run's completed config with the command line's evaluation options.
  Raises:
    checkpointing.RunLoadError: ``workdir`` holds no run (or an unreadable config).
    config_checks.ConfigError: an override or the file changes what the run was trained
      on; one line naming the key, the run's value and why.
  """
  saved = loading.read_saved_config(workdir)
  config = loading.complete_config(saved)
  trained = config_checks.flat_config(config.to_dict())
  for key, value in overrides.items():
    if _changes_the_run(key) and not _same(value, trained.get(key)):
      raise config_checks.ConfigError(
        f"--config.{key} cannot change for an existing run's evaluation: the model was "
        f"trained on {key} = {trained.get(key)!r} ({workdir}/config.json); only "
        "--config.evals.* (and data.data_dir) may differ"
      )
  if config_file is not None:
    file_values = config_checks.flat_config(given.to_dict())
    saved_values = config_checks.flat_config(saved.to_dict())
    for prefix in _FILE_MUST_AGREE:  # the data's name first: the likeliest mix-up
      for key, value in saved_values.items():
        # data.image_size None: the run kept the stored size (its shape checked on reading).
        if not key.startswith(prefix) or key not in file_values or value is None:
          continue
        if not _same(file_values[key], value):
          raise config_checks.ConfigError(
            f"--config={config_file} has {key} = {file_values[key]!r}, but {workdir} was "
            f"trained on {key} = {value!r}: leave --config out (the run's config.json is "
            "used) or give the run's own config"
          )
    with config.unlocked():
      config.evals = ml_collections.ConfigDict(given.evals.to_dict(), type_safe=False)
  config.update_from_flattened_dict({k: v for k, v in overrides.items() if not _changes_the_run(k)})
  return config
