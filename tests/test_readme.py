"""The README's examples run as written: the API example computes what it says, the
"Your own images" commands train and evaluate."""

import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from user_images import write_user_images

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_example_runs():
  code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
  namespace = {}
  exec(compile(code, str(README), "exec"), namespace)  # pylint: disable=exec-used
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


def _section(title: str) -> str:
  """The README's text under ``## title``, up to the next section."""
  return re.search(rf"^## {title}\n(.*?)(?=^## )", README.read_text(), re.S | re.M).group(1)


@pytest.mark.slow
def test_readme_own_images_commands_run(tmp_path):
  """ "Your own images" runs as written on generated folders like users' (mixed sizes and
  modes, user_images.py), the nets narrowed and the runs shortened by overrides put
  after --config. Several minutes on 2 busy cores (ResNet-18 at 32 and 64)."""
  block = re.search(r"```bash\n(.*?)```", _section("Your own images"), re.S).group(1)
  write_user_images(tmp_path / "pets", labelled=True)
  write_user_images(tmp_path / "photos", labelled=False)
  fast = [
    "--config.model.width=8",
    "--config.model.feature_dim=16",
    "--config.train.batch_size=16",
    "--config.train.num_steps=2",
    "--config.evals.batch_size=16",
    "--config.evals.baselines=False",
    '\'--config.evals.names=("knn","reconstruction")\'',
  ]
  script = (
    block.replace("$HOME/", f"{tmp_path}/")
    .replace("/tmp/pets", str(tmp_path / "pets_run"))
    .replace("/tmp/photos", str(tmp_path / "photos_run"))
    .replace(".venv/bin/python main.py", f"{sys.executable} main.py")
    .replace("--config=configs/cifar.py", f"--config=configs/cifar.py {' '.join(fast)}")
  )
  assert script.count(" ".join(fast)) == 2 and str(tmp_path / "photos") in script
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  proc = subprocess.run(
    ["bash", "-euo", "pipefail", "-c", script],
    cwd=README.parent,
    env=env,
    capture_output=True,
    text=True,
    timeout=3600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (tmp_path / "pets_run" / "checkpoints" / "2").is_dir()
  results = json.loads((tmp_path / "photos_run" / "results.json").read_text())
  assert results["step"] == 2 and (results["num_train"], results["num_test"]) == (36, 4)
  assert "image(s) with transparency composited over a white background" in proc.stderr
