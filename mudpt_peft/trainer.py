"""`PromptTuningTrainer`: train and evaluate a prompt adapter with the 🤗 `Trainer`, saving adapter-only checkpoints."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import EvalPrediction, Trainer, TrainingArguments
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ._utils import check_class_names, check_template, first_float_parameter, model_image_size, short_repr
from .adapter_files import CONFIG_NAME, PICKLED_WEIGHTS_NAME, SAFETENSORS_WEIGHTS_NAME
from .classifier import DEFAULT_CLASS_CHUNK_SIZE, PromptClassifier
from .config import MuDPTConfig
from .data import ImageClassificationCollator, check_image_classification_dataset
from .evaluation import accuracy_metrics, dataset_name_of, split_of
from .hub import write_classifier_file
from .loading import load_adapter
from .losses import LossInputs, TrainingObjective, resolve_objective
from .methods import METHODS, normalize_method
from .model_card import record_eval_result, write_model_card

__all__ = ["TRAINING_RECIPES", "PromptTuningTrainer", "default_training_arguments"]

#: The file of the training objective's state in a checkpoint (see `mudpt_peft.losses.TrainingObjective.state_dict`).
OBJECTIVE_NAME = "training_objective.safetensors"


# ------------------------------------------------------------------------------------------------------------------
# per-method hyper-parameters

#: The training recipe of each method (the `recipe` of its row in `mudpt_peft.methods.METHODS`, where the sources
#: are given). All use SGD with momentum 0.9 and weight decay 5e-4 (Dassl's defaults), a cosine schedule and one
#: warm-up epoch.
TRAINING_RECIPES: dict[str, dict[str, float | int]] = {name: dict(method.recipe) for name, method in METHODS.items()}


def _coop_epochs(shots: int) -> int:
    """CoOp's epochs per shot count (its COOP.md): 50 for 1 shot, 100 for 2 and 4 shots, 200 for 8 and 16 shots."""
    if shots <= 1:
        return 50
    if shots <= 4:
        return 100
    return 200


def default_training_arguments(
    method: str, output_dir: str, shots: int | None = None, **overrides: Any
) -> TrainingArguments:
    """`TrainingArguments` with a method's official training recipe; `overrides` replace any argument.

    | method | optimizer | learning rate | epochs | batch size |
    | --- | --- | --- | --- | --- |
    | `"coop"` | SGD | 0.002 | 200 (50 for 1 shot, 100 for 2–4 shots) | 32 |
    | `"vpt"` | SGD | 0.0025 | 5 | 4 |
    | `"ivlp"`, `"maple"` | SGD | 0.0035 | 5 | 4 |
    | `"mudpt"` | SGD | 0.0025 | 10 | 4 |
    | `"mudpt-linear"`, `"mudpt-linear-v1"` | SGD | 0.005 (measured) | 10 | 4 |
    | `"cross-attention"` | SGD | 0.00125 (measured) | 10 | 4 |
    | `"cocoop"` | SGD | 0.002 | 10 | 1 |
    | `"kgcoop"` | SGD | 0.002 | 100 | 128 |
    | `"promptsrc"` | SGD | 0.0025 | 20 | 4 |

    Every recipe uses SGD (momentum 0.9, weight decay 5e-4), a cosine schedule with one warm-up epoch (a linear
    warm-up over the first `1 / epochs` of the steps; none with a single epoch), no gradient clipping, an evaluation
    batch of 100 and `ddp_find_unused_parameters=False` (all trainable adapter parameters are used in every step).
    KgCoOp and PromptSRC train with their own objective: pass `objective=` the method's name to
    [`PromptTuningTrainer`] (`mudpt_peft.losses`); their recipes are the official ones, not swept here.
    The official recipes, confirmed (or, without one, chosen) by a learning-rate sweep on the embedded tiny CLIP;
    CoOp collapses at twice its learning rate there, and MuDPT's Injection Model was learning-rate sensitive with
    AdamW (see `docs/train.md`).

    Args:
        method (`str`):
            A method name of [`MuDPTConfig.for_method`] (case-insensitive, `_` or `-`).
        output_dir (`str`):
            Where checkpoints and the final adapter go.
        shots (`int`, *optional*):
            Examples per class; only changes CoOp's epochs.
        **overrides:
            Any `TrainingArguments` argument, e.g. `num_train_epochs=3, report_to=[]`.

    Example:

        ```py
        >>> args = default_training_arguments("mudpt", "out/mudpt", per_device_train_batch_size=8)
        >>> args.learning_rate, args.lr_scheduler_type.value
        (0.0025, 'cosine')
        ```
    """
    key = normalize_method(method)
    if shots is not None and (isinstance(shots, bool) or not isinstance(shots, int) or shots < 1):
        raise ValueError(f"`shots` must be an integer >= 1 (or None), got {shots!r}.")
    settings: dict[str, Any] = dict(TRAINING_RECIPES[key])
    if key == "coop" and shots is not None:
        settings["num_train_epochs"] = _coop_epochs(shots)
    settings.update(
        optim="sgd",
        optim_args="momentum=0.9",
        weight_decay=5e-4,
        lr_scheduler_type="cosine",
        max_grad_norm=0.0,
        per_device_eval_batch_size=100,
        # every trainable adapter parameter takes part in every forward: spare DDP its search for unused ones (the
        # Trainer turns it on for a PeftModel, which is not a PreTrainedModel)
        ddp_find_unused_parameters=False,
    )
    settings.update(overrides)
    if "warmup_steps" not in overrides:
        epochs = float(settings["num_train_epochs"])
        settings["warmup_steps"] = 1.0 / epochs if epochs > 1 else 0.0  # a float < 1 is a ratio of the steps
    return TrainingArguments(output_dir=output_dir, **settings)


# ------------------------------------------------------------------------------------------------------------------
# the trainer


def _is_peft_model(model: Any) -> bool:
    return isinstance(model, PeftModel)


def _has_adapter(folder: str, subfolder: str = "") -> bool:
    """Whether `folder/subfolder` holds adapter weights (safetensors or pickled), as `Trainer` checks."""
    names = (SAFETENSORS_WEIGHTS_NAME, PICKLED_WEIGHTS_NAME)
    return any(os.path.isfile(os.path.join(folder, subfolder, name)) for name in names)


class PromptTuningTrainer(Trainer):
    """A 🤗 [`~transformers.Trainer`] that tunes a prompt adapter of a CLIP-like model for image classification.

    The trainer's `model` is the `PeftModel` itself, so checkpoints and `save_model` hold the adapter only
    (`adapter_model.safetensors` + `adapter_config.json`, never the base weights), and `train(resume_from_checkpoint=
    ...)` reloads the adapter, optimizer, scheduler and RNG states. The loss is the cross-entropy of the image–class-
    prompt logits of a [`PromptClassifier`] built around the model (`self.classifier`): `logit_scale · cos(image,
    "a photo of a {class}.")`. In training the class prompts are re-encoded on every step, through the (possibly
    DDP-wrapped) model's own forward so that distributed gradient synchronisation applies; in evaluation the
    classifier's cached class features are used. `evaluate()` reports `eval_accuracy` (top-1, percent) and, with more
    than 5 classes, `eval_top5_accuracy`, plus whatever a given `compute_metrics` returns.

    Datasets are HF `datasets` with an image column and an integer label column (configurable); they are turned into
    `pixel_values` / `labels` by an [`ImageClassificationCollator`] with the model's image processor (random resized
    crop + flip for training with `augment=True`, never for evaluation). `remove_unused_columns` and `label_names` are
    handled internally, and the datasets, class names and image size are checked when the trainer is created.

    Args:
        model (`PeftModel`):
            A CLIP-like model with a prompt adapter (`get_peft_model(model, MuDPTConfig.for_method(...))`).
        class_names (`Sequence[str]`):
            The class names, in label order: at least 2, distinct (one class makes the loss 0 and the accuracy
            trivially 100 %; a training set with examples of one class only is refused as well).
        tokenizer (*optional*):
            The model's tokenizer (or give `processor`).
        args (`TrainingArguments`, *optional*):
            The training arguments, e.g. from [`default_training_arguments`].
        train_dataset (`datasets.Dataset`, *optional*):
            The training rows.
        eval_dataset (`datasets.Dataset` or `dict[str, datasets.Dataset]`, *optional*):
            The evaluation rows (labels indexing the same `class_names`).
        image_processor (*optional*):
            The model's image processor (or give `processor`).
        processor (*optional*):
            A processor holding both (`CLIPProcessor`); saved with the checkpoints.
        template (`str`, defaults to `"a photo of a {}."`):
            The class prompt; `{}` is replaced by the class name (exactly one `{}`, no other replacement field).
        image_column (`str`, defaults to `"image"`):
            The dataset column with the images.
        label_column (`str`, defaults to `"label"`):
            The dataset column with the integer labels.
        augment (`bool`, defaults to `False`):
            Whether training images get a random resized crop and horizontal flip.
        data_collator (*optional*):
            Replaces the default [`ImageClassificationCollator`]; it must output `pixel_values` and `labels`.
        compute_metrics (`Callable`, *optional*):
            Extra metrics from an `EvalPrediction`, merged with the accuracies.
        objective (`TrainingObjective` or `str`, *optional*):
            The training loss ([`~mudpt_peft.losses.TrainingObjective`]): an instance (e.g. your own regulariser), a
            method name of `mudpt_peft.methods.METHODS` for that method's objective with its official
            hyper-parameters (`"kgcoop"`, `"promptsrc"`; the other methods' is the cross-entropy), or `None` for the
            cross-entropy. Its callbacks are added to the trainer, and its state is saved in every checkpoint
            (`training_objective.safetensors`) and restored on resume.
        class_chunk_size (`int`, defaults to 256):
            With more classes than this (ImageNet), each training step encodes the class prompts this many at a time,
            recomputing each chunk's activations in the backward pass, so that the step's peak memory is bounded by
            one chunk rather than growing with the class count (see [`PromptClassifier`]); the gradients do not depend
            on it. For CoCoOp: the (image, class) prompts per text forward.
        share_text_prefix (`bool`, defaults to `True`):
            Whether each training step encodes the prefix every class prompt shares (BOS, the context tokens, the
            template's words before the class name) once instead of once per class (per image for CoCoOp), in a
            causal text tower (CLIP's); see [`PromptClassifier`]. Exact up to floating-point summation order; composes
            with `class_chunk_size`. `False` runs the text tower's own forward on every class prompt.
        **kwargs:
            Any other `Trainer` argument (`callbacks`, `optimizers`, ...).

    Example:

        ```py
        >>> model = get_peft_model(CLIPModel.from_pretrained(model_id), MuDPTConfig.for_method("mudpt"))
        >>> trainer = PromptTuningTrainer(
        ...     model, class_names, processor=CLIPProcessor.from_pretrained(model_id),
        ...     args=default_training_arguments("mudpt", "out"), train_dataset=train, eval_dataset=test,
        ... )
        >>> trainer.train()
        >>> trainer.evaluate()["eval_accuracy"]
        ```
    """

    def __init__(
        self,
        model: PeftModel,
        class_names: Sequence[str],
        tokenizer: Any = None,
        args: TrainingArguments | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        *,
        image_processor: Any = None,
        processor: Any = None,
        template: str = "a photo of a {}.",
        image_column: str = "image",
        label_column: str = "label",
        augment: bool = False,
        data_collator: Callable | None = None,
        compute_metrics: Callable[[EvalPrediction], dict] | None = None,
        objective: TrainingObjective | str | None = None,
        class_chunk_size: int = DEFAULT_CLASS_CHUNK_SIZE,
        share_text_prefix: bool = True,
        **kwargs: Any,
    ) -> None:
        if not _is_peft_model(model):
            raise ValueError(
                f"`model` must be a PeftModel (got {type(model).__name__}): wrap it first with "
                "`peft.get_peft_model(model, MuDPTConfig.for_method(...))`, so that only the adapter is trained and "
                "saved."
            )
        if "model_init" in kwargs:
            raise ValueError("`model_init` is not supported: pass the PeftModel as `model`.")
        if kwargs.get("compute_loss_func") is not None:
            raise ValueError(
                "`compute_loss_func` is not supported: the loss is the classifier's cross-entropy (set "
                "`label_smoothing_factor` in the TrainingArguments, or subclass and override `compute_loss`)."
            )
        class_names = check_class_names(class_names)
        if len(class_names) < 2:
            raise ValueError(
                f"PromptTuningTrainer needs at least 2 classes, got 1 ({short_repr(class_names[0], 60)}): with one "
                "class to choose from, the loss is 0 and the accuracy trivially 100 %, so nothing is learned. Pass the "
                "class names of the whole label set."
            )
        check_template(template)
        if processor is not None:
            tokenizer = tokenizer if tokenizer is not None else getattr(processor, "tokenizer", None)
            image_processor = (
                image_processor if image_processor is not None else getattr(processor, "image_processor", None)
            )
        if tokenizer is None:
            raise ValueError("A tokenizer is needed for the class prompts: pass `tokenizer=` or `processor=`.")
        if image_processor is None and data_collator is None:
            raise ValueError("An image processor is needed for the images: pass `image_processor=` or `processor=`.")

        self.class_names = [str(name) for name in class_names]
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.processor = processor
        self.template = template
        self.image_column = image_column
        self.label_column = label_column

        image_size = model_image_size(model)
        if data_collator is None:
            data_collator = ImageClassificationCollator(
                image_processor, image_column, label_column, augment=augment, image_size=image_size
            )
        elif isinstance(data_collator, ImageClassificationCollator) and data_collator.image_size is None:
            data_collator = dataclasses.replace(data_collator, image_size=image_size)
        if isinstance(data_collator, ImageClassificationCollator):
            self.eval_data_collator = dataclasses.replace(data_collator, augment=False)
            self.image_column, self.label_column = data_collator.image_column, data_collator.label_column
        else:
            self.eval_data_collator = data_collator

        self._check_dataset(train_dataset, "train_dataset")
        eval_sets = eval_dataset.items() if isinstance(eval_dataset, dict) else [("eval_dataset", eval_dataset)]
        for name, dataset in eval_sets:
            self._check_dataset(dataset, f"eval_dataset[{name!r}]" if isinstance(eval_dataset, dict) else name)

        user_metrics = compute_metrics

        def metrics(prediction: EvalPrediction) -> dict[str, float]:
            results: dict[str, float] = {}
            if prediction.label_ids is not None:
                logits = prediction.predictions
                logits = logits[0] if isinstance(logits, tuple) else logits
                results.update(accuracy_metrics(logits, prediction.label_ids))
            if user_metrics is not None:
                results.update(user_metrics(prediction))
            return results

        kwargs.setdefault("processing_class", image_processor)  # not the tokenizer: Trainer would edit the config
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            compute_metrics=metrics,
            **kwargs,
        )
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched > 1 and self.args.world_size == 1:
            raise ValueError(
                f"This process was launched as one of {launched} (WORLD_SIZE), but the TrainingArguments set up a "
                "single process, so every rank would train on all the data on its own. On a machine without GPUs, "
                "pass `use_cpu=True` (Accelerate only sets up CPU DDP with gloo then)."
            )
        # The loss is a per-batch mean computed here, not by the model from `num_items_in_batch`.
        self.model_accepts_loss_kwargs = False
        self.label_names = ["labels"]
        self.can_return_loss = True
        self.classifier = PromptClassifier(
            model,
            tokenizer,
            self.class_names,
            template=template,
            class_chunk_size=class_chunk_size,
            share_text_prefix=share_text_prefix,
        )
        self.objective = resolve_objective(objective)
        for callback in self.objective.callbacks():
            self.add_callback(callback)

    # ----------------------------------------------------------------------------------------------------------------
    # checks

    def _check_dataset(self, dataset: Any, name: str) -> None:
        """Columns, labels and (on one example) the processed image size, before anything is trained."""
        if dataset is None:
            return
        collator = self.eval_data_collator
        if isinstance(collator, ImageClassificationCollator):
            try:
                check_image_classification_dataset(
                    dataset,
                    self.class_names,
                    collator.image_column,
                    collator.label_column or "label",
                    training=name == "train_dataset",
                )
            except ValueError as error:
                raise ValueError(f"{name}: {error}") from None
        if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
            if len(dataset) == 0:
                raise ValueError(f"{name} is empty.")
            try:
                collator([dataset[0]])
            except ValueError as error:
                raise ValueError(f"{name}: {error}") from None

    # ----------------------------------------------------------------------------------------------------------------
    # data: keep the raw columns for the collator, and never augment evaluation images

    def _remove_unused_columns(self, dataset: Any, description: str | None = None) -> Any:
        return dataset  # the collator reads the image / label columns, which the model's forward does not take

    def _get_collator_with_removed_columns(self, data_collator: Callable, description: str | None = None) -> Callable:
        return data_collator

    @contextlib.contextmanager
    def _collating_with(self, collator: Callable) -> Iterator[None]:
        previous, self.data_collator = self.data_collator, collator
        try:
            yield
        finally:
            self.data_collator = previous

    def get_eval_dataloader(self, eval_dataset: Any = None) -> torch.utils.data.DataLoader:
        with self._collating_with(self.eval_data_collator):
            return super().get_eval_dataloader(eval_dataset)

    def get_test_dataloader(self, test_dataset: Any) -> torch.utils.data.DataLoader:
        with self._collating_with(self.eval_data_collator):
            return super().get_test_dataloader(test_dataset)

    # ----------------------------------------------------------------------------------------------------------------
    # loss and prediction

    def _check_labels(self, labels: torch.Tensor) -> None:
        if labels.numel() and (labels.min() < 0 or labels.max() >= len(self.class_names)):
            raise ValueError(
                f"Labels must be class indices in 0..{len(self.class_names) - 1} ({len(self.class_names)} class "
                f"names), got values from {int(labels.min())} to {int(labels.max())}."
            )

    def _pixel_values(self, inputs: dict[str, Any]) -> torch.Tensor:
        if "pixel_values" not in inputs:
            raise ValueError(
                f"The batch has no `pixel_values` (keys: {list(inputs)}); the data collator must output `pixel_values` "
                "and `labels`."
            )
        parameter = first_float_parameter(self.model)
        return inputs["pixel_values"].to(device=parameter.device, dtype=parameter.dtype)

    def _training_output(
        self, model: torch.nn.Module, pixel_values: torch.Tensor
    ) -> tuple[ImageClassifierOutput, torch.Tensor, torch.Tensor]:
        """Logits of the images against freshly encoded class prompts, through `model`'s (e.g. DDP's) own forward.

        This is what `PromptClassifier` computes in training mode (`logit_scale · cos(image, class)` + any
        `logit_bias`), but as one call of the wrapped model, so that DDP / FSDP see the forward pass. The normalised
        image and class features come with them, for the training objective: `(output, image features, class
        features)`. An image-conditioned adapter (CoCoOp) encodes the class prompts per image, through the
        classifier: one process only."""
        device = pixel_values.device
        if self.classifier.conditioned_text_tower() is not None:
            if model is not self.model:
                raise ValueError(
                    "An image-conditioned adapter (CoCoOp) encodes its class prompts per image through the "
                    "PromptClassifier, not through the wrapped model's forward, so it trains on one process only "
                    "(no DDP / FSDP)."
                )
            if not self.classifier.training:
                self.classifier.train()
            if self.classifier.class_input_ids.device != device:
                self.classifier.to(device)
            return self.classifier(pixel_values=pixel_values), None, None  # class features per image: none shared
        with self.classifier.chunked_class_encoding():
            output = model(
                input_ids=self.classifier.class_input_ids.to(device),
                attention_mask=self.classifier.class_attention_mask.to(device),
                pixel_values=pixel_values,
            )
        return ImageClassifierOutput(logits=output.logits_per_image), output.image_embeds, output.text_embeds

    def _eval_output(self, pixel_values: torch.Tensor) -> ImageClassifierOutput:
        """The classifier's logits in eval mode: the class features are encoded once and cached."""
        if self.classifier.training:
            self.classifier.eval()
        if self.classifier.class_input_ids.device != pixel_values.device:  # the model was moved after __init__
            self.classifier.to(pixel_values.device)
        return self.classifier(pixel_values=pixel_values)

    def _cross_entropy(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        smoothing = float(self.args.label_smoothing_factor or 0.0)
        return F.cross_entropy(logits.float(), labels.to(logits.device), label_smoothing=smoothing)

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, ImageClassifierOutput]:
        """In training mode, the training objective's loss (`self.objective`, by default the cross-entropy of the
        image–class-prompt logits with the arguments' `label_smoothing_factor`, mean over the batch); in eval mode the
        cross-entropy alone.

        In training mode the class prompts are re-encoded through `model`'s forward (so gradients reach the text
        prompts and distributed wrappers synchronise them); in eval mode the classifier's cached class features are
        used.
        """
        labels = inputs.get("labels")
        if labels is None:
            raise ValueError(
                f"The batch has no `labels` (keys: {list(inputs)}); the data collator must output `labels` (check "
                "`label_column`)."
            )
        pixel_values = self._pixel_values(inputs)
        self._check_labels(labels)
        if not model.training:
            output = self._eval_output(pixel_values)
            output.loss = self._cross_entropy(output.logits, labels)
            return (output.loss, output) if return_outputs else output.loss
        output, image_features, class_features = self._training_output(model, pixel_values)
        if class_features is None and type(self.objective).regularization is not TrainingObjective.regularization:
            raise ValueError(
                f"The training objective {type(self.objective).__name__} regularises the class features, but an "
                "image-conditioned adapter (CoCoOp) has class features per image, not one set: train it with the "
                "default objective (cross-entropy)."
            )
        output.loss = self.objective.loss(
            LossInputs(self, output.logits, labels, pixel_values, image_features, class_features)
        )
        return (output.loss, output) if return_outputs else output.loss

    def prediction_step(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Loss, logits `(batch, classes)` and labels of a batch, with the classifier's cached class features."""
        inputs = self._prepare_inputs(inputs)
        labels = inputs.get("labels")
        with torch.no_grad(), self.compute_loss_context_manager(), self.accelerator.autocast():
            output = self._eval_output(self._pixel_values(inputs))
            loss = None
            if labels is not None:
                self._check_labels(labels)
                loss = self._cross_entropy(output.logits, labels).detach()
        if prediction_loss_only:
            return loss, None, None
        return loss, output.logits.detach(), labels

    def evaluate(
        self,
        eval_dataset: Any | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        """`Trainer.evaluate`; the accuracy is also recorded for the adapter's model card (see
        [`~mudpt_peft.evaluation.record_eval_result`]), with the dataset's name (or the key of a dict of evaluation
        datasets), its split, the training seed and the shots per class of a class-balanced training set."""
        self.classifier.clear_cache()  # the class features are encoded once per evaluation, from the current weights
        metrics = super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if isinstance(dataset, Mapping) or f"{metric_key_prefix}_accuracy" not in metrics:
            return metrics  # a dict of datasets: each was recorded by its own (recursive) call
        suffix = metric_key_prefix.removeprefix("eval").lstrip("_")
        record_eval_result(
            self.model,
            {
                "dataset": dataset_name_of(dataset) or suffix or "unnamed",
                "split": split_of(dataset),
                "shots": self._shots_per_class(),
                "seed": self.args.seed,
                "accuracy": metrics[f"{metric_key_prefix}_accuracy"],
                "top5_accuracy": metrics.get(f"{metric_key_prefix}_top5_accuracy"),
            },
        )
        return metrics

    def predict(
        self, test_dataset: Any, ignore_keys: list[str] | None = None, metric_key_prefix: str = "test"
    ) -> Any:
        """`Trainer.predict`, with the class features encoded afresh from the current weights."""
        self.classifier.clear_cache()
        return super().predict(test_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)

    def _shots_per_class(self) -> int | None:
        """The examples per class of the training set when every class has the same number (a few-shot sample)."""
        dataset = self.train_dataset
        if dataset is None or self.label_column not in (getattr(dataset, "column_names", None) or []):
            return None
        counts = np.bincount(np.asarray(dataset[self.label_column], dtype=np.int64), minlength=len(self.class_names))
        return int(counts[0]) if len(counts) and (counts == counts[0]).all() and counts[0] > 0 else None

    # ----------------------------------------------------------------------------------------------------------------
    # training: the objective's state starts afresh, or from the checkpoint resumed

    def train(self, *args: Any, **kwargs: Any) -> Any:
        """`Trainer.train`, with the training objective's state reset first (a resumed checkpoint restores it)."""
        self.objective.reset()
        return super().train(*args, **kwargs)

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        """`Trainer._save_checkpoint`, plus the training objective's state (when it has one) in the checkpoint."""
        super()._save_checkpoint(model, trial)
        state = self.objective.state_dict()
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if state and self.args.should_save and os.path.isdir(folder):
            tensors = {key: tensor.detach().cpu() for key, tensor in state.items()}
            save_file(tensors, os.path.join(folder, OBJECTIVE_NAME))

    def _load_objective_state(self, checkpoint: str) -> None:
        path = os.path.join(checkpoint, OBJECTIVE_NAME)
        self.objective.load_state_dict(load_file(path) if os.path.isfile(path) else {})

    # ----------------------------------------------------------------------------------------------------------------
    # loading checkpoints

    def _mudpt_model(self, model: Any) -> PeftModel | None:
        """`model` if it is a `PeftModel` with MuDPT adapters only (not wrapped for DeepSpeed / FSDP), else None."""
        if self.is_deepspeed_enabled or self.is_fsdp_enabled or not isinstance(model, PeftModel):
            return None
        return model if all(isinstance(c, MuDPTConfig) for c in model.peft_config.values()) else None

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        """Resume: load the checkpoint's adapters through `mudpt_peft.loading.load_adapter`, which checks the tensors
        it loads against the config saved with them (transformers' `Trainer` uses `PeftModel.load_adapter`, which
        reads no config for an adapter that exists). Its layout as `Trainer` writes it: the adapter in the
        checkpoint folder, or each adapter in a subfolder of its name (`default` in the folder itself). The training
        objective's state is restored from `training_objective.safetensors` (none when the file is absent)."""
        self._load_objective_state(resume_from_checkpoint)
        peft_model = self._mudpt_model(model if model is not None else self.model)
        if peft_model is None:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        active = peft_model.active_adapters[0]
        subfolders = [
            name for name in peft_model.peft_config if name != "default" and _has_adapter(resume_from_checkpoint, name)
        ]
        if not subfolders:
            load_adapter(peft_model, resume_from_checkpoint, active, is_trainable=True)
            return None
        if _has_adapter(resume_from_checkpoint):
            load_adapter(peft_model, resume_from_checkpoint, "default", is_trainable=active == "default")
        for name in subfolders:
            load_adapter(peft_model, os.path.join(resume_from_checkpoint, name), name, is_trainable=name == active)
        peft_model.set_adapter(active)
        return None

    def _load_best_model(self) -> None:
        """`load_best_model_at_end`: the best checkpoint's active adapter through `mudpt_peft.loading.load_adapter`
        (see [`~PromptTuningTrainer._load_from_checkpoint`])."""
        peft_model = self._mudpt_model(self.model)
        if peft_model is None or not _has_adapter(self.state.best_model_checkpoint):
            return super()._load_best_model()
        load_adapter(peft_model, self.state.best_model_checkpoint, peft_model.active_adapters[0], is_trainable=True)
        return None

    # ----------------------------------------------------------------------------------------------------------------
    # saving

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Save the adapter (the PeftModel saves adapter weights and config only), `prompt_classifier.json` (the class
        names in label order and the template, beside the active adapter), the MuDPT model card with the evaluations
        recorded so far, and the processor files (the processor, or the tokenizer and the image processor). For a
        model with other adapters than MuDPT ones (e.g. the LoRA baseline of `mudpt_peft.clip_lora`), peft's own files
        and card only, and the processor files.

        The folder is then a ready classifier: `PromptClassifier.from_pretrained(base_model, output_dir)` (for an
        active adapter other than `default`, saved in a subfolder of its name: `subfolder=` that name)."""
        super()._save(output_dir, state_dict=state_dict)
        if not self.args.should_save:
            return
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        configs = self.model.peft_config.values() if isinstance(self.model, PeftModel) else ()
        if all(isinstance(config, MuDPTConfig) for config in configs):
            active = self.model.active_adapters[0]
            adapter_folder = os.path.join(output_dir, "" if active == "default" else active)
            if os.path.isfile(os.path.join(adapter_folder, CONFIG_NAME)):
                write_classifier_file(self.class_names, [self.template], adapter_folder)
            # the MuDPT card, with the evaluations so far: the classifier's when it is saved in the folder itself
            one_adapter = active == "default" and len(self.model.peft_config) == 1
            write_model_card(self.classifier if one_adapter else self.model, output_dir)
        if self.processor is not None:
            self.processor.save_pretrained(output_dir)
            return
        for part in (self.tokenizer, self.image_processor):
            if part is not None and hasattr(part, "save_pretrained"):
                part.save_pretrained(output_dir)
