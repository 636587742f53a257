"""Quality experiments on Fashion-MNIST: each runs from the repository root as
``python -m experiments.NAME`` (``screen.sh`` as ``bash experiments/screen.sh``).

* ``sweep``: equal-budget variants of configs/fashion_mnist.py, resumable rows and table;
  the helpers the two below train and score with.
* ``recipes``: equal-minutes comparison of uCTRL recipes with encoder-only baselines,
  and one recipe's learning curve (docs/recipes.md).
* ``ablations``: what each term of the game does (docs/ablations.md).
* ``fashion_mnist_quality``: the default config trained, evaluated and tabulated.
* ``screen.sh``: one screening run of the recipe search (docs/recipes.md).

Results: docs/experiments.md, docs/recipes.md, docs/ablations.md. Speed lives in
``benchmarks``.
"""
