"""`few_shot(..., sampling="dassl")` and `protocol_splits` select exactly the rows of the CoOp benchmark's code.

The reference below is written from the protocol's description (issue #16), not from the package: after
`set_random_seed(seed)` (Python's global `random` seeded with `seed`), Dassl's `generate_fewshot_dataset` groups the
items of a split's list by label in order of first appearance and calls `random.sample(items, K)` per label (a label
with fewer than K items keeps them all, without drawing); the dataset classes then sample the validation split with
`min(K, 4)` shots from the same stream; ImageNet samples its training split only. Base-to-new: the labels of the
training split sorted, base = the first ceil(n/2), new = the rest, both relabelled from 0, after the sampling.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict

import datasets
import numpy as np
import pytest

from mudpt_peft.benchmark_datasets import protocol_splits
from mudpt_peft.data import base_to_new, dassl_few_shot_indices, few_shot

SEEDS = [1, 2, 3, 17]
SHOTS = [1, 2, 4, 8, 16]


class Item:
    """A stand-in for Dassl's `Datum`: an item with a label (sampled as an object, not as a position)."""

    def __init__(self, index: int, label: int) -> None:
        self.index, self.label = index, label


def reference_fewshot(items: list[Item], shots: int) -> list[Item]:
    """Dassl's generate_fewshot_dataset, drawing from the *global* random module as Dassl does."""
    by_label: dict[int, list[Item]] = defaultdict(list)
    for item in items:
        by_label[item.label].append(item)
    out: list[Item] = []
    for group in by_label.values():
        out.extend(random.sample(group, shots) if len(group) >= shots else group)
    return out


def reference_subsample(splits: list[list[Item]], subsample: str) -> list[list[tuple[int, int]]]:
    """Dassl's subsample_classes on (train, ...): `(index, new label)` of the kept items of each split."""
    labels = sorted({item.label for item in splits[0]})
    m = math.ceil(len(labels) / 2)
    selected = labels[:m] if subsample == "base" else labels[m:]
    relabel = {label: new for new, label in enumerate(selected)}
    return [[(item.index, relabel[item.label]) for item in split if item.label in relabel] for split in splits]


def reference_run(train, validation, shots, seed, sample_validation=True):
    state = random.getstate()
    try:
        random.seed(seed)  # set_random_seed(seed), as far as Python's random goes
        train = reference_fewshot(train, shots)
        if sample_validation:
            validation = reference_fewshot(validation, min(shots, 4))
    finally:
        random.setstate(state)
    return train, validation


def synthetic_labels(seed: int, classes: int = 7, size: int = 120) -> list[int]:
    """About `size` unbalanced labels in a shuffled order (first appearances far from sorted): one class with 1 item,
    one with 3, one with 30, the others random."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(5, max(6, 2 * size // classes), classes)
    special = rng.permutation(classes)[:3]
    counts[special] = [1, 3, 30]
    labels = [int(label) for label, count in enumerate(counts) for _ in range(count)]
    rng.shuffle(labels)
    return labels


def as_dataset(labels: list[int], classes: int) -> datasets.Dataset:
    names = [f"class {c}" for c in range(classes)]
    features = datasets.Features({"index": datasets.Value("int64"), "label": datasets.ClassLabel(names=names)})
    return datasets.Dataset.from_dict({"index": list(range(len(labels))), "label": labels}, features=features)


@pytest.mark.parametrize("data_seed", [0, 1, 2])
@pytest.mark.parametrize("shots", SHOTS)
@pytest.mark.parametrize("seed", SEEDS)
def test_dassl_sampling_selects_the_reference_rows(data_seed, shots, seed):
    labels = synthetic_labels(data_seed)
    counts = np.bincount(labels)
    items = [Item(i, label) for i, label in enumerate(labels)]
    expected, _ = reference_run(items, [], shots, seed, sample_validation=False)
    state = random.getstate()
    subset = few_shot(as_dataset(labels, 7), shots, seed=seed, sampling="dassl")
    assert random.getstate() == state  # the global random state is neither used nor changed
    assert subset["index"][:] == [item.index for item in expected]  # the same rows, in Dassl's order
    kept = np.bincount(subset["label"][:], minlength=7)
    assert kept.tolist() == np.minimum(counts, shots).tolist()  # K per class, all of a smaller class


@pytest.mark.parametrize("data_seed", [0, 1, 2, 10, 11])
def test_the_synthetic_labels_cover_the_cases(data_seed):
    labels = synthetic_labels(data_seed, size=120 if data_seed < 10 else 40)
    first_appearance = list(dict.fromkeys(labels))
    assert first_appearance != sorted(first_appearance)  # groups are not in label order
    counts = np.bincount(labels)
    assert counts.min() < 4 and counts.max() > 16  # short classes for most K, long ones for every K


def test_dassl_sampling_depends_on_the_seed_and_differs_from_the_balanced_sampler():
    labels = synthetic_labels(0)
    dataset = as_dataset(labels, 7)
    runs = {seed: few_shot(dataset, 4, seed=seed, sampling="dassl")["index"][:] for seed in SEEDS}
    assert len({tuple(sorted(run)) for run in runs.values()}) == len(SEEDS)
    with pytest.raises(ValueError, match=r"class\(es\) have fewer than 16 examples"):
        few_shot(dataset, 16, seed=1)  # the balanced sampler refuses short classes, Dassl's keeps them whole
    assert len(few_shot(dataset, 16, seed=1, sampling="dassl")) == int(np.minimum(np.bincount(labels), 16).sum())


def test_indices_of_one_stream_continue_where_the_last_call_stopped():
    labels = synthetic_labels(1)
    rng = random.Random(5)
    first, second = dassl_few_shot_indices(labels, 2, rng), dassl_few_shot_indices(labels, 2, rng)
    assert first == dassl_few_shot_indices(labels, 2, random.Random(5)) and first != second


@pytest.mark.parametrize("subsample", ["all", "base", "new"])
@pytest.mark.parametrize("shots", SHOTS)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_protocol_splits_sample_train_then_validation_from_one_stream_then_subsample(subsample, shots, seed):
    classes = 7  # odd: base gets ceil(7/2) = 4 classes
    train_labels, val_labels, test_labels = synthetic_labels(10, classes), synthetic_labels(11, classes, 40), [
        c for c in (3, 0, 6, 1, 5, 2, 4) for _ in range(3)
    ]
    splits = datasets.DatasetDict(
        {
            "train": as_dataset(train_labels, classes),
            "validation": as_dataset(val_labels, classes),
            "test": as_dataset(test_labels, classes),
        }
    )
    train = [Item(i, label) for i, label in enumerate(train_labels)]
    validation = [Item(i, label) for i, label in enumerate(val_labels)]
    test = [Item(i, label) for i, label in enumerate(test_labels)]
    train, validation = reference_run(train, validation, shots, seed)
    run = protocol_splits(splits, shots, seed, subsample=subsample)
    if subsample == "all":
        expected = [[(item.index, item.label) for item in split] for split in (train, validation, test)]
    else:
        expected = reference_subsample([train, validation, test], subsample)
    for name, rows in zip(("train", "validation", "test"), expected, strict=True):
        assert list(zip(run[name]["index"][:], run[name]["label"][:], strict=True)) == rows, name
    names = run["train"].features["label"].names
    assert names == {"all": [f"class {c}" for c in range(7)], "base": [f"class {c}" for c in range(4)],
                     "new": [f"class {c}" for c in range(4, 7)]}[subsample]  # fmt: skip


def test_base_classes_keep_the_shots_sampled_over_all_classes():
    labels = synthetic_labels(3)
    splits = datasets.DatasetDict({"train": as_dataset(labels, 7), "validation": as_dataset(labels, 7)})
    every = protocol_splits(splits, 16, 2)
    base = protocol_splits(splits, 16, 2, subsample="base")
    new = protocol_splits(splits, 16, 2, subsample="new")
    for split in ("train", "validation"):
        rows = list(zip(every[split]["index"][:], every[split]["label"][:], strict=True))
        assert base[split]["index"][:] == [i for i, label in rows if label < 4]
        assert new[split]["index"][:] == [i for i, label in rows if label >= 4]
        assert new[split]["label"][:] == [label - 4 for _, label in rows if label >= 4]


def test_imagenet_style_runs_sample_the_training_split_only():
    labels = synthetic_labels(4)
    test = as_dataset(synthetic_labels(5), 7)
    splits = datasets.DatasetDict({"train": as_dataset(labels, 7), "validation": test, "test": test})
    run = protocol_splits(splits, 4, 3, sample_validation=False)
    expected, _ = reference_run([Item(i, label) for i, label in enumerate(labels)], [], 4, 3, sample_validation=False)
    assert run["train"]["index"][:] == [item.index for item in expected]
    assert run["validation"]["index"][:] == run["test"]["index"][:] == test["index"][:]
    whole = protocol_splits(splits, None, 3)  # no few-shot sampling: the splits as they are
    assert whole["train"]["index"][:] == list(range(len(labels)))


def test_base_to_new_is_dassls_subsample_classes_on_full_splits():
    labels = [4, 0, 2, 4, 1, 3, 0, 2]
    dataset = as_dataset(labels, 5)
    items = [Item(i, label) for i, label in enumerate(labels)]
    split = base_to_new(dataset, dataset.features["label"].names)
    for half, subsample in ((split.base, "base"), (split.new, "new")):
        (expected,) = reference_subsample([items], subsample)
        assert list(zip(half["index"][:], half["label"][:], strict=True)) == expected
    assert split.base_class_names == ["class 0", "class 1", "class 2"]
    assert split.new_class_names == ["class 3", "class 4"]


def test_protocol_errors():
    splits = datasets.DatasetDict({"train": as_dataset([0, 1, 1], 3)})
    with pytest.raises(ValueError, match=r"`subsample` must be 'all', 'base' or 'new', got 'half'"):
        protocol_splits(splits, 1, 1, subsample="half")
    with pytest.raises(ValueError, match=r"`seed` must be an integer"):
        protocol_splits(splits, 1, True)
    with pytest.raises(ValueError, match=r"training split has no example of the classes \[2\]"):
        protocol_splits(splits, 1, 1, subsample="base")
    with pytest.raises(ValueError, match=r"there is none: the splits are \['test'\]"):
        protocol_splits(datasets.DatasetDict({"test": as_dataset([0], 3)}), 1, 1)
    with pytest.raises(ValueError, match=r"`sampling` must be 'balanced' or 'dassl'"):
        few_shot(splits["train"], 1, sampling="random")
    with pytest.raises(ValueError, match=r"`seed` must be an integer \(Dassl seeds"):
        few_shot(splits["train"], 1, seed=1.5, sampling="dassl")
    with pytest.raises(ValueError, match=r"`shots` must be an integer >= 1, got 0"):
        dassl_few_shot_indices([0, 1], 0, random.Random(1))


def test_the_draws_are_those_of_python_3_8():
    """Positions computed with Python 3.8 (Dassl's installation instructions use it), with the reference above: the
    same numbers here mean Python's `random` still draws what the original runs drew (checked on CPython 3.6-3.13)."""
    labels = [3, 1, 3, 0, 2, 1, 1, 3, 0, 2, 2, 2, 1, 3, 0, 0, 1, 2, 3, 3, 1, 0, 2]
    rng = random.Random(1)
    assert dassl_few_shot_indices(labels, 4, rng) == [2, 18, 0, 19, 1, 12, 16, 5, 15, 8, 3, 21, 4, 11, 17, 10]
    assert dassl_few_shot_indices(labels, 2, rng) == [0, 13, 6, 5, 21, 3, 10, 4]
