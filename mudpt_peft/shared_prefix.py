"""Encode the shared text prefix of a causal text tower once for all class prompts.

In a causal text tower (CLIP's), every class prompt starts with the same tokens at the same positions: BOS and the
`n_ctx` learned context tokens, replaced by the same deep prompts at every layer below `depth`, and any template words
before the class name. A token of a causal
tower attends only to earlier tokens, so the hidden states of that prefix are identical in every row. They are
computed here once, for one row; each row's own tokens (the class name, EOS, padding) then attend to the prefix's keys
and values, concatenated before their own causal keys and values. The result equals the unshared forward up to
floating-point summation order, forward and backward (the gradients of the prefix are the sum over rows, as in the
unshared forward). Image-conditioned prompts (CoCoOp) shift the layer-0 context by a function of each image, so the
prefix is shared by the rows of one image: one prefix is encoded per image (`groups`), and each row attends to its
image's.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as module_hooks
from torch.utils.checkpoint import checkpoint

from ._utils import replace_tokens
from .families import FamilySpec

_ALLOWED_ATTENTION = ("eager", "sdpa")


def _layers(text_tower: nn.Module) -> list[nn.Module]:
    """The encoder layers of `text_tower`, unwrapped from any MuDPT wrapper."""
    return [getattr(layer, "base_layer", layer) for layer in text_tower.encoder.layers]


def shared_prefix_length(
    text_tower: nn.Module, spec: FamilySpec, inputs: dict[str, Any], n_ctx: int, start: int | None, training: bool
) -> int | None:
    """The length of the prefix shared by every row of `inputs` (widened text inputs), or `None` when the tower or
    the inputs do not allow sharing it (the unshared forward then runs).

    Sharing needs a causal text tower (`spec.text_causal`) with CLIP's module layout and an `"eager"` or `"sdpa"`
    attention, EOS pooling, prompts after a leading token run (`start` not `None`), no inputs beyond token ids and an
    attention mask (no position ids, no request for hidden states or attentions, no `return_dict=False`), at least
    two rows, no padding inside the prefix, no attention dropout in training, no gradient checkpointing of the layers,
    and no forward hook on the tower, its encoder, layers or attention modules (their `forward` is not called). The
    prefix is the longest run of leading columns equal in every row (BOS, the context tokens, and any
    template words before the class name: "a photo of a" in "a photo of a {}."), at most all but the last column; it
    must contain the prompts.
    """
    if not spec.text_causal or start is None or spec.text_pooling not in ("eos", "eos_id"):
        return None
    if torch.compiler.is_compiling():  # the prefix's length depends on the token values: keep one graph
        return None
    if not all(hasattr(text_tower, name) for name in ("embeddings", "encoder", "final_layer_norm")):
        return None
    config = getattr(text_tower, "config", None)
    if getattr(config, "_attn_implementation", None) not in _ALLOWED_ATTENTION:
        return None
    if training and getattr(config, "attention_dropout", 0.0):
        return None
    allowed = {spec.text_input_ids_arg, spec.text_attention_mask_arg}
    for name, value in inputs.items():
        if name not in allowed and value is not None and not (name == "return_dict" and value is True):
            return None
    input_ids = inputs.get(spec.text_input_ids_arg)
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[0] < 2:
        return None
    tokens, prompted = input_ids.shape[1], start + n_ctx
    if tokens <= prompted:
        return None
    layers = _layers(text_tower)
    needed = ("self_attn", "layer_norm1", "layer_norm2", "mlp")
    if not all(all(hasattr(layer, name) for name in needed) for layer in layers):
        return None
    if training and any(getattr(layer, "gradient_checkpointing", False) for layer in layers):
        return None
    wrapped = list(text_tower.encoder.layers)  # the deep-prompt wrappers (or the layers themselves)
    if _hooked([text_tower, text_tower.encoder, *wrapped, *layers, *(layer.self_attn for layer in layers)]):
        return None
    # the longest run of leading columns equal in every row and attended everywhere (BOS, the prompts' placeholder
    # ids, and any template words before the class name), leaving each row at least one token of its own
    common = (input_ids == input_ids[:1]).all(dim=0)
    mask = inputs.get(spec.text_attention_mask_arg) if spec.text_attention_mask_arg else None
    if mask is not None:
        common = common & (mask != 0).all(dim=0)
    differing = (~common).nonzero()
    length = min(int(differing[0, 0]) if differing.numel() else tokens, tokens - 1)
    return length if length >= prompted else None


def _hooked(modules: list[nn.Module]) -> bool:
    """Whether a forward hook would see any of `modules`, whose `forward` the shared encoding does not call (it calls
    their submodules): a hook of the caller's (accelerate's device placement, a feature probe) needs the tower's own
    forward, so nothing is shared then."""
    if module_hooks._global_forward_hooks or module_hooks._global_forward_pre_hooks:
        return True
    return any(module._forward_hooks or module._forward_pre_hooks for module in modules)


def _project(attention: nn.Module, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, keys and values `(rows, heads, tokens, head_dim)` of `hidden` `(rows, tokens, width)`."""
    shape = (*hidden.shape[:-1], -1, attention.head_dim)
    return tuple(
        projection(hidden).view(shape).transpose(1, 2)
        for projection in (attention.q_proj, attention.k_proj, attention.v_proj)
    )


def _attend(
    attention: nn.Module, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Attention of `queries` over `keys` / `values` where the boolean `mask` is true, as the tower's attention
    implementation computes it: `"eager"` takes the softmax in float32 whatever the dtype (as transformers does),
    `"sdpa"` calls `torch.nn.functional.scaled_dot_product_attention`."""
    if attention.config._attn_implementation == "eager":
        weights = torch.matmul(queries, keys.transpose(-1, -2)) * attention.scale
        weights = weights.masked_fill(~mask, float("-inf"))
        weights = F.softmax(weights, dim=-1, dtype=torch.float32).to(queries.dtype)
        return torch.matmul(weights, values)
    return F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, scale=attention.scale)


def encode_prefix(
    text_tower: nn.Module, prefix_embeddings: torch.Tensor, prompts: torch.Tensor, start: int
) -> tuple[torch.Tensor, ...]:
    """Run the prefixes `(prefixes, length, width)` (their layer-0 embeddings, prompts inserted) through the encoder:
    one prefix shared by all rows, or one per image for image-conditioned prompts.

    Returns the keys and values of every layer (`keys_0, values_0, keys_1, ...`, each `(prefixes, heads, length,
    head_dim)`) and, last, the prefixes' final hidden states after the final layer norm `(prefixes, length, width)`.
    """
    hidden, cache = prefix_embeddings, []
    length = hidden.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=hidden.device).tril()
    for index, layer in enumerate(_layers(text_tower)):
        if 1 <= index < prompts.shape[0]:
            hidden = replace_tokens(hidden, prompts[index], start)
        attention = layer.self_attn
        queries, keys, values = _project(attention, layer.layer_norm1(hidden))
        attended = _attend(attention, queries, keys, values, causal)
        hidden = hidden + attention.out_proj(attended.transpose(1, 2).reshape(hidden.shape))
        hidden = hidden + layer.mlp(layer.layer_norm2(hidden))
        cache += [keys, values]
    return (*cache, text_tower.final_layer_norm(hidden))


def encode_rows(
    text_tower: nn.Module,
    spec: FamilySpec,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    length: int,
    groups: torch.Tensor | None,
    *prefix: torch.Tensor,
) -> Any:
    """The tower's output for the rows `input_ids` `(rows, tokens)` whose first `length` tokens are a prefix encoded by
    [`encode_prefix`] (`prefix`): a `BaseModelOutputWithPooling` as the unshared forward returns it. With `groups`
    `(rows,)`, row `r` continues prefix `groups[r]`; without, every row continues the one prefix."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    rows, tokens = input_ids.shape
    own = tokens - length
    positions = text_tower.embeddings.position_ids[:, length:tokens]
    hidden = text_tower.embeddings(input_ids=input_ids[:, length:], position_ids=positions)
    visible = torch.ones(own, own, dtype=torch.bool, device=hidden.device).tril()
    visible = visible.expand(rows, 1, own, own)
    if attention_mask is not None:
        visible = visible & attention_mask[:, length:].bool()[:, None, None, :]
    mask = torch.cat([visible.new_ones(rows, 1, own, length), visible], dim=-1)
    for index, layer in enumerate(_layers(text_tower)):
        attention = layer.self_attn
        queries, keys, values = _project(attention, layer.layer_norm1(hidden))
        prefix_keys = _per_row(prefix[2 * index], groups, rows)
        prefix_values = _per_row(prefix[2 * index + 1], groups, rows)
        keys = torch.cat([prefix_keys.to(keys.dtype), keys], dim=2)
        values = torch.cat([prefix_values.to(values.dtype), values], dim=2)
        attended = _attend(attention, queries, keys, values, mask)
        hidden = hidden + attention.out_proj(attended.transpose(1, 2).reshape(hidden.shape))
        hidden = hidden + layer.mlp(layer.layer_norm2(hidden))
    final = _per_row(prefix[-1], groups, rows).to(hidden.dtype)
    last_hidden_state = torch.cat([final, text_tower.final_layer_norm(hidden)], dim=1)
    pooled = spec.text_pooling_index(text_tower, input_ids).to(last_hidden_state.device)
    pooler_output = last_hidden_state[torch.arange(rows, device=last_hidden_state.device), pooled]
    return BaseModelOutputWithPooling(last_hidden_state=last_hidden_state, pooler_output=pooler_output)


def _per_row(prefix: torch.Tensor, groups: torch.Tensor | None, rows: int) -> torch.Tensor:
    """`prefix` `(prefixes, ...)` for each of `rows` rows: the one prefix broadcast, or row `r`'s `groups[r]`."""
    if groups is None:
        return prefix.expand(rows, *prefix.shape[1:])
    return prefix.index_select(0, groups)


def encode_rows_chunked(
    text_tower: nn.Module,
    spec: FamilySpec,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    length: int,
    groups: torch.Tensor | None,
    prefix: tuple[torch.Tensor, ...],
    chunk_rows: int,
) -> list[Any]:
    """[`encode_rows`] `chunk_rows` rows at a time, every chunk but the last under a non-reentrant checkpoint (the
    prefix is encoded once, outside the chunks; its gradient sums the chunks')."""
    rows, outputs = input_ids.shape[0], []
    for first in range(0, rows, chunk_rows):
        part_ids = input_ids[first : first + chunk_rows]
        part_mask = attention_mask[first : first + chunk_rows] if attention_mask is not None else None
        part_groups = groups[first : first + chunk_rows] if groups is not None else None
        arguments = (text_tower, spec, part_ids, part_mask, length, part_groups, *prefix)
        if first + chunk_rows >= rows:
            outputs.append(encode_rows(*arguments))
        else:
            outputs.append(checkpoint(encode_rows, *arguments, use_reentrant=False))
    return outputs
