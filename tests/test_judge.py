"""The judge network (uctrl_jax/judge_network.py): it learns, its cache, and its evaluator
(uctrl_jax/evaluators/judge.py) on tiny data whose answers are known."""

import os

import jax
import numpy as np
import pytest

from configs import default
from uctrl_jax import evaluators
from uctrl_jax import judge_network
from uctrl_jax.evaluators import judge as judge_eval

# Tiny and fast: one conv block of 4 channels, 16 features.
TINY = dict(widths=(4,), hidden=16, epochs=8, batch_size=32, lr=1e-2)


def bands(n, seed, size=8, classes=3):
  """``(n, size, size, 1)`` images in [-1, 1] whose class ``c`` lights rows of band ``c``, and
  the classes (n,)."""
  rng = np.random.default_rng(seed)
  y = np.arange(n) % classes
  x = rng.normal(-0.6, 0.2, (n, size, size, 1))
  rows = size // classes
  for c in range(classes):
    x[y == c, c * rows : (c + 1) * rows] += 1.2
  return np.clip(x, -1, 1).astype(np.float32), y


@pytest.fixture(scope="module")
def data():
  return bands(96, 0) + bands(48, 1)


@pytest.fixture(scope="module")
def trained(data):
  x, y, xt, yt = data
  return judge_network.train_judge(x, y, 3, x_test=xt, y_test=yt, eval_batch_size=20, **TINY)


def test_judge_learns_separable_classes(trained, data):
  _, _, xt, yt = data
  assert trained.meta["test_top1"] >= 95.0  # chance: 33%
  np.testing.assert_array_equal(trained.predict(xt) == yt, np.ones(len(yt), bool))
  assert trained.meta["num_train"] == 96 and trained.meta["steps"] == 8 * 3


def test_judge_passes_any_batch_size_through_one_compiled_shape(trained, data):
  _, _, xt, _ = data
  logits, features = trained.logits_and_features(xt)  # 48 rows: batches of 20, padded
  assert logits.shape == (48, 3) and features.shape == (48, 16)
  for n in (1, 19, 20, 21):
    np.testing.assert_allclose(trained.logits(xt[:n]), logits[:n], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(trained.features(xt[:n]), features[:n], rtol=1e-5, atol=1e-5)
  assert trained._apply._cache_size() == 1  # pylint: disable=protected-access
  assert np.all(features >= 0)  # after a ReLU


def test_training_is_deterministic_given_the_seed(trained, data):
  x, y, _, _ = data
  again = judge_network.train_judge(x, y, 3, eval_batch_size=20, **TINY)
  other = judge_network.train_judge(x, y, 3, eval_batch_size=20, **{**TINY, "seed": 1})
  leaves = jax.tree_util.tree_leaves
  for a, b in zip(leaves(trained.variables), leaves(again.variables)):
    np.testing.assert_array_equal(a, b)
  assert any(
    not np.array_equal(a, b) for a, b in zip(leaves(trained.variables), leaves(other.variables))
  )
  with pytest.raises(ValueError, match="unknown judge recipe options"):
    judge_network.train_judge(x, y, 3, epoch=1)


@pytest.fixture
def count_training(monkeypatch):
  calls = []
  original = judge_network.train_judge

  def counted(*args, **kwargs):
    calls.append(kwargs)
    return original(*args, **kwargs)

  monkeypatch.setattr(judge_network, "train_judge", counted)
  return calls


def test_cache_loads_without_training_and_keys_on_data_split_shape_recipe(
  tmp_path, data, count_training
):
  x, y, xt, yt = data
  kw = dict(cache_dir=str(tmp_path), x_test=xt, y_test=yt, eval_batch_size=20, **TINY)
  first = judge_network.load_or_train(x, y, 3, name="bands|train", **kw)
  (path,) = [p for p in os.listdir(tmp_path)]  # one file, no temporary left behind
  assert path.startswith("bands_train_8x8x1_") and path.endswith(".msgpack")
  second = judge_network.load_or_train(x, y, 3, name="bands|train", **kw)
  assert len(count_training) == 1  # loaded, not retrained
  np.testing.assert_array_equal(second.logits(xt), first.logits(xt))
  assert second.meta["test_top1"] == first.meta["test_top1"]
  assert second.meta["recipe"] == judge_network.recipe_of(**TINY)

  # Another split name, other training data, another shape, another recipe: other judges.
  judge_network.load_or_train(x, y, 3, name="bands|train[:50%]", **kw)
  judge_network.load_or_train(x[:90], y[:90], 3, name="bands|train", **kw)
  x12, y12 = bands(96, 0, size=12)
  judge_network.load_or_train(x12, y12, 3, name="bands|train", **{**kw, "x_test": None})
  judge_network.load_or_train(x, y, 3, name="bands|train", **{**kw, "epochs": 2})
  assert len(count_training) == 5 and len(os.listdir(tmp_path)) == 5
  fp = judge_network.fingerprint(x, y)
  paths = {
    judge_network.cache_path("d", "n", (8, 8, 1), 3, fp, judge_network.recipe_of()),
    judge_network.cache_path("d", "m", (8, 8, 1), 3, fp, judge_network.recipe_of()),
    judge_network.cache_path("d", "n", (8, 8, 3), 3, fp, judge_network.recipe_of()),
    judge_network.cache_path("d", "n", (8, 8, 1), 4, fp, judge_network.recipe_of()),
    judge_network.cache_path(
      "d", "n", (8, 8, 1), 3, judge_network.fingerprint(x, y[::-1]), judge_network.recipe_of()
    ),
    judge_network.cache_path("d", "n", (8, 8, 1), 3, fp, judge_network.recipe_of(shift=1)),
  }
  assert len(paths) == 6


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other_shapes"])
def test_unreadable_cache_file_is_retrained_with_a_warning(
  tmp_path, data, count_training, caplog, damage
):
  x, y, _, _ = data
  kw = dict(name="bands|train", cache_dir=str(tmp_path), eval_batch_size=20, **TINY)
  trained = judge_network.load_or_train(x, y, 3, **kw)
  path = trained.meta["cache_path"]
  with open(path, "rb") as f:
    payload = f.read()
  if damage == "garbage":
    payload = b"not a judge"
  elif damage == "truncated":
    payload = payload[: len(payload) // 2]
  else:  # a judge of another recipe saved under this key
    judge_network.save(
      path, judge_network.train_judge(x, y, 3, **{**TINY, "hidden": 8, "epochs": 1})
    )
    with open(path, "rb") as f:
      payload = f.read()
  with open(path, "wb") as f:
    f.write(payload)
  with caplog.at_level("WARNING", logger="absl"):
    again = judge_network.load_or_train(x, y, 3, **kw)
  assert len(count_training) == 2 + (damage == "other_shapes")
  assert any("judge cache unreadable, training again" in r.getMessage() for r in caplog.records)
  np.testing.assert_array_equal(again.logits(x), trained.logits(x))  # same seed, same judge
  judge_network.load(path, (8, 8, 1), 3, judge_network.recipe_of(**TINY))  # replaced by a good file


def test_unwritable_cache_dir_still_gives_a_judge(tmp_path, data, caplog):
  x, y, _, _ = data
  blocker = tmp_path / "file"
  blocker.write_text("")  # a file where the directory should be
  with caplog.at_level("WARNING", logger="absl"):
    got = judge_network.load_or_train(
      x, y, 3, cache_dir=str(blocker / "judges"), **{**TINY, "epochs": 1}
    )
  assert got.logits(x[:2]).shape == (2, 3)
  assert any("judge not cached" in r.getMessage() for r in caplog.records)


def test_default_cache_dir_follows_the_environment(monkeypatch):
  monkeypatch.setenv(judge_network.ENV_CACHE_DIR, "/somewhere/judges")
  assert judge_network.default_cache_dir() == "/somewhere/judges"
  monkeypatch.delenv(judge_network.ENV_CACHE_DIR)
  monkeypatch.setenv("XDG_CACHE_HOME", "/xdg")
  assert judge_network.default_cache_dir() == "/xdg/uctrl_jax/judges"


def test_config_recipe_is_the_module_recipe():
  recipe = default.get_config().evals.judge.recipe.to_dict()
  assert judge_network.recipe_of(**recipe) == judge_network.recipe_of()


def test_purity_counts_each_clusters_majority():
  judged = np.array([0, 0, 1, 2, 2, 2, 1])
  clusters = np.array([0, 0, 0, 1, 1, 1, 1])
  # Cluster 0: 2 of 3 agree on class 0; cluster 1: 3 of 4 on class 2.
  assert judge_eval.purity(judged, clusters) == pytest.approx(100.0 * 5 / 7)
  assert judge_eval.purity(np.zeros(5, int), np.arange(5)) == 100.0


def _context(data, tmp_path, **judge_options):
  """The registry's judge on images whose 'features' are their pixels (identity loop)."""
  x, y, xt, yt = data
  config = default.get_config()
  config.evals.names = ("judge",)
  config.evals.conditional_generation.update(num_components=2)
  config.evals.judge.update(cache_dir=str(tmp_path), **judge_options)
  config.evals.judge.recipe.update(**TINY)
  (built,) = evaluators.build(config)
  flatten = lambda v: np.asarray(v).reshape(len(v), -1)  # noqa: E731
  unflatten = lambda z: np.asarray(z).reshape(-1, 8, 8, 1)  # noqa: E731
  context = evaluators.Context(evaluators.EvalData(x, y, xt, yt, 3), flatten, unflatten, 20)
  return built, context


def test_evaluator_metrics_on_an_identity_loop(tmp_path, data):
  built, context = _context(data, tmp_path)
  metrics = evaluators.run_context([built], context)
  scores = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("judge/")}
  sets = ("real", "recon", "uncond", "cond")
  assert set(scores) == {"top1", "recon_consistency", "cond_purity", "cond_consistency"} | {
    f"{s}_{m}" for s in sets for m in ("fd", "precision", "recall")
  }
  # x̂ = x: the reconstructions are the test images themselves.
  assert scores["recon_fd"] == pytest.approx(0.0, abs=1e-6)
  assert scores["recon_precision"] == scores["recon_recall"] == 1.0
  assert scores["recon_consistency"] == scores["top1"] == 100.0
  for s in sets:
    assert scores[f"{s}_fd"] >= 0 and 0 <= scores[f"{s}_precision"] <= 1
    assert 0 <= scores[f"{s}_recall"] <= 1
  for name in ("cond_purity", "cond_consistency"):
    assert 0 <= scores[name] <= 100
  assert scores["cond_purity"] >= scores["cond_consistency"]  # majority judged ≥ any class
  # Real training images resemble the test images more than one Gaussian over all features.
  assert scores["real_fd"] < scores["uncond_fd"]


def test_evaluator_without_test_labels_drops_label_metrics(tmp_path, data):
  built, context = _context(data, tmp_path, num_samples=30)
  context.data = context.data._replace(y_test=None)
  metrics = evaluators.run_context([built], context)
  assert "judge/top1" not in metrics and "judge/recon_consistency" not in metrics
  assert "judge/cond_purity" in metrics and "judge/recon_fd" in metrics
  without_train = context.data._replace(y_train=None)
  assert evaluators.without_labels([built], without_train)[0] == []  # cannot train: skipped


def test_a_vae_run_also_scores_draws_from_its_prior(tmp_path, data):
  """``loss.mode = "vae"``: the judge also decodes ``n`` draws of ``N(0, I)`` (prior_*)."""
  x, y, xt, yt = data
  config = default.get_config()
  config.loss.mode = "vae"
  config.evals.names = ("judge",)
  config.evals.conditional_generation.update(num_components=2)
  config.evals.judge.update(cache_dir=str(tmp_path), num_samples=40)
  config.evals.judge.recipe.update(**TINY)
  (built,) = evaluators.build(config)
  decoded = []

  def decode(z):
    decoded.append(np.asarray(z))
    return np.tanh(np.asarray(z)).reshape(-1, 8, 8, 1)

  flatten = lambda v: np.asarray(v).reshape(len(v), -1)  # noqa: E731
  context = evaluators.Context(evaluators.EvalData(x, y, xt, yt, 3), flatten, decode, 20)
  metrics = evaluators.run_context([built], context)
  assert {f"judge/prior_{m}" for m in ("fd", "precision", "recall")} <= set(metrics)
  # The last 40 rows decoded are the prior's draws: N(0, I) in the features' 64 dimensions.
  draws = np.concatenate(decoded)[-40:]
  assert draws.shape == (40, 64)
  assert abs(draws.mean()) < 0.1 and abs(draws.std() - 1) < 0.1
  config.loss.mode = "uctrl"
  (built,) = evaluators.build(config)
  assert not any("prior" in k for k in evaluators.run_context([built], context))


@pytest.mark.slow
def test_fashion_mnist_judge_reaches_91_percent(fashion_mnist_data_dir):
  """The default recipe on the full Fashion-MNIST split (docs/method.md: 92.5%, minutes)."""
  from uctrl_jax import evaluate  # pylint: disable=import-outside-toplevel  (TensorFlow)

  config = default.get_config()
  config.data.data_dir = fashion_mnist_data_dir
  x, y, xt, yt, classes = evaluate.load_data(config)
  trained = judge_network.train_judge(x, y, classes, x_test=xt, y_test=yt)
  assert trained.meta["test_top1"] >= 91.0, trained.meta
