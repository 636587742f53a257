"""uctrl_jax: unsupervised closed-loop transcription (uCTRL) in JAX/Flax."""
