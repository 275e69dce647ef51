"""`PromptClassifier`: image classification against class-name prompts, with cached class features at inference."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import ImageClassifierOutput

from .layer import MuDPTTower


def _features(output: Any) -> torch.Tensor:
    """The projected features from `get_text_features` / `get_image_features` (an output object in transformers 5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class PromptClassifier(nn.Module):
    """Classify images by their similarity to one text prompt per class, e.g. `"a photo of a {class}."`.

    `logits = logit_scale.exp() * cos(image features, class features)` (plus the model's `logit_bias` where it has
    one, as SigLIP does), with the model's own logit scale. In training mode the class prompts are re-encoded on every
    call (the learned text prompts change); in eval mode the class features are computed once and cached, and the
    cache is dropped whenever anything they depend on can have changed: the active adapter or its enabled state, any
    weight (an optimizer step, `load_adapter`, `load_state_dict`), the class names or the mode. The class prompts are
    tokenized once, padded to the longest prompt (not to a fixed 77 tokens).

    With an unwrapped model this is plain zero-shot CLIP classification.

    Args:
        model (`nn.Module`):
            A CLIP-like model with `get_text_features` / `get_image_features`, wrapped by peft or not.
        tokenizer:
            The model's tokenizer.
        class_names (`Sequence[str]`):
            The class names, in label order.
        template (`str`, defaults to `"a photo of a {}."`):
            The prompt of a class; `{}` is replaced by the class name.
        image_processor (*optional*):
            The model's image processor, needed by [`~PromptClassifier.predict`] only.

    Example:

        ```py
        >>> clf = PromptClassifier(peft_model, tokenizer, ["cat", "dog"])
        >>> clf.eval()
        >>> clf(pixel_values=pixel_values).logits.argmax(-1)
        ```
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        class_names: Sequence[str],
        template: str = "a photo of a {}.",
        image_processor: Any = None,
    ) -> None:
        super().__init__()
        if "{}" not in template:
            raise ValueError(f"`template` must contain '{{}}' where the class name goes, got {template!r}.")
        self.model = model
        self.tokenizer = tokenizer
        self.template = template
        self.image_processor = image_processor
        self._cache_key: tuple | None = None
        self._cached_features: torch.Tensor | None = None
        self.class_names = class_names

    # ----------------------------------------------------------------------------------------------------------------
    # class prompts

    @property
    def class_names(self) -> list[str]:
        """The class names, in label order. Assigning new names re-tokenizes the prompts and drops the cache."""
        return list(self._class_names)

    @class_names.setter
    def class_names(self, class_names: Sequence[str]) -> None:
        if isinstance(class_names, str) or not class_names:
            raise ValueError("`class_names` must be a non-empty list of class names.")
        names = [str(name) for name in class_names]
        prompts = [self.template.format(name) for name in names]
        tokens = self.tokenizer(prompts, padding="longest", return_tensors="pt")
        device = next(self.model.parameters()).device
        self._class_names = names
        self.register_buffer("class_input_ids", tokens["input_ids"].to(device), persistent=False)
        self.register_buffer("class_attention_mask", tokens["attention_mask"].to(device), persistent=False)
        self._drop_cache()

    def _drop_cache(self) -> None:
        self._cache_key, self._cached_features = None, None

    def train(self, mode: bool = True) -> PromptClassifier:
        """Set the mode (dropping the cached class features) and return `self`."""
        self._drop_cache()
        return super().train(mode)

    def _state_key(self) -> tuple:
        """Everything the class features depend on: adapters in use and every weight's identity and version."""
        towers = tuple(
            (id(module), module.prompting_adapter())
            for module in self.model.modules()
            if isinstance(module, MuDPTTower)
        )
        weights = tuple((id(p), p._version) for p in self.model.parameters())
        return towers, weights, self.class_input_ids.data_ptr()

    def encode_classes(self) -> torch.Tensor:
        """The L2-normalised class features, shape `(classes, dim)`; cached in eval mode."""
        if self.training:
            return self._encode_classes()
        key = self._state_key()
        if key != self._cache_key or self._cached_features is None:
            with torch.no_grad():
                self._cached_features = self._encode_classes()
            self._cache_key = key
        return self._cached_features

    def _encode_classes(self) -> torch.Tensor:
        features = _features(
            self.model.get_text_features(input_ids=self.class_input_ids, attention_mask=self.class_attention_mask)
        )
        return F.normalize(features, dim=-1)

    # ----------------------------------------------------------------------------------------------------------------
    # classification

    def _base_model(self) -> nn.Module:
        model = self.model
        get_base_model = getattr(model, "get_base_model", None)
        return get_base_model() if callable(get_base_model) else model

    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **kwargs: Any
    ) -> ImageClassifierOutput:
        """Logits of shape `(batch, classes)`, and the cross-entropy `loss` when `labels` are given."""
        class_features = self.encode_classes()
        image_features = F.normalize(
            _features(self.model.get_image_features(pixel_values=pixel_values, **kwargs)), dim=-1
        )
        base = self._base_model()
        logits = image_features @ class_features.to(image_features.dtype).t()
        logits = logits * base.logit_scale.exp().to(logits.dtype)
        logit_bias = getattr(base, "logit_bias", None)
        if logit_bias is not None:
            logits = logits + logit_bias.to(logits.dtype)
        loss = None
        if labels is not None:
            if labels.min() < 0 or labels.max() >= len(self._class_names):
                raise ValueError(
                    f"Labels must be class indices in 0..{len(self._class_names) - 1}, got values from "
                    f"{int(labels.min())} to {int(labels.max())}."
                )
            loss = F.cross_entropy(logits.float(), labels.to(logits.device))
        return ImageClassifierOutput(loss=loss, logits=logits)

    @torch.no_grad()
    def predict(self, images: Any, batch_size: int = 64) -> list[str]:
        """The predicted class name of each image (PIL images, arrays, or an HF `datasets` image column)."""
        if self.image_processor is None:
            raise ValueError(
                "`predict` needs the model's image processor: pass `image_processor=` to PromptClassifier."
            )
        images = list(images)
        device = next(self.model.parameters()).device
        predictions: list[str] = []
        for start in range(0, len(images), batch_size):
            batch = [
                image.convert("RGB") if hasattr(image, "convert") else image
                for image in images[start : start + batch_size]
            ]
            pixel_values = self.image_processor(images=batch, return_tensors="pt")["pixel_values"].to(device)
            dtype = next(p for p in self.model.parameters() if p.is_floating_point()).dtype
            logits = self(pixel_values=pixel_values.to(dtype)).logits
            predictions.extend(self._class_names[i] for i in logits.argmax(-1).tolist())
        return predictions
