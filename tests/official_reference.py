"""An independent re-implementation of the official prompt-learning forwards, on a tiny OpenAI-layout CLIP.

The official code of CoOp, VPT, IVLP, MaPLe and MuDPT (`trainers/mudpt.py`, the linear variant, in its current and
its early revision, and `trainers/uumudpt.py`, the Injection Model) runs on OpenAI's CLIP implementation, not on
transformers. This module rewrites what those forwards compute, from their semantics and in plain torch (no code of
theirs is used), so that the tuner on an HF `CLIPModel` can be compared with them on the same weights:

* `make_openai_clip` builds a tiny random CLIP as an OpenAI-layout state dict (`token_embedding.weight`,
  `transformer.resblocks.{i}.attn.in_proj_weight`, `visual.conv1.weight`, `visual.proj`, ...);
* `openai_to_hf` converts it to a `transformers.CLIPModel`;
* `make_official_state` draws random prompt parameters under the official checkpoint key names of a method;
* `official_logits` runs the method's official forward (fp32 is the truth: the official fp16 casts are left out);
* `official_token_ids` / `tuner_token_ids` build the tokenized class prompts each side gets;
* `tuner_config` and `load_into_tuner` give the equivalent `MuDPTConfig` and copy an official state into a tuner.

Shapes: the official code runs the transformers in LND layout; this module uses NLD (batch first), which computes the
same numbers. Prompt depth `D` counts layer 0. Text prompts sit at sequence positions `1..n` (right after SOS, where
CoOp's "X X ... X" placeholders are), visual prompts are the last `n` tokens (appended after CLS and the patches,
after the positional embedding and before `ln_pre`). A deep prompt of layer `i` replaces those tokens at the input of
block `i`; blocks past the prompt depth carry the prompt tokens along unchanged.

Methods, their official keys (`{i}` a block index, `{k}` a list index) and what `depth_or_k` means:

* `coop` (depth 1): `prompt_learner.ctx`.
* `vpt` (depth D): `image_encoder.VPT`, `image_encoder.transformer.resblocks.{i}.VPT_shallow` (i = 1..D-1).
* `ivlp` (depth D): `prompt_learner.ctx`, `text_encoder.transformer.resblocks.{i}.VPT_shallow` and the `vpt` keys.
* `maple` (depth D): `prompt_learner.ctx`, `prompt_learner.proj.{weight,bias}`,
  `prompt_learner.compound_prompts_text.{k}`, `prompt_learner.compound_prompt_projections.{k}.{weight,bias}`
  (k = 0..D-2).
* `mudpt-linear` (K deep sets, D = K+1, `trainers/mudpt.py` from the commit "3. finish uumudpt" on):
  `mudpt_prompt_learner.{ctx, deep_prompts (K, n, w_t), embed_projection.*, deep_projections.*}` and
  `image_encoder.{visual_ctx, visual_ctx_deep_prompts (K, n, w_v), visual_ctx_deep_projections.*}`: one `Linear` per
  direction shared by all deep layers (`deep_projections` w_t -> w_v, `visual_ctx_deep_projections` w_v -> embed_dim),
  and `embed_projection` (w_t -> w_v) adds the mapped layer-0 text prompts to the layer-0 visual prompts. All K deep
  sets are applied (blocks 1..K).
* `mudpt-linear-v1` (K deep sets, D = K, `trainers/mudpt.py` before that commit): `mudpt_prompt_learner.ctx`,
  `mudpt_prompt_learner.deep_prompts.{k}`, `mudpt_prompt_learner.deep_projections.{k}.*`, `image_encoder.visual_ctx`,
  `image_encoder.visual_ctx_deep_prompts.{k}`, `image_encoder.visual_ctx_deep_projections.{k}.*` (k = 0..K-1; the
  official code applies only k = 0..K-2), and `mudpt_prompt_learner.embed_projection.*`, which it never uses.
  `MUDPT_LINEAR_2B436F3` is the same format as the revision 2b436f3 ran it (all K deep sets applied, D = K+1).
* `mudpt` (K deep sets, D = K+1, `trainers/uumudpt.py`): `uumudpt_prompt_learner.{ctx, deep_prompts (K, n, w_t), ln_pre,
  self_attn, ln_post, visual_proj}` and `image_encoder.{visual_ctx, visual_ctx_deep_prompts (K, n, w_v),
  visual_ctx_ln_intra_pre, visual_ctx_self_attn, visual_ctx_ln_intra_post, visual_ctx_text_proj}`, where `self_attn` and
  `visual_ctx_self_attn` are OpenAI `ResidualAttentionBlock`s (`attn.in_proj_weight`, `attn.out_proj.*`, `ln_1.*`,
  `ln_2.*`, `mlp.c_fc.*`, `mlp.c_proj.*`).
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel

from mudpt_peft import MuDPTConfig

#: Token ids of the tiny vocabulary: SOS and EOT are the two largest ids (EOT the largest, as in OpenAI's tokenizer,
#: so that `argmax` finds it), 0 is the padding OpenAI's `tokenize` uses, `X_ID` stands for CoOp's "X" placeholders.
VOCAB_SIZE = 100
SOS_ID = 98
EOT_ID = 99
PAD_ID = 0
X_ID = 7
CONTEXT_LENGTH = 16
#: OpenAI CLIP's attention heads: one per 64 channels (the official prompt learners' blocks follow it too).
HEAD_WIDTH = 64

METHODS = ("coop", "vpt", "ivlp", "maple", "mudpt-linear", "mudpt-linear-v1", "mudpt")
#: The early `mudpt.py` format as its revision 2b436f3 ("3. finish umudpt") ran it: same keys as `mudpt-linear-v1`,
#: but its blocks apply all K deep prompt sets (`nth < K`; D = K+1). The preset is `mudpt-linear-v1`.
MUDPT_LINEAR_2B436F3 = "mudpt-linear-v1@2b436f3"


def _method(method: str) -> str:
    key = method.lower().replace("_", "-")
    if key not in (*METHODS, MUDPT_LINEAR_2B436F3, "clip"):
        raise ValueError(f"unknown method {method!r}; one of {', '.join(METHODS)} or 'clip'")
    return key


# --------------------------------------------------------------------------------------------------------------------
# Tiny OpenAI-layout CLIP
# --------------------------------------------------------------------------------------------------------------------


def _block_state(prefix: str, width: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random weights of one OpenAI `ResidualAttentionBlock` (ln_1, attn, ln_2, mlp.c_fc, mlp.c_proj)."""

    def randn(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * std

    hidden = 4 * width
    return {
        f"{prefix}ln_1.weight": 1 + randn(width, std=0.1),
        f"{prefix}ln_1.bias": randn(width, std=0.1),
        f"{prefix}attn.in_proj_weight": randn(3 * width, width, std=width**-0.5),
        f"{prefix}attn.in_proj_bias": randn(3 * width, std=0.1),
        f"{prefix}attn.out_proj.weight": randn(width, width, std=width**-0.5),
        f"{prefix}attn.out_proj.bias": randn(width, std=0.1),
        f"{prefix}ln_2.weight": 1 + randn(width, std=0.1),
        f"{prefix}ln_2.bias": randn(width, std=0.1),
        f"{prefix}mlp.c_fc.weight": randn(hidden, width, std=width**-0.5),
        f"{prefix}mlp.c_fc.bias": randn(hidden, std=0.1),
        f"{prefix}mlp.c_proj.weight": randn(width, hidden, std=hidden**-0.5),
        f"{prefix}mlp.c_proj.bias": randn(width, std=0.1),
    }


def make_openai_clip(
    seed: int = 0,
    text_width: int = 64,
    vision_width: int = 128,
    text_layers: int = 4,
    vision_layers: int = 4,
    embed_dim: int | None = None,
    context_length: int = CONTEXT_LENGTH,
    vocab_size: int = VOCAB_SIZE,
    image_size: int = 16,
    patch_size: int = 8,
) -> dict[str, torch.Tensor]:
    """A tiny random CLIP as an OpenAI-layout state dict (the keys of OpenAI's `CLIP.state_dict()`), fp32.

    `embed_dim` defaults to `text_width` (MuDPT's linear variant maps visual prompts to `embed_dim` and adds them to
    text prompts, so it needs `embed_dim == text_width`). Widths should be multiples of `HEAD_WIDTH`.
    """
    generator = torch.Generator().manual_seed(seed)
    embed_dim = text_width if embed_dim is None else embed_dim
    grid = image_size // patch_size

    def randn(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * std

    state = {
        "token_embedding.weight": randn(vocab_size, text_width, std=0.5),
        "positional_embedding": randn(context_length, text_width, std=0.1),
        "ln_final.weight": 1 + randn(text_width, std=0.1),
        "ln_final.bias": randn(text_width, std=0.1),
        "text_projection": randn(text_width, embed_dim, std=text_width**-0.5),
        "logit_scale": torch.tensor(math.log(1 / 0.07)),
        "visual.conv1.weight": randn(vision_width, 3, patch_size, patch_size, std=(3 * patch_size**2) ** -0.5),
        "visual.class_embedding": randn(vision_width, std=0.5),
        "visual.positional_embedding": randn(1 + grid * grid, vision_width, std=0.1),
        "visual.ln_pre.weight": 1 + randn(vision_width, std=0.1),
        "visual.ln_pre.bias": randn(vision_width, std=0.1),
        "visual.ln_post.weight": 1 + randn(vision_width, std=0.1),
        "visual.ln_post.bias": randn(vision_width, std=0.1),
        "visual.proj": randn(vision_width, embed_dim, std=vision_width**-0.5),
    }
    for i in range(text_layers):
        state.update(_block_state(f"transformer.resblocks.{i}.", text_width, generator))
    for i in range(vision_layers):
        state.update(_block_state(f"visual.transformer.resblocks.{i}.", vision_width, generator))
    return state


def _num_blocks(clip: dict[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)\.ln_1\.weight$")
    return sum(1 for key in clip if pattern.match(key))


def openai_geometry(clip: dict[str, torch.Tensor]) -> dict[str, int]:
    """Widths, layer counts and sizes of an OpenAI-layout CLIP state dict."""
    vision_width, _, patch_size, _ = clip["visual.conv1.weight"].shape
    grid = math.isqrt(clip["visual.positional_embedding"].shape[0] - 1)
    return {
        "vocab_size": clip["token_embedding.weight"].shape[0],
        "text_width": clip["token_embedding.weight"].shape[1],
        "context_length": clip["positional_embedding"].shape[0],
        "text_layers": _num_blocks(clip, "transformer.resblocks."),
        "vision_width": vision_width,
        "patch_size": patch_size,
        "image_size": grid * patch_size,
        "vision_layers": _num_blocks(clip, "visual.transformer.resblocks."),
        "embed_dim": clip["text_projection"].shape[1],
    }


def openai_to_hf(clip: dict[str, torch.Tensor], eos_token_id: int = EOT_ID) -> CLIPModel:
    """An HF `CLIPModel` (eval mode, fp32) with the weights of the OpenAI-layout state dict `clip`.

    `eos_token_id=2` makes HF pool at `argmax(input_ids)` (the legacy path, which is OpenAI's pooling); any other value
    (the default: `EOT_ID`) pools at the first occurrence of that id.
    """
    g = openai_geometry(clip)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=g["vocab_size"],
            hidden_size=g["text_width"],
            intermediate_size=4 * g["text_width"],
            num_hidden_layers=g["text_layers"],
            num_attention_heads=max(1, g["text_width"] // HEAD_WIDTH),
            max_position_embeddings=g["context_length"],
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
            bos_token_id=SOS_ID,
            eos_token_id=eos_token_id,
            pad_token_id=PAD_ID,
        ),
        vision_config=dict(
            hidden_size=g["vision_width"],
            intermediate_size=4 * g["vision_width"],
            num_hidden_layers=g["vision_layers"],
            num_attention_heads=max(1, g["vision_width"] // HEAD_WIDTH),
            image_size=g["image_size"],
            patch_size=g["patch_size"],
            num_channels=3,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
        ),
        projection_dim=g["embed_dim"],
    )
    hf: dict[str, torch.Tensor] = {}

    def copy_block(src: str, dst: str) -> None:
        q, k, v = clip[f"{src}attn.in_proj_weight"].chunk(3, dim=0)
        qb, kb, vb = clip[f"{src}attn.in_proj_bias"].chunk(3, dim=0)
        for name, weight, bias in (("q_proj", q, qb), ("k_proj", k, kb), ("v_proj", v, vb)):
            hf[f"{dst}self_attn.{name}.weight"] = weight
            hf[f"{dst}self_attn.{name}.bias"] = bias
        for ours, theirs in (
            ("self_attn.out_proj", "attn.out_proj"),
            ("layer_norm1", "ln_1"),
            ("layer_norm2", "ln_2"),
            ("mlp.fc1", "mlp.c_fc"),
            ("mlp.fc2", "mlp.c_proj"),
        ):
            hf[f"{dst}{ours}.weight"] = clip[f"{src}{theirs}.weight"]
            hf[f"{dst}{ours}.bias"] = clip[f"{src}{theirs}.bias"]

    hf["text_model.embeddings.token_embedding.weight"] = clip["token_embedding.weight"]
    hf["text_model.embeddings.position_embedding.weight"] = clip["positional_embedding"]
    for i in range(g["text_layers"]):
        copy_block(f"transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}.")
    hf["text_model.final_layer_norm.weight"] = clip["ln_final.weight"]
    hf["text_model.final_layer_norm.bias"] = clip["ln_final.bias"]
    hf["text_projection.weight"] = clip["text_projection"].T

    hf["vision_model.embeddings.patch_embedding.weight"] = clip["visual.conv1.weight"]
    hf["vision_model.embeddings.class_embedding"] = clip["visual.class_embedding"]
    hf["vision_model.embeddings.position_embedding.weight"] = clip["visual.positional_embedding"]
    hf["vision_model.pre_layrnorm.weight"] = clip["visual.ln_pre.weight"]
    hf["vision_model.pre_layrnorm.bias"] = clip["visual.ln_pre.bias"]
    for i in range(g["vision_layers"]):
        copy_block(f"visual.transformer.resblocks.{i}.", f"vision_model.encoder.layers.{i}.")
    hf["vision_model.post_layernorm.weight"] = clip["visual.ln_post.weight"]
    hf["vision_model.post_layernorm.bias"] = clip["visual.ln_post.bias"]
    hf["visual_projection.weight"] = clip["visual.proj"].T
    hf["logit_scale"] = clip["logit_scale"]

    model = CLIPModel(config).eval()
    model.load_state_dict({key: value.clone().contiguous() for key, value in hf.items()}, strict=True)
    return model


# --------------------------------------------------------------------------------------------------------------------
# CLIP math (NLD, plain torch)
# --------------------------------------------------------------------------------------------------------------------


def _ln(x: torch.Tensor, state: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), state[f"{prefix}.weight"], state[f"{prefix}.bias"], 1e-5)


def _linear(x: torch.Tensor, state: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    return x @ state[f"{prefix}.weight"].T + state[f"{prefix}.bias"]


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def residual_attention_block(
    x: torch.Tensor, state: dict[str, torch.Tensor], prefix: str, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """OpenAI's `ResidualAttentionBlock` on `x` (batch, seq, width); weights at `{prefix}ln_1.weight` etc.

    Attention is multi-head (width // HEAD_WIDTH heads) with the packed `in_proj` in q, k, v order; `mask` is added
    to the attention scores.
    """
    batch, seq, width = x.shape
    heads = max(1, width // HEAD_WIDTH)
    head_dim = width // heads
    h = _ln(x, state, f"{prefix}ln_1")
    qkv = h @ state[f"{prefix}attn.in_proj_weight"].T + state[f"{prefix}attn.in_proj_bias"]
    q, k, v = (t.reshape(batch, seq, heads, head_dim).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
    scores = (q * head_dim**-0.5) @ k.transpose(-1, -2)
    if mask is not None:
        scores = scores + mask
    attended = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, seq, width)
    x = x + _linear(attended, state, f"{prefix}attn.out_proj")
    h = _ln(x, state, f"{prefix}ln_2")
    return x + _linear(_quick_gelu(_linear(h, state, f"{prefix}mlp.c_fc")), state, f"{prefix}mlp.c_proj")


def _encode_text(
    clip: dict[str, torch.Tensor],
    token_ids: torch.Tensor,
    ctx: torch.Tensor | None,
    deep: dict[int, torch.Tensor],
) -> torch.Tensor:
    """CoOp's `TextEncoder` on prompts built by its `PromptLearner`: projected (unnormalised) text features.

    `token_ids` (classes, context_length) are the tokenized "X X ... X classname." prompts; the n embeddings after SOS
    are replaced by `ctx` (prefix + ctx + suffix). `deep[i]` replaces positions 1..n at the input of block i.
    """
    embedded = clip["token_embedding.weight"][token_ids]
    classes, length = token_ids.shape
    if ctx is not None:
        n_ctx = ctx.shape[0]
        prefix, suffix = embedded[:, :1], embedded[:, 1 + n_ctx :]
        embedded = torch.cat([prefix, ctx.unsqueeze(0).expand(classes, -1, -1), suffix], dim=1)
    x = embedded + clip["positional_embedding"]
    mask = torch.full((length, length), float("-inf")).triu(1)
    for i in range(_num_blocks(clip, "transformer.resblocks.")):
        if i in deep:
            n_ctx = deep[i].shape[0]
            x = torch.cat([x[:, :1], deep[i].unsqueeze(0).expand(classes, -1, -1), x[:, 1 + n_ctx :]], dim=1)
        x = residual_attention_block(x, clip, f"transformer.resblocks.{i}.", mask)
    x = _ln(x, clip, "ln_final")
    pooled = x[torch.arange(classes), token_ids.argmax(dim=-1)]
    return pooled @ clip["text_projection"]


def _encode_image(
    clip: dict[str, torch.Tensor],
    pixel_values: torch.Tensor,
    first: torch.Tensor | None,
    deep: dict[int, torch.Tensor],
) -> torch.Tensor:
    """The official prompted `VisionTransformer`: projected (unnormalised) image features.

    `first` (n, w_v) is appended after CLS and the patches, after the positional embedding and before `ln_pre`;
    `deep[i]` replaces the last n tokens at the input of block i.
    """
    weight = clip["visual.conv1.weight"]
    x = F.conv2d(pixel_values, weight, stride=weight.shape[-1])  # no bias
    batch, width = x.shape[:2]
    x = x.reshape(batch, width, -1).transpose(1, 2)
    cls = clip["visual.class_embedding"] + torch.zeros(batch, 1, width, dtype=x.dtype)
    x = torch.cat([cls, x], dim=1) + clip["visual.positional_embedding"]
    if first is not None:
        x = torch.cat([x, first.unsqueeze(0).expand(batch, -1, -1)], dim=1)
    x = _ln(x, clip, "visual.ln_pre")
    for i in range(_num_blocks(clip, "visual.transformer.resblocks.")):
        if i in deep:
            n_ctx = deep[i].shape[0]
            x = torch.cat([x[:, : x.shape[1] - n_ctx], deep[i].unsqueeze(0).expand(batch, -1, -1)], dim=1)
        x = residual_attention_block(x, clip, f"visual.transformer.resblocks.{i}.")
    return _ln(x[:, 0], clip, "visual.ln_post") @ clip["visual.proj"]


def _logits(clip: dict[str, torch.Tensor], image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    image_features = image_features / image_features.norm(dim=-1, keepdim=True)
    text_features = text_features / text_features.norm(dim=-1, keepdim=True)
    return clip["logit_scale"].exp() * image_features @ text_features.T


# --------------------------------------------------------------------------------------------------------------------
# Official prompt parameters
# --------------------------------------------------------------------------------------------------------------------


def _indexed(state: dict[str, torch.Tensor], prefix: str, suffix: str) -> list[torch.Tensor]:
    """`state[f"{prefix}{i}{suffix}"]` for i = 0, 1, ... (missing leading indices are `None`)."""
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+){re.escape(suffix)}$")
    found = {int(m.group(1)): value for key, value in state.items() if (m := pattern.match(key))}
    return [found.get(i) for i in range(max(found) + 1)] if found else []


def _resblock_prompts(state: dict[str, torch.Tensor], tower: str) -> dict[int, torch.Tensor]:
    """IVLP/VPT deep prompts: `{tower}.transformer.resblocks.{i}.VPT_shallow`, keyed by block index i >= 1."""
    prompts = _indexed(state, f"{tower}.transformer.resblocks.", ".VPT_shallow")
    return {i: p for i, p in enumerate(prompts) if p is not None}


def _sub(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}


def _injection(prompts: torch.Tensor, state: dict[str, torch.Tensor], ln_pre: str, block: str, ln_post: str, proj: str):
    """UUMuDPT's injection pipeline: proj(ln_post(block(ln_pre(P)))), attention over the n tokens of each layer."""
    x = _ln(prompts, state, ln_pre)
    x = residual_attention_block(x, state, block)
    return _linear(_ln(x, state, ln_post), state, proj)


def official_prompts(
    method: str, state: dict[str, torch.Tensor]
) -> tuple[torch.Tensor | None, dict[int, torch.Tensor], torch.Tensor | None, dict[int, torch.Tensor]]:
    """What each tower gets under the official `method` with the prompt parameters `state` (official key names).

    Returns `(text_ctx, text_deep, vision_first, vision_deep)`: the layer-0 text prompts (n, w_t) or `None`, the deep
    text prompts by block index, the layer-0 visual prompts (n, w_v) or `None`, the deep visual prompts by block index.
    """
    method = _method(method)
    if method == "clip":
        return None, {}, None, {}
    if method == "coop":
        return state["prompt_learner.ctx"], {}, None, {}
    if method == "vpt":
        return None, {}, state["image_encoder.VPT"], _resblock_prompts(state, "image_encoder")
    if method == "ivlp":
        return (
            state["prompt_learner.ctx"],
            _resblock_prompts(state, "text_encoder"),
            state["image_encoder.VPT"],
            _resblock_prompts(state, "image_encoder"),
        )
    if method == "maple":
        ctx = state["prompt_learner.ctx"]
        compound = _indexed(state, "prompt_learner.compound_prompts_text.", "")
        # MaPLe's text encoder and vision encoder walk the blocks with a counter over the deeper prompts
        text_deep = {counter + 1: prompt for counter, prompt in enumerate(compound)}
        vision_deep = {
            counter + 1: _linear(prompt, state, f"prompt_learner.compound_prompt_projections.{counter}")
            for counter, prompt in enumerate(compound)
        }
        return ctx, text_deep, _linear(ctx, state, "prompt_learner.proj"), vision_deep
    if method == "mudpt-linear":
        # current mudpt.py: prompt learner -> (text ctx, E(ctx), deep text prompts, L_t2v(deep text prompts)); the
        # image encoder adds E(ctx) to its layer-0 prompts and L_t2v(...) to its deep prompts and returns
        # L_v2t(deep visual prompts), which are added to the deep text prompts; blocks 1..K take deep set 0..K-1
        ctx = state["mudpt_prompt_learner.ctx"]
        deep_prompts = state["mudpt_prompt_learner.deep_prompts"]  # (K, n, w_t)
        visual_ctx = state["image_encoder.visual_ctx"]
        visual_deep_prompts = state["image_encoder.visual_ctx_deep_prompts"]  # (K, n, w_v)
        vision_first = visual_ctx + _linear(ctx, state, "mudpt_prompt_learner.embed_projection")
        vision_deep = _linear(deep_prompts, state, "mudpt_prompt_learner.deep_projections") + visual_deep_prompts
        text_deep = deep_prompts + _linear(visual_deep_prompts, state, "image_encoder.visual_ctx_deep_projections")
        # the blocks' condition is `nth < K`: every deep set is used (the blocks past the model's depth do not exist)
        return (
            ctx,
            {layer: text_deep[layer - 1] for layer in range(1, 1 + text_deep.shape[0])},
            vision_first,
            {layer: vision_deep[layer - 1] for layer in range(1, 1 + vision_deep.shape[0])},
        )
    if method in ("mudpt-linear-v1", MUDPT_LINEAR_2B436F3):
        ctx = state["mudpt_prompt_learner.ctx"]
        deep_prompts = _indexed(state, "mudpt_prompt_learner.deep_prompts.", "")
        visual_deep_prompts = _indexed(state, "image_encoder.visual_ctx_deep_prompts.", "")
        text_prompts = [
            prompt + _linear(visual, state, f"image_encoder.visual_ctx_deep_projections.{k}")
            for k, (prompt, visual) in enumerate(zip(deep_prompts, visual_deep_prompts, strict=True))
        ]
        vision_prompts = [
            _linear(prompt, state, f"mudpt_prompt_learner.deep_projections.{k}") + visual
            for k, (prompt, visual) in enumerate(zip(deep_prompts, visual_deep_prompts, strict=True))
        ]

        # block `layer` >= 1 is the `nth = layer - 1` deep block; the condition is `nth < len(prompts) - 1` up to
        # f358682, so the last of the K deep prompts is never used, and `nth < len(prompts)` at 2b436f3
        applied = len(deep_prompts) - (0 if method == MUDPT_LINEAR_2B436F3 else 1)

        def blocks(prompts: list[torch.Tensor]) -> dict[int, torch.Tensor]:
            return {layer: prompts[layer - 1] for layer in range(1, 1 + len(prompts)) if layer - 1 < applied}

        # `embed_projection` is built but its output is not passed to the image encoder: layer 0 is uncoupled
        return ctx, blocks(text_prompts), state["image_encoder.visual_ctx"], blocks(vision_prompts)
    # mudpt (uumudpt.py)
    ctx = state["uumudpt_prompt_learner.ctx"]
    deep_prompts = state["uumudpt_prompt_learner.deep_prompts"]  # (K, n, w_t)
    visual_ctx = state["image_encoder.visual_ctx"]
    visual_deep_prompts = state["image_encoder.visual_ctx_deep_prompts"]  # (K, n, w_v)
    text_all = torch.cat([ctx.unsqueeze(0), deep_prompts], dim=0)  # (D, n, w_t)
    text_sub = _sub(state, "uumudpt_prompt_learner.")
    t2v = _injection(text_all, text_sub, "ln_pre", "self_attn.", "ln_post", "visual_proj")  # (D, n, w_v)
    vision_sub = _sub(state, "image_encoder.")
    v2t = _injection(
        visual_deep_prompts,
        vision_sub,
        "visual_ctx_ln_intra_pre",
        "visual_ctx_self_attn.",
        "visual_ctx_ln_intra_post",
        "visual_ctx_text_proj",
    )  # (K, n, w_t)
    vision_first = visual_ctx + t2v[0]
    vision_deep = {layer: visual_deep_prompts[layer - 1] + t2v[layer] for layer in range(1, len(text_all))}
    text_deep = {layer: deep_prompts[layer - 1] + v2t[layer - 1] for layer in range(1, len(text_all))}
    return ctx, text_deep, vision_first, vision_deep


def official_features(
    method: str,
    openai_clip: dict[str, torch.Tensor],
    state: dict[str, torch.Tensor],
    text_token_ids: torch.Tensor,
    pixel_values: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Projected, unnormalised `(image_features, text_features)` of the official `method` (see `official_logits`)."""
    text_ctx, text_deep, vision_first, vision_deep = official_prompts(method, state)
    text = _encode_text(openai_clip, text_token_ids, text_ctx, text_deep)
    image = _encode_image(openai_clip, pixel_values, vision_first, vision_deep)
    return image, text


def official_logits(
    method: str,
    openai_clip: dict[str, torch.Tensor],
    state: dict[str, torch.Tensor],
    text_token_ids: torch.Tensor,
    pixel_values: torch.Tensor,
) -> torch.Tensor:
    """`logits_per_image` (images, classes) of the official `method`, in fp32.

    Args:
        method: One of `METHODS`, or `"clip"` for CLIP without prompts (then `state` is ignored).
        openai_clip: The frozen CLIP, an OpenAI-layout state dict (`make_openai_clip`).
        state: The method's prompt parameters under the official key names (`make_official_state`); other keys (e.g.
            the frozen weights of `with_frozen_clip`) are ignored.
        text_token_ids: (classes, context_length) tokenized class prompts as the official code tokenizes them:
            [SOS, n_ctx placeholders, class tokens, EOT, 0-padding] (`official_token_ids`; no placeholders for
            `vpt` and `clip`).
        pixel_values: (images, 3, H, W).
    """
    image, text = official_features(method, openai_clip, state, text_token_ids, pixel_values)
    return _logits(openai_clip, image, text)


def _random_linear(prefix: str, source: int, target: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.weight": torch.randn(target, source, generator=generator) * source**-0.5,
        f"{prefix}.bias": torch.randn(target, generator=generator) * 0.5,
    }


def _random_ln(prefix: str, width: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.weight": 1 + torch.randn(width, generator=generator) * 0.3,
        f"{prefix}.bias": torch.randn(width, generator=generator) * 0.3,
    }


def make_official_state(
    method: str, clip_openai: dict[str, torch.Tensor], depth_or_k: int, n_ctx: int, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random prompt parameters of `method` under the official key names (see the module docstring), fp32.

    Args:
        method: One of `METHODS`.
        clip_openai: The OpenAI-layout CLIP they belong to (for the widths).
        depth_or_k: The prompt depth D (layer 0 included) for `coop` (must be 1), `vpt`, `ivlp`, `maple`; the number
            K of deep prompt sets for `mudpt-linear` (D = K+1), `mudpt-linear-v1` (only K-1 are used, D = K, see
            `official_prompts`) and `mudpt` (D = K+1).
        n_ctx: Prompt tokens per layer (text and vision).
        seed: Seed of the values: prompts ~ N(0, 0.5^2), linear weights ~ N(0, 1/fan_in), biases ~ N(0, 0.5^2),
            LayerNorm weights ~ 1 + N(0, 0.3^2).
    """
    method = _method(method)
    g = openai_geometry(clip_openai)
    w_t, w_v, embed_dim = g["text_width"], g["vision_width"], g["embed_dim"]
    generator = torch.Generator().manual_seed(seed)

    def prompt(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 0.5

    state: dict[str, torch.Tensor] = {}
    if method == "coop":
        if depth_or_k != 1:
            raise ValueError("CoOp prompts only the input layer: depth_or_k must be 1")
        state["prompt_learner.ctx"] = prompt(n_ctx, w_t)
    elif method in ("vpt", "ivlp"):
        if method == "ivlp":
            state["prompt_learner.ctx"] = prompt(n_ctx, w_t)
            for i in range(1, depth_or_k):
                state[f"text_encoder.transformer.resblocks.{i}.VPT_shallow"] = prompt(n_ctx, w_t)
        state["image_encoder.VPT"] = prompt(n_ctx, w_v)
        for i in range(1, depth_or_k):
            state[f"image_encoder.transformer.resblocks.{i}.VPT_shallow"] = prompt(n_ctx, w_v)
    elif method == "maple":
        state["prompt_learner.ctx"] = prompt(n_ctx, w_t)
        state.update(_random_linear("prompt_learner.proj", w_t, w_v, generator))
        for k in range(depth_or_k - 1):
            state[f"prompt_learner.compound_prompts_text.{k}"] = prompt(n_ctx, w_t)
        for k in range(depth_or_k - 1):
            state.update(_random_linear(f"prompt_learner.compound_prompt_projections.{k}", w_t, w_v, generator))
    elif method in ("mudpt-linear", "mudpt-linear-v1", MUDPT_LINEAR_2B436F3):
        if embed_dim != w_t:
            raise ValueError("MuDPT's linear variant adds embed_dim-wide prompts to text prompts: embed_dim != w_t")
        state["mudpt_prompt_learner.ctx"] = prompt(n_ctx, w_t)
        state["image_encoder.visual_ctx"] = prompt(n_ctx, w_v)
        if method == "mudpt-linear":  # stacked deep prompts, one shared Linear per direction
            state["mudpt_prompt_learner.deep_prompts"] = prompt(depth_or_k, n_ctx, w_t)
            state["image_encoder.visual_ctx_deep_prompts"] = prompt(depth_or_k, n_ctx, w_v)
            state.update(_random_linear("mudpt_prompt_learner.deep_projections", w_t, w_v, generator))
            state.update(_random_linear("image_encoder.visual_ctx_deep_projections", w_v, embed_dim, generator))
        else:  # one tensor and one Linear per deep layer
            for k in range(depth_or_k):
                state[f"mudpt_prompt_learner.deep_prompts.{k}"] = prompt(n_ctx, w_t)
                state[f"image_encoder.visual_ctx_deep_prompts.{k}"] = prompt(n_ctx, w_v)
                state.update(_random_linear(f"mudpt_prompt_learner.deep_projections.{k}", w_t, w_v, generator))
                state.update(
                    _random_linear(f"image_encoder.visual_ctx_deep_projections.{k}", w_v, embed_dim, generator)
                )
        # both revisions build the layer-0 map text -> vision; only the current one uses it
        state.update(_random_linear("mudpt_prompt_learner.embed_projection", w_t, w_v, generator))
    elif method == "mudpt":
        if embed_dim != w_t:
            raise ValueError("UUMuDPT adds embed_dim-wide injections to text prompts: embed_dim != w_t")
        state["uumudpt_prompt_learner.ctx"] = prompt(n_ctx, w_t)
        state["uumudpt_prompt_learner.deep_prompts"] = prompt(depth_or_k, n_ctx, w_t)
        state.update(_random_ln("uumudpt_prompt_learner.ln_pre", w_t, generator))
        state.update(_random_block("uumudpt_prompt_learner.self_attn.", w_t, generator))
        state.update(_random_ln("uumudpt_prompt_learner.ln_post", w_t, generator))
        state.update(_random_linear("uumudpt_prompt_learner.visual_proj", w_t, w_v, generator))
        state["image_encoder.visual_ctx"] = prompt(n_ctx, w_v)
        state["image_encoder.visual_ctx_deep_prompts"] = prompt(depth_or_k, n_ctx, w_v)
        state.update(_random_ln("image_encoder.visual_ctx_ln_intra_pre", w_v, generator))
        state.update(_random_block("image_encoder.visual_ctx_self_attn.", w_v, generator))
        state.update(_random_ln("image_encoder.visual_ctx_ln_intra_post", w_v, generator))
        state.update(_random_linear("image_encoder.visual_ctx_text_proj", w_v, embed_dim, generator))
    else:
        raise ValueError(f"no official prompts for {method!r}")
    return state


def _random_block(prefix: str, width: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A `ResidualAttentionBlock` with non-trivial values (LayerNorms and biases included)."""
    state = _block_state(prefix, width, generator)
    for name in ("ln_1", "ln_2"):
        state.update(_random_ln(f"{prefix}{name}", width, generator))
    return state


def with_frozen_clip(state: dict[str, torch.Tensor], clip_openai: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` plus the frozen CLIP weights under the official `CustomCLIP` names, as in a full official state dict.

    `image_encoder.*` is `clip.visual`; `text_encoder.{transformer.*, positional_embedding, ln_final.*,
    text_projection}` is the text side; `logit_scale` is kept. The token embedding has no place there (the official
    prompt learners keep only `token_prefix`/`token_suffix` buffers, which depend on the class names) and is left out.
    """
    full = dict(state)
    for key, value in clip_openai.items():
        if key.startswith("visual."):
            full[f"image_encoder.{key[len('visual.') :]}"] = value
        elif key.startswith(("transformer.", "ln_final.")) or key in ("positional_embedding", "text_projection"):
            full[f"text_encoder.{key}"] = value
        elif key == "logit_scale":
            full[key] = value
    return full


# --------------------------------------------------------------------------------------------------------------------
# Token ids
# --------------------------------------------------------------------------------------------------------------------


def make_class_tokens(lengths: tuple[int, ...] = (1, 2, 3, 5), seed: int = 0) -> list[list[int]]:
    """Random "class name" token ids (1 .. SOS_ID-1), one list per class with the given lengths."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(1, SOS_ID, (length,), generator=generator).tolist() for length in lengths]


def official_token_ids(class_tokens: list[list[int]], n_ctx: int, context_length: int = CONTEXT_LENGTH) -> torch.Tensor:
    """What the official code tokenizes: [SOS, X * n_ctx, class tokens, EOT, 0...] per class, (classes, length)."""
    ids = torch.full((len(class_tokens), context_length), PAD_ID, dtype=torch.long)
    for row, tokens in enumerate(class_tokens):
        sequence = [SOS_ID, *([X_ID] * n_ctx), *tokens, EOT_ID]
        if len(sequence) > context_length:
            raise ValueError(f"class {row} needs {len(sequence)} > {context_length} tokens")
        ids[row, : len(sequence)] = torch.tensor(sequence)
    return ids


def tuner_token_ids(official_ids: torch.Tensor, n_ctx: int) -> torch.Tensor:
    """The tuner's input ids for the same prompts: the official ids without the n_ctx placeholders after SOS.

    The result has `context_length - n_ctx` columns; the tuner inserts its n_ctx prompt tokens after SOS.
    """
    return torch.cat([official_ids[:, :1], official_ids[:, 1 + n_ctx :]], dim=1)


def method_n_ctx(method: str, n_ctx: int) -> int:
    """The number of placeholder tokens in the official text prompts of `method` (none for `vpt`)."""
    return 0 if _method(method) in ("vpt", "clip") else n_ctx


# --------------------------------------------------------------------------------------------------------------------
# The tuner side
# --------------------------------------------------------------------------------------------------------------------


def tuner_config(method: str, depth_or_k: int, n_ctx: int) -> MuDPTConfig:
    """The `MuDPTConfig` equivalent to the official `method` with `depth_or_k` (see `make_official_state`)."""
    method = _method(method)
    if method in ("mudpt", "mudpt-linear"):  # K deep prompt sets, all used: layers 0..K are prompted
        return MuDPTConfig.for_method(method, depth=depth_or_k + 1, n_ctx=n_ctx)
    if method == MUDPT_LINEAR_2B436F3:  # the per-layer variant with all K sets used
        return MuDPTConfig.for_method("mudpt-linear-v1", depth=depth_or_k + 1, n_ctx=n_ctx)
    if method == "vpt":
        return MuDPTConfig.for_method("vpt", depth=depth_or_k, n_ctx=n_ctx, vision_n_ctx=n_ctx)
    # mudpt-linear-v1: K deep prompt sets, of which K-1 are used (layers 0..K-1 are prompted)
    return MuDPTConfig.for_method(method, depth=depth_or_k, n_ctx=n_ctx)


def _copy_params(target: torch.nn.Module, state: dict[str, torch.Tensor], prefix: str) -> None:
    """Copy `{prefix}.weight` and `{prefix}.bias` into a Linear or LayerNorm."""
    target.weight.copy_(state[f"{prefix}.weight"])
    target.bias.copy_(state[f"{prefix}.bias"])


def _copy_injection(fusion, state: dict[str, torch.Tensor], ln_pre: str, block: str, ln_post: str, proj: str) -> None:
    """Official UUMuDPT injection weights into an `InjectionModel` (one block)."""
    if len(fusion.blocks) != 1:
        raise ValueError("the official Injection Model has exactly one block")
    _copy_params(fusion.ln_pre, state, ln_pre)
    ours = fusion.blocks[0]
    _copy_params(ours.ln_1, state, f"{block}ln_1")
    ours.attn.qkv.weight.copy_(state[f"{block}attn.in_proj_weight"])
    ours.attn.qkv.bias.copy_(state[f"{block}attn.in_proj_bias"])
    _copy_params(ours.attn.out_proj, state, f"{block}attn.out_proj")
    _copy_params(ours.ln_2, state, f"{block}ln_2")
    _copy_params(ours.fc1, state, f"{block}mlp.c_fc")
    _copy_params(ours.fc2, state, f"{block}mlp.c_proj")
    _copy_params(fusion.ln_post, state, ln_post)
    _copy_params(fusion.proj, state, proj)


@torch.no_grad()
def load_into_tuner(method: str, peft_model, state: dict[str, torch.Tensor], adapter_name: str = "default") -> None:
    """Copy the official prompt parameters `state` of `method` into `peft_model` (made with `tuner_config`), by hand.

    The learned tensors are `text_model.mudpt_prompts[adapter]` (D_t, n, w_t), `vision_model.mudpt_prompts[adapter]`
    (D_v, n, w_v) and the fusion modules `{text,vision}_model.mudpt_fusion[adapter]` of the wrapped `CLIPModel`.
    """
    method = _method(method)
    clip = peft_model.base_model.model
    text, vision = clip.text_model, clip.vision_model

    def learned(tower) -> torch.Tensor | None:  # an unprompted tower is not wrapped
        prompts = tower.__dict__.get("_modules", {}).get("mudpt_prompts")
        return prompts[adapter_name] if prompts is not None and adapter_name in prompts else None

    text_prompts, vision_prompts = learned(text), learned(vision)

    def fill(target: torch.Tensor, layers: list[torch.Tensor]) -> None:
        value = torch.stack(layers, dim=0)
        if value.shape != target.shape:
            raise ValueError(f"shape {tuple(value.shape)} of the official prompts != tuner's {tuple(target.shape)}")
        target.copy_(value)

    if method == "coop":
        fill(text_prompts, [state["prompt_learner.ctx"]])
    elif method in ("vpt", "ivlp"):
        if method == "ivlp":
            deep = _resblock_prompts(state, "text_encoder")
            fill(text_prompts, [state["prompt_learner.ctx"], *(deep[i] for i in sorted(deep))])
        deep = _resblock_prompts(state, "image_encoder")
        fill(vision_prompts, [state["image_encoder.VPT"], *(deep[i] for i in sorted(deep))])
    elif method == "maple":
        compound = _indexed(state, "prompt_learner.compound_prompts_text.", "")
        fill(text_prompts, [state["prompt_learner.ctx"], *compound])
        projections = vision.mudpt_fusion[adapter_name].projections
        _copy_params(projections[0], state, "prompt_learner.proj")
        for k in range(len(compound)):
            _copy_params(projections[k + 1], state, f"prompt_learner.compound_prompt_projections.{k}")
    elif method == "mudpt-linear":
        deep_prompts = state["mudpt_prompt_learner.deep_prompts"]
        fill(text_prompts, [state["mudpt_prompt_learner.ctx"], *deep_prompts.unbind(0)])
        fill(
            vision_prompts,
            [state["image_encoder.visual_ctx"], *state["image_encoder.visual_ctx_deep_prompts"].unbind(0)],
        )
        vision_fusion = vision.mudpt_fusion[adapter_name]
        _copy_params(vision_fusion.first_projection, state, "mudpt_prompt_learner.embed_projection")
        if deep_prompts.shape[0] > 0:
            _copy_params(vision_fusion.deep_projection, state, "mudpt_prompt_learner.deep_projections")
            _copy_params(
                text.mudpt_fusion[adapter_name].deep_projection, state, "image_encoder.visual_ctx_deep_projections"
            )
    elif method in ("mudpt-linear-v1", MUDPT_LINEAR_2B436F3):
        deep_prompts = _indexed(state, "mudpt_prompt_learner.deep_prompts.", "")
        visual_deep_prompts = _indexed(state, "image_encoder.visual_ctx_deep_prompts.", "")
        # the official off-by-one up to f358682: the last deep prompt set is never applied (fixed at 2b436f3)
        used = len(deep_prompts) - (0 if method == MUDPT_LINEAR_2B436F3 else 1)
        fill(text_prompts, [state["mudpt_prompt_learner.ctx"], *deep_prompts[:used]])
        fill(vision_prompts, [state["image_encoder.visual_ctx"], *visual_deep_prompts[:used]])
        if used > 0:
            text_fusion = text.mudpt_fusion[adapter_name].projections
            vision_fusion = vision.mudpt_fusion[adapter_name].projections
            for k in range(used):
                _copy_params(text_fusion[k], state, f"image_encoder.visual_ctx_deep_projections.{k}")
                _copy_params(vision_fusion[k], state, f"mudpt_prompt_learner.deep_projections.{k}")
    elif method == "mudpt":
        ctx, deep_prompts = state["uumudpt_prompt_learner.ctx"], state["uumudpt_prompt_learner.deep_prompts"]
        visual_ctx, visual_deep = state["image_encoder.visual_ctx"], state["image_encoder.visual_ctx_deep_prompts"]
        fill(text_prompts, [ctx, *deep_prompts.unbind(0)])
        fill(vision_prompts, [visual_ctx, *visual_deep.unbind(0)])
        _copy_injection(
            vision.mudpt_fusion[adapter_name],
            state,
            "uumudpt_prompt_learner.ln_pre",
            "uumudpt_prompt_learner.self_attn.",
            "uumudpt_prompt_learner.ln_post",
            "uumudpt_prompt_learner.visual_proj",
        )
        if deep_prompts.shape[0] > 0:
            _copy_injection(
                text.mudpt_fusion[adapter_name],
                state,
                "image_encoder.visual_ctx_ln_intra_pre",
                "image_encoder.visual_ctx_self_attn.",
                "image_encoder.visual_ctx_ln_intra_post",
                "image_encoder.visual_ctx_text_proj",
            )
    else:
        raise ValueError(f"no official prompts for {method!r}")


# --------------------------------------------------------------------------------------------------------------------
# CoCoOp (`KaiyangZhou/CoOp` `trainers/cocoop.py`): CoOp's context shifted per image by a meta-net
# --------------------------------------------------------------------------------------------------------------------

#: The official keys of CoCoOp's prompt learner (Dassl saves the prompt learner alone, so without a prefix).
COCOOP_KEYS = ("ctx", "meta_net.linear1.weight", "meta_net.linear1.bias", "meta_net.linear2.weight",
               "meta_net.linear2.bias")  # fmt: skip


def make_cocoop_state(clip_openai: dict[str, torch.Tensor], n_ctx: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random CoCoOp prompt-learner parameters under the official keys, fp32: `ctx` (n, w_t), the meta-net
    `linear1` (embed_dim // 16, embed_dim) and `linear2` (w_t, embed_dim // 16), and the frozen `token_prefix` /
    `token_suffix` buffers a checkpoint also holds (random here: the forward never reads them from a checkpoint)."""
    g = openai_geometry(clip_openai)
    w_t, embed_dim = g["text_width"], g["embed_dim"]
    hidden = embed_dim // 16
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * std

    return {
        "ctx": randn(n_ctx, w_t, std=0.5),
        "meta_net.linear1.weight": randn(hidden, embed_dim, std=embed_dim**-0.5),
        "meta_net.linear1.bias": randn(hidden, std=0.5),
        # large enough that the shift moves the logits well past the test tolerance
        "meta_net.linear2.weight": randn(w_t, hidden, std=2.0),
        "meta_net.linear2.bias": randn(w_t, std=0.5),
        "token_prefix": randn(3, 1, w_t, std=1.0),
        "token_suffix": randn(3, 5, w_t, std=1.0),
    }


def official_cocoop_logits(
    openai_clip: dict[str, torch.Tensor],
    state: dict[str, torch.Tensor],
    text_token_ids: torch.Tensor,
    pixel_values: torch.Tensor,
) -> torch.Tensor:
    """`logits` (images, classes) of the official CoCoOp `CustomCLIP.forward`, in fp32.

    The image features `x` are L2-normalised *before* the meta-net: `π(x) = linear2(relu(linear1(x)))`, added to
    every one of the n context vectors; for each image `i` the class prompts [SOS, ctx + π(x_i), class, EOT] are
    encoded, normalised, and `logit_scale.exp() * x_i @ t_i^T` gives row `i`. `text_token_ids` are the official
    "X X ... X classname." ids (`official_token_ids`).
    """
    image = _encode_image(openai_clip, pixel_values, None, {})
    image = image / image.norm(dim=-1, keepdim=True)
    hidden = (_linear(image, state, "meta_net.linear1")).clamp_min(0)
    shift = _linear(hidden, state, "meta_net.linear2")  # (images, w_t)
    rows = []
    for image_i, shift_i in zip(image, shift, strict=True):
        text = _encode_text(openai_clip, text_token_ids, state["ctx"] + shift_i, {})
        text = text / text.norm(dim=-1, keepdim=True)
        rows.append(openai_clip["logit_scale"].exp() * image_i @ text.T)
    return torch.stack(rows)


@torch.no_grad()
def load_cocoop_into_tuner(peft_model, state: dict[str, torch.Tensor], adapter_name: str = "default") -> None:
    """Copy official CoCoOp parameters into a `MuDPTConfig.for_method("cocoop")` adapter, by hand: `ctx` into the
    text prompts `(1, n, w_t)`, the meta-net into the text tower's fusion module (`linear1`, `linear2`)."""
    text = peft_model.base_model.model.text_model
    text.mudpt_prompts[adapter_name].copy_(state["ctx"].unsqueeze(0))
    meta_net = text.mudpt_fusion[adapter_name]
    _copy_params(meta_net.linear1, state, "meta_net.linear1")
    _copy_params(meta_net.linear2, state, "meta_net.linear2")
# ------------------------------------------------------------------------------------------------------------------
# the official regularised objectives (KgCoOp, PromptSRC), on features


def kgcoop_loss(
    logits: torch.Tensor, labels: torch.Tensor, text: torch.Tensor, clip_text: torch.Tensor, weight: float = 8.0
) -> torch.Tensor:
    """KgCoOp's training loss (`trainers/kgcoop.py`): cross-entropy plus `W · (1 − mean_i cos(w_i, w_i^clip))`, the
    cosine of each class's prompted and hand-crafted-template text features (both normalised first, then compared
    with a cosine of eps 1e-7; `W` = 8.0 in the official scripts)."""
    text = text / text.norm(dim=-1, keepdim=True)
    clip_text = clip_text / clip_text.norm(dim=-1, keepdim=True)
    cosine = (text * clip_text).sum(-1) / (text.norm(dim=-1) * clip_text.norm(dim=-1)).clamp_min(1e-7)
    return F.cross_entropy(logits, labels) + weight * (1.0 - cosine.mean())


def promptsrc_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    text: torch.Tensor,
    image: torch.Tensor,
    frozen_text_per_template: torch.Tensor,
    frozen_image: torch.Tensor,
    logit_scale: torch.Tensor,
    text_weight: float = 25.0,
    image_weight: float = 10.0,
) -> torch.Tensor:
    """PromptSRC's training loss (`trainers/promptsrc.py`, fp32). `frozen_text_per_template` `(templates, classes,
    dim)`: frozen CLIP's unnormalised text features of each template, averaged over the templates and then
    normalised; the frozen image features are normalised; the frozen logits use the model's logit scale. The loss is
    the cross-entropy plus the mean absolute differences of the normalised prompted and frozen text (x 25) and image
    (x 10) features plus the summed KL(frozen ‖ prompted) of the softmaxed logits (temperature 1) divided by
    `batch · classes`."""
    frozen_text = frozen_text_per_template.mean(dim=0)
    frozen_text = frozen_text / frozen_text.norm(dim=-1, keepdim=True)
    frozen_image = frozen_image / frozen_image.norm(dim=-1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    image = image / image.norm(dim=-1, keepdim=True)
    frozen_logits = logit_scale.exp() * frozen_image @ frozen_text.t()
    log_p, log_q = torch.log_softmax(frozen_logits, dim=1), torch.log_softmax(logits, dim=1)
    kl = (log_p.exp() * (log_p - log_q)).sum() / logits.numel()
    l1_text = (text - frozen_text).abs().sum() / text.numel()
    l1_image = (image - frozen_image).abs().sum() / image.numel()
    return F.cross_entropy(logits, labels) + text_weight * l1_text + image_weight * l1_image + kl


def gpa_weights(epochs: int, mean: float, std: float) -> list[float]:
    """PromptSRC's Gaussian aggregation weights of epochs 1..E: the normal density `N(e; mean, std)`, divided by its
    sum over the epochs."""
    density = [math.exp(-0.5 * ((e - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi)) for e in range(1, epochs + 1)]
    return [d / sum(density) for d in density]
