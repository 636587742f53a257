"""train_and_evaluate end to end on tiny data: outputs in the workdir, exact resume."""

import os

import jax
import numpy as np

from configs import tiny
import uctrl_jax
from uctrl_jax import checkpointing
from uctrl_jax import figures
from uctrl_jax import loading
from uctrl_jax import train


def _assert_states_equal(a, b):
  jax.tree.map(
    lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7),
    a,
    b,
  )


def test_one_step_on_mock_cifar10_writes_checkpoint_config_pictures(
  mock_cifar10, mock_metadata_dir, tmp_path
):
  config = tiny.get_config()
  config.data.name = "cifar10"
  config.data.data_dir = mock_metadata_dir
  config.data.image_size = 32
  config.train.num_steps = 1
  workdir = str(tmp_path / "run")
  state = train.train_and_evaluate(config, workdir)
  assert int(state.step) == 1
  assert checkpointing.Checkpointer(workdir).all_steps() == [1]
  assert checkpointing.load_config(workdir).data.name == "cifar10"
  assert os.path.isfile(os.path.join(workdir, "reconstructions", "step_0000001.png"))
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
  # The encoder's first layer sees 3 channels: the run used the CIFAR-shaped data.
  kernel = state.encoder_params["Conv_0"]["kernel"]
  assert kernel.shape[2] == 3
  # The in-training evaluators ran at the last step and were logged beside the losses.
  scalars = figures.read_scalars(workdir)
  for key in ("eval/knn/top1", "eval/reconstruction/consistency"):
    steps, values = scalars[key]
    assert list(steps) == [1] and 0.0 <= values[-1] <= 100.0
  assert scalars["eval/reconstruction/mse"][1][-1] > 0


def _npz_config(tmp_path):
  rng = np.random.default_rng(0)
  path = tmp_path / "data.npz"
  np.savez(path, x=rng.integers(0, 256, (64, 28, 28, 1), dtype=np.uint8), y=rng.integers(0, 10, 64))
  config = tiny.get_config()
  config.data.name = f"npz:{path}"
  config.train.num_steps = 4
  config.train.checkpoint_every = 2
  # The "interruption" below shortens num_steps, which would put the default cosine decay
  # on another curve; a constant rate does not depend on num_steps.
  config.train.schedule = "constant"
  return config


def test_interrupted_run_resumes_the_same_trajectory(tmp_path):
  config = _npz_config(tmp_path)
  uninterrupted = train.train_and_evaluate(config, str(tmp_path / "a"))
  # A single .npz holds no test split: training went on without in-training evaluations.
  assert not any(k.startswith("eval/") for k in figures.read_scalars(str(tmp_path / "a")))

  resumed_dir = str(tmp_path / "b")
  config.train.num_steps = 2  # "interrupted" after step 2, its checkpoint written
  first_half = train.train_and_evaluate(config, resumed_dir)
  assert int(first_half.step) == 2
  config.train.num_steps = 4
  resumed = train.train_and_evaluate(config, resumed_dir)  # restores step 2, data stream included
  assert int(resumed.step) == 4
  assert checkpointing.Checkpointer(resumed_dir).all_steps() == [2, 4]
  _assert_states_equal(resumed, uninterrupted)

  # uctrl_jax.load rebuilds the loop from the work directory alone.
  loaded = uctrl_jax.load(resumed_dir)
  _assert_states_equal(loaded.state, resumed)
  x = np.random.default_rng(1).uniform(-1, 1, (4, 28, 28, 1)).astype(np.float32)
  Z = loaded.encode(x)
  assert Z.shape == (4, config.model.feature_dim)
  np.testing.assert_allclose(np.linalg.norm(Z, axis=1), 1.0, rtol=1e-5)
  xhat = loaded.decode(Z)
  assert xhat.shape == x.shape and float(np.abs(xhat).max()) <= 1.0
  np.testing.assert_allclose(
    xhat, loading.make_reconstruct(config, (28, 28, 1))(resumed, x), atol=1e-5
  )
