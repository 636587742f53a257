"""benchmarks/soak.py's readings (the run itself is a benchmark, not a test): the progress
line it parses is the one the console writes, resident memory from /proc, the summary."""

import os
import sys

import pytest

from benchmarks import soak
from uctrl_jax import console


def test_reads_the_console_progress_line():
  line = "12:00:00 " + console.progress_line(500, 20_000, {"encoder/R": 1.8}, 0.05)
  assert soak.parse_progress(line) == (500, 20.0)
  assert soak.parse_progress(console.progress_line(1, 2, {}, None)) is None  # no speed yet
  assert soak.parse_progress("12:00:00 step 500/20000 | knn/top1 12.5") is None  # evaluation


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
def test_resident_memory_of_a_process():
  memory = soak.memory_mib(os.getpid())
  assert 10 < memory["rss"] <= memory["hwm"]


def test_summary_compares_the_first_checkpoint_with_the_end():
  rows = [
    dict(step=500, rss_mib=1000.0, hwm_mib=1000.0, ms_per_step=30.0, wall_min=1.0),
    dict(step=1000, rss_mib=1010.0, hwm_mib=1012.0, ms_per_step=10.0, wall_min=2.0),
    dict(step=1500, rss_mib=1004.5, hwm_mib=1012.0, ms_per_step=11.0, wall_min=3.0),
  ]
  assert soak.summarise(rows) == {
    "rss_first_mib": 1000.0,
    "rss_end_mib": 1004.5,
    "rss_growth_mib": 4.5,
    "peak_end_mib": 1012.0,
    "ms_per_step_start": 10.0,  # the first interval without compiling
    "ms_per_step_end": 11.0,
    "step_time_ratio": 1.1,
    "minutes": 3.0,
  }
  assert soak.summarise(rows[:1]) == {}
