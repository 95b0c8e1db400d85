import pytest
import torch

from harness.data import diabetes, digits, fake, imagefolder, make_loaders, set_epoch
from harness.errors import DataError


def test_digits_split_is_fixed_disjoint_and_complete():
    a, b = digits(), digits()
    assert (len(a.train), len(a.val), len(a.test)) == (1079, 359, 359)
    for part in ("train", "val", "test"):
        assert torch.equal(getattr(a, part).tensors[0], getattr(b, part).tensors[0])
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10 and a.targets == "class"
    rows = {part: [tuple(r.flatten().tolist()) for r in getattr(a, part).tensors[0]]
            for part in ("train", "val", "test")}
    # the digits set has a few exact duplicates; the split itself must still not share indices
    assert sum(r in set(rows["train"]) for r in rows["val"] + rows["test"]) < 8
    assert sum(r in set(rows["val"]) for r in rows["test"]) < 5
    assert not torch.equal(digits(split_seed=1).val.tensors[1], a.val.tensors[1])


@pytest.mark.parametrize("make", [digits, diabetes])
def test_three_way_split_is_a_partition_fixed_by_split_seed_alone(make):
    from harness.data import _seeded_split

    n = 1797 if make is digits else 442
    parts = _seeded_split(n, 0, 0.2, 0.2)
    assert sorted(torch.cat(parts).tolist()) == list(range(n)), "every sample in exactly one split"
    assert [len(p) for p in parts] == [n - 2 * round(n * 0.2), round(n * 0.2), round(n * 0.2)]
    torch.manual_seed(123)  # the run's seed changes nothing
    assert all(torch.equal(p, q) for p, q in zip(parts, _seeded_split(n, 0, 0.2, 0.2)))
    assert not torch.equal(parts[2], _seeded_split(n, 1, 0.2, 0.2)[2])
    assert torch.equal(make(split_seed=3).test.tensors[1], make(split_seed=3).test.tensors[1])


def test_diabetes_is_standardised_on_the_training_split_only():
    from sklearn.datasets import load_diabetes

    splits = diabetes()
    assert splits.input_shape == (10,) and splits.num_classes == 1 and splits.targets == "value"
    x, y = splits.train.tensors
    assert x.shape[1] == 10 and y.shape[1] == 1 and y.dtype == torch.float32
    assert x.mean(0).abs().max().item() < 1e-5 and (x.std(0) - 1).abs().max().item() < 1e-4
    assert abs(y.mean().item()) < 1e-5 and abs(y.std().item() - 1) < 1e-4
    assert abs(splits.test.tensors[1].mean().item()) > 1e-3, "the test targets' statistics were not used"
    raw = load_diabetes(scaled=False)
    assert len(splits.train) + len(splits.val) + len(splits.test) == len(raw.target) == 442


class _OfficialSplits(torch.utils.data.Dataset):
    """A stand-in for a torchvision set: train=True gives 50 samples labelled 0, train=False 20 labelled 1."""

    def __init__(self, root, train, download, transform):
        self.n, self.label = (50, 0) if train else (20, 1)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.full((1, 2, 2), float(i)), self.label


def test_torchvision_sets_carve_validation_from_training_and_test_on_the_official_test():
    from harness.data import _torchvision

    splits = _torchvision("X", _OfficialSplits, "data", False, 0.2, 0, (0.0,), (1.0,), (1, 2, 2), 2)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (40, 10, 20)
    labels = {part: {getattr(splits, part)[i][1] for i in range(len(getattr(splits, part)))}
              for part in ("val", "test")}
    assert labels == {"val": {0}, "test": {1}}
    assert not set(splits.train.indices) & set(splits.val.indices)
    again = _torchvision("X", _OfficialSplits, "data", False, 0.2, 0, (0.0,), (1.0,), (1, 2, 2), 2)
    assert splits.val.indices == again.val.indices


def test_digits_standardised_on_the_training_split():
    x = digits().train.tensors[0]
    assert x.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert x.std().item() == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 2])
def test_bad_val_fraction(fraction):
    with pytest.raises(ValueError, match="val_fraction"):
        digits(val_fraction=fraction)


def test_loader_order_depends_on_the_seed_only():
    splits = digits()

    def two_epochs_of_labels(seed):
        train, _, _ = make_loaders(splits, batch_size=32, num_workers=0, seed=seed)
        epochs = []
        for epoch in range(2):
            set_epoch(train, epoch)
            epochs.append([y.tolist() for _, y in train])
        return epochs

    first, second = two_epochs_of_labels(0)
    assert first != second, "each epoch reshuffles"
    assert two_epochs_of_labels(0) == [first, second], "an epoch's order is a function of the seed and the epoch"
    assert two_epochs_of_labels(1)[0] != first


def test_fake_train_and_val_differ():
    splits = fake(train_size=4, val_size=4, image_size=(1, 5, 7), num_classes=3)
    assert splits.input_shape == (1, 5, 7)
    assert splits.train[0][0].shape == (1, 5, 7)
    assert not torch.equal(splits.train[0][0], splits.val[0][0])


def test_imagefolder_classes_and_split(imagefolder_root):
    splits = imagefolder(str(imagefolder_root), image_size=12, val_fraction=0.25, test_fraction=0.1)
    assert splits.num_classes == 3
    assert (len(splits.train), len(splits.val), len(splits.test)) == (12, 4, 2)  # round(18 * 0.25), round(1.8)
    assert splits.train[0][0].shape == (3, 12, 12)


def test_imagefolder_without_class_folders(tmp_path):
    with pytest.raises(DataError, match="holds no class sub-folders"):
        imagefolder(str(tmp_path))


def test_digits_are_exactly_scikit_learns():
    from sklearn.datasets import load_digits

    from harness.data import _load_digits

    x, y = _load_digits()
    bunch = load_digits()
    assert torch.equal(x.squeeze(1), torch.as_tensor(bunch.images, dtype=torch.float32))
    assert torch.equal(y, torch.as_tensor(bunch.target))


def _flip():
    from torchvision.transforms import v2

    return v2.Compose([v2.RandomHorizontalFlip(), v2.RandomAffine(degrees=0, translate=(0.25, 0.25))])


def _epoch_by_label_and_input(loader, epoch):
    set_epoch(loader, epoch)
    return sorted((int(y), tuple(x.flatten().tolist())) for xb, yb in loader for x, y in zip(xb, yb))


@pytest.mark.parametrize("on_device", [False, True])
def test_augmentation_touches_only_training_batches_and_is_a_function_of_seed_epoch_and_sample(on_device):
    splits = digits()
    plain = make_loaders(splits, batch_size=64, num_workers=0, seed=0, on_device=on_device)
    augmented = make_loaders(splits, batch_size=64, num_workers=0, seed=0, on_device=on_device,
                             train_transform=_flip())
    for i in (1, 2):  # validation and test batches are the very same
        assert all(torch.equal(a[0], b[0]) for a, b in zip(plain[i], augmented[i]))
    assert _epoch_by_label_and_input(plain[0], 0) != _epoch_by_label_and_input(augmented[0], 0)
    state = torch.get_rng_state()
    first = _epoch_by_label_and_input(augmented[0], 0)
    assert torch.equal(torch.get_rng_state(), state), "augmentation leaves the global generator (dropout's) alone"
    assert first == _epoch_by_label_and_input(augmented[0], 0), "replaying an epoch replays its augmentation"
    assert first != _epoch_by_label_and_input(augmented[0], 1), "each epoch draws new augmentations"
    again = make_loaders(splits, batch_size=64, num_workers=0, seed=0, on_device=on_device, train_transform=_flip())
    assert first == _epoch_by_label_and_input(again[0], 0)


def test_augmentation_is_the_same_with_workers_and_on_the_device():
    splits = digits()
    in_process = make_loaders(splits, batch_size=64, num_workers=0, seed=3, train_transform=_flip())[0]
    workers = make_loaders(splits, batch_size=64, num_workers=2, seed=3, train_transform=_flip())[0]
    on_device = make_loaders(splits, batch_size=64, num_workers=0, seed=3, on_device=True, train_transform=_flip())[0]
    for epoch in (0, 1):
        reference = _epoch_by_label_and_input(in_process, epoch)
        assert reference == _epoch_by_label_and_input(workers, epoch)
        assert reference == _epoch_by_label_and_input(on_device, epoch)
