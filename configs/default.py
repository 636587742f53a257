"""Default uCTRL configuration, as the package holds it (``uctrl_jax/defaults.py``: every
setting, its one default and why); the dataset configs import it from here and override.

    python main.py --config=configs/default.py --workdir=DIR
"""

from uctrl_jax.defaults import get_config  # noqa: F401  (re-exported)
