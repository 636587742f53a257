#!/usr/bin/env bash
# Sets up a fresh machine for uctrl-jax: the Debian Fashion-MNIST files (offline data,
# docs/method.md#data-without-network) and a virtual environment at .venv holding the
# package, editable, with its pinned dependencies and the `dev` extra (pytest, ruff), all
# from pyproject.toml. Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "setup: cannot install dataset-fashion-mnist (needs root and apt-get);" \
         "Fashion-MNIST will be downloaded by tensorflow-datasets if the network allows." >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# Editable: `import uctrl_jax` and the `uctrl` command work from any directory and follow
# the checkout.
.venv/bin/python -m pip install -q -e ".[dev]"
