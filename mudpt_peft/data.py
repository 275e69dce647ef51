"""Data helpers for prompt tuning on image classification: a collator, few-shot subsets and base-to-new splits."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from ._utils import check_class_names, short_repr

__all__ = [
    "BaseToNewSplit",
    "ImageClassificationCollator",
    "base_to_new",
    "check_image_classification_dataset",
    "dassl_few_shot_indices",
    "few_shot",
]


#: The column of images already processed for the model (e.g. by `dataset.map` / `with_transform` with the image
#: processor): the collator stacks it as it is.
PIXEL_VALUES = "pixel_values"


# ------------------------------------------------------------------------------------------------------------------
# validation


def _column_names(dataset: Any) -> list[str] | None:
    """The column names of an HF `datasets` dataset (map-style or iterable), `None` when they are not known."""
    names = getattr(dataset, "column_names", None)
    if names is None:
        features = getattr(dataset, "features", None)
        names = list(features) if features is not None else None
    if isinstance(names, Mapping):  # a DatasetDict
        return None
    return list(names) if names is not None else None


def _check_column(dataset: Any, column: str, role: str, argument: str) -> None:
    names = _column_names(dataset)
    if names is not None and column not in names:
        raise ValueError(
            f"The dataset has no {role} column {column!r}; its columns are {names}. "
            f"Pass the right name with `{argument}=`."
        )


def _class_label_names(dataset: Any, label_column: str) -> list[str] | None:
    features = getattr(dataset, "features", None)
    feature = features.get(label_column) if features is not None else None
    names = getattr(feature, "names", None)
    return list(names) if names else None


def check_image_classification_dataset(
    dataset: Any,
    class_names: Sequence[str],
    image_column: str = "image",
    label_column: str = "label",
    training: bool = False,
) -> None:
    """Check that an HF `datasets` dataset can be used for classification among `class_names`; raise a `ValueError`
    that says what to change otherwise.

    Checks that `class_names` are distinct non-empty strings, that the image and label columns exist, that a
    `ClassLabel` label feature has as many classes as `class_names`, and (for map-style datasets) that every label is
    an index into `class_names`. For a training set (`training=True`) also that there are at least two class names
    and that the examples cover at least two of them: with one class the loss is 0 and the accuracy trivially 100 %,
    so nothing is learned. Datasets that are not HF `datasets` (e.g. a torch `Dataset`) are only checked for
    `class_names`.

    Args:
        dataset (`datasets.Dataset` or `datasets.IterableDataset`):
            The dataset.
        class_names (`Sequence[str]`):
            The class names, in label order.
        image_column (`str`, defaults to `"image"`):
            The column with the images.
        label_column (`str`, defaults to `"label"`):
            The column with the integer labels.
        training (`bool`, defaults to `False`):
            Whether the dataset is a training set (see above).
    """
    class_names = check_class_names(class_names)
    if training:
        _check_classes_to_learn(class_names)
    if _column_names(dataset) is None:
        return
    if PIXEL_VALUES not in (_column_names(dataset) or []):  # already processed rows need no image column
        _check_column(dataset, image_column, "image", "image_column")
    _check_column(dataset, label_column, "label", "label_column")
    feature_names = _class_label_names(dataset, label_column)
    if feature_names is not None and len(feature_names) != len(class_names):
        shown = ", ".join(feature_names[:5]) + (", ..." if len(feature_names) > 5 else "")
        raise ValueError(
            f"The dataset's label feature has {len(feature_names)} classes ({shown}) but "
            f"{len(class_names)} class names were given; pass the dataset's own class names "
            f"(`dataset.features[{label_column!r}].names`) or re-index the labels (see `mudpt_peft.data.base_to_new`)."
        )
    if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__") and len(dataset) > 0:
        labels = np.asarray(list(dataset[label_column]))
        if labels.dtype.kind not in "iu":
            raise ValueError(
                f"The label column {label_column!r} must hold integer class indices, got values of type "
                f"{labels.dtype}; map the labels to indices into `class_names` first."
            )
        bad = (labels < 0) | (labels >= len(class_names))
        if bad.any():
            values = sorted({int(v) for v in labels[bad]})
            raise ValueError(
                f"The dataset has labels {values[:10]} outside the class list (valid: 0..{len(class_names) - 1} for "
                f"{len(class_names)} class names); give every class a name or remove those rows."
            )
        present = np.unique(labels)
        if training and len(present) < 2:
            raise ValueError(
                f"The training set holds examples of one class only ({short_repr(class_names[int(present[0])], 60)}, "
                f"of {len(class_names)} class names): {_ONE_CLASS} Add examples of the other classes (e.g. with "
                "`mudpt_peft.data.few_shot`)."
            )


_ONE_CLASS = "with one class to choose from, the loss is 0 and the accuracy trivially 100 %, so nothing is learned."


def _check_classes_to_learn(class_names: list[str]) -> None:
    if len(class_names) < 2:
        raise ValueError(
            f"Training needs at least 2 classes, got 1 ({short_repr(class_names[0], 60)}): {_ONE_CLASS} Give the "
            "class names of the whole label set."
        )


# ------------------------------------------------------------------------------------------------------------------
# the collator


def _size_of(size: Any) -> tuple[int, int] | None:
    """(height, width) from an image processor's `size` / `crop_size` (a dict or a `SizeDict`), if it fixes one."""
    if size is None:
        return None
    get = size.get if isinstance(size, Mapping) else (lambda key: getattr(size, key, None))
    if get("height") and get("width"):
        return int(get("height")), int(get("width"))
    if get("shortest_edge"):
        return int(get("shortest_edge")), int(get("shortest_edge"))
    return None


def _processor_output_size(image_processor: Any) -> tuple[int, int] | None:
    """The (height, width) of the pixel values `image_processor` produces, when its configuration fixes it."""
    if getattr(image_processor, "do_center_crop", False):
        crop = _size_of(getattr(image_processor, "crop_size", None))
        if crop is not None:
            return crop
    return _size_of(getattr(image_processor, "size", None))


def _to_pil(image: Any) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image.cpu() if isinstance(image, torch.Tensor) else image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)  # channels first -> channels last
    if array.dtype != np.uint8:
        array = np.clip(array * 255.0 if array.max() <= 1.0 else array, 0, 255).astype(np.uint8)
    return Image.fromarray(array.squeeze()).convert("RGB")


@dataclass
class ImageClassificationCollator:
    """Turn rows of an HF image-classification dataset into `pixel_values` and `labels` with the model's image
    processor.

    Rows are dicts such as `{"image": PIL.Image, "label": 3}` (any column names, see `image_column` /
    `label_column`); images are converted to RGB. Rows already processed for the model (a dataset mapped or
    `with_transform`-ed to a `pixel_values` column, without the image column) are stacked as they are. With
    `augment=True` each image first gets a random resized crop (area in `scale`, aspect ratio in `ratio`, resized to
    the processor's output size) and a random horizontal flip, as in CoOp / MaPLe training; the randomness comes from
    torch's global RNG, so `torch.manual_seed` (or the Trainer's `seed`) makes it reproducible.

    Args:
        image_processor:
            The model's image processor (e.g. `CLIPImageProcessor`), called as `image_processor(images=...,
            return_tensors="pt")`.
        image_column (`str`, defaults to `"image"`):
            The column with the images (PIL images, arrays or tensors).
        label_column (`str`, *optional*, defaults to `"label"`):
            The column with the integer labels; `None` for unlabelled data (no `labels` in the batch).
        augment (`bool`, defaults to `False`):
            Whether to apply the training-time random resized crop and horizontal flip.
        image_size (`int` or `tuple[int, int]`, *optional*):
            The size the model expects; when set, a batch of another size raises a `ValueError` (a model without
            position-embedding interpolation cannot take it).
        scale (`tuple[float, float]`, defaults to `(0.08, 1.0)`):
            The range of the crop's area, as a fraction of the image's area.
        ratio (`tuple[float, float]`, defaults to `(3/4, 4/3)`):
            The range of the crop's aspect ratio (width / height).
        flip_probability (`float`, defaults to 0.5):
            The probability of a horizontal flip.

    Example:

        ```py
        >>> collator = ImageClassificationCollator(image_processor, augment=True)
        >>> batch = collator([dataset[0], dataset[1]])
        >>> batch["pixel_values"].shape, batch["labels"]
        (torch.Size([2, 3, 224, 224]), tensor([0, 7]))
        ```
    """

    image_processor: Any
    image_column: str = "image"
    label_column: str | None = "label"
    augment: bool = False
    image_size: int | tuple[int, int] | None = None
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_probability: float = 0.5

    def __post_init__(self) -> None:
        if self.image_processor is None:
            raise ValueError("`image_processor` is required: pass the model's image processor (CLIPImageProcessor).")
        if not (0 < self.scale[0] <= self.scale[1] <= 1):
            raise ValueError(f"`scale` must satisfy 0 < min <= max <= 1, got {self.scale}.")
        if not (0 < self.ratio[0] <= self.ratio[1]):
            raise ValueError(f"`ratio` must satisfy 0 < min <= max, got {self.ratio}.")
        if not 0.0 <= self.flip_probability <= 1.0:
            raise ValueError(f"`flip_probability` must be in [0, 1], got {self.flip_probability}.")

    @property
    def expected_size(self) -> tuple[int, int] | None:
        """The (height, width) the model expects, from `image_size`."""
        if self.image_size is None:
            return None
        if isinstance(self.image_size, int):
            return self.image_size, self.image_size
        return int(self.image_size[0]), int(self.image_size[1])

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if len(rows) == 0:
            raise ValueError("Cannot collate an empty batch.")
        images, labels = [], []
        # rows already processed (`dataset.map` / `with_transform` to `pixel_values`) are taken as they are
        processed = self.image_column not in rows[0] and PIXEL_VALUES in rows[0]
        for row in rows:
            column = PIXEL_VALUES if processed else self.image_column
            if column not in row:
                raise ValueError(
                    f"The rows have no image column {self.image_column!r}; their columns are {list(row)}. Pass the "
                    f"right name with `image_column=` (rows already processed by the image processor need a "
                    f"{PIXEL_VALUES!r} column)."
                )
            images.append(row[column])
            if self.label_column is not None:
                if self.label_column not in row:
                    raise ValueError(
                        f"The rows have no label column {self.label_column!r}; their columns are {list(row)}. Pass "
                        "the right name with `label_column=` (or `label_column=None` for unlabelled data)."
                    )
                label = row[self.label_column]
                if label is None:
                    raise ValueError(f"A row has no label (None in column {self.label_column!r}).")
                labels.append(int(label))
        if processed:
            if self.augment:
                raise ValueError(
                    f"The rows hold {PIXEL_VALUES!r} already processed, which cannot be augmented (the random resized "
                    "crop and flip work on the images): pass the raw images, or `augment=False`."
                )
            pixel_values = torch.stack([torch.as_tensor(np.asarray(value), dtype=torch.float32) for value in images])
        elif self.augment:
            images = [self.random_resized_crop_and_flip(_to_pil(image)) for image in images]
        else:
            images = [image.convert("RGB") if isinstance(image, Image.Image) else image for image in images]
        if not processed:
            pixel_values = self.image_processor(images=images, return_tensors="pt")["pixel_values"]
        expected = self.expected_size
        if expected is not None and tuple(pixel_values.shape[-2:]) != expected:
            raise ValueError(
                f"The image processor produces {tuple(pixel_values.shape[-2:])} images but the model expects "
                f"{expected} (its `vision_config.image_size`) and does not interpolate its position embeddings; set "
                f"the processor's `size` / `crop_size` to {expected[0]} (e.g. `CLIPImageProcessor.from_pretrained("
                f"model_id)`)."
            )
        batch = {"pixel_values": pixel_values}
        if self.label_column is not None:
            batch["labels"] = torch.tensor(labels, dtype=torch.long)
        return batch

    def random_resized_crop_and_flip(self, image: Image.Image) -> Image.Image:
        """A random crop (area fraction in `scale`, aspect ratio in `ratio`) resized to the processor's output size,
        flipped horizontally with probability `flip_probability`; the same sampling as torchvision's
        `RandomResizedCrop` + `RandomHorizontalFlip`, drawn from torch's global RNG."""
        width, height = image.size
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        box = None
        for _ in range(10):
            target_area = area * float(torch.empty(1).uniform_(self.scale[0], self.scale[1]))
            aspect = math.exp(float(torch.empty(1).uniform_(log_ratio[0], log_ratio[1])))
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,)))
                left = int(torch.randint(0, width - w + 1, (1,)))
                box = (left, top, left + w, top + h)
                break
        if box is None:  # fallback: the largest central crop within the ratio range
            in_ratio = width / height
            if in_ratio < self.ratio[0]:
                w, h = width, int(round(width / self.ratio[0]))
            elif in_ratio > self.ratio[1]:
                w, h = int(round(height * self.ratio[1])), height
            else:
                w, h = width, height
            top, left = (height - h) // 2, (width - w) // 2
            box = (left, top, left + w, top + h)
        output = _processor_output_size(self.image_processor) or self.expected_size
        crop = image.crop(box)
        crop = crop.resize((output[1], output[0]), Image.BICUBIC) if output is not None else crop
        if float(torch.rand(1)) < self.flip_probability:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        return crop


# ------------------------------------------------------------------------------------------------------------------
# few-shot subsets and base-to-new splits


def _labels_of(dataset: Any, label_column: str, function: str) -> np.ndarray:
    names = _column_names(dataset)
    if names is None or not hasattr(dataset, "select"):
        raise ValueError(f"`{function}` needs a map-style HF `datasets.Dataset`, got {type(dataset).__name__}.")
    _check_column(dataset, label_column, "label", "label_column")
    labels = np.asarray(dataset[label_column][:])  # a slice: reading a `datasets` 5 column row by row is ~20x slower
    if len(labels) and labels.dtype.kind not in "iu":
        raise ValueError(f"The label column {label_column!r} must hold integer class indices, got {labels.dtype}.")
    return labels.astype(np.int64)


def few_shot(dataset: Any, shots: int, seed: int = 1, label_column: str = "label", sampling: str = "balanced") -> Any:
    """`shots` examples of every class, the same ones for a given `(dataset, shots, seed)` whatever the method.

    Two samplers:

    - `sampling="balanced"` (the default): exactly `shots` examples of every class, drawn without replacement with a
      NumPy generator seeded by `seed` (one permutation per class, classes in label order); the rows keep the
      dataset's order. The classes are those of a `ClassLabel` label feature (so a class without any example is
      caught), else the distinct labels present; a class with fewer than `shots` examples is an error.
    - `sampling="dassl"`: the rows the CoOp benchmark's code (Dassl's `generate_fewshot_dataset` after
      `set_random_seed(seed)`) selects from the same list: the rows grouped by label in order of first appearance,
      then `random.sample(group, shots)` per group from Python's `random` seeded by `seed` (a private
      `random.Random(seed)`: the global `random` state is neither read nor changed); a class with fewer than `shots`
      rows keeps them all. The rows come in Dassl's order (group by group, each in the order sampled). The protocol
      samples the validation split from the same stream right after the training split: see
      [`dassl_few_shot_indices`] and [`mudpt_peft.benchmark_datasets.protocol_splits`].

    Args:
        dataset (`datasets.Dataset`):
            A map-style HF dataset with an integer label column.
        shots (`int`):
            Examples per class (K), at least 1.
        seed (`int`, defaults to 1):
            The sampling seed (the papers average seeds 1, 2, 3).
        label_column (`str`, defaults to `"label"`):
            The column with the integer labels.
        sampling (`str`, defaults to `"balanced"`):
            `"balanced"` or `"dassl"` (see above). The default stays `"balanced"` so that the subsets of existing
            runs do not change; the CoOp benchmark protocol uses `"dassl"`.

    Returns:
        `datasets.Dataset`: the selected rows of `dataset`.

    Raises:
        `ValueError`: if `shots` is not a positive integer, `sampling` is unknown, the label column is missing, the
            dataset has fewer than 2 classes (a one-class training set learns nothing), or (`"balanced"` only) some
            classes have fewer than `shots` examples (the message names them with their counts).
    """
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise ValueError(f"`shots` must be an integer >= 1, got {shots!r}.")
    if sampling not in ("balanced", "dassl"):
        raise ValueError(f"`sampling` must be 'balanced' or 'dassl' (the CoOp benchmark's sampler), got {sampling!r}.")
    labels = _labels_of(dataset, label_column, "few_shot")
    feature_names = _class_label_names(dataset, label_column)
    classes = list(range(len(feature_names))) if feature_names else sorted({int(v) for v in labels})
    if len(classes) < 2:
        shown = f" ({short_repr(feature_names[0] if feature_names else classes[0], 60)})" if classes else ""
        raise ValueError(
            f"`few_shot` builds a training set, which needs at least 2 classes; the dataset has {len(classes)}"
            f"{shown}: {_ONE_CLASS}"
        )
    if sampling == "dassl":
        return dataset.select(dassl_few_shot_indices(labels, shots, _dassl_random(seed)))
    by_class = {c: np.flatnonzero(labels == c) for c in classes}
    short = {c: len(idx) for c, idx in by_class.items() if len(idx) < shots}
    if short:
        described = ", ".join(
            f"{feature_names[c]!r} ({n})" if feature_names else f"{c} ({n})" for c, n in sorted(short.items())
        )
        raise ValueError(
            f"{len(short)} class(es) have fewer than {shots} examples: {described}. Use fewer shots or drop those "
            "classes."
        )
    generator = np.random.default_rng(seed)
    chosen = [int(i) for c in classes for i in generator.permutation(by_class[c])[:shots]]
    return dataset.select(sorted(chosen))


def _dassl_random(seed: int) -> random.Random:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"`seed` must be an integer (Dassl seeds Python's `random` with it), got {seed!r}.")
    return random.Random(seed)


def dassl_few_shot_indices(labels: Sequence[int], shots: int, rng: random.Random) -> list[int]:
    """The positions Dassl's `generate_fewshot_dataset(items, num_shots=shots)` keeps from a list with these labels,
    drawing from `rng` as Dassl draws from Python's global `random`.

    The positions are grouped by label in order of first appearance; each group with at least `shots` positions
    gives `rng.sample(group, shots)` (in the order sampled), a smaller group is kept whole and draws nothing. Which
    positions `random.sample` picks depends only on the group's length, `shots` and the generator's state, so
    sampling positions picks the same items as sampling the items.

    Call it twice with the same `rng` to sample the training split and then the validation split from one stream,
    as CoOp's dataset classes do after `set_random_seed(seed)` (`rng = random.Random(seed)`).

    Args:
        labels (`Sequence[int]`):
            The label of each item, in the split's order.
        shots (`int`):
            Items per label (K), at least 1.
        rng (`random.Random`):
            The generator; advanced by the draws.

    Returns:
        `list[int]`: positions into `labels`, in Dassl's order.
    """
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise ValueError(f"`shots` must be an integer >= 1, got {shots!r}.")
    groups: dict[int, list[int]] = {}
    for position, label in enumerate(labels):
        groups.setdefault(int(label), []).append(position)
    chosen: list[int] = []
    for positions in groups.values():
        chosen.extend(rng.sample(positions, shots) if len(positions) >= shots else positions)
    return chosen


class BaseToNewSplit(NamedTuple):
    """The two halves of a base-to-new split; unpack as `base, base_names, new, new_names = base_to_new(...)`."""

    base: Any
    base_class_names: list[str]
    new: Any
    new_class_names: list[str]


def base_to_new(dataset: Any, class_names: Sequence[str], label_column: str = "label") -> BaseToNewSplit:
    """Split a dataset into base classes (the first ⌈C/2⌉) and new classes (the rest), as in CoCoOp and MaPLe.

    Both halves get labels re-indexed from 0 (new class `k` becomes `k - ⌈C/2⌉`); a `ClassLabel` label feature is
    replaced by one with the half's names. Train on `base`, evaluate on the base test split and on the new test split
    (each with its own class names) and report their harmonic mean (`mudpt_peft.evaluation.harmonic_mean`). `C` must
    be at least 4, so that each half has at least 2 classes.

    Args:
        dataset (`datasets.Dataset`):
            A map-style HF dataset with integer labels in `0..C-1`.
        class_names (`Sequence[str]`):
            The `C` class names, in label order.
        label_column (`str`, defaults to `"label"`):
            The column with the integer labels.

    Returns:
        [`BaseToNewSplit`]: `(base, base_class_names, new, new_class_names)`.
    """
    class_names = check_class_names(class_names)
    if len(class_names) < 4:
        raise ValueError(
            f"A base-to-new split needs at least 4 classes, so that each half has 2 or more, got {len(class_names)}: "
            f"{short_repr(class_names)}. A half of one class trains with a loss of 0, and evaluates to a trivial "
            "100 % accuracy."
        )
    labels = _labels_of(dataset, label_column, "base_to_new")
    bad = (labels < 0) | (labels >= len(class_names))
    if bad.any():
        raise ValueError(
            f"The dataset has labels {sorted({int(v) for v in labels[bad]})[:10]} outside the class list "
            f"(0..{len(class_names) - 1}); give every class a name."
        )
    split = math.ceil(len(class_names) / 2)
    is_class_label = _class_label_names(dataset, label_column) is not None

    def half(mask: np.ndarray, names: list[str], offset: int) -> Any:
        subset = dataset.select(np.flatnonzero(mask).tolist())
        new_labels = (labels[mask] - offset).tolist()
        position = subset.column_names.index(label_column)
        subset = subset.remove_columns(label_column)
        if is_class_label:
            from datasets import ClassLabel

            subset = subset.add_column(label_column, new_labels, feature=ClassLabel(names=names))
        else:
            subset = subset.add_column(label_column, new_labels)
        columns = subset.column_names
        columns.insert(position, columns.pop(columns.index(label_column)))
        return subset.select_columns(columns)

    base_names, new_names = class_names[:split], class_names[split:]
    return BaseToNewSplit(
        half(labels < split, base_names, 0), base_names, half(labels >= split, new_names, split), new_names
    )
