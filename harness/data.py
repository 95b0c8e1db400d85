"""Data sets and their loaders.

Each data option is a function returning :class:`DataSplits`: train, validation and test ``Dataset``s plus
the facts (``input_shape``, ``num_classes``, ``targets``) that size the model and pick its task. The splits
are fixed by ``split_seed`` alone, whatever the run's seed. :func:`make_loaders` turns splits into seeded
loaders; batch size, workers and training augmentation are plain arguments, so the same code serves every
data set.
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
    "diabetes",
    "fake",
    "mnist",
    "fashion_mnist",
    "cifar10",
    "imagefolder",
    "make_loaders",
    "TensorLoader",
    "Augmented",
    "set_epoch",
]


@dataclass(frozen=True)
class DataSplits:
    """Train, validation and test sets and what a model needs to know about them.

    Attributes:
        train: the training set; items are ``(input tensor of shape input_shape, target)``.
        val: the validation set (picks ``best.pt``), same item format.
        test: the test set (reported once, at the end), same item format.
        input_shape: of one input: ``(channels, height, width)`` for images, ``(features,)`` for tables.
        num_classes: the width of the model's output: the number of labels (``0 .. num_classes - 1``) for
            class targets, the number of values per sample for value targets.
        targets: ``"class"`` (int64 labels) or ``"value"`` (float32 tensors of shape ``(num_classes,)``).
    """

    train: Dataset
    val: Dataset
    test: Dataset
    input_shape: tuple[int, ...]
    num_classes: int
    targets: str = "class"


def _fraction(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"{name}={value!r} must be a number between 0 and 1 (exclusive)")
    return value


def _seeded_split(n: int, split_seed: int, val_fraction: float, test_fraction: float = 0.0) -> list[torch.Tensor]:
    """Indices ``[train, val, test]`` of a fixed split of ``range(n)``: the same for a given ``split_seed``,
    whatever the run's seed is (``test`` is empty with ``test_fraction=0``)."""
    shares = [_fraction("val_fraction", val_fraction)] + ([_fraction("test_fraction", test_fraction)]
                                                          if test_fraction else [])
    sizes = [max(1, round(n * share)) for share in shares]
    if sum(sizes) >= n:
        asked = " + ".join(f"{name}={share!r}" for name, share in zip(("val_fraction", "test_fraction"), shares))
        raise ValueError(f"{asked} leaves no training data out of {n} samples")
    if isinstance(split_seed, bool) or not isinstance(split_seed, int):
        raise ValueError(f"split_seed={split_seed!r} must be an integer")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    val, test, train = order[: sizes[0]], order[sizes[0] : sum(sizes)], order[sum(sizes) :]
    return [train, val, test]


def _load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled digits as ``(images (N, 1, 8, 8) float32, labels (N,) int64)``."""
    try:
        from sklearn.datasets import load_digits  # imported here: only runs on digits pay for scikit-learn
    except ImportError as e:
        raise DataError("the digits data set needs scikit-learn: pip install scikit-learn") from e
    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1)
    return x, torch.as_tensor(bunch.target, dtype=torch.int64)


def _tensor_splits(x: torch.Tensor, y: torch.Tensor, parts: list[torch.Tensor]) -> list[TensorDataset]:
    return [TensorDataset(x[idx], y[idx]) for idx in parts]


def digits(val_fraction: float = 0.2, test_fraction: float = 0.2, split_seed: int = 0) -> DataSplits:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes); no download.

    Pixels (0..16) are standardised with the training split's mean and std.

    Args:
        val_fraction: share of the images held out for validation.
        test_fraction: share of the images held out for the test.
        split_seed: seed of the three-way split, independent of the run's seed.
    """
    x, y = _load_digits()
    parts = _seeded_split(len(y), split_seed, val_fraction, test_fraction)
    mean, std = x[parts[0]].mean(), x[parts[0]].std()
    train, val, test = _tensor_splits((x - mean) / std, y, parts)
    return DataSplits(train, val, test, input_shape=(1, 8, 8), num_classes=10)


def diabetes(val_fraction: float = 0.2, test_fraction: float = 0.2, split_seed: int = 0) -> DataSplits:
    """scikit-learn's bundled diabetes regression set (442 patients, 10 features, disease progression after a
    year); no download.

    Features and target are standardised with the training split's mean and std (per feature), so losses
    and errors are in standard deviations of the training targets (R² is unit-free).

    Args:
        val_fraction: share of the samples held out for validation.
        test_fraction: share of the samples held out for the test.
        split_seed: seed of the three-way split, independent of the run's seed.
    """
    try:
        from sklearn.datasets import load_diabetes
    except ImportError as e:
        raise DataError("the diabetes data set needs scikit-learn: pip install scikit-learn") from e
    bunch = load_diabetes(scaled=False)
    x = torch.as_tensor(bunch.data, dtype=torch.float32)
    y = torch.as_tensor(bunch.target, dtype=torch.float32).unsqueeze(1)
    parts = _seeded_split(len(y), split_seed, val_fraction, test_fraction)
    x = (x - x[parts[0]].mean(0)) / x[parts[0]].std(0)
    y = (y - y[parts[0]].mean(0)) / y[parts[0]].std(0)
    train, val, test = _tensor_splits(x, y, parts)
    return DataSplits(train, val, test, input_shape=(x.shape[1],), num_classes=1, targets="value")


def fake(
    train_size: int = 1000,
    val_size: int = 200,
    test_size: int = 200,
    image_size: tuple[int, int, int] = (3, 32, 32),
    num_classes: int = 10,
) -> DataSplits:
    """torchvision's ``FakeData``: random images with random labels, for smoke tests and benchmarks.

    Args:
        train_size: number of training images.
        val_size: number of validation images (drawn with other seeds than the training ones).
        test_size: number of test images (other seeds again).
        image_size: ``(channels, height, width)``.
        num_classes: number of labels.
    """
    from torchvision.datasets import FakeData
    from torchvision.transforms import ToTensor

    shape = tuple(int(s) for s in image_size)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"image_size={list(image_size)} must be [channels, height, width], each >= 1")
    for name, value in (("train_size", train_size), ("val_size", val_size), ("test_size", test_size),
                        ("num_classes", num_classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be an integer >= 1")
    common = dict(image_size=shape, num_classes=num_classes, transform=ToTensor())
    return DataSplits(
        train=FakeData(size=train_size, **common),
        val=FakeData(size=val_size, random_offset=train_size, **common),
        test=FakeData(size=test_size, random_offset=train_size + val_size, **common),
        input_shape=shape,
        num_classes=num_classes,
    )


def _torchvision(name: str, cls: Callable, root: str, download: bool, val_fraction: float, split_seed: int,
                 mean, std, shape, num_classes) -> DataSplits:
    """A torchvision data set: validation carved from its official training split by ``split_seed``, its
    official test split held out as the test set."""
    from torchvision import transforms

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
    if not isinstance(download, bool):
        raise ValueError(f"download={download!r} must be true or false")
    where = os.path.abspath(root)
    try:
        official_train = cls(root, train=True, download=download, transform=transform)
        official_test = cls(root, train=False, download=download, transform=transform)
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
    train_idx, val_idx, _ = _seeded_split(len(official_train), split_seed, val_fraction)
    return DataSplits(train=Subset(official_train, train_idx.tolist()), val=Subset(official_train, val_idx.tolist()),
                      test=official_test, input_shape=shape, num_classes=num_classes)


def mnist(root: str = "data", download: bool = True, val_fraction: float = 0.1, split_seed: int = 0) -> DataSplits:
    """torchvision MNIST (28x28 grey digits): 60k training images (less ``val_fraction`` for validation), the
    10k official test images as the test set."""
    from torchvision.datasets import MNIST

    return _torchvision("MNIST", MNIST, root, download, val_fraction, split_seed, (0.1307,), (0.3081,), (1, 28, 28),
                        10)


def fashion_mnist(root: str = "data", download: bool = True, val_fraction: float = 0.1,
                  split_seed: int = 0) -> DataSplits:
    """torchvision FashionMNIST (28x28 grey clothing): 60k training images (less ``val_fraction`` for
    validation), the 10k official test images as the test set."""
    from torchvision.datasets import FashionMNIST

    return _torchvision("FashionMNIST", FashionMNIST, root, download, val_fraction, split_seed, (0.2860,), (0.3530,),
                        (1, 28, 28), 10)


def cifar10(root: str = "data", download: bool = True, val_fraction: float = 0.1, split_seed: int = 0) -> DataSplits:
    """torchvision CIFAR-10 (32x32 colour): 50k training images (less ``val_fraction`` for validation), the
    10k official test images as the test set."""
    from torchvision.datasets import CIFAR10

    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    return _torchvision("CIFAR10", CIFAR10, root, download, val_fraction, split_seed, mean, std, (3, 32, 32), 10)


def imagefolder(root: str, image_size: int = 64, val_fraction: float = 0.15, test_fraction: float = 0.15,
                split_seed: int = 0) -> DataSplits:
    """A folder with one sub-folder of images per class (torchvision ``ImageFolder``), split three ways by seed.

    Images are loaded as RGB, resized and centre-cropped to ``image_size`` pixels square.

    Args:
        root: the folder; its sub-folder names are the class names, in sorted order.
        image_size: side of the square model input, in pixels.
        val_fraction: share of the images held out for validation.
        test_fraction: share of the images held out for the test.
        split_seed: seed of the three-way split.
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
    train, val, test = (Subset(full, idx.tolist()) for idx in _seeded_split(len(full), split_seed, val_fraction,
                                                                             test_fraction))
    return DataSplits(train, val, test, input_shape=(3, image_size, image_size), num_classes=len(full.classes))


EVAL_BATCH_ON_DEVICE = 1024  # validation batch of the on-device path, at least the training batch
Transform = Callable[[torch.Tensor], torch.Tensor]


def augment(transform: Transform, x: torch.Tensor, seed: int, epoch: int, index: int) -> torch.Tensor:
    """``transform(x)`` with its random draws seeded by ``(seed, epoch, index)`` alone, so a sample's
    augmentation does not depend on loader workers, batch order or a resume: same run, same inputs."""
    generator = torch.default_generator  # the CPU generator torchvision's random transforms draw from
    state = generator.get_state()  # and dropout's: it is left as it was
    generator.manual_seed(((seed * 1_000_003 + epoch) * 1_000_003 + index) % 2**63)
    try:
        return transform(x)
    finally:
        generator.set_state(state)


class Augmented(Dataset):
    """A training set whose inputs pass through ``transform`` (random crops, flips, ...), seeded per sample.

    Indexed by ``(index, epoch)`` keys, which :class:`EpochKeys` makes from a sampler's indices: the epoch
    reaches loader workers, whose copies of the data set never see a ``set_epoch`` call.
    """

    def __init__(self, dataset: Dataset, transform: Transform, seed: int) -> None:
        self.dataset, self.transform, self.seed = dataset, transform, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, epoch = key
        x, y = self.dataset[index]
        return augment(self.transform, x, self.seed, epoch, index), y


class EpochKeys(torch.utils.data.Sampler):
    """``sampler``'s indices as ``(index, epoch)`` keys for :class:`Augmented`; ``set_epoch`` goes through."""

    def __init__(self, sampler: DistributedSampler) -> None:
        self.sampler = sampler

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        return ((index, self.sampler.epoch) for index in self.sampler)


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
        transform: applied to each input of a batch, seeded per sample (see :func:`augment`); one at a
            time, so training augmentation costs a loop over the batch.
    """

    def __init__(self, tensors, batch_size: int, shuffle: bool = False, seed: int = 0,
                 device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1, pad: bool = True,
                 transform: Transform | None = None) -> None:
        self.tensors, self.transform = [t.to(device) for t in tensors], transform
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
            batch = tuple(t[index] for t in self.tensors)
            if self.transform is not None:
                x = [augment(self.transform, x, self.seed, self.epoch, i) for x, i in zip(batch[0], index.tolist())]
                batch = (torch.stack(x), *batch[1:])
            yield batch


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
    train_transform: Transform | None = None,
) -> tuple[DataLoader | TensorLoader, DataLoader | TensorLoader, DataLoader | TensorLoader]:
    """Seeded train/val/test loaders: the training order depends only on ``seed`` and the epoch.

    Args:
        splits: the data sets.
        batch_size: samples per batch (per process).
        num_workers: loader worker processes; 0 loads in the main process (ignored with ``on_device``).
        seed: seeds the shuffle and the augmentation.
        pin_memory: page-lock batches for fast, asynchronous copies to a GPU.
        on_device: keep the whole data set on ``device`` as tensors (:class:`TensorLoader`), for data sets
            that fit in memory; no workers and no per-batch copies.
        device: the training device.
        rank, world_size: this process's share of a distributed (torchrun) run.
        train_transform: random augmentation of each training input (validation and test are left as they
            are), seeded per sample and epoch (see :func:`augment`).

    Returns:
        ``(train, val, test)``; val and test are not shuffled, and under torchrun each process takes a
        disjoint share of them, so the metrics over all processes are exact.
    """
    if on_device:
        common = dict(batch_size=batch_size, device=device, rank=rank, world_size=world_size)
        train = TensorLoader(_as_tensors(splits.train), shuffle=True, seed=seed, transform=train_transform, **common)
        # No activations are kept for a backward pass, so evaluation takes bigger bites.
        evaluation = {**common, "batch_size": max(batch_size, EVAL_BATCH_ON_DEVICE)}
        val, test = (TensorLoader(_as_tensors(split), shuffle=False, pad=False, **evaluation)
                     for split in (splits.val, splits.test))
        return train, val, test
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
    if train_transform is None:
        train = DataLoader(splits.train, sampler=sampler, **common)
    else:
        train = DataLoader(Augmented(splits.train, train_transform, seed), sampler=EpochKeys(sampler), **common)

    def share(split: Dataset) -> Dataset:
        return Subset(split, range(rank, len(split), world_size)) if world_size > 1 else split

    test = DataLoader(share(splits.test), **{**common, "persistent_workers": False})  # used once
    return train, DataLoader(share(splits.val), **common), test
