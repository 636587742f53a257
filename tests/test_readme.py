"""The documentation's examples run as written and compute what they say: the README's
library block (on a trained tiny run), its "Your own images" commands (on small generated
images), and the rate-reduction example of docs/usage.md."""

import os
import pathlib
import re
import shlex
import subprocess
import sys

import numpy as np
from user_images import write_user_images

import uctrl_jax

REPO = pathlib.Path(__file__).resolve().parent.parent
README = REPO / "README.md"
USAGE = REPO / "docs" / "usage.md"
# `uctrl ARGS` without the console script: the function it calls (pyproject.toml).
UCTRL = "import sys; sys.argv[0] = 'uctrl'; from uctrl_jax import cli; cli.run_uctrl()"


def block(page: pathlib.Path, heading: str, lang: str) -> str:
  """The first ```lang block of ``page``'s section ``## heading``."""
  section = page.read_text().split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
  return re.search(rf"```{lang}\n(.*?)```", section, re.S).group(1)


def test_rate_reduction_example_runs():
  code = block(USAGE, "Rate-reduction functions", "python")
  namespace = {}
  exec(compile(code, str(USAGE), "exec"), namespace)  # pylint: disable=exec-used
  terms, rr = namespace["terms"], namespace["rr"]
  Z, Zhat, Z_aug = namespace["Z"], namespace["Zhat"], namespace["Z_aug"]
  n = Z.shape[0]
  aug = float(np.sum(rr.pairwise_rate_distance(Z, Z_aug, 0.5)))
  np.testing.assert_allclose(terms["aug"], aug, rtol=1e-5)
  np.testing.assert_allclose(terms["aug_per_sample"], aug / n, rtol=1e-5)
  np.testing.assert_allclose(
    terms["encoder_objective"],
    float(rr.coding_rate(Z, 0.5) + rr.rate_distance(Z, Zhat, 0.5))
    - 10 * aug
    - 10 * float(terms["self"]),
    rtol=1e-5,
  )


def test_library_example_runs(tiny_folder_run, capsys):
  workdir, _ = tiny_folder_run
  code = block(README, "Using the library", "python")
  assert '"runs/mine"' in code  # the run of "Your own images"
  namespace = {}
  exec(compile(code.replace('"runs/mine"', repr(workdir)), str(README), "exec"), namespace)  # pylint: disable=exec-used
  assert capsys.readouterr().out.strip() == uctrl_jax.__version__
  assert namespace["config"].model.feature_dim == 128  # the defaults, not the run's
  run, images, Z = namespace["run"], namespace["images"], namespace["Z"]
  assert Z.shape == (10, 16) and namespace["Xhat"].shape == (10, 28, 28, 1)
  np.testing.assert_allclose(Z, run.encode(images[..., None] / 127.5 - 1), atol=1e-5)
  # R(Z) = ½ logdet(I + d/(n ε²) ZᵀZ), in float64.
  Z64 = Z.astype(np.float64)
  expected = 0.5 * np.linalg.slogdet(np.eye(16) + 16 / (10 * 0.5) * Z64.T @ Z64)[1]
  np.testing.assert_allclose(float(namespace["R"]), expected, rtol=1e-4)


# What the test adds to the README's commands so that they take seconds: a tiny model, two
# iterations, two evaluators.
_FAST = {
  "train": [
    "--config.model.width=8",
    "--config.model.feature_dim=16",
    "--config.train.batch_size=16",
    "--config.data.num_views=2",
    "--config.train.num_steps=2",
    "--config.train.eval_every=0",
  ],
  "eval": ["--config.evals.names=('knn', 'reconstruction')", "--config.evals.figures=False"],
  "embed": [],
}


def test_your_own_images_commands_run(tmp_path):
  """The commands as written, on folders like users' (mixed sizes and modes: user_images.py)."""
  write_user_images(tmp_path / "my_images", labelled=True, n=12, test=6)
  write_user_images(tmp_path / "new_images", labelled=False, n=5)
  script = block(README, "Your own images", "bash").replace("\\\n", " ")
  commands = [
    line.split("#", 1)[0].strip()
    for line in script.splitlines()
    if line.strip() and not line.startswith("#")
  ]
  assert [c.split()[:2] for c in commands] == [
    ["uctrl", "train"],
    ["uctrl", "eval"],
    ["uctrl", "embed"],
    ["uctrl", "embed"],
  ]
  for command in commands:
    for name in ("my_images", "new_images", "runs/mine"):
      command = command.replace(name, str(tmp_path / name))
    args = shlex.split(command)
    proc = subprocess.run(
      [sys.executable, "-c", UCTRL, *args[1:], *_FAST[args[1]]],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=900,
    )
    assert proc.returncode == 0, (command, proc.stderr[-3000:])
    if args[1] == "train":  # the conversions are said once, with their counts
      assert "composited over a white background" in proc.stderr, proc.stderr[-3000:]
  run = tmp_path / "runs" / "mine"
  assert (run / "results.md").is_file() and (run / "results.json").is_file()
  for name, n in (("test.npz", 6), ("train.npz", 12), (os.path.join("new_images", "train.npz"), 5)):
    with np.load(run / "embeddings" / name) as f:
      assert f["features"].shape == (n, 16) and np.isfinite(f["features"]).all(), name
  with np.load(run / "embeddings" / "new_images" / "train.npz") as f:
    assert "labels" not in f and len(set(f["paths"])) == 5
    assert all((tmp_path / "new_images" / p).is_file() for p in f["paths"])
