"""`PromptClassifier`: image classification against class-name prompts, with cached class features at inference."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.checkpoint import checkpoint
from transformers.modeling_outputs import ImageClassifierOutput

from ._utils import (
    base_model_of,
    check_class_names,
    check_template,
    first_float_parameter,
    iter_modules,
    projected_features,
    short_repr,
)
from .adapter_files import load_classifier_info
from .compat import check_base_model
from .layer import MuDPTTextTower, MuDPTTower
from .names import check_adapter_name, check_subfolder

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo


#: The (image, class) prompts one text forward encodes for an image-conditioned adapter (CoCoOp), by default: about
#: 0.1 GB of activations at ViT-B/16's text width in fp32 inference (see `docs/performance.md`).
DEFAULT_CLASS_CHUNK_SIZE = 256

_optimizer_steps = [0]


def _count_optimizer_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    _optimizer_steps[0] += 1


# torch's own extension point: called after the `step()` of every `torch.optim.Optimizer` (fused kernels, foreach,
# transformers' Adafactor, optimizers wrapped by accelerate) in this process.
register_optimizer_step_post_hook(_count_optimizer_step)


def optimizer_steps() -> int:
    """How many `torch.optim.Optimizer` steps this process has taken (any optimizer, any parameters)."""
    return _optimizer_steps[0]


def _active_adapter_tensors(layer: BaseTunerLayer) -> list[torch.Tensor]:
    """The tensors of the active adapters of a peft tuner layer (LoRA and others), from its `adapter_layer_names`."""
    tensors: list[torch.Tensor] = []
    for name in layer.adapter_layer_names:
        container = getattr(layer, name, None)
        if not isinstance(container, (nn.ModuleDict, nn.ParameterDict)):
            continue
        for adapter in layer.active_adapters:
            item = container[adapter] if adapter in container else None
            if isinstance(item, torch.Tensor):
                tensors.append(item)
            elif isinstance(item, nn.Module):
                tensors += [*item.parameters(), *item.buffers()]
    return tensors


def _all_equal(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], one_reduction: bool | None = None) -> bool:
    """Whether each tensor equals its snapshot exactly. On the CPU `torch.equal` per pair; elsewhere (or with
    `one_reduction=True`) one reduction over all pairs, so that a GPU synchronises once per check, not per tensor."""
    if one_reduction is None:
        one_reduction = not all(t.device.type == "cpu" for t, _ in pairs)
    if not one_reduction:
        return all(torch.equal(t, snapshot) for t, snapshot in pairs)
    if not pairs:
        return True
    device = pairs[0][0].device
    differs = torch.stack([torch.ne(t, snapshot).any().to(device) for t, snapshot in pairs])
    return not bool(differs.any())


class _ClassFeatureCache(NamedTuple):
    """Class features computed in eval mode, with what they were computed from."""

    key: tuple  # the key of `PromptClassifier._state()` at the time
    values: list[tuple[torch.Tensor, torch.Tensor]]  # (tensor, snapshot of its values) of the value-checked tensors
    features: torch.Tensor


class PromptClassifier(nn.Module):
    """Classify images by their similarity to one text prompt per class, e.g. `"a photo of a {class}."`, or to an
    ensemble of prompts per class.

    `logits = logit_scale.exp() * cos(image features, class features)` (plus the model's `logit_bias` where it has
    one, as SigLIP does), with the model's own logit scale. In training mode the class prompts are re-encoded on every
    call (the learned text prompts change); in eval mode the class features are computed once and cached. The cache is
    never returned stale: before each reuse it checks the adapter in use and its enabled state, every parameter's and
    buffer's identity, version, storage, dtype and device (`load_state_dict`, `load_adapter`, `set_adapter`, `.to()`,
    in-place writes), the optimizer steps taken in the process (fused optimizers write without a version bump), and
    the *values* of the trainable adapter tensors the class features depend on, against a snapshot (writes through
    `.data`). Only a write through `.data` into a frozen weight (of the base model, or of an adapter loaded for
    inference), or an in-place write into an inference tensor of the base model, goes unseen: call
    [`~PromptClassifier.clear_cache`] after one. The class prompts are tokenized once, padded to the longest prompt
    (not to a fixed 77 tokens).

    **Prompt ensembling.** With `templates=[...]` the class features are the average of the L2-normalised features of
    the class's prompt under each template, normalised again (as CLIP's ImageNet ensembles and CoOp's `ZeroshotCLIP2`
    compute them); each template's prompts are encoded as one batch padded to that template's longest prompt, so
    that every term is what a classifier with that one template computes. The cache covers the ensemble as a whole.

    **Image-conditioned prompts (CoCoOp).** When the adapter in use shifts the text prompts by a function of each
    image (`fusion="meta_net"`), the class features depend on the image: the class prompts are encoded once per image
    (`batch x classes` text sequences), `class_chunk_size` of them per text forward, and no class feature is cached.
    The image features feeding the meta-net are the L2-normalised ones the logits use, as in the official
    `trainers/cocoop.py`. In training mode the chunks keep their activations for the backward pass (as the official
    code does, which trains with batch 1).

    With an unwrapped model this is plain zero-shot CLIP classification.

    Args:
        model (`nn.Module`):
            A CLIP-like model with `get_text_features` / `get_image_features`, wrapped by peft or not.
        tokenizer:
            The model's tokenizer.
        class_names (`Sequence[str]`):
            The class names, in label order.
        template (`str`, *optional*):
            The prompt of a class; `{}` is replaced by the class name. Exactly one `{}` and no other replacement field
            (`{0}`, `{name}`, a lone `{`): write literal braces as `{{` and `}}`. Defaults to `"a photo of a {}."`
            unless `templates` is given.
        image_processor (*optional*):
            The model's image processor, needed by [`~PromptClassifier.predict`] only.
        templates (`Sequence[str]`, *optional*):
            Several templates, for prompt ensembling (instead of `template`); e.g.
            `mudpt_peft.templates.IMAGENET_80_TEMPLATES`.
        class_chunk_size (`int`, defaults to 256):
            How many text rows one text forward encodes where the class count would otherwise set the memory. For an
            image-conditioned adapter (CoCoOp): the (image, class) prompts per text forward, in training and
            inference. For the other adapters, in training mode (the class prompts re-encoded, under autograd, on
            every step): with more classes than this, the class prompts are encoded `class_chunk_size` at a time and
            each chunk but the last recomputes its activations in the backward pass (`torch.utils.checkpoint`), so
            that the peak memory of a step is bounded by one chunk instead of growing with the class count, for
            about one more text forward over the checkpointed chunks (see [`MuDPTTextTower.chunked`] and
            `docs/performance.md`). Up to `class_chunk_size` classes (256 by default: every few-shot benchmark but
            ImageNet) nothing changes. The logits and gradients do not depend on it (up to floating-point summation
            order).
        share_text_prefix (`bool`, defaults to `True`):
            Whether a causal text tower (the family spec's `text_causal`: CLIP's) encodes the prefix every class
            prompt shares (BOS and the context tokens, with their deep prompts, and the template's words before the
            class name) once per class encoding instead of once per class (once per image and chunk for CoCoOp,
            whose context depends on the image), each class's own tokens attending to its keys and values (see
            [`MuDPTTextTower.shared_prefix`]): at ImageNet scale a CoOp step's text side takes about a third of the
            time. Composes with `class_chunk_size` (the prefix is encoded once, outside the chunks). Exact up to
            floating-point summation order, forward and backward. Without effect for a bidirectional text tower
            (SigLIP, Chinese-CLIP, AltCLIP) and for inputs that need the tower's own forward. `False` runs the tower's
            own forward on every class prompt.

    A `ValueError` is raised for a template that breaks that rule, and for class names that are not distinct
    non-empty strings (two classes with one name get one prompt and can never be told apart).

    Example:

        ```py
        >>> clf = PromptClassifier(peft_model, tokenizer, ["cat", "dog"])
        >>> clf.eval()
        >>> clf(pixel_values=pixel_values).logits.argmax(-1)
        ```

    A classifier around a MuDPT adapter can be shared: [`~PromptClassifier.save_pretrained`] and
    [`~PromptClassifier.push_to_hub`] store its adapter together with `prompt_classifier.json` (class names and
    template), and [`~PromptClassifier.from_pretrained`] restores a ready classifier from a folder or a Hub repository.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        class_names: Sequence[str],
        template: str | None = None,
        image_processor: Any = None,
        *,
        templates: Sequence[str] | None = None,
        class_chunk_size: int = DEFAULT_CLASS_CHUNK_SIZE,
        share_text_prefix: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(class_chunk_size, bool) or not isinstance(class_chunk_size, int) or class_chunk_size < 1:
            raise ValueError(f"`class_chunk_size` must be an integer >= 1, got {short_repr(class_chunk_size)}.")
        if not isinstance(share_text_prefix, bool):
            raise ValueError(f"`share_text_prefix` must be a bool, got {short_repr(share_text_prefix)}.")
        self.class_chunk_size = class_chunk_size
        self.share_text_prefix = share_text_prefix
        if template is not None and templates is not None:
            raise ValueError("Pass either `template` (one prompt per class) or `templates` (an ensemble), not both.")
        if templates is None:
            templates = ["a photo of a {}." if template is None else template]
        elif isinstance(templates, str) or not isinstance(templates, Sequence) or len(templates) == 0:
            raise ValueError(f"`templates` must be a non-empty list of templates, got {short_repr(templates)}.")
        templates = [check_template(item) for item in templates]
        self.model = model
        self.tokenizer = tokenizer
        self._templates = tuple(templates)
        self.image_processor = image_processor
        self._cache: _ClassFeatureCache | None = None
        self.class_names = class_names

    # ----------------------------------------------------------------------------------------------------------------
    # class prompts

    @property
    def templates(self) -> list[str]:
        """The templates of the class prompts (one, or the ensemble's)."""
        return list(self._templates)

    @property
    def template(self) -> str | None:
        """The template of the class prompts; `None` for an ensemble (see [`~PromptClassifier.templates`])."""
        return self._templates[0] if len(self._templates) == 1 else None

    @property
    def class_names(self) -> list[str]:
        """The class names, in label order. Assigning new names re-tokenizes the prompts and drops the cache."""
        return list(self._class_names)

    @class_names.setter
    def class_names(self, class_names: Sequence[str]) -> None:
        names = check_class_names(class_names)
        input_ids, attention_mask, lengths = _tokenize_templates(self.tokenizer, self._templates, names)
        device = first_float_parameter(self.model).device
        self._class_names = names
        self._template_lengths = lengths
        self.register_buffer("class_input_ids", input_ids.to(device), persistent=False)
        self.register_buffer("class_attention_mask", attention_mask.to(device), persistent=False)
        self.clear_cache()

    def clear_cache(self) -> None:
        """Drop the cached class features: the next eval-mode call encodes the class prompts again.

        Never needed after an optimizer step, a load or a `.to()` (see [`PromptClassifier`]); call it after writing
        new values into a *frozen* weight through `.data` (no version counter sees that write).
        """
        self._cache = None

    def train(self, mode: bool = True) -> PromptClassifier:
        """Set the mode (dropping the cached class features) and return `self`."""
        self.clear_cache()
        return super().train(mode)

    def _state(self) -> tuple[tuple, list[torch.Tensor]]:
        """`(key, value-checked tensors)`: what cached class features depend on, from one walk over the model.

        The key (cheap): the adapters each tower uses, and for every parameter and buffer of the model its identity,
        version counter (bumped by in-place writes: `load_state_dict`, `copy_` under `torch.no_grad()`, foreach
        optimizers), storage (`data_ptr`: `.to()`, `.half()` keep the objects and versions), dtype and device; the
        optimizer steps taken in this process (a fused optimizer writes without bumping versions).

        The value-checked tensors, compared with a snapshot: the adapter tensors the text features depend on (the text
        tower's prompts and fusion of the active MuDPT adapter, the vision prompts feeding that fusion, the active
        adapters of any other peft layer) that are trainable or inference tensors: the values a training loop
        changes, also in ways no version counter sees (`p.data.copy_(...)`, `p.data -= lr * p.grad`, an optimizer
        outside `torch.optim`), and tensors without a version counter. A frozen adapter (loaded for inference, the
        default of `PeftModel.from_pretrained`) costs no comparison: its version counters see every in-place write
        but one through `.data`.
        """
        towers, tensors, adapters = [], [], []
        for module in iter_modules(self.model):
            if isinstance(module, MuDPTTower):
                adapter = module.prompting_adapter()
                towers.append((id(module), adapter))
                if isinstance(module, MuDPTTextTower) and adapter is not None:
                    fusion = module.mudpt_fusion[adapter]
                    other = module.partner.learned_prompts(adapter) if module.partner is not None else None
                    adapters += [module.learned_prompts(adapter), other, *fusion.parameters(), *fusion.buffers()]
            elif isinstance(module, BaseTunerLayer):
                adapters += _active_adapter_tensors(module)
            for group in (module._parameters, module._buffers):
                for t in group.values():
                    if t is not None:
                        version = None if t.is_inference() else t._version
                        tensors.append((id(t), version, t.data_ptr(), t.dtype, t.device))
        key = (tuple(towers), tuple(tensors), self.class_input_ids.data_ptr(), optimizer_steps())
        checked = {id(t): t for t in adapters if t is not None and (t.requires_grad or t.is_inference())}
        return key, list(checked.values())

    def _value_checked(self) -> list[torch.Tensor]:
        """The tensors whose values are compared with a snapshot before cached class features are reused."""
        return self._state()[1]

    def _cached(self) -> tuple[torch.Tensor | None, tuple, list[torch.Tensor]]:
        """`(cached class features, or None if anything they depend on has changed, key, value-checked tensors)`: the
        state is returned too, so that a miss does not walk the model again."""
        key, tensors = self._state()
        cache = self._cache
        if cache is None or key != cache.key or len(tensors) != len(cache.values):
            return None, key, tensors
        if any(t is not reference for t, (reference, _) in zip(tensors, cache.values, strict=True)):
            return None, key, tensors
        return (cache.features if _all_equal(cache.values) else None), key, tensors

    def encode_classes(self) -> torch.Tensor:
        """The L2-normalised class features, shape `(classes, dim)`; cached in eval mode.

        A `ValueError` for an image-conditioned adapter (CoCoOp), whose class features exist per image only (the
        classifier's forward encodes them for each image)."""
        if self.conditioned_text_tower() is not None:
            raise ValueError(
                "The adapter in use (CoCoOp) conditions the class prompts on each image: there are no class features "
                "without an image. Call the classifier on `pixel_values` (it encodes the class prompts per image)."
            )
        if self.training:
            with self.chunked_class_encoding():
                return self._encode_classes()
        features, key, tensors = self._cached()
        if features is None:
            with torch.no_grad(), self._shared_text_prefix():
                snapshots = [(t, t.detach().clone()) for t in tensors]
                features = self._encode_classes()
            self._cache = _ClassFeatureCache(key, snapshots, features)
        return features

    def _encode_classes(self) -> torch.Tensor:
        if len(self._template_lengths) == 1:
            features = projected_features(
                self.model.get_text_features(input_ids=self.class_input_ids, attention_mask=self.class_attention_mask)
            )
            return F.normalize(features, dim=-1)
        count, total = len(self._class_names), None
        for index, length in enumerate(self._template_lengths):  # one batch per template, at its own length
            rows = slice(index * count, (index + 1) * count)
            output = self.model.get_text_features(
                input_ids=self.class_input_ids[rows, :length], attention_mask=self.class_attention_mask[rows, :length]
            )
            features = F.normalize(projected_features(output), dim=-1)
            total = features if total is None else total + features
        return F.normalize(total / len(self._template_lengths), dim=-1)

    @contextlib.contextmanager
    def chunked_class_encoding(self) -> Iterator[None]:
        """Within the `with` block, a text forward under autograd of more than `class_chunk_size` class prompts
        through the model (e.g. the `PeftModel`'s or a DDP wrapper's forward) is encoded in checkpointed chunks of
        `class_chunk_size` rows (see [`~mudpt_peft.layer.MuDPTTextTower.chunked`]). The classifier's training-mode
        calls use it; `PromptTuningTrainer` wraps its training forward in it."""
        with contextlib.ExitStack() as stack:
            for module in iter_modules(self.model):
                if isinstance(module, MuDPTTextTower):
                    stack.enter_context(module.chunked(self.class_chunk_size))
                    if self.share_text_prefix:
                        stack.enter_context(module.shared_prefix())
            yield

    @contextlib.contextmanager
    def _shared_text_prefix(self) -> Iterator[None]:
        """Within the `with` block, the text towers share the class prompts' prefix if `share_text_prefix`."""
        with contextlib.ExitStack() as stack:
            if self.share_text_prefix:
                for module in iter_modules(self.model):
                    if isinstance(module, MuDPTTextTower):
                        stack.enter_context(module.shared_prefix())
            yield

    def conditioned_text_tower(self) -> MuDPTTextTower | None:
        """The text tower when the adapter in use conditions its prompts on each image (CoCoOp), else `None`."""
        for module in iter_modules(self.model):
            if isinstance(module, MuDPTTextTower) and module.prompting_adapter() is not None:
                return module if module.conditions_on_image() else None
        return None

    def _conditioned_similarities(self, tower: MuDPTTextTower, image_features: torch.Tensor) -> torch.Tensor:
        """`cos(image i, class c | image i)` `(images, classes)` for L2-normalised `image_features`: the class prompts
        encoded for each image with its meta-net shift, `class_chunk_size` (image, class) rows per text forward (with
        `share_text_prefix`, the prefix of each image's rows once per chunk). Under autograd, every chunk but the last
        runs under a non-reentrant `torch.utils.checkpoint`, so that a training step keeps one chunk's activations."""
        images, count = image_features.shape[0], len(self._class_names)
        shift = tower.image_shift(image_features)
        device = image_features.device
        starts = range(0, images * count, self.class_chunk_size)
        similarities = []
        for start in starts:
            rows = torch.arange(start, min(images * count, start + self.class_chunk_size), device=device)
            arguments = (tower, image_features, shift, rows // count, rows % count)
            if torch.is_grad_enabled() and start != starts[-1]:
                similarities.append(checkpoint(self._conditioned_chunk, *arguments, use_reentrant=False))
            else:
                similarities.append(self._conditioned_chunk(*arguments))
        return torch.cat(similarities).view(images, count)

    def _conditioned_chunk(
        self,
        tower: MuDPTTextTower,
        image_features: torch.Tensor,
        shift: torch.Tensor,
        image_index: torch.Tensor,
        class_index: torch.Tensor,
    ) -> torch.Tensor:
        """The similarities of the (image, class) rows `(image_index, class_index)` (see `_conditioned_similarities`);
        everything it depends on is set here, so that a checkpoint's recomputation runs the same computation."""
        count, total = len(self._class_names), None
        for index, length in enumerate(self._template_lengths):
            ids = self.class_input_ids[index * count + class_index, :length]
            mask = self.class_attention_mask[index * count + class_index, :length]
            with tower.conditioned(shift, image_index), tower.shared_prefix(self.share_text_prefix):
                output = self.model.get_text_features(input_ids=ids, attention_mask=mask)
            features = F.normalize(projected_features(output), dim=-1)
            total = features if total is None else total + features
        if len(self._template_lengths) > 1:
            total = F.normalize(total / len(self._template_lengths), dim=-1)
        return (image_features[image_index] * total.to(image_features.dtype)).sum(dim=-1)

    # ----------------------------------------------------------------------------------------------------------------
    # classification

    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **kwargs: Any
    ) -> ImageClassifierOutput:
        """Logits of shape `(batch, classes)`, and the cross-entropy `loss` when `labels` are given."""
        conditioned = self.conditioned_text_tower()
        class_features = self.encode_classes() if conditioned is None else None
        image_features = F.normalize(
            projected_features(self.model.get_image_features(pixel_values=pixel_values, **kwargs)), dim=-1
        )
        base = base_model_of(self.model)
        if conditioned is None:
            logits = image_features @ class_features.to(image_features.dtype).t()
        else:
            logits = self._conditioned_similarities(conditioned, image_features)
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
        parameter = first_float_parameter(self.model)
        predictions: list[str] = []
        for start in range(0, len(images), batch_size):
            batch = [
                image.convert("RGB") if hasattr(image, "convert") else image
                for image in images[start : start + batch_size]
            ]
            pixel_values = self.image_processor(images=batch, return_tensors="pt")["pixel_values"]
            logits = self(pixel_values=pixel_values.to(device=parameter.device, dtype=parameter.dtype)).logits
            predictions.extend(self._class_names[i] for i in logits.argmax(-1).tolist())
        return predictions

    # ----------------------------------------------------------------------------------------------------------------
    # saving, loading and sharing

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        eval_results: Mapping | Sequence[Mapping] | None = None,
        is_main_process: bool = True,
    ) -> Path:
        """Save the active adapter, `prompt_classifier.json` (class names, template) and a model card to a folder.

        The adapter is saved in the folder itself (whatever its name), crash-safe and with its weights fingerprint,
        as [`mudpt_peft.hub.save_pretrained`] does. Reload with [`~PromptClassifier.from_pretrained`]; the folder is
        also a plain peft adapter folder (`PeftModel.from_pretrained(base_model, save_directory)`).

        Args:
            save_directory (`str` or `os.PathLike`):
                The folder (created if needed).
            eval_results (`dict` or list of `dict`, *optional*):
                Evaluation results for the model card: `dataset`, `accuracy` (top-1, in percent) and optionally
                `shots`, `seed`, `split`, `top5_accuracy`, `dataset_id` (see
                [`mudpt_peft.model_card.write_model_card`]).
            is_main_process (`bool`, defaults to `True`):
                Write nothing unless `True` (for distributed training).

        Returns:
            `Path`: the folder.
        """
        from .hub import save_pretrained

        return save_pretrained(self, save_directory, eval_results=eval_results, is_main_process=is_main_process)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        subfolder: str | None = None,
        revision: str | None = None,
        commit_message: str | None = None,
        commit_description: str | None = None,
        private: bool | None = None,
        token: str | bool | None = None,
        create_pr: bool = False,
        eval_results: Mapping | Sequence[Mapping] | None = None,
    ) -> CommitInfo:
        """Push the active adapter, `prompt_classifier.json` and a model card to a Hub repository, in one commit.

        Args:
            repo_id (`str`):
                The repository, e.g. `"your-name/clip-maple-eurosat"` (created if needed).
            subfolder (`str`, *optional*):
                A folder of the repository, so that one repository can hold several classifiers or adapters (a
                relative path of safe names, see [`~mudpt_peft.names.check_subfolder`]).
            revision (`str`, *optional*):
                The branch to push to (created from `main` if needed).
            commit_message (`str`, *optional*):
                The commit message.
            commit_description (`str`, *optional*):
                The commit description.
            private (`bool`, *optional*):
                Whether a newly created repository is private.
            token (`str` or `bool`, *optional*):
                The Hub token (default: the one you are logged in with).
            create_pr (`bool`, defaults to `False`):
                Open a pull request instead of committing to `revision`.
            eval_results (`dict` or list of `dict`, *optional*):
                Evaluation results for the model card (see [`~PromptClassifier.save_pretrained`]).

        Returns:
            `huggingface_hub.CommitInfo`: the commit; its `oid` can be passed as `revision=` when loading.
        """
        from .hub import push_to_hub

        return push_to_hub(
            self,
            repo_id,
            subfolder=subfolder,
            revision=revision,
            commit_message=commit_message,
            commit_description=commit_description,
            private=private,
            token=token,
            create_pr=create_pr,
            eval_results=eval_results,
        )

    @classmethod
    def from_pretrained(
        cls,
        base_model: nn.Module,
        pretrained_model_name_or_path: str | os.PathLike,
        tokenizer: Any = None,
        image_processor: Any = None,
        *,
        adapter_name: str = "default",
        is_trainable: bool = False,
        revision: str | None = None,
        subfolder: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        force_download: bool = False,
        **kwargs: Any,
    ) -> PromptClassifier:
        """Restore a classifier saved with [`~PromptClassifier.save_pretrained`] or [`~PromptClassifier.push_to_hub`].

        Loads the adapter onto `base_model` with `PeftModel.from_pretrained` and the class names and template (or
        templates) from `prompt_classifier.json`. Everything is checked before the base model is touched (the
        adapter's files, see [`MuDPTConfig.from_pretrained`]; the classifier file; the base model's class, family and
        geometry as far as the adapter recorded them, see [`mudpt_peft.compat.check_base_model`]; the tokenizer); if
        the adapter's tensors do not fit the base model, the base model is left without MuDPT wrappers.

        Args:
            base_model (`nn.Module`):
                The base model the adapter was trained on, e.g. `CLIPModel.from_pretrained(...)` (not wrapped by peft).
            pretrained_model_name_or_path (`str` or `os.PathLike`):
                A local folder or a Hub repository id.
            tokenizer (*optional*):
                The base model's tokenizer; by default the one saved beside the classifier in a local folder (as
                `PromptTuningTrainer.save_model` and `examples/fewshot.py` save it), else
                `AutoTokenizer.from_pretrained(base_model.name_or_path)`.
            image_processor (*optional*):
                The base model's image processor, needed by [`~PromptClassifier.predict`] only; by default the one
                saved beside the classifier in a local folder (`preprocessor_config.json` or a processor's
                `processor_config.json`), if any.
            adapter_name (`str`, defaults to `"default"`):
                The name of the loaded adapter: a plain folder name ([`~mudpt_peft.names.check_adapter_name`]).
            is_trainable (`bool`, defaults to `False`):
                Load the adapter trainable (the classifier is then returned in training mode, otherwise in eval mode).
            revision (`str`, *optional*):
                A branch, tag or commit hash of the Hub repository. A branch or tag is resolved to one commit when the
                first file is downloaded, and every file is read from that commit (a push meanwhile changes nothing).
            subfolder (`str`, *optional*):
                The folder of the classifier inside the repository or folder (checked with
                [`~mudpt_peft.names.check_subfolder`] before any file is read).
            token (`str` or `bool`, *optional*):
                The Hub token.
            cache_dir (`str`, *optional*):
                The Hub cache folder.
            local_files_only (`bool`, defaults to `False`):
                Use only files from the Hub cache.
            force_download (`bool`, defaults to `False`):
                Download the files again even if they are cached.
            kwargs:
                Passed to `PeftModel.from_pretrained` (e.g. `low_cpu_mem_usage`, `torch_device`).

        Example:

            ```py
            >>> import mudpt_peft
            >>> clip = CLIPModel.from_pretrained("openai/clip-vit-base-patch16")
            >>> clf = mudpt_peft.PromptClassifier.from_pretrained(clip, "your-name/clip-maple-eurosat")
            >>> clf.class_names[:3]
            ```
        """
        from peft import PeftModel

        check_adapter_name(adapter_name, "`adapter_name`")  # before any file is read
        check_subfolder(subfolder)
        if isinstance(base_model, PeftModel):
            raise ValueError(
                "`base_model` is already a PeftModel; pass the plain base model (e.g. `CLIPModel.from_pretrained(...)`)"
                ". To add the classifier's adapter to an existing PeftModel, use `peft_model.load_adapter(...)` and "
                "build a `PromptClassifier` around it."
            )
        hub_kwargs = {
            "revision": revision,
            "token": token,
            "cache_dir": cache_dir,
            "local_files_only": local_files_only or None,
            "force_download": force_download or None,
        }
        hub_kwargs = {key: value for key, value in hub_kwargs.items() if value is not None}
        info, checked = load_classifier_info(pretrained_model_name_or_path, subfolder, **hub_kwargs)
        check_base_model(checked.config, base_model)
        saved = _saved_processor_folder(checked.source)
        if tokenizer is None:
            tokenizer = _folder_part(saved, "tokenizer") or _base_model_tokenizer(base_model)
        if image_processor is None:
            image_processor = _folder_part(saved, "image_processor")
        if subfolder:
            hub_kwargs["subfolder"] = subfolder
        if checked.source.commit is not None:  # every file from the commit the classifier file was read from
            hub_kwargs["revision"] = checked.source.commit
        model = PeftModel.from_pretrained(
            base_model,
            pretrained_model_name_or_path,
            adapter_name=adapter_name,
            is_trainable=is_trainable,
            **hub_kwargs,
            **kwargs,
        )
        try:
            templates = info.get("templates")
            template = None if templates is not None else info["template"]
            classifier = cls(model, tokenizer, info["class_names"], template, image_processor, templates=templates)
        except Exception:
            model.unload()  # leave the base model as it was given
            raise
        return classifier if is_trainable else classifier.eval()


def _tokenize_templates(
    tokenizer: Any, templates: Sequence[str], names: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """The class prompts of every template, template after template: `(input_ids, attention_mask, lengths)`.

    Each template's prompts are tokenized as one batch padded to their longest (`lengths[t]` columns), then padded on
    the right to the longest template so that they fit one tensor; `[:, :lengths[t]]` of a template's rows is its own
    tokenization. With one template this is the tokenizer's output as it is."""
    batches = [tokenizer([t.format(name) for name in names], padding="longest", return_tensors="pt") for t in templates]
    if len(batches) == 1:
        return batches[0]["input_ids"], batches[0]["attention_mask"], [batches[0]["input_ids"].shape[1]]
    lengths = [batch["input_ids"].shape[1] for batch in batches]
    width, pad = max(lengths), getattr(tokenizer, "pad_token_id", None) or 0
    input_ids = torch.cat([F.pad(b["input_ids"], (0, width - b["input_ids"].shape[1]), value=pad) for b in batches])
    mask = torch.cat([F.pad(b["attention_mask"], (0, width - b["attention_mask"].shape[1])) for b in batches])
    return input_ids, mask, lengths


#: The files that say a processor part was saved in a folder: `save_pretrained` of a tokenizer, of an image
#: processor, or of a whole processor (`CLIPProcessor`, which holds the image processor's settings).
_PROCESSOR_FILES = {
    "tokenizer": ("tokenizer_config.json",),
    "image_processor": ("preprocessor_config.json", "processor_config.json"),
}


def _saved_processor_folder(source: Any) -> Path | None:
    """The local folder of a classifier (where a trainer also saves the processor files); `None` on the Hub."""
    if not source.local:
        return None
    return Path(source.model_id, source.subfolder or "")


def _folder_part(folder: Path | None, part: str) -> Any:
    """The tokenizer or image processor saved in `folder` (`AutoTokenizer` / `AutoImageProcessor`), or `None`."""
    if folder is None or not any((folder / name).is_file() for name in _PROCESSOR_FILES[part]):
        return None
    from transformers import AutoImageProcessor, AutoTokenizer

    loader = AutoTokenizer if part == "tokenizer" else AutoImageProcessor
    try:
        return loader.from_pretrained(str(folder))
    except Exception as error:  # a damaged or foreign file: say which, and what to pass instead
        raise ValueError(
            f"PromptClassifier.from_pretrained could not load the {part.replace('_', ' ')} saved in '{folder}' "
            f"({error}). Pass `{part}=` yourself."
        ) from error


def _base_model_tokenizer(base_model: nn.Module) -> Any:
    """`AutoTokenizer.from_pretrained(base_model.name_or_path)`, with an error that says what to do."""
    source = getattr(base_model, "name_or_path", None) or None
    if source is None:
        raise ValueError(
            "PromptClassifier.from_pretrained needs the base model's tokenizer, and the base model has no "
            "`name_or_path` to load it from. Pass `tokenizer=` (e.g. `AutoTokenizer.from_pretrained(<model id>)`)."
        )
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source)
    except Exception as error:  # OSError, ValueError, a missing tokenizers backend, a Hub error...
        raise ValueError(
            f"PromptClassifier.from_pretrained could not load the base model's tokenizer from {source!r} ({error}). "
            "Pass `tokenizer=` (e.g. `AutoTokenizer.from_pretrained(<model id or local folder>)`)."
        ) from error
