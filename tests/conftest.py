"""Shared helpers and fixtures: the real config from conf/ shrunk to a fast CPU run, a toy problem for the
loop, TensorBoard read back, and train.py run as a user runs it (optionally signalled at a given step)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# The suite runs in one worker process per core (pytest-xdist, `-n auto` in pyproject.toml). Each worker, and
# every train.py it starts, computes on one CPU thread, so the workers share the cores instead of
# oversubscribing them (torch's spinning threads would slow every test several times over).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# A run of a few seconds on CPU: small enough for the suite, long enough to warm up and decay.
FAST = ["trainer.max_epochs=4", "trainer.device=cpu", "trainer.progress_bar=false"]


def compose_config(overrides: list[str] = (), name: str = "config") -> DictConfig:
    """The config `python train.py <overrides>` would run, without Hydra's runtime section."""
    import harness.experiment  # noqa: F401  (registers the resolvers conf/ names)

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


@pytest.fixture
def fast_cfg() -> DictConfig:
    return compose_config(FAST)


STEPS_PER_EPOCH = 17  # 1079 training digits in batches of 64


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in ``run_dir``'s event files, read with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def event_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("events.out.tfevents.*"))


def toy_problem(n: int = 96, batch_size: int = 16, seed: int = 0):
    """A separable 2-class problem of 2x2 "images": a linear model, a shuffled loader and an in-order one."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 2, 2, generator=g)
    y = (x.flatten(1).sum(1) > 0).long()
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True, generator=g)
    val = DataLoader(TensorDataset(x, y), batch_size=batch_size)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    return model, loader, val


def nan_on_calls(*which: int):
    """Cross-entropy that turns NaN on the given (1-based) calls."""
    calls = {"n": 0}

    def loss_fn(logits, y):
        calls["n"] += 1
        loss = torch.nn.functional.cross_entropy(logits, y)
        return loss * float("nan") if calls["n"] in which else loss

    return loss_fn


# Runs train.py in this process after registering an optimizer hook that signals the process (or, under
# torchrun, rank 0 alone) once the given number of optimizer steps is done: a stop at a known step.
_SIGNAL_AT_STEP = """
import os, runpy, signal, sys
from torch.optim.optimizer import register_optimizer_step_post_hook
steps = 0
def hook(optimizer, args, kwargs):
    global steps
    steps += 1
    if steps == {step} and os.environ.get("RANK", "0") == "0":
        os.kill(os.getpid(), signal.{signal})
register_optimizer_step_post_hook(hook)
sys.argv = [{train!r}, *sys.argv[1:]]
runpy.run_path({train!r}, run_name="__main__")
"""


def train_command(args: list[str], cwd: Path, signal_at_step: int | None = None, signal: str = "SIGTERM",
                  torchrun: int = 0) -> list[str]:
    """The command line of ``train.py <args>``: plain, under torchrun with that many processes, and/or
    signalled after ``signal_at_step`` optimizer steps (counted over the whole process, sweeps included)."""
    script = str(ROOT / "train.py")
    if signal_at_step is not None:
        launcher = cwd / f"signal_at_step_{signal_at_step}.py"
        launcher.write_text(_SIGNAL_AT_STEP.format(step=signal_at_step, signal=signal, train=script))
        script = str(launcher)
    launch = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={torchrun}"] if torchrun else [
        sys.executable]
    return [*launch, script, *args]


def train(args: list[str], cwd: Path, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Runs ``train.py <args>`` from ``cwd`` (so outputs/ lands there), without a terminal, as CI would."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": ""}
    return subprocess.run(train_command(args, cwd, **kwargs), cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


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
