"""🤗 transformers' zero-shot-image-classification pipeline for a model with a prompt adapter (`PeftModel`).

`transformers.pipeline("zero-shot-image-classification", model=peft_model, ...)` already classifies with the adapter
(the pipeline calls the model's forward, which the `PeftModel` routes through the adapter), but its model-type check
compares the class name of the model it was given, `PeftModel`, with the supported classes (`CLIPModel`, `SiglipModel`,
...) and logs "The model 'PeftModel' is not supported for zero-shot-image-classification", which is wrong for an
adapted CLIP. [`zero_shot_pipeline`] builds the same pipeline with [`PeftZeroShotImageClassificationPipeline`], whose
check looks at the base model under the adapter instead: nothing in transformers is changed globally.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from peft import PeftModel
from transformers import pipeline
from transformers.models.auto.modeling_auto import MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES
from transformers.pipelines.zero_shot_image_classification import ZeroShotImageClassificationPipeline

__all__ = ["PeftZeroShotImageClassificationPipeline", "supported_model_names", "zero_shot_pipeline"]

TASK = "zero-shot-image-classification"


def supported_model_names(supported_models: Iterable[str] | Mapping[str, Any]) -> list[str]:
    """The class names in a pipeline's list of supported models, or in a model mapping (config type -> class name
    or tuple of class names), as transformers' `Pipeline.check_model_type` reads them.

    Args:
        supported_models (`list[str]` or `Mapping[str, str | tuple[str, ...]]`):
            The supported models, e.g. `MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES`.

    Returns:
        `list[str]`: the model class names.
    """
    if not isinstance(supported_models, Mapping):
        return [str(name) for name in supported_models]
    names: list[str] = []
    for value in supported_models.values():
        names.extend(value if isinstance(value, tuple) else [value])
    mapping = getattr(supported_models, "_model_mapping", None)  # a lazy auto mapping: its registered extra classes
    if mapping is not None:
        for model in mapping._extra_content.values():
            names.extend(m.__name__ for m in (model if isinstance(model, tuple) else (model,)))
    return [name if isinstance(name, str) else name.__name__ for name in names]


class PeftZeroShotImageClassificationPipeline(ZeroShotImageClassificationPipeline):
    """transformers' `ZeroShotImageClassificationPipeline`, whose model-type check accepts a `PeftModel` on a
    supported base model (e.g. a MuDPT adapter on a `CLIPModel`).

    Everything else is the parent class's: preprocessing (`image_processor`, `hypothesis_template.format(label)`
    through the tokenizer with `padding=True`), the forward of the given model (the adapter active) and the softmax
    over `logits_per_image` (a sigmoid for SigLIP). For any other model the check is the parent's, log included.
    Build it with [`zero_shot_pipeline`], or pass `pipeline_class=PeftZeroShotImageClassificationPipeline` to
    `transformers.pipeline`.
    """

    def check_model_type(self, supported_models: list[str] | dict) -> None:
        """Accept a `PeftModel` whose base model is a supported class; otherwise the parent's check (which logs an
        error for an unsupported model)."""
        if isinstance(self.model, PeftModel):
            base = self.model.get_base_model()
            if type(base).__name__ in supported_model_names(supported_models):
                return
        super().check_model_type(supported_models)


def zero_shot_pipeline(
    model: PeftModel | str | os.PathLike,
    tokenizer: Any = None,
    image_processor: Any = None,
    *,
    processor: Any = None,
    **kwargs: Any,
) -> PeftZeroShotImageClassificationPipeline:
    """A zero-shot-image-classification pipeline on a model with a prompt adapter, without transformers' misleading
    "The model 'PeftModel' is not supported" log.

    The same as `transformers.pipeline("zero-shot-image-classification", model=model, tokenizer=tokenizer,
    image_processor=image_processor, **kwargs)`, built with [`PeftZeroShotImageClassificationPipeline`]; the scores
    are those of the model's own forward with its active adapter (they equal [`PromptClassifier`]'s probabilities
    for the same template). Call it as any such pipeline: `classify(image, candidate_labels=[...],
    hypothesis_template="a photo of a {}.")` (transformers' default template is `"This is a photo of {}."`).

    Args:
        model (`PeftModel`, `str` or `os.PathLike`):
            The adapted model (`get_peft_model(...)` or `PeftModel.from_pretrained(...)`), or a saved adapter's folder
            or Hub id, which transformers' PEFT integration loads onto the base model named in its
            `adapter_config.json` (`import mudpt_peft` first, as this module does, so that peft knows the `MUDPT`
            type).
        tokenizer (*optional*):
            The model's tokenizer (an object or a folder / Hub id); with a `PeftModel`, pass it, or `processor`.
        image_processor (*optional*):
            The model's image processor; with a `PeftModel`, pass it, or `processor`.
        processor (*optional*):
            A processor holding both (e.g. `CLIPProcessor`), used for whichever of `tokenizer` / `image_processor`
            is not given.
        **kwargs:
            Any other `transformers.pipeline` argument (`device`, `dtype`, `model_kwargs`, ...); not `task` nor
            `pipeline_class`.

    Returns:
        [`PeftZeroShotImageClassificationPipeline`]: the pipeline.

    Raises:
        ValueError: for a `model` that is neither a `PeftModel` nor a folder / Hub id, for a `PeftModel` whose base
            model the task does not support, for a `PeftModel` without a tokenizer or image processor, and for
            `task` or `pipeline_class` in `kwargs`.

    Example:

        ```py
        >>> from mudpt_peft.pipelines import zero_shot_pipeline
        >>> classify = zero_shot_pipeline(peft_model, tokenizer, image_processor)
        >>> classify(image, candidate_labels=["cat", "dog"], hypothesis_template="a photo of a {}.")
        [{'score': 0.93, 'label': 'cat'}, {'score': 0.07, 'label': 'dog'}]
        ```
    """
    for name in ("task", "pipeline_class"):
        if name in kwargs:
            raise ValueError(
                f"`{name}` is fixed by zero_shot_pipeline (the {TASK} task and "
                f"PeftZeroShotImageClassificationPipeline); call transformers.pipeline directly for another one."
            )
    if processor is not None:
        tokenizer = tokenizer if tokenizer is not None else getattr(processor, "tokenizer", None)
        if image_processor is None:
            image_processor = getattr(processor, "image_processor", None)
    if isinstance(model, PeftModel):
        base_name = type(model.get_base_model()).__name__
        supported = supported_model_names(MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES)
        if base_name not in supported:
            raise ValueError(
                f"The adapter's base model is a {base_name}, which the {TASK} pipeline does not support; supported "
                f"are {', '.join(supported)}."
            )
        given = (("tokenizer", tokenizer), ("image_processor", image_processor))
        missing = [name for name, value in given if value is None]
        if missing:
            raise ValueError(
                f"A PeftModel needs its {' and '.join(missing)}: pass `{'=`, `'.join(missing)}=` or `processor=` "
                "(e.g. `CLIPProcessor.from_pretrained(model_id)`): transformers cannot infer them from an in-memory "
                "PeftModel (it fails with 'Impossible to guess which tokenizer to use')."
            )
    elif not isinstance(model, (str, os.PathLike)):
        raise ValueError(
            f"`model` must be a PeftModel or the folder / Hub id of a saved adapter, got {type(model).__name__}. "
            "Wrap a plain model first with `peft.get_peft_model(model, MuDPTConfig.for_method(...))`, or use "
            f"`transformers.pipeline({TASK!r}, model=...)` for a model without an adapter."
        )
    else:
        model = os.fspath(model)
    return pipeline(
        TASK,
        model=model,
        tokenizer=tokenizer,
        image_processor=image_processor,
        pipeline_class=PeftZeroShotImageClassificationPipeline,
        **kwargs,
    )
