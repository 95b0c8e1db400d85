import pytest
import torch

from harness.data import digits, fake, imagefolder, make_loaders, set_epoch
from harness.errors import DataError


def test_digits_split_is_fixed_disjoint_and_complete():
    a, b = digits(), digits()
    assert len(a.train) + len(a.val) == 1797
    assert len(a.val) == 359
    assert torch.equal(a.train.tensors[0], b.train.tensors[0])
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10
    train_rows = {tuple(r.flatten().tolist()) for r in a.train.tensors[0]}
    val_rows = [tuple(r.flatten().tolist()) for r in a.val.tensors[0]]
    # the digits set has a few exact duplicates; the split itself must still not share indices
    assert sum(r in train_rows for r in val_rows) < 5
    assert not torch.equal(digits(split_seed=1).val.tensors[1], a.val.tensors[1])


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
        train, _ = make_loaders(splits, batch_size=32, num_workers=0, seed=seed)
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
    splits = imagefolder(str(imagefolder_root), image_size=12, val_fraction=0.25)
    assert splits.num_classes == 3
    assert (len(splits.train), len(splits.val)) == (14, 4)  # round(18 * 0.25) = 4 held out
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
