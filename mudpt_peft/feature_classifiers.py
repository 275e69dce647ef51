"""Peer baselines on frozen CLIP features: CoOp's linear probe and Tip-Adapter / Tip-Adapter-F.

Prompt-tuning papers compare against classifiers trained on the *frozen* image features of CLIP. This module holds
them, re-implemented from their math (no scikit-learn, no official code), on feature tensors:

- [`LinearProbe`]: L2-regularised multinomial logistic regression with the objective of scikit-learn's
  `LogisticRegression(penalty="l2", solver="lbfgs")`, solved by full-batch L-BFGS in fp64, and
  [`LinearProbe.search`], the search of `C` on the validation split of CoOp's `lpclip/linear_probe.py`;
- [`TipAdapter`]: the training-free cache model of Tip-Adapter (Zhang et al., 2022) with the search of `alpha` and
  `beta` on the validation split of the official `search_hp`;
- [`TipAdapterF`]: Tip-Adapter-F, the same model with its cache keys fine-tuned (AdamW, cosine schedule).

Features come from [`extract_image_features`] (the frozen model's projected image features, in batches, through the
project's [`~mudpt_peft.data.ImageClassificationCollator`]) and zero-shot class weights from
[`zero_shot_text_weights`] (a [`~mudpt_peft.classifier.PromptClassifier`] with the adapter disabled).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ._utils import first_float_parameter, projected_features, short_repr

#: The `format` recorded in the metadata of the files of [`LinearProbe.save`] and [`TipAdapter.save`].
FILE_FORMAT = "mudpt_peft.feature_classifiers/1"

__all__ = [
    "COOP_C_GRID",
    "COOP_C_SEARCH_STEPS",
    "COOP_VAL_SHOTS",
    "TIP_ADAPTER_CONFIGS",
    "FeatureSet",
    "LinearProbe",
    "LinearProbeSearch",
    "TipAdapter",
    "TipAdapterF",
    "coop_c_search",
    "extract_image_features",
    "tip_adapter_grid",
    "zero_shot_text_weights",
]

#: The initial grid of `C` of CoOp's linear probe (`lpclip/linear_probe.py`), in its order (ties go to the first).
COOP_C_GRID: tuple[float, ...] = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)
#: The refinement steps of CoOp's search of `C` (`--num_step`, 8 in `linear_probe.sh` and by default).
COOP_C_SEARCH_STEPS = 8
#: The validation images per class of CoOp's linear probe, by training shots (`val_shot_list`: `min(shots, 4)`).
COOP_VAL_SHOTS: dict[int, int] = {1: 1, 2: 2, 4: 4, 8: 4, 16: 4}

#: The per-dataset settings of the official Tip-Adapter configs (`configs/<dataset>.yaml`), under this project's
#: dataset names: `search_scale` (largest `beta`, largest `alpha`), `search_step` (grid sizes), `init_beta`,
#: `init_alpha` (the values Tip-Adapter-F trains with) and `epochs` (Tip-Adapter-F's `train_epoch`).
TIP_ADAPTER_CONFIGS: dict[str, dict[str, Any]] = {
    "caltech101": dict(search_scale=(12.0, 5.0), init_alpha=3.0, epochs=20),
    "dtd": dict(search_scale=(13.0, 13.0), init_alpha=2.0, epochs=20),
    "eurosat": dict(search_scale=(12.0, 10.0), init_alpha=2.0, epochs=100),
    "fgvc_aircraft": dict(search_scale=(30.0, 30.0), init_alpha=5.0, epochs=20),
    "food101": dict(search_scale=(10.0, 10.0), init_alpha=1.17, epochs=20),
    "imagenet": dict(search_scale=(7.0, 3.0), init_alpha=1.17, epochs=20),
    "oxford_flowers": dict(search_scale=(50.0, 50.0), init_alpha=10.0, epochs=20),
    "oxford_pets": dict(search_scale=(7.0, 3.0), init_alpha=1.17, epochs=20),
    "stanford_cars": dict(search_scale=(20.0, 10.0), init_alpha=3.0, epochs=20),
    "sun397": dict(search_scale=(12.0, 10.0), init_alpha=1.17, epochs=20),
    "ucf101": dict(search_scale=(7.0, 3.0), init_alpha=3.0, epochs=20),
}
for _config in TIP_ADAPTER_CONFIGS.values():
    _config.update(search_step=(200, 20), init_beta=1.0)
del _config


# ----------------------------------------------------------------------------------------------------------------------
# input checks


def _check_features(features: Any, name: str, dim: int | None = None) -> torch.Tensor:
    if not isinstance(features, torch.Tensor) or features.ndim != 2 or not features.is_floating_point():
        raise ValueError(
            f"`{name}` must be a 2-D floating-point tensor (samples, dim), got {short_repr(features)}: pass the "
            "features of `extract_image_features(...).features`."
        )
    if features.shape[0] == 0:
        raise ValueError(f"`{name}` is empty: pass at least one sample.")
    if dim is not None and features.shape[1] != dim:
        raise ValueError(
            f"`{name}` has features of size {features.shape[1]}, but the classifier was built for size {dim}: use "
            "features of the same model."
        )
    if not bool(torch.isfinite(features).all()):
        raise ValueError(f"`{name}` holds non-finite values (nan or inf).")
    return features


def _check_labels(labels: Any, name: str, count: int, num_classes: int | None = None) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"`{name}` must be a 1-D integer tensor of class indices, got {short_repr(labels)}.")
    if labels.shape[0] != count:
        raise ValueError(f"`{name}` has {labels.shape[0]} labels for {count} samples: pass one label per sample.")
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError(f"`{name}` holds a negative class index ({int(labels.min())}): labels are 0..classes-1.")
    if num_classes is not None and labels.numel() and int(labels.max()) >= num_classes:
        raise ValueError(
            f"`{name}` holds the class index {int(labels.max())}, but there are {num_classes} classes "
            f"(0..{num_classes - 1})."
        )
    return labels.long()


def _check_positive(value: Any, name: str, integer: bool = False, allow_zero: bool = False) -> Any:
    kinds = (int,) if integer else (int, float)
    ok = isinstance(value, kinds) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        what = "an integer" if integer else "a finite number"
        raise ValueError(f"`{name}` must be {what} {'>= 0' if allow_zero else '> 0'}, got {short_repr(value)}.")
    return value


def _check_unit_rows(features: torch.Tensor, name: str, source: str) -> None:
    norms = features.detach().double().norm(dim=-1)
    if bool(((norms - 1).abs() > 1e-3).any()):
        raise ValueError(
            f"`{name}` must be L2-normalised (norms {float(norms.min()):.4g}..{float(norms.max()):.4g}): use "
            f"`{source}` or pass `F.normalize({name}, dim=-1)`."
        )


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in [0, 1] (ties go to the lower class index, as `argmax` decides them)."""
    return float((logits.argmax(dim=-1) == labels.to(logits.device)).double().mean())


# ----------------------------------------------------------------------------------------------------------------------
# features


class FeatureSet(NamedTuple):
    """Image features and their labels, from [`extract_image_features`].

    Attributes:
        features (`torch.Tensor`): `(samples, dim)` projected image features (L2-normalised unless asked not to be).
        labels (`torch.Tensor` or `None`): `(samples,)` class indices; `None` for unlabelled data.
    """

    features: torch.Tensor
    labels: torch.Tensor | None


def _adapter_disabled(model: nn.Module, disable_adapter: bool) -> contextlib.AbstractContextManager:
    disable = getattr(model, "disable_adapter", None)
    if disable_adapter and callable(disable):
        return disable()
    return contextlib.nullcontext()


@torch.no_grad()
def extract_image_features(
    model: nn.Module,
    dataset: Any,
    image_processor: Any = None,
    *,
    collator: Callable[[Sequence[Any]], dict[str, torch.Tensor]] | None = None,
    batch_size: int = 64,
    normalize: bool = True,
    disable_adapter: bool = True,
    label_column: str | None = "label",
    image_column: str = "image",
) -> FeatureSet:
    """The frozen model's projected image features (`get_image_features`) of every row of a dataset, in batches.

    The model runs in eval mode without gradients (its mode is restored afterwards), with a peft adapter disabled
    (`model.disable_adapter()`) unless `disable_adapter=False`: the features of the frozen backbone, as the linear
    probe and Tip-Adapter use them. The features come back in float32 on the CPU, in row order.

    Args:
        model (`nn.Module`):
            A CLIP-like model with `get_image_features`, wrapped by peft or not.
        dataset:
            Rows of an image-classification dataset (an HF `datasets.Dataset`, or any sequence of dicts such as
            `{"image": PIL.Image, "label": 3}`).
        image_processor (*optional*):
            The model's image processor; used to build an `ImageClassificationCollator` when `collator` is not given.
        collator (*optional*):
            Turns a list of rows into `{"pixel_values", "labels"}`; e.g. `ImageClassificationCollator(image_processor,
            augment=True, scale=(0.5, 1.0))` for the augmented views of Tip-Adapter's cache.
        batch_size (`int`, defaults to 64):
            Rows per forward.
        normalize (`bool`, defaults to `True`):
            L2-normalise each feature (Tip-Adapter's query features). CoOp's linear probe fits the features as the
            image encoder returns them: pass `False` for it.
        disable_adapter (`bool`, defaults to `True`):
            Run a peft model with its adapter disabled.
        label_column (`str`, *optional*, defaults to `"label"`):
            For the default collator: the label column, `None` for unlabelled data.
        image_column (`str`, defaults to `"image"`):
            For the default collator: the image column.

    Returns:
        [`FeatureSet`]: `features` `(samples, dim)` and `labels` `(samples,)` (or `None` without labels).

    Example:

        ```py
        >>> train = extract_image_features(model, few_shot_train, image_processor, normalize=False)
        >>> probe = LinearProbe(C=0.1).fit(train.features, train.labels)
        ```
    """
    batch_size = _check_positive(batch_size, "batch_size", integer=True)
    if collator is None:
        if image_processor is None:
            raise ValueError(
                "Pass the model's image processor (`image_processor=`) or a `collator=` that makes `pixel_values`."
            )
        from .data import ImageClassificationCollator

        collator = ImageClassificationCollator(image_processor, image_column=image_column, label_column=label_column)
    rows = len(dataset)
    if rows == 0:
        raise ValueError("The dataset is empty: there are no images to extract features from.")
    parameter = first_float_parameter(model)
    features, labels = [], []
    was_training = model.training
    model.eval()
    try:
        with _adapter_disabled(model, disable_adapter):
            for start in range(0, rows, batch_size):
                batch = collator([dataset[index] for index in range(start, min(rows, start + batch_size))])
                pixel_values = batch["pixel_values"].to(device=parameter.device, dtype=parameter.dtype)
                output = projected_features(model.get_image_features(pixel_values=pixel_values)).float()
                features.append((F.normalize(output, dim=-1) if normalize else output).cpu())
                if batch.get("labels") is not None:
                    labels.append(batch["labels"].cpu())
    finally:
        model.train(was_training)
    if labels and len(labels) != len(features):
        raise ValueError("Some batches have labels and others not: label every row, or none.")
    return FeatureSet(torch.cat(features), torch.cat(labels) if labels else None)


@torch.no_grad()
def zero_shot_text_weights(classifier: nn.Module, disable_adapter: bool = True) -> torch.Tensor:
    """The zero-shot class weights of a [`~mudpt_peft.classifier.PromptClassifier`]: its L2-normalised class
    features `(classes, dim)` (one per class; the ensemble's average with several templates), computed in eval mode
    with a peft adapter disabled (unless `disable_adapter=False`), in float32 on the CPU.

    Args:
        classifier (`PromptClassifier`):
            The classifier around the model (unwrapped, or wrapped by peft).
        disable_adapter (`bool`, defaults to `True`):
            Encode the class prompts with the adapter disabled: plain CLIP's zero-shot weights.

    Returns:
        `torch.Tensor`: `(classes, dim)`, each row of unit norm.
    """
    encode = getattr(classifier, "encode_classes", None)
    if not callable(encode):
        raise ValueError(
            f"Expected a PromptClassifier (with `encode_classes()`), got {short_repr(classifier)}: build one with "
            "`PromptClassifier(model, tokenizer, class_names)`."
        )
    was_training = classifier.training
    classifier.eval()
    try:
        with _adapter_disabled(classifier.model, disable_adapter):
            classifier.clear_cache()  # the cache knows the adapter's enabled state; clearing keeps this independent
            weights = encode().detach().float().cpu().clone()
            classifier.clear_cache()
    finally:
        classifier.train(was_training)
    return weights


# ----------------------------------------------------------------------------------------------------------------------
# files


def _save(path: str | os.PathLike, tensors: dict[str, torch.Tensor], kind: str, settings: dict[str, Any]) -> None:
    """Write `tensors` and `settings` to one safetensors file, through a temporary file and `os.replace` (a reader
    sees the old file or the new one, never a part)."""
    from safetensors.torch import save_file

    path = os.fspath(path)
    metadata = {"format": FILE_FORMAT, "class": kind, "settings": json.dumps(settings)}
    temporary = f"{path}.tmp-{os.getpid()}"
    try:
        save_file({name: t.detach().cpu().contiguous() for name, t in tensors.items()}, temporary, metadata=metadata)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _load(path: str | os.PathLike, kinds: Sequence[str]) -> tuple[str, dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import SafetensorError, safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"No file at {path!r}: pass the path that `save` wrote.")
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except SafetensorError as error:
        raise ValueError(f"{path!r} is not a safetensors file ({error}).") from None
    if metadata.get("format") != FILE_FORMAT or metadata.get("class") not in kinds:
        raise ValueError(
            f"{path!r} holds no {' or '.join(kinds)} (its metadata: {short_repr(metadata)}): load it with the class "
            "that saved it."
        )
    return metadata["class"], tensors, json.loads(metadata["settings"])


# ----------------------------------------------------------------------------------------------------------------------
# the linear probe


def coop_c_search(
    validation_accuracy: Callable[[float], float],
    grid: Sequence[float] = COOP_C_GRID,
    steps: int = COOP_C_SEARCH_STEPS,
) -> tuple[float, list[tuple[float, float]]]:
    """CoOp's search of the inverse regularisation strength `C` (`lpclip/linear_probe.py`), for any scorer.

    1. Score every `C` of `grid`; the peak is the first best one.
    2. Start with the bracket `[peak / 10, peak * 10]`. At each of `steps` steps score both ends: if the left end
       scores strictly lower, the right end is the step's choice and the bracket becomes `[middle, right]`; otherwise
       (ties too) the left end is chosen and the bracket becomes `[left, middle]`, `middle` being the geometric mean
       of the ends.
    3. The result is the choice of the last step (as in the official code, not necessarily the best-scoring `C` seen).

    With `steps=0` the result is the grid's peak.

    Args:
        validation_accuracy (`Callable[[float], float]`):
            The validation accuracy of a probe fitted with a given `C` (called once per `C` scored; a bracket end
            scored twice is called twice).
        grid (`Sequence[float]`, defaults to [`COOP_C_GRID`]):
            The initial values of `C`, all > 0.
        steps (`int`, defaults to 8):
            The refinement steps.

    Returns:
        `tuple[float, list[tuple[float, float]]]`: the chosen `C`, and every `(C, accuracy)` scored, in order.
    """
    grid = list(grid)
    if not grid:
        raise ValueError("`grid` is empty: pass at least one value of `C`, e.g. `COOP_C_GRID`.")
    for value in grid:
        _check_positive(value, "every C of `grid`")
    steps = _check_positive(steps, "steps", integer=True, allow_zero=True)
    history: list[tuple[float, float]] = []

    def score(c: float) -> float:
        accuracy = float(validation_accuracy(c))
        history.append((c, accuracy))
        return accuracy

    scores = [score(c) for c in grid]
    peak = grid[max(range(len(grid)), key=lambda index: (scores[index], -index))]
    chosen, left, right = peak, 0.1 * peak, 10.0 * peak
    for _ in range(steps):
        accuracy_left, accuracy_right = score(left), score(right)
        middle = 10.0 ** (0.5 * (math.log10(left) + math.log10(right)))
        if accuracy_left < accuracy_right:
            chosen, left = right, middle
        else:
            chosen, right = left, middle
    return chosen, history


class LinearProbeSearch(NamedTuple):
    """The result of [`LinearProbe.search`].

    Attributes:
        probe ([`LinearProbe`]): the probe fitted with the chosen `C`.
        C (`float`): the chosen `C`.
        history (`list[tuple[float, float]]`): every `(C, validation accuracy)` scored, in order.
    """

    probe: LinearProbe
    C: float
    history: list[tuple[float, float]]


class LinearProbe(nn.Module):
    """A linear probe on frozen features: L2-regularised multinomial logistic regression, as CoOp's linear-probe
    baseline fits it with scikit-learn (`LogisticRegression(solver="lbfgs", penalty="l2", max_iter=1000, C=C)`).

    [`~LinearProbe.fit`] minimises scikit-learn's objective

        C * sum_i cross_entropy(W x_i + b, y_i) + 0.5 * ||W||_F^2

    with the bias `b` not penalised, by full-batch L-BFGS (strong-Wolfe line search, history 10, as scipy's
    `L-BFGS-B` that scikit-learn calls) in float64, from zero. The iterations stop when every component of the
    gradient of the objective divided by `C * samples` (the scale scikit-learn optimises at) is at most `tol` in
    absolute value, or after `max_iter` iterations. For more than two classes `W` has one row per class (the bias is
    centred to sum 0; the logits do not depend on that shift); for two classes there is one row, as in
    scikit-learn's binary problem, and the logits are `(0, w·x + b)`.

    CoOp fits the image features as CLIP's image encoder returns them, not normalised (`lpclip/feat_extractor.py`
    saves `clip_model.visual(image)`): extract them with `extract_image_features(..., normalize=False)`.

    Args:
        C (`float`, defaults to 1.0):
            The inverse regularisation strength (> 0): larger fits the training data more closely.
        max_iter (`int`, defaults to 1000):
            The most L-BFGS iterations.
        tol (`float`, defaults to 1e-4):
            The gradient tolerance (scikit-learn's `tol`).
        fit_intercept (`bool`, defaults to `True`):
            Fit the (unpenalised) bias.

    Example:

        ```py
        >>> result = LinearProbe.search(train.features, train.labels, val.features, val.labels)
        >>> result.C, result.probe.predict(test.features)
        ```
    """

    def __init__(self, C: float = 1.0, max_iter: int = 1000, tol: float = 1e-4, fit_intercept: bool = True) -> None:
        super().__init__()
        self.C = float(_check_positive(C, "C"))
        self.max_iter = _check_positive(max_iter, "max_iter", integer=True)
        self.tol = float(_check_positive(tol, "tol"))
        self.fit_intercept = bool(fit_intercept)
        self.register_buffer("weight", torch.zeros(0, 0, dtype=torch.float64))
        self.register_buffer("bias", torch.zeros(0, dtype=torch.float64))
        self.num_classes: int | None = None
        #: L-BFGS iterations of the last fit; whether it stopped before `max_iter` (gradient within `tol`, or no
        #: more progress); the largest absolute component of the scaled objective's gradient at the result.
        self.n_iter_: int = 0
        self.converged_: bool = False
        self.gradient_max_: float = math.inf

    def extra_repr(self) -> str:
        return f"C={self.C:g}, max_iter={self.max_iter}, tol={self.tol:g}, num_classes={self.num_classes}"

    @staticmethod
    def _logits(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, binary: bool) -> torch.Tensor:
        scores = features @ weight.t() + bias
        return torch.cat([torch.zeros_like(scores), scores], dim=-1) if binary else scores

    def objective(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The scaled objective at the current weights (float64 scalar): `mean_i cross_entropy + ||W||^2 / (2 C n)`,
        scikit-learn's objective divided by `C * n`."""
        features = _check_features(features, "features", self._dim()).to(self.weight.device, torch.float64)
        labels = _check_labels(labels, "labels", features.shape[0], self.num_classes).to(self.weight.device)
        return self._objective(features, labels, self.weight, self.bias)

    def _objective(
        self, features: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        logits = self._logits(features, weight, bias, self.num_classes == 2)
        loss = F.cross_entropy(logits, labels, reduction="mean")
        return loss + weight.pow(2).sum() / (2.0 * self.C * features.shape[0])

    def _dim(self) -> int | None:
        return None if self.num_classes is None else self.weight.shape[1]

    def fit(self, features: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None) -> LinearProbe:
        """Fit the probe (replacing any earlier fit) and return it.

        Args:
            features (`torch.Tensor`):
                `(samples, dim)` training features (any float dtype and device; the fit runs in float64 on their
                device).
            labels (`torch.Tensor`):
                `(samples,)` class indices.
            num_classes (`int`, *optional*):
                The class count (default: the largest label + 1). Every class must have a training sample: an
                unseen class has no finite optimum (its unpenalised bias goes to minus infinity).

        Returns:
            [`LinearProbe`]: `self`.
        """
        features = _check_features(features, "features").detach().to(torch.float64)
        labels = _check_labels(labels, "labels", features.shape[0], num_classes).to(features.device)
        if num_classes is None:
            num_classes = int(labels.max()) + 1
        num_classes = _check_positive(num_classes, "num_classes", integer=True)
        present = torch.bincount(labels, minlength=num_classes)
        if num_classes < 2 or bool((present == 0).any()):
            missing = [int(c) for c in torch.nonzero(present == 0).flatten()][:10]
            raise ValueError(
                f"A linear probe needs at least 2 classes and a training sample of every class; got {num_classes} "
                f"class(es), without samples of {missing}. Pass the few-shot training split of every class."
            )
        self.num_classes = num_classes
        rows = 1 if num_classes == 2 else num_classes
        weight = torch.zeros(rows, features.shape[1], dtype=torch.float64, device=features.device, requires_grad=True)
        bias = torch.zeros(rows, dtype=torch.float64, device=features.device, requires_grad=self.fit_intercept)
        parameters = [weight, bias] if self.fit_intercept else [weight]
        optimizer = torch.optim.LBFGS(
            parameters,
            lr=1.0,
            max_iter=self.max_iter,
            max_eval=self.max_iter * 5 // 4,
            tolerance_grad=self.tol,
            tolerance_change=64 * torch.finfo(torch.float64).eps,
            history_size=10,
            line_search_fn="strong_wolfe",
        )

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = self._objective(features, labels, weight, bias)
            loss.backward()
            return loss

        with torch.enable_grad():
            optimizer.step(closure)
            loss = self._objective(features, labels, weight, bias)
            gradients = torch.autograd.grad(loss, parameters)
        state = optimizer.state[weight]  # L-BFGS keeps its state under its first parameter
        self.n_iter_ = int(state.get("n_iter", 0))
        self.gradient_max_ = max(float(g.abs().max()) for g in gradients)
        # met `tol`, or stopped before `max_iter` because the objective no longer changed (scipy's `ftol` stop)
        self.converged_ = self.gradient_max_ <= self.tol or self.n_iter_ < self.max_iter
        weight, bias = weight.detach(), bias.detach()
        if rows > 2:
            bias = bias - bias.mean()
        self.weight, self.bias = weight, bias
        return self

    def _check_fitted(self) -> None:
        if self.num_classes is None:
            raise ValueError("The probe is not fitted yet: call `fit(features, labels)` (or `LinearProbe.search`).")

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """The logits `(samples, classes)` of features `(samples, dim)`, in float64."""
        self._check_fitted()
        features = _check_features(features, "features", self._dim()).to(self.weight.device, torch.float64)
        return self._logits(features, self.weight, self.bias, self.num_classes == 2)

    @torch.no_grad()
    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """The predicted class index of each of `features` `(samples, dim)`."""
        return self(features).argmax(dim=-1)

    @torch.no_grad()
    def score(self, features: torch.Tensor, labels: torch.Tensor) -> float:
        """The top-1 accuracy (in [0, 1]) on `features` with `labels`."""
        logits = self(features)
        return _accuracy(logits, _check_labels(labels, "labels", logits.shape[0]))

    def save(self, path: str | os.PathLike) -> None:
        """Save the fitted probe (weights and settings) to one safetensors file; reload with [`LinearProbe.load`]."""
        self._check_fitted()
        settings = dict(C=self.C, max_iter=self.max_iter, tol=self.tol, fit_intercept=self.fit_intercept)
        settings.update(num_classes=self.num_classes, n_iter=self.n_iter_, converged=self.converged_)
        _save(path, {"weight": self.weight, "bias": self.bias}, "LinearProbe", settings)

    @classmethod
    def load(cls, path: str | os.PathLike) -> LinearProbe:
        """A probe saved with [`~LinearProbe.save`] (on the CPU)."""
        _, tensors, settings = _load(path, ["LinearProbe"])
        probe = cls(settings["C"], settings["max_iter"], settings["tol"], settings["fit_intercept"])
        probe.weight, probe.bias = tensors["weight"], tensors["bias"]
        probe.num_classes, probe.n_iter_, probe.converged_ = (
            settings["num_classes"],
            settings["n_iter"],
            settings["converged"],
        )
        return probe

    @classmethod
    def search(
        cls,
        train_features: torch.Tensor,
        train_labels: torch.Tensor,
        val_features: torch.Tensor,
        val_labels: torch.Tensor,
        *,
        grid: Sequence[float] = COOP_C_GRID,
        steps: int = COOP_C_SEARCH_STEPS,
        num_classes: int | None = None,
        **kwargs: Any,
    ) -> LinearProbeSearch:
        """Fit probes for CoOp's search of `C` (see [`coop_c_search`]) on the validation accuracy, and return the
        probe of the chosen `C`.

        CoOp draws the validation split as `min(shots, 4)` images per class ([`COOP_VAL_SHOTS`]: 1, 2, 4, 4, 4 for
        1, 2, 4, 8, 16 shots); pass that split as `val_features` / `val_labels`.

        Args:
            train_features (`torch.Tensor`): `(samples, dim)` training features.
            train_labels (`torch.Tensor`): `(samples,)` training labels.
            val_features (`torch.Tensor`): `(samples, dim)` validation features.
            val_labels (`torch.Tensor`): `(samples,)` validation labels.
            grid (`Sequence[float]`, defaults to [`COOP_C_GRID`]): the initial values of `C`.
            steps (`int`, defaults to 8): the refinement steps.
            num_classes (`int`, *optional*): the class count (default: the largest training label + 1).
            kwargs: more arguments of [`LinearProbe`] (`max_iter`, `tol`, `fit_intercept`).

        Returns:
            [`LinearProbeSearch`]: the fitted probe, its `C`, and every `(C, validation accuracy)` scored.
        """
        train_features = _check_features(train_features, "train_features")
        val_features = _check_features(val_features, "val_features", train_features.shape[1])
        val_labels = _check_labels(val_labels, "val_labels", val_features.shape[0])
        probes: dict[float, LinearProbe] = {}

        def fitted(c: float) -> LinearProbe:
            if c not in probes:  # the fit is deterministic: a C scored twice is fitted once
                probes[c] = cls(C=c, **kwargs).fit(train_features, train_labels, num_classes=num_classes)
            return probes[c]

        chosen, history = coop_c_search(lambda c: fitted(c).score(val_features, val_labels), grid, steps)
        return LinearProbeSearch(fitted(chosen), chosen, history)


# ----------------------------------------------------------------------------------------------------------------------
# Tip-Adapter


def tip_adapter_grid(search_scale: Sequence[float], search_step: Sequence[int]) -> tuple[list[float], list[float]]:
    """The `(betas, alphas)` of the official `search_hp`: `search_step[k]` values `0.1 + i * (search_scale[k] - 0.1)
    / search_step[k]` for `i = 0..search_step[k]-1` (from 0.1 up to, not including, `search_scale[k]`).

    Args:
        search_scale (`Sequence[float]`): `(largest beta, largest alpha)`, e.g. `(7, 3)`.
        search_step (`Sequence[int]`): `(betas, alphas)` grid sizes, `(200, 20)` in every official config.

    Returns:
        `tuple[list[float], list[float]]`: the betas and the alphas.
    """
    if len(search_scale) != 2 or len(search_step) != 2:
        raise ValueError(
            f"`search_scale` and `search_step` are (beta, alpha) pairs, got {short_repr(search_scale)} and "
            f"{short_repr(search_step)}: e.g. `search_scale=(7, 3), search_step=(200, 20)`."
        )
    grids = []
    for scale, step in zip(search_scale, search_step, strict=True):
        _check_positive(scale, "search_scale")
        _check_positive(step, "search_step", integer=True)
        grids.append([i * (scale - 0.1) / step + 0.1 for i in range(step)])
    return grids[0], grids[1]


def _cache_keys(train_features: torch.Tensor) -> torch.Tensor:
    """Tip-Adapter's cache keys: the features, averaged over augmented views first when 3-D `(views, samples, dim)`
    (unnormalised features, as the official `build_cache_model` averages them), then L2-normalised."""
    if not isinstance(train_features, torch.Tensor) or train_features.ndim not in (2, 3):
        raise ValueError(
            f"`train_features` must be a (samples, dim) tensor or a (views, samples, dim) tensor of augmented views, "
            f"got {short_repr(train_features)}."
        )
    if train_features.ndim == 3:
        if train_features.shape[0] == 0:
            raise ValueError("`train_features` has no views: pass at least one.")
        keys = train_features.mean(dim=0)
    else:
        keys = train_features
    keys = _check_features(keys, "train_features")
    return F.normalize(keys, dim=-1)


class TipAdapter(nn.Module):
    """Tip-Adapter (Zhang et al., 2022): zero-shot CLIP plus a training-free cache model of the few-shot images.

    For L2-normalised image features `f` `(batch, dim)`:

        logits = logit_scale * f @ W^T + alpha * exp(-beta * (1 - f @ K^T)) @ V

    with `W` `(classes, dim)` the zero-shot class weights ([`zero_shot_text_weights`]), the cache keys `K`
    `(samples, dim)` the L2-normalised features of the few-shot training images, and the cache values `V` their
    one-hot labels `(samples, classes)`. `logit_scale` is 100 as in the official code (CLIP's trained scale).

    [`~TipAdapter.fit`] builds the cache and, given a validation split, searches `(beta, alpha)` over the official
    grid ([`tip_adapter_grid`]): `beta` in the outer loop, `alpha` in the inner, the first best validation accuracy
    kept. (The official `search_hp` starts from accuracy 0 and returns `beta = alpha = 0` when nothing beats it; here
    the first grid point is the fallback.) The official cache averages the *unnormalised* features of 10 augmented
    views of each training image (random resized crop of scale (0.5, 1) and flip) before normalising: pass those views
    as a `(views, samples, dim)` tensor of features extracted with `normalize=False` and an
    `ImageClassificationCollator(image_processor, augment=True, scale=(0.5, 1.0))` (see `docs/methods.md`); a 2-D
    tensor is one view.

    Args:
        text_weights (`torch.Tensor`):
            `(classes, dim)` zero-shot class weights, rows L2-normalised.
        alpha (`float`, defaults to 1.0):
            The weight of the cache logits (`init_alpha` of the configs); 0 gives zero-shot CLIP.
        beta (`float`, defaults to 1.0):
            The sharpness of the affinities (`init_beta`).
        logit_scale (`float`, defaults to 100.0):
            The scale of the zero-shot logits.

    Example:

        ```py
        >>> weights = zero_shot_text_weights(PromptClassifier(model, tokenizer, class_names))
        >>> tip = TipAdapter(weights).fit(cache_views, train_labels, val.features, val.labels, search_scale=(7, 3))
        >>> tip.predict(test.features)
        ```
    """

    def __init__(
        self, text_weights: torch.Tensor, alpha: float = 1.0, beta: float = 1.0, logit_scale: float = 100.0
    ) -> None:
        super().__init__()
        text_weights = _check_features(text_weights, "text_weights")
        if text_weights.shape[0] < 2:
            raise ValueError("`text_weights` has one class: a classifier needs at least 2.")
        _check_unit_rows(text_weights, "text_weights", "zero_shot_text_weights(classifier)")
        self.register_buffer("text_weights", text_weights.detach().clone())
        self.alpha = float(_check_positive(alpha, "alpha", allow_zero=True))
        self.beta = float(_check_positive(beta, "beta", allow_zero=True))
        self.logit_scale = float(_check_positive(logit_scale, "logit_scale"))
        self.cache_keys = nn.Parameter(torch.zeros(0, text_weights.shape[1], dtype=text_weights.dtype), False)
        self.register_buffer("cache_values", torch.zeros(0, text_weights.shape[0], dtype=text_weights.dtype))
        #: every `(beta, alpha, validation accuracy)` of the last search, in order.
        self.search_history: list[tuple[float, float, float]] = []

    @property
    def num_classes(self) -> int:
        """The class count."""
        return self.text_weights.shape[0]

    def extra_repr(self) -> str:
        return (
            f"classes={self.num_classes}, cache={self.cache_keys.shape[0]}, alpha={self.alpha:g}, "
            f"beta={self.beta:g}, logit_scale={self.logit_scale:g}"
        )

    def build_cache(self, train_features: torch.Tensor, train_labels: torch.Tensor) -> TipAdapter:
        """Set the cache: keys from `train_features` (`(samples, dim)`, or `(views, samples, dim)` averaged over the
        views, then L2-normalised), values the one-hot `train_labels`. Returns `self`."""
        keys = _cache_keys(train_features)
        if keys.shape[1] != self.text_weights.shape[1]:
            raise ValueError(
                f"`train_features` have size {keys.shape[1]}, the text weights {self.text_weights.shape[1]}: use the "
                "image and text features of the same model."
            )
        labels = _check_labels(train_labels, "train_labels", keys.shape[0], self.num_classes)
        device, dtype = self.text_weights.device, self.text_weights.dtype
        self.cache_keys = nn.Parameter(keys.to(device, dtype), requires_grad=False)
        self.cache_values = F.one_hot(labels, self.num_classes).to(device, dtype)
        return self

    def _check_cache(self) -> None:
        if self.cache_keys.shape[0] == 0:
            raise ValueError("The cache is empty: call `fit(train_features, train_labels)` first.")

    def _check_queries(self, features: torch.Tensor, name: str = "features") -> torch.Tensor:
        features = _check_features(features, name, self.text_weights.shape[1])
        _check_unit_rows(features, name, "extract_image_features(..., normalize=True)")
        return features.to(self.text_weights.device, self.text_weights.dtype)

    def affinity(self, features: torch.Tensor) -> torch.Tensor:
        """`f @ K^T` `(batch, samples)`: the cosine similarity of each query to each cache key (the official
        `adapter(features)`; after fine-tuning the keys need not have unit norm)."""
        return features @ self.cache_keys.t()

    def _logits(self, features: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
        clip_logits = self.logit_scale * features @ self.text_weights.t()
        cache_logits = torch.exp(-beta * (1 - self.affinity(features))) @ self.cache_values
        return clip_logits + alpha * cache_logits

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """The logits `(batch, classes)` of L2-normalised image features `(batch, dim)`."""
        self._check_cache()
        return self._logits(self._check_queries(features), self.alpha, self.beta)

    @torch.no_grad()
    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """The predicted class index of each of the L2-normalised `features` `(batch, dim)`."""
        return self(features).argmax(dim=-1)

    @torch.no_grad()
    def score(self, features: torch.Tensor, labels: torch.Tensor) -> float:
        """The top-1 accuracy (in [0, 1]) on L2-normalised `features` with `labels`."""
        logits = self(features)
        return _accuracy(logits, _check_labels(labels, "labels", logits.shape[0], self.num_classes))

    def save(self, path: str | os.PathLike) -> None:
        """Save the text weights, the cache (the fine-tuned keys of Tip-Adapter-F), `alpha`, `beta` and
        `logit_scale` to one safetensors file; reload with [`TipAdapter.load`]."""
        self._check_cache()
        tensors = {"text_weights": self.text_weights, "cache_keys": self.cache_keys, "cache_values": self.cache_values}
        settings = dict(alpha=self.alpha, beta=self.beta, logit_scale=self.logit_scale)
        _save(path, tensors, type(self).__name__, settings)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TipAdapter:
        """A [`TipAdapter`] or [`TipAdapterF`] saved with [`~TipAdapter.save`] (on the CPU), of the class that saved
        it (`TipAdapter.load` reads both; `TipAdapterF.load` a Tip-Adapter-F only)."""
        kinds = {"TipAdapter": TipAdapter, "TipAdapterF": TipAdapterF}
        kind, tensors, settings = _load(path, [name for name, k in kinds.items() if issubclass(k, cls)])
        adapter = kinds[kind](tensors["text_weights"], settings["alpha"], settings["beta"], settings["logit_scale"])
        adapter.cache_keys = nn.Parameter(tensors["cache_keys"], requires_grad=False)
        adapter.cache_values = tensors["cache_values"]
        return adapter

    @torch.no_grad()
    def search(
        self,
        val_features: torch.Tensor,
        val_labels: torch.Tensor,
        search_scale: Sequence[float] = (7.0, 3.0),
        search_step: Sequence[int] = (200, 20),
    ) -> tuple[float, float]:
        """Search `(beta, alpha)` on the validation split over the official grid ([`tip_adapter_grid`]), set them,
        and return them. Ties keep the first in (beta outer, alpha inner) order.

        Args:
            val_features (`torch.Tensor`): `(samples, dim)` L2-normalised validation features.
            val_labels (`torch.Tensor`): `(samples,)` validation labels.
            search_scale (`Sequence[float]`, defaults to `(7, 3)`): `(largest beta, largest alpha)`; the dataset's
                value is in [`TIP_ADAPTER_CONFIGS`].
            search_step (`Sequence[int]`, defaults to `(200, 20)`): the grid sizes.

        Returns:
            `tuple[float, float]`: the chosen `(beta, alpha)`.
        """
        self._check_cache()
        betas, alphas = tip_adapter_grid(search_scale, search_step)
        features = self._check_queries(val_features, "val_features")
        labels = _check_labels(val_labels, "val_labels", features.shape[0], self.num_classes).to(features.device)
        clip_logits = self.logit_scale * features @ self.text_weights.t()
        affinity = self.affinity(features)
        best, history = None, []
        for beta in betas:
            cache_logits = torch.exp(-beta * (1 - affinity)) @ self.cache_values
            for alpha in alphas:
                accuracy = _accuracy(clip_logits + alpha * cache_logits, labels)
                history.append((beta, alpha, accuracy))
                if best is None or accuracy > best[2]:
                    best = (beta, alpha, accuracy)
        self.beta, self.alpha = best[0], best[1]
        self.search_history = history
        return self.beta, self.alpha

    def fit(
        self,
        train_features: torch.Tensor,
        train_labels: torch.Tensor,
        val_features: torch.Tensor | None = None,
        val_labels: torch.Tensor | None = None,
        *,
        search_scale: Sequence[float] = (7.0, 3.0),
        search_step: Sequence[int] = (200, 20),
    ) -> TipAdapter:
        """Build the cache from the few-shot training features and, with a validation split, search `(beta,
        alpha)` on it ([`~TipAdapter.search`]). Returns `self`.

        Args:
            train_features (`torch.Tensor`):
                `(samples, dim)` training features, or `(views, samples, dim)` augmented views (averaged, then
                normalised: pass unnormalised features).
            train_labels (`torch.Tensor`): `(samples,)` training labels.
            val_features (`torch.Tensor`, *optional*): `(samples, dim)` L2-normalised validation features.
            val_labels (`torch.Tensor`, *optional*): their labels.
            search_scale (`Sequence[float]`, defaults to `(7, 3)`): see [`~TipAdapter.search`].
            search_step (`Sequence[int]`, defaults to `(200, 20)`): see [`~TipAdapter.search`].
        """
        if (val_features is None) != (val_labels is None):
            raise ValueError("Pass both `val_features` and `val_labels` (to search alpha and beta), or neither.")
        self.build_cache(train_features, train_labels)
        if val_features is not None:
            self.search(val_features, val_labels, search_scale, search_step)
        return self


class TipAdapterF(TipAdapter):
    """Tip-Adapter-F: [`TipAdapter`] with the cache keys fine-tuned on the few-shot training set.

    [`~TipAdapterF.fit`] builds the cache as Tip-Adapter does, then trains the keys (the official code makes them
    the weight of a bias-free `nn.Linear`; the values and the text weights stay frozen) with the cross-entropy of the
    Tip-Adapter logits at the initial `alpha` and `beta`: AdamW (`lr` 0.001, `eps` 1e-4, PyTorch's default weight
    decay 0.01), a cosine schedule over all steps (`CosineAnnealingLR`, stepped per batch), batches of 256 shuffled
    samples, 20 epochs (100 for EuroSAT, see [`TIP_ADAPTER_CONFIGS`]). The official training re-augments every image
    each epoch; here epoch `e` trains on view `e % views` of a `(views, samples, dim)` tensor (normalised per view),
    or on the one view of a 2-D tensor. Finally `(beta, alpha)` are searched on the validation split with the
    fine-tuned keys.

    The official code keeps the epoch with the best *test* accuracy; here, given a validation split, the epoch with
    the best validation accuracy (at the initial `alpha` and `beta`; ties keep the earlier epoch) is kept, and
    without one the last epoch.

    Args:
        text_weights (`torch.Tensor`): `(classes, dim)` zero-shot class weights, rows L2-normalised.
        alpha (`float`, defaults to 1.0): the initial `alpha` (`init_alpha`), used in training.
        beta (`float`, defaults to 1.0): the initial `beta` (`init_beta`), used in training.
        logit_scale (`float`, defaults to 100.0): the scale of the zero-shot logits.
    """

    def fit(
        self,
        train_features: torch.Tensor,
        train_labels: torch.Tensor,
        val_features: torch.Tensor | None = None,
        val_labels: torch.Tensor | None = None,
        *,
        search_scale: Sequence[float] = (7.0, 3.0),
        search_step: Sequence[int] = (200, 20),
        epochs: int = 20,
        lr: float = 1e-3,
        eps: float = 1e-4,
        weight_decay: float = 0.01,
        batch_size: int = 256,
        seed: int | None = 1,
    ) -> TipAdapterF:
        """Build the cache, fine-tune its keys, and search `(beta, alpha)` on the validation split. Returns `self`;
        the mean training loss of each epoch is in `train_losses`.

        Args:
            train_features (`torch.Tensor`):
                `(samples, dim)` or `(views, samples, dim)` unnormalised training features (see [`TipAdapterF`]).
            train_labels (`torch.Tensor`): `(samples,)` training labels.
            val_features (`torch.Tensor`, *optional*): `(samples, dim)` L2-normalised validation features.
            val_labels (`torch.Tensor`, *optional*): their labels.
            search_scale (`Sequence[float]`, defaults to `(7, 3)`): see [`~TipAdapter.search`].
            search_step (`Sequence[int]`, defaults to `(200, 20)`): see [`~TipAdapter.search`].
            epochs (`int`, defaults to 20): training epochs (0: Tip-Adapter).
            lr (`float`, defaults to 1e-3): AdamW's learning rate.
            eps (`float`, defaults to 1e-4): AdamW's `eps`.
            weight_decay (`float`, defaults to 0.01): AdamW's weight decay.
            batch_size (`int`, defaults to 256): samples per step.
            seed (`int`, *optional*, defaults to 1): seeds the shuffling (`None`: torch's global RNG).
        """
        if (val_features is None) != (val_labels is None):
            raise ValueError("Pass both `val_features` and `val_labels` (to search alpha and beta), or neither.")
        epochs = _check_positive(epochs, "epochs", integer=True, allow_zero=True)
        batch_size = _check_positive(batch_size, "batch_size", integer=True)
        _check_positive(lr, "lr")
        _check_positive(eps, "eps")
        _check_positive(weight_decay, "weight_decay", allow_zero=True)
        self.build_cache(train_features, train_labels)
        views = train_features if train_features.ndim == 3 else train_features.unsqueeze(0)
        views = F.normalize(views.detach().to(self.text_weights.device, self.text_weights.dtype), dim=-1)
        labels = train_labels.long().to(self.text_weights.device)
        if val_features is not None:
            val_features = self._check_queries(val_features, "val_features")
            val_labels = _check_labels(val_labels, "val_labels", val_features.shape[0], self.num_classes)
        self.train_losses: list[float] = []
        samples = labels.shape[0]
        steps_per_epoch = math.ceil(samples / batch_size)
        self.cache_keys.requires_grad_(True)
        optimizer = torch.optim.AdamW([self.cache_keys], lr=lr, eps=eps, weight_decay=weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, epochs * steps_per_epoch))
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        best: tuple[float, torch.Tensor] | None = None
        try:
            for epoch in range(epochs):
                features = views[epoch % views.shape[0]]
                order = torch.randperm(samples, generator=generator).to(labels.device)
                total = 0.0
                for start in range(0, samples, batch_size):
                    index = order[start : start + batch_size]
                    with torch.enable_grad():
                        logits = self._logits(features[index], self.alpha, self.beta)
                        loss = F.cross_entropy(logits, labels[index])
                        optimizer.zero_grad()
                        loss.backward()
                    optimizer.step()
                    scheduler.step()
                    total += float(loss.detach()) * index.numel()
                self.train_losses.append(total / samples)
                if val_features is not None:
                    with torch.no_grad():
                        accuracy = _accuracy(self._logits(val_features, self.alpha, self.beta), val_labels)
                    if best is None or accuracy > best[0]:
                        best = (accuracy, self.cache_keys.detach().clone())
        finally:
            self.cache_keys.requires_grad_(False)
        if best is not None:
            with torch.no_grad():
                self.cache_keys.copy_(best[1])
        if val_features is not None:
            self.search(val_features, val_labels, search_scale, search_step)
        return self

    def training_loss(self, train_features: torch.Tensor, train_labels: torch.Tensor) -> float:
        """The mean cross-entropy of the Tip-Adapter logits (current keys, `alpha`, `beta`) on L2-normalised
        features `(samples, dim)` with their labels."""
        self._check_cache()
        with torch.no_grad():
            logits = self(train_features)
            labels = _check_labels(train_labels, "train_labels", logits.shape[0], self.num_classes)
            return float(F.cross_entropy(logits, labels.to(logits.device)))
