"""Shared fixtures: compose the real config from conf/, shrunk to a fast CPU run."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# A run of a few seconds on CPU: small enough for the suite, long enough to warm up and decay.
FAST = ["trainer.max_epochs=4", "scheduler.warmup_epochs=1", "trainer.device=cpu", "trainer.progress_bar=false"]


def compose_config(overrides: list[str] = ()) -> DictConfig:
    """The config `python train.py <overrides>` would run, without Hydra's runtime section."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.fixture
def fast_cfg() -> DictConfig:
    return compose_config(FAST)
