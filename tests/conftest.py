"""Shared fixtures: compose the real config from conf/, shrunk to a fast CPU run."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# A run of a few seconds on CPU: small enough for the suite, long enough to warm up and decay.
FAST = ["trainer.max_epochs=4", "trainer.device=cpu", "trainer.progress_bar=false"]


def compose_config(overrides: list[str] = (), name: str = "config") -> DictConfig:
    """The config `python train.py <overrides>` would run, without Hydra's runtime section."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


@pytest.fixture
def fast_cfg() -> DictConfig:
    return compose_config(FAST)


def _write_idx(path: Path, array) -> None:
    """Writes ``array`` (uint8) in MNIST's idx format: magic (type 0x08, ndim), big-endian dims, data."""
    import numpy as np

    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.tobytes())


@pytest.fixture
def mnist_root(tmp_path: Path) -> Path:
    """A data root holding tiny MNIST and FashionMNIST copies (idx files, as torchvision stores them)."""
    import numpy as np

    rng = np.random.default_rng(0)
    for name in ("MNIST", "FashionMNIST"):
        raw = tmp_path / name / "raw"
        raw.mkdir(parents=True)
        for prefix, n in (("train", 40), ("t10k", 12)):
            _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
            _write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n))
    return tmp_path


@pytest.fixture
def cifar_root(tmp_path: Path, monkeypatch) -> Path:
    """A data root holding a tiny CIFAR-10 copy; its md5 checks are switched off for the fake files."""
    import pickle

    import numpy as np
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)
    monkeypatch.setattr(cifar.CIFAR10, "_check_integrity", lambda self: True)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (8, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, 8).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"class{i}" for i in range(10)]}))
    return tmp_path


@pytest.fixture
def imagefolder_root(tmp_path: Path) -> Path:
    """root/<class>/<n>.png for 3 classes of 6 small RGB images each, of mixed sizes."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for c in ("cat", "dog", "eel"):
        (root / c).mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.png")
    return root
