"""Every entry point a user has goes through the prompts; numerics across attention kernels, dtypes, compile, GC."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import get_peft_model

from mudpt_peft import MuDPTConfig

from .helpers import EOS_ID, logits, make_clip, make_inputs, randomize_adapter

N_CTX = 2


def adapted(depth: int = 3, n_ctx: int = N_CTX, seed: int = 0, **clip_kwargs):
    model = get_peft_model(make_clip(**clip_kwargs), MuDPTConfig(depth=depth, n_ctx=n_ctx))
    randomize_adapter(model, seed=seed)
    return model


def text_kwargs(inputs):
    return {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}


def test_entry_points_agree(inputs):
    model = adapted()
    clip = model.base_model.model
    with torch.no_grad():
        full = model(**inputs)
        text = model.get_text_features(**text_kwargs(inputs)).pooler_output
        image = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
        text_tower = clip.text_projection(clip.text_model(**text_kwargs(inputs)).pooler_output)
        vision_tower = clip.visual_projection(clip.vision_model(pixel_values=inputs["pixel_values"]).pooler_output)
        as_tuple = model(**inputs, return_dict=False)
    torch.testing.assert_close(full.text_embeds, text / text.norm(dim=-1, keepdim=True), rtol=0, atol=1e-7)
    torch.testing.assert_close(full.image_embeds, image / image.norm(dim=-1, keepdim=True), rtol=0, atol=1e-7)
    assert torch.equal(text_tower, text) and torch.equal(vision_tower, image)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], full.logits_per_image)
    with torch.no_grad(), model.disable_adapter():
        assert not torch.allclose(model.get_text_features(**text_kwargs(inputs)).pooler_output, text)
        assert not torch.allclose(model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output, image)


def test_sequence_layout_and_pooling(inputs):
    model = adapted(depth=3, attn_implementation="eager")  # SDPA returns no attention weights
    clip = model.base_model.model
    batch, length = inputs["input_ids"].shape
    with torch.no_grad():
        text = clip.text_model(**text_kwargs(inputs), output_hidden_states=True, output_attentions=True)
        vision = clip.vision_model(pixel_values=inputs["pixel_values"], output_hidden_states=True)
    assert text.last_hidden_state.shape == (batch, length + N_CTX, 32)
    assert len(text.hidden_states) == 5 and len(text.attentions) == 4
    assert text.attentions[0].shape == (batch, 4, length + N_CTX, length + N_CTX)
    # pooling picks the real EOS, shifted by n_ctx
    eos = (inputs["input_ids"] == EOS_ID).int().argmax(-1) + N_CTX
    assert torch.equal(text.pooler_output, text.last_hidden_state[torch.arange(batch), eos])
    # layer-0 prompts carry the position embeddings of positions 1..n_ctx
    base_text = clip.text_model.base_layer
    prompts = clip.text_model.used_prompts("default")
    positions = base_text.embeddings.position_embedding.weight[1 : 1 + N_CTX]
    torch.testing.assert_close(text.hidden_states[0][:, 1 : 1 + N_CTX], (prompts[0] + positions).expand(batch, -1, -1))
    # vision: CLS + patches + appended prompts; CLS pooling
    assert vision.last_hidden_state.shape == (batch, 1 + 4 + N_CTX, 48)
    base_vision = clip.vision_model.base_layer
    assert torch.equal(vision.pooler_output, base_vision.post_layernorm(vision.last_hidden_state[:, 0]))


@pytest.mark.parametrize("tower", ["text", "vision"])
def test_deep_prompts_replace_layer_inputs_without_corrupting_hidden_states(inputs, tower):
    model = adapted(depth=3)
    clip = model.base_model.model
    wrapper = clip.text_model if tower == "text" else clip.vision_model
    prompts = wrapper.used_prompts("default").detach()
    with torch.no_grad():
        if tower == "text":
            out = wrapper(**text_kwargs(inputs), output_hidden_states=True)
            mask = torch.cat([inputs["attention_mask"][:, :1], torch.ones(3, N_CTX, dtype=torch.long)], 1)
            mask = torch.cat([mask, inputs["attention_mask"][:, 1:]], 1)
            causal = torch.full((mask.shape[1],) * 2, float("-inf")).triu(1)
            attn_mask = causal + torch.where(mask[:, None, None, :].bool(), 0.0, float("-inf"))
        else:
            out = wrapper(pixel_values=inputs["pixel_values"], output_hidden_states=True)
            attn_mask = None
    layers = wrapper.base_layer.encoder.layers
    for j in (1, 2, 3):
        hidden = out.hidden_states[j].clone()
        if j < 3:  # deep prompt at layer j
            if tower == "text":
                hidden[:, 1 : 1 + N_CTX] = prompts[j]
            else:
                hidden[:, -N_CTX:] = prompts[j]
            assert not torch.equal(hidden, out.hidden_states[j])  # recorded hidden state was not overwritten
        with torch.no_grad():
            expected = getattr(layers[j], "base_layer", layers[j])(hidden, attn_mask)
        torch.testing.assert_close(out.hidden_states[j + 1], expected, rtol=1e-5, atol=1e-6)


def test_eager_and_sdpa_agree(inputs):
    eager = adapted(attn_implementation="eager")
    sdpa = adapted(attn_implementation="sdpa")
    assert eager.base_model.model.config._attn_implementation == "eager"
    torch.testing.assert_close(logits(eager, inputs), logits(sdpa, inputs), rtol=1e-5, atol=1e-5)


def test_interpolate_pos_encoding(inputs):
    model = adapted()
    with torch.no_grad():
        same = model(**inputs, interpolate_pos_encoding=True).logits_per_image
        bigger = make_inputs(image_size=24)["pixel_values"]
        image = model.base_model.model.vision_model(pixel_values=bigger, interpolate_pos_encoding=True)
    torch.testing.assert_close(same, logits(model, inputs))
    assert image.last_hidden_state.shape[1] == 1 + 9 + N_CTX


def test_explicit_position_ids_match_the_default(inputs):
    model = adapted()
    length = inputs["input_ids"].shape[1]
    with torch.no_grad():
        default = model.get_text_features(**text_kwargs(inputs)).pooler_output
        explicit = model.get_text_features(**text_kwargs(inputs), position_ids=torch.arange(length)[None]).pooler_output
    assert torch.equal(default, explicit)


@pytest.mark.parametrize("eos_token_id", [EOS_ID, 2])
def test_long_inputs_drop_padding_or_fail_clearly(eos_token_id):
    n_ctx, max_positions = 3, 16
    model = adapted(n_ctx=n_ctx, max_positions=max_positions, eos_token_id=eos_token_id)
    inputs = make_inputs(batch=3, length=max_positions)  # rows with 16, 15, 14 real tokens
    short = make_inputs(batch=3, length=12)
    padded = {k: v.clone() for k, v in short.items() if k != "pixel_values"}
    padded["input_ids"] = torch.cat([padded["input_ids"], torch.full((3, 4), EOS_ID)], 1)
    padded["attention_mask"] = torch.cat([padded["attention_mask"], torch.zeros(3, 4, dtype=torch.long)], 1)
    for with_mask in (True, False):
        keys = ["input_ids", "attention_mask"] if with_mask else ["input_ids"]
        with torch.no_grad():
            trimmed = model.get_text_features(**{k: short[k] for k in keys}).pooler_output
            full = model.get_text_features(**{k: padded[k] for k in keys}).pooler_output
        torch.testing.assert_close(full, trimmed, rtol=1e-6, atol=1e-6)
        with pytest.raises(ValueError, match=rf"max_length={max_positions - n_ctx}"):
            model.get_text_features(**{k: inputs[k] for k in keys})


def test_legacy_eos_pooling_path():
    model = adapted(eos_token_id=2)
    clip = model.base_model.model
    assert clip.text_model.config.eos_token_id == 2
    inputs = make_inputs()
    with torch.no_grad():
        out = clip.text_model(**text_kwargs(inputs))
    eos = inputs["input_ids"].argmax(-1) + N_CTX
    assert torch.equal(out.pooler_output, out.last_hidden_state[torch.arange(3), eos])


@pytest.mark.parametrize("autocast_adapter_dtype", [True, False])
def test_half_precision_base(inputs, autocast_adapter_dtype):
    fp32 = adapted()
    base = make_clip().to(torch.bfloat16)
    model = get_peft_model(base, MuDPTConfig(depth=3), autocast_adapter_dtype=autocast_adapter_dtype)
    expected_dtype = torch.float32 if autocast_adapter_dtype else torch.bfloat16
    adapter = [p for n, p in model.named_parameters() if "mudpt_" in n]
    assert adapter and all(p.dtype == expected_dtype for p in adapter)
    assert all(p.dtype == torch.bfloat16 for n, p in model.named_parameters() if "mudpt_" not in n)
    model.load_state_dict(
        {k: v.to(expected_dtype) for k, v in fp32.state_dict().items() if "mudpt_" in k}, strict=False
    )
    half_inputs = {**inputs, "pixel_values": inputs["pixel_values"].to(torch.bfloat16)}
    out = logits(model, half_inputs)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), logits(fp32, inputs), rtol=0.05, atol=0.1)
    model.train()
    loss = model(**half_inputs, return_loss=True).loss
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in adapter)


def test_torch_compile(inputs):
    model = adapted()
    expected = logits(model, inputs)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=False)
    with torch.no_grad():
        out = compiled(**inputs).logits_per_image
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    # the compiled model trains: gradients reach the prompts
    model.train()
    compiled(**inputs, return_loss=True).loss.backward()
    assert model.base_model.model.text_model.mudpt_prompts["default"].grad is not None


@pytest.mark.parametrize("training", [False, True])
def test_towers_compile_to_one_graph(inputs, training):
    """Each prompted tower traces without a graph break (fullgraph=True raises on one), in eval and in training."""
    model = adapted()
    model.train(training)
    clip = model.base_model.model
    towers = {
        "text": (clip.text_model, text_kwargs(inputs)),
        "vision": (clip.vision_model, {"pixel_values": inputs["pixel_values"]}),
    }
    for name, (tower, kwargs) in towers.items():
        torch._dynamo.reset()
        expected = tower(**kwargs).pooler_output
        out = torch.compile(tower, backend="eager", fullgraph=True)(**kwargs).pooler_output
        torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6, msg=name)
        if training:
            out.sum().backward()
            assert tower.mudpt_prompts["default"].grad is not None, name


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_gradient_checkpointing_gives_the_same_gradients(inputs, use_reentrant):
    def gradients(checkpointing: bool) -> dict[str, torch.Tensor]:
        model = adapted(depth=4)
        if checkpointing:
            model.base_model.model.gradient_checkpointing_enable({"use_reentrant": use_reentrant})
        model.train()
        model(**inputs, return_loss=True).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    plain, checkpointed = gradients(False), gradients(True)
    assert plain.keys() == checkpointed.keys() and len(plain) > 10
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_deepcopy_keeps_the_towers_coupled(inputs):
    model = adapted()
    clone = copy.deepcopy(model)
    assert torch.equal(logits(clone, inputs), logits(model, inputs))
    with torch.no_grad():
        clone.base_model.model.text_model.mudpt_prompts["default"].add_(1.0)
    assert not torch.equal(logits(clone, inputs), logits(model, inputs))
    towers = clone.base_model.model
    assert towers.vision_model.partner is towers.text_model and towers.text_model.partner is towers.vision_model
