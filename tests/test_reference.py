"""MuDPT forward vs an independent, hand-written plain-torch reference on the HF CLIP weights.

The reference below re-implements CLIP (embeddings, causal/padding-masked attention, quick_gelu MLPs, EOS/CLS
pooling, projections, logits) and the MuDPT prompt fusion + placement from the method's rules, reading only weights
(never calling the HF encoder layers or the package's modules). It is checked against the unwrapped base model first,
then used as the oracle for wrapped models: shallow, deep, asymmetric depths, multi-block/multi-head Injection Models,
and a Hypothesis property over random tiny configs that also covers save/load and unload round trips.
"""

from __future__ import annotations

import copy
import tempfile

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from peft import PeftModel, get_peft_model
from transformers import CLIPModel

import mudpt_peft

from .helpers import (
    make_clip,
    make_clip_config,
    make_inputs,
    ref_attention,
    ref_injection,
    ref_layer_norm,
    ref_linear,
    ref_quick_gelu,
)

ADAPTER = "default"


# --------------------------------------------------------------------------------------------------------------------
# Reference math (plain torch ops on raw weights)
# --------------------------------------------------------------------------------------------------------------------


def _act(name: str):
    if name == "quick_gelu":
        return ref_quick_gelu
    if name == "gelu":
        return F.gelu
    raise NotImplementedError(f"reference has no activation {name!r}")


def _clip_layer(x: torch.Tensor, layer, heads: int, eps: float, act, additive_mask: torch.Tensor | None):
    batch, tokens, width = x.shape
    head_dim = width // heads
    attn = layer.self_attn

    def split(t):
        return t.view(batch, tokens, heads, head_dim).transpose(1, 2)

    h = ref_layer_norm(x, layer.layer_norm1, eps)
    q, k, v = split(ref_linear(h, attn.q_proj)), split(ref_linear(h, attn.k_proj)), split(ref_linear(h, attn.v_proj))
    x = x + ref_linear(ref_attention(q, k, v, additive_mask), attn.out_proj)
    h = ref_layer_norm(x, layer.layer_norm2, eps)
    return x + ref_linear(act(ref_linear(h, layer.mlp.fc1)), layer.mlp.fc2)


def _tower(module):
    """The original HF tower, whether or not it is wrapped."""
    return getattr(module, "base_layer", module)


def ref_fused_prompts(clip: CLIPModel, peft_config, adapter: str = ADAPTER, fuse: bool = True):
    """(text prompts, vision prompts) after the cross-modal fusion, from the learned tensors of `clip`."""
    text_raw = clip.text_model.mudpt_prompts[adapter]
    vision_raw = clip.vision_model.mudpt_prompts[adapter]
    text_depth, vision_depth = text_raw.shape[0], vision_raw.shape[0]
    common = min(text_depth, vision_depth)
    text_width, vision_width = text_raw.shape[-1], vision_raw.shape[-1]
    t2v_heads = peft_config.injection_heads or max(1, text_width // 64)
    v2t_heads = peft_config.injection_heads or max(1, vision_width // 64)

    vision = vision_raw.clone()
    text = text_raw.clone()
    if fuse:
        t2v = ref_injection(text_raw[:common], clip.vision_model.mudpt_fusion[adapter], t2v_heads)
        vision[:common] = vision_raw[:common] + t2v
        if common > 1:
            v2t = ref_injection(vision_raw[1:common], clip.text_model.mudpt_fusion[adapter], v2t_heads)
            text[1:common] = text_raw[1:common] + v2t
    return text, vision


def ref_text(clip: CLIPModel, input_ids, attention_mask, prompts: torch.Tensor | None) -> torch.Tensor:
    """Projected (unnormalised) text features."""
    tm = _tower(clip.text_model)
    cfg = tm.config
    act = _act(cfg.hidden_act)
    batch, length = input_ids.shape
    n = 0 if prompts is None else prompts.shape[1]
    depth = 0 if prompts is None else prompts.shape[0]

    tok = tm.embeddings.token_embedding.weight[input_ids]
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    mask = attention_mask.to(torch.bool)
    if n:
        tok = torch.cat([tok[:, :1], prompts[0].expand(batch, n, -1), tok[:, 1:]], dim=1)
        mask = torch.cat([mask[:, :1], torch.ones(batch, n, dtype=torch.bool), mask[:, 1:]], dim=1)
    total = length + n
    x = tok + tm.embeddings.position_embedding.weight[:total]

    causal = torch.ones(total, total, dtype=torch.bool).tril()
    allowed = causal[None, :, :] & mask[:, None, :]  # (batch, query, key)
    additive = torch.zeros(batch, 1, total, total, dtype=x.dtype)
    additive = additive.masked_fill(~allowed[:, None], torch.finfo(x.dtype).min)

    for j, layer in enumerate(tm.encoder.layers):
        if 1 <= j < depth:
            x = torch.cat([x[:, :1], prompts[j].expand(batch, n, -1), x[:, 1 + n :]], dim=1)
        x = _clip_layer(x, layer, cfg.num_attention_heads, cfg.layer_norm_eps, act, additive)
    x = ref_layer_norm(x, tm.final_layer_norm, cfg.layer_norm_eps)

    assert cfg.eos_token_id != 2  # the legacy argmax pooling is not used by these tiny models
    eos = (input_ids == cfg.eos_token_id).int().argmax(dim=-1) + n  # first real EOS, shifted by the prompts
    pooled = x[torch.arange(batch), eos]
    return F.linear(pooled, clip.text_projection.weight)


def ref_image(clip: CLIPModel, pixel_values, prompts: torch.Tensor | None) -> torch.Tensor:
    """Projected (unnormalised) image features."""
    vm = _tower(clip.vision_model)
    cfg = vm.config
    act = _act(cfg.hidden_act)
    emb = vm.embeddings
    batch = pixel_values.shape[0]
    n = 0 if prompts is None else prompts.shape[1]
    depth = 0 if prompts is None else prompts.shape[0]

    patches = F.conv2d(pixel_values, emb.patch_embedding.weight, stride=cfg.patch_size)
    patches = patches.flatten(2).transpose(1, 2)
    cls = emb.class_embedding.view(1, 1, -1).expand(batch, 1, -1)
    x = torch.cat([cls, patches], dim=1)
    x = x + emb.position_embedding.weight[: x.shape[1]]
    if n:
        x = torch.cat([x, prompts[0].expand(batch, n, -1)], dim=1)
    x = ref_layer_norm(x, vm.pre_layrnorm, cfg.layer_norm_eps)
    for j, layer in enumerate(vm.encoder.layers):
        if 1 <= j < depth:
            x = torch.cat([x[:, :-n], prompts[j].expand(batch, n, -1)], dim=1)
        x = _clip_layer(x, layer, cfg.num_attention_heads, cfg.layer_norm_eps, act, None)
    pooled = ref_layer_norm(x[:, 0], vm.post_layernorm, cfg.layer_norm_eps)
    return F.linear(pooled, clip.visual_projection.weight)


def ref_clip(clip: CLIPModel, inputs, text_prompts=None, vision_prompts=None) -> dict[str, torch.Tensor]:
    txt = ref_text(clip, inputs["input_ids"], inputs.get("attention_mask"), text_prompts)
    img = ref_image(clip, inputs["pixel_values"], vision_prompts)
    txt_n = txt / txt.pow(2).sum(-1, keepdim=True).sqrt()
    img_n = img / img.pow(2).sum(-1, keepdim=True).sqrt()
    logits = clip.logit_scale.exp() * (img_n @ txt_n.T)
    return {"text_features": txt, "image_features": img, "text_embeds": txt_n, "image_embeds": img_n, "logits": logits}


def ref_wrapped(peft_model: PeftModel, inputs, fuse: bool = True) -> dict[str, torch.Tensor]:
    clip = peft_model.base_model.model
    text, vision = ref_fused_prompts(clip, peft_model.peft_config[ADAPTER], fuse=fuse)
    return ref_clip(clip, inputs, text, vision)


# --------------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------------


def randomize_adapter(model: torch.nn.Module, seed: int = 123) -> None:
    """Random, non-trivial prompts (std 1) and Injection Model weights (perturbed by std 0.3)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "mudpt_prompts" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            elif "mudpt_fusion" in name:
                p.add_(0.3 * torch.randn(p.shape, generator=gen))


def run_model(model, inputs) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = model(**inputs)
        txt = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        img = model.get_image_features(pixel_values=inputs["pixel_values"])
    return {
        "logits": out.logits_per_image,
        "text_embeds": out.text_embeds,
        "image_embeds": out.image_embeds,
        "text_features": txt.pooler_output,
        "image_features": img.pooler_output,
    }


def assert_matches(actual: dict, expected: dict, atol: float, rtol: float, logits_atol: float | None = None) -> None:
    """`logits_atol` defaults to `atol`; the logits are `logit_scale.exp()` (~14.3) times cosine similarities, so in
    fp32 their rounding noise is ~14x that of the unit-norm embeddings (a few ulps of values up to ~14)."""
    for key in ("logits", "text_embeds", "image_embeds", "text_features", "image_features"):
        tol = atol if key != "logits" or logits_atol is None else logits_atol
        torch.testing.assert_close(actual[key], expected[key], atol=tol, rtol=rtol, msg=lambda m, k=key: f"{k}: {m}")


def build_clip(seed: int, text_heads: int = 4, vision_heads: int = 4, **kwargs) -> CLIPModel:
    config = make_clip_config(**kwargs)
    config.text_config.num_attention_heads = text_heads
    config.vision_config.num_attention_heads = vision_heads
    torch.manual_seed(seed)
    return CLIPModel(config).eval()


# --------------------------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attn", [None, "eager"])
def test_reference_reproduces_base_clip(attn):
    clip = make_clip(attn_implementation=attn)
    inputs = make_inputs()
    with torch.no_grad():
        out = clip(**inputs)
        ref = ref_clip(clip, inputs)
    # 1e-6 on the cosine similarities, i.e. 1e-6 * logit_scale.exp() on the logits (see `assert_matches`).
    logits_atol = 1e-6 * clip.logit_scale.exp().item()
    torch.testing.assert_close(ref["logits"], out.logits_per_image, atol=logits_atol, rtol=1e-6)
    torch.testing.assert_close(ref["text_embeds"], out.text_embeds, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ref["image_embeds"], out.image_embeds, atol=1e-6, rtol=1e-6)


CASES = {
    "shallow": dict(depth=1, n_ctx=2),
    "deep": dict(depth=3, n_ctx=3),
    "full_depth_multihead": dict(depth=4, n_ctx=2, injection_heads=4),
    "text_shallower_2blocks": dict(depth=3, text_depth=2, vision_depth=4, n_ctx=2, injection_layers=2),
    "vision_shallower_2blocks": dict(
        depth=2, text_depth=4, vision_depth=3, n_ctx=1, injection_layers=2, injection_heads=2
    ),
    "vision_depth_1": dict(depth=3, vision_depth=1, n_ctx=2),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("case", list(CASES))
def test_wrapped_matches_reference(case, dtype):
    """fp32 at 1e-6 as asked; fp64 (sdpa attention, whose math stays in fp64) at 1e-12 pins down the math itself,
    well below any fp32 rounding noise. (HF's eager attention does its softmax in fp32, so it is not used in fp64.)"""
    kwargs = CASES[case]
    clip = make_clip()
    pristine = copy.deepcopy(clip).to(dtype)
    inputs = make_inputs()
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    model = get_peft_model(clip, mudpt_peft.MuDPTConfig(**kwargs)).eval()
    assert model.base_model.model is clip

    cfg = model.peft_config[ADAPTER]
    text_depth = kwargs.get("text_depth", kwargs["depth"])
    vision_depth = kwargs.get("vision_depth", kwargs["depth"])
    assert clip.text_model.mudpt_prompts[ADAPTER].shape == (text_depth, kwargs["n_ctx"], 32)
    assert clip.vision_model.mudpt_prompts[ADAPTER].shape == (vision_depth, kwargs["n_ctx"], 48)
    assert len(clip.vision_model.mudpt_fusion[ADAPTER].blocks) == cfg.injection_layers
    if min(text_depth, vision_depth) > 1:
        assert len(clip.text_model.mudpt_fusion[ADAPTER].blocks) == cfg.injection_layers
    else:  # no deep layer shared by both towers: the V2T model would be unused, and is not created
        assert not list(clip.text_model.mudpt_fusion[ADAPTER].parameters())

    randomize_adapter(model)
    model.to(dtype)
    actual = run_model(model, inputs)
    assert actual["logits"].dtype == dtype
    with torch.no_grad():
        expected = ref_wrapped(model, inputs)
        unfused = ref_wrapped(model, inputs, fuse=False)
    if dtype == torch.float64:
        assert_matches(actual, expected, atol=1e-12, rtol=1e-12)
    else:
        assert_matches(actual, expected, atol=1e-6, rtol=1e-6, logits_atol=1e-6 * clip.logit_scale.exp().item())

    # Non-triviality: the adapter changes the outputs, and the Injection Models matter.
    base = run_model(pristine, inputs)
    for key in ("logits", "text_embeds", "image_embeds"):
        assert (actual[key] - base[key]).abs().max() > 1e-3, key
    assert (actual["image_embeds"] - unfused["image_embeds"]).abs().max() > 1e-3
    if min(text_depth, vision_depth) > 1:
        assert (actual["text_embeds"] - unfused["text_embeds"]).abs().max() > 1e-3


def test_reference_is_sensitive_to_placement():
    """Guard for the reference itself: moving a prompt by one layer changes the result."""
    clip = make_clip()
    inputs = make_inputs()
    model = get_peft_model(clip, mudpt_peft.MuDPTConfig(depth=3, n_ctx=2)).eval()
    randomize_adapter(model)
    with torch.no_grad():
        text, vision = ref_fused_prompts(clip, model.peft_config[ADAPTER])
        good = ref_clip(clip, inputs, text, vision)
        bad_text = ref_clip(clip, inputs, text.flip(0), vision)
        bad_vision = ref_clip(clip, inputs, text, vision.flip(0))
    assert (good["text_embeds"] - bad_text["text_embeds"]).abs().max() > 1e-3
    assert (good["image_embeds"] - bad_vision["image_embeds"]).abs().max() > 1e-3


@st.composite
def small_setups(draw):
    text_width = draw(st.sampled_from([16, 32, 48, 64]))
    vision_width = draw(st.sampled_from([16, 32, 48, 64]))
    text_heads = draw(st.sampled_from([h for h in (1, 2, 4, 8) if text_width % h == 0]))
    vision_heads = draw(st.sampled_from([h for h in (1, 2, 4, 8) if vision_width % h == 0]))
    text_layers = draw(st.integers(1, 4))
    vision_layers = draw(st.integers(1, 4))
    depth = draw(st.integers(1, min(text_layers, vision_layers)))
    peft_kwargs = dict(
        depth=depth,
        n_ctx=draw(st.integers(1, 3)),
        injection_layers=draw(st.integers(0, 2)),
        injection_heads=draw(
            st.sampled_from([None] + [h for h in (1, 2, 4) if text_width % h == 0 and vision_width % h == 0])
        ),
    )
    if draw(st.booleans()):
        peft_kwargs["text_depth"] = draw(st.integers(1, text_layers))
    if draw(st.booleans()):
        peft_kwargs["vision_depth"] = draw(st.integers(1, vision_layers))
    clip_kwargs = dict(
        text_width=text_width,
        vision_width=vision_width,
        text_heads=text_heads,
        vision_heads=vision_heads,
        text_layers=text_layers,
        vision_layers=vision_layers,
        patch_size=draw(st.sampled_from([4, 8])),
        attn_implementation=draw(st.sampled_from([None, "eager"])),
    )
    batch = draw(st.integers(1, 3))
    length = draw(st.integers(4, 8))
    seed = draw(st.integers(0, 2**16))
    return clip_kwargs, peft_kwargs, batch, length, seed


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(setup=small_setups())
def test_property_reference_save_load_unload(setup):
    clip_kwargs, peft_kwargs, batch, length, seed = setup
    clip = build_clip(seed, **clip_kwargs)
    pristine = copy.deepcopy(clip)
    inputs = make_inputs(seed=seed + 1, batch=batch, length=length)

    model = get_peft_model(clip, mudpt_peft.MuDPTConfig(**peft_kwargs)).eval()
    randomize_adapter(model, seed=seed + 2)
    actual = run_model(model, inputs)
    with torch.no_grad():
        expected = ref_wrapped(model, inputs)
    assert_matches(actual, expected, atol=1e-5, rtol=1e-5)

    with tempfile.TemporaryDirectory() as tmpdir:
        model.save_pretrained(tmpdir)
        loaded = PeftModel.from_pretrained(build_clip(seed, **clip_kwargs), tmpdir).eval()
        reloaded = run_model(loaded, inputs)
    for key, value in actual.items():
        assert torch.equal(reloaded[key], value), key

    expected_base = run_model(pristine, inputs)
    unloaded = model.unload()
    assert isinstance(unloaded, CLIPModel)
    assert list(unloaded.state_dict()) == list(pristine.state_dict())
    after = run_model(unloaded, inputs)
    for key, value in expected_base.items():
        assert torch.equal(after[key], value), key
