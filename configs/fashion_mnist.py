"""Fashion-MNIST (28×28×1), the offline default (SPEC §5), sized for 2 CPU cores.

    python main.py --config=configs/fashion_mnist.py --workdir=/tmp/uctrl_fashion_mnist

Provisional settings, taken from the best throw-away prototype run (run E of
shared/CALIBRATION.md: batch 128, cosine sample-wise terms with λ₁ = λ₂ = 10 on batch
means, ε² = 0.5, d = 128, Adam 1.5e-4 with β = (0.5, 0.999), one encoder step per
decoder step, encoder batch norm in running-statistics mode on X̂; 2 382 iterations in
27 min gave kNN 87.5 and 58.9% reconstruction class consistency there). The trainer
issue's sweep has not yet confirmed them for this implementation. This project's
trainer ran this config at about 1.2 iterations/s on a 2-core CPU (40-iteration
probe, 2026-11-29), so 2 000 iterations take about 28 minutes.
"""
from configs import default


def get_config():
  config = default.get_config()
  config.data.name = "fashion_mnist"
  config.data.image_size = 28
  config.loss.sample_distance = "cosine"
  config.loss.sample_reduction = "mean"
  config.loss.lambda_aug = 10.0
  config.loss.lambda_self = 10.0
  config.train.batch_size = 128
  config.train.num_steps = 2_000
  config.train.log_every = 50
  config.train.image_every = 250
  config.train.checkpoint_every = 250
  return config
