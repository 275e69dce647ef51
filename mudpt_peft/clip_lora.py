"""CLIP-LoRA (Zanella & Ben Ayed, "Low-Rank Few-Shot Adaptation of Vision-Language Models", CVPR 2024 workshops) as
a peer baseline: peft's own `LoraConfig` and `TrainingArguments` with the official recipe, trained by
[`PromptTuningTrainer`] unchanged.

The official code (MaxZanella/CLIP-LoRA, `main.py`, `lora.py`, `loralib/`) puts rank-2 LoRA on the query, key and value
projections of every layer of both encoders, scales the update by `alpha / sqrt(r)` (not peft's default `alpha / r`:
peft's `use_rslora=True`), applies dropout 0.25 to the LoRA input, and trains with AdamW (learning rate 2e-4, weight
decay 0.01, betas 0.9 / 0.999) for `500 x shots` iterations of batch 32 under a cosine schedule down to 1e-6 with no
warm-up and no gradient clipping, on one template (`"a photo of a {}."`), the class prompts re-encoded every step (the
text encoder has LoRA too). Its images get a random resized crop (scale 0.08–1) and a horizontal flip: pass
`augment=True` to [`PromptTuningTrainer`]. The official runs use fp16 autocast on a GPU; pass `bf16=True` / `fp16=True`
for the same here.

Example:

    ```py
    >>> from peft import get_peft_model
    >>> from mudpt_peft import PromptTuningTrainer
    >>> from mudpt_peft.clip_lora import clip_lora_config, clip_lora_training_arguments
    >>> model = get_peft_model(clip, clip_lora_config())  # doctest: +SKIP
    >>> args = clip_lora_training_arguments("out/clip-lora", shots=16)  # doctest: +SKIP
    >>> trainer = PromptTuningTrainer(model, class_names, tokenizer, args, train_dataset=train,
    ...                               image_processor=image_processor, template="a photo of a {}.", augment=True)
    ... # doctest: +SKIP
    ```
"""

from __future__ import annotations

from typing import Any

from peft import LoraConfig
from transformers import TrainingArguments

__all__ = [
    "CLIP_LORA_RECIPE",
    "CLIP_LORA_TEMPLATE",
    "clip_lora_config",
    "clip_lora_training_arguments",
]

#: The one template of the official training and evaluation.
CLIP_LORA_TEMPLATE = "a photo of a {}."

#: The official LoRA settings (`run_utils.py` defaults and `loralib/layers.py`): r 2, alpha 1, scaling alpha/sqrt(r),
#: dropout 0.25 before the LoRA branch, q/k/v of every attention layer of both encoders, no bias trained.
_LORA_SETTINGS: dict[str, Any] = dict(
    r=2,
    lora_alpha=1,
    use_rslora=True,
    lora_dropout=0.25,
    target_modules=["q_proj", "k_proj", "v_proj"],
    bias="none",
)

#: The official optimisation (`lora.py`): AdamW, cosine annealing to `eta_min` 1e-6 over all iterations, batch 32,
#: `500 x shots` iterations (`--n_iters 500` times `--shots`).
CLIP_LORA_RECIPE: dict[str, Any] = dict(
    learning_rate=2e-4,
    weight_decay=1e-2,
    adam_beta1=0.9,
    adam_beta2=0.999,
    min_lr=1e-6,
    per_device_train_batch_size=32,
    iterations_per_shot=500,
)


def clip_lora_config(**overrides: Any) -> LoraConfig:
    """peft's `LoraConfig` with CLIP-LoRA's official settings; `overrides` replace any of them.

    `target_modules=["q_proj", "k_proj", "v_proj"]` names the attention projections of both towers in the
    `transformers` CLIP family (and in SigLIP's); `use_rslora=True` is the official `alpha / sqrt(r)` scaling.

    Args:
        **overrides:
            Any `LoraConfig` argument, e.g. `r=4` or `target_modules=["vision_model.*q_proj"]`.

    Example:

        ```py
        >>> config = clip_lora_config()
        >>> config.r, config.lora_alpha, config.use_rslora, config.lora_dropout
        (2, 1, True, 0.25)
        ```
    """
    return LoraConfig(**{**_LORA_SETTINGS, **overrides})


def clip_lora_training_arguments(output_dir: str, shots: int, **overrides: Any) -> TrainingArguments:
    """`TrainingArguments` with CLIP-LoRA's official recipe for `shots` examples per class.

    AdamW (torch), learning rate 2e-4, weight decay 0.01, betas (0.9, 0.999), `500 * shots` steps of batch 32, the
    cosine schedule with a floor (`"cosine_with_min_lr"`, `min_lr=1e-6`: at every step the learning rate of the
    official `CosineAnnealingLR(T_max=steps, eta_min=1e-6)`), no warm-up, no gradient clipping, an evaluation batch of
    100.

    Args:
        output_dir (`str`):
            Where checkpoints and the final adapter go.
        shots (`int`):
            Examples per class: the number of steps is `500 * shots`.
        **overrides:
            Any `TrainingArguments` argument, e.g. `max_steps=200, report_to=[]`.

    Example:

        ```py
        >>> args = clip_lora_training_arguments("out/clip-lora", shots=4)
        >>> args.max_steps, args.learning_rate, args.lr_scheduler_type.value
        (2000, 0.0002, 'cosine_with_min_lr')
        ```
    """
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise ValueError(f"`shots` must be an integer >= 1 (examples per class), got {shots!r}.")
    recipe = CLIP_LORA_RECIPE
    settings: dict[str, Any] = dict(
        optim="adamw_torch",
        learning_rate=recipe["learning_rate"],
        weight_decay=recipe["weight_decay"],
        adam_beta1=recipe["adam_beta1"],
        adam_beta2=recipe["adam_beta2"],
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr": recipe["min_lr"]},
        warmup_steps=0,
        max_steps=recipe["iterations_per_shot"] * shots,
        per_device_train_batch_size=recipe["per_device_train_batch_size"],
        per_device_eval_batch_size=100,
        max_grad_norm=0.0,
    )
    settings.update(overrides)
    return TrainingArguments(output_dir=output_dir, **settings)
