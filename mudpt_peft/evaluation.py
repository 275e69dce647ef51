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

__all__ = ["accuracy_metrics", "evaluate", "harmonic_mean", "record_eval_result", "recorded_eval_results"]



def accuracy_metrics(logits: Any, labels: Any) -> dict[str, float]:
    """Top-1 `accuracy` and, with at least 5 classes, `top5_accuracy`, both in percent.

    Args:
        logits (`np.ndarray` or `torch.Tensor`): Scores of shape `(examples, classes)`.
        labels (`np.ndarray` or `torch.Tensor`): Class indices of shape `(examples,)`.
    """
    logits = torch.as_tensor(np.asarray(logits.detach().cpu() if isinstance(logits, torch.Tensor) else logits))
    labels = torch.as_tensor(np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels))
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"Expected logits of shape (examples, classes) and labels of shape (examples,), got {tuple(logits.shape)} "
            f"and {tuple(labels.shape)}."
        )
    labels = labels.long()
    metrics = {"accuracy": 100.0 * (logits.argmax(-1) == labels).float().mean().item()}
    if logits.shape[1] >= 5:
        top5 = logits.topk(5, dim=-1).indices
        metrics["top5_accuracy"] = 100.0 * (top5 == labels[:, None]).any(-1).float().mean().item()
    return metrics


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
    class_names: Sequence[str],
    tokenizer: Any,
    image_processor: Any,
    template: str | None = None,
    batch_size: int = 100,
    image_column: str = "image",
    label_column: str = "label",
    dataset_name: str | None = None,
    split: str | None = None,
    shots: int | None = None,
    seed: int | None = None,
    templates: Sequence[str] | None = None,
) -> dict[str, float]:
    """Classification accuracy of `model` on `dataset` against the prompts of `class_names`.

    The model (a `PeftModel` with a prompt adapter, or a plain CLIP-like model for zero-shot CLIP) is wrapped in a
    [`PromptClassifier`] in eval mode, so the class features are computed once and reused for every batch. The model's
    train/eval mode is restored afterwards. For cross-dataset evaluation, call this once per target dataset with that
    dataset's own class names.

    With a MuDPT adapter, the result is also recorded for the active adapter ([`record_eval_result`]), so that the
    model card written by `model.push_to_hub` / `save_pretrained` (and the `mudpt_peft.hub` helpers) lists it.

    Args:
        model (`nn.Module`):
            A CLIP-like model, wrapped by peft or not.
        dataset (`datasets.Dataset`):
            Rows with an image and an integer label (indices into `class_names`).
        class_names (`Sequence[str]`):
            The class names, in label order.
        tokenizer:
            The model's tokenizer.
        image_processor:
            The model's image processor.
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

    Returns:
        `dict`: `accuracy` (top-1, percent), `top5_accuracy` (percent, with at least 5 classes) and `num_examples`.
    """
    for item in [template] if templates is None else templates:  # before any image is read
        if item is not None:
            check_template(item)
    check_image_classification_dataset(dataset, class_names, image_column, label_column)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be an integer >= 1, got {batch_size!r}.")
    if len(dataset) == 0:
        raise ValueError("The dataset is empty: there is nothing to evaluate.")
    collator = ImageClassificationCollator(
        image_processor, image_column=image_column, label_column=label_column, image_size=model_image_size(model)
    )
    was_training = model.training
    classifier = PromptClassifier(model, tokenizer, class_names, template=template, templates=templates).eval()
    parameter = first_float_parameter(model)
    all_logits, all_labels = [], []
    try:
        for start in range(0, len(dataset), batch_size):
            batch = collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            pixel_values = batch["pixel_values"].to(device=parameter.device, dtype=parameter.dtype)
            all_logits.append(classifier(pixel_values=pixel_values).logits.float().cpu())
            all_labels.append(batch["labels"])
    finally:
        model.train(was_training)
    metrics = accuracy_metrics(torch.cat(all_logits), torch.cat(all_labels))
    metrics["num_examples"] = len(dataset)
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
