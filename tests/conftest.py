"""Test session set-up: 8 simulated CPU devices, quiet TensorFlow, offline data.

The environment lines must run before jax is imported anywhere, which pytest
guarantees for conftest.py.
"""
import os
import socket

import pytest

# 8 host devices let the sharding tests run in-process (SPEC §2: exact under sharding).
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
