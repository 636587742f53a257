"""The judge: a small supervised CNN per dataset, trained once and cached, whose logits and
penultimate features score generated images (docs/method.md#evaluation-protocols).

MNIST-family papers score samples with a classifier trained on the dataset itself, its own
"Inception": its logits say which class an image shows, its penultimate features give a
Fréchet distance and precision/recall. A kNN on raw pixels (``reconstruction``'s
consistency) is too weak for that: it cannot tell a faithful image from a plausible one.

Network (``JudgeNet``): per width ``w`` of ``widths`` a 3×3 conv (no bias) + BN + ReLU and
a 2×2 max-pool; flatten; a dense layer of ``hidden`` units + BN + ReLU (the *features*);
a dense layer to the classes (the *logits*). Inputs as the input pipeline gives them,
``(B, H, W, C)`` float32 in [-1, 1].

Recipe (``RECIPE``; keyword overrides): Adam with a cosine decay over ``epochs`` epochs of
shuffled batches of ``batch_size`` (the last partial batch of an epoch dropped, so one
shape compiles), a random shift of up to ``shift`` pixels (edge-padded) and, with
``flip``, a random horizontal flip; everything random drawn from ``seed``.

Cache (``load_or_train``): one file per judge in ``cache_dir``, named by the dataset name
and split the caller gives, the image shape, and a digest of everything that decides the
judge: ``VERSION`` (bumped whenever this module's training changes), the recipe, the
number of classes and a fingerprint of the training images and labels. Loading a cached
judge never retrains; a file that does not read back (corrupt, truncated, other shapes) is
retrained with a warning and replaced. Files are written to a temporary name and renamed,
so a reader never sees half a file. Without ``cache_dir``: ``$UCTRL_JAX_JUDGE_CACHE``,
else ``$XDG_CACHE_HOME/uctrl_jax/judges``, else ``~/.cache/uctrl_jax/judges`` — per user,
not per run, since a judge depends on the data only. An unwritable directory leaves the
judge trained but uncached (a warning).

    judge = load_or_train(x_train, y_train, num_classes, name="fashion_mnist|train",
                          x_test=x_test, y_test=y_test)
    judge.logits(x)    # (n, num_classes)
    judge.features(x)  # (n, hidden)
    judge.meta         # test_top1, train_seconds, recipe, key, ...
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import tempfile
import time
from typing import Any, Optional, Sequence

from absl import logging
from flax import serialization
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from uctrl_jax import eval_cache
from uctrl_jax.evaluators import common

# Bump when a change of this module changes the judge a recipe trains: cached ones retrain.
VERSION = 1
# Measured on Fashion-MNIST (docs/method.md#evaluation-protocols).
RECIPE = dict(
  widths=(32, 64), hidden=128, epochs=3, batch_size=128, lr=1e-3, shift=0, flip=False, seed=0
)
ENV_CACHE_DIR = "UCTRL_JAX_JUDGE_CACHE"
_SUFFIX = ".msgpack"


class JudgeNet(nn.Module):
  """``x (B, H, W, C) -> (logits (B, num_classes), features (B, hidden))``."""

  num_classes: int
  widths: Sequence[int] = RECIPE["widths"]
  hidden: int = RECIPE["hidden"]

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9)
    for width in self.widths:
      x = nn.relu(norm()(nn.Conv(width, (3, 3), padding="SAME", use_bias=False)(x)))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape(len(x), -1)
    features = nn.relu(norm()(nn.Dense(self.hidden, use_bias=False)(x)))
    return nn.Dense(self.num_classes)(features), features


@dataclasses.dataclass
class Judge:
  """A trained judge: ``net`` with its ``variables`` (params, batch_stats) and ``meta``.

  ``logits``/``features`` run in eval mode (running statistics) in batches of exactly
  ``eval_batch_size`` rows, the last padded, so the jitted pass compiles once for any ``n``.
  """

  net: JudgeNet
  variables: Any
  meta: dict
  eval_batch_size: int = 500

  @functools.cached_property
  def _apply(self):
    return jax.jit(lambda v, x: self.net.apply(v, x, train=False))

  def logits_and_features(self, x) -> tuple[np.ndarray, np.ndarray]:
    """``x (n, H, W, C)`` -> ``(logits (n, num_classes), features (n, hidden))`` float32."""
    x = np.asarray(x, np.float32)
    n, b = len(x), int(self.eval_batch_size)
    if n == 0:
      raise ValueError("judge: empty input")
    pad = -n % b  # a multiple of the batch: one compiled shape
    if pad:
      x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
    out = [self._apply(self.variables, x[i : i + b]) for i in range(0, len(x), b)]
    logits, features = (np.concatenate([np.asarray(o[j]) for o in out])[:n] for j in (0, 1))
    return logits, features

  def logits(self, x) -> np.ndarray:
    return self.logits_and_features(x)[0]

  def features(self, x) -> np.ndarray:
    return self.logits_and_features(x)[1]

  def predict(self, x) -> np.ndarray:
    """Judged classes ``(n,)`` int64."""
    return self.logits(x).argmax(1).astype(np.int64)


def recipe_of(**overrides) -> dict:
  """``RECIPE`` with ``overrides`` (unknown names are an error), JSON-normalised."""
  unknown = set(overrides) - set(RECIPE)
  if unknown:
    raise ValueError(f"unknown judge recipe options {sorted(unknown)}; known: {sorted(RECIPE)}")
  recipe = {**RECIPE, **{k: v for k, v in overrides.items() if v is not None}}
  recipe["widths"] = [int(w) for w in recipe["widths"]]
  return recipe


def _augment(x, key, shift: int, flip: bool):
  """Random shift by up to ``shift`` pixels (edge-padded) and optional horizontal flip."""
  n, h, w, _ = x.shape
  key_shift, key_flip = jax.random.split(key)
  if shift:
    padded = jnp.pad(x, ((0, 0), (shift, shift), (shift, shift), (0, 0)), mode="edge")
    offsets = jax.random.randint(key_shift, (n, 2), 0, 2 * shift + 1)
    crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, img.shape[-1]))  # noqa: E731
    x = jax.vmap(crop)(padded, offsets)
  if flip:
    x = jnp.where(jax.random.bernoulli(key_flip, 0.5, (n, 1, 1, 1)), x[:, :, ::-1], x)
  return x


def train_judge(
  x_train,
  y_train,
  num_classes: int,
  *,
  x_test=None,
  y_test=None,
  eval_batch_size: int = 500,
  **recipe,
) -> Judge:
  """A judge trained on ``x_train (n, H, W, C)`` in [-1, 1], ``y_train (n,)`` int.

  ``recipe``: overrides of ``RECIPE``. With ``x_test``/``y_test``, ``meta["test_top1"]``
  is its accuracy on them in % (None otherwise). ``eval_batch_size``: rows per inference call.
  """
  recipe = recipe_of(**recipe)
  x_train, y_train = np.asarray(x_train, np.float32), np.asarray(y_train, np.int64)
  n = len(x_train)
  if n == 0 or y_train.shape != (n,):
    raise ValueError(f"judge: need n ≥ 1 images and n labels; got {x_train.shape}, {y_train.shape}")
  start = time.time()
  net = JudgeNet(int(num_classes), tuple(recipe["widths"]), int(recipe["hidden"]))
  b = min(int(recipe["batch_size"]), n)
  steps_per_epoch = n // b
  total = max(1, int(recipe["epochs"]) * steps_per_epoch)
  key_init, key_data = jax.random.split(jax.random.key(int(recipe["seed"])))
  variables = net.init(key_init, jnp.zeros((1,) + x_train.shape[1:], jnp.float32))
  tx = optax.adam(optax.cosine_decay_schedule(float(recipe["lr"]), total))
  opt_state = tx.init(variables["params"])
  x_dev, y_dev = jnp.asarray(x_train), jnp.asarray(y_train)
  shift, flip = int(recipe["shift"]), bool(recipe["flip"])

  @jax.jit
  def step(variables, opt_state, idx, key):
    x = _augment(x_dev[idx], key, shift, flip)

    def loss_fn(params):
      (logits, _), updates = net.apply(
        {"params": params, "batch_stats": variables["batch_stats"]},
        x,
        train=True,
        mutable=["batch_stats"],
      )
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y_dev[idx]).mean()
      return loss, updates["batch_stats"]

    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
    updates, opt_state = tx.update(grads, opt_state, variables["params"])
    params = optax.apply_updates(variables["params"], updates)
    return {"params": params, "batch_stats": stats}, opt_state, loss

  done, loss = 0, jnp.nan
  while done < total:
    key_data, key_perm = jax.random.split(key_data)
    order = np.asarray(jax.random.permutation(key_perm, n))
    for i in range(min(steps_per_epoch, total - done)):
      key_data, key_aug = jax.random.split(key_data)
      variables, opt_state, loss = step(
        variables, opt_state, jnp.asarray(order[i * b : (i + 1) * b]), key_aug
      )
      done += 1
  judge = Judge(net, variables, {}, eval_batch_size)
  test_top1 = None
  if x_test is not None and y_test is not None:
    test_top1 = 100.0 * float(np.mean(judge.predict(x_test) == np.asarray(y_test)))
  judge.meta = dict(
    recipe=recipe,
    version=VERSION,
    num_classes=int(num_classes),
    image_shape=list(x_train.shape[1:]),
    num_train=n,
    steps=total,
    final_loss=float(loss),
    test_top1=test_top1,
    train_seconds=time.time() - start,
  )
  return judge


# ----------------------------------------------------------------------------
# The cache.
# ----------------------------------------------------------------------------


def default_cache_dir() -> str:
  """``$UCTRL_JAX_JUDGE_CACHE``, else the user's cache directory's ``uctrl_jax/judges``."""
  return eval_cache.user_cache_dir(ENV_CACHE_DIR, "judges")


def fingerprint(x, y) -> str:
  """A digest of the training images ``(n, ...)`` float32 and labels ``(n,)`` int64."""
  return common.digest(np.asarray(x, np.float32), np.asarray(y, np.int64))


def cache_path(
  cache_dir: str, name: str, image_shape: Sequence[int], num_classes: int, data: str, recipe: dict
) -> str:
  """The judge's file: ``<name>_<H>x<W>x<C>_<digest>.msgpack`` in ``cache_dir``.

  ``name``: the dataset and split, for people reading the directory; ``data``: the
  ``fingerprint`` of the training set; the digest covers every argument and ``VERSION``.
  """
  shape = [int(s) for s in image_shape]
  key = dict(
    name=name, shape=shape, num_classes=int(num_classes), data=data, recipe=recipe, version=VERSION
  )
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
  slug = re.sub(r"[^A-Za-z0-9.+-]+", "_", name).strip("_")[:80] or "data"
  return os.path.join(cache_dir, f"{slug}_{'x'.join(map(str, shape))}_{digest}{_SUFFIX}")


def save(path: str, judge: Judge) -> None:
  """Writes ``judge`` to ``path`` atomically (a temporary file in the same directory, renamed)."""
  payload = serialization.msgpack_serialize(
    {
      "variables": jax.tree_util.tree_map(np.asarray, judge.variables),
      "meta": json.dumps(judge.meta),
    }
  )
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp_", suffix=_SUFFIX)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(payload)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def load(
  path: str, image_shape: Sequence[int], num_classes: int, recipe: dict, eval_batch_size: int = 500
) -> Judge:
  """The judge of ``recipe`` (``recipe_of``'s form) in ``path``; raises ``ValueError`` when
  the file does not hold one (truncated, not msgpack, another recipe or version, other
  parameter shapes)."""
  with open(path, "rb") as f:
    try:
      restored = serialization.msgpack_restore(f.read())
      meta = json.loads(restored["meta"])
      saved = (meta["recipe"], meta["version"])
    except Exception as e:  # msgpack/JSON raise their own types on damage
      raise ValueError(f"{path} does not hold a judge: {e}") from e
  if saved != (recipe, VERSION):
    raise ValueError(f"{path} holds a judge of recipe {saved[0]}, version {saved[1]}")
  net = JudgeNet(int(num_classes), tuple(recipe["widths"]), int(recipe["hidden"]))
  template = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, *image_shape), jnp.float32))
  try:
    variables = serialization.from_state_dict(template, restored["variables"])
  except Exception as e:
    raise ValueError(f"{path} holds parameters of another judge: {e}") from e
  same = jax.tree_util.tree_map(lambda t, v: tuple(t.shape) == np.shape(v), template, variables)
  if not all(jax.tree_util.tree_leaves(same)):
    raise ValueError(f"{path} holds parameters of other shapes")
  variables = jax.tree_util.tree_map(lambda v: jnp.asarray(v, jnp.float32), variables)
  return Judge(net, variables, meta, eval_batch_size)


def load_or_train(
  x_train,
  y_train,
  num_classes: int,
  *,
  name: str = "data",
  cache_dir: Optional[str] = None,
  x_test=None,
  y_test=None,
  eval_batch_size: int = 500,
  **recipe,
) -> Judge:
  """The cached judge of this training set and recipe, trained (and cached) on a miss.

  Args:
    x_train, y_train: (n, H, W, C) float32 in [-1, 1], (n,) int: what it learns from.
    name: the dataset and split, readable part of the file name (e.g. "fashion_mnist|train").
    cache_dir: where judges live (None: ``default_cache_dir()``).
    x_test, y_test: scored after training (``meta["test_top1"]``), not part of the key.
    eval_batch_size: rows per inference call of the judge.
    recipe: overrides of ``RECIPE`` (part of the key).
  """
  recipe = recipe_of(**recipe)
  shape = np.shape(x_train)[1:]
  path = cache_path(
    cache_dir or default_cache_dir(),
    name,
    shape,
    num_classes,
    fingerprint(x_train, y_train),
    recipe,
  )
  if os.path.exists(path):
    try:
      judge = load(path, shape, num_classes, recipe, eval_batch_size)
      logging.info("judge loaded from %s (test top-1 %s %%)", path, judge.meta.get("test_top1"))
      return judge
    except (OSError, ValueError) as e:
      logging.warning("judge cache unreadable, training again: %s", e)
  judge = train_judge(
    x_train,
    y_train,
    num_classes,
    x_test=x_test,
    y_test=y_test,
    eval_batch_size=eval_batch_size,
    **recipe,
  )
  judge.meta.update(name=name, cache_path=path)
  logging.info(
    "judge trained in %.0f s (test top-1 %s %%)",
    judge.meta["train_seconds"],
    judge.meta["test_top1"],
  )
  try:
    save(path, judge)
    logging.info("judge cached in %s", path)
  except OSError as e:
    logging.warning("judge not cached (%s): the next evaluation trains it again", e)
  return judge
