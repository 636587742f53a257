"""Generation scored by the dataset's judge network (``uctrl_jax/judge_network.py``).

Protocol (docs/method.md#evaluation-protocols): a small CNN classifier trained once on the
labelled training split and cached labels images (its logits) and embeds them (its
penultimate features). Against the real test images, four sets of ``num_samples`` images
(None: as many as test images) are compared in those features:

- ``real``: real training images (a random subset): what a perfect generator scores with
  this many samples — the floor of the FDs, the ceiling of precision and recall;
- ``recon``: the reconstructions ``g(f(x_test))`` (all of them);
- ``uncond``: decoded samples of the sampler of conditional generation with one cluster
  over all training features (``conditional_generation.sample_features``, K = 1);
- ``cond``: decoded samples of that sampler with its clusters (k-means, or the labels with
  ``use_labels``), in proportion to the clusters' sizes, with the grid's seed;
- ``prior`` (a VAE only, ``prior=True``): decoded draws from the VAE's prior ``N(0, I)``
  (``objectives.prior_sample``), the VAE's own way to generate.

Metrics (``judge/...``; accuracies in %, precision and recall in [0, 1]):

- ``top1``: the judge's accuracy on the real test images (the ceiling of the consistencies);
- ``<set>_fd``, ``<set>_precision``, ``<set>_recall``: Fréchet distance
  (``fid.frechet_distance``) and precision/recall with k = ``k``
  (``precision_recall``) of the set's judge features against the test images';
- ``recon_consistency``: % of reconstructions judged as their input's class;
- ``cond_purity``: % of conditional samples judged as their cluster's most frequent judged
  class (clusters that decode to one kind of thing score high; needs no labels);
- ``cond_consistency``: % of conditional samples judged as their cluster's class, the most
  frequent label among its training members (the ``sample_consistency`` of
  ``conditional_generation`` with the judge in place of the pixel kNN).

Without test labels, ``top1`` and ``recon_consistency`` are left out; without training
labels the evaluator does not run (no judge can be trained).
"""

from __future__ import annotations

from typing import Optional

import jax
import numpy as np

from uctrl_jax import judge_network
from uctrl_jax import objectives
from uctrl_jax.evaluators import common
from uctrl_jax.evaluators import conditional_generation as cg
from uctrl_jax.evaluators import fid
from uctrl_jax.evaluators import precision_recall as pr

# What the registry needs (uctrl_jax/evaluators/__init__.py): the decoder; the training
# labels to train the judge; the test labels for ``top1`` and ``recon_consistency``.
NEEDS_DECODER = True
NEEDS_LABELS = ("train",)
OPTIONAL_LABELS = ("test",)


def defaults(config) -> dict:
  """``name``, the judge's cache file's readable part (the dataset and the evaluation's
  training split), and the conditional sampler's settings of
  ``config.evals.conditional_generation``, so that the judged samples are the grid's."""
  sampler = config.evals.conditional_generation
  limit = config.evals.max_train_examples
  return dict(
    name=f"{config.data.name}|{config.evals.train_split}" + (f"|first{limit}" if limit else ""),
    **{k: sampler[k] for k in ("num_clusters", "num_components", "seed", "use_labels")},
    prior=objectives.has_prior(config),  # a VAE's samples from N(0, I) are scored too
  )


def purity(judged, cluster_ids) -> float:
  """% of ``judged: (N,)`` classes equal to their cluster's most frequent judged class
  (clusters ``cluster_ids: (N,)``)."""
  judged, cluster_ids = np.asarray(judged), np.asarray(cluster_ids)
  agree = sum(np.bincount(judged[cluster_ids == c]).max() for c in np.unique(cluster_ids))
  return 100.0 * float(agree) / len(judged)


def compare(real_features, fake_features, k: int = 3, real_radii=None) -> dict[str, float]:
  """``{"fd", "precision", "recall"}`` of ``fake_features: (m, D)`` against ``real_features: (n, D)``."""
  return {
    "fd": fid.frechet_distance(real_features, fake_features),
    **pr.precision_recall(real_features, fake_features, k, real_radii=real_radii),
  }


def draw(z_train, num_clusters: int, num_samples: int, key, **sampler) -> cg.Samples:
  """The judged samples: ``num_samples`` features in proportion to the clusters' sizes."""
  return cg.sample_features(
    z_train, num_clusters, key, num_samples=num_samples, proportional=True, **sampler
  )


def run(
  context,
  *,
  name: str = "data",
  cache_dir: Optional[str] = None,
  num_samples: Optional[int] = None,
  k: int = 3,
  num_clusters: Optional[int] = None,
  num_components: int = 8,
  seed: int = 0,
  use_labels: bool = False,
  prior: bool = False,
  recipe: Optional[dict] = None,
) -> dict[str, float]:
  """Metrics of the module docstring for an ``evaluators.Context`` with a decoder.

  Args:
    context: reads ``data`` (train images and labels, test images and labels, classes),
      ``decode``, ``z_train``, ``xhat_test`` and ``batch_size``.
    name: the dataset and training split, the readable part of the judge's cache file.
    cache_dir: where judges are cached (None: ``judge_network.default_cache_dir()``).
    num_samples: images per compared set (None: the number of test images).
    k: the neighbourhood of precision/recall (Kynkäänniemi et al.: 3).
    num_clusters, num_components, seed, use_labels: the conditional sampler's, as
      ``config.evals.conditional_generation`` (None clusters: the number of classes).
    prior: also score decoded draws from ``N(0, I)`` (a VAE's prior) as ``prior_*``.
    recipe: overrides of ``judge_network.RECIPE``.
  """
  data = context.data
  judge = judge_network.load_or_train(
    data.x_train,
    data.y_train,
    data.num_classes,
    name=name,
    cache_dir=cache_dir,
    x_test=data.x_test,
    y_test=data.y_test,
    eval_batch_size=context.batch_size,
    **(recipe or {}),
  )
  n = int(num_samples or len(data.x_test))
  key_cond = jax.random.key(seed)  # conditional_generation's grid's key: the same clusters
  key_real, key_uncond, key_prior = (jax.random.fold_in(key_cond, i) for i in (1, 2, 3))
  y_train = common.as_labels("y_train", data.y_train, len(data.x_train))
  sampler = dict(num_components=num_components, labels=y_train if use_labels else None)
  cond = draw(context.z_train, int(num_clusters or data.num_classes), n, key_cond, **sampler)
  uncond = draw(context.z_train, 1, n, key_uncond, num_components=num_components)
  decode = lambda Z: common.batched(context.decode, Z, context.batch_size)  # noqa: E731
  subset = np.sort(np.asarray(jax.random.permutation(key_real, len(data.x_train)))[:n])
  images = {
    "real": data.x_train[subset],
    "recon": context.xhat_test,
    "uncond": decode(uncond.features),
    "cond": decode(cond.features),
  }
  if prior:
    d = context.z_train.shape[1]
    images["prior"] = decode(np.asarray(objectives.prior_sample(key_prior, n, d)))
  test_logits, test_features = judge.logits_and_features(data.x_test)
  radii = pr.knn_radii(test_features, k)
  out, judged = {}, {}
  for set_name, x in images.items():
    logits, features = judge.logits_and_features(x)
    judged[set_name] = logits.argmax(1)
    for metric, value in compare(test_features, features, k, radii).items():
      out[f"{set_name}_{metric}"] = value
  if data.y_test is not None:
    y_test = common.as_labels("y_test", data.y_test, len(data.x_test))
    out["top1"] = common.accuracy(y_test, test_logits.argmax(1))
    out["recon_consistency"] = common.accuracy(y_test, judged["recon"])
  out["cond_purity"] = purity(judged["cond"], cond.cluster_ids)
  cluster_class = cg.majority_labels(cond.assign, y_train, len(cond.means))
  out["cond_consistency"] = common.accuracy(cluster_class[cond.cluster_ids], judged["cond"])
  return out
