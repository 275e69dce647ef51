"""Per-family specs: where MuDPT's prompts go in each family of dual-encoder (CLIP-like) models.

All model-specific knowledge of the tuner lives here. A [`FamilySpec`] names the modules of one family (the towers,
the text token embedding, the vision embeddings, the encoder layers) and says how the text inputs are widened for the
learned prompt tokens. The registry is public: [`register_family`] adds a spec for a custom model without editing the
library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import CLIPModel


@dataclass(frozen=True)
class FamilySpec:
    """Where MuDPT's prompts go in one family of CLIP-like models.

    Module paths are dotted attribute paths; the tower paths are relative to the model, the others relative to the
    tower module.

    Args:
        name (`str`): Short family name, e.g. `"clip"`.
        model_classes (`tuple[type, ...]`): The model classes this spec applies to (matched with `isinstance`).
        text_tower (`str`): The text tower, whose forward takes `input_ids`, `attention_mask`, `position_ids`.
        vision_tower (`str`): The vision tower.
        text_token_embedding (`str`): The token embedding (`nn.Embedding`) of the text tower; its output rows at the
            prompt positions are replaced by the layer-0 text prompts, before the position embeddings are added.
        vision_embeddings (`str`): The module producing the vision tower's input tokens (patch and class tokens with
            their position embeddings); the layer-0 visual prompts are appended to its output.
        text_layers (`str`): The `nn.ModuleList` of text encoder layers.
        vision_layers (`str`): The `nn.ModuleList` of vision encoder layers.
        text_config_attr (`str`): Attribute of the model config holding the text config.
        vision_config_attr (`str`): Attribute of the model config holding the vision config.
        has_bos (`bool`): Whether the tokenizer puts a BOS token first; text prompts go right after it (else first).
    """

    name: str
    model_classes: tuple[type, ...]
    text_tower: str = "text_model"
    vision_tower: str = "vision_model"
    text_token_embedding: str = "embeddings.token_embedding"
    vision_embeddings: str = "embeddings"
    text_layers: str = "encoder.layers"
    vision_layers: str = "encoder.layers"
    text_config_attr: str = "text_config"
    vision_config_attr: str = "vision_config"
    has_bos: bool = True

    # ----------------------------------------------------------------------------------------------------------------
    # geometry

    def matches(self, model: nn.Module) -> bool:
        """Whether this spec applies to `model`."""
        return isinstance(model, self.model_classes)

    def text_config(self, model: nn.Module) -> Any:
        """The text tower's config."""
        return getattr(model.config, self.text_config_attr)

    def vision_config(self, model: nn.Module) -> Any:
        """The vision tower's config."""
        return getattr(model.config, self.vision_config_attr)

    def text_width(self, model: nn.Module) -> int:
        """Hidden size of the text tower."""
        return self.text_config(model).hidden_size

    def vision_width(self, model: nn.Module) -> int:
        """Hidden size of the vision tower."""
        return self.vision_config(model).hidden_size

    def num_text_layers(self, model: nn.Module) -> int:
        """Number of text encoder layers."""
        return self.text_config(model).num_hidden_layers

    def num_vision_layers(self, model: nn.Module) -> int:
        """Number of vision encoder layers."""
        return self.vision_config(model).num_hidden_layers

    @property
    def text_prompt_start(self) -> int:
        """Index of the first text prompt token: right after BOS, or first when there is no BOS."""
        return 1 if self.has_bos else 0

    # ----------------------------------------------------------------------------------------------------------------
    # text inputs

    def text_pooling_index(self, text_tower: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        """Index of the token the text tower pools from, per row (CLIP: the EOS token, found as transformers does)."""
        eos_token_id = text_tower.config.eos_token_id
        if eos_token_id == 2:  # legacy configs: EOS is the largest id
            return input_ids.to(torch.int).argmax(dim=-1)
        return (input_ids.to(torch.int) == eos_token_id).int().argmax(dim=-1)

    def text_placeholder_id(self, text_tower: nn.Module) -> int:
        """A token id for the prompt positions that changes neither the EOS search nor the `argmax` pooling."""
        eos_token_id = text_tower.config.eos_token_id
        return 1 if eos_token_id == 0 else 0

    def widen_text_inputs(
        self,
        text_tower: nn.Module,
        n_ctx: int,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Make room for `n_ctx` prompt tokens at `text_prompt_start`.

        The token ids get placeholder ids there (replaced by the prompts in the token embedding), the attention mask
        gets ones, and explicit position ids give the prompts the positions right after the preceding token and
        shift the following tokens by `n_ctx` (with the default position ids this is `0..L+n_ctx-1`). When the
        widened sequence would exceed the position embeddings, trailing padding columns are dropped; when real
        tokens would be lost, a `ValueError` says which `max_length` to tokenize with.
        """
        if input_ids is None:
            raise ValueError("You have to specify input_ids")
        input_ids = input_ids.view(-1, input_ids.shape[-1])
        if attention_mask is not None:
            attention_mask = attention_mask.view(-1, attention_mask.shape[-1])
        max_positions = text_tower.config.max_position_embeddings
        length = input_ids.shape[1]
        if length + n_ctx > max_positions:
            if attention_mask is not None:
                real = attention_mask.bool()
                needed = int((torch.arange(1, length + 1, device=real.device) * real).amax().item())
            else:
                needed = int(self.text_pooling_index(text_tower, input_ids).amax().item()) + 1
            if needed + n_ctx > max_positions:
                raise ValueError(
                    f"The text inputs hold {needed} real tokens, and {n_ctx} learned prompt tokens are inserted, but "
                    f"the text tower has only {max_positions} positions. Tokenize with "
                    f"`max_length={max_positions - n_ctx}, truncation=True` (max_position_embeddings - n_ctx)."
                )
            keep = max_positions - n_ctx
            input_ids = input_ids[:, :keep]
            attention_mask = attention_mask[:, :keep] if attention_mask is not None else None
            position_ids = position_ids[..., :keep] if position_ids is not None else None

        start = self.text_prompt_start
        batch = input_ids.shape[0]
        placeholder = input_ids.new_full((batch, n_ctx), self.text_placeholder_id(text_tower))
        input_ids = torch.cat([input_ids[:, :start], placeholder, input_ids[:, start:]], dim=1)
        if attention_mask is not None:
            ones = attention_mask.new_ones((attention_mask.shape[0], n_ctx))
            attention_mask = torch.cat([attention_mask[:, :start], ones, attention_mask[:, start:]], dim=1)
        if position_ids is not None:
            offsets = torch.arange(1, n_ctx + 1, device=position_ids.device, dtype=position_ids.dtype)
            if start > 0:
                prompt_positions = position_ids[..., start - 1 : start] + offsets
            else:
                prompt_positions = (offsets - 1).expand(*position_ids.shape[:-1], n_ctx)
            position_ids = torch.cat(
                [position_ids[..., :start], prompt_positions, position_ids[..., start:] + n_ctx], dim=-1
            )
        return input_ids, attention_mask, position_ids


#: The spec of `transformers.CLIPModel`.
CLIP_SPEC = FamilySpec(name="clip", model_classes=(CLIPModel,))

_FAMILY_SPECS: list[FamilySpec] = [CLIP_SPEC]


def register_family(spec: FamilySpec) -> None:
    """Add `spec` to the registry; specs registered later take precedence over earlier ones for the same class.

    Args:
        spec ([`FamilySpec`]): The spec of a model family.
    """
    if not isinstance(spec, FamilySpec):
        raise ValueError(f"Expected a FamilySpec, got {type(spec).__name__}.")
    if spec not in _FAMILY_SPECS:
        _FAMILY_SPECS.insert(0, spec)


def supported_model_classes() -> list[str]:
    """Names of the model classes that have a registered spec."""
    return sorted({cls.__name__ for spec in _FAMILY_SPECS for cls in spec.model_classes})


def get_family_spec(model: nn.Module) -> FamilySpec:
    """The spec for `model`.

    Raises:
        ValueError: if no registered spec applies, listing the supported classes.
    """
    for spec in _FAMILY_SPECS:
        if spec.matches(model):
            return spec
    raise ValueError(
        f"MuDPT does not support {type(model).__name__}: it needs a dual-encoder model with a text and a vision tower. "
        f"Supported classes: {', '.join(supported_model_classes())}. Load the full model (e.g. `CLIPModel`), or "
        f"register a `mudpt_peft.FamilySpec` for your model class with `mudpt_peft.register_family`."
    )
