"""harness: a config-driven PyTorch training harness.

``harness.run(cfg, run_dir)`` trains from a composed Hydra config; ``train.py`` is a thin shell around it.
The loop (:mod:`harness.loop`), schedulers, data and models take plain values and torch objects, so they
work without Hydra.
"""

from harness.experiment import run
from harness.version import __version__

__all__ = ["run", "__version__"]
