"""Test session set-up: 8 simulated CPU devices, quiet TensorFlow.

Must run before jax is imported anywhere, which pytest guarantees for conftest.py.
"""
import os

# 8 host devices let the sharding tests run in-process (SPEC §2: exact under sharding).
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
