"""The PeftModel lifecycle, as LoRA users know it: trainability, save/load, several adapters, disable, unload."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch
from peft import PeftModel, get_peft_model, inject_adapter_in_model, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from mudpt_peft import MuDPTConfig
from mudpt_peft.layer import MuDPTLayer

from .helpers import frozen_copy, hooks_of, logits, make_clip, make_inputs, randomize_adapter


@pytest.mark.parametrize("depth", [1, 3])
def test_only_prompts_and_injection_are_trainable(clip, inputs, capsys, depth):
    model = get_peft_model(clip, MuDPTConfig(depth=depth))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".mudpt_prompts." in n or ".mudpt_fusion." in n for n in trainable)
    assert any(".text_model.mudpt_prompts." in n for n in trainable)
    assert any(".vision_model.mudpt_fusion." in n for n in trainable)
    # depth 1: text layer 0 gets no injection, so there is no V2T model that could never receive a gradient
    assert any(".text_model.mudpt_fusion." in n for n in trainable) == (depth > 1)
    count = sum(p.numel() for n, p in model.named_parameters() if n in trainable)
    model.print_trainable_parameters()
    assert f"trainable params: {count:,}" in capsys.readouterr().out

    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if n not in trainable}
    adapter_before = {n: p.detach().clone() for n, p in model.named_parameters() if n in trainable}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    model.train()
    for _ in range(3):
        output = model(**inputs, return_loss=True)
        output.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for name, value in base_before.items():
        assert torch.equal(dict(model.named_parameters())[name], value), name
    changed = [n for n, v in adapter_before.items() if not torch.equal(dict(model.named_parameters())[n], v)]
    assert set(changed) == set(adapter_before)  # every prompt and injection tensor received gradient


def test_save_holds_only_mudpt_tensors_and_reloads_bit_exactly(tmp_path, inputs):
    model = get_peft_model(make_clip(), MuDPTConfig(depth=3, n_ctx=3))
    randomize_adapter(model)
    expected = logits(model, inputs)
    model.save_pretrained(tmp_path)

    assert {p.name for p in tmp_path.iterdir()} == {"adapter_model.safetensors", "adapter_config.json", "README.md"}
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    assert tensors and all(k.split(".")[-2].startswith("mudpt_") or ".mudpt_" in k for k in tensors)
    assert all(".default" not in k for k in tensors)
    assert "base_model.model.text_model.mudpt_prompts" in tensors
    assert tensors["base_model.model.vision_model.mudpt_prompts"].shape == (3, 3, 48)
    n_adapter = sum(p.numel() for n, p in model.named_parameters() if "mudpt_" in n)
    assert sum(t.numel() for t in tensors.values()) == n_adapter  # no base weights, no buffers
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "MUDPT" and config["depth"] == 3 and config["n_ctx"] == 3

    for kwargs in ({}, {"adapter_name": "other"}, {"low_cpu_mem_usage": True}):
        loaded = PeftModel.from_pretrained(make_clip(), tmp_path, **kwargs)
        assert torch.equal(logits(loaded, inputs), expected), kwargs
        assert not any(p.device.type == "meta" for p in loaded.parameters())
        assert not any(p.requires_grad for p in loaded.parameters())  # inference mode, as for LoRA
    trainable = PeftModel.from_pretrained(make_clip(), tmp_path, is_trainable=True)
    assert any(p.requires_grad for p in trainable.parameters())


def test_loading_onto_a_half_precision_base_is_lossless(tmp_path, inputs):
    model = get_peft_model(make_clip(), MuDPTConfig(depth=3))
    randomize_adapter(model)
    model.save_pretrained(tmp_path)
    half_inputs = {**inputs, "pixel_values": inputs["pixel_values"].to(torch.bfloat16)}
    regular = PeftModel.from_pretrained(make_clip().to(torch.bfloat16), tmp_path)
    low_memory = PeftModel.from_pretrained(make_clip().to(torch.bfloat16), tmp_path, low_cpu_mem_usage=True)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    for loaded in (regular, low_memory):
        adapter = {k: v for k, v in loaded.state_dict().items() if "mudpt_" in k}
        assert all(v.dtype == torch.float32 for v in adapter.values())  # autocast_adapter_dtype keeps fp32
        prompts = loaded.base_model.model.text_model.mudpt_prompts["default"]
        assert torch.equal(prompts, saved["base_model.model.text_model.mudpt_prompts"])
    assert torch.equal(logits(regular, half_inputs), logits(low_memory, half_inputs))


def _adapter_devices(model, adapter_name: str) -> set[str]:
    """The device types of the parameters of adapter `adapter_name` (`mudpt_*.<name>` or `mudpt_*.<name>.*`)."""
    pattern = re.compile(rf"\.mudpt_\w+\.{re.escape(adapter_name)}(\.|$)")
    return {p.device.type for n, p in model.named_parameters() if pattern.search(n)}


@pytest.mark.parametrize(
    "method", ["mudpt", "coop", "maple", "mudpt-linear", "mudpt-linear-v1", "cross-attention", "vpt"]
)
def test_low_cpu_mem_usage_creates_the_adapter_on_meta_and_loading_assigns_it(tmp_path, inputs, method):
    """As for LoRA: `low_cpu_mem_usage=True` creates the new adapter's tensors on the meta device (nothing allocated
    or initialised), and `set_peft_model_state_dict(..., low_cpu_mem_usage=True)` assigns the loaded ones."""
    overrides = {"coop": {"n_ctx": 4}, "vpt": {"depth": 3, "vision_n_ctx": 3}}.get(method, {"depth": 3})
    config = MuDPTConfig.for_method(method, **overrides)
    source = get_peft_model(make_clip(), copy.deepcopy(config))
    randomize_adapter(source, seed=5)
    source.save_pretrained(tmp_path)
    expected = logits(source, inputs)
    saved = load_file(tmp_path / "adapter_model.safetensors")

    # inject_adapter_in_model, then the tensors from the file
    base = inject_adapter_in_model(copy.deepcopy(config), make_clip(), low_cpu_mem_usage=True)
    assert _adapter_devices(base, "default") == {"meta"}
    assert {p.device.type for n, p in base.named_parameters() if "mudpt_" not in n} == {"cpu"}
    result = set_peft_model_state_dict(base, saved, low_cpu_mem_usage=True)
    assert not result.unexpected_keys
    assert {p.device.type for p in base.parameters()} == {"cpu"}
    assert torch.equal(logits(base, inputs), expected)

    # add_adapter and load_adapter beside a regular adapter, which stays as it was
    model = get_peft_model(make_clip(), MuDPTConfig(depth=2))
    before = logits(model, inputs)
    model.add_adapter("empty", copy.deepcopy(config), low_cpu_mem_usage=True)
    assert _adapter_devices(model, "empty") == {"meta"} and _adapter_devices(model, "default") == {"cpu"}
    model.load_adapter(tmp_path, adapter_name="loaded", low_cpu_mem_usage=True)
    assert _adapter_devices(model, "loaded") == {"cpu"}
    assert torch.equal(logits(model, inputs), before)
    model.set_adapter("loaded")
    assert torch.equal(logits(model, inputs), expected)

    # get_peft_model and PeftModel.from_pretrained (peft creates the tuner under `init_empty_weights` there)
    empty = get_peft_model(make_clip(), copy.deepcopy(config), low_cpu_mem_usage=True)
    assert _adapter_devices(empty, "default") == {"meta"}
    for is_trainable in (False, True):
        loaded = PeftModel.from_pretrained(make_clip(), tmp_path, low_cpu_mem_usage=True, is_trainable=is_trainable)
        assert {p.device.type for p in loaded.parameters()} == {"cpu"}
        assert torch.equal(logits(loaded, inputs), expected)
        trainable = {n for n, p in loaded.named_parameters() if p.requires_grad}
        assert trainable == ({n for n, _ in loaded.named_parameters() if "mudpt_" in n} if is_trainable else set())


def test_low_cpu_mem_usage_does_not_need_the_ctx_init_embedding(tmp_path, inputs):
    """`ctx_init` initialises the prompts from the token embedding; on the meta device nothing is initialised, and the
    adapter's own tensors replace it when it is loaded."""
    config = MuDPTConfig(depth=2, ctx_init_token_ids=[3, 5, 7], n_ctx=3)
    source = get_peft_model(make_clip(), copy.deepcopy(config))
    randomize_adapter(source, seed=2)
    source.save_pretrained(tmp_path)
    base = make_clip()
    embedding = base.text_model.embeddings.token_embedding.weight
    rows_before = embedding[[3, 5, 7]].clone()
    model = inject_adapter_in_model(copy.deepcopy(config), base, low_cpu_mem_usage=True)
    assert _adapter_devices(model, "default") == {"meta"}
    assert model.text_model.mudpt_prompts["default"].shape == (2, 3, 32)
    set_peft_model_state_dict(model, load_file(tmp_path / "adapter_model.safetensors"), low_cpu_mem_usage=True)
    assert torch.equal(logits(model, inputs), logits(source, inputs))
    assert torch.equal(embedding[[3, 5, 7]], rows_before)  # the base stays untouched


def test_load_adapter_under_a_second_name(tmp_path, inputs):
    source = get_peft_model(make_clip(), MuDPTConfig(depth=2))
    randomize_adapter(source, seed=3)
    source.save_pretrained(tmp_path)
    model = get_peft_model(make_clip(), MuDPTConfig(depth=4, n_ctx=1))
    model.load_adapter(tmp_path, adapter_name="loaded")
    model.set_adapter("loaded")
    assert torch.equal(logits(model, inputs), logits(source, inputs))


def _mismatching_checkpoint(tmp_path, recorded: bool, **geometry):
    other = get_peft_model(make_clip(**geometry), MuDPTConfig(depth=2))
    other.save_pretrained(tmp_path)
    config_file = tmp_path / "adapter_config.json"
    config = json.loads(config_file.read_text())
    assert config["auto_mapping"]["mudpt_base_geometry"] == {
        "text_width": geometry.get("text_width", 32),
        "vision_width": geometry.get("vision_width", 48),
        "text_layers": 4,
        "vision_layers": 4,
    }
    if not recorded:  # as saved by a tool that does not record the base model: the tensor shapes still disagree
        config["auto_mapping"] = None
        config_file.write_text(json.dumps(config))
    return tmp_path


@pytest.mark.parametrize(
    "geometry, recorded, error",
    [
        ({"text_width": 16}, True, r"saved for a base model with text_width 16 \(this model: 32\)"),
        ({"vision_width": 64}, True, r"saved for a base model with vision_width 64 \(this model: 48\)"),
        ({"text_width": 16}, False, r"does not fit this base model.*has shape"),
        ({"vision_width": 64}, False, r"does not fit this base model.*has shape"),
    ],
)
def test_loading_on_another_geometry_fails_clearly_and_leaves_no_wrappers(tmp_path, inputs, geometry, recorded, error):
    path = _mismatching_checkpoint(tmp_path, recorded, **geometry)
    base = make_clip()
    pristine = logits(base, inputs)
    keys = set(base.state_dict())
    with pytest.raises(ValueError, match=error):
        PeftModel.from_pretrained(base, path)
    assert not any(isinstance(m, MuDPTLayer) for m in base.modules())
    assert set(base.state_dict()) == keys and torch.equal(logits(base, inputs), pristine)

    model = get_peft_model(make_clip(), MuDPTConfig(depth=2))
    before = logits(model, inputs)
    with pytest.raises(ValueError, match=error):
        model.load_adapter(path, adapter_name="bad")
    assert list(model.peft_config) == ["default"]
    assert "bad" not in model.base_model.model.text_model.mudpt_prompts
    assert torch.equal(logits(model, inputs), before)


def test_loading_an_incomplete_checkpoint_fails(tmp_path):
    model = get_peft_model(make_clip(), MuDPTConfig(depth=2))
    model.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    del tensors["base_model.model.vision_model.mudpt_fusion.proj.weight"]
    save_file(tensors, tmp_path / "adapter_model.safetensors")
    with pytest.raises(ValueError, match=r"does not belong to its adapter_config.json"):  # the recorded sha256
        PeftModel.from_pretrained(make_clip(), tmp_path)
    config_file = tmp_path / "adapter_config.json"
    config = json.loads(config_file.read_text())
    del config["auto_mapping"]["mudpt_tensors_sha256"]  # as saved by a tool that records no fingerprint
    config_file.write_text(json.dumps(config))
    for kwargs in ({}, {"low_cpu_mem_usage": True}):  # the tuner's own check
        with pytest.raises(ValueError, match=r"missing tensors.*vision_model\.mudpt_fusion\.proj\.weight"):
            PeftModel.from_pretrained(make_clip(), tmp_path, **kwargs)


def test_several_adapters(inputs):
    config_a, config_b = MuDPTConfig(depth=2, n_ctx=2), MuDPTConfig(depth=4, n_ctx=3, injection_layers=2)
    single_a = get_peft_model(make_clip(), copy.deepcopy(config_a))
    single_b = get_peft_model(make_clip(), copy.deepcopy(config_b), adapter_name="b")
    randomize_adapter(single_a, seed=1)
    randomize_adapter(single_b, "b", seed=2)

    model = get_peft_model(make_clip(), copy.deepcopy(config_a))
    model.add_adapter("b", copy.deepcopy(config_b))
    assert model.active_adapters == ["default"]
    # the new adapter is frozen until activated; adding it did not change the active one's trainability
    assert all(not p.requires_grad for n, p in model.named_parameters() if ".b." in n or n.endswith(".b"))
    assert all(p.requires_grad for n, p in model.named_parameters() if "mudpt_" in n and ".default" in n)
    model.load_state_dict(
        {**single_a.state_dict(), **{k: v for k, v in single_b.state_dict().items() if "mudpt_" in k}}, strict=False
    )
    assert torch.equal(logits(model, inputs), logits(single_a, inputs))
    model.set_adapter("b")
    assert model.active_adapters == ["b"]
    assert torch.equal(logits(model, inputs), logits(single_b, inputs))
    model.set_adapter("default")
    assert torch.equal(logits(model, inputs), logits(single_a, inputs))

    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="already exists"):
        model.add_adapter("b", MuDPTConfig(depth=1))
    assert model.state_dict().keys() == state_before.keys()
    assert all(torch.equal(v, state_before[k]) for k, v in model.state_dict().items())

    model.delete_adapter("default")
    assert list(model.peft_config) == ["b"] and model.active_adapters == ["b"]
    assert not any(".default" in k for k in model.state_dict())
    assert torch.equal(logits(model, inputs), logits(single_b, inputs))


def test_two_active_adapters_are_refused(inputs):
    model = get_peft_model(make_clip(), MuDPTConfig(depth=2))
    model.add_adapter("other", MuDPTConfig(depth=2))
    model.base_model.set_adapter(["default", "other"])
    with pytest.raises(ValueError, match="one adapter at a time"):
        model(**inputs)


def test_disable_adapter_gives_the_base_outputs(inputs):
    base = make_clip()
    expected = logits(base, inputs)
    model = get_peft_model(base, MuDPTConfig(depth=3))
    randomize_adapter(model)
    adapted = logits(model, inputs)
    assert not torch.allclose(adapted, expected)
    with model.disable_adapter():
        assert torch.equal(logits(model, inputs), expected)
        with torch.no_grad():
            text = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        assert text.last_hidden_state.shape[1] == inputs["input_ids"].shape[1]
    assert torch.equal(logits(model, inputs), adapted)


def test_unload_restores_the_original_model(inputs):
    base = make_clip()
    pristine = frozen_copy(base)
    hooks_before = hooks_of(base)
    model = get_peft_model(base, MuDPTConfig(depth=4))
    randomize_adapter(model)
    model.add_adapter("second", MuDPTConfig(depth=2))
    logits(model, inputs)
    unloaded = model.unload()
    assert unloaded is base
    assert not any(isinstance(m, MuDPTLayer) for m in unloaded.modules())
    assert not hasattr(unloaded, "peft_config")
    assert list(unloaded.state_dict()) == list(pristine.state_dict())
    assert all(torch.equal(v, pristine.state_dict()[k]) for k, v in unloaded.state_dict().items())
    assert [type(m) for m in unloaded.modules()] == [type(m) for m in pristine.modules()]
    assert hooks_of(unloaded) == hooks_before
    assert torch.equal(logits(unloaded, inputs), logits(pristine, inputs))


def test_merging_is_refused_clearly(inputs):
    model = get_peft_model(make_clip(), MuDPTConfig(depth=2))
    for call in (model.merge_and_unload, model.merge_adapter, model.base_model.merge_and_unload):
        with pytest.raises(NotImplementedError, match="cannot be merged"):
            call()
    assert any(isinstance(m, MuDPTLayer) for m in model.modules())  # still intact


def test_wrapping_a_wrapped_model_is_refused():
    model = get_peft_model(make_clip(), MuDPTConfig(depth=2))
    config_before = model.peft_config["default"].to_dict()
    inputs = make_inputs()
    before = logits(model, inputs)
    with pytest.raises(ValueError, match="already wrapped"):
        get_peft_model(model, MuDPTConfig(depth=3))
    with pytest.raises(ValueError, match="already wrapped"):
        get_peft_model(model.base_model.model, MuDPTConfig(depth=3))
    assert list(model.peft_config) == ["default"] and model.peft_config["default"].to_dict() == config_before
    assert torch.equal(logits(model, inputs), before)


def test_wrapped_towers_still_expose_the_original_attributes():
    base = make_clip()
    patch_embedding = base.vision_model.embeddings.patch_embedding
    model = get_peft_model(base, MuDPTConfig(depth=2))
    inner = model.base_model.model
    assert inner.text_model.config is base.text_model.base_layer.config
    assert inner.vision_model.embeddings.patch_embedding is patch_embedding
    assert (
        inner.text_model.embeddings.token_embedding.weight
        is inner.text_model.base_layer.embeddings.token_embedding.base_layer.weight
    )


def test_make_inputs_is_deterministic():
    a, b = make_inputs(), make_inputs()
    assert all(torch.equal(a[k], b[k]) for k in a)
