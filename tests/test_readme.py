"""The README's API example runs as written and computes what it says."""

import pathlib
import re

import numpy as np

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
