"""Training objectives of `PromptTuningTrainer`: the loss of a training step and the state kept across epochs.

A [`TrainingObjective`] computes the training loss from a [`LossInputs`] (the step's logits, labels, images and the
prompted image / class features); the base class is the cross-entropy with the arguments' `label_smoothing_factor`,
and a subclass adds a term in [`TrainingObjective.regularization`]. Per-epoch state lives in 🤗 `TrainerCallback`s
that [`TrainingObjective.callbacks`] returns; what must survive `train(resume_from_checkpoint=...)` goes through
[`TrainingObjective.state_dict`], which the trainer writes into every checkpoint (`training_objective.safetensors`).

The objectives of the methods of `mudpt_peft.methods.METHODS` are [`OBJECTIVES`]: `PromptTuningTrainer(...,
objective="kgcoop")` resolves a method's objective from its row. Frozen features (CLIP without prompts) come from the
same model with the adapter disabled (`PeftModel.disable_adapter()`), never from a second copy of the backbone.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import TrainerCallback

from ._utils import base_model_of, check_template, projected_features
from .methods import METHODS, normalize_method
from .templates import PROMPTSRC_TEMPLATES

__all__ = [
    "OBJECTIVES",
    "GaussianPromptAggregation",
    "KgCoOpObjective",
    "LossInputs",
    "PromptSRCObjective",
    "TrainingObjective",
    "frozen_class_features",
    "gaussian_epoch_weights",
    "resolve_objective",
]


@dataclass
class LossInputs:
    """What a training step gives a [`TrainingObjective`].

    Args:
        trainer (`PromptTuningTrainer`): The trainer (its `model` is the unwrapped `PeftModel`, its `args` the
            training arguments, `class_names` / `tokenizer` the class prompts' ingredients).
        logits (`torch.Tensor`): `(batch, classes)`, `logit_scale · cos(image, class)` (+ any `logit_bias`).
        labels (`torch.Tensor`): `(batch,)` class indices.
        pixel_values (`torch.Tensor`): The batch's images, on the model's device and dtype.
        image_features (`torch.Tensor`, *optional*): `(batch, dim)` L2-normalised prompted image features (`None`
            for an image-conditioned adapter, CoCoOp, whose class features are per image).
        class_features (`torch.Tensor`, *optional*): `(classes, dim)` L2-normalised prompted class-prompt features
            (`None` for an image-conditioned adapter).
    """

    trainer: Any
    logits: torch.Tensor
    labels: torch.Tensor
    pixel_values: torch.Tensor
    image_features: torch.Tensor | None
    class_features: torch.Tensor | None


class TrainingObjective:
    """The training loss of `PromptTuningTrainer`: cross-entropy plus [`~TrainingObjective.regularization`].

    The base class is the plain objective (CoOp, VPT, IVLP, MaPLe, MuDPT): the mean cross-entropy of the logits with
    the arguments' `label_smoothing_factor`, no regularisation. Subclass it for your own regulariser: override
    `regularization` (a scalar added to the cross-entropy in training steps), and, for state kept across epochs,
    `callbacks` (🤗 `TrainerCallback`s the trainer adds) with `state_dict` / `load_state_dict` (tensors saved in each
    checkpoint and restored on resume) and `reset` (called when `train()` starts). Evaluation losses are the
    cross-entropy alone.

    Example:

        ```py
        >>> class PromptNormPenalty(TrainingObjective):
        ...     def __init__(self, weight=1e-3):
        ...         self.weight = weight
        ...     def regularization(self, inputs):
        ...         prompts = [p for p in inputs.trainer.model.parameters() if p.requires_grad]
        ...         return self.weight * sum(p.pow(2).sum() for p in prompts)
        >>> trainer = PromptTuningTrainer(model, class_names, tokenizer, args, objective=PromptNormPenalty())
        ```
    """

    def loss(self, inputs: LossInputs) -> torch.Tensor:
        """The training loss of a step: `cross_entropy(inputs) + regularization(inputs)`."""
        return self.cross_entropy(inputs) + self.regularization(inputs)

    def cross_entropy(self, inputs: LossInputs) -> torch.Tensor:
        """Mean cross-entropy of the logits (in fp32), with the arguments' `label_smoothing_factor`."""
        smoothing = float(inputs.trainer.args.label_smoothing_factor or 0.0)
        logits = inputs.logits.float()
        return F.cross_entropy(logits, inputs.labels.to(logits.device), label_smoothing=smoothing)

    def regularization(self, inputs: LossInputs) -> torch.Tensor | float:
        """The term added to the cross-entropy; 0 here."""
        return 0.0

    def callbacks(self) -> list[TrainerCallback]:
        """`TrainerCallback`s the trainer adds (per-step or per-epoch state); none here."""
        return []

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors to save in each checkpoint, restored by `load_state_dict` on resume; none here."""
        return {}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what `state_dict` returned; a `ValueError` for a state this objective does not keep."""
        if state:
            raise ValueError(
                f"{type(self).__name__} keeps no state, but the checkpoint has {sorted(state)[:5]}: it was saved by "
                "another training objective."
            )

    def reset(self) -> None:
        """Forget the state of a previous `train()` (called when training starts, before any resume)."""


# ------------------------------------------------------------------------------------------------------------------
# frozen features: the same model, adapter disabled


def frozen_class_features(trainer: Any, templates: Sequence[str]) -> torch.Tensor:
    """The L2-normalised class features of CLIP without prompts, `(classes, dim)`: for each template the projected
    text features of its class prompts, averaged over the templates *before* normalising (as PromptSRC's official
    code does; with one template this is the normalised features). Computed with `trainer.model.disable_adapter()`,
    without gradients."""
    from .classifier import _tokenize_templates

    templates = [check_template(template) for template in templates]
    model = trainer.model
    input_ids, attention_mask, lengths = _tokenize_templates(trainer.tokenizer, templates, trainer.class_names)
    device = next(p for p in model.parameters() if p.is_floating_point()).device
    count, total = len(trainer.class_names), None
    with torch.no_grad(), model.disable_adapter():
        for index, length in enumerate(lengths):
            rows = slice(index * count, (index + 1) * count)
            output = model.get_text_features(
                input_ids=input_ids[rows, :length].to(device), attention_mask=attention_mask[rows, :length].to(device)
            )
            features = projected_features(output).float()
            total = features if total is None else total + features
    return F.normalize(total / len(lengths), dim=-1)


def _frozen_image_features(trainer: Any, pixel_values: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), trainer.model.disable_adapter():
        features = projected_features(trainer.model.get_image_features(pixel_values=pixel_values))
    return F.normalize(features, dim=-1)


class _FrozenClassFeatures:
    """Frozen class features computed once per trainer and class names (and device)."""

    def __init__(self, templates: Sequence[str]) -> None:
        self.templates = [check_template(template) for template in templates]
        self._cache: tuple[tuple, torch.Tensor] | None = None

    def __call__(self, trainer: Any, device: torch.device) -> torch.Tensor:
        key = (id(trainer), tuple(trainer.class_names), device)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, frozen_class_features(trainer, self.templates).to(device))
        return self._cache[1]


# ------------------------------------------------------------------------------------------------------------------
# KgCoOp


class KgCoOpObjective(TrainingObjective):
    """KgCoOp's objective (Yao et al., CVPR 2023; htyao89/KgCoOp `trainers/kgcoop.py`): cross-entropy plus
    `weight · (1 − mean_i cos(w_i, w_i^clip))`, where `w_i` are the prompted class features and `w_i^clip` those of
    CLIP without prompts on the hand-crafted template (computed once, adapter disabled).

    On unit vectors `‖w − w^clip‖² = 2 (1 − cos)`, so this is `weight / 2 · mean_i ‖w_i − w_i^clip‖²`: the official code
    computes the cosine form with `W = 8.0` (its scripts), i.e. half the paper's `λ · mean ‖·‖²` at the paper's λ = 8.
    This follows the code.

    Args:
        weight (`float`, defaults to 8.0): `TRAINER.COOP.W` of the official scripts.
        template (`str`, defaults to `"a photo of a {}."`): The hand-crafted template; the official code uses each
            dataset's CoOp template (`mudpt_peft.benchmark_datasets.BENCHMARKS[...].template`).
    """

    def __init__(self, weight: float = 8.0, template: str = "a photo of a {}.") -> None:
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"`weight` must be a finite number >= 0, got {weight!r}.")
        self.weight = float(weight)
        self._clip_features = _FrozenClassFeatures([template])

    def regularization(self, inputs: LossInputs) -> torch.Tensor:
        clip = self._clip_features(inputs.trainer, inputs.class_features.device)
        cosine = (inputs.class_features.float() * clip).sum(dim=-1)
        return self.weight * (1.0 - cosine.mean())


# ------------------------------------------------------------------------------------------------------------------
# PromptSRC


def gaussian_epoch_weights(epochs: int, mean: float, std: float) -> np.ndarray:
    """PromptSRC's aggregation weights of epochs `1..epochs`: a Gaussian density of `mean` and `std` at each epoch,
    normalised to sum to 1 (computed from log-densities, so that epochs far from `mean` do not underflow to 0/0)."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"`epochs` must be an integer >= 1, got {epochs!r}.")
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise ValueError(f"The Gaussian needs a finite mean and a std > 0, got mean={mean!r}, std={std!r}.")
    log_density = -0.5 * ((np.arange(1, epochs + 1, dtype=np.float64) - mean) / std) ** 2
    weights = np.exp(log_density - log_density.max())
    return weights / weights.sum()


class GaussianPromptAggregation(TrainerCallback):
    """PromptSRC's Gaussian prompt aggregation (GPA): after the last optimizer step of epoch `e` (of `E`) the
    trainable adapter tensors, weighted by `gaussian_epoch_weights(E, mean, std)[e - 1]`, are added to a running sum
    (in fp32); when training ends after all `E` epochs, the sum replaces the adapter tensors, so the aggregate is what
    is evaluated and saved. The official code aggregates the whole `state_dict` (frozen CLIP weights included, which
    the weights' sum of 1 leaves as they are up to rounding); this aggregates the trainable tensors only.

    The sum and the count of aggregated epochs are [`PromptSRCObjective.state_dict`], saved in each checkpoint. If
    training stops before its last epoch ends (`max_steps`, early stopping), the last prompts are kept, with a
    warning. Under DDP every rank aggregates its (identical) replica. With `load_best_model_at_end`, the aggregate
    replaces the best checkpoint's prompts (the Trainer loads that checkpoint before `on_train_end`).
    """

    def __init__(self, mean: float, std: float) -> None:
        gaussian_epoch_weights(1, mean, std)  # checks them
        self.mean, self.std = float(mean), float(std)
        self.reset()

    def reset(self) -> None:
        self.total: dict[str, torch.Tensor] = {}
        self.epochs = 0

    @staticmethod
    def _trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
        return {name: p for name, p in model.named_parameters() if p.requires_grad}

    def on_step_end(self, args: Any, state: Any, control: Any, model: torch.nn.Module = None, **kwargs: Any) -> None:
        # the last optimizer step of an epoch (`state.epoch` is then a whole number): before any checkpoint of that
        # step is saved, so that a resume from it keeps this epoch's term (`on_epoch_end` runs after the save)
        epoch = round(state.epoch)
        if abs(state.epoch - epoch) > 1e-9 or epoch < 1 or epoch <= self.epochs:
            return
        weight = float(gaussian_epoch_weights(int(state.num_train_epochs), self.mean, self.std)[epoch - 1])
        with torch.no_grad():
            for name, parameter in self._trainable(model).items():
                term = parameter.detach().float() * weight
                self.total[name] = term if name not in self.total else self.total[name] + term
        self.epochs = epoch

    def on_train_end(self, args: Any, state: Any, control: Any, model: torch.nn.Module = None, **kwargs: Any) -> None:
        if not self.total:
            return
        if self.epochs != int(state.num_train_epochs) or state.epoch < state.num_train_epochs - 1e-6:
            warnings.warn(
                f"Gaussian prompt aggregation covers {self.epochs} complete epochs of {state.num_train_epochs}: "
                "training stopped early, so the last prompts are kept, not the aggregate.",
                stacklevel=2,
            )
            return
        with torch.no_grad():
            for name, parameter in self._trainable(model).items():
                parameter.copy_(self.total[name].to(parameter.dtype))


class PromptSRCObjective(TrainingObjective):
    """PromptSRC's objective (Khattak et al., ICCV 2023; muzairkhattak/PromptSRC `trainers/promptsrc.py`):
    cross-entropy plus its self-regularisation, and Gaussian prompt aggregation over the epochs.

    With `f̃` / `g̃` the normalised prompted image / class features and `f` / `g` those of CLIP without prompts (adapter
    disabled; `g` the mean over `templates` of the unnormalised text features, then normalised, computed once):

    `text_weight · mean|g̃ − g| + image_weight · mean|f̃ − f| + Σ softmax(z) (log softmax(z) − log softmax(z̃)) / (B·C)`

    where `z̃` are the prompted logits and `z = logit_scale · f gᵀ` the frozen ones: the official `F.kl_div(...,
    reduction="sum", log_target=True)` at temperature 1 divided by `logits.numel()` (not by the batch size as
    `reduction="batchmean"` would), i.e. `KL(frozen ‖ prompted)` per logit.

    Args:
        text_weight (`float`, defaults to 25): `TEXT_LOSS_WEIGHT`.
        image_weight (`float`, defaults to 10): `IMAGE_LOSS_WEIGHT`.
        gpa_mean (`float`, defaults to 15): `GPA_MEAN`, in epochs (the base-to-new config, 20 epochs; the few-shot
            config trains 50 epochs with 30 / 30, or 45 / 5 on fine-grained datasets).
        gpa_std (`float`, defaults to 1): `GPA_STD`.
        templates (`Sequence[str]`, defaults to `mudpt_peft.templates.PROMPTSRC_TEMPLATES`): The frozen text
            features' ensemble.
    """

    def __init__(
        self,
        text_weight: float = 25.0,
        image_weight: float = 10.0,
        gpa_mean: float = 15.0,
        gpa_std: float = 1.0,
        templates: Sequence[str] = PROMPTSRC_TEMPLATES,
    ) -> None:
        for name, value in (("text_weight", text_weight), ("image_weight", image_weight)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}.")
        if isinstance(templates, str) or not templates:
            raise ValueError(f"`templates` must be a non-empty list of templates, got {templates!r}.")
        self.text_weight, self.image_weight = float(text_weight), float(image_weight)
        self._frozen_text = _FrozenClassFeatures(templates)
        self.aggregation = GaussianPromptAggregation(gpa_mean, gpa_std)

    def regularization(self, inputs: LossInputs) -> torch.Tensor:
        trainer = inputs.trainer
        frozen_text = self._frozen_text(trainer, inputs.class_features.device)
        frozen_image = _frozen_image_features(trainer, inputs.pixel_values).float()
        scale = base_model_of(trainer.model).logit_scale.exp().float()
        frozen_logits = scale * frozen_image @ frozen_text.t()
        text = F.l1_loss(inputs.class_features.float(), frozen_text) * self.text_weight
        image = F.l1_loss(inputs.image_features.float(), frozen_image) * self.image_weight
        logits = inputs.logits.float()
        agreement = (
            F.kl_div(
                F.log_softmax(logits, dim=1), F.log_softmax(frozen_logits, dim=1), reduction="sum", log_target=True
            )
            / logits.numel()
        )
        return text + image + agreement

    def callbacks(self) -> list[TrainerCallback]:
        return [self.aggregation]

    def state_dict(self) -> dict[str, torch.Tensor]:
        if not self.aggregation.total:
            return {}
        state = {f"gpa.total.{name}": tensor.contiguous() for name, tensor in self.aggregation.total.items()}
        state["gpa.epochs"] = torch.tensor([self.aggregation.epochs], dtype=torch.int64)
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        unknown = [key for key in state if key != "gpa.epochs" and not key.startswith("gpa.total.")]
        if unknown or (state and "gpa.epochs" not in state):
            raise ValueError(f"Not a PromptSRC objective state: keys {sorted(state)[:5]}.")
        self.aggregation.reset()
        if state:
            self.aggregation.total = {
                key.removeprefix("gpa.total."): tensor.clone() for key, tensor in state.items() if key != "gpa.epochs"
            }
            self.aggregation.epochs = int(state["gpa.epochs"][0])

    def reset(self) -> None:
        self.aggregation.reset()


# ------------------------------------------------------------------------------------------------------------------
# by method

#: The objective class of each `objective` named in `mudpt_peft.methods.METHODS` (its default arguments are the
#: official hyper-parameters).
OBJECTIVES: Mapping[str, type[TrainingObjective]] = {
    "cross_entropy": TrainingObjective,
    "kgcoop": KgCoOpObjective,
    "promptsrc": PromptSRCObjective,
}


def resolve_objective(objective: TrainingObjective | str | None) -> TrainingObjective:
    """A [`TrainingObjective`]: `objective` itself, the cross-entropy for `None`, or for a method name (of
    `METHODS`) the objective of its row, with the official hyper-parameters."""
    if objective is None:
        return TrainingObjective()
    if isinstance(objective, TrainingObjective):
        return objective
    if isinstance(objective, str):
        return OBJECTIVES[METHODS[normalize_method(objective)].objective]()
    raise ValueError(f"`objective` must be a TrainingObjective, a method name or None, got {type(objective).__name__}.")
