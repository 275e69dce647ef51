"""Accuracy of a (prompt-tuned) CLIP-like model on an image-classification dataset; the base-to-new harmonic mean."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ._utils import check_template, first_float_parameter, model_image_size
from .classifier import PromptClassifier
from .data import ImageClassificationCollator, check_image_classification_dataset
from .model_card import record_eval_result, recorded_eval_results

__all__ = [
    "accuracy_metrics",
    "confusion_matrix",
    "evaluate",
    "harmonic_mean",
    "per_class_accuracy",
    "record_eval_result",
    "recorded_eval_results",
]


def _as_tensor(values: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values))


def accuracy_metrics(logits: Any, labels: Any) -> dict[str, float]:
    """Top-1 `accuracy` and, with more than 5 classes, `top5_accuracy`, both in percent (with 5 classes or fewer every
    label is in the top 5, so top-5 accuracy would always be 100).

    Args:
        logits (`np.ndarray` or `torch.Tensor`): Scores of shape `(examples, classes)`.
        labels (`np.ndarray` or `torch.Tensor`): Class indices of shape `(examples,)`.
    """
    logits, labels = _as_tensor(logits), _as_tensor(labels)
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"Expected logits of shape (examples, classes) and labels of shape (examples,), got {tuple(logits.shape)} "
            f"and {tuple(labels.shape)}."
        )
    labels = labels.long()
    metrics = {"accuracy": 100.0 * (logits.argmax(-1) == labels).float().mean().item()}
    if logits.shape[1] > 5:
        top5 = logits.topk(5, dim=-1).indices
        metrics["top5_accuracy"] = 100.0 * (top5 == labels[:, None]).any(-1).float().mean().item()
    return metrics


def confusion_matrix(labels: Any, predictions: Any, num_classes: int) -> list[list[int]]:
    """The confusion matrix of class indices: `matrix[true][predicted]` is how many examples of class `true` were
    predicted as `predicted` (rows sum to the examples per class).

    Args:
        labels (`np.ndarray`, `torch.Tensor` or sequence): The true class indices, shape `(examples,)`.
        predictions (`np.ndarray`, `torch.Tensor` or sequence): The predicted class indices, shape `(examples,)`.
        num_classes (`int`): The number of classes (the matrix is `num_classes x num_classes`).
    """
    labels, predictions = _as_tensor(labels).long().flatten(), _as_tensor(predictions).long().flatten()
    if labels.shape != predictions.shape:
        raise ValueError(f"Got {labels.numel()} labels but {predictions.numel()} predictions.")
    for name, values in (("labels", labels), ("predictions", predictions)):
        if values.numel() and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"The {name} must be class indices in 0..{num_classes - 1}.")
    counts = torch.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).tolist()


def per_class_accuracy(matrix: Sequence[Sequence[int]], class_names: Sequence[str]) -> dict[str, float | None]:
    """Top-1 accuracy in percent of each class (`None` for a class without examples), from a [`confusion_matrix`].

    Args:
        matrix (`list[list[int]]`): The confusion matrix, `matrix[true][predicted]`.
        class_names (`Sequence[str]`): The class names, in label order (the keys of the result).
    """
    return {
        str(name): (100.0 * row[index] / sum(row) if sum(row) else None)
        for index, (name, row) in enumerate(zip(class_names, matrix, strict=True))
    }


def harmonic_mean(base_accuracy: float, new_accuracy: float) -> float:
    """The harmonic mean `2·b·n / (b + n)` of base- and new-class accuracy (0 when both are 0), as in CoCoOp / MaPLe."""
    if base_accuracy < 0 or new_accuracy < 0:
        raise ValueError(f"Accuracies must be >= 0, got {base_accuracy} and {new_accuracy}.")
    total = base_accuracy + new_accuracy
    return 0.0 if total == 0 else 2.0 * base_accuracy * new_accuracy / total


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Any,
    class_names: Sequence[str] | None = None,
    tokenizer: Any = None,
    image_processor: Any = None,
    template: str | None = None,
    batch_size: int = 100,
    image_column: str = "image",
    label_column: str = "label",
    dataset_name: str | None = None,
    split: str | None = None,
    shots: int | None = None,
    seed: int | None = None,
    templates: Sequence[str] | None = None,
    num_workers: int = 0,
    progress_bar: bool | None = None,
    return_predictions: bool = False,
) -> dict[str, Any]:
    """Classification accuracy of `model` on `dataset` against the prompts of `class_names`, overall and per class.

    The model (a `PeftModel` with a prompt adapter, or a plain CLIP-like model for zero-shot CLIP) is wrapped in a
    [`PromptClassifier`] in eval mode, so the class features are computed once and reused for every batch. The rows
    are read in batches by a torch `DataLoader` (`num_workers` processes preparing the images), in order. The model's
    train/eval mode is restored afterwards. For cross-dataset evaluation, call this once per target dataset with that
    dataset's own class names.

    **Several test sets with the same classes** (ImageNet and ImageNet-V2 / -Sketch, or a test set in parts): pass a
    [`PromptClassifier`] as `model` (and no class names, tokenizer or templates: the classifier's are used). Its class
    features are cached across the calls, so the class prompts are encoded once for all of them, not once per call;
    the cache still checks, before each reuse, that nothing they depend on has changed.

    With a MuDPT adapter, the result is also recorded for the active adapter ([`record_eval_result`]), so that the
    model card written by `model.push_to_hub` / `save_pretrained` (and the `mudpt_peft.hub` helpers) lists it.

    Args:
        model (`nn.Module` or [`PromptClassifier`]):
            A CLIP-like model, wrapped by peft or not; or a `PromptClassifier` around one, whose cached class features
            are then reused.
        dataset (`datasets.Dataset`):
            Rows with an image and an integer label (indices into `class_names`).
        class_names (`Sequence[str]`):
            The class names, in label order (a classifier's own when `model` is a `PromptClassifier`).
        tokenizer:
            The model's tokenizer (not with a `PromptClassifier`).
        image_processor:
            The model's image processor (default for a `PromptClassifier`: its `image_processor`).
        template (`str`, *optional*):
            The class prompt; `{}` is replaced by the class name (exactly one `{}`, no other replacement field).
            Defaults to `"a photo of a {}."` unless `templates` is given.
        batch_size (`int`, defaults to 100):
            Images per forward pass.
        image_column (`str`, defaults to `"image"`):
            The column with the images.
        label_column (`str`, defaults to `"label"`):
            The column with the labels.
        dataset_name (`str`, *optional*):
            The dataset's name for the model card (default: the name `datasets` knows, else `"unnamed"`).
        split (`str`, *optional*):
            The evaluated split for the model card (default: the split `datasets` knows).
        shots (`int`, *optional*):
            Training examples per class of the adapter, for the model card.
        seed (`int`, *optional*):
            The seed of the run, for the model card.
        templates (`Sequence[str]`, *optional*):
            Several templates instead of `template`: prompt ensembling (see [`PromptClassifier`]), e.g. CLIP's
            ImageNet ensemble `mudpt_peft.templates.IMAGENET_80_TEMPLATES`; for a dataset of the CoOp benchmark,
            `mudpt_peft.benchmark_datasets.get_benchmark(name).templates(...)` gives CoOp's zero-shot templates.
        num_workers (`int`, defaults to 0):
            Worker processes of the `DataLoader` that reads and processes the images (0: in this process).
        progress_bar (`bool`, *optional*):
            Show a tqdm progress bar over the batches; by default shown when stderr is a terminal.
        return_predictions (`bool`, defaults to `False`):
            Also return the predicted class index of every example (`predictions`, in dataset order).

    Returns:
        `dict`: `accuracy` (top-1, percent), `top5_accuracy` (percent, with more than 5 classes), `num_examples`,
        `per_class_accuracy` (class name -> top-1 percent, `None` for a class without examples), `confusion_matrix`
        (`matrix[true][predicted]` counts, in label order) and, with `return_predictions=True`, `predictions`.
    """
    if isinstance(model, PromptClassifier):
        classifier = model
        given = [name for name, value in (("tokenizer", tokenizer), ("template", template), ("templates", templates))
                 if value is not None]  # fmt: skip
        if given:
            raise ValueError(
                f"`model` is a PromptClassifier, which has its own tokenizer and templates: do not pass "
                f"{', '.join(f'`{name}`' for name in given)} (build a PromptClassifier with other ones instead)."
            )
        if class_names is not None and [str(name) for name in class_names] != classifier.class_names:
            raise ValueError(
                "`class_names` differ from the PromptClassifier's class names: leave `class_names` out to evaluate "
                "with the classifier's classes, or evaluate a PromptClassifier built with these class names."
            )
        class_names = classifier.class_names
        image_processor = classifier.image_processor if image_processor is None else image_processor
        model = classifier.model
    else:
        classifier = None
        if class_names is None or tokenizer is None:
            raise ValueError("Pass the `class_names` and the `tokenizer` (or a PromptClassifier as `model`).")
        for item in [template] if templates is None else templates:  # before any image is read
            if item is not None:
                check_template(item)
    if image_processor is None:
        raise ValueError("Pass the model's `image_processor`: it turns the dataset's images into pixel values.")
    check_image_classification_dataset(dataset, class_names, image_column, label_column)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be an integer >= 1, got {batch_size!r}.")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"`num_workers` must be an integer >= 0, got {num_workers!r}.")
    if len(dataset) == 0:
        raise ValueError("The dataset is empty: there is nothing to evaluate.")
    from tqdm.auto import tqdm

    collator = ImageClassificationCollator(
        image_processor, image_column=image_column, label_column=label_column, image_size=model_image_size(model)
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collator
    )
    was_training, classifier_was_training = model.training, classifier is not None and classifier.training
    if classifier is None:
        classifier = PromptClassifier(model, tokenizer, class_names, template=template, templates=templates)
    # the modes are set and restored with `nn.Module.train`: `PromptClassifier.train()` / `.eval()` would also drop the
    # cached class features, which its cache check validates before every reuse anyway
    nn.Module.train(classifier, False)
    parameter = first_float_parameter(model)
    all_logits, all_labels = [], []
    hide_bar = None if progress_bar is None else not progress_bar  # None: tqdm hides it when stderr is no terminal
    try:
        for batch in tqdm(loader, desc="evaluate", unit="batch", disable=hide_bar):
            pixel_values = batch["pixel_values"].to(device=parameter.device, dtype=parameter.dtype)
            all_logits.append(classifier(pixel_values=pixel_values).logits.float().cpu())
            all_labels.append(batch["labels"])
    finally:
        nn.Module.train(classifier, classifier_was_training)
        model.train(was_training)
    logits, labels = torch.cat(all_logits), torch.cat(all_labels)
    metrics: dict[str, Any] = accuracy_metrics(logits, labels)
    metrics["num_examples"] = len(dataset)
    predictions = logits.argmax(-1)
    matrix = confusion_matrix(labels, predictions, len(class_names))
    metrics["per_class_accuracy"] = per_class_accuracy(matrix, [str(name) for name in class_names])
    metrics["confusion_matrix"] = matrix
    if return_predictions:
        metrics["predictions"] = predictions.tolist()
    record_eval_result(
        model,
        {
            "dataset": dataset_name or dataset_name_of(dataset) or "unnamed",
            "split": split or split_of(dataset),
            "shots": shots,
            "seed": seed,
            **{key: metrics[key] for key in ("accuracy", "top5_accuracy") if key in metrics},
        },
    )
    return metrics


def dataset_name_of(dataset: Any) -> str | None:
    """The name an HF `datasets.Dataset` knows for itself (`info.dataset_name`, else `info.builder_name`), if any."""
    info = getattr(dataset, "info", None)
    name = getattr(info, "dataset_name", None) or getattr(info, "builder_name", None)
    return str(name) if name else None


def split_of(dataset: Any) -> str | None:
    """The split an HF `datasets.Dataset` knows it is (e.g. `"test"`), if any."""
    split = getattr(dataset, "split", None)
    return str(split) if split else None
