"""Every dual-encoder family through its `FamilySpec`: the CLIP guarantees, per family, on tiny random models.

For each family a hand-written reference forward reconstructs the expected outputs from the *pristine* base model's
own submodules, step by step: the embedding pieces, the prompts inserted by hand (text: after BOS / CLS, or first for
SigLIP; vision: appended after the last token), each encoder layer called directly with its deep prompts replaced by
hand and an attention mask built by hand, then the family's pooling. It never calls the wrappers, the spec or the
towers' forward. The wrapped model must match it to 1e-6 (logits: 1e-6 times the logit scale), for every method and
both attention implementations; the lifecycle (save / load, disable, several adapters, unload, gradient checkpointing)
must be exact.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel, get_peft_model
from torch import nn
from transformers import (
    AltCLIPConfig,
    AltCLIPModel,
    ChineseCLIPConfig,
    ChineseCLIPModel,
    CLIPConfig,
    CLIPModel,
    CLIPTextModel,
    CLIPVisionModel,
    MetaClip2Config,
    MetaClip2Model,
    Siglip2Config,
    Siglip2Model,
    SiglipConfig,
    SiglipModel,
    SiglipVisionModel,
)

import mudpt_peft
from mudpt_peft import MuDPTConfig, families
from mudpt_peft.config import METHOD_PRESETS
from mudpt_peft.layer import MuDPTLayer, MuDPTPoolingHead

from .helpers import frozen_copy, hooks_of, make_tokenizer_files, ref_attention, ref_injection

VOCAB = 99
TEXT_WIDTH, VISION_WIDTH, LAYERS, MAX_POSITIONS = 32, 48, 3, 16
BATCH, LENGTH = 3, 9
FAMILIES = ["clip", "metaclip_2", "siglip", "siglip2", "chinese_clip", "altclip"]


# --------------------------------------------------------------------------------------------------------------------
# Tiny models and inputs
# --------------------------------------------------------------------------------------------------------------------


# these models are tiny: one intra-op thread runs them about 15x faster on busy cores than two contending ones
pytestmark = pytest.mark.usefixtures("one_thread")


def _text(**overrides) -> dict:
    config = dict(
        vocab_size=VOCAB,
        hidden_size=TEXT_WIDTH,
        intermediate_size=37,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        max_position_embeddings=MAX_POSITIONS,
    )
    return {**config, **overrides}


def _vision(**overrides) -> dict:
    config = dict(
        hidden_size=VISION_WIDTH,
        intermediate_size=37,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        image_size=16,
        patch_size=8,
    )
    return {**config, **overrides}


@dataclasses.dataclass(frozen=True)
class Family:
    """A tiny model of one family and its token conventions (`bos` is `None` without BOS / CLS)."""

    name: str
    model_class: type
    config_class: type
    text: dict
    vision: dict
    bos: int | None
    eos: int
    pad: int
    extra: dict = dataclasses.field(default_factory=dict)

    def config(self, attn: str | None = None):
        config = self.config_class(text_config=self.text, vision_config=self.vision, **self.extra)
        if attn is not None:
            for sub in (config, config.text_config, config.vision_config):
                sub._attn_implementation = attn
        return config


SPECS = {
    "clip": Family(
        "clip",
        CLIPModel,
        CLIPConfig,
        _text(bos_token_id=97, eos_token_id=98, pad_token_id=98),
        _vision(),
        bos=97,
        eos=98,
        pad=98,
        extra={"projection_dim": 24},
    ),
    # MetaCLIP 2's released configs set eos_token_id=2 (XLM-V ids): pooled by `== eos`, not by CLIP's legacy argmax
    "metaclip_2": Family(
        "metaclip_2",
        MetaClip2Model,
        MetaClip2Config,
        _text(bos_token_id=0, eos_token_id=2, pad_token_id=1),
        _vision(),
        bos=0,
        eos=2,
        pad=1,
        extra={"projection_dim": 24},
    ),
    # SigLIP's tokenizer: no BOS, `</s>` (id 1) is both EOS and padding
    "siglip": Family(
        "siglip",
        SiglipModel,
        SiglipConfig,
        _text(bos_token_id=None, eos_token_id=1, pad_token_id=1, projection_size=VISION_WIDTH),
        _vision(),
        bos=None,
        eos=1,
        pad=1,
    ),
    # SigLIP 2 (Gemma tokenizer): no BOS, EOS 1, padding 0; patchified pixels with a patch attention mask
    "siglip2": Family(
        "siglip2",
        Siglip2Model,
        Siglip2Config,
        _text(bos_token_id=2, eos_token_id=1, pad_token_id=0, projection_size=VISION_WIDTH),
        {k: v for k, v in _vision(num_patches=4).items() if k != "image_size"},
        bos=None,
        eos=1,
        pad=0,
    ),
    # BERT: [CLS] 97 ... [SEP] 98, [PAD] 0; no dropout so that training-mode gradients are deterministic
    "chinese_clip": Family(
        "chinese_clip",
        ChineseCLIPModel,
        ChineseCLIPConfig,
        _text(pad_token_id=0, type_vocab_size=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
        _vision(),
        bos=97,
        eos=98,
        pad=0,
        extra={"projection_dim": 24},
    ),
    # XLM-R: <s> 0 ... </s> 2, <pad> 1; positions start at pad + 1 = 2, so 18 positions hold 16 tokens
    "altclip": Family(
        "altclip",
        AltCLIPModel,
        AltCLIPConfig,
        _text(
            bos_token_id=0,
            eos_token_id=2,
            pad_token_id=1,
            type_vocab_size=1,
            project_dim=40,
            max_position_embeddings=MAX_POSITIONS + 2,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        ),
        _vision(),
        bos=0,
        eos=2,
        pad=1,
        extra={"projection_dim": 24},
    ),
}


def make_model(family: str, seed: int = 0, attn: str | None = None) -> nn.Module:
    """A tiny random model of `family` in eval mode (SigLIP's logit scale and bias set to non-trivial values)."""
    spec = SPECS[family]
    torch.manual_seed(seed)
    model = spec.model_class(spec.config(attn)).eval()
    if hasattr(model, "logit_bias"):
        with torch.no_grad():
            model.logit_scale.fill_(math.log(10.0))
            model.logit_bias.fill_(-2.5)
    return model


def make_text(family: str, seed: int = 1, batch: int = BATCH, length: int = LENGTH, real: list[int] | None = None):
    """Token ids (BOS/CLS, words, EOS, padding) and an attention mask; row `i` has `real[i]` tokens."""
    spec = SPECS[family]
    generator = torch.Generator().manual_seed(seed)
    real = real or [length - 2 * (i % 3) for i in range(batch)]
    input_ids = torch.full((batch, length), spec.pad)
    attention_mask = torch.zeros(batch, length, dtype=torch.long)
    for row, count in enumerate(real):
        head = [] if spec.bos is None else [spec.bos]
        words = torch.randint(3, 96, (count - len(head) - 1,), generator=generator).tolist()
        input_ids[row, :count] = torch.tensor(head + words + [spec.eos])
        attention_mask[row, :count] = 1
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if family == "chinese_clip":  # a second segment, so that widening the token types matters
        inputs["token_type_ids"] = (torch.arange(length) >= length // 2).long().expand(batch, -1).clone()
    return inputs


def make_images(family: str, seed: int = 2, batch: int = BATCH) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    if family != "siglip2":
        return {"pixel_values": torch.randn(batch, 3, 16, 16, generator=generator)}
    # variable resolution: 2x2, 1x3 and 2x3 patches of 8x8 pixels, padded to 6 patches
    shapes = torch.tensor([[2, 2], [1, 3], [2, 3]])[:batch]
    pixel_values = torch.randn(batch, 6, 3 * 8 * 8, generator=generator)
    pixel_attention_mask = (torch.arange(6)[None] < shapes.prod(-1)[:, None]).long()
    pixel_values = pixel_values * pixel_attention_mask[..., None]
    return {"pixel_values": pixel_values, "pixel_attention_mask": pixel_attention_mask, "spatial_shapes": shapes}


def make_inputs(family: str, seed: int = 1, **text_kwargs) -> dict[str, torch.Tensor]:
    return {**make_text(family, seed, **text_kwargs), **make_images(family, seed + 1)}


def text_part(inputs: dict) -> dict:
    return {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "token_type_ids", "position_ids")}


def image_part(inputs: dict) -> dict:
    return {k: v for k, v in inputs.items() if k in ("pixel_values", "pixel_attention_mask", "spatial_shapes")}


# --------------------------------------------------------------------------------------------------------------------
# Reference forward: the pristine model's submodules, called step by step, prompts inserted by hand
# --------------------------------------------------------------------------------------------------------------------


def _insert(x: torch.Tensor, start: int, inserted: torch.Tensor) -> torch.Tensor:
    return torch.cat([x[:, :start], inserted, x[:, start:]], dim=1)


def _key_mask(mask: torch.Tensor | None, length: int, causal: bool, dtype: torch.dtype) -> torch.Tensor | None:
    """Additive (batch, 1, query, key) mask: key padding, and future keys when `causal`."""
    if mask is None and not causal:
        return None
    batch = 1 if mask is None else mask.shape[0]
    allowed = torch.ones(batch, length, length, dtype=torch.bool)
    if mask is not None:
        allowed = allowed & mask.bool()[:, None, :]
    if causal:
        allowed = allowed & torch.ones(length, length, dtype=torch.bool).tril()
    additive = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    return additive[:, None]


def _encoder(layers, x, additive, prompts, start):
    """Each layer called directly; the deep prompts of layer j (1 <= j < depth) replace the prompt tokens first."""
    depth = 0 if prompts is None else prompts.shape[0]
    for j, layer in enumerate(layers):
        if 1 <= j < depth:
            n = prompts.shape[1]
            begin = x.shape[1] - n if start is None else start
            x = torch.cat([x[:, :begin], prompts[j].expand(x.shape[0], -1, -1), x[:, begin + n :]], dim=1)
        x = layer(x, additive)
    return x


def ref_text(family: str, model: nn.Module, inputs: dict, prompts: torch.Tensor | None) -> torch.Tensor:
    """The text features (what `get_text_features` pools and projects)."""
    ids, mask = inputs["input_ids"], inputs.get("attention_mask")
    batch = ids.shape[0]
    n = 0 if prompts is None else prompts.shape[1]
    ones = torch.ones(batch, n, dtype=torch.long)
    tower = model.text_model
    if family in ("clip", "metaclip_2"):
        x = tower.embeddings.token_embedding(ids)
        if n:
            x, mask = _insert(x, 1, prompts[0].expand(batch, -1, -1)), _insert(mask, 1, ones)
        x = x + tower.embeddings.position_embedding(torch.arange(x.shape[1]))
        x = _encoder(tower.encoder.layers, x, _key_mask(mask, x.shape[1], True, x.dtype), prompts, 1)
        x = tower.final_layer_norm(x)
        eos = (ids == SPECS[family].eos).int().argmax(-1) + n  # the first EOS, shifted by the prompts
        return model.text_projection(x[torch.arange(batch), eos])
    if family in ("siglip", "siglip2"):
        if n and ids.shape[1] + n > tower.config.max_position_embeddings:  # trailing padding makes room
            keep = tower.config.max_position_embeddings - n
            assert (ids[:, keep:] == SPECS[family].pad).all()
            ids, mask = ids[:, :keep], None if mask is None else mask[:, :keep]
        x = tower.embeddings.token_embedding(ids)
        if n:
            x = _insert(x, 0, prompts[0].expand(batch, -1, -1))
            mask = None if mask is None else _insert(mask, 0, ones)
        x = x + tower.embeddings.position_embedding(torch.arange(x.shape[1]))
        x = _encoder(tower.encoder.layers, x, _key_mask(mask, x.shape[1], False, x.dtype), prompts, 0)
        x = tower.final_layer_norm(x)
        return tower.head(x[:, -1])  # the last position, which stays a padding token
    if family == "chinese_clip":
        embeddings = tower.embeddings
        token_types = inputs["token_type_ids"]
        x = embeddings.word_embeddings(ids)
        if n:
            x, mask = _insert(x, 1, prompts[0].expand(batch, -1, -1)), _insert(mask, 1, ones)
            token_types = _insert(token_types, 1, token_types[:, :1].expand(-1, n))
        x = x + embeddings.token_type_embeddings(token_types)
        x = embeddings.LayerNorm(x + embeddings.position_embeddings(torch.arange(x.shape[1])))
        x = _encoder(tower.encoder.layer, x, _key_mask(mask, x.shape[1], False, x.dtype), prompts, 1)
        return model.text_projection(x[:, 0])
    if family == "altclip":
        embeddings = tower.roberta.embeddings
        pad = tower.config.pad_token_id
        real = ids != pad
        x = embeddings.word_embeddings(ids)
        if n:
            x, mask = _insert(x, 1, prompts[0].expand(batch, -1, -1)), _insert(mask, 1, ones)
            real = _insert(real, 1, ones.bool())
        positions = torch.cumsum(real.long(), dim=1) * real + pad  # XLM-R: from pad + 1; padding stays at pad
        x = x + embeddings.token_type_embeddings(torch.zeros_like(positions))
        x = embeddings.LayerNorm(x + embeddings.position_embeddings(positions))
        x = _encoder(tower.roberta.encoder.layers, x, _key_mask(mask, x.shape[1], False, x.dtype), prompts, 1)
        x = tower.transformation(tower.pre_LN(x))
        return model.text_projection(x[:, 0])
    raise AssertionError(family)


def ref_image(
    family: str, model: nn.Module, inputs: dict, prompts: torch.Tensor | None, pool_prompts: bool = False
) -> torch.Tensor:
    """The image features (what `get_image_features` pools and projects)."""
    tower = model.vision_model
    pixel_values = inputs["pixel_values"]
    batch = pixel_values.shape[0]
    n = 0 if prompts is None else prompts.shape[1]
    if family == "siglip2":
        x = tower.embeddings(pixel_values, inputs["spatial_shapes"])
    else:
        x = tower.embeddings(pixel_values)
    tokens = x.shape[1]
    if n:
        x = torch.cat([x, prompts[0].expand(batch, -1, -1)], dim=1)  # appended after the last token
    if family not in ("siglip", "siglip2"):
        x = tower.pre_layrnorm(x)
        x = _encoder(tower.encoder.layers, x, None, prompts, None)
        return model.visual_projection(tower.post_layernorm(x[:, 0]))
    patch_mask = inputs.get("pixel_attention_mask")
    widened = None
    if patch_mask is not None:
        widened = torch.cat([patch_mask, torch.ones(batch, n, dtype=patch_mask.dtype)], dim=1)
    x = _encoder(tower.encoder.layers, x, _key_mask(widened, x.shape[1], False, x.dtype), prompts, None)
    x = tower.post_layernorm(x)
    head_args = () if patch_mask is None else ((widened if pool_prompts else patch_mask),)
    return tower.head(x if pool_prompts else x[:, :tokens], *head_args)  # attention pooling


def ref_outputs(family, model, inputs, text_prompts=None, vision_prompts=None, pool_prompts=False) -> dict:
    text = ref_text(family, model, text_part(inputs), text_prompts)
    image = ref_image(family, model, image_part(inputs), vision_prompts, pool_prompts)
    text_n = text / text.norm(dim=-1, keepdim=True)
    image_n = image / image.norm(dim=-1, keepdim=True)
    logits = model.logit_scale.exp() * image_n @ text_n.T
    if hasattr(model, "logit_bias"):
        logits = logits + model.logit_bias
    return {
        "text_features": text,
        "image_features": image,
        "text_embeds": text_n,
        "image_embeds": image_n,
        "logits": logits,
    }


def run_model(model, inputs) -> dict:
    with torch.no_grad():
        out = model(**inputs)
        text = model.get_text_features(**text_part(inputs)).pooler_output
        image = model.get_image_features(**image_part(inputs)).pooler_output
    return {
        "text_features": text,
        "image_features": image,
        "text_embeds": out.text_embeds,
        "image_embeds": out.image_embeds,
        "logits": out.logits_per_image,
    }


def assert_matches(actual: dict, expected: dict, model, atol: float = 1e-6) -> None:
    """`atol` on features and embeddings, `atol * logit_scale.exp()` on the logits (their fp32 rounding noise)."""
    scale = float(model.logit_scale.detach().exp())
    for key, value in expected.items():
        tol = atol * max(scale, 1.0) if key == "logits" else atol
        torch.testing.assert_close(actual[key], value, atol=tol, rtol=atol, msg=lambda m, k=key: f"{k}: {m}")


def used_prompts(peft_model, adapter: str = "default"):
    """The prompts each tower uses (after the fusion), `None` for a tower the adapter leaves alone."""
    inner = peft_model.base_model.model
    result = []
    for tower in (inner.text_model, inner.vision_model):
        prompting = isinstance(tower, MuDPTLayer) and adapter in tower.mudpt_fusion
        result.append(tower.used_prompts(adapter).detach() if prompting else None)
    return tuple(result)


def randomize_adapter(model, seed: int = 0, adapter: str = "default") -> None:
    """Non-trivial prompts (std 1) and fusion weights (perturbed by std 0.3)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if f".{adapter}" not in name:
                continue
            if "mudpt_prompts" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
            elif "mudpt_fusion" in name:
                parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))


def small(method: str, **overrides) -> MuDPTConfig:
    settings = {"depth": 3, "vision_n_ctx": 2} if method == "vpt" else {"depth": 3, "n_ctx": 2}
    if METHOD_PRESETS[method].get("ctx_init"):  # KgCoOp, PromptSRC: the tiny models have no tokenizer
        settings["ctx_init"] = None
    return MuDPTConfig.for_method(method, **{**settings, **overrides})


def adapted(family: str, config: MuDPTConfig | None = None, seed: int = 0, attn: str | None = None):
    model = make_model(family, attn=attn)
    pristine = frozen_copy(model)
    peft_model = get_peft_model(model, config or small("mudpt")).eval()
    randomize_adapter(peft_model, seed)
    return peft_model, pristine


# --------------------------------------------------------------------------------------------------------------------
# Independent fusion reference (the prompts each tower uses, from the learned tensors and the fusion weights)
# --------------------------------------------------------------------------------------------------------------------


def ref_fusion(peft_model, config: MuDPTConfig, adapter: str = "default"):
    inner = peft_model.base_model.model
    text_tower, vision_tower = inner.text_model, inner.vision_model
    text = text_tower.mudpt_prompts[adapter] if config.text_prompts else None
    vision = (
        vision_tower.mudpt_prompts[adapter] if config.vision_prompts and config.fusion != "text_to_vision" else None
    )
    if config.fusion == "none":
        return text, vision
    text_fusion, vision_fusion = text_tower.mudpt_fusion[adapter], vision_tower.mudpt_fusion[adapter]
    common = min(config.resolved_text_depth, config.resolved_vision_depth)
    if config.fusion == "text_to_vision":
        return text, torch.stack([F.linear(text[j], p.weight, p.bias) for j, p in enumerate(vision_fusion.projections)])
    text_used, vision_used = text.clone(), vision.clone()
    if config.fusion == "shared_linear":
        vision_used[0] = vision[0] + F.linear(text[0], *_wb(vision_fusion.first_projection))
        for j in range(1, common):
            text_used[j] = text[j] + F.linear(vision[j], *_wb(text_fusion.deep_projection))
            vision_used[j] = vision[j] + F.linear(text[j], *_wb(vision_fusion.deep_projection))
    elif config.fusion == "linear":
        for j in range(1, common):
            text_used[j] = text[j] + F.linear(vision[j], *_wb(text_fusion.projections[j - 1]))
            vision_used[j] = vision[j] + F.linear(text[j], *_wb(vision_fusion.projections[j - 1]))
    elif config.fusion == "injection":
        heads = config.injection_heads
        vision_used[:common] = vision[:common] + ref_injection(text[:common], vision_fusion, heads or 1)
        if common > 1:
            text_used[1:common] = text[1:common] + ref_injection(vision[1:common], text_fusion, heads or 1)
    else:  # cross_attention: own_j + out(Attn(q=query(LN(own_j)), k, v=key_value(LN(other_j))))
        for own, other, fusion, used in (
            (text, vision, text_fusion, text_used),
            (vision, text, vision_fusion, vision_used),
        ):
            heads = fusion.num_heads

            def split(t, heads=heads):
                return t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)

            query = F.linear(F.layer_norm(own[:common], (own.shape[-1],), *_wb(fusion.ln_query)), *_wb(fusion.query))
            context = F.layer_norm(other[:common], (other.shape[-1],), *_wb(fusion.ln_context))
            key, value = F.linear(context, *_wb(fusion.key_value)).chunk(2, dim=-1)
            attended = ref_attention(split(query), split(key), split(value), None)
            used[:common] = own[:common] + F.linear(attended, *_wb(fusion.out_proj))
    return text_used, vision_used


def _wb(module):
    return module.weight, module.bias


# --------------------------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_resolves_to_its_spec(family):
    spec = mudpt_peft.get_family_spec(make_model(family))
    assert spec.name == family
    assert SPECS[family].model_class.__name__ in mudpt_peft.supported_model_classes()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", FAMILIES)
def test_reference_reproduces_the_base_model(family, attn):
    model = make_model(family, attn=attn)
    inputs = make_inputs(family)
    with torch.no_grad():
        assert_matches(run_model(model, inputs), ref_outputs(family, model, inputs), model)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", FAMILIES)
def test_wrapped_matches_the_reference(family, attn):
    config = small("mudpt", injection_layers=2, text_depth=2)  # asymmetric depths, two injection blocks
    model, pristine = adapted(family, config, attn=attn)
    inputs = make_inputs(family)
    text, vision = used_prompts(model)
    assert text.shape == (2, 2, TEXT_WIDTH) and vision.shape == (3, 2, VISION_WIDTH)
    with torch.no_grad():
        expected = ref_outputs(family, pristine, inputs, text, vision)
        base = ref_outputs(family, pristine, inputs)
        flipped = ref_outputs(family, pristine, inputs, text.flip(0), vision.flip(0))
    actual = run_model(model, inputs)
    assert_matches(actual, expected, pristine)
    for key in ("text_embeds", "image_embeds"):  # non-trivial, and the reference is sensitive to the layer order
        assert (actual[key] - base[key]).abs().max() > 1e-3, key
        assert (flipped[key] - expected[key]).abs().max() > 1e-3, key


# CoCoOp's text features exist only for an image: test_cocoop_matches_the_reference_per_image
@pytest.mark.parametrize("method", [name for name in METHOD_PRESETS if name != "cocoop"])
@pytest.mark.parametrize("family", FAMILIES)
def test_every_method_matches_the_reference(family, method):
    config = small(method)
    model, pristine = adapted(family, config)
    inputs = make_inputs(family)
    text, vision = used_prompts(model)
    expected_text, expected_vision = ref_fusion(model, model.peft_config["default"])
    for used, expected in ((text, expected_text), (vision, expected_vision)):
        assert (used is None) == (expected is None)
        if used is not None:
            # fp32 rounding of the Injection Model on prompts of std 1 (values up to ~10)
            torch.testing.assert_close(used, expected.detach(), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        expected = ref_outputs(family, pristine, inputs, text, vision)
    assert_matches(run_model(model, inputs), expected, pristine)


@pytest.mark.parametrize("family", FAMILIES)
def test_cocoop_matches_the_reference_per_image(family):
    """CoCoOp: the text features encoded for image `i` are the reference's with the layer-0 prompts shifted by the
    meta-net (computed here by hand) of image `i`'s L2-normalised features; the vision tower is the base model's."""
    model, pristine = adapted(family, small("cocoop", depth=1))  # the preset's depth: the shift acts at layer 0 only
    inputs = make_inputs(family)
    text_prompts, vision_prompts = used_prompts(model)
    assert vision_prompts is None and text_prompts.shape == (1, 2, TEXT_WIDTH)
    tower = model.base_model.model.text_model
    meta_net = tower.mudpt_fusion["default"]
    with torch.no_grad():
        generator = torch.Generator().manual_seed(5)
        for parameter in (meta_net.linear2.weight, meta_net.linear2.bias):  # a shift the features clearly show
            parameter.copy_(2 * torch.randn(parameter.shape, generator=generator))
        image = model.get_image_features(**image_part(inputs)).pooler_output
        torch.testing.assert_close(image, pristine.get_image_features(**image_part(inputs)).pooler_output)
        x = F.normalize(image, dim=-1)
        shift = F.linear(F.linear(x, *_wb(meta_net.linear1)).relu(), *_wb(meta_net.linear2))
        batch = inputs["input_ids"].shape[0]
        for i in range(x.shape[0]):
            shifted = text_prompts.clone()
            shifted[0] = shifted[0] + shift[i]
            expected = ref_text(family, pristine, text_part(inputs), shifted)
            with tower.conditioned(tower.image_shift(x[i : i + 1]).expand(batch, -1)):
                actual = model.get_text_features(**text_part(inputs)).pooler_output
            # fp32 rounding: per-row prompts are materialised, the reference expands them (measured up to 1.1e-6)
            torch.testing.assert_close(actual, expected, atol=3e-6, rtol=1e-6)
            assert (expected - ref_text(family, pristine, text_part(inputs), text_prompts)).abs().max() > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_lifecycle_is_exact(family, tmp_path):
    """save / load, disable_adapter, several adapters, unload: bit-exact."""
    inputs = make_inputs(family)
    base = make_model(family)
    pristine = frozen_copy(base)  # like with like: the PeftModel's base is frozen too
    hooks_before = hooks_of(base)
    expected_base = run_model(pristine, inputs)

    model = get_peft_model(base, small("mudpt"))
    randomize_adapter(model, seed=1)
    model.eval()
    adapted_out = run_model(model, inputs)
    assert not torch.allclose(adapted_out["logits"], expected_base["logits"])
    with model.disable_adapter():
        disabled = run_model(model, inputs)
    for key, value in expected_base.items():
        assert torch.equal(disabled[key], value), key

    model.save_pretrained(tmp_path)
    kwargs = {"low_cpu_mem_usage": True} if family in ("siglip", "siglip2", "altclip") else {}  # both paths, half each
    loaded = PeftModel.from_pretrained(make_model(family), tmp_path, **kwargs)
    reloaded = run_model(loaded, inputs)
    for key, value in adapted_out.items():
        assert torch.equal(reloaded[key], value), key

    # a second adapter of another method: each one alone gives what a model with only that adapter gives
    single = get_peft_model(make_model(family), small("maple", n_ctx=3), adapter_name="second")
    randomize_adapter(single, seed=2, adapter="second")
    model.add_adapter("second", small("maple", n_ctx=3))
    model.load_state_dict({k: v for k, v in single.state_dict().items() if "mudpt_" in k}, strict=False)
    model.set_adapter("second")
    assert torch.equal(run_model(model, inputs)["logits"], run_model(single, inputs)["logits"])
    model.set_adapter("default")
    assert torch.equal(run_model(model, inputs)["logits"], adapted_out["logits"])

    unloaded = model.unload()
    assert unloaded is base and not any(isinstance(m, MuDPTLayer) for m in unloaded.modules())
    assert list(unloaded.state_dict()) == list(pristine.state_dict())
    assert [type(m) for m in unloaded.modules()] == [type(m) for m in pristine.modules()]
    assert hooks_of(unloaded) == hooks_before
    after = run_model(unloaded, inputs)
    for key, value in expected_base.items():
        assert torch.equal(after[key], value), key


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing_enable` is deprecated:FutureWarning")
@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_checkpointing_gives_the_same_gradients(family):
    inputs = make_inputs(family)

    def gradients(checkpointing: bool) -> dict[str, torch.Tensor]:
        model, _ = adapted(family, small("mudpt"))
        if checkpointing:
            model.base_model.model.gradient_checkpointing_enable({"use_reentrant": False})
        model.train()
        model(**inputs, return_loss=True).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    plain, checkpointed = gradients(False), gradients(True)
    assert plain.keys() == checkpointed.keys() and len(plain) > 10
    for name, grad in plain.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("family", FAMILIES)
def test_text_inputs_are_widened_consistently(family):
    """Explicit position ids give the default; inputs padded past the positions drop padding or fail clearly."""
    model, _ = adapted(family, small("mudpt", n_ctx=3))
    inner = model.base_model.model
    inputs = make_text(family)
    length = inputs["input_ids"].shape[1]
    with torch.no_grad():
        default = inner.text_model(**inputs).last_hidden_state
        if family == "altclip":  # XLM-R position ids: from pad + 1, padding at pad
            positions = inner.text_model.roberta.embeddings.create_position_ids_from_input_ids(
                inputs["input_ids"], SPECS[family].pad
            )
        else:
            positions = torch.arange(length)[None]
        explicit = inner.text_model(**inputs, position_ids=positions).last_hidden_state
    assert default.shape[1] == length + 3
    torch.testing.assert_close(explicit, default, atol=0, rtol=0)

    # 16 positions (XLM-R: 16 after the offset), 3 prompt tokens: rows of up to 13 tokens, padded to 16, are trimmed
    short = make_text(family, seed=5, length=13, real=[12, 11, 9])
    padded = {
        k: torch.cat([v, torch.full((BATCH, 3), SPECS[family].pad if k == "input_ids" else 0, dtype=v.dtype)], 1)
        for k, v in short.items()
    }
    for keys in (("input_ids", "attention_mask", "token_type_ids"), ("input_ids", "token_type_ids")):
        with torch.no_grad():
            trimmed = inner.text_model(**{k: v for k, v in padded.items() if k in keys})
            reference = inner.text_model(**{k: v for k, v in short.items() if k in keys})
        assert trimmed.last_hidden_state.shape[1] == MAX_POSITIONS  # the pooled last position stays at the end
        torch.testing.assert_close(trimmed.last_hidden_state, reference.last_hidden_state, atol=1e-6, rtol=1e-6)
        too_long = make_text(family, seed=6, length=MAX_POSITIONS, real=[MAX_POSITIONS - 1, 13, 9])
        with pytest.raises(ValueError, match=rf"max_length={MAX_POSITIONS - 3}, truncation=True"):
            inner.text_model(**{k: v for k, v in too_long.items() if k in keys})


@pytest.mark.parametrize("family", ["siglip", "siglip2"])
def test_siglip_text_keeps_the_padded_length_and_the_last_position(family):
    """Padded to `max_length` (SigLIP's training setup), the sequence keeps its length: the prompts go first, the
    pooled position stays the last, a padding token, with the same position embedding; without an attention mask
    the trailing padding ids are recognised (SigLIP pads with its EOS `</s>`, of which one is kept)."""
    model, pristine = adapted(family, small("ivlp", n_ctx=3))
    inner = model.base_model.model
    full = make_text(family, seed=3, length=MAX_POSITIONS, real=[12, 9, 4])
    for keys in (("input_ids", "attention_mask"), ("input_ids",)):
        text_inputs = {k: full[k] for k in keys}
        prompts, _ = used_prompts(model)
        with torch.no_grad():
            out = inner.text_model(**text_inputs)
            expected = ref_text(family, pristine, text_inputs, prompts)
        assert out.last_hidden_state.shape[1] == MAX_POSITIONS
        torch.testing.assert_close(out.pooler_output, expected, atol=1e-6, rtol=1e-6)
    # 14 real tokens (no BOS; EOS included) leave no room for 3 prompts: nothing is dropped silently
    too_long = make_text(family, seed=4, length=MAX_POSITIONS, real=[14, 5, 5])
    for keys in (("input_ids", "attention_mask"), ("input_ids",)):
        with pytest.raises(ValueError, match=r"hold 1[45] tokens that must be kept.*max_length=13"):
            inner.text_model(**{k: too_long[k] for k in keys})


def test_siglip_pooling_head_sees_the_prompts_only_when_asked():
    """Default: the attention-pooling head pools the image tokens only; `pool_visual_prompts=True` includes the
    prompts (a registered variant of the spec)."""
    inputs = make_images("siglip")
    for pool_prompts in (False, True):
        spec = dataclasses.replace(families.SIGLIP_SPEC, pool_visual_prompts=pool_prompts)
        saved = list(families._FAMILY_SPECS)
        try:
            mudpt_peft.register_family(spec)
            model, pristine = adapted("siglip", small("vpt"))
        finally:
            families._FAMILY_SPECS[:] = saved
        head = model.base_model.model.vision_model.base_layer.head
        assert isinstance(head, MuDPTPoolingHead) != pool_prompts
        _, vision = used_prompts(model)
        with torch.no_grad():
            actual = model.get_image_features(**inputs).pooler_output
            expected = ref_image("siglip", pristine, inputs, vision, pool_prompts=pool_prompts)
            other = ref_image("siglip", pristine, inputs, vision, pool_prompts=not pool_prompts)
        torch.testing.assert_close(actual, expected, atol=1e-6, rtol=1e-6)
        assert (actual - other).abs().max() > 1e-3


def test_siglip2_patch_mask_is_widened_and_padding_patches_stay_masked():
    model, pristine = adapted("siglip2", small("vpt"))
    inputs = make_images("siglip2")
    with torch.no_grad():
        out = model.base_model.model.vision_model(**inputs)
        # padding patches are still ignored: changing them changes nothing
        noisy = dict(inputs, pixel_values=inputs["pixel_values"] + 5 * (1 - inputs["pixel_attention_mask"][..., None]))
        noisy_out = model.base_model.model.vision_model(**noisy)
    assert out.last_hidden_state.shape[1] == 6 + 2
    torch.testing.assert_close(noisy_out.pooler_output, out.pooler_output, atol=1e-6, rtol=1e-6)
    # and the prompts are attended to: the reference without widening the mask differs
    _, vision = used_prompts(model)
    with torch.no_grad():
        x = pristine.vision_model.embeddings(inputs["pixel_values"], inputs["spatial_shapes"])
        x = torch.cat([x, vision[0].expand(3, -1, -1)], 1)
        unwidened = torch.cat([inputs["pixel_attention_mask"], torch.zeros(3, 2, dtype=torch.long)], 1)
        x = _encoder(pristine.vision_model.encoder.layers, x, _key_mask(unwidened, 8, False, x.dtype), vision, None)
        masked = pristine.vision_model.head(
            pristine.vision_model.post_layernorm(x)[:, :6], inputs["pixel_attention_mask"]
        )
    assert (masked - out.pooler_output).abs().max() > 1e-3


def test_prompt_classifier_uses_siglip_logit_bias(tmp_path):
    tokenizer_dir = make_tokenizer_files(tmp_path / "tokenizer")
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    model, _ = adapted("siglip", small("mudpt"))
    classifier = mudpt_peft.PromptClassifier(model, tokenizer, ["cat", "dog", "photo"], template="{}").eval()
    pixel_values = make_images("siglip")["pixel_values"]
    with torch.no_grad():
        logits = classifier(pixel_values=pixel_values).logits
        text = model.get_text_features(
            input_ids=classifier.class_input_ids, attention_mask=classifier.class_attention_mask
        ).pooler_output
        image = model.get_image_features(pixel_values=pixel_values).pooler_output
        full = model(
            input_ids=classifier.class_input_ids,
            attention_mask=classifier.class_attention_mask,
            pixel_values=pixel_values,
        ).logits_per_image
    inner = model.base_model.model
    cos = F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
    expected = inner.logit_scale.exp() * cos + inner.logit_bias
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(logits, full, atol=1e-5, rtol=1e-6)
    assert (logits - inner.logit_scale.exp() * cos).abs().min() > 1.0  # the bias (-2.5) is applied


# --------------------------------------------------------------------------------------------------------------------
# Unsupported models and custom families
# --------------------------------------------------------------------------------------------------------------------


class TwoTowers(nn.Module):
    """A custom dual encoder: a `CLIPTextModel` and a `CLIPVisionModel` under other names, in a container."""

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.config = config
        self.towers = nn.ModuleDict(
            {"language": CLIPTextModel(config.text_config), "image": CLIPVisionModel(config.vision_config)}
        )
        self.text_projection = nn.Linear(config.text_config.hidden_size, 24, bias=False)
        self.visual_projection = nn.Linear(config.vision_config.hidden_size, 24, bias=False)
        self.scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, input_ids, pixel_values, attention_mask=None):
        text = self.towers["language"](input_ids=input_ids, attention_mask=attention_mask).pooler_output
        image = self.towers["image"](pixel_values=pixel_values).pooler_output
        text, image = self.text_projection(text), self.visual_projection(image)
        return self.scale.exp() * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T


TWO_TOWERS_SPEC = mudpt_peft.FamilySpec(
    name="two_towers", model_classes=(TwoTowers,), text_tower="towers.language", vision_tower="towers.image"
)


@pytest.fixture
def isolated_registry(monkeypatch):
    monkeypatch.setattr(families, "_FAMILY_SPECS", list(families._FAMILY_SPECS))


@pytest.mark.parametrize(
    "make",
    [
        lambda: CLIPTextModel(SPECS["clip"].config().text_config),
        lambda: SiglipVisionModel(SPECS["siglip"].config().vision_config),
        lambda: TwoTowers(SPECS["clip"].config()),
    ],
    ids=["text-only", "vision-only", "unregistered"],
)
def test_unsupported_models_are_refused_with_the_supported_classes(make, isolated_registry):
    model = make()
    with pytest.raises(ValueError, match=r"MuDPT does not support .*Supported classes: .*SiglipModel") as error:
        get_peft_model(model, small("mudpt"))
    for name in ("AltCLIPModel", "ChineseCLIPModel", "CLIPModel", "MetaClip2Model", "Siglip2Model"):
        assert name in str(error.value)
    assert not any(isinstance(m, MuDPTLayer) for m in model.modules())


def test_a_custom_family_registered_without_editing_the_library(isolated_registry):
    torch.manual_seed(0)
    base = TwoTowers(SPECS["clip"].config()).eval()
    pristine = frozen_copy(base)
    inputs = make_inputs("clip")
    mudpt_peft.register_family(TWO_TOWERS_SPEC)
    assert mudpt_peft.get_family_spec(base) is TWO_TOWERS_SPEC and "TwoTowers" in mudpt_peft.supported_model_classes()
    model = get_peft_model(base, small("mudpt")).eval()
    randomize_adapter(model)
    language, image = base.towers["language"], base.towers["image"]
    assert isinstance(language, MuDPTLayer) and isinstance(image, MuDPTLayer)
    text, vision = language.used_prompts("default").detach(), image.used_prompts("default").detach()
    # the reference: CLIP's, on the renamed towers of the pristine copy
    as_clip = nn.Module()
    as_clip.text_model, as_clip.vision_model = pristine.towers["language"], pristine.towers["image"]
    as_clip.text_projection, as_clip.visual_projection = pristine.text_projection, pristine.visual_projection
    with torch.no_grad():
        t = F.normalize(ref_text("clip", as_clip, text_part(inputs), text), dim=-1)
        i = F.normalize(ref_image("clip", as_clip, image_part(inputs), vision), dim=-1)
        expected = pristine.scale.exp() * i @ t.T
        actual = model(
            input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"], attention_mask=inputs["attention_mask"]
        )
    torch.testing.assert_close(actual, expected, atol=1e-6 * math.exp(2.0), rtol=1e-6)
    call = {k: inputs[k] for k in ("input_ids", "pixel_values", "attention_mask")}
    with model.disable_adapter(), torch.no_grad():
        assert torch.equal(model(**call), pristine(**call))
    assert model.unload() is base and not any(isinstance(m, MuDPTLayer) for m in base.modules())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model_classes": ()}, "non-empty tuple of classes"),
        ({"model_classes": TwoTowers}, "non-empty tuple of classes"),
        ({"text_tower": ""}, "`text_tower` must be a non-empty"),
        ({"text_pooling": "mean"}, "`text_pooling` must be one of"),
        ({"text_pooling": "first", "has_bos": False}, "needs `has_bos=True`"),
        ({"text_padding": "max"}, "`text_padding` must be"),
    ],
)
def test_invalid_specs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mudpt_peft.FamilySpec(**{"name": "x", "model_classes": (TwoTowers,), **kwargs})
    with pytest.raises(ValueError, match="Expected a FamilySpec"):
        mudpt_peft.register_family("clip")
