"""Evaluators on synthetic data whose answers are known (docs/method.md#evaluation-protocols)."""

import math
import os
import sys

import jax
import ml_collections
import numpy as np
import pytest
import scipy.linalg

from configs import default
from uctrl_jax import config_checks
from uctrl_jax import evaluators
from uctrl_jax.evaluators import clustering
from uctrl_jax.evaluators import conditional_generation
from uctrl_jax.evaluators import fid
from uctrl_jax.evaluators import knn
from uctrl_jax.evaluators import linear_probe
from uctrl_jax.evaluators import nearest_subspace
from uctrl_jax.evaluators import precision_recall
from uctrl_jax.evaluators import reconstruction
from uctrl_jax.evaluators import structure

C, P = 4, 3  # classes, dimension of each class subspace
D = C * P + 4  # ambient dimension, with 4 directions no class uses


def subspace_features(n_per_class, seed):
  """Unit rows in orthogonal per-class subspaces (coordinate blocks), in a random rotation.

  Coefficients are |N(0, 1)|: each class is also a compact cone, so centroid methods
  (k-means) see it too. Returns Z (C·n, D) float32, y (C·n,) int.
  """
  rng = np.random.default_rng(seed)
  rotation, _ = np.linalg.qr(np.random.default_rng(123).normal(size=(D, D)))
  Z = np.zeros((C * n_per_class, D))
  for c in range(C):
    Z[c * n_per_class : (c + 1) * n_per_class, c * P : (c + 1) * P] = (
      np.abs(rng.normal(size=(n_per_class, P))) + 0.05
    )
  Z = (Z / np.linalg.norm(Z, axis=1, keepdims=True)) @ rotation.T
  y = np.repeat(np.arange(C), n_per_class)
  perm = rng.permutation(len(y))
  return Z[perm].astype(np.float32), y[perm]


@pytest.fixture(scope="module")
def features():
  (ztr, ytr), (zte, yte) = subspace_features(50, 0), subspace_features(25, 1)
  return ztr, ytr, zte, yte


def test_classifiers_are_perfect_on_class_subspaces(features):
  ztr, ytr, zte, yte = features
  assert knn.evaluate(ztr, ytr, zte, yte) == {"top1": 100.0}
  probe = linear_probe.evaluate(ztr, ytr, zte, yte, steps=300)
  assert probe["top1"] == 100.0 and probe["train_top1"] == 100.0
  # n_components > P: the numerically-zero directions must not join a class's basis.
  for r in (P, 10):
    assert nearest_subspace.evaluate(ztr, ytr, zte, yte, n_components=r) == {"top1": 100.0}


def test_classifiers_are_at_chance_on_shuffled_labels():
  rng = np.random.default_rng(0)
  ztr, zte = rng.normal(size=(400, D)), rng.normal(size=(400, D))
  ytr, yte = rng.integers(0, C, 400), rng.integers(0, C, 400)
  chance, tol = 100.0 / C, 10.0  # binomial std of 400 draws at 25% is 2.2 points
  assert abs(knn.evaluate(ztr, ytr, zte, yte)["top1"] - chance) < tol
  assert abs(linear_probe.evaluate(ztr, ytr, zte, yte, steps=200)["top1"] - chance) < tol
  assert abs(nearest_subspace.evaluate(ztr, ytr, zte, yte)["top1"] - chance) < tol
  scores = clustering.evaluate(zte, yte, num_restarts=2, mcr2_steps=20)
  assert scores["kmeans_nmi"] < 0.05 and scores["mcr2_nmi"] < 0.05


def test_weighted_knn_votes_by_exp_cosine_over_temperature():
  # One class-1 neighbour at cos 0.9 against two class-0 ones at cos 0.6:
  # exp(0.9/T) > 2 exp(0.6/T) for T = 0.07, but with T = 10 the pair wins.
  ref = np.array([[0.6, 0.8], [0.6, -0.8], [0.9, math.sqrt(1 - 0.81)]], np.float32)
  labels = np.array([0, 0, 1])
  q = np.array([[1.0, 0.0]], np.float32)
  assert knn.weighted_knn(ref, labels, q, k=3, temperature=0.07)[0] == 1
  assert knn.weighted_knn(ref, labels, q, k=3, temperature=10.0)[0] == 0
  assert knn.weighted_knn(ref, labels, q, k=1)[0] == 1


def test_clustering_recovers_class_subspaces(features):
  _, _, zte, yte = features
  scores = clustering.evaluate(zte, yte, num_restarts=4, mcr2_steps=50)
  assert scores["kmeans_acc"] == 100.0 and scores["mcr2_acc"] == 100.0
  np.testing.assert_allclose([scores["kmeans_nmi"], scores["mcr2_nmi"]], 1.0, atol=1e-12)
  assert scores["mcr2_delta_r"] > 0


def test_mcr2_clustering_raises_rate_reduction(features):
  _, _, zte, _ = features
  _, C_bad, _ = clustering.kmeans(zte, C, jax.random.key(0), num_iters=0, num_restarts=1)
  _, history = clustering.mcr2_cluster(zte, C_bad, steps=60, temperature=1.0)
  assert history[-1] > history[0]


def test_hungarian_accuracy_and_nmi_ignore_cluster_names():
  rng = np.random.default_rng(0)
  y = rng.integers(0, 5, 200)
  renamed = np.array([3, 0, 4, 1, 2])[y] + 10  # any ids, permuted
  assert clustering.hungarian_accuracy(y, renamed) == 100.0
  assert clustering.nmi(y, renamed) == pytest.approx(1.0)
  assert clustering.nmi(np.zeros(5, int), np.full(5, 7)) == 1.0  # one cluster each
  assert clustering.nmi(y, np.zeros_like(y)) == 0.0
  # One of four wrong: 75%.
  assert clustering.hungarian_accuracy([0, 0, 1, 1], [1, 1, 0, 1]) == 75.0


def test_nmi_matches_brute_force_on_a_tiny_example():
  y_true = [0, 0, 0, 1, 1, 2]
  y_pred = [1, 1, 0, 0, 2, 2]
  n = len(y_true)

  def H(labels):
    return -sum(labels.count(v) / n * math.log(labels.count(v) / n) for v in set(labels))

  joint = list(zip(y_true, y_pred))
  mi = H(y_true) + H(y_pred) - H(joint)  # I(X; Y) = H(X) + H(Y) − H(X, Y)
  expected = mi / ((H(y_true) + H(y_pred)) / 2)
  assert clustering.nmi(y_true, y_pred) == pytest.approx(expected, rel=1e-12)


def test_kmeans_finds_separated_blobs():
  rng = np.random.default_rng(0)
  centres = np.array([[5.0, 0.0], [-5.0, 0.0], [0.0, 5.0]])
  y = np.repeat(np.arange(3), 30)
  X = centres[y] + 0.1 * rng.normal(size=(90, 2))
  assign, C_, inertia = clustering.kmeans(X, 3, jax.random.key(0))
  assert clustering.hungarian_accuracy(y, assign) == 100.0
  np.testing.assert_allclose(np.sort(C_[:, 0]), [-5, 0, 5], atol=0.1)
  assert inertia == pytest.approx(np.sum((X - C_[assign]) ** 2), rel=1e-4)


def test_identity_reconstruction_is_perfect_and_as_consistent_as_real_images():
  rng = np.random.default_rng(0)
  templates = rng.uniform(-1, 1, (3, 6, 6, 1))
  y_train, y_test = rng.integers(0, 3, 60), rng.integers(0, 3, 30)
  noise = lambda n: 0.8 * rng.normal(size=(n, 6, 6, 1))  # noqa: E731
  x_train = np.clip(templates[y_train] + noise(60), -1, 1).astype(np.float32)
  x_test = np.clip(templates[y_test] + noise(30), -1, 1).astype(np.float32)
  scores = reconstruction.evaluate(x_train, y_train, x_test, y_test, x_test.copy())
  assert scores["mse"] == 0.0 and scores["psnr"] == float("inf")
  assert scores["consistency"] == scores["real_top1"] > 50.0
  noisy = reconstruction.mse_psnr(np.zeros((2, 2)), np.full((2, 2), 0.2))
  np.testing.assert_allclose([noisy["mse"], noisy["psnr"]], [0.04, 10 * math.log10(4 / 0.04)])


def test_frechet_distance_matches_scipy_sqrtm_of_the_covariance_product():
  rng = np.random.default_rng(0)
  for n, m, d in ((30, 40, 5), (200, 150, 12)):
    # float32 rows, as features come (the function reads them as float32).
    A = (rng.normal(size=(n, d)) @ rng.normal(size=(d, d))).astype(np.float32).astype(np.float64)
    B = (0.5 + rng.normal(size=(m, d)) @ rng.normal(size=(d, d))).astype(np.float32)
    B = B.astype(np.float64)
    cov_a, cov_b = np.cov(A, rowvar=False), np.cov(B, rowvar=False)
    covmean = np.real(scipy.linalg.sqrtm(cov_a @ cov_b))  # Heusel et al.'s reference form
    expected = (
      np.sum((A.mean(0) - B.mean(0)) ** 2)
      + np.trace(cov_a)
      + np.trace(cov_b)
      - 2 * np.trace(covmean)
    )
    assert fid.frechet_distance(A, B) == pytest.approx(expected, rel=1e-8)
  # Fewer rows than dimensions (singular covariances): still exact where the answer is known.
  A = rng.normal(size=(5, 20))
  assert fid.frechet_distance(A, A) == pytest.approx(0.0, abs=1e-9)
  assert fid.frechet_distance(A, A + 1.0) == pytest.approx(20.0, rel=1e-6)  # float32 rows


def _brute_force_precision_recall(real, fake, k):
  """Kynkäänniemi et al.'s definition, one pair of points at a time."""

  def radii(X):
    out = []
    for i in range(len(X)):
      dists = sorted(np.linalg.norm(X[i] - X[j]) for j in range(len(X)) if j != i)
      out.append(dists[k - 1])
    return out

  def share_inside(Q, X):
    r = radii(X)
    hits = [any(np.linalg.norm(q - X[j]) <= r[j] for j in range(len(X))) for q in Q]
    return sum(hits) / len(Q)

  return share_inside(fake, real), share_inside(real, fake)


@pytest.mark.parametrize("k", [1, 3])
def test_precision_recall_match_brute_force(k):
  rng = np.random.default_rng(k)
  real = rng.normal(size=(60, 3))
  # Half the generated points on the data, half off it; spread narrower than the data.
  fake = np.concatenate([0.5 * rng.normal(size=(20, 3)), 3.0 + rng.normal(size=(20, 3))])
  got = precision_recall.precision_recall(real, fake, k, chunk=16)
  expected = _brute_force_precision_recall(real, fake, k)
  assert (got["precision"], got["recall"]) == pytest.approx(expected, abs=1e-12)
  assert 0.2 < got["precision"] < 0.8 and 0.0 < got["recall"] < 1.0  # neither trivial
  same = precision_recall.precision_recall(real, real, k)
  assert same == {"precision": 1.0, "recall": 1.0}
  far = precision_recall.precision_recall(real, real + 100.0, k)
  assert far == {"precision": 0.0, "recall": 0.0}
  np.testing.assert_allclose(
    np.sqrt(precision_recall.knn_radii(real, k, chunk=7)),
    [sorted(np.linalg.norm(real - p, axis=1))[k] for p in real],
    rtol=1e-5,
  )


def test_frechet_distance():
  rng = np.random.default_rng(0)
  A = rng.normal(size=(500, 8))
  assert fid.frechet_distance(A, A) == pytest.approx(0.0, abs=1e-6)
  shift = np.arange(8) / 4.0
  # Same covariance: the distance is exactly the squared mean shift.
  assert fid.frechet_distance(A, A + shift) == pytest.approx(np.sum(shift**2), rel=1e-6)
  assert fid.frechet_distance(A, 2.0 * A) > 1.0
  assert fid.evaluate(A, A + shift) == {"frechet_z_zhat": pytest.approx(np.sum(shift**2), rel=1e-6)}


def test_conditional_generation_samples_unit_rows_near_each_cluster(features):
  ztr, ytr, _, _ = features
  drawn = conditional_generation.sample_features(
    ztr, C, jax.random.key(0), labels=ytr, num_components=P, num_samples=5
  )
  assert drawn.features.shape == (C * 5, D) and drawn.means.shape == (C, D)
  np.testing.assert_array_equal(drawn.cluster_ids, np.repeat(np.arange(C), 5))
  np.testing.assert_array_equal(drawn.assign, ytr)
  np.testing.assert_allclose(np.linalg.norm(drawn.features, axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(drawn.explained, 1.0, rtol=1e-6)  # P components span each class
  # Every sample stays in its cluster's subspace: it is nearest to it.
  bases = nearest_subspace.class_subspaces(ztr, ytr, C, P)
  np.testing.assert_array_equal(
    nearest_subspace.residuals(drawn.features, bases).argmin(1), drawn.cluster_ids
  )
  np.testing.assert_array_equal(nearest_subspace.residuals(drawn.means, bases).argmin(1), range(C))

  # Images are the features (D = 16 = 4 × 4 pixels); the identity decoder draws each
  # cluster's class, a collapsed one draws one image for all.
  images = ztr.reshape(-1, 4, 4, 1)
  identity = lambda z: np.asarray(z).reshape(-1, 4, 4, 1)  # noqa: E731
  grid, metrics = conditional_generation.evaluate(
    ztr, identity, num_clusters=C, num_components=P, num_samples=5, x_train=images, y_train=ytr
  )
  # 4 × 4 images enlarged 21× to 84 px tiles (image_grid.MIN_TILE_PX), 1 px padding.
  assert grid.shape == (C * 85 + 1, 6 * 85 + 1, 1) and grid.dtype == np.uint8
  assert metrics["explained_variance"] == pytest.approx(1.0)
  assert metrics["sample_consistency"] == 100.0
  collapsed = lambda z: np.broadcast_to(images[:1], (len(z), 4, 4, 1))  # noqa: E731
  _, metrics = conditional_generation.evaluate(
    ztr, collapsed, labels=ytr, num_components=P, num_samples=5, x_train=images, y_train=ytr
  )
  assert metrics["sample_consistency"] == 100.0 / C


def _synthetic_data():
  (ztr, ytr), (zte, yte) = subspace_features(20, 0), subspace_features(10, 1)
  # "Images" whose flattened pixels are the features: 16 = 4 × 4 × 1.
  return evaluators.EvalData(ztr.reshape(-1, 4, 4, 1), ytr, zte.reshape(-1, 4, 4, 1), yte, C)


def test_registry_runs_the_named_evaluators(tmp_path):
  config = default.get_config()
  config.evals.names = (
    "knn",
    "nearest_subspace",
    "clustering",
    "reconstruction",
    "conditional_generation",
    "fid",
  )
  config.evals.clustering.update(num_restarts=2, mcr2_steps=10)
  config.evals.conditional_generation.update(num_components=2, num_samples=3)
  built = evaluators.build(config)
  assert [e.name for e in built] == list(config.evals.names)
  flatten = lambda x: np.asarray(x).reshape(len(x), -1)  # noqa: E731
  unflatten = lambda z: np.asarray(z).reshape(-1, 4, 4, 1)  # noqa: E731
  metrics = evaluators.run_all(
    built, flatten, unflatten, _synthetic_data(), step=7, out_dir=str(tmp_path), batch_size=16
  )
  assert metrics["knn/top1"] == metrics["nearest_subspace/top1"] == 100.0
  assert metrics["clustering/kmeans_acc"] == 100.0
  assert metrics["reconstruction/psnr"] == float("inf")
  assert metrics["reconstruction/consistency"] == metrics["reconstruction/real_top1"] == 100.0
  assert metrics["fid/frechet_z_zhat"] == pytest.approx(0.0, abs=1e-6)
  assert "fid/fid" not in metrics  # no Inception weights: skipped
  assert all(isinstance(v, float) for v in metrics.values())
  assert {"eval_seconds/encode", "eval_seconds/knn"} <= set(metrics)
  assert os.path.isfile(tmp_path / "conditional_generation_step_0000007.png")

  # Without a decoder only the feature evaluators run.
  no_decoder = evaluators.run_all(built, flatten, None, _synthetic_data(), batch_size=16)
  assert not any(k.startswith(("reconstruction/", "fid/", "conditional")) for k in no_decoder)


def test_proportional_counts_and_the_kmeans_memo():
  # 7 × (50, 30, 20, 0) / 100 = (3.5, 2.1, 1.4, 0): floors (3, 2, 1, 0), the one left over to
  # the largest remainder.
  counts = conditional_generation.proportional_counts([50, 30, 20, 0], 7)
  np.testing.assert_array_equal(counts, [4, 2, 1, 0])
  Z = np.random.default_rng(0).normal(size=(60, 5)).astype(np.float32)
  key = jax.random.key(3)
  first = conditional_generation.kmeans_assign(Z, 3, key)
  np.testing.assert_array_equal(first, clustering.kmeans(Z, 3, key)[0])
  first[:] = -1  # the caller's copy: the memo keeps its own
  np.testing.assert_array_equal(
    conditional_generation.kmeans_assign(Z, 3, key), clustering.kmeans(Z, 3, key)[0]
  )


@pytest.mark.parametrize("use_labels", [True, False])
def test_grid_and_judge_draw_from_one_sampler(tmp_path, monkeypatch, use_labels):
  drawn = []
  original = conditional_generation.sample_features

  def spy(*args, **kwargs):
    drawn.append(original(*args, **kwargs))
    return drawn[-1]

  monkeypatch.setattr(conditional_generation, "sample_features", spy)
  config = default.get_config()
  config.evals.names = ("conditional_generation", "judge")
  config.evals.conditional_generation.update(use_labels=use_labels, num_components=2, num_samples=3)
  # The classes have equal sizes: C × 3 samples in proportion are 3 per cluster, as the grid's.
  config.evals.judge.update(cache_dir=str(tmp_path), num_samples=C * 3)
  config.evals.judge.recipe.update(widths=(4,), hidden=8, epochs=1)
  flatten = lambda x: np.asarray(x).reshape(len(x), -1)  # noqa: E731
  unflatten = lambda z: np.asarray(z).reshape(-1, 4, 4, 1)  # noqa: E731
  metrics = evaluators.run_all(
    evaluators.build(config), flatten, unflatten, _synthetic_data(), batch_size=16
  )
  assert "judge/cond_fd" in metrics
  grid, cond, uncond = drawn  # the grid's, then the judge's conditional and unconditional
  np.testing.assert_array_equal(cond.assign, grid.assign)
  np.testing.assert_array_equal(cond.means, grid.means)
  if use_labels:  # k-means may leave clusters of unequal sizes: then the counts differ
    np.testing.assert_array_equal(cond.features, grid.features)
  assert len(uncond.means) == 1 and len(uncond.features) == C * 3


@pytest.mark.parametrize("unlabelled", [("train", "test"), ("train",), ("test",)])
def test_registry_skips_what_needs_missing_labels_with_one_line(tmp_path, caplog, unlabelled):
  config = default.get_config()
  config.evals.names = (
    "knn",
    "linear_probe",
    "nearest_subspace",
    "clustering",
    "structure",
    "reconstruction",
    "conditional_generation",
    "fid",
  )
  config.evals.linear_probe.steps = 20
  config.evals.clustering.update(num_restarts=2, mcr2_steps=10)
  config.evals.conditional_generation.update(
    num_components=2, num_samples=3, num_clusters_without_labels=C
  )
  data = _synthetic_data()
  data = data._replace(
    y_train=None if "train" in unlabelled else data.y_train,
    y_test=None if "test" in unlabelled else data.y_test,
    num_classes=0 if len(unlabelled) == 2 else C,
  )
  flatten = lambda x: np.asarray(x).reshape(len(x), -1)  # noqa: E731
  unflatten = lambda z: np.asarray(z).reshape(-1, 4, 4, 1)  # noqa: E731
  with caplog.at_level("INFO", logger="absl"):
    metrics = evaluators.run_all(
      evaluators.build(config), flatten, unflatten, data, out_dir=str(tmp_path), batch_size=16
    )
  ran = {k.split("/")[0] for k in metrics if not k.startswith("eval_seconds")}
  # Clustering and structure score the test split only: its labels suffice.
  expected = {"reconstruction", "conditional_generation", "fid"} | (
    {"clustering", "structure"} if "test" not in unlabelled else set()
  )
  assert ran == expected
  assert metrics["reconstruction/psnr"] == float("inf")  # label-free metrics stay
  assert "reconstruction/consistency" not in metrics
  assert ("conditional_generation/sample_consistency" in metrics) == ("train" not in unlabelled)
  assert os.path.isfile(tmp_path / "conditional_generation.png")
  if "test" not in unlabelled:
    assert metrics["clustering/kmeans_acc"] == 100.0
  lines = [r.getMessage() for r in caplog.records if "no labels" in r.getMessage()]
  skipped = sorted(
    {"knn", "linear_probe", "nearest_subspace", "clustering", "structure"} - expected
  )
  assert len(lines) == 1, lines
  assert f"no labels in the evaluation's {' and '.join(unlabelled)} split" in lines[0]
  assert all(name in lines[0] for name in skipped) and "reconstruction" in lines[0]


_FAKE_EVALUATOR = """
import numpy as np

NEEDS_LABELS = ("test",)
OPTIONAL_LABELS = ("train",)


def defaults(config):
  return {"scale": float(config.loss.eps_sq)}


def run(context, *, scale=None, offset=0.0):
  out = {"norm": scale * float(np.linalg.norm(context.z_test, axis=1).mean()) + offset}
  if context.data.y_train is not None:
    out["train_classes"] = float(len(np.unique(context.data.y_train)))
  if context.dataset_key is not None:
    out["key_length"] = float(len(context.dataset_key))
  return out
"""


@pytest.fixture
def fake_evaluator(tmp_path, monkeypatch):
  """A new evaluator, ``fake_norm``: one file in a folder of the package's search path."""
  (tmp_path / "fake_norm.py").write_text(_FAKE_EVALUATOR)
  monkeypatch.setattr(evaluators, "__path__", list(evaluators.__path__) + [str(tmp_path)])
  yield "fake_norm"
  sys.modules.pop("uctrl_jax.evaluators.fake_norm", None)


def test_a_new_evaluator_is_one_new_file(fake_evaluator):
  assert fake_evaluator in evaluators.ALL and fake_evaluator in evaluators.CLASSIFIERS
  config = default.get_config()
  config.loss.eps_sq = 0.25
  config.evals.names = ("knn", fake_evaluator)  # no config.evals block: every default
  config.evals.during_training.names = (fake_evaluator,)
  config_checks.check_names(config)
  built = evaluators.build(config)
  data = _synthetic_data()
  flatten = lambda x: np.asarray(x).reshape(len(x), -1)  # noqa: E731
  metrics = evaluators.run_all(built, flatten, None, data, batch_size=16, dataset_key="toy")
  norms = np.linalg.norm(flatten(data.x_test), axis=1)
  assert metrics[f"{fake_evaluator}/norm"] == pytest.approx(0.25 * norms.mean(), rel=1e-6)
  assert metrics[f"{fake_evaluator}/train_classes"] == C
  assert metrics[f"{fake_evaluator}/key_length"] == 3.0
  assert metrics["knn/top1"] == 100.0
  # Its options, and what it declares about labels, come from the module alone.
  (ev,) = evaluators.build(config, names=(fake_evaluator,))
  assert (ev.needs_decoder, ev.needs_labels, ev.optional_labels) == (False, ("test",), ("train",))
  options = ml_collections.ConfigDict(dict(scale=2.0, offset=1.0))
  with config.unlocked():
    config.evals[fake_evaluator] = options
  metrics = evaluators.run_all(evaluators.build(config), flatten, None, data, batch_size=16)
  assert metrics[f"{fake_evaluator}/norm"] == pytest.approx(2.0 * norms.mean() + 1.0, rel=1e-6)
  keep, note = evaluators.without_labels(built, data._replace(y_train=None))
  assert [e.name for e in keep] == [fake_evaluator]
  assert note == (
    "no labels in the evaluation's train split: knn skipped (they score with labels); "
    f"{fake_evaluator} without label-based metrics"
  )
  keep, _ = evaluators.without_labels(built, data._replace(y_test=None))
  assert keep == []


def test_baselines_run_the_evaluators_that_need_no_decoder():
  assert evaluators.CLASSIFIERS == (
    "clustering",
    "knn",
    "linear_probe",
    "nearest_subspace",
    "structure",
  )
  built = evaluators.build(default.get_config())
  assert {e.name for e in built if e.features_only} == set(evaluators.CLASSIFIERS)
  config = default.get_config()
  config.evals.conditional_generation.use_labels = True
  (cond,) = evaluators.build(config, names=("conditional_generation",))
  assert cond.needs_labels == ("train",)  # its clusters are the training classes
  (clustering_ev,) = [e for e in built if e.name == "clustering"]
  assert clustering_ev.needs_labels == ("test",)


def test_reconstruction_without_labels_reports_mse_and_psnr_only():
  x = np.zeros((3, 2, 2, 1), np.float32)
  scores = reconstruction.evaluate(x, None, x, None, x + 0.2)
  assert scores.keys() == {"mse", "psnr"}
  np.testing.assert_allclose(scores["mse"], 0.04, rtol=1e-6)


def test_registry_rejects_unknown_names_and_options():
  with pytest.raises(ValueError, match="unknown evaluator 'nope'"):
    evaluators.build(default.get_config(), names=("nope",))
  config = default.get_config()
  config.evals.names = ("knn",)
  config.evals.knn = ml_collections.ConfigDict(dict(kk=3))
  (ev,) = evaluators.build(config)
  with pytest.raises(TypeError, match="evaluator 'knn'"):
    evaluators.run_all([ev], lambda x: x.reshape(len(x), -1), None, _synthetic_data())


def test_batched_pads_to_one_shape():
  shapes = set()

  def fn(x):
    shapes.add(x.shape)
    return x * 2

  out = evaluators.common.batched(fn, np.arange(10.0)[:, None], 4)
  np.testing.assert_array_equal(out[:, 0], np.arange(10.0) * 2)
  assert shapes == {(4, 1)}


def test_knn_handles_fewer_references_than_k():
  z = np.eye(8, dtype=np.float32)[:3]
  np.testing.assert_array_equal(knn.weighted_knn(z, np.array([0, 1, 1]), z, k=20), [0, 1, 1])


def test_structure_score_against_brute_force_and_known_answers(features):
  ztr, ytr, _, _ = features
  # Orthogonal class subspaces: no |cos| between classes, score infinite.
  exact = structure.evaluate(ztr, ytr)
  assert exact["between_abs_cos"] < 1e-5 and exact["score"] > 1e4
  rng = np.random.default_rng(0)
  Z, y = rng.normal(size=(301, 6)), rng.integers(0, 5, 301)
  U = Z / np.linalg.norm(Z, axis=1, keepdims=True)
  S = np.abs(U @ U.T)
  same, off_diagonal = y[:, None] == y[None], ~np.eye(len(y), dtype=bool)
  within, between = structure.abs_cos_within_between(Z, y, chunk_size=64)
  np.testing.assert_allclose(
    [within, between], [S[same & off_diagonal].mean(), S[~same].mean()], rtol=1e-6
  )
  # Labels unrelated to the features: no structure, score near 1.
  assert abs(structure.evaluate(Z, y)["score"] - 1.0) < 0.1
