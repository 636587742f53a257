"""uctrl_jax/checkpointing.py: TrainState + extra round trips, sharding, retention, config."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from configs import tiny
from uctrl_jax import checkpointing
from uctrl_jax import sharding
from uctrl_jax.state import TrainState, create_train_state

IMAGE_SHAPE = (28, 28, 1)


@pytest.fixture(scope="module")
def mesh():
  return sharding.create_mesh()  # the 8 simulated CPU devices of conftest.py


@pytest.fixture(scope="module")
def fresh_state(mesh):
  """A freshly initialised TrainState replicated over the mesh (the restore target)."""
  state = create_train_state(tiny.get_config(), IMAGE_SHAPE, jax.random.key(0))
  return sharding.replicate(state, mesh)


def _perturbed(state, seed, mesh):
  """``state`` with every leaf changed (Adam's mu/nu start at 0, count and step too), so
  a restore that returned the target's own values would fail the comparison."""
  rng = np.random.default_rng(seed)

  def perturb(x):
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.floating):
      return (x + rng.normal(size=x.shape)).astype(x.dtype)
    return x + np.asarray(rng.integers(1, 100), x.dtype)

  return sharding.replicate(jax.tree.map(perturb, state), mesh)


def _assert_trees_equal(actual, expected):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for (path, a), e in zip(jax.tree_util.tree_leaves_with_path(actual), jax.tree.leaves(expected)):
    assert a.dtype == e.dtype, jax.tree_util.keystr(path)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(e), err_msg=jax.tree_util.keystr(path))


def test_round_trip_keeps_values_and_sharding(tmp_path, fresh_state, mesh):
  saved = _perturbed(fresh_state, seed=1, mesh=mesh)
  extra = {"step": 10, "data_seed": 3, "examples_seen": 1280}
  with checkpointing.Checkpointer(str(tmp_path)) as ckpt:
    ckpt.save(10, saved, extra)
    assert ckpt.latest_step() == 10
  # A new Checkpointer on the same workdir, as a resumed run would open it.
  with checkpointing.Checkpointer(str(tmp_path)) as ckpt:
    restored, restored_extra = ckpt.restore(fresh_state)
  assert restored_extra == extra
  assert isinstance(restored, TrainState)
  _assert_trees_equal(restored, saved)  # params, batch stats, both Adam states, step
  assert int(restored.step) == int(saved.step) != 0
  expected_sharding = sharding.replicated(mesh)
  for leaf in jax.tree.leaves(restored):
    assert isinstance(leaf, jax.Array)
    assert leaf.sharding.is_equivalent_to(expected_sharding, leaf.ndim), leaf.sharding
    assert len(leaf.sharding.device_set) == 8


def test_restore_chosen_step_and_onto_abstract_target(tmp_path, fresh_state, mesh):
  states = {s: _perturbed(fresh_state, seed=s, mesh=mesh) for s in (2, 4)}
  with checkpointing.Checkpointer(str(tmp_path)) as ckpt:
    for s, state in states.items():
      ckpt.save(s, state, {"step": s})
    abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), fresh_state
    )
    restored, extra = ckpt.restore(abstract, step=2)
    assert extra == {"step": 2}
    _assert_trees_equal(restored, states[2])
    with pytest.raises(FileNotFoundError, match="step 3"):
      ckpt.restore(fresh_state, step=3)


def test_max_to_keep(tmp_path, fresh_state):
  with checkpointing.Checkpointer(str(tmp_path), max_to_keep=2) as ckpt:
    for s in range(1, 6):
      ckpt.save(s, fresh_state, {"step": s})
    assert ckpt.all_steps() == [4, 5]
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4", "5"]


def test_empty_workdir(tmp_path, fresh_state):
  with checkpointing.Checkpointer(str(tmp_path)) as ckpt:
    assert ckpt.latest_step() is None
    assert ckpt.all_steps() == []
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
      ckpt.restore(fresh_state)


def test_uncommitted_checkpoint_is_ignored(tmp_path, fresh_state):
  """A save that crashed before orbax's final rename is not a step and is cleaned up."""
  with checkpointing.Checkpointer(str(tmp_path)) as ckpt:
    ckpt.save(2, fresh_state, {"step": 2})
  ckpt_dir = tmp_path / "checkpoints"
  partial = ckpt_dir / "4.orbax-checkpoint-tmp-1234567"  # orbax's in-progress name
  shutil.copytree(ckpt_dir / "2", partial)
  with checkpointing.Checkpointer(str(tmp_path)) as ckpt:
    assert ckpt.all_steps() == [2]
    assert ckpt.latest_step() == 2
    # The resumed run redoes step 4; orbax's start-up clean-up (in a background thread
    # that the next save waits for) has removed the partial directory by then.
    ckpt.save(4, fresh_state, {"step": 4})
    assert ckpt.all_steps() == [2, 4]
  assert not partial.exists()


def test_resave_same_step_is_noop_and_older_step_fails(tmp_path, fresh_state, mesh):
  first = _perturbed(fresh_state, seed=5, mesh=mesh)
  with checkpointing.Checkpointer(str(tmp_path)) as ckpt:
    ckpt.save(4, first, {"step": 4})
    ckpt.save(4, fresh_state, {"step": 4, "again": True})  # e.g. final save after resume
    restored, extra = ckpt.restore(fresh_state)
    assert extra == {"step": 4}
    _assert_trees_equal(restored, first)
    with pytest.raises(ValueError, match="older than the latest"):
      ckpt.save(2, fresh_state, {"step": 2})


def test_extra_must_be_json(tmp_path, fresh_state):
  with checkpointing.Checkpointer(str(tmp_path)) as ckpt:
    with pytest.raises(TypeError):
      ckpt.save(1, fresh_state, {"array": np.zeros(2)})
    assert ckpt.all_steps() == []


def test_config_round_trip(tmp_path):
  config = tiny.get_config()
  path = checkpointing.save_config(str(tmp_path), config)
  assert path == str(tmp_path / "config.json")
  loaded = checkpointing.load_config(str(tmp_path))

  # JSON has no tuples (crop_scale comes back as a list) and no placeholder types,
  # so compare both in JSON normal form.
  def normal(d):
    return json.dumps(d, sort_keys=True)

  assert normal(loaded.to_dict()) == normal(json.loads(config.to_json_best_effort()))
  assert loaded.model.feature_dim == 16 and loaded.train.batch_size == 16
  assert list(loaded.data.augment.crop_scale) == list(config.data.augment.crop_scale)
