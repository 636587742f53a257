"""Work directories on object stores (``--workdir=gs://bucket/run``, issue 23), offline:
the paths the project builds stay URLs, and the checks that only make sense on a local
disk are skipped without a request. The files themselves go through the same
``workdir_files``/``epath`` calls that every local test exercises."""

import os

import numpy as np

from uctrl_jax import embed
from uctrl_jax import evaluate
from uctrl_jax import config_checks
from uctrl_jax import workdir_files

RUN = "gs://my-bucket/runs/mine"


def test_paths_stay_urls():
  assert not workdir_files.is_local(RUN) and workdir_files.is_local("/tmp/run")
  assert os.fspath(workdir_files.path(RUN, "embeddings", "test.npz")) == (
    "gs://my-bucket/runs/mine/embeddings/test.npz"
  )
  assert workdir_files.absolute(RUN) == RUN  # not /cwd/gs:/my-bucket/...
  assert workdir_files.absolute("run") == os.path.join(os.getcwd(), "run")
  assert workdir_files.path(RUN).name == "mine"  # a compared run's name in results.md


def test_the_writable_check_makes_no_request(no_network):
  config_checks.check_workdir_writable(RUN)  # a socket would fail the test


def test_results_name_figures_relative_to_a_bucket():
  results = {
    "workdir": RUN,
    "step": 3,
    "dataset": "npz:x",
    "num_train": 4,
    "num_test": 2,
    "hardware": "cpu",
    "wall_time_s": 1.0,
    "metrics": {"knn/top1": 50.0},
    "figures": {"pca": os.fspath(workdir_files.path(RUN, "figures", "pca.png"))},
    "evals_config": {},
    "config": {},
  }
  assert "- pca: `figures/pca.png`" in evaluate.results_markdown(results)


def test_embed_files_are_named_under_the_bucket(monkeypatch, tmp_path):
  """``embed`` writes through ``workdir_files.write_bytes_atomic``: to the URL it builds."""
  written = {}
  monkeypatch.setattr(
    workdir_files, "write_bytes_atomic", lambda target, data: written.setdefault(str(target), data)
  )

  class Source:
    class info:  # noqa: N801  (a stand-in for DatasetInfo)
      name, num_examples = "npz:x", {"train": 3}

  monkeypatch.setattr(embed.input_pipeline, "open_source", lambda config: Source)
  monkeypatch.setattr(
    embed,
    "embed_split",
    lambda *args: {"features": np.zeros((3, 2), np.float32), "step": np.array(7)},
  )
  monkeypatch.setattr(embed.loading, "load", lambda workdir, step: None)
  from configs import tiny  # pylint: disable=import-outside-toplevel

  config = tiny.get_config()
  config.data.image_shape = (28, 28, 1)
  paths = embed.embed(config, RUN, data="npz:/data/other.npz")
  assert paths == ["gs://my-bucket/runs/mine/embeddings/other/train.npz"] == list(written)
