"""Datasets as uint8 tensors on the training device, a seeded validation split, batched augmentation.

Every dataset becomes ``Splits``: uint8 images N×3×S×S (S = ``image_size``, 32 by default) and int64 labels for
train / val / test. The validation split is carved from the training set (the search optimizes on it); the test
split is for final verification only.
Augmentation works on whole batches with tensor ops (airbench style): no PIL, no per-image Python.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import pickle
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from search.errors import MicronetError

DATASETS = ("cifar10", "cifar100", "npz", "folder", "digits", "synthetic")
IMAGE_SHAPE = (3, 32, 32)
# The models end in a global average pool, so any side their three stages can halve works; 32 and 48 are tested.
IMAGE_SIZES = (8, 512)


class DataError(MicronetError):
    """A dataset that is missing or malformed."""


def default_data_root() -> Path:
    return Path(os.environ.get("MICRONET_DATA", Path.home() / ".cache" / "micronet-search" / "data"))


MAX_CLASSES = 10_000  # labels 0..C-1: a label past this is a corrupt file, not a 10^9-output head


@dataclass(frozen=True)
class DataConfig:
    """Which dataset to load and how to split it.

    ``path``: the folder holding ``cifar-10-batches-py`` / ``cifar-100-python`` (default ``$MICRONET_DATA`` or
    ``~/.cache/micronet-search/data``), or the ``.npz`` file. ``subset``: keep the first N training images,
    stratified by class. ``val_fraction`` of the (subset) training images form the validation split.
    """

    name: str = "digits"
    path: str | None = None
    download: bool = False
    subset: int | None = None
    val_fraction: float = 0.1
    seed: int = 0
    synthetic_size: int = 1024  # synthetic only: training images (the test split is a quarter of it)
    synthetic_classes: int = 10
    image_size: int = 32        # the side of the square images; folder images are resized to it once, when loaded

    def __post_init__(self):
        if self.name not in DATASETS:
            raise DataError(f"unknown dataset {self.name!r}; known datasets: {', '.join(DATASETS)}")
        if isinstance(self.val_fraction, bool) or not isinstance(self.val_fraction, (int, float)) \
                or not 0 < self.val_fraction < 1:
            raise DataError(f"val_fraction must be between 0 and 1 (exclusive), got {self.val_fraction!r}")
        if self.subset is not None and (isinstance(self.subset, bool) or not isinstance(self.subset, int)
                                        or self.subset < 2):
            raise DataError(f"subset must be a number of training images >= 2, got {self.subset!r}")
        if self.name == "npz" and not self.path:
            raise DataError("the npz dataset needs a path: --data-path FILE.npz (or path: in the study file)")
        if self.name == "folder" and not self.path:
            raise DataError("the folder dataset needs a path: --data-path DIR (or path: in the study file), a folder "
                            "of class folders, or one with train/ and test/ class folders")
        for key in ("synthetic_size", "synthetic_classes"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise DataError(f"{key} must be an integer >= 2, got {value!r}")
        if self.synthetic_classes > MAX_CLASSES:
            raise DataError(f"synthetic_classes must be at most {MAX_CLASSES}, got {self.synthetic_classes!r}")
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) \
                or not IMAGE_SIZES[0] <= self.image_size <= IMAGE_SIZES[1]:
            raise DataError(f"image_size must be an integer from {IMAGE_SIZES[0]} to {IMAGE_SIZES[1]} (pixels, "
                            f"square images), got {self.image_size!r}")

    def key(self) -> str:
        """A short stable description, used in cache keys."""
        parts = [self.name]
        if self.path:
            parts.append(Path(self.path).name)
        if self.subset:
            parts.append(f"subset{self.subset}")
        if self.name == "folder" or self.image_size != 32:
            parts.append(f"px{self.image_size}")
        if self.name == "synthetic":
            parts.append(f"n{self.synthetic_size}c{self.synthetic_classes}")
        parts.append(f"val{self.val_fraction:g}s{self.seed}")
        return "-".join(parts)


@dataclass(frozen=True)
class Splits:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    mean: tuple[float, float, float]  # per channel, of the training split, on the 0..1 scale
    std: tuple[float, float, float]

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    def to(self, device) -> Splits:
        tensors = {k: getattr(self, k).to(device) for k in
                   ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")}
        return replace(self, **tensors)


def data_digest(data: Splits) -> str:
    """A digest of the loaded data: what tells apart two files of the same name (``DataConfig.key`` keeps only a
    path's file name) or a dataset that changed on disk. The training images enter through their mean and std."""
    h = hashlib.sha256(json.dumps([data.num_classes, len(data.y_train), data.mean, data.std]).encode())
    for t in (data.y_train, data.y_val, data.x_val):
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def load_data(config: DataConfig, device="cpu") -> Splits:
    """Load the dataset once, split it, and put the uint8 tensors on ``device``."""
    x_train, y_train, x_test, y_test = _LOADERS[config.name](config)
    x_train, y_train, x_test, y_test = _check_arrays(config, x_train, y_train, x_test, y_test)
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    if config.subset is not None:
        keep = stratified_first(y_train, config.subset)
        x_train, y_train = x_train[keep], y_train[keep]
    val = stratified_split(y_train, config.val_fraction, config.seed)
    train = np.setdiff1d(np.arange(len(y_train)), val)
    if len(train) == 0 or len(val) == 0:
        raise DataError(f"{config.name}: {len(y_train)} training images are too few for a validation split of "
                        f"{config.val_fraction:g}; use more images (subset) or another val_fraction")
    # NHWC numpy → NCHW tensors with one copy per split (the views cost nothing).
    images = torch.from_numpy(x_train).permute(0, 3, 1, 2)
    x_tr = images[torch.from_numpy(train)].contiguous()
    mean, std = channel_stats(x_tr)
    splits = Splits(
        x_tr, torch.from_numpy(y_train[train]),
        images[torch.from_numpy(val)].contiguous(), torch.from_numpy(y_train[val]),
        torch.from_numpy(x_test).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y_test),
        num_classes, mean, std,
    )
    return splits.to(device)


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 N×3×H×W images, on the 0..1 scale (chunked: no float copy of it all)."""
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    for chunk in x.split(4096):
        c = chunk.to(torch.float64) / 255
        total += c.sum((0, 2, 3))
        squares += (c * c).sum((0, 2, 3))
    n = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / n
    std = (squares / n - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def stratified_first(labels: np.ndarray, n: int) -> np.ndarray:
    """Indices of the first ``n`` images, taken from each class in proportion to its size, in original order."""
    n = min(n, len(labels))
    rank = np.empty(len(labels), dtype=np.float64)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rank[idx] = (np.arange(len(idx)) + 0.5) / len(idx)  # position within the class, as a fraction
    order = np.lexsort((np.arange(len(labels)), rank))
    return np.sort(order[:n])


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Seeded indices of ``fraction`` of each class (at least one image per class with two or more)."""
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = int(round(fraction * len(idx)))
        if len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        picked.append(rng.permutation(idx)[:k])
    return np.sort(np.concatenate(picked))


# --- loaders: each returns x_train, y_train, x_test, y_test as numpy (N×32×32×3 uint8, N int) ---

_CIFAR = {
    "cifar10": ("CIFAR-10", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                "labels"),
    "cifar100": ("CIFAR-100", "cifar-100-python", ["train"], ["test"], "fine_labels"),
}


def _load_cifar(config: DataConfig):
    import torchvision

    title, folder, train_files, test_files, label_key = _CIFAR[config.name]
    root = Path(config.path) if config.path else default_data_root()
    if (root.name == folder) and not (root / folder).exists():
        root = root.parent  # accept the batches folder itself
    dataset_class = torchvision.datasets.CIFAR10 if config.name == "cifar10" else torchvision.datasets.CIFAR100
    if config.download:
        try:
            train = dataset_class(str(root), train=True, download=True)
            test = dataset_class(str(root), train=False, download=True)
        except Exception as e:  # network errors come in many types
            raise DataError(f"could not download {title} into {root}: {e}; download it elsewhere and point "
                            f"--data-path at the folder that holds {folder}/") from None
        return train.data, np.asarray(train.targets), test.data, np.asarray(test.targets)
    missing = [f for f in train_files + test_files if not (root / folder / f).is_file()]
    if missing:
        raise DataError(f"{title} not found: looked for {root / folder}/{{{','.join(missing)}}}; point --data-path "
                        f"(or path: in the study) at the folder holding {folder}/, or set download: true when online")
    # Read the python pickles directly: torchvision's reader insists on the official archive's md5 sums, which a
    # re-packed or generated copy in the same format does not have.
    x_train, y_train = _read_cifar_batches(root / folder, train_files, label_key, title)
    x_test, y_test = _read_cifar_batches(root / folder, test_files, label_key, title)
    return x_train, y_train, x_test, y_test


class _BatchUnpickler(pickle.Unpickler):
    """Reads a CIFAR python batch and nothing else: a dict of lists, bytes, strings, numbers and numpy arrays. Any
    other global a pickle names (``os.system``, ``builtins.eval``, ...) is refused, so a crafted batch file in a
    shared data folder cannot run code in every worker and export that reads it."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}  # numpy int labels

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not part of a CIFAR batch")


def _read_cifar_batches(folder: Path, files, label_key, title):
    xs, ys = [], []
    for name in files:
        try:
            with open(folder / name, "rb") as f:
                entry = _BatchUnpickler(f, encoding="latin1").load()
            xs.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            ys.append(np.asarray(entry[label_key], dtype=np.int64))
        except Exception as e:
            raise DataError(f"{title} file {folder / name} is not a CIFAR python batch ({type(e).__name__}: {e}); "
                            f"delete it and download the dataset again") from None
    return np.concatenate(xs), np.concatenate(ys)


def _load_npz(config: DataConfig):
    path = Path(config.path)
    if not path.is_file():
        raise DataError(f"npz dataset not found: {path}; pass the path of a .npz file with x_train, y_train, "
                        f"x_test, y_test")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:
        raise DataError(f"{path} is not a readable .npz file ({type(e).__name__}: {e})") from None
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arrays]
    if missing:
        raise DataError(f"{path} lacks {', '.join(missing)}; it must hold x_train and x_test (N×32×32×3 uint8) "
                        f"and y_train, y_test (N integer labels)")
    return arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"]


FOLDER_TEST_FRACTION = 0.2  # a folder without train/ and test/: this share of each class is the test split


def _load_folder(config: DataConfig):
    """torchvision's ImageFolder layout: ``DIR/<class>/*.png`` (any size, any format PIL reads), or
    ``DIR/train/<class>/…`` with ``DIR/test/<class>/…``. Every image is decoded and resized to ``image_size`` once,
    here; training then works on the uint8 tensors like every other dataset. Without train/ and test/ a seeded
    stratified fifth of each class is the test split (seed 0, whatever the study's seed: the test split stays put).
    """
    root = Path(config.path)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}; pass a folder of class folders (DIR/<class>/*.png) or one "
                        f"with train/ and test/ class folders")
    if (root / "train").is_dir() or (root / "test").is_dir():
        if not ((root / "train").is_dir() and (root / "test").is_dir()):
            have, lack = ("train", "test") if (root / "train").is_dir() else ("test", "train")
            raise DataError(f"{root} has {have}/ but no {lack}/; give both, or put the class folders directly in "
                            f"{root} for a seeded split")
        train_classes, test_classes = _class_folders(root / "train"), _class_folders(root / "test")
        if train_classes != test_classes:
            only_train = sorted(set(train_classes) - set(test_classes))
            only_test = sorted(set(test_classes) - set(train_classes))
            raise DataError(f"{root}: train/ and test/ have different classes (only in train: "
                            f"{', '.join(only_train) or 'none'}; only in test: {', '.join(only_test) or 'none'})")
        x_train, y_train = _read_images(root / "train", train_classes, config.image_size)
        x_test, y_test = _read_images(root / "test", test_classes, config.image_size)
        return x_train, y_train, x_test, y_test
    classes = _class_folders(root)
    x, y = _read_images(root, classes, config.image_size)
    test = stratified_split(y, FOLDER_TEST_FRACTION, seed=0)
    train = np.setdiff1d(np.arange(len(y)), test)
    return x[train], y[train], x[test], y[test]


def _class_folders(root: Path) -> list[str]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root} has no class folders; put each class's images in a folder of its own "
                        f"({root}/<class>/*.png)")
    if len(classes) < 2:
        raise DataError(f"{root} has one class folder ({classes[0]}); a classifier needs at least two classes")
    return classes


def _read_images(root: Path, classes: list[str], size: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image
    from torchvision.datasets import ImageFolder

    folder = ImageFolder(str(root), allow_empty=True)  # its file discovery and extensions; we decode below
    counts = np.bincount([c for _, c in folder.samples], minlength=len(folder.classes))
    empty = [name for name, n in zip(folder.classes, counts, strict=True) if n == 0]
    if empty:
        raise DataError(f"{root}: class folder {empty[0]} has no images (file types read: "
                        f"{', '.join(e.lstrip('.') for e in folder.extensions)})")
    x = np.empty((len(folder.samples), size, size, 3), dtype=np.uint8)
    for i, (path, _) in enumerate(folder.samples):
        # Decoding is per image by nature; it happens once, at load time, never in the training loop.
        try:
            with Image.open(path) as img:
                rgb = img.convert("RGB")
                if rgb.size != (size, size):
                    rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
                x[i] = np.asarray(rgb, dtype=np.uint8)
        except Exception as e:
            raise DataError(f"cannot read image {path} ({type(e).__name__}: {e}); delete or replace it") from None
    y = np.asarray([c for _, c in folder.samples], dtype=np.int64)
    return x, y


def _load_digits(config: DataConfig):
    """scikit-learn's bundled 8×8 digits (1,797 real scans), upscaled to 32×32×3; no network needed."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) * (255.0 / 16.0)).unsqueeze(1)
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    x = x.round().clamp(0, 255).to(torch.uint8).repeat(1, 3, 1, 1).permute(0, 2, 3, 1).numpy()
    y = digits.target.astype(np.int64)
    test = stratified_split(y, 0.2, seed=0)  # a fixed test split, whatever the study's seed
    train = np.setdiff1d(np.arange(len(y)), test)
    return x[train], y[train], x[test], y[test]


def _load_synthetic(config: DataConfig):
    """Random images with a class-dependent colour pattern, so a model can learn something in a few steps."""
    rng = np.random.default_rng(1234)
    c = config.synthetic_classes
    templates = (rng.integers(0, 256, size=(c, 32, 32, 3)) * 0.6 + 50).astype(np.float32)

    def make(n):
        y = np.arange(n) % c
        rng.shuffle(y)
        x = np.empty((n, 32, 32, 3), dtype=np.uint8)
        for start in range(0, n, 4096):  # in chunks: the float noise of 50,000 images would take 1.2 GB at once
            part = y[start:start + 4096]
            noise = rng.standard_normal(size=(len(part), 32, 32, 3), dtype=np.float32) * 40
            x[start:start + 4096] = np.clip(templates[part] + noise, 0, 255)
        return x, y.astype(np.int64)

    x_train, y_train = make(config.synthetic_size)
    x_test, y_test = make(max(c, config.synthetic_size // 4))
    return x_train, y_train, x_test, y_test


_LOADERS = {"cifar10": _load_cifar, "cifar100": _load_cifar, "npz": _load_npz, "folder": _load_folder,
            "digits": _load_digits, "synthetic": _load_synthetic}


def _check_arrays(config, x_train, y_train, x_test, y_test):
    where = config.path if config.name in ("npz", "folder") else config.name
    out = []
    for name, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        x, y = np.asarray(x), np.asarray(y)
        s = config.image_size
        if x.ndim != 4 or x.shape[1:] != (s, s, 3):
            raise DataError(f"{where}: x_{name} has shape {x.shape}; expected N×{s}×{s}×3 (height, width, RGB; "
                            f"image_size {s})")
        if x.dtype != np.uint8:
            raise DataError(f"{where}: x_{name} has dtype {x.dtype}; expected uint8 pixels 0..255")
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(f"{where}: y_{name} has shape {y.shape}; expected ({len(x)},), one label per image")
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{where}: y_{name} has dtype {y.dtype}; expected integer class labels")
        if len(y) and int(y.min()) < 0:
            raise DataError(f"{where}: y_{name} has negative labels; expected classes 0..C-1")
        if len(y) and int(y.max()) >= MAX_CLASSES:  # as a Python int: a uint64 label would wrap in int64
            raise DataError(f"{where}: y_{name} has label {int(y.max())}; expected classes 0..C-1 with C at most "
                            f"{MAX_CLASSES} (the model gets one output per class)")
        if len(x) == 0:
            raise DataError(f"{where}: x_{name} is empty")
        out += [x, y.astype(np.int64)]
    if len(np.unique(out[1])) < 2:
        raise DataError(f"{where}: y_train holds one class ({int(out[1][0])}); a classifier needs at least 2")
    return out


# --- batches and augmentation ---

@dataclass(frozen=True)
class Augmentation:
    """Random crop with ``crop_padding`` zero pixels, horizontal flip, optional cutout of a ``cutout``-pixel square,
    optional colour jitter (seed 004): brightness scaled by a factor in [1-b, 1+b], contrast (distance from the
    image's mean grey) by one in [1-c, 1+c], drawn per image.

    ``flip: alternate`` (airbench): each image is flipped at random in the first epoch and then in every other
    epoch exactly when it was not in the one before, so two consecutive epochs see both views of every image; the
    trainer hands the per-image flips in (``flips``)."""

    crop_padding: int = 4
    flip: bool | str = True
    cutout: int = 0
    brightness: float = 0.0
    contrast: float = 0.0

    def __post_init__(self):
        if self.flip not in (True, False, "alternate"):
            raise DataError(f"augment flip must be true, false or alternate, got {self.flip!r}")
        for key in ("brightness", "contrast"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise DataError(f"augment {key} must be a number in [0, 1) (0 = off), got {value!r}")

    def __call__(self, x: torch.Tensor, generator: torch.Generator, flips: torch.Tensor | None = None) -> torch.Tensor:
        """Augment a uint8 batch B×C×H×W; one random draw per image, all in batched tensor ops. ``flips``: which
        images to flip (``flip: alternate``; without it those flips are drawn at random)."""
        n, _, h, w = x.shape
        dev = x.device
        if self.crop_padding:
            p = self.crop_padding
            padded = F.pad(x, (p, p, p, p))
            dy = torch.randint(0, 2 * p + 1, (n, 1, 1, 1), device=dev, generator=generator)
            dx = torch.randint(0, 2 * p + 1, (n, 1, 1, 1), device=dev, generator=generator)
            rows = dy + torch.arange(h, device=dev).view(1, 1, h, 1)
            cols = dx + torch.arange(w, device=dev).view(1, 1, 1, w)
            x = _crop(padded, rows, cols)
        if self.flip:
            flip = flips if flips is not None else torch.rand(n, device=dev, generator=generator) < 0.5
            x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
        if self.cutout:
            cy = torch.randint(0, h, (n, 1, 1), device=dev, generator=generator)
            cx = torch.randint(0, w, (n, 1, 1), device=dev, generator=generator)
            top, left = cy - self.cutout // 2, cx - self.cutout // 2
            r = torch.arange(h, device=dev).view(1, h, 1)
            c = torch.arange(w, device=dev).view(1, 1, w)
            hole = (r >= top) & (r < top + self.cutout) & (c >= left) & (c < left + self.cutout)
            x = x.masked_fill(hole.unsqueeze(1), 0)
        if self.brightness or self.contrast:
            x = self._jitter(x, generator)
        return x

    def _jitter(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, dev = x.shape[0], x.device
        xf = x.float()
        if self.brightness:
            xf = xf * (1 + (torch.rand(n, 1, 1, 1, device=dev, generator=generator) * 2 - 1) * self.brightness)
        if self.contrast:
            grey = xf.mean((1, 2, 3), keepdim=True)
            xf = grey + (xf - grey) * (1 + (torch.rand(n, 1, 1, 1, device=dev, generator=generator) * 2 - 1)
                                       * self.contrast)
        return xf.round_().clamp_(0, 255).to(torch.uint8)


def _crop(padded: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    n, c = padded.shape[:2]
    h, w = rows.shape[2], cols.shape[3]
    # Gather rows, then columns: two batched gathers instead of a per-image slice loop.
    x = padded.gather(2, rows.expand(n, c, h, padded.shape[3]))
    return x.gather(3, cols.expand(n, c, h, w))


def mix_batch(x: torch.Tensor, y: torch.Tensor, num_classes: int, mixup: float, cutmix: float,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """MixUp (Zhang et al. 2018) or CutMix (Yun et al. 2019) of a float batch B×C×H×W with a shuffled copy of
    itself; returns the batch and soft targets ``lam·onehot(y) + (1-lam)·onehot(y[perm])``.

    ``mixup`` and ``cutmix`` are the Beta(α, α) parameters (0 = off); with both on, each batch uses one of the two
    at random. For CutMix ``lam`` is the share of the image left uncut, as in the paper. One ``lam`` and one box per
    batch, all tensor ops; the draws come from ``generator``, so a resumed run mixes the same way.
    """
    n, _, h, w = x.shape
    dev = x.device
    use_cutmix = cutmix > 0 and (mixup <= 0 or torch.rand((), device=dev, generator=generator).item() < 0.5)
    alpha = cutmix if use_cutmix else mixup
    # Beta from the generator: torch's Beta sampler takes no generator, so seed numpy's from it.
    seed = int(torch.randint(0, 2**31 - 1, (), device=dev, generator=generator).item())
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    perm = torch.randperm(n, device=dev, generator=generator)
    if use_cutmix:
        cut_h, cut_w = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        cy = int(torch.randint(0, h, (), device=dev, generator=generator).item())
        cx = int(torch.randint(0, w, (), device=dev, generator=generator).item())
        top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
        left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
        x = x.clone()
        x[:, :, top:bottom, left:right] = x[perm, :, top:bottom, left:right]
        lam = 1 - (bottom - top) * (right - left) / (h * w)
    else:
        x = lam * x + (1 - lam) * x[perm]
    onehot = F.one_hot(y, num_classes).to(x.dtype)
    return x, lam * onehot + (1 - lam) * onehot[perm]


@functools.lru_cache(maxsize=16)
def _pixel_stats(mean: tuple, std: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Made once per (stats, device): building them per batch would copy host → GPU on every training step.
    m = torch.tensor(mean, device=device, dtype=torch.float32).view(1, -1, 1, 1) * 255
    s = torch.tensor(std, device=device, dtype=torch.float32).view(1, -1, 1, 1) * 255
    return m, s


def normalize(x: torch.Tensor, mean, std, dtype=torch.float32, channels_last: bool = False) -> torch.Tensor:
    """uint8 B×3×H×W → normalized float batch."""
    m, s = _pixel_stats(tuple(mean), tuple(std), x.device)
    out = ((x.float() - m) / s).to(dtype)
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


def train_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator,
                  augment: Augmentation | None, drop_last: bool = True, flips: torch.Tensor | None = None):
    """One epoch of shuffled, augmented uint8 batches from tensors that already live on the device. ``flips``: a
    bool per training image, which ones to flip this epoch (``flip: alternate``)."""
    n = len(y)
    order = torch.randperm(n, device=x.device, generator=generator)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        xb = x[idx]
        if augment is not None:
            xb = augment(xb, generator, None if flips is None else flips[idx])
        yield xb, y[idx]


def steps_per_epoch(n: int, batch_size: int, drop_last: bool = True) -> int:
    if drop_last and n >= batch_size:
        return n // batch_size
    return math.ceil(n / batch_size)
