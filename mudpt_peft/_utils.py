"""Small helpers shared by several modules of the package."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn


def check_class_names(class_names: Sequence[str]) -> list[str]:
    """The class names as a list of strings; a `ValueError` for a string, `None` or an empty list."""
    if isinstance(class_names, str) or class_names is None or len(class_names) == 0:
        raise ValueError(
            "`class_names` must be a non-empty list of class names in label order, e.g. `dataset.features['label']"
            ".names`."
        )
    return [str(name) for name in class_names]


def first_float_parameter(module: nn.Module) -> torch.nn.Parameter:
    """The first floating-point parameter of `module`: where its weights live and in which dtype."""
    return next(p for p in module.parameters() if p.is_floating_point())


def base_model_of(model: nn.Module) -> nn.Module:
    """The model under a peft wrapper (`get_base_model()`), or `model` itself when it is not wrapped."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


def model_image_size(model: nn.Module) -> int | None:
    """`vision_config.image_size` of a CLIP-like model (wrapped by peft or not), if it has one."""
    vision_config = getattr(getattr(base_model_of(model), "config", None), "vision_config", None)
    size = getattr(vision_config, "image_size", None)
    return int(size) if isinstance(size, int) else None


def projected_features(output: Any) -> torch.Tensor:
    """The projected features from `get_text_features` / `get_image_features` (an output object in transformers 5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def iter_modules(root: nn.Module) -> Iterator[nn.Module]:
    """Every module under `root` once (`root.modules()` without building the dotted names: cheaper per call)."""
    stack, seen = [root], set()
    while stack:
        module = stack.pop()
        if module is None or id(module) in seen:
            continue
        seen.add(id(module))
        yield module
        stack.extend(module._modules.values())
