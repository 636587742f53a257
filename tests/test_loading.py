"""``loading.complete_config``: where an old run's ``config.json`` meets today's code.

A key added after a run was saved takes today's default, except the few whose value
then was another (``model.upsample``: pixel shuffle); keys the run did save are kept.
"""

import sys

from configs import default
from uctrl_jax import loading


def test_an_old_config_gets_the_keys_added_since():
  saved = default.get_config()
  with saved.unlocked():
    del saved.model["upsample"]
    del saved.train["health"]
    del saved.evals["structure"]
    saved.model.width = 8
    saved.data.image_shape = (28, 28, 1)  # written by the trainer, not a default
  config = loading.complete_config(saved)
  assert config.model.upsample == "pixel_shuffle"  # what runs used before the key existed
  assert config.train.health.fooling_cos == default.get_config().train.health.fooling_cos
  assert "structure" in config.evals
  assert config.model.width == 8 and tuple(config.data.image_shape) == (28, 28, 1)
  assert "upsample" not in saved.model  # the saved config itself is left alone


def test_the_defaults_are_found_without_the_configs_package(monkeypatch):
  # As after `pip install -e .` in another directory: `import configs` fails.
  monkeypatch.setitem(sys.modules, "configs", None)
  config = loading.complete_config(default.get_config())
  assert config.model.upsample == default.get_config().model.upsample
