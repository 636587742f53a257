"""``run_config.for_existing_run``: an evaluation or embedding of a run uses the run's own
``config.json``; the command line may change evaluation options only (issue 23)."""

import pytest

from configs import cifar
from configs import default
from configs import tiny
from uctrl_jax import checkpointing
from uctrl_jax import run_config
from uctrl_jax import config_checks


def _saved_run(workdir, edit=None):
  config = tiny.get_config()
  config.data.image_shape = (28, 28, 1)
  if edit:
    with config.unlocked():
      edit(config)
  checkpointing.save_config(str(workdir), config)


def test_the_runs_config_with_the_command_lines_evaluation_options(tmp_path):
  _saved_run(tmp_path)
  config = run_config.for_existing_run(
    str(tmp_path),
    default.get_config(),  # the flag's default file: not the run's (width 64, d = 128)
    overrides={
      "evals.knn.k": 5,
      "evals.names": ("knn",),
      "data.data_dir": "/elsewhere",  # where this machine finds the same data
      "data.name": "fashion_mnist",  # the run's own value: an old habit, accepted
    },
  )
  assert config.model.width == 8 and config.model.feature_dim == 16  # the run's
  assert config.train.batch_size == 16 and tuple(config.data.image_shape) == (28, 28, 1)
  assert config.evals.knn.k == 5 and tuple(config.evals.names) == ("knn",)
  assert config.data.data_dir == "/elsewhere"
  # Untouched evaluation options are the run's (tiny's), not the default file's.
  assert config.evals.during_training.max_test_examples == 32


@pytest.mark.parametrize(
  "key, value, trained",
  [
    ("data.name", "cifar10", "'fashion_mnist'"),
    ("model.width", 64, "8"),
    ("loss.lambda_aug", 1.0, "30.0"),
    ("train.num_steps", 100, "4"),
    ("data.image_size", 32, "28"),
  ],
)
def test_overrides_of_what_the_run_was_trained_on_are_refused(tmp_path, key, value, trained):
  _saved_run(tmp_path)
  with pytest.raises(config_checks.ConfigError) as e:
    run_config.for_existing_run(str(tmp_path), default.get_config(), overrides={key: value})
  message = str(e.value)
  assert message == (
    f"--config.{key} cannot change for an existing run's evaluation: the model was trained "
    f"on {key} = {trained} ({tmp_path}/config.json); only --config.evals.* (and "
    "data.data_dir) may differ"
  )


def test_a_config_file_gives_its_evaluation_options_and_must_agree(tmp_path):
  _saved_run(tmp_path)
  given = tiny.get_config()
  given.evals.names = ("knn", "reconstruction")
  config = run_config.for_existing_run(
    str(tmp_path), given, overrides={"evals.knn.k": 3}, config_file="configs/tiny.py"
  )
  assert tuple(config.evals.names) == ("knn", "reconstruction") and config.evals.knn.k == 3
  with pytest.raises(config_checks.ConfigError, match="--config=configs/cifar.py has data.name"):
    run_config.for_existing_run(
      str(tmp_path), cifar.get_config(), overrides={}, config_file="configs/cifar.py"
    )
  other_model = tiny.get_config()
  other_model.model.feature_dim = 32
  with pytest.raises(
    config_checks.ConfigError,
    match=f"has model.feature_dim = 32, but {tmp_path} was trained on model.feature_dim = 16",
  ):
    run_config.for_existing_run(str(tmp_path), other_model, overrides={}, config_file="f.py")


def test_an_old_run_is_compared_on_the_keys_it_saved(tmp_path):
  # Saved before model.upsample existed, with the stored image size (None): today's file,
  # which sets both, agrees; the run keeps what it was trained with.
  def old(config):
    del config.model["upsample"]
    config.data.image_size = None

  _saved_run(tmp_path, old)
  config = run_config.for_existing_run(
    str(tmp_path), tiny.get_config(), overrides={}, config_file="configs/tiny.py"
  )
  assert config.model.upsample == "pixel_shuffle" and config.data.image_size is None


def test_a_directory_without_a_run(tmp_path):
  with pytest.raises(checkpointing.RunLoadError, match=f"{tmp_path} holds no run"):
    run_config.for_existing_run(str(tmp_path), default.get_config(), overrides={})
