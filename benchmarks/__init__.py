"""Speed benchmarks: each module runs from the repository root as ``python -m benchmarks.NAME``.

* ``rate_reduction_bench``: the rate-reduction objective against naive and PyTorch forms.
* ``train_step_bench``: one training iteration against its PyTorch twin, ``torch_uctrl``.
* ``accelerator_bench``: the iteration on a GPU or TPU (images/s, memory), no TensorFlow.
* ``input_pipeline_bench``: augmented images per second against the trainer's need.
* ``jax_loop``: the jitted iteration driven for timing, shared by the two above it.

Results and commands: docs/benchmarks.md. Quality experiments live in ``experiments``.
"""
