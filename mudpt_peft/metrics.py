"""Image–text alignment diagnostics: matched similarity, margin over the best wrong class, and the modality gap."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._utils import check_class_names, first_float_parameter, projected_features
from .classifier import PromptClassifier

__all__ = ["alignment"]


@torch.no_grad()
def alignment(
    model: nn.Module,
    images_or_pixel_values: Any,
    labels: Sequence[int] | torch.Tensor,
    class_names: Sequence[str],
    tokenizer: Any,
    image_processor: Any = None,
    template: str = "a photo of a {}.",
    batch_size: int = 64,
) -> dict[str, float]:
    """How well the image features line up with the class-prompt features of a CLIP-like model (adapted or not).

    All quantities use the L2-normalised projected features (the ones CLIP's logits are made of), with the class
    prompts `template.format(name)` encoded through a [`PromptClassifier`] in eval mode (so with the adapter's learned
    prompts, if any). For image `i` with label `y_i`, `s_ic` is the cosine similarity to class `c`:

    - `matched_similarity`: mean over images of `s_{i,y_i}`;
    - `margin`: mean over images of `s_{i,y_i} - max_{c != y_i} s_ic` (positive when the image is closer to its own
      class prompt than to any other; `nan` with a single class);
    - `modality_gap`: `‖mean_i(image_i) - mean_c(class_c)‖₂`, the distance between the centroid of the normalised
      image embeddings and the centroid of the normalised class embeddings (each class counted once), as in Liang et
      al., "Mind the Gap" (2022);
    - `accuracy`: top-1 accuracy in percent, for reference.

    The model's train/eval mode is restored afterwards.

    Args:
        model (`nn.Module`):
            A CLIP-like model with `get_text_features` / `get_image_features`, wrapped by peft or not.
        images_or_pixel_values:
            Either a tensor of pixel values `(images, 3, H, W)` already processed for the model, or a sequence of
            images (PIL images, arrays, an HF `datasets` image column) processed with `image_processor`.
        labels (`Sequence[int]` or `torch.Tensor`):
            The class index of each image.
        class_names (`Sequence[str]`):
            The class names, in label order.
        tokenizer:
            The model's tokenizer.
        image_processor (*optional*):
            The model's image processor; required when images (not pixel values) are given.
        template (`str`, defaults to `"a photo of a {}."`):
            The class prompt; `{}` is replaced by the class name.
        batch_size (`int`, defaults to 64):
            Images per forward pass.

    Returns:
        `dict[str, float]`: `matched_similarity`, `margin`, `modality_gap`, `accuracy`, and `num_examples`.
    """
    class_names = check_class_names(class_names)
    labels = torch.as_tensor(labels, dtype=torch.long).flatten()
    if isinstance(images_or_pixel_values, torch.Tensor):
        pixel_values = images_or_pixel_values
        count = pixel_values.shape[0]
    else:
        if image_processor is None:
            raise ValueError("Images were given without an `image_processor`: pass the model's image processor.")
        images = list(images_or_pixel_values)
        count = len(images)
        pixel_values = None
    if count == 0:
        raise ValueError("No images were given.")
    if labels.numel() != count:
        raise ValueError(f"Got {count} images but {labels.numel()} labels; give one label per image.")
    if labels.min() < 0 or labels.max() >= len(class_names):
        raise ValueError(
            f"Labels must be class indices in 0..{len(class_names) - 1}, got values from {int(labels.min())} to "
            f"{int(labels.max())}."
        )

    was_training = model.training
    classifier = PromptClassifier(model, tokenizer, class_names, template=template).eval()
    parameter = first_float_parameter(model)
    try:
        class_features = classifier.encode_classes().float().cpu()
        image_features = []
        for start in range(0, count, batch_size):
            if pixel_values is not None:
                batch = pixel_values[start : start + batch_size]
            else:
                chunk = [
                    image.convert("RGB") if hasattr(image, "convert") else image
                    for image in images[start : start + batch_size]
                ]
                batch = image_processor(images=chunk, return_tensors="pt")["pixel_values"]
            batch = batch.to(device=parameter.device, dtype=parameter.dtype)
            features = projected_features(model.get_image_features(pixel_values=batch))
            image_features.append(F.normalize(features.float(), dim=-1).cpu())
    finally:
        model.train(was_training)
    image_features = torch.cat(image_features)
    similarity = image_features @ class_features.t()
    matched = similarity.gather(1, labels[:, None]).squeeze(1)
    if len(class_names) > 1:
        others = similarity.scatter(1, labels[:, None], float("-inf"))
        margin = (matched - others.max(dim=1).values).mean().item()
    else:
        margin = float("nan")
    gap = (image_features.mean(0) - class_features.mean(0)).norm().item()
    return {
        "matched_similarity": matched.mean().item(),
        "margin": margin,
        "modality_gap": gap,
        "accuracy": 100.0 * (similarity.argmax(-1) == labels).float().mean().item(),
        "num_examples": count,
    }
