"""The CoOp benchmark's datasets: one table of the 11 datasets and the 4 ImageNet variants (folder layout, split
files, template), loaders that read them from the standard layout into `datasets.DatasetDict`s, and the protocol's
order of few-shot sampling and base-to-new subsampling.

Every number of CoOp, CoCoOp, MaPLe, PromptSRC and MuDPT is measured with CoOp's dataset classes (`datasets/*.py` of
KaiyangZhou/CoOp, on Dassl). [`load_benchmark`] reads the same files from the layout of CoOp's `DATASETS.md` and
returns the same rows, in the same order, with the same labels; [`protocol_splits`] then samples the few-shot
training and validation splits exactly as those classes do (Dassl's sampler, see [`mudpt_peft.data.few_shot`]) and
keeps the base or new classes after sampling, as they do. Nothing here downloads anything.

Images are not decoded when a dataset is loaded: the `image` column is an `Image()` feature holding each file's path,
decoded when a row is read (so that ImageNet's 1.28 million training images load in seconds).
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .data import base_to_new, dassl_few_shot_indices
from .templates import IMAGENET_7_TEMPLATES

if TYPE_CHECKING:
    import datasets

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "benchmark_of",
    "get_benchmark",
    "load_benchmark",
    "protocol_class_names",
    "protocol_splits",
]

#: The layouts [`load_benchmark`] reads (see [`Benchmark.layout`]).
LAYOUTS = ("split_file", "aircraft", "imagenet", "imagenet_v2", "imagenet_folders")
#: The split names of the returned `DatasetDict`s; CoOp calls the validation split "val".
SPLITS = ("train", "validation", "test")
#: CoOp's names of the same splits, in its split files and file names.
COOP_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Benchmark:
    """One dataset of the CoOp benchmark: where its files are, how they are read, and its prompt template.

    Args:
        name (`str`): The key of [`BENCHMARKS`]: the name of CoOp's `configs/datasets/<name>.yaml`.
        dassl_name (`str`): The name of the dataset class in CoOp's code (`cfg.DATASET.NAME`, the key of
            `trainers/zsclip.py` `CUSTOM_TEMPLATES`).
        title (`str`): The dataset's column title in the papers' tables.
        folder (`str`): Its folder under the data root.
        layout (`str`): How its files are read: `"split_file"` (CoOp's `split_zhou_*.json`), `"aircraft"`
            (`variants.txt` and `images_variant_*.txt`), `"imagenet"` (`classnames.txt` and class folders under
            `images/train` and `images/val`), `"imagenet_v2"` (folders `0` ... `999` named by ImageNet label) or
            `"imagenet_folders"` (one folder per ImageNet class, named by its WordNet id).
        image_folder (`str`): The folder, relative to `folder`, that the split file's paths (or the class folders)
            are in; `""` for the dataset folder itself (StanfordCars).
        template (`str`): The hand-written prompt of CoOp's zero-shot CLIP for this dataset (`CUSTOM_TEMPLATES`).
        num_classes (`int`): The number of classes of the real dataset (for reference; not checked when loading).
        split_file (`str`, *optional*): The split file of the `"split_file"` layout.
        sample_validation (`bool`, defaults to `True`): Whether the protocol samples a few-shot validation split
            (ImageNet: no, its validation split is its test split).

    The splits the loader returns: `train`, `validation` and `test`, as the dataset class defines them (ImageNet:
    `validation` is the test split, as in CoOp); the ImageNet variants are test sets only (`test`).
    """

    name: str
    dassl_name: str
    title: str
    folder: str
    layout: str
    image_folder: str
    template: str
    num_classes: int
    split_file: str | None = None
    sample_validation: bool = True

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"Unknown layout {self.layout!r}; choose one of {', '.join(LAYOUTS)}.")
        if (self.layout == "split_file") != (self.split_file is not None):
            raise ValueError("`split_file` is given exactly when the layout is 'split_file'.")

    @property
    def test_only(self) -> bool:
        """Whether the dataset is a test set only (the ImageNet variants of domain generalisation)."""
        return self.layout in ("imagenet_v2", "imagenet_folders")

    @property
    def splits(self) -> tuple[str, ...]:
        """The splits [`load_benchmark`] returns for this dataset."""
        return ("test",) if self.test_only else SPLITS

    def templates(self, ensemble: bool = False) -> list[str]:
        """The prompt templates of CoOp's zero-shot CLIP on this dataset.

        Args:
            ensemble (`bool`, defaults to `False`):
                `False`: the dataset's own template (CoOp's `ZeroshotCLIP`). `True`: prompt ensembling as CoOp's
                `ZeroshotCLIP2` does it, CLIP's 7 selected ImageNet templates
                ([`~mudpt_peft.templates.IMAGENET_7_TEMPLATES`]) plus the dataset's own template for every dataset
                but ImageNet.

        The prompts of a *trained* adapter follow its method's recipe instead (CoOp, MaPLe and MuDPT learn their
        prompts in place of the first words of `"a photo of a {}."` on every dataset), so these templates are for
        zero-shot CLIP and for methods that regularise towards hand-written prompts.
        """
        if not ensemble:
            return [self.template]
        return [*IMAGENET_7_TEMPLATES, *([] if self.name == "imagenet" else [self.template])]

    def layout_description(self, root: str | os.PathLike | None = None) -> str:
        """The files this dataset needs, as a tree under `root` (or `$DATA`)."""
        base = f"{Path(root) if root is not None else '$DATA'}/{self.folder}/"
        images = f"{self.image_folder}/" if self.image_folder else ""
        if self.layout == "split_file":
            described = f"the images; the split file's paths are relative to {images}"
            if not images:  # StanfordCars: cars_train/ and cars_test/ in the dataset folder
                images, described = "<folders>/", "the images, in the folders the split file's paths name"
            rows = [
                (images, described),
                (self.split_file, '{"train" | "val" | "test": [[image path, label, class name], ...]}'),
            ]
        elif self.layout == "aircraft":
            rows = [
                ("images/", "<image id>.jpg"),
                ("variants.txt", "one class name per line, in label order"),
                *((f"images_variant_{split}.txt", "'<image id> <class name>' per line") for split in COOP_SPLITS),
            ]
        elif self.layout == "imagenet":
            rows = [
                ("classnames.txt", "'<WordNet id> <class name>' per line"),
                ("images/train/<WordNet id>/", "the images of each class"),
                ("images/val/<WordNet id>/", "the same class folders (sort the official flat val/ into them)"),
            ]
        elif self.layout == "imagenet_v2":
            rows = [
                ("classnames.txt", "ImageNet's, copied from imagenet/"),
                (f"{images}<label>/", "folders 0, 1, ... named by ImageNet label, in classnames.txt's order"),
            ]
        else:
            rows = [
                ("classnames.txt", "ImageNet's, copied from imagenet/"),
                (f"{images}<WordNet id>/", f"one folder per class ({self.num_classes} in the real dataset)"),
            ]
        width = max(len(path) for path, _ in rows) + 2
        return "\n".join([base, *(f"    {path:<{width}}{what}" for path, what in rows)])


_PHOTO = "a photo of a {}."
_ROWS = (
    Benchmark("imagenet", "ImageNet", "ImageNet", "imagenet", "imagenet", "images", _PHOTO, 1000,
              sample_validation=False),
    Benchmark("caltech101", "Caltech101", "Caltech101", "caltech-101", "split_file", "101_ObjectCategories", _PHOTO,
              100, split_file="split_zhou_Caltech101.json"),
    Benchmark("oxford_pets", "OxfordPets", "OxfordPets", "oxford_pets", "split_file", "images",
              "a photo of a {}, a type of pet.", 37, split_file="split_zhou_OxfordPets.json"),
    Benchmark("stanford_cars", "StanfordCars", "StanfordCars", "stanford_cars", "split_file", "", _PHOTO, 196,
              split_file="split_zhou_StanfordCars.json"),
    Benchmark("oxford_flowers", "OxfordFlowers", "Flowers102", "oxford_flowers", "split_file", "jpg",
              "a photo of a {}, a type of flower.", 102, split_file="split_zhou_OxfordFlowers.json"),
    Benchmark("food101", "Food101", "Food101", "food-101", "split_file", "images", "a photo of {}, a type of food.",
              101, split_file="split_zhou_Food101.json"),
    Benchmark("fgvc_aircraft", "FGVCAircraft", "FGVCAircraft", "fgvc_aircraft", "aircraft", "images",
              "a photo of a {}, a type of aircraft.", 100),
    Benchmark("sun397", "SUN397", "SUN397", "sun397", "split_file", "SUN397", _PHOTO, 397,
              split_file="split_zhou_SUN397.json"),
    Benchmark("dtd", "DescribableTextures", "DTD", "dtd", "split_file", "images", "{} texture.", 47,
              split_file="split_zhou_DescribableTextures.json"),
    Benchmark("eurosat", "EuroSAT", "EuroSAT", "eurosat", "split_file", "2750", "a centered satellite photo of {}.", 10,
              split_file="split_zhou_EuroSAT.json"),
    Benchmark("ucf101", "UCF101", "UCF101", "ucf101", "split_file", "UCF-101-midframes",
              "a photo of a person doing {}.", 101, split_file="split_zhou_UCF101.json"),
    Benchmark("imagenetv2", "ImageNetV2", "ImageNet-V2", "imagenetv2", "imagenet_v2",
              "imagenetv2-matched-frequency-format-val", _PHOTO, 1000),
    Benchmark("imagenet_sketch", "ImageNetSketch", "ImageNet-Sketch", "imagenet-sketch", "imagenet_folders", "images",
              _PHOTO, 1000),
    Benchmark("imagenet_a", "ImageNetA", "ImageNet-A", "imagenet-adversarial", "imagenet_folders", "imagenet-a",
              _PHOTO, 200),
    Benchmark("imagenet_r", "ImageNetR", "ImageNet-R", "imagenet-rendition", "imagenet_folders", "imagenet-r",
              _PHOTO, 200),
)  # fmt: skip

#: The benchmark's datasets by name, in the order of the papers' tables: ImageNet, the 10 other datasets of few-shot
#: learning, base-to-new and cross-dataset transfer, then ImageNet's 4 variants of domain generalisation (test sets).
BENCHMARKS: Mapping[str, Benchmark] = MappingProxyType({row.name: row for row in _ROWS})


def get_benchmark(name: str) -> Benchmark:
    """The [`BENCHMARKS`] row of a dataset, by its name (`"oxford_pets"`), its CoOp class name (`"OxfordPets"`) or its
    table title (`"Flowers102"`), case-insensitive; a `ValueError` that lists the names otherwise."""
    if isinstance(name, str):
        key = name.strip().lower().replace("-", "_")
        for row in _ROWS:
            if key in (row.name, row.dassl_name.lower(), row.title.lower().replace("-", "_")):
                return row
    raise ValueError(f"Unknown benchmark dataset {name!r}; choose one of {', '.join(BENCHMARKS)}.")


def benchmark_of(dataset: Any) -> Benchmark | None:
    """The [`BENCHMARKS`] row of a dataset (or `DatasetDict`) that [`load_benchmark`] returned, from the name it
    records in `info.dataset_name`; `None` for other datasets."""
    if isinstance(dataset, Mapping):
        dataset = next(iter(dataset.values()), None)
    name = getattr(getattr(dataset, "info", None), "dataset_name", None)
    return BENCHMARKS.get(name) if isinstance(name, str) else None


# ------------------------------------------------------------------------------------------------------------------
# loading


def load_benchmark(name: str, root: str | os.PathLike, check_files: bool = True) -> datasets.DatasetDict:
    """Load a dataset of the CoOp benchmark from its standard layout under `root` (CoOp's `$DATA`).

    The rows, their order and their labels are those of CoOp's dataset class: the split file's lists in their order
    (FGVCAircraft: the lines of `images_variant_{train,val,test}.txt`, labels by `variants.txt`); ImageNet and its
    variants: the class folders in sorted order (ImageNet-V2: by their label number), the images of each folder in
    sorted file-name order (Dassl lists them with `os.listdir`, in the file system's order, which is not portable:
    see docs/datasets.md).

    The `label` column is a `ClassLabel` whose names are the protocol's class names in label order, with `_` written
    as a space (as CoOp's trainers write them into the prompts). ImageNet's `classnames.txt` may give two classes
    the same name; their `ClassLabel` names then get the class's WordNet id, `"name (n04008634)"`, to be distinct
    ([`protocol_class_names`] gives the names as the protocol's prompts use them).

    The `image` column is an `Image()` feature holding the file paths, decoded when a row is read. Each split's
    `info.dataset_name` is the dataset's name (see [`benchmark_of`]; the model card's evaluation results use it).

    Args:
        name (`str`):
            A dataset of [`BENCHMARKS`] (or its CoOp class name, e.g. `"OxfordPets"`).
        root (`str` or `os.PathLike`):
            The folder that holds the datasets' folders (CoOp's `$DATA`).
        check_files (`bool`, defaults to `True`):
            Check that every image a split file or list names exists (the folder layouts list existing files).

    Returns:
        `datasets.DatasetDict`: `train`, `validation` and `test` (the ImageNet variants: `test`), with columns
        `image` and `label`.

    Raises:
        `ValueError`: naming the missing or malformed file or folder and showing the expected layout.

    Example:

        ```py
        >>> from mudpt_peft.benchmark_datasets import load_benchmark, protocol_splits
        >>> pets = load_benchmark("oxford_pets", "~/data")
        >>> pets["train"].features["label"].names[:2]
        ['abyssinian', 'american bulldog']
        >>> run = protocol_splits(pets, shots=16, seed=1, subsample="base")
        ```
    """
    import datasets

    spec = get_benchmark(name)
    root = Path(os.path.expanduser(os.fspath(root))).absolute()
    folder = root / spec.folder
    if not folder.is_dir():
        raise _layout_error(spec, root, f"The dataset folder {folder} does not exist")
    readers = {
        "split_file": _read_split_file,
        "aircraft": _read_aircraft,
        "imagenet": _read_imagenet,
        "imagenet_v2": _read_imagenet_v2,
        "imagenet_folders": _read_imagenet_folders,
    }
    splits, class_names = readers[spec.layout](spec, root, folder)
    if check_files and spec.layout in ("split_file", "aircraft"):
        _check_files_exist(spec, root, splits)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=class_names)})
    return datasets.DatasetDict(
        {split: _dataset(spec, split, paths, labels, features) for split, (paths, labels) in splits.items()}
    )


_Splits = dict[str, tuple[list[str], list[int]]]


def _layout_error(spec: Benchmark, root: Path, problem: str) -> ValueError:
    return ValueError(
        f"{problem}. {spec.title} ({spec.name!r}) is read from this layout (CoOp's DATASETS.md; see "
        f"docs/datasets.md):\n{spec.layout_description(root)}"
    )


def _required_file(spec: Benchmark, root: Path, path: Path) -> Path:
    if not path.is_file():
        raise _layout_error(spec, root, f"The file {path} does not exist")
    return path


def _required_folder(spec: Benchmark, root: Path, path: Path) -> Path:
    if not path.is_dir():
        raise _layout_error(spec, root, f"The folder {path} does not exist")
    return path


def _text_lines(spec: Benchmark, root: Path, path: Path) -> list[tuple[int, str]]:
    """`(line number, stripped line)` of the non-blank lines of a required text file."""
    text = _required_file(spec, root, path).read_text(encoding="utf-8")
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1) if line.strip()]


def _prompt_name(name: str) -> str:
    """A class name as CoOp's trainers put it into the prompts: `_` written as a space."""
    return name.replace("_", " ")


def _read_split_file(spec: Benchmark, root: Path, folder: Path) -> tuple[_Splits, list[str]]:
    path = _required_file(spec, root, folder / spec.split_file)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"The split file {path} is not valid JSON ({error}).") from error
    missing = [key for key in COOP_SPLITS if not isinstance(content, dict) or key not in content]
    if missing:
        raise ValueError(
            f"The split file {path} must be a JSON object with the lists 'train', 'val' and 'test' of "
            f"[image path, label, class name] entries; it has no {', '.join(repr(key) for key in missing)}."
        )
    image_dir = _required_folder(spec, root, folder / spec.image_folder) if spec.image_folder else folder
    names: dict[int, tuple[str, str]] = {}  # label -> (class name, where it was first seen)
    splits: _Splits = {}
    for key, split in zip(COOP_SPLITS, SPLITS, strict=True):
        entries = content[key]
        if not isinstance(entries, list):
            raise ValueError(f"'{key}' of the split file {path} must be a list, got {type(entries).__name__}.")
        paths, labels = [], []
        for index, entry in enumerate(entries):
            where = f"'{key}' entry {index} of the split file {path}"
            if not (
                isinstance(entry, list)
                and len(entry) == 3
                and isinstance(entry[0], str)
                and isinstance(entry[1], int)
                and not isinstance(entry[1], bool)
                and entry[1] >= 0
                and isinstance(entry[2], str)
            ):
                raise ValueError(f"{where} must be [image path, label >= 0, class name], got {entry!r:.200}.")
            relative, label, class_name = entry
            seen = names.setdefault(label, (class_name, where))
            if seen[0] != class_name:
                raise ValueError(
                    f"Label {label} is called {seen[0]!r} in {seen[1]} and {class_name!r} in {where}: each label "
                    "must have one class name."
                )
            paths.append(os.path.join(image_dir, relative))
            labels.append(label)
        splits[split] = (paths, labels)
    return splits, _class_names_by_label(path, {label: name for label, (name, _) in names.items()})


def _class_names_by_label(source: Path, names: Mapping[int, str]) -> list[str]:
    """The class names in label order, from labels that must be 0 .. C-1, each name once."""
    gaps = sorted(set(range(max(names, default=-1) + 1)) - set(names))
    if not names or gaps:
        raise ValueError(
            f"The labels of {source} must be 0 .. C-1 with every label used; "
            + (f"labels {gaps[:10]} have no entry." if names else "it has no entries.")
        )
    ordered = [_prompt_name(names[label]) for label in range(len(names))]
    repeated = sorted({name for name in ordered if ordered.count(name) > 1})
    if repeated:
        raise ValueError(f"{source} gives several labels the same class name: {repeated[:10]}.")
    return ordered


def _read_aircraft(spec: Benchmark, root: Path, folder: Path) -> tuple[_Splits, list[str]]:
    variants_file = folder / "variants.txt"
    variants = [line for _, line in _text_lines(spec, root, variants_file)]
    labels_of = {}
    for label, variant in enumerate(variants):
        if labels_of.setdefault(variant, label) != label:
            raise ValueError(f"{variants_file} lists the class {variant!r} twice.")
    image_dir = _required_folder(spec, root, folder / spec.image_folder)
    splits: _Splits = {}
    for key, split in zip(COOP_SPLITS, SPLITS, strict=True):
        path = folder / f"images_variant_{key}.txt"
        paths, labels = [], []
        for number, line in _text_lines(spec, root, path):
            image_id, _, variant = line.partition(" ")
            if variant not in labels_of:
                raise ValueError(
                    f"Line {number} of {path} ({line!r:.200}) names the class {variant!r}, which {variants_file} "
                    "does not list; each line is '<image id> <class name>'."
                )
            paths.append(str(image_dir / f"{image_id}.jpg"))
            labels.append(labels_of[variant])
        splits[split] = (paths, labels)
    return splits, _class_names_by_label(variants_file, dict(enumerate(variants)))


def _read_classnames(spec: Benchmark, root: Path, folder: Path) -> dict[str, str]:
    """ImageNet's `classnames.txt`: WordNet id -> class name, in the file's order."""
    path = folder / "classnames.txt"
    names: dict[str, str] = {}
    for number, line in _text_lines(spec, root, path):
        wnid, _, name = line.partition(" ")
        if not name.strip():
            raise ValueError(f"Line {number} of {path} ({line!r:.200}) must be '<WordNet id> <class name>'.")
        if wnid in names:
            raise ValueError(f"{path} lists {wnid} twice (line {number}).")
        names[wnid] = name
    return names


def _listing(path: Path, directories: bool) -> list[str]:
    """The sorted names of the non-hidden folders (or files) in `path`."""
    with os.scandir(path) as entries:
        return sorted(
            entry.name
            for entry in entries
            if not entry.name.startswith(".") and (entry.is_dir() if directories else entry.is_file())
        )


def _distinct_names(names: Sequence[str], wnids: Sequence[str]) -> list[str]:
    """Class names for a `ClassLabel` (distinct): a name given to several classes gets each one's WordNet id."""
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return [f"{name} ({wnid})" if counts[name] > 1 else name for name, wnid in zip(names, wnids, strict=True)]


def _class_folders(image_dir: Path, folders: Sequence[str]) -> tuple[list[str], list[int]]:
    """The images of each class folder, folder by folder (label = position in `folders`), files in sorted order."""
    paths, labels = [], []
    for label, folder in enumerate(folders):
        class_dir = os.path.join(image_dir, folder)  # strings: a Path per image costs more than the listing
        files = _listing(Path(class_dir), directories=False)
        paths += [os.path.join(class_dir, file) for file in files]
        labels += [label] * len(files)
    return paths, labels


def _wnid_names(spec: Benchmark, root: Path, folder: Path, wnids: Sequence[str], where: Path) -> list[str]:
    classnames = _read_classnames(spec, root, folder)
    unknown = [wnid for wnid in wnids if wnid not in classnames]
    if unknown:
        raise ValueError(
            f"{folder / 'classnames.txt'} has no class name for the folders {unknown[:10]} of {where}; use "
            "ImageNet's classnames.txt (from CoOp's DATASETS.md)."
        )
    if not wnids:
        raise _layout_error(spec, root, f"The folder {where} has no class folders")
    return _distinct_names([_prompt_name(classnames[wnid]) for wnid in wnids], wnids)


def _read_imagenet(spec: Benchmark, root: Path, folder: Path) -> tuple[_Splits, list[str]]:
    image_dir = _required_folder(spec, root, folder / spec.image_folder)
    train_dir = _required_folder(spec, root, image_dir / "train")
    val_dir = _required_folder(spec, root, image_dir / "val")
    wnids = _listing(train_dir, directories=True)
    val_wnids = _listing(val_dir, directories=True)
    if val_wnids != wnids:
        only_train = sorted(set(wnids) - set(val_wnids))[:10]
        only_val = sorted(set(val_wnids) - set(wnids))[:10]
        raise _layout_error(
            spec,
            root,
            f"{val_dir} must hold the same class folders as {train_dir} (CoOp labels each by its sorted position); "
            f"only in train: {only_train}, only in val: {only_val}",
        )
    names = _wnid_names(spec, root, folder, wnids, train_dir)
    train = _class_folders(train_dir, wnids)
    test = _class_folders(val_dir, wnids)
    return {"train": train, "validation": test, "test": test}, names


def _read_imagenet_v2(spec: Benchmark, root: Path, folder: Path) -> tuple[_Splits, list[str]]:
    image_dir = _required_folder(spec, root, folder / spec.image_folder)
    classnames = _read_classnames(spec, root, folder)
    wnids = list(classnames)
    numbers = [str(label) for label in range(len(wnids))]
    missing = [number for number in numbers if not (image_dir / number).is_dir()]
    if missing:
        raise _layout_error(
            spec,
            root,
            f"{image_dir} has no folders {missing[:10]}: it needs one folder per line of classnames.txt, named "
            f"0 .. {len(wnids) - 1}",
        )
    names = _distinct_names([_prompt_name(classnames[wnid]) for wnid in wnids], wnids)
    return {"test": _class_folders(image_dir, numbers)}, names


def _read_imagenet_folders(spec: Benchmark, root: Path, folder: Path) -> tuple[_Splits, list[str]]:
    image_dir = _required_folder(spec, root, folder / spec.image_folder)
    wnids = _listing(image_dir, directories=True)
    names = _wnid_names(spec, root, folder, wnids, image_dir)
    return {"test": _class_folders(image_dir, wnids)}, names


def _check_files_exist(spec: Benchmark, root: Path, splits: _Splits) -> None:
    for split, (paths, _) in splits.items():
        missing = [path for path in paths if not os.path.isfile(path)]
        if missing:
            shown = "\n".join(f"    {path}" for path in missing[:5])
            raise _layout_error(
                spec,
                root,
                f"{len(missing)} of the {len(paths)} images of the {split!r} split do not exist, e.g.\n{shown}\n"
                "(pass `check_files=False` to load anyway)",
            )


def _dataset(
    spec: Benchmark, split: str, paths: list[str], labels: list[int], features: datasets.Features
) -> datasets.Dataset:
    """An in-memory `datasets.Dataset` of image paths (not decoded) and labels, built as one Arrow table."""
    import datasets
    import pyarrow as pa
    from datasets.table import InMemoryTable

    images = pa.StructArray.from_arrays(
        [pa.nulls(len(paths), pa.binary()), pa.array(paths, pa.string())], names=["bytes", "path"]
    )
    table = pa.table({"image": images, "label": pa.array(labels, pa.int64())}).cast(features.arrow_schema)
    info = datasets.DatasetInfo(
        description=f"{spec.title} of the CoOp benchmark, read by mudpt_peft.benchmark_datasets.load_benchmark.",
        dataset_name=spec.name,
        features=features,
    )
    return datasets.Dataset(InMemoryTable(table), info=info, split=datasets.NamedSplit(split))


# ------------------------------------------------------------------------------------------------------------------
# the protocol's class names and splits

_WNID_SUFFIX = re.compile(r" \(n\d{8}\)$")


def protocol_class_names(dataset: Any, label_column: str = "label") -> list[str]:
    """The class names of a loaded benchmark dataset as the protocol's prompts use them, in label order.

    They are the `ClassLabel` names, except for ImageNet and its variants where `classnames.txt` gives several
    classes the same name: [`load_benchmark`] tells those apart by their WordNet id (`"missile (n04008634)"`), and
    this gives the repeated name back (`"missile"`), as in CoOp's prompts, for an exact reproduction (the protocol's
    classifier cannot tell those classes apart). A classifier built on the `ClassLabel` names can.

    Args:
        dataset (`datasets.Dataset` or `datasets.DatasetDict`):
            A dataset from [`load_benchmark`] (or [`protocol_splits`]).
        label_column (`str`, defaults to `"label"`):
            The label column.
    """
    if isinstance(dataset, Mapping):
        dataset = next(iter(dataset.values()))
    names = list(dataset.features[label_column].names)
    spec = benchmark_of(dataset)
    if spec is None or spec.layout not in ("imagenet", "imagenet_v2", "imagenet_folders"):
        return names
    return [_WNID_SUFFIX.sub("", name) for name in names]


def protocol_splits(
    splits: Mapping[str, Any],
    shots: int | None,
    seed: int,
    subsample: str = "all",
    sample_validation: bool | None = None,
    label_column: str = "label",
) -> datasets.DatasetDict:
    """The splits of one run of the CoOp protocol, in the order CoOp's dataset classes make them.

    1. The few-shot training split: Dassl's sampler on the training split with `shots` per class, from
       `random.Random(seed)` ([`~mudpt_peft.data.few_shot`] with `sampling="dassl"`).
    2. The few-shot validation split: the same sampler with `min(shots, 4)` per class, from the *same* generator,
       right after the training split (as `set_random_seed(seed)` followed by the two `generate_fewshot_dataset`
       calls). ImageNet samples no validation split: its validation split is its test split.
    3. With `subsample="base"` or `"new"`: on every split, the base classes (the first ⌈C/2⌉ of the sorted labels)
       or the new classes (the rest), relabelled from 0 ([`~mudpt_peft.data.base_to_new`], which is Dassl's
       `subsample_classes`). This comes *after* the few-shot sampling, which therefore draws over all classes: the
       16 shots of a base class are the same in a base-to-new run as in a few-shot run with the same seed.

    Args:
        splits (`datasets.DatasetDict`):
            `train` and optionally `validation` and `test` (e.g. from [`load_benchmark`]).
        shots (`int`, *optional*):
            Examples per class (1, 2, 4, 8, 16 in the papers); `None` keeps the whole training and validation splits.
        seed (`int`):
            The run's seed (1, 2, 3 in the papers).
        subsample (`str`, defaults to `"all"`):
            `"all"`, `"base"` or `"new"` (CoOp's `DATASET.SUBSAMPLE_CLASSES`).
        sample_validation (`bool`, *optional*):
            Whether to sample the validation split (step 2); by default as the dataset does ([`Benchmark`]'s
            `sample_validation` for a loaded benchmark, else `True`).
        label_column (`str`, defaults to `"label"`):
            The label column.

    Returns:
        `datasets.DatasetDict`: the same splits, sampled and subsampled.
    """
    import datasets

    if subsample not in ("all", "base", "new"):
        raise ValueError(f"`subsample` must be 'all', 'base' or 'new', got {subsample!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"`seed` must be an integer (CoOp seeds Python's `random` with it), got {seed!r}.")
    if "train" not in splits:
        spec = benchmark_of(splits)
        described = f"{spec.title} is a test set only" if spec is not None else f"the splits are {list(splits)}"
        raise ValueError(f"The protocol samples a training split, and there is none: {described}.")
    out = dict(splits)
    if shots is not None:
        if sample_validation is None:
            spec = benchmark_of(splits)
            sample_validation = spec.sample_validation if spec is not None else True
        rng = random.Random(seed)
        train = splits["train"]
        out["train"] = train.select(dassl_few_shot_indices(_labels(train, label_column), shots, rng))
        if sample_validation and "validation" in splits:
            validation = splits["validation"]
            indices = dassl_few_shot_indices(_labels(validation, label_column), min(shots, 4), rng)
            out["validation"] = validation.select(indices)
    if subsample != "all":
        names = list(out["train"].features[label_column].names)
        present = sorted(set(_labels(out["train"], label_column)))
        if present != list(range(len(names))):
            missing = sorted(set(range(len(names))) - set(present))
            raise ValueError(
                f"The training split has no example of the classes {missing[:10]}; the base / new halves are "
                "those of the labels the training split has, so every class needs a training example."
            )
        half = 0 if subsample == "base" else 2
        out = {split: base_to_new(dataset, names, label_column)[half] for split, dataset in out.items()}
    return datasets.DatasetDict(out)


def _labels(dataset: Any, label_column: str) -> list[int]:
    return [int(label) for label in dataset[label_column][:]]  # a slice: much faster than iterating a column
