"""Data helpers: the image-classification collator (with augmentation), few-shot subsets, base-to-new splits, and
`evaluate` / `harmonic_mean` (few-shot, base-to-new and cross-dataset evaluation)."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch
from peft import get_peft_model
from PIL import Image

from mudpt_peft import MuDPTConfig, PromptClassifier
from mudpt_peft.data import (
    ImageClassificationCollator,
    base_to_new,
    check_image_classification_dataset,
    few_shot,
)
from mudpt_peft.evaluation import accuracy_metrics, confusion_matrix, evaluate, harmonic_mean, per_class_accuracy

from .helpers import LABELLED_CLASSES as NAMES
from .helpers import TOKENIZER_EOS_ID, image_processor, labelled, make_clip, randomize_adapter

# tiny models: more threads only contend for the shared cores
pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------------------------
# collator


def test_collator_matches_the_image_processor_with_any_column_names():
    data = labelled([2, 2]).rename_columns({"image": "img", "label": "y"})
    data = data.map(lambda row: {"extra": 1})  # columns the collator does not use are ignored
    rows = [data[i] for i in range(4)]
    batch = ImageClassificationCollator(image_processor(), image_column="img", label_column="y")(rows)
    expected = image_processor()(images=[row["img"] for row in rows], return_tensors="pt")["pixel_values"]
    assert set(batch) == {"pixel_values", "labels"}
    torch.testing.assert_close(batch["pixel_values"], expected)
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [row["y"] for row in rows]
    # unlabelled data, grayscale images are converted to RGB
    gray = [{"img": Image.new("L", (20, 20), 128)}]
    unlabelled = ImageClassificationCollator(image_processor(), image_column="img", label_column=None)(gray)
    assert set(unlabelled) == {"pixel_values"} and unlabelled["pixel_values"].shape == (1, 3, 16, 16)


def test_collator_errors_name_the_columns():
    row = {"img": Image.new("RGB", (20, 20)), "target": 0}
    with pytest.raises(ValueError, match=r"no image column 'image'; their columns are \['img', 'target'\]"):
        ImageClassificationCollator(image_processor())([row])
    with pytest.raises(ValueError, match=r"no label column 'label'; their columns are \['img', 'target'\]"):
        ImageClassificationCollator(image_processor(), image_column="img")([row])
    with pytest.raises(ValueError, match=r"produces \(16, 16\) images but the model expects \(32, 32\)"):
        ImageClassificationCollator(image_processor(), "img", "target", image_size=32)([row])
    with pytest.raises(ValueError, match="image_processor"):
        ImageClassificationCollator(None)


def test_collator_takes_rows_already_processed_to_pixel_values():
    """A dataset mapped (or `with_transform`-ed) to `pixel_values` is collated as it is, equal to the raw images'."""
    data = labelled([2, 2, 2])
    processor = image_processor()
    raw = ImageClassificationCollator(processor)([data[i] for i in range(6)])

    def to_pixels(batch):
        return {"pixel_values": processor(images=batch["image"], return_tensors="np")["pixel_values"]}

    mapped = data.map(to_pixels, batched=True, remove_columns=["image"])
    check_image_classification_dataset(mapped, NAMES[:3])  # no image column needed
    batch = ImageClassificationCollator(processor)([mapped[i] for i in range(6)])  # lists of floats
    assert set(batch) == {"pixel_values", "labels"} and torch.equal(batch["labels"], raw["labels"])
    torch.testing.assert_close(batch["pixel_values"], raw["pixel_values"])
    transformed = data.with_transform(
        lambda batch: {"pixel_values": processor(images=batch["image"], return_tensors="pt")["pixel_values"],
                       "label": batch["label"]}
    )  # fmt: skip
    batch = ImageClassificationCollator(processor)([transformed[i] for i in range(6)])  # tensors
    torch.testing.assert_close(batch["pixel_values"], raw["pixel_values"])
    with pytest.raises(ValueError, match="cannot be augmented"):
        ImageClassificationCollator(processor, augment=True)([mapped[0]])
    with pytest.raises(ValueError, match=r"no image column 'image'.*'pixel_values' column"):
        ImageClassificationCollator(processor)([{"label": 0}])


def test_augmentation_is_seeded_by_torch_and_changes_the_images():
    rows = [labelled([3])[i] for i in range(3)]
    augmenting = ImageClassificationCollator(image_processor(), augment=True)
    torch.manual_seed(0)
    first = augmenting(rows)["pixel_values"]
    torch.manual_seed(0)
    again = augmenting(rows)["pixel_values"]
    torch.manual_seed(1)
    other = augmenting(rows)["pixel_values"]
    plain = ImageClassificationCollator(image_processor())(rows)["pixel_values"]
    assert first.shape == plain.shape == (3, 3, 16, 16)
    assert torch.equal(first, again)
    assert not torch.equal(first, other) and not torch.equal(first, plain)


def test_crop_and_flip_geometry():
    pixels = (np.arange(20 * 24 * 3) % 251).astype(np.uint8).reshape(20, 24, 3)
    image = Image.fromarray(pixels)
    # full-image crop (scale 1, ratio fixed to the image's own 24/20) resized to 16x16: a plain resize, then a flip
    exact = dict(scale=(1.0, 1.0), ratio=(1.2, 1.2))
    resized = image.resize((16, 16), Image.BICUBIC)
    never = ImageClassificationCollator(image_processor(), augment=True, flip_probability=0.0, **exact)
    always = ImageClassificationCollator(image_processor(), augment=True, flip_probability=1.0, **exact)
    assert np.array_equal(np.asarray(never.random_resized_crop_and_flip(image)), np.asarray(resized))
    flipped = np.asarray(always.random_resized_crop_and_flip(image))
    assert np.array_equal(flipped, np.asarray(resized)[:, ::-1])
    # small crops stay inside the image and come out at the processor's size
    small = ImageClassificationCollator(image_processor(), augment=True, scale=(0.1, 0.2))
    torch.manual_seed(0)
    crops = [small.random_resized_crop_and_flip(image) for _ in range(20)]
    assert all(crop.size == (16, 16) for crop in crops)
    assert len({np.asarray(crop).tobytes() for crop in crops}) == 20


# ------------------------------------------------------------------------------------------------------------------
# few-shot


def test_few_shot_takes_exactly_k_per_class_deterministically():
    data = labelled([6, 5, 7])
    subset = few_shot(data, shots=4, seed=1)
    labels = list(subset["label"])
    assert len(subset) == 12 and [labels.count(c) for c in range(3)] == [4, 4, 4]
    # the same rows for the same seed (whatever method uses it), other rows for another seed
    again = few_shot(data, shots=4, seed=1)
    assert [np.asarray(r["image"]).tobytes() for r in again] == [np.asarray(r["image"]).tobytes() for r in subset]
    assert list(few_shot(data, 4, seed=2)["image"]) != list(subset["image"])
    # rows come from the dataset, in its order, without duplicates
    pool = [np.asarray(image).tobytes() for image in data["image"]]
    positions = [pool.index(np.asarray(image).tobytes()) for image in subset["image"]]
    assert positions == sorted(set(positions))
    assert [data[p]["label"] for p in positions] == labels
    # plain integer labels work too
    assert len(few_shot(labelled([2, 3], class_label=False), 2)) == 4


def test_few_shot_names_the_classes_that_are_short():
    data = labelled([6, 3, 7, 0])
    with pytest.raises(ValueError, match=r"2 class\(es\) have fewer than 4 examples: 'dog' \(3\), 'photo' \(0\)"):
        few_shot(data, shots=4, seed=1)
    with pytest.raises(ValueError, match=r"1 class\(es\) have fewer than 4 examples: 1 \(3\)"):
        few_shot(labelled([6, 3], class_label=False), shots=4)
    with pytest.raises(ValueError, match=r"no label column 'target'; its columns are \['image', 'label'\]"):
        few_shot(data, shots=1, label_column="target")
    with pytest.raises(ValueError, match="`shots` must be an integer >= 1"):
        few_shot(data, shots=0)


# ------------------------------------------------------------------------------------------------------------------
# base-to-new


@pytest.mark.parametrize("class_label", [True, False])
def test_base_to_new_splits_the_classes_and_reindexes(class_label):
    data = labelled([2, 3, 2, 1, 2], class_label=class_label)
    base, base_names, new, new_names = base_to_new(data, NAMES)
    assert base_names == ["cat", "dog", "zebra"] and new_names == ["photo", "of"]  # ceil(5 / 2) = 3 base classes
    assert len(base) == 7 and len(new) == 3
    assert sorted(base["label"]) == [0, 0, 1, 1, 1, 2, 2] and sorted(new["label"]) == [0, 1, 1]
    assert base.column_names == new.column_names == ["image", "label"]
    if class_label:
        assert base.features["label"].names == base_names and new.features["label"].names == new_names
    # each row keeps its image, with the label shifted by 3 for the new classes
    originals = {np.asarray(row["image"]).tobytes(): row["label"] for row in data}
    assert all(originals[np.asarray(row["image"]).tobytes()] == row["label"] for row in base)
    assert all(originals[np.asarray(row["image"]).tobytes()] == row["label"] + 3 for row in new)
    # an even number of classes splits in halves
    assert base_to_new(labelled([1, 1, 1, 1]), NAMES[:4]).base_class_names == ["cat", "dog"]


def test_base_to_new_errors():
    with pytest.raises(ValueError, match="non-empty list of class names"):
        base_to_new(labelled([1, 1]), [])
    # each half needs 2 classes: one class trains with a loss of 0 and evaluates to 100 %
    for names in (["cat"], NAMES[:2], NAMES[:3]):
        with pytest.raises(ValueError, match=rf"at least 4 classes, so that each half has 2 or more, got {len(names)}"):
            base_to_new(labelled([1] * len(names)), names)
    with pytest.raises(ValueError, match=r"labels \[4\] outside the class list \(0\.\.3\)"):
        base_to_new(labelled([1, 1, 1, 1, 1], class_label=False), NAMES[:4])


def test_dataset_check():
    data = labelled([1, 2], class_label=False)
    check_image_classification_dataset(data, ["cat", "dog"])
    with pytest.raises(ValueError, match="non-empty list"):
        check_image_classification_dataset(data, [])
    with pytest.raises(ValueError, match=r"labels \[1\] outside the class list \(valid: 0\.\.0 for 1 class names\)"):
        check_image_classification_dataset(data, ["cat"])
    with pytest.raises(ValueError, match=r"no image column 'pic'; its columns are \['image', 'label'\]"):
        check_image_classification_dataset(data, ["cat", "dog"], image_column="pic")


# ------------------------------------------------------------------------------------------------------------------
# evaluation


def test_evaluate_equals_the_classifier_and_restores_the_mode(tokenizer):
    torch.manual_seed(0)
    model = get_peft_model(make_clip(eos_token_id=TOKENIZER_EOS_ID), MuDPTConfig(depth=3))
    randomize_adapter(model)
    data = labelled([3, 3, 3, 3, 3])
    model.train()
    metrics = evaluate(model, data, NAMES, tokenizer, image_processor(), batch_size=4)
    assert model.training  # restored
    pixel_values = image_processor()(images=list(data["image"]), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = PromptClassifier(model, tokenizer, NAMES).eval()(pixel_values=pixel_values).logits
    labels = torch.tensor(list(data["label"]))
    assert metrics["accuracy"] == pytest.approx(100 * (logits.argmax(-1) == labels).float().mean().item())
    assert "top5_accuracy" not in metrics  # 5 classes: every label is in the top 5, so it would always be 100
    assert metrics["num_examples"] == 15
    # the adapter matters: zero-shot (adapter disabled) gives other logits
    with model.disable_adapter(), torch.no_grad():
        zero_shot = PromptClassifier(model, tokenizer, NAMES).eval()(pixel_values=pixel_values).logits
    assert not torch.allclose(zero_shot, logits)


class CountingRows(torch.utils.data.Dataset):
    """Rows of a dataset, counting how they are read: one row at a time (`__getitem__`) or in batches."""

    def __init__(self, dataset):
        self.dataset, self.single, self.batches = dataset, 0, []

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        self.single += 1
        return self.dataset[index]

    def __getitems__(self, indices):
        self.batches.append(list(indices))
        return [self.dataset[i] for i in indices]


def test_evaluate_returns_per_class_accuracy_confusion_matrix_and_predictions(tokenizer, capsys):
    torch.manual_seed(0)
    model = get_peft_model(make_clip(eos_token_id=TOKENIZER_EOS_ID), MuDPTConfig(depth=3))
    randomize_adapter(model)
    data = labelled([4, 3, 2, 3, 2])
    metrics = evaluate(model, data, NAMES, tokenizer, image_processor(), batch_size=4, return_predictions=True)
    pixel_values = image_processor()(images=list(data["image"]), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = PromptClassifier(model, tokenizer, NAMES).eval()(pixel_values=pixel_values).logits
    labels, predictions = list(data["label"]), logits.argmax(-1).tolist()
    assert metrics["predictions"] == predictions
    expected = [[0] * 5 for _ in range(5)]
    for true, predicted in zip(labels, predictions, strict=True):
        expected[true][predicted] += 1
    assert metrics["confusion_matrix"] == expected
    assert [sum(row) for row in expected] == [4, 3, 2, 3, 2]
    assert list(metrics["per_class_accuracy"]) == NAMES  # in label order
    for index, name in enumerate(NAMES):
        assert metrics["per_class_accuracy"][name] == pytest.approx(100 * expected[index][index] / sum(expected[index]))
    assert metrics["accuracy"] == pytest.approx(100 * sum(expected[i][i] for i in range(5)) / 14)
    # the same numbers without predictions, read in batches of a DataLoader (one worker process as well), no bar
    rows = CountingRows(data)
    plain = evaluate(model, rows, NAMES, tokenizer, image_processor(), batch_size=4, progress_bar=False)
    assert plain == {key: value for key, value in metrics.items() if key != "predictions"}
    assert rows.single == 0 and rows.batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13]]
    assert "evaluate" not in capsys.readouterr().err
    workers = evaluate(model, data, NAMES, tokenizer, image_processor(), batch_size=4, num_workers=1)
    assert workers == plain
    # the progress bar, on request
    evaluate(model, data, NAMES, tokenizer, image_processor(), batch_size=4, progress_bar=True)
    assert "evaluate" in capsys.readouterr().err
    with pytest.raises(ValueError, match="`num_workers` must be an integer >= 0"):
        evaluate(model, data, NAMES, tokenizer, image_processor(), num_workers=-1)
    # a class without examples has no accuracy (None, not 0)
    few = evaluate(model, data.filter(lambda row: row["label"] != 2), NAMES, tokenizer, image_processor())
    assert few["per_class_accuracy"][NAMES[2]] is None
    assert few["confusion_matrix"][2] == [0] * 5


def test_base_to_new_and_cross_dataset_evaluation(tokenizer):
    """Base and new halves are evaluated with their own class names; a second dataset with its own names."""
    model = make_clip(eos_token_id=TOKENIZER_EOS_ID)  # zero-shot CLIP works the same way
    data = labelled([2, 2, 2, 2, 2])
    split = base_to_new(data, NAMES)
    base = evaluate(model, split.base, split.base_class_names, tokenizer, image_processor())
    new = evaluate(model, split.new, split.new_class_names, tokenizer, image_processor())
    assert base["num_examples"] == 6 and new["num_examples"] == 4
    assert "top5_accuracy" not in base and "top5_accuracy" not in new  # fewer than 5 classes
    pixel_values = image_processor()(images=list(split.new["image"]), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = PromptClassifier(model, tokenizer, split.new_class_names).eval()(pixel_values=pixel_values).logits
    expected = accuracy_metrics(logits, torch.tensor(list(split.new["label"])))
    assert new["accuracy"] == pytest.approx(expected["accuracy"])
    assert harmonic_mean(base["accuracy"], new["accuracy"]) <= max(base["accuracy"], new["accuracy"])
    other = labelled([1, 1, 1], seed=5).cast_column("label", datasets.ClassLabel(names=["a", "of", "photo"]))
    assert evaluate(model, other, ["a", "of", "photo"], tokenizer, image_processor())["num_examples"] == 3
    with pytest.raises(ValueError, match="feature has 3 classes"):
        evaluate(model, other, NAMES, tokenizer, image_processor())
    with pytest.raises(ValueError, match="`batch_size` must be an integer >= 1"):
        evaluate(model, other, ["a", "of", "photo"], tokenizer, image_processor(), batch_size=0)


def test_accuracy_metrics_and_harmonic_mean():
    logits = torch.tensor([[0.9, 0.1, 0.0, 0.0, 0.0, 0.0], [0.0, 0.1, 0.9, 0.3, 0.2, 0.5], [1, 2, 3, 4, 5, 6.0]])
    metrics = accuracy_metrics(logits, torch.tensor([0, 1, 0]))
    assert metrics["accuracy"] == pytest.approx(100 / 3)  # only row 0
    assert metrics["top5_accuracy"] == pytest.approx(200 / 3)  # row 1's class 1 ranks 5th of 6; row 2's class 0 last
    assert "top5_accuracy" not in accuracy_metrics(logits[:, :4].numpy(), np.array([0, 1, 0]))
    assert "top5_accuracy" not in accuracy_metrics(logits[:, :5], torch.tensor([0, 1, 0]))  # always 100 with 5
    matrix = confusion_matrix([0, 1, 1, 2], np.array([0, 2, 1, 2]), 3)
    assert matrix == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    assert per_class_accuracy(matrix, ["a", "b", "c"]) == {"a": 100.0, "b": 50.0, "c": 100.0}
    assert per_class_accuracy(confusion_matrix([0], [1], 2), ["a", "b"]) == {"a": 0.0, "b": None}
    with pytest.raises(ValueError, match=r"class indices in 0\.\.2"):
        confusion_matrix([0, 3], [0, 0], 3)
    assert harmonic_mean(80.0, 60.0) == pytest.approx(2 * 80 * 60 / 140)
    assert harmonic_mean(0.0, 0.0) == 0.0 and harmonic_mean(50.0, 50.0) == 50.0
    with pytest.raises(ValueError, match=">= 0"):
        harmonic_mean(-1.0, 2.0)
    with pytest.raises(ValueError, match=r"shape \(examples, classes\)"):
        accuracy_metrics(torch.zeros(3), torch.zeros(3))


def test_evaluate_several_test_sets_with_one_classifier_encodes_the_classes_once(tokenizer):
    """A PromptClassifier passed to `evaluate` keeps its class features across calls (ImageNet and its variants)."""
    torch.manual_seed(0)
    model = get_peft_model(make_clip(eos_token_id=TOKENIZER_EOS_ID), MuDPTConfig(depth=3))
    randomize_adapter(model)
    first, second = labelled([2, 2, 2, 2, 2]), labelled([1, 2, 1, 2, 1], seed=7)
    expected = [evaluate(model, data, NAMES, tokenizer, image_processor(), batch_size=4) for data in (first, second)]
    classifier = PromptClassifier(model, tokenizer, NAMES, image_processor=image_processor())
    encodings = []
    original = classifier._encode_classes
    classifier._encode_classes = lambda: encodings.append(1) or original()
    model.train()
    got = [evaluate(classifier, data, batch_size=4) for data in (first, second)]
    assert got == expected and len(encodings) == 1
    assert model.training and classifier.training  # both modes restored
    classifier.eval()  # (drops the cache, as `train()` / `eval()` do)
    assert evaluate(classifier, first, NAMES, batch_size=4) == expected[0]  # the same names may be given
    assert len(encodings) == 2 and not classifier.training
    # a changed adapter is seen: the cache is checked before each reuse
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "prompt" in n and p.requires_grad).add_(0.5)
    changed = evaluate(classifier, first, batch_size=4)
    assert len(encodings) == 3
    # a fused optimizer step (no version bump) and a write through `.data` are seen too, and give fresh results
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.grad = torch.full_like(p, 0.1)
    torch.optim.AdamW(trainable, lr=0.5, fused=True).step()
    stepped = evaluate(classifier, first, batch_size=4)
    assert len(encodings) == 4
    assert stepped == evaluate(model, first, NAMES, tokenizer, image_processor(), batch_size=4)
    next(p for n, p in model.named_parameters() if "prompt" in n and p.requires_grad).data.mul_(-2.0)
    written = evaluate(classifier, first, batch_size=4)
    assert len(encodings) == 5
    assert written == evaluate(model, first, NAMES, tokenizer, image_processor(), batch_size=4)
    with pytest.raises(ValueError, match="differ from the PromptClassifier's class names"):
        evaluate(classifier, first, NAMES[::-1])
    with pytest.raises(ValueError, match="do not pass `tokenizer`, `template`"):
        evaluate(classifier, first, tokenizer=tokenizer, template="a {}.")
    with pytest.raises(ValueError, match="`image_processor`"):
        evaluate(PromptClassifier(model, tokenizer, NAMES), first)
    with pytest.raises(ValueError, match="Pass the `class_names` and the `tokenizer`"):
        evaluate(model, first)
    assert changed["num_examples"] == 10
