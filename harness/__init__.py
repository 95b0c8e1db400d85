"""harness: a config-driven PyTorch training harness.

``harness.run(cfg, run_dir)`` trains from a composed Hydra config; ``train.py`` is a thin shell around it.
The loop (:mod:`harness.loop`), schedulers, data and models take plain values and torch objects, so they
work without Hydra.
"""

__version__ = "0.1.0"  # before the import below: experiment.py records it in every checkpoint

from harness.experiment import run  # noqa: E402

__all__ = ["run", "__version__"]
