"""Test session set-up: 8 simulated CPU devices, quiet TensorFlow, offline data.

The environment lines must run before jax is imported anywhere, which pytest
guarantees for conftest.py.
"""

import os
import socket

import pytest

# 8 host devices let the sharding tests run in-process (docs/method.md#closed-forms-the-code-uses:
# exact under sharding).
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"


def require_debian_fashion_mnist():
  """Skips without the Debian files, except in CI, where their absence is a failure."""
  if not os.path.isfile(DEBIAN_FASHION_MNIST):
    message = "needs `apt-get install dataset-fashion-mnist` (scripts/setup.sh installs it)"
    if os.environ.get("CI"):
      pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session", autouse=True)
def judge_cache(tmp_path_factory):
  """Judges trained by the tests (evaluations with default names) and the baselines' metrics
  are cached in the session's temporary directory, never in the user's
  (uctrl_jax/judge_network.py, uctrl_jax/eval_cache.py), also by subprocesses."""
  path = str(tmp_path_factory.mktemp("judges"))
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("UCTRL_JAX_JUDGE_CACHE", path)
    mp.setenv("UCTRL_JAX_BASELINE_CACHE", str(tmp_path_factory.mktemp("baselines")))
    yield path


def _refuse_network(*args, **kwargs):
  raise AssertionError(f"network access attempted: {args}")


def _block_network(mp: pytest.MonkeyPatch) -> None:
  mp.setattr(socket.socket, "connect", _refuse_network)
  mp.setattr(socket, "getaddrinfo", _refuse_network)


@pytest.fixture
def debian_fashion_mnist():
  """The Debian Fashion-MNIST files are installed (skip, or fail in CI, otherwise)."""
  require_debian_fashion_mnist()


@pytest.fixture
def no_network(monkeypatch):
  """Any socket connection or DNS lookup fails the test."""
  _block_network(monkeypatch)


@pytest.fixture(scope="session")
def fashion_mnist_data_dir(tmp_path_factory):
  """tfds data dir with the real Fashion-MNIST, prepared once per session, offline."""
  require_debian_fashion_mnist()
  from uctrl_jax import datasets  # after the environment above is set

  data_dir = tmp_path_factory.getbasetemp() / "tfds_fashion_mnist"
  with pytest.MonkeyPatch.context() as mp:  # offline means no socket at all
    _block_network(mp)
    datasets.open_dataset("fashion_mnist", data_dir=str(data_dir))
  return str(data_dir)


@pytest.fixture(scope="session")
def random_npz(tmp_path_factory):
  """``random_npz(image_shape)``: the path of an ``npz:`` file (written once per shape) of
  64 random uint8 images ``(64, *image_shape)`` and labels in [0, 10), seed 0."""
  import numpy as np  # pylint: disable=import-outside-toplevel

  paths = {}

  def make(image_shape):
    image_shape = tuple(image_shape)
    if image_shape not in paths:
      rng = np.random.default_rng(0)
      path = tmp_path_factory.mktemp("npz") / "data.npz"
      np.savez(
        path, x=rng.integers(0, 256, (64, *image_shape), dtype=np.uint8), y=rng.integers(0, 10, 64)
      )
      paths[image_shape] = str(path)
    return paths[image_shape]

  return make


MOCK_EXAMPLES = 48


def write_image_folder(root, shape=(28, 28), per_class=(6, 3), seed=0):
  """A labelled ``image_folder:`` of random grayscale PNGs ``root/{train,test}/{a,b}/NN.png``
  (``per_class``: images per class in train, test); returns ``root``."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(seed)
  for split, n in zip(("train", "test"), per_class):
    for label in ("a", "b"):
      folder = root / split / label
      folder.mkdir(parents=True)
      for i in range(n):
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:02d}.png")
  return root


@pytest.fixture(scope="session")
def make_image_folder():
  """``write_image_folder`` as a fixture."""
  return write_image_folder


@pytest.fixture(scope="session")
def tiny_folder_run(tmp_path_factory):
  """``(workdir, folder)``: configs/tiny.py trained 2 steps in-process on a labelled image
  folder (``write_image_folder``), no in-training evaluation. Shared: only read it."""
  from configs import tiny  # pylint: disable=import-outside-toplevel
  from uctrl_jax import train  # pylint: disable=import-outside-toplevel

  base = tmp_path_factory.mktemp("tiny_folder_run")
  folder = write_image_folder(base / "images")
  config = tiny.get_config()
  config.data.name = f"image_folder:{folder}"
  config.train.num_steps = 2
  config.train.eval_every = 0
  workdir = str(base / "run")
  train.train_and_evaluate(config, workdir)
  return workdir, str(folder)


@pytest.fixture(scope="session")
def mock_metadata_dir(tmp_path_factory):
  """cifar10 metadata saying each split has MOCK_EXAMPLES examples."""
  import tensorflow_datasets as tfds  # heavy: only where needed

  data_dir = tmp_path_factory.mktemp("mock_tfds")
  builder = tfds.builder("cifar10", data_dir=str(data_dir))
  builder.info.set_splits(
    tfds.core.SplitDict(
      [
        tfds.core.SplitInfo(name=s, shard_lengths=[MOCK_EXAMPLES], num_bytes=0)
        for s in ("train", "test")
      ]
    )
  )
  builder.data_path.mkdir(parents=True)
  builder.info.write_to_directory(builder.data_path)
  return str(data_dir)


@pytest.fixture
def mock_cifar10(mock_metadata_dir, monkeypatch):
  """Inside: tfds yields MOCK_EXAMPLES random cifar10 examples per split.

  The metadata agrees with that count, so the pipeline sees a prepared
  dataset of that size.
  """
  import tensorflow_datasets as tfds
  from uctrl_jax import checkpointing

  # While the mock's `as_dataset` runs, tfds swaps a fake filesystem in for etils.epath,
  # process-wide. orbax's start-up cleanup of a checkpoint directory lists it through
  # epath in a background thread and can run into that window (FileNotFoundError under
  # /tmp/tmp…/, once in a CI run of 2026-11-29). Under the mock only, the cleanup is
  # awaited before the Checkpointer is handed out, so no mocked read can overlap it.
  original_init = checkpointing.Checkpointer.__init__

  def init_then_await_cleanup(self, *args, **kwargs):
    original_init(self, *args, **kwargs)
    self._manager._maybe_await_cleanup_tmp_directory()  # pylint: disable=protected-access

  monkeypatch.setattr(checkpointing.Checkpointer, "__init__", init_then_await_cleanup)
  with tfds.testing.mock_data(
    num_examples=MOCK_EXAMPLES, data_dir=mock_metadata_dir, policy=tfds.testing.MockPolicy.USE_FILES
  ):
    yield


_BLOCKER = '''"""Written by tests/conftest.py: {modules} look not installed.

Every finder on sys.meta_path is wrapped so that it does not find them: imports raise
ModuleNotFoundError and importlib.util.find_spec answers None, as without the packages.
"""
import sys

_BLOCKED = {modules!r}


class _Hiding:
  def __init__(self, finder):
    self._finder = finder

  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in _BLOCKED:
      return None
    return self._finder.find_spec(name, path, target)

  def __getattr__(self, attr):
    return getattr(self._finder, attr)


sys.meta_path[:] = [_Hiding(finder) for finder in sys.meta_path]
'''


@pytest.fixture
def env_without(tmp_path):
  """``env_without(*modules)``: an environment for subprocesses in which the top-level
  ``modules`` look not installed (imports raise ModuleNotFoundError, find_spec says None).

  A ``sitecustomize.py`` on ``PYTHONPATH`` installs the blocker at start-up, so the
  subprocesses' own children are blocked too.
  """

  def make(*modules):
    site = tmp_path / "blocked_site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_BLOCKER.format(modules=tuple(sorted(modules))))
    path = os.pathsep.join([str(site)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    return dict(os.environ, PYTHONPATH=path)  # conftest's CPU-only settings included

  return make
