"""Data sets and their loaders.

Each data option is a function returning :class:`DataSplits`: a train and a validation ``Dataset`` plus the
shape facts (``input_shape``, ``num_classes``) that size the model. :func:`make_loaders` turns splits into
seeded ``DataLoader``s; batch size and workers are plain arguments so the same code serves every data set.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from harness.errors import DataError

__all__ = [
    "DataSplits",
    "digits",
    "fake",
    "mnist",
    "fashion_mnist",
    "cifar10",
    "imagefolder",
    "make_loaders",
    "TensorLoader",
    "set_epoch",
]


@dataclass(frozen=True)
class DataSplits:
    """A train/validation pair and what a model needs to know about it.

    Attributes:
        train: the training set; items are ``(image tensor of shape input_shape, int label)``.
        val: the validation set, same item format.
        input_shape: ``(channels, height, width)`` of one input.
        num_classes: number of labels; labels are ``0 .. num_classes - 1``.
    """

    train: Dataset
    val: Dataset
    input_shape: tuple[int, int, int]
    num_classes: int


def _seeded_split(n: int, val_fraction: float, split_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of a fixed train/val split: the same for a given seed whatever the run's seed is."""
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction!r} must be a number between 0 and 1 (exclusive)")
    n_val = max(1, round(n * val_fraction))
    if n_val >= n:
        raise ValueError(f"val_fraction={val_fraction!r} leaves no training data out of {n} samples")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    return order[n_val:], order[:n_val]


def _load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled digits as ``(images (N, 1, 8, 8) float32, labels (N,) int64)``."""
    try:
        from sklearn.datasets import load_digits  # imported here: only runs on digits pay for scikit-learn
    except ImportError as e:
        raise DataError("the digits data set needs scikit-learn: pip install scikit-learn") from e
    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1)
    return x, torch.as_tensor(bunch.target, dtype=torch.int64)


def digits(val_fraction: float = 0.2, split_seed: int = 0) -> DataSplits:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes); no download.

    Pixels (0..16) are standardised with the training split's mean and std.

    Args:
        val_fraction: share of the images held out for validation.
        split_seed: seed of the train/val split, independent of the run's seed.
    """
    x, y = _load_digits()
    train_idx, val_idx = _seeded_split(len(y), val_fraction, split_seed)
    mean, std = x[train_idx].mean(), x[train_idx].std()
    x = (x - mean) / std
    return DataSplits(
        train=TensorDataset(x[train_idx], y[train_idx]),
        val=TensorDataset(x[val_idx], y[val_idx]),
        input_shape=(1, 8, 8),
        num_classes=10,
    )


def fake(
    train_size: int = 1000,
    val_size: int = 200,
    image_size: tuple[int, int, int] = (3, 32, 32),
    num_classes: int = 10,
) -> DataSplits:
    """torchvision's ``FakeData``: random images with random labels, for smoke tests and benchmarks.

    Args:
        train_size: number of training images.
        val_size: number of validation images (drawn with other seeds than the training ones).
        image_size: ``(channels, height, width)``.
        num_classes: number of labels.
    """
    from torchvision.datasets import FakeData
    from torchvision.transforms import ToTensor

    shape = tuple(int(s) for s in image_size)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"image_size={list(image_size)} must be [channels, height, width], each >= 1")
    for name, value in (("train_size", train_size), ("val_size", val_size), ("num_classes", num_classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be an integer >= 1")
    common = dict(image_size=shape, num_classes=num_classes, transform=ToTensor())
    return DataSplits(
        train=FakeData(size=train_size, **common),
        val=FakeData(size=val_size, random_offset=train_size, **common),
        input_shape=shape,
        num_classes=num_classes,
    )


def _torchvision(name: str, cls: Callable, root: str, download: bool, mean, std, shape, num_classes) -> DataSplits:
    from torchvision import transforms

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
    if not isinstance(download, bool):
        raise ValueError(f"download={download!r} must be true or false")
    where = os.path.abspath(root)
    try:
        train = cls(root, train=True, download=download, transform=transform)
        val = cls(root, train=False, download=download, transform=transform)
    except (RuntimeError, OSError) as e:
        if download:
            reason = " ".join(str(e).split())[-200:]  # torchvision's message spans lines; keep its end
            raise DataError(
                f"could not download {name} into {where} ({reason}); check the network, or copy the "
                f"{name} files there yourself and set data.download=false"
            ) from e
        raise DataError(
            f"{name} not found under {where}; set data.download=true to fetch it, or point "
            f"data.root at a folder that holds it"
        ) from e
    return DataSplits(train=train, val=val, input_shape=shape, num_classes=num_classes)


def mnist(root: str = "data", download: bool = True) -> DataSplits:
    """torchvision MNIST (28x28 grey digits), its standard train/test split as train/val."""
    from torchvision.datasets import MNIST

    return _torchvision("MNIST", MNIST, root, download, (0.1307,), (0.3081,), (1, 28, 28), 10)


def fashion_mnist(root: str = "data", download: bool = True) -> DataSplits:
    """torchvision FashionMNIST (28x28 grey clothing), its standard train/test split as train/val."""
    from torchvision.datasets import FashionMNIST

    return _torchvision("FashionMNIST", FashionMNIST, root, download, (0.2860,), (0.3530,), (1, 28, 28), 10)


def cifar10(root: str = "data", download: bool = True) -> DataSplits:
    """torchvision CIFAR-10 (32x32 colour), its standard train/test split as train/val."""
    from torchvision.datasets import CIFAR10

    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    return _torchvision("CIFAR10", CIFAR10, root, download, mean, std, (3, 32, 32), 10)


def imagefolder(root: str, image_size: int = 64, val_fraction: float = 0.2, split_seed: int = 0) -> DataSplits:
    """A folder with one sub-folder of images per class (torchvision ``ImageFolder``), split by seed.

    Images are loaded as RGB, resized and centre-cropped to ``image_size`` pixels square.

    Args:
        root: the folder; its sub-folder names are the class names, in sorted order.
        image_size: side of the square model input, in pixels.
        val_fraction: share of the images held out for validation.
        split_seed: seed of the train/val split.
    """
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size={image_size!r} must be an integer >= 1 (pixels)")
    where = Path(root).resolve()
    if not where.is_dir():
        raise DataError(f"data.root={root} ({where}) is not a folder; point it at a folder of class sub-folders")
    transform = transforms.Compose(
        [transforms.Resize(image_size), transforms.CenterCrop(image_size), transforms.ToTensor()]
    )
    try:
        full = ImageFolder(str(where), transform=transform)
    except (FileNotFoundError, RuntimeError) as e:
        raise DataError(f"data.root={root} holds no class sub-folders with images ({e})") from e
    train_idx, val_idx = _seeded_split(len(full), val_fraction, split_seed)
    return DataSplits(
        train=Subset(full, train_idx.tolist()),
        val=Subset(full, val_idx.tolist()),
        input_shape=(3, image_size, image_size),
        num_classes=len(full.classes),
    )


EVAL_BATCH_ON_DEVICE = 1024  # validation batch of the on-device path, at least the training batch


def set_epoch(loader, epoch: int) -> None:
    """Tells ``loader`` (a :class:`TensorLoader`) or its sampler (a ``DistributedSampler``) which epoch starts,
    so its shuffle is a function of the seed and the epoch alone."""
    for part in (loader, getattr(loader, "sampler", None)):
        if hasattr(part, "set_epoch"):
            part.set_epoch(epoch)


class TensorLoader:
    """Batches of in-memory tensors kept on the training device and shuffled there: no workers, no copies.

    Iterates like a ``DataLoader`` (``len``, batches of ``(x, y)``). Like ``DistributedSampler``, the shuffle
    of an epoch is drawn from ``seed + epoch`` (see :meth:`set_epoch`), so a resumed run replays it. With
    ``world_size > 1`` each process takes every ``world_size``-th sample of the shuffled order, so the
    processes' batches together are the batch one process would see with ``batch_size * world_size``.

    Args:
        tensors: equally long tensors, e.g. ``(inputs, labels)``.
        batch_size: samples per batch (per process).
        shuffle: reshuffle every epoch.
        seed: seeds the shuffle.
        device: where the tensors live.
        rank, world_size: this process's share of a distributed run.
        pad: with ``world_size > 1``, repeat samples so every process gets as many batches (training);
            without it the shares are disjoint and may differ by one sample (evaluation).
    """

    def __init__(self, tensors, batch_size: int, shuffle: bool = False, seed: int = 0,
                 device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1, pad: bool = True) -> None:
        self.tensors = [t.to(device) for t in tensors]
        self.batch_size, self.shuffle, self.seed, self.epoch = batch_size, shuffle, seed, 0
        self.device, self.rank, self.world_size, self.pad = torch.device(device), rank, world_size, pad
        n = len(self.tensors[0])
        self.samples = -(-n // world_size) if pad else len(range(rank, n, world_size))

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose shuffle the next iteration draws."""
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.samples // self.batch_size)

    def __iter__(self):
        n = len(self.tensors[0])
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        if self.world_size > 1:
            if self.pad:
                order = order.repeat(-(-self.samples * self.world_size // n))[: self.samples * self.world_size]
            order = order[self.rank :: self.world_size]
        order = order.to(self.device)
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            yield tuple(t[index] for t in self.tensors)


def _as_tensors(dataset: Dataset) -> tuple[torch.Tensor, ...]:
    """All of a data set as stacked tensors (for data sets that fit in memory)."""
    if isinstance(dataset, TensorDataset):
        return tuple(dataset.tensors)
    batches = list(DataLoader(dataset, batch_size=1024))
    return tuple(torch.cat(parts) for parts in zip(*batches))


def make_loaders(
    splits: DataSplits,
    batch_size: int,
    num_workers: int,
    seed: int,
    pin_memory: bool = False,
    on_device: bool = False,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world_size: int = 1,
) -> tuple[DataLoader | TensorLoader, DataLoader | TensorLoader]:
    """Seeded train/val loaders: the training order depends only on ``seed`` and the epoch.

    Args:
        splits: the data sets.
        batch_size: samples per batch (per process).
        num_workers: loader worker processes; 0 loads in the main process (ignored with ``on_device``).
        seed: seeds the shuffle.
        pin_memory: page-lock batches for fast, asynchronous copies to a GPU.
        on_device: keep the whole data set on ``device`` as tensors (:class:`TensorLoader`), for data sets
            that fit in memory; no workers and no per-batch copies.
        device: the training device.
        rank, world_size: this process's share of a distributed (torchrun) run.
    """
    if on_device:
        common = dict(batch_size=batch_size, device=device, rank=rank, world_size=world_size)
        train = TensorLoader(_as_tensors(splits.train), shuffle=True, seed=seed, **common)
        # No activations are kept for a backward pass, so evaluation takes bigger bites.
        val = TensorLoader(_as_tensors(splits.val), shuffle=False, pad=False,
                           **{**common, "batch_size": max(batch_size, EVAL_BATCH_ON_DEVICE)})
        return train, val
    common = dict(
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,  # don't respawn workers every epoch
        # the workers' seeds come from this generator, not from the global RNG a resume restores
        generator=torch.Generator().manual_seed(seed),
    )
    # DistributedSampler in one process too: its shuffle is a function of seed and epoch (set_epoch), so a
    # resumed run replays an epoch's order without saving a generator's state.
    sampler = DistributedSampler(splits.train, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    train = DataLoader(splits.train, sampler=sampler, **common)
    val_share = Subset(splits.val, range(rank, len(splits.val), world_size)) if world_size > 1 else splits.val
    return train, DataLoader(val_share, shuffle=False, **common)  # disjoint shares: exact metrics
