"""eval_cache.py: metrics computed once per key, read back equal; damage and unwritable
directories recompute instead of failing."""

import json
import os

from uctrl_jax import eval_cache


class Counter:
  def __init__(self, metrics):
    self.calls, self.metrics = 0, metrics

  def __call__(self):
    self.calls += 1
    return dict(self.metrics)


METRICS = {"knn/top1": 85.07, "clustering/kmeans_nmi": 0.503, "eval_seconds/knn": 2.5}
KEY = {"dataset": "fashion_mnist", "data": "abc", "evaluators": [["knn", {"k": 20}]]}


def test_second_call_reads_back_the_metrics_without_timings(tmp_path):
  compute = Counter(METRICS)
  first, hit = eval_cache.cached_metrics("raw", KEY, compute, str(tmp_path))
  assert (first, hit, compute.calls) == (METRICS, False, 1)
  second, hit = eval_cache.cached_metrics("raw", dict(KEY), compute, str(tmp_path))
  assert hit and compute.calls == 1
  assert second == {"knn/top1": 85.07, "clustering/kmeans_nmi": 0.503}
  # Tuples and lists are one key (JSON keeps lists); another option is another key.
  same = {**KEY, "evaluators": [("knn", {"k": 20})]}
  assert eval_cache.cached_metrics("raw", same, compute, str(tmp_path))[1]
  other = {**KEY, "evaluators": [["knn", {"k": 3}]]}
  assert not eval_cache.cached_metrics("raw", other, compute, str(tmp_path))[1]
  assert compute.calls == 2
  assert len([f for f in os.listdir(tmp_path) if f.endswith(".json")]) == 2


def test_damaged_or_foreign_files_are_computed_again(tmp_path):
  compute = Counter(METRICS)
  path = eval_cache.cache_path(str(tmp_path), "raw", KEY)
  eval_cache.cached_metrics("raw", KEY, compute, str(tmp_path))
  with open(path, "w") as f:
    f.write('{"key": ')  # truncated
  assert eval_cache.cached_metrics("raw", KEY, compute, str(tmp_path)) == (METRICS, False)
  with open(path) as f:
    record = json.load(f)  # rewritten whole
  record["key"]["data"] = "another"
  with open(path, "w") as f:
    json.dump(record, f)
  assert not eval_cache.cached_metrics("raw", KEY, compute, str(tmp_path))[1]
  assert compute.calls == 3


def test_unwritable_directory_still_returns_the_metrics(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  compute = Counter(METRICS)
  for _ in range(2):
    assert eval_cache.cached_metrics("raw", KEY, compute, str(blocker / "sub")) == (METRICS, False)
  assert compute.calls == 2


def test_default_directory_follows_the_environment(monkeypatch, tmp_path):
  monkeypatch.setenv(eval_cache.ENV_CACHE_DIR, str(tmp_path / "b"))
  assert eval_cache.default_cache_dir() == str(tmp_path / "b")
  monkeypatch.delenv(eval_cache.ENV_CACHE_DIR)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
  assert eval_cache.default_cache_dir() == str(tmp_path / "x" / "uctrl_jax" / "baselines")
