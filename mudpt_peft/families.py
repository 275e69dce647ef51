"""Per-family specs: where MuDPT's prompts go in each family of dual-encoder (CLIP-like) models.

All model-specific knowledge of the tuner lives here. A [`FamilySpec`] names the modules of one family (the towers,
the text token embedding, the vision embeddings, the encoder layers, an optional pooling head), the towers' forward
arguments, how the text tower pools, and how the inputs of each tower are widened for the learned prompt tokens. The
tuner and the wrappers only ever ask the spec; there is no per-family code path anywhere else.

Supported out of the box (see `docs/models.md`): `CLIPModel`, `MetaClip2Model`, `SiglipModel`, `Siglip2Model`,
`ChineseCLIPModel` and `AltCLIPModel`. The registry is public: [`register_family`] adds a spec for a custom model
without editing the library.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import transformers
from torch import nn

#: How a text tower pools its output (the values of [`FamilySpec.text_pooling`]).
TEXT_POOLINGS = ("eos", "eos_id", "last", "first")


@dataclass(frozen=True)
class FamilySpec:
    """Where MuDPT's prompts go in one family of dual-encoder (CLIP-like) models.

    Module paths are dotted attribute paths; the tower paths are relative to the model, the others relative to the
    tower module. Text prompts are inserted at `text_prompt_start` (right after BOS/CLS, or first without one); visual
    prompts are appended after the last vision token. Everything a family does differently is a field here or a method
    a subclass overrides; use `dataclasses.replace(spec, ...)` to derive a variant of a spec.

    Args:
        name (`str`): Short family name, e.g. `"clip"`.
        model_classes (`tuple[type, ...]`): The model classes this spec applies to (matched with `isinstance`).
        text_tower (`str`): The text tower.
        vision_tower (`str`): The vision tower.
        text_token_embedding (`str`): The token embedding (`nn.Embedding`) of the text tower; its output rows at the
            prompt positions are replaced by the layer-0 text prompts, before the family's embeddings module adds
            position (and token type) embeddings and any embedding norm.
        vision_embeddings (`str`): The module producing the vision tower's input tokens (patch and class tokens with
            their position embeddings); the layer-0 visual prompts are appended to its output.
        text_layers (`str`): The `nn.ModuleList` of text encoder layers.
        vision_layers (`str`): The `nn.ModuleList` of vision encoder layers.
        text_config_attr (`str`): Attribute of the model config holding the text config.
        vision_config_attr (`str`): Attribute of the model config holding the vision config.
        has_bos (`bool`): Whether the tokenizer puts a BOS (or CLS) token first; text prompts go right after it (else
            first).
        text_pooling (`str`): How the text tower pools: `"eos"` (CLIP: the first EOS token; with the legacy
            `eos_token_id == 2` the largest token id), `"eos_id"` (the first token equal to `eos_token_id`, MetaCLIP 2),
            `"last"` (the last position, padding included: SigLIP) or `"first"` (the CLS token: BERT / XLM-R towers).
        text_input_ids_arg (`str`): Name of the text tower's token-ids argument.
        text_attention_mask_arg (`str`, *optional*): Name of its attention-mask argument.
        text_position_ids_arg (`str`, *optional*): Name of its position-ids argument.
        text_token_type_ids_arg (`str`, *optional*): Name of its token-type-ids argument (BERT-style towers).
        text_positions_after_padding (`bool`): Whether the text position ids start at `pad_token_id + 1` and padding
            tokens get position `pad_token_id` (RoBERTa / XLM-R, whose embeddings derive positions from the token ids).
        text_padding (`str`): The tokenizer padding the family was trained with: `"longest"`, or `"max_length"` (SigLIP:
            64 tokens; the text is pooled from the last, padded position).
        vision_attention_mask_arg (`str`, *optional*): Name of the vision tower's patch attention-mask argument
            (SigLIP 2's `pixel_attention_mask`); it is widened with ones so that the visual prompts are attended to.
        vision_pooling_head (`str`, *optional*): A module of the vision tower that pools the final token sequence
            (SigLIP's attention-pooling head), whose first argument is that sequence (and whose optional mask argument
            has one column per token).
        text_causal (`bool`): Whether the text tower is causal (each token attends only to earlier tokens: CLIP's), so
            that the prefix every class prompt shares (BOS and the context tokens) has the same hidden states in every
            row and can be encoded once ([`~mudpt_peft.layer.MuDPTTextTower.shared_prefix`]). `False` for
            bidirectional towers (SigLIP, Chinese-CLIP, AltCLIP).
        pool_visual_prompts (`bool`): Whether `vision_pooling_head` sees the visual prompt tokens. If `False`, they are
            removed from its input (and from its mask), so that it pools the image tokens only.
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
    text_pooling: str = "eos"
    text_input_ids_arg: str = "input_ids"
    text_attention_mask_arg: str | None = "attention_mask"
    text_position_ids_arg: str | None = "position_ids"
    text_token_type_ids_arg: str | None = None
    text_positions_after_padding: bool = False
    text_padding: str = "longest"
    vision_attention_mask_arg: str | None = None
    vision_pooling_head: str | None = None
    pool_visual_prompts: bool = True
    text_causal: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"`name` must be a non-empty string, got {self.name!r}.")
        classes = self.model_classes
        if not isinstance(classes, tuple) or not classes or not all(isinstance(c, type) for c in classes):
            raise ValueError(
                f"`model_classes` must be a non-empty tuple of classes (e.g. `(MyDualEncoder,)`), got {classes!r}."
            )
        for field_name in (
            "text_tower",
            "vision_tower",
            "text_token_embedding",
            "vision_embeddings",
            "text_layers",
            "vision_layers",
            "text_config_attr",
            "vision_config_attr",
            "text_input_ids_arg",
        ):
            value = getattr(self, field_name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"`{field_name}` must be a non-empty (dotted) name, got {value!r}.")
        if self.text_pooling not in TEXT_POOLINGS:
            raise ValueError(f"`text_pooling` must be one of {', '.join(TEXT_POOLINGS)}; got {self.text_pooling!r}.")
        if self.text_pooling == "first" and not self.has_bos:
            raise ValueError(
                "`text_pooling='first'` pools the first token, where the text prompts go when `has_bos=False`; a "
                "CLS-pooled text tower needs `has_bos=True` (the prompts then follow the CLS token)."
            )
        if self.text_padding not in ("longest", "max_length"):
            raise ValueError(f"`text_padding` must be 'longest' or 'max_length', got {self.text_padding!r}.")

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

    def geometry(self, model: nn.Module) -> dict[str, int]:
        """The widths and layer counts of both towers: `text_width`, `vision_width`, `text_layers`, `vision_layers`."""
        return {
            "text_width": self.text_width(model),
            "vision_width": self.vision_width(model),
            "text_layers": self.num_text_layers(model),
            "vision_layers": self.num_vision_layers(model),
        }

    @property
    def text_prompt_start(self) -> int:
        """Index of the first text prompt token: right after BOS, or first when there is no BOS."""
        return 1 if self.has_bos else 0

    # ----------------------------------------------------------------------------------------------------------------
    # text inputs

    def text_max_length(self, text_tower: nn.Module) -> int:
        """The longest token sequence the text tower's position embeddings allow.

        `max_position_embeddings`, less `pad_token_id + 1` for RoBERTa / XLM-R towers whose positions start there.
        """
        config = text_tower.config
        if self.text_positions_after_padding:
            return config.max_position_embeddings - config.pad_token_id - 1
        return config.max_position_embeddings

    def text_pooling_index(self, text_tower: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        """Index of the token the text tower pools from, per row, found as transformers does."""
        if self.text_pooling == "first":
            return torch.zeros(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
        if self.text_pooling == "last":
            return torch.full((input_ids.shape[0],), input_ids.shape[1] - 1, dtype=torch.long, device=input_ids.device)
        eos_token_id = text_tower.config.eos_token_id
        if self.text_pooling == "eos" and eos_token_id == 2:  # CLIP's legacy configs: EOS is the largest id
            return input_ids.to(torch.int).argmax(dim=-1)
        return (input_ids.to(torch.int) == eos_token_id).int().argmax(dim=-1)

    def text_placeholder_id(self, text_tower: nn.Module) -> int:
        """A token id for the prompt positions (replaced by the prompts in the token embedding).

        It changes neither the EOS search nor CLIP's legacy `argmax` pooling (CLIP and MetaCLIP 2 keep their historical
        choice, 0, or 1 when EOS is 0). For the other families it is the smallest of 0, 1, 2 that is neither the EOS
        nor the padding id: RoBERTa / XLM-R towers derive position ids from the token ids and count every non-padding
        token, and trailing padding ids are recognised as padding.
        """
        config = text_tower.config
        if self.text_pooling in ("eos", "eos_id") and not self.text_positions_after_padding:
            return 1 if config.eos_token_id == 0 else 0
        reserved = {config.eos_token_id, getattr(config, "pad_token_id", None)}
        return next(token_id for token_id in range(3) if token_id not in reserved)

    def text_kept_lengths(
        self, text_tower: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Per row, how many leading columns must survive when trailing padding is dropped to make room for prompts.

        The real tokens: from the attention mask; without one, up to the pooled EOS token, or up to the last token that
        is not `pad_token_id`. In that last case a tower pooling the `"last"` position keeps one more column, because
        SigLIP's tokenizer pads with its EOS token `</s>`: the EOS stays, and the pooled last position stays a `</s>`
        token, as in training. A row without an EOS token (and without an attention mask) keeps every column: nothing
        tells its padding from its text. (With CLIP's legacy configs, `eos_token_id == 2`, the EOS is the largest id
        of the vocabulary, `vocab_size - 1`, which transformers' `argmax` pooling relies on.)
        """
        length = input_ids.shape[1]
        if attention_mask is not None:
            positions = torch.arange(1, length + 1, device=attention_mask.device)
            real = (positions * attention_mask.bool()).amax(dim=-1)
        elif self.text_pooling in ("eos", "eos_id"):
            pooled = self.text_pooling_index(text_tower, input_ids)
            config = text_tower.config
            legacy = self.text_pooling == "eos" and config.eos_token_id == 2
            eos = config.vocab_size - 1 if legacy else config.eos_token_id
            found = input_ids.gather(1, pooled[:, None]).squeeze(1) == eos
            real = torch.where(found, pooled + 1, torch.full_like(pooled, length))
        else:
            pad_token_id = getattr(text_tower.config, "pad_token_id", None)
            if pad_token_id is None:
                real = torch.full((input_ids.shape[0],), length, device=input_ids.device)
            else:
                not_padding = (input_ids != pad_token_id).long()
                positions = torch.arange(1, length + 1, device=input_ids.device)
                real = (positions * not_padding).amax(dim=-1)
                if self.text_pooling == "last":
                    real = (real + 1).clamp(max=length)
        return real

    def widen_position_ids(self, text_tower: nn.Module, position_ids: torch.Tensor, n_ctx: int) -> torch.Tensor:
        """Explicit position ids with `n_ctx` prompt positions inserted at `text_prompt_start`.

        The prompts get the positions right after the preceding token, the following tokens shift by `n_ctx` (RoBERTa /
        XLM-R padding positions, `pad_token_id`, stay as they are).
        """
        start = self.text_prompt_start
        offsets = torch.arange(1, n_ctx + 1, device=position_ids.device, dtype=position_ids.dtype)
        if start > 0:
            prompt_positions = position_ids[..., start - 1 : start] + offsets
        else:
            first = text_tower.config.pad_token_id + 1 if self.text_positions_after_padding else 0
            prompt_positions = (offsets - 1 + first).expand(*position_ids.shape[:-1], n_ctx)
        following = position_ids[..., start:]
        if self.text_positions_after_padding:
            following = torch.where(following == text_tower.config.pad_token_id, following, following + n_ctx)
        else:
            following = following + n_ctx
        return torch.cat([position_ids[..., :start], prompt_positions, following], dim=-1)

    def widen_text_inputs(self, text_tower: nn.Module, n_ctx: int, inputs: dict[str, Any]) -> dict[str, Any]:
        """Make room for `n_ctx` prompt tokens at `text_prompt_start` in the text tower's named forward arguments.

        The token ids get placeholder ids there (replaced by the prompts in the token embedding), the attention mask
        gets ones, token type ids repeat the type of the preceding token (of the first token without BOS), and explicit
        position ids are widened by [`~FamilySpec.widen_position_ids`] (with the default position ids, the prompts get
        the positions right after BOS). When the widened sequence would exceed [`~FamilySpec.text_max_length`], trailing
        padding columns are dropped, so that the sequence ends at the last position; when tokens that must be kept
        (see [`~FamilySpec.text_kept_lengths`]) would be lost, a `ValueError` says which `max_length` to tokenize with.
        Inputs longer than the tower's positions are refused with that `ValueError` whatever they hold, as the tower
        itself refuses them without an adapter: they are never cut silently.

        Args:
            text_tower (`nn.Module`): The (unwrapped) text tower.
            n_ctx (`int`): The number of prompt tokens.
            inputs (`dict[str, Any]`): The text tower's forward arguments by name.

        Returns:
            `dict[str, Any]`: The widened arguments.
        """
        inputs = dict(inputs)
        ids_arg = self.text_input_ids_arg
        input_ids = inputs.get(ids_arg)
        if input_ids is None:
            raise ValueError(
                f"MuDPT inserts its text prompts among the token ids, so the text tower needs `{ids_arg}` "
                "(`inputs_embeds` are not supported)."
            )
        input_ids = input_ids.view(-1, input_ids.shape[-1])
        per_token = {
            name: inputs[name].view(-1, inputs[name].shape[-1])
            for name in (self.text_attention_mask_arg, self.text_token_type_ids_arg)
            if name is not None and inputs.get(name) is not None
        }
        attention_mask = per_token.get(self.text_attention_mask_arg) if self.text_attention_mask_arg else None
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"MuDPT widens a 2D text attention mask of shape (batch, length) = {tuple(input_ids.shape)}, got one "
                f"of shape {tuple(inputs[self.text_attention_mask_arg].shape)}."
            )
        position_name = self.text_position_ids_arg
        position_ids = inputs.get(position_name) if position_name is not None else None

        max_length = self.text_max_length(text_tower)
        length = input_ids.shape[1]
        if length > max_length:  # as the tower itself refuses them (CLIP: "Sequence length must be less than ...")
            raise ValueError(
                f"The text inputs are {length} tokens long, but the text tower has only {max_length} positions, of "
                f"which {n_ctx} go to the learned prompt tokens. Tokenize with `max_length={max_length - n_ctx}, "
                f"truncation=True` ({max_length} positions - n_ctx)."
            )
        if length + n_ctx > max_length:
            needed = int(self.text_kept_lengths(text_tower, input_ids, attention_mask).amax().item())
            if needed + n_ctx > max_length:
                raise ValueError(
                    f"The text inputs hold {needed} tokens that must be kept, and {n_ctx} learned prompt tokens are "
                    f"inserted, but the text tower has only {max_length} positions. Tokenize with "
                    f"`max_length={max_length - n_ctx}, truncation=True` ({max_length} positions - n_ctx)."
                )
            keep = max_length - n_ctx
            input_ids = input_ids[:, :keep]
            per_token = {name: value[:, :keep] for name, value in per_token.items()}
            position_ids = position_ids[..., :keep] if position_ids is not None else None

        start = self.text_prompt_start
        placeholder = input_ids.new_full((input_ids.shape[0], n_ctx), self.text_placeholder_id(text_tower))
        inputs[ids_arg] = torch.cat([input_ids[:, :start], placeholder, input_ids[:, start:]], dim=1)
        for name, value in per_token.items():
            if name == self.text_attention_mask_arg:
                inserted = value.new_ones((value.shape[0], n_ctx))
            else:  # token types: the type of the preceding token
                source = max(start - 1, 0)
                inserted = value[:, source : source + 1].expand(-1, n_ctx)
            inputs[name] = torch.cat([value[:, :start], inserted, value[:, start:]], dim=1)
        if position_ids is not None:
            inputs[position_name] = self.widen_position_ids(text_tower, position_ids, n_ctx)
        return inputs

    # ----------------------------------------------------------------------------------------------------------------
    # vision inputs

    def widen_vision_inputs(self, vision_tower: nn.Module, n_ctx: int, inputs: dict[str, Any]) -> dict[str, Any]:
        """Widen the vision tower's named forward arguments for `n_ctx` visual prompts appended after the last token.

        A patch attention mask (`vision_attention_mask_arg`, e.g. SigLIP 2's `pixel_attention_mask`) gets `n_ctx`
        columns of ones at the end, so that every token attends to the prompts and the prompts to every real patch.
        Padding patches stay masked. Other arguments are returned as they are.

        Args:
            vision_tower (`nn.Module`): The (unwrapped) vision tower.
            n_ctx (`int`): The number of prompt tokens.
            inputs (`dict[str, Any]`): The vision tower's forward arguments by name.

        Returns:
            `dict[str, Any]`: The widened arguments.
        """
        name = self.vision_attention_mask_arg
        if name is None or inputs.get(name) is None:
            return inputs
        mask = inputs[name]
        if mask.dim() != 2:
            raise ValueError(
                f"MuDPT widens a 2D `{name}` of shape (batch, patches); got one of shape {tuple(mask.shape)}."
            )
        return {**inputs, name: torch.cat([mask, mask.new_ones((mask.shape[0], n_ctx))], dim=1)}


def _transformers_class(name: str) -> tuple[type, ...]:
    """`(transformers.<name>,)`, or `()` when the installed transformers does not have it."""
    try:
        return (getattr(transformers, name),)
    except (AttributeError, ImportError):
        return ()


#: `transformers.CLIPModel`: causal text tower pooled at the EOS token, text prompts after BOS; CLS-pooled ViT.
CLIP_SPEC = FamilySpec(name="clip", model_classes=_transformers_class("CLIPModel"), text_causal=True)

#: `transformers.MetaClip2Model`: CLIP's layout and module names; its text tower always pools the first token equal to
#: `eos_token_id` (no legacy `argmax` over ids, although the released configs set `eos_token_id=2`).
METACLIP_2_SPEC = dataclasses.replace(
    CLIP_SPEC, name="metaclip_2", model_classes=_transformers_class("MetaClip2Model"), text_pooling="eos_id"
)

#: `transformers.SiglipModel`: no BOS (text prompts at 0..n_ctx-1), bidirectional text tower pooled at the last,
#: padded position (trained with `padding="max_length"`, 64 tokens); no CLS token, an attention-pooling head over the
#: image tokens, which by default does not see the visual prompts.
SIGLIP_SPEC = FamilySpec(
    name="siglip",
    model_classes=_transformers_class("SiglipModel"),
    has_bos=False,
    text_pooling="last",
    text_padding="max_length",
    vision_pooling_head="head",
    pool_visual_prompts=False,
)

#: `transformers.Siglip2Model`: SigLIP's text layout; variable-resolution patches with a patch attention mask
#: (`pixel_attention_mask`), which is widened so that the visual prompts are attended to.
SIGLIP2_SPEC = dataclasses.replace(
    SIGLIP_SPEC,
    name="siglip2",
    model_classes=_transformers_class("Siglip2Model"),
    vision_attention_mask_arg="pixel_attention_mask",
)

#: `transformers.ChineseCLIPModel`: BERT text tower (bidirectional, CLS pooling, token type ids), text prompts after
#: CLS; CLIP-style ViT.
CHINESE_CLIP_SPEC = FamilySpec(
    name="chinese_clip",
    model_classes=_transformers_class("ChineseCLIPModel"),
    text_token_embedding="embeddings.word_embeddings",
    text_layers="encoder.layer",
    text_pooling="first",
    text_token_type_ids_arg="token_type_ids",
)

#: `transformers.AltCLIPModel`: XLM-R text tower (bidirectional, CLS pooling, position ids from `pad_token_id + 1`),
#: text prompts after `<s>`; CLIP-style ViT.
ALTCLIP_SPEC = FamilySpec(
    name="altclip",
    model_classes=_transformers_class("AltCLIPModel"),
    text_token_embedding="roberta.embeddings.word_embeddings",
    text_layers="roberta.encoder.layers",
    text_pooling="first",
    text_token_type_ids_arg="token_type_ids",
    text_positions_after_padding=True,
)

#: The registry, in matching order: specs registered later come first (the built-in families match disjoint classes).
_FAMILY_SPECS: list[FamilySpec] = [
    spec
    for spec in reversed((CLIP_SPEC, METACLIP_2_SPEC, SIGLIP_SPEC, SIGLIP2_SPEC, CHINESE_CLIP_SPEC, ALTCLIP_SPEC))
    if spec.model_classes
]


def register_family(spec: FamilySpec) -> None:
    """Add `spec` to the registry; specs registered later take precedence over earlier ones for the same class.

    Args:
        spec ([`FamilySpec`]): The spec of a model family.

    Example:

        ```py
        >>> import dataclasses, mudpt_peft

        >>> # SigLIP with an attention-pooling head that also pools the visual prompts
        >>> mudpt_peft.register_family(dataclasses.replace(mudpt_peft.SIGLIP_SPEC, pool_visual_prompts=True))
        ```
    """
    if not isinstance(spec, FamilySpec):
        raise ValueError(f"Expected a FamilySpec, got {type(spec).__name__}.")
    if spec not in _FAMILY_SPECS:
        _FAMILY_SPECS.insert(0, spec)


def registered_families() -> list[FamilySpec]:
    """The registered specs, in matching order (the first that matches a model applies)."""
    return list(_FAMILY_SPECS)


def supported_model_classes() -> list[str]:
    """Names of the model classes that have a registered spec: the built-in families first, then the registered ones,
    in the order they were registered."""
    names = (cls.__name__ for spec in reversed(_FAMILY_SPECS) for cls in spec.model_classes)
    return list(dict.fromkeys(names))


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
