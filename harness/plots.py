"""PNG figures for the command-line tools, with matplotlib as an optional extra (``pip install -e ".[plot]"``)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["save_figure"]


def save_figure(path: Path, draw: Callable, *, title: str, xlabel: str, ylabel: str, note: str = "") -> Path | None:
    """Calls ``draw(ax)`` on a fresh figure, labels it and saves it to ``path``.

    Returns ``path``, or ``None`` after saying how to install matplotlib when it is missing (``note`` is
    added to that message, e.g. what was written anyway).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f'{path.name} needs matplotlib: pip install -e ".[plot]"{note}', file=sys.stderr)
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    draw(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
