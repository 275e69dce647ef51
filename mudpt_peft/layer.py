"""MuDPT's tuner layers: thin wrappers around the modules of a CLIP-like model.

Each tower is wrapped by a [`MuDPTTower`], which owns that tower's learned prompts and the Injection Model that feeds
into them. On every call the tower computes its prompts once (learned prompts plus injection from the other tower),
puts them in a [`PromptSlot`] shared with the tower's other wrappers for the duration of the call, and runs the
original tower. The other wrappers insert the prompts: [`MuDPTTextTokenEmbedding`] and [`MuDPTVisionEmbeddings`] at
the input (layer 0), [`MuDPTDeepPromptLayer`] at the input of each deeper encoder layer; [`MuDPTPoolingHead`] keeps
the prompts out of a pooling head where the family spec asks for it (SigLIP). Where the prompts go and how the inputs
are widened is the family spec's business ([`FamilySpec`]). Wrappers (not hooks) keep gradient checkpointing exact:
the prompts are written outside the checkpointed layer.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
from collections.abc import Iterator
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from torch.utils.checkpoint import checkpoint

from . import shared_prefix
from ._utils import replace_tokens
from .families import FamilySpec


class PromptSlot:
    """The prompts one tower uses during the current call, shared by that tower's wrappers.

    `prompts` has shape `(depth, n_ctx, width)` while the tower runs with an adapter, and is `None` otherwise. `start`
    is the index of the first prompt token in the sequence, or `None` for "the last `n_ctx` tokens". `shift`, of shape
    `(rows, width)`, is added to every layer-0 prompt token of each row of the batch (CoCoOp's image-conditioned
    context), or is `None`.
    """

    __slots__ = ("prompts", "shift", "start")

    def __init__(self) -> None:
        self.prompts: torch.Tensor | None = None
        self.start: int | None = None
        self.shift: torch.Tensor | None = None

    @contextlib.contextmanager
    def filled(
        self, prompts: torch.Tensor, start: int | None, shift: torch.Tensor | None = None
    ) -> Iterator[None]:
        """Hold `prompts` (placed at `start`) and the per-row layer-0 `shift` for the duration of the `with` block."""
        previous = (self.prompts, self.start, self.shift)
        self.prompts, self.start, self.shift = prompts, start, shift
        try:
            yield
        finally:
            self.prompts, self.start, self.shift = previous

    def first_layer_prompts(self) -> torch.Tensor:
        """The layer-0 prompts: `(n_ctx, width)`, or `(rows, n_ctx, width)` with a `shift`."""
        if self.shift is None:
            return self.prompts[0]
        return self.prompts[0].unsqueeze(0) + self.shift.to(self.prompts.dtype).unsqueeze(1)


@functools.cache
def _positional_names(cls: type) -> tuple[str, ...]:
    """The names of the arguments of `cls.forward` that can be given by position (`self` excluded)."""
    parameters = list(inspect.signature(cls.forward).parameters.values())[1:]
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return tuple(p.name for p in itertools.takewhile(lambda p: p.kind in kinds, parameters))


def named_arguments(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The arguments of a call `module(*args, **kwargs)`, all by name (so that a spec can widen them by name)."""
    if not args:
        return dict(kwargs)
    names = _positional_names(type(module))
    if len(args) > len(names):
        raise TypeError(f"{type(module).__name__}.forward takes at most {len(names)} positional arguments.")
    named = dict(zip(names[: len(args)], args, strict=True))
    duplicated = sorted(set(named) & set(kwargs))
    if duplicated:
        raise TypeError(f"{type(module).__name__}.forward got multiple values for {duplicated}.")
    return {**named, **kwargs}


def refuse_merge() -> None:
    """Raise the `NotImplementedError` of every merge operation: prompts have no weight delta to merge."""
    raise NotImplementedError(
        "MuDPT adapters cannot be merged: prompts add tokens to the sequence and have no weight delta. "
        "Keep the PeftModel, or use `unload()` to get the base model back."
    )


class MuDPTLayer(nn.Module, BaseTunerLayer):
    """Base class of the MuDPT wrappers.

    Attributes the wrapper does not have are looked up on the wrapped module, so that `model.text_model.config` or
    `model.vision_model.embeddings.patch_embedding` keep working on a wrapped model.

    Args:
        base_layer (`nn.Module`): The wrapped module.
        slot ([`PromptSlot`]): The prompt slot of the tower this wrapper belongs to.
    """

    def __init__(self, base_layer: nn.Module, slot: PromptSlot) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.slot = slot
        self.merged_adapters = []

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_") or name in ("base_layer", "slot"):
                raise
            return getattr(self.base_layer, name)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Prompts add tokens; they have no weight delta that could be merged into the base model."""
        refuse_merge()

    def unmerge(self) -> None:
        """Nothing is ever merged (see [`~MuDPTLayer.merge`])."""

    def _move_adapter_to_device_of_base_layer(self, adapter_name: str, device: torch.device | None = None) -> None:
        """Move the adapter to the device of the wrapped module (after a `low_cpu_mem_usage` load).

        Only the device changes: the dtype stays as loaded, so that loading onto a half-precision base is lossless;
        peft's `_cast_adapter_dtype` then applies `autocast_adapter_dtype` as on the regular loading path. The
        tensors are copied into fresh storage, so that the adapter computes exactly as after a regular load.
        """
        reference = next((p for p in self.get_base_layer().parameters() if p.device.type != "meta"), None)
        target_device = device if device is not None else (reference.device if reference is not None else None)
        if target_device is None:
            return
        for name in self.adapter_layer_names:
            container = getattr(self, name)
            if adapter_name not in container:
                continue
            item = container[adapter_name]
            # this adapter's tensors only: another adapter of the container may still be on meta (created with
            # `low_cpu_mem_usage=True` and not loaded yet)
            if any(p.device.type == "meta" for p in ([item] if isinstance(item, nn.Parameter) else item.parameters())):
                continue
            # a copy even on the same device: the tensors assigned from a safetensors file keep its (8-byte)
            # alignment, and CPU kernels round differently on such storage than on the allocator's aligned one
            if isinstance(item, nn.Parameter):
                copied = item.data.to(target_device, copy=True)
                container[adapter_name] = nn.Parameter(copied, requires_grad=item.requires_grad)
            else:
                for parameter in item.parameters():
                    parameter.data = parameter.data.to(target_device, copy=True)
                for module in item.modules():
                    for key, buffer in module._buffers.items():
                        if buffer is not None:
                            module._buffers[key] = buffer.to(target_device, copy=True)


class MuDPTTower(MuDPTLayer):
    """Wraps a tower; owns its learned prompts (`mudpt_prompts`) and the fusion feeding into them (`mudpt_fusion`).

    An adapter prompts this tower when it has a fusion module here (a parameter-free [`NoFusion`] for uncoupled
    prompts). Its learned prompts are absent when the method derives them from the other tower (MaPLe's vision
    prompts).

    Args:
        base_layer (`nn.Module`): The tower.
        spec ([`FamilySpec`]): The family spec of the model.
    """

    adapter_layer_names = ("mudpt_prompts", "mudpt_fusion")
    #: Index of the first prompt token in this tower's sequence, or `None` for the last tokens.
    prompt_start: int | None = None

    def __init__(self, base_layer: nn.Module, spec: FamilySpec) -> None:
        super().__init__(base_layer, PromptSlot())
        self.spec = spec
        self.mudpt_prompts = nn.ParameterDict()
        self.mudpt_fusion = nn.ModuleDict()
        self.partner: MuDPTTower | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "partner":  # a plain reference: the other tower is registered elsewhere in the model
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def update_layer(
        self,
        adapter_name: str,
        prompts: torch.Tensor | None,
        fusion: nn.Module,
        inference_mode: bool = False,
    ) -> None:
        """Add an adapter: its learned `prompts` `(depth, n_ctx, width)` (or `None`) and its `fusion` module."""
        if prompts is not None:
            self.mudpt_prompts[adapter_name] = nn.Parameter(prompts)
        self.mudpt_fusion[adapter_name] = fusion
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def prompting_adapter(self) -> str | None:
        """The adapter whose prompts this tower uses now, or `None` (adapters disabled, or none active here)."""
        if self.disable_adapters:
            return None
        active = [name for name in self.active_adapters if name in self.mudpt_fusion]
        if len(active) > 1:
            raise ValueError(
                f"MuDPT uses one adapter at a time, but {active} are active: call `model.set_adapter(<name>)`."
            )
        return active[0] if active else None

    def learned_prompts(self, adapter_name: str) -> torch.Tensor | None:
        """This tower's learned prompts of `adapter_name`, `(depth, n_ctx, width)`, or `None`."""
        return self.mudpt_prompts[adapter_name] if adapter_name in self.mudpt_prompts else None

    def used_prompts(self, adapter_name: str) -> torch.Tensor:
        """The prompts this tower uses for `adapter_name` (learned prompts and fusion), `(depth, n_ctx, width)`.

        Computed afresh on every call of the tower: the fusion reads its weights once, which costs about what any check
        that they are unchanged would cost (3.9 ms for the T2V Injection Model of a ViT-B/16 CLIP on one CPU thread,
        under 1 % of a batch-1 image forward), so nothing here is cached and nothing can go stale.
        """
        other = self.partner.learned_prompts(adapter_name) if self.partner is not None else None
        return self.mudpt_fusion[adapter_name](self.learned_prompts(adapter_name), other)


class MuDPTTextTower(MuDPTTower):
    """The text tower wrapper: inserts `n_ctx` prompt tokens at the spec's `text_prompt_start` (after BOS / CLS, or
    first without one), widening the token ids and the per-token inputs with [`FamilySpec.widen_text_inputs`]."""

    def __init__(self, base_layer: nn.Module, spec: FamilySpec) -> None:
        super().__init__(base_layer, spec)
        self.prompt_start = spec.text_prompt_start
        self._row_shift: torch.Tensor | None = None
        self._row_image: torch.Tensor | None = None
        self._chunk_rows: int | None = None
        self._share_prefix = False

    def conditions_on_image(self, adapter_name: str | None = None) -> bool:
        """Whether the prompts of `adapter_name` (default: the adapter in use) depend on each image (CoCoOp)."""
        adapter_name = self.prompting_adapter() if adapter_name is None else adapter_name
        fusion = self.mudpt_fusion[adapter_name] if adapter_name in self.mudpt_fusion else None
        return bool(getattr(fusion, "conditions_on_image", False))

    def image_shift(self, image_features: torch.Tensor) -> torch.Tensor:
        """The shift `(images, width)` of the adapter in use for L2-normalised image features (CoCoOp's meta-net)."""
        adapter_name = self.prompting_adapter()
        if adapter_name is None or not self.conditions_on_image(adapter_name):
            raise ValueError("The adapter in use does not condition its text prompts on the image.")
        return self.mudpt_fusion[adapter_name].shift(image_features)

    @contextlib.contextmanager
    def conditioned(self, shift: torch.Tensor, image_index: torch.Tensor | None = None) -> Iterator[None]:
        """Within the `with` block, add a shift `(width,)` to the layer-0 prompts of each text row.

        An image-conditioned adapter (CoCoOp) encodes text only inside such a block. Without `image_index`, `shift`
        `(rows, width)` has one row per text row: `shift[r]` is [`~MuDPTTextTower.image_shift`] of the image that row's
        class prompt is encoded for. With `image_index` `(rows,)`, `shift` `(images, width)` has one row per image and
        text row `r` belongs to image `image_index[r]`: the rows of one image then share their prefix (BOS and the
        shifted context) inside a [`~MuDPTTextTower.shared_prefix`] block, which encodes it once per image.
        """
        previous = (self._row_shift, self._row_image)
        self._row_shift, self._row_image = shift, image_index
        try:
            yield
        finally:
            self._row_shift, self._row_image = previous

    @contextlib.contextmanager
    def chunked(self, rows: int | None) -> Iterator[None]:
        """Within the `with` block, a forward under autograd of more than `rows` text rows encodes them `rows` at a
        time, each chunk but the last under `torch.utils.checkpoint` (non-reentrant), so that its activations are
        recomputed in the backward pass instead of being kept: the memory of the text forward and backward is that of
        one chunk, not of all rows. `None`: one forward for all rows (the default outside such a block).

        The prompts are computed once for all rows, outside the chunks (as without chunking: one fusion call, one
        draw of its dropout), and the chunks' outputs are concatenated, so the output and the gradients are those of
        one forward up to floating-point summation order. The last chunk is not checkpointed: its backward runs first,
        so recomputing it would save no memory. The recomputation restores the RNG state of each chunk's forward, so
        dropout inside the text encoder draws the same masks twice (though per chunk, not the masks one forward of all
        rows would draw). Image-conditioned prompts (CoCoOp) are never chunked here: `PromptClassifier` chunks their
        (image, class) rows itself.
        """
        if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 1):
            raise ValueError(f"The chunk size must be an integer >= 1 or None, got {rows!r}.")
        previous, self._chunk_rows = self._chunk_rows, rows
        try:
            yield
        finally:
            self._chunk_rows = previous

    @contextlib.contextmanager
    def shared_prefix(self, enabled: bool = True) -> Iterator[None]:
        """Within the `with` block (with `enabled`), encode the prefix that every text row shares once per forward.

        In a causal text tower (the family spec's `text_causal`: CLIP's) every class prompt starts with the same BOS
        and `n_ctx` context tokens at the same positions, replaced by the same deep prompts at every layer, and any
        template words before the class name, so their hidden states are the same in every row: they are computed
        once, and each row's own tokens attend to the prefix's keys and values (see `mudpt_peft.shared_prefix`). The
        output and the gradients equal the unshared forward's up to floating-point summation order. Composes with
        [`~MuDPTTextTower.chunked`]: the prefix is encoded once, outside the checkpointed chunks. Image-conditioned
        prompts (CoCoOp) share one prefix per image when [`~MuDPTTextTower.conditioned`] is given each row's image,
        and nothing when it is given one shift per row. Nothing is shared for a bidirectional text tower or for inputs
        that need the full forward (position ids, requested hidden states or attentions, padding inside the prefix);
        the unshared forward then runs. Off outside such a block (`PromptClassifier` and `PromptTuningTrainer` turn
        it on unless `share_text_prefix=False`).
        """
        if not isinstance(enabled, bool):
            raise ValueError(f"`enabled` must be a bool, got {enabled!r}.")
        previous, self._share_prefix = self._share_prefix, enabled
        try:
            yield
        finally:
            self._share_prefix = previous

    def _shared_forward(
        self, prompts: torch.Tensor, inputs: dict[str, Any], length: int, shift: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,
    ) -> Any:  # fmt: skip
        """The tower on `inputs` with their common first `length` tokens encoded once (see `shared_prefix`): once for
        all rows, or, with a per-image `shift` `(images, width)` and each row's `image_index`, once per image."""
        input_ids = inputs[self.spec.text_input_ids_arg]
        mask_arg = self.spec.text_attention_mask_arg
        attention_mask = inputs.get(mask_arg) if mask_arg is not None else None
        groups, prefix_ids, prefix_shift = None, input_ids[:1, :length], None
        if image_index is not None:
            images, groups = torch.unique(image_index, return_inverse=True)
            prefix_ids, prefix_shift = prefix_ids.expand(images.shape[0], -1), shift[images]
        with self.slot.filled(prompts, self.prompt_start, prefix_shift):
            embeddings = self.base_layer.embeddings(input_ids=prefix_ids)
        prefix = shared_prefix.encode_prefix(self.base_layer, embeddings, prompts, self.prompt_start)
        rows = input_ids.shape[0]
        if self._chunk_rows is not None and torch.is_grad_enabled() and rows > self._chunk_rows:
            outputs = shared_prefix.encode_rows_chunked(
                self.base_layer, self.spec, input_ids, attention_mask, length, groups, prefix, self._chunk_rows
            )
            return _concat_rows(outputs)
        return shared_prefix.encode_rows(
            self.base_layer, self.spec, input_ids, attention_mask, length, groups, *prefix
        )

    def _chunked_forward(self, prompts: torch.Tensor, inputs: dict[str, Any], rows: int) -> Any:
        """The base tower on `inputs` (`rows` text rows), `self._chunk_rows` rows at a time (see `chunked`)."""
        size = self._chunk_rows
        outputs = []
        for start in range(0, rows, size):
            part = {
                name: value[start : start + size] if _is_row_tensor(value, rows) else value
                for name, value in inputs.items()
            }
            if start + size >= rows:
                outputs.append(self._prompted_forward(prompts, part))
            else:
                outputs.append(checkpoint(self._prompted_forward, prompts, part, use_reentrant=False))
        return _concat_rows(outputs)

    def _prompted_forward(self, prompts: torch.Tensor, inputs: dict[str, Any]) -> Any:
        with self.slot.filled(prompts, self.prompt_start):
            return self.base_layer(**inputs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        adapter_name = self.prompting_adapter()
        if adapter_name is None:
            return self.base_layer(*args, **kwargs)
        prompts = self.used_prompts(adapter_name)
        inputs = self.spec.widen_text_inputs(
            self.base_layer, prompts.shape[1], named_arguments(self.base_layer, args, kwargs)
        )
        shift = image_index = None
        conditioned = self.conditions_on_image(adapter_name)
        if conditioned:
            shift, image_index = self._row_shift, self._row_image
            input_ids = inputs.get(self.spec.text_input_ids_arg)
            rows = input_ids.shape[0] if input_ids is not None else None
            if shift is None:
                raise ValueError(
                    f"The adapter '{adapter_name}' (CoCoOp) conditions the text prompts on each image, so text "
                    "features exist only for an image: classify with `mudpt_peft.PromptClassifier` (which encodes "
                    "the class prompts per image), or encode inside `text_tower.conditioned(shift)`."
                )
            if image_index is None and (shift.dim() != 2 or shift.shape[0] != rows):
                raise ValueError(
                    f"`conditioned(shift)` needs one shift per text row: shape ({rows}, width), got "
                    f"{tuple(shift.shape)}."
                )
            if image_index is not None and (
                shift.dim() != 2 or image_index.dim() != 1 or image_index.shape[0] != rows
                or image_index.dtype not in (torch.int32, torch.int64)
                or (rows and (int(image_index.min()) < 0 or int(image_index.max()) >= shift.shape[0]))
            ):  # fmt: skip
                raise ValueError(
                    f"`conditioned(shift, image_index)` needs a shift per image, shape (images, width), and an integer "
                    f"image index in 0..images-1 per text row, shape ({rows},); got {tuple(shift.shape)} and "
                    f"{tuple(image_index.shape)}."
                )
        # the shared prefix: one for all rows, or one per image (CoCoOp, given each row's image; not one shift per row)
        if self._share_prefix and (not conditioned or image_index is not None):
            length = shared_prefix.shared_prefix_length(
                self.base_layer, self.spec, inputs, prompts.shape[1], self.prompt_start, self.training
            )
            if length is not None:
                return self._shared_forward(prompts, inputs, length, shift, image_index)
        if image_index is not None:
            shift = shift[image_index]
        elif not conditioned and self._chunk_rows is not None and torch.is_grad_enabled():
            input_ids = inputs.get(self.spec.text_input_ids_arg)
            rows = input_ids.shape[0] if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 2 else 0
            if rows > self._chunk_rows:
                return self._chunked_forward(prompts, inputs, rows)
        with self.slot.filled(prompts, self.prompt_start, shift):
            return self.base_layer(**inputs)


def _is_row_tensor(value: Any, rows: int) -> bool:
    """Whether `value` is a per-row input of a batch of `rows` text rows (split into chunks; the rest is shared)."""
    return isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == rows


def _concat_rows(outputs: list[Any]) -> Any:
    """The outputs of consecutive row chunks as one output: tensors (and the tensors of tuples, lists and
    `ModelOutput`s) concatenated along the rows; anything else is taken from the first chunk."""
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(outputs) if first.dim() >= 1 else first
    if isinstance(first, dict):  # transformers' ModelOutput is an OrderedDict
        merged = {key: _concat_rows([output[key] for output in outputs]) for key in first}
        return type(first)(**merged) if hasattr(first, "to_tuple") else type(first)(merged)
    if isinstance(first, (tuple, list)):
        return type(first)(_concat_rows([output[i] for output in outputs]) for i in range(len(first)))
    return first


class MuDPTVisionTower(MuDPTTower):
    """The vision tower wrapper: its prompts are appended after the last token (a patch attention mask is widened
    with [`FamilySpec.widen_vision_inputs`]).

    When the spec names a `vision_pooling_head` that must not see the prompts (`pool_visual_prompts=False`), that head
    is wrapped here by a [`MuDPTPoolingHead`] sharing this tower's prompt slot.
    """

    def __init__(self, base_layer: nn.Module, spec: FamilySpec) -> None:
        super().__init__(base_layer, spec)
        if spec.vision_pooling_head is not None and not spec.pool_visual_prompts:
            parent_path, _, name = spec.vision_pooling_head.rpartition(".")
            parent = base_layer.get_submodule(parent_path) if parent_path else base_layer
            head = getattr(parent, name, None)
            if isinstance(head, nn.Module) and not isinstance(head, MuDPTLayer):  # a tower without a head keeps none
                setattr(parent, name, MuDPTPoolingHead(head, self.slot))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        adapter_name = self.prompting_adapter()
        if adapter_name is None:
            return self.base_layer(*args, **kwargs)
        prompts = self.used_prompts(adapter_name)
        if self.spec.vision_attention_mask_arg is not None:
            kwargs = self.spec.widen_vision_inputs(
                self.base_layer, prompts.shape[1], named_arguments(self.base_layer, args, kwargs)
            )
            args = ()
        with self.slot.filled(prompts, self.prompt_start):
            return self.base_layer(*args, **kwargs)


class MuDPTTextTokenEmbedding(MuDPTLayer):
    """Wraps the text token embedding: the rows at the prompt positions become the layer-0 text prompts.

    The position embeddings are added afterwards by the original embeddings module, so the prompts get the positions
    right after BOS, exactly as CoOp's placeholder tokens do.
    """

    def forward(self, input_ids: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        embeddings = self.base_layer(input_ids, *args, **kwargs)
        if self.slot.prompts is None:
            return embeddings
        return replace_tokens(embeddings, self.slot.first_layer_prompts(), self.slot.start)


class MuDPTVisionEmbeddings(MuDPTLayer):
    """Wraps the vision embeddings: the layer-0 visual prompts are appended after the patch tokens.

    They come after the position embeddings (they get none) and before any pre-encoder norm.
    """

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        embeddings = self.base_layer(*args, **kwargs)
        prompts = self.slot.prompts
        if prompts is None:
            return embeddings
        expanded = prompts[0].to(embeddings.dtype).unsqueeze(0).expand(embeddings.shape[0], -1, -1)
        return torch.cat([embeddings, expanded], dim=1)


class MuDPTPoolingHead(MuDPTLayer):
    """Wraps a pooling head over the final token sequence (SigLIP's attention-pooling head): the prompt tokens are
    removed from its input, and from any per-token mask given with it, so that it pools the image tokens only.

    Installed by [`MuDPTVisionTower`] when the spec has `vision_pooling_head` and `pool_visual_prompts=False`.
    """

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        prompts = self.slot.prompts
        if prompts is None:
            return self.base_layer(hidden_states, *args, **kwargs)
        length, n_ctx = hidden_states.shape[1], prompts.shape[1]
        start = length - n_ctx if self.slot.start is None else self.slot.start

        def without_prompts(value: Any) -> Any:
            if isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[1] == length:
                return torch.cat([value[:, :start], value[:, start + n_ctx :]], dim=1)
            return value

        args = tuple(without_prompts(value) for value in args)
        kwargs = {name: without_prompts(value) for name, value in kwargs.items()}
        return self.base_layer(without_prompts(hidden_states), *args, **kwargs)


class MuDPTDeepPromptLayer(MuDPTLayer):
    """Wraps encoder layer `layer_index` (>= 1): its input prompt tokens are replaced by that layer's prompts.

    Args:
        base_layer (`nn.Module`): The encoder layer.
        slot ([`PromptSlot`]): The prompt slot of its tower.
        layer_index (`int`): The layer's index in the encoder.
    """

    def __init__(self, base_layer: nn.Module, slot: PromptSlot, layer_index: int) -> None:
        super().__init__(base_layer, slot)
        self.layer_index = layer_index

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        prompts = self.slot.prompts
        if prompts is not None and self.layer_index < prompts.shape[0]:
            if args:
                args = (replace_tokens(args[0], prompts[self.layer_index], self.slot.start), *args[1:])
            else:
                kwargs["hidden_states"] = replace_tokens(
                    kwargs["hidden_states"], prompts[self.layer_index], self.slot.start
                )
        return self.base_layer(*args, **kwargs)
