"""harness: a config-driven PyTorch training harness.

``harness.run(cfg, run_dir)`` trains from a composed Hydra config; ``train.py`` is a thin shell around it.
The loop (:mod:`harness.loop`), schedulers, data and models take plain values and torch objects, so they
work without Hydra: importing them does not import Hydra (``run`` is loaded on first use).
"""

from harness.version import __version__

__all__ = ["run", "__version__"]


def __getattr__(name: str):
    if name == "run":
        from harness.experiment import run

        return run
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
