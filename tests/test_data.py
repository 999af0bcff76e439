import pickle

import numpy as np
import pytest
import torch

from search.training.data import (
    Augmentation,
    DataConfig,
    DataError,
    channel_stats,
    load_data,
    normalize,
    stratified_first,
    train_batches,
)


def test_digits_are_real_images_split_three_ways():
    s = load_data(DataConfig(name="digits"))
    assert s.x_train.dtype == torch.uint8 and s.x_train.shape[1:] == (3, 32, 32)
    assert s.num_classes == 10
    n_train, n_val, n_test = len(s.y_train), len(s.y_val), len(s.y_test)
    assert n_train + n_val + n_test == 1797
    assert n_val == pytest.approx(0.1 * (n_train + n_val), abs=10)
    assert s.x_train.float().std() > 20  # real pixel content, not a constant
    assert torch.equal(s.x_train[:, 0], s.x_train[:, 1])  # grey digits replicated over RGB


def test_validation_split_is_seeded_stratified_and_disjoint():
    a = load_data(DataConfig(name="digits", seed=1))
    b = load_data(DataConfig(name="digits", seed=1))
    c = load_data(DataConfig(name="digits", seed=2))
    assert torch.equal(a.y_val, b.y_val) and torch.equal(a.x_val, b.x_val)
    assert not torch.equal(a.x_val, c.x_val)
    assert torch.equal(a.x_test, c.x_test)  # the test split does not move with the seed
    counts = torch.bincount(a.y_val, minlength=10)
    assert counts.max() - counts.min() <= 1  # 10 % of each class, rounded
    train_rows = {bytes(x.numpy()) for x in a.x_train}
    assert not any(bytes(x.numpy()) in train_rows for x in a.x_val)


def test_subset_takes_the_first_images_of_each_class():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2] * 2)
    keep = stratified_first(labels, 6)
    assert np.bincount(labels[keep]).tolist() == [2, 2, 2]
    assert keep.tolist() == [0, 1, 4, 5, 8, 9]
    s = load_data(DataConfig(name="digits", subset=300))
    assert len(s.y_train) + len(s.y_val) == 300
    assert torch.bincount(torch.cat([s.y_train, s.y_val])).min() >= 29


def write_cifar(root, n_per_batch=20, cifar100=False):
    rng = np.random.default_rng(0)
    folder = root / ("cifar-100-python" if cifar100 else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    names = ["train", "test"] if cifar100 else [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    images = {}
    for name in names:
        data = rng.integers(0, 256, size=(n_per_batch, 3 * 32 * 32), dtype=np.uint8)
        labels = list(rng.integers(0, 100 if cifar100 else 10, size=n_per_batch))
        labels[:10] = range(10)  # every class present
        entry = {"data": data, ("fine_labels" if cifar100 else "labels"): labels}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
        images[name] = (data, labels)
    return images


def test_cifar_loader_reads_the_python_format(tmp_path):
    images = write_cifar(tmp_path)
    s = load_data(DataConfig(name="cifar10", path=str(tmp_path), val_fraction=0.2))
    assert len(s.y_train) + len(s.y_val) == 100 and len(s.y_test) == 20
    data, labels = images["test_batch"]
    # CIFAR rows are channel-major (1024 red, 1024 green, 1024 blue), row by row.
    assert torch.equal(s.x_test[3], torch.from_numpy(data[3].reshape(3, 32, 32)))
    assert s.y_test.tolist() == [int(v) for v in labels]
    assert s.num_classes == 10


def test_cifar100_loader_uses_fine_labels(tmp_path):
    write_cifar(tmp_path, n_per_batch=40, cifar100=True)
    s = load_data(DataConfig(name="cifar100", path=str(tmp_path / "cifar-100-python")))
    assert len(s.y_test) == 40 and s.y_test.max() < 100


def test_missing_cifar_says_where_it_looked_and_how_to_fix(tmp_path):
    with pytest.raises(DataError) as info:
        load_data(DataConfig(name="cifar10", path=str(tmp_path)))
    message = str(info.value)
    assert str(tmp_path / "cifar-10-batches-py") in message
    assert "--data-path" in message and "download: true" in message


def test_corrupt_cifar_batch(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="data_batch_3 is not a CIFAR python batch"):
        load_data(DataConfig(name="cifar10", path=str(tmp_path)))


def save_npz(path, **overrides):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, size=(60, 32, 32, 3), dtype=np.uint8), "y_train": np.arange(60) % 3,
        "x_test": rng.integers(0, 256, size=(12, 32, 32, 3), dtype=np.uint8), "y_test": np.arange(12) % 3,
    }
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def test_npz_bring_your_own_data(tmp_path):
    path = save_npz(tmp_path / "mine.npz")
    s = load_data(DataConfig(name="npz", path=str(path)))
    assert s.num_classes == 3 and len(s.y_test) == 12
    raw = np.load(path)["x_test"]
    assert torch.equal(s.x_test, torch.from_numpy(raw).permute(0, 3, 1, 2))


@pytest.mark.parametrize("overrides,fragment", [
    ({"x_train": np.zeros((60, 3, 32, 32), np.uint8)}, "x_train has shape (60, 3, 32, 32); expected N×32×32×3"),
    ({"x_test": np.zeros((12, 32, 32, 3), np.float32)}, "x_test has dtype float32; expected uint8"),
    ({"y_train": np.zeros(59, np.int64)}, "y_train has shape (59,)"),
    ({"y_test": np.full(12, 0.5)}, "y_test has dtype float64; expected integer"),
    ({"y_test": None}, "lacks y_test"),
])
def test_malformed_npz(tmp_path, overrides, fragment):
    path = save_npz(tmp_path / "bad.npz", **overrides)
    with pytest.raises(DataError) as info:
        load_data(DataConfig(name="npz", path=str(path)))
    assert fragment in str(info.value)


def test_bad_data_config():
    with pytest.raises(DataError, match="unknown dataset 'mnist'"):
        DataConfig(name="mnist")
    with pytest.raises(DataError, match="val_fraction"):
        DataConfig(val_fraction=1.0)
    with pytest.raises(DataError, match="needs a path"):
        DataConfig(name="npz")


def test_crop_is_a_window_of_the_zero_padded_image():
    x = torch.randint(1, 256, (64, 3, 32, 32), dtype=torch.uint8)
    out = Augmentation(crop_padding=4, flip=False)(x, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    shifts = set()
    for i in range(64):
        found = [(dy, dx) for dy in range(9) for dx in range(9)
                 if torch.equal(out[i], padded[i, :, dy:dy + 32, dx:dx + 32])]
        assert found, f"image {i} is not a crop"
        shifts.add(found[0])
    assert len(shifts) > 20  # each image draws its own offset


def test_flip_and_cutout():
    x = torch.randint(1, 256, (256, 3, 32, 32), dtype=torch.uint8)
    out = Augmentation(crop_padding=0, flip=True)(x, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, i.flip(2)) for o, i in zip(out, x, strict=True)])
    same = torch.tensor([torch.equal(o, i) for o, i in zip(out, x, strict=True)])
    assert (flipped | same).all() and 80 < flipped.sum() < 176
    cut = Augmentation(crop_padding=0, flip=False, cutout=8)(x, torch.Generator().manual_seed(0))
    zeros = (cut == 0).all(1).flatten(1).sum(1)
    assert zeros.min() >= 4 * 4 and zeros.max() == 8 * 8  # a square of side 8, clipped at the border


def test_augmentation_is_seeded():
    x = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    a = Augmentation(cutout=8)(x, torch.Generator().manual_seed(5))
    b = Augmentation(cutout=8)(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_batches_visit_every_image_once():
    x = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1).expand(100, 3, 2, 2).contiguous()
    y = torch.arange(100)
    seen = torch.cat([yb for _, yb in train_batches(x, y, 32, torch.Generator().manual_seed(0), None,
                                                    drop_last=False)])
    assert sorted(seen.tolist()) == list(range(100))
    full = [yb for _, yb in train_batches(x, y, 32, torch.Generator().manual_seed(0), None)]
    assert [len(b) for b in full] == [32, 32, 32]


def test_normalize_uses_training_statistics():
    s = load_data(DataConfig(name="synthetic", synthetic_size=200))
    mean, std = channel_stats(s.x_train)
    z = normalize(s.x_train, mean, std)
    assert z.mean((0, 2, 3)).abs().max() < 1e-3
    assert (z.std((0, 2, 3)) - 1).abs().max() < 1e-2
