"""uCTRL entry point: `python main.py --config=configs/fashion_mnist.py --workdir=DIR`.

Thin, as in flax's examples: the flags and `main` are `uctrl_jax/cli.py`'s, shared with
the installed `uctrl train|eval|embed` command; `--mode=train|eval|embed` picks the work.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402

from uctrl_jax import cli  # noqa: E402

DEFAULT_CONFIG = "configs/fashion_mnist.py"
cli.define_flags(DEFAULT_CONFIG)
main = cli.main

if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
