"""The prompt-learning family as configurations of one tuner: presets, fusion modes, and the lifecycle of each."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel, get_peft_model

from mudpt_peft import MuDPTConfig
from mudpt_peft.config import METHOD_PRESETS
from mudpt_peft.fusion import (
    CrossAttentionFusion,
    InjectionFusion,
    LinearFusion,
    MetaNetFusion,
    NoFusion,
    SharedLinearFusion,
    TextToVisionFusion,
)
from mudpt_peft.layer import MuDPTLayer

from .helpers import frozen_copy, hooks_of, logits, make_clip, make_inputs, randomize_adapter

SMALL = {"depth": 3, "n_ctx": 2}


def small(method: str, **overrides) -> MuDPTConfig:
    settings = dict(SMALL)
    if METHOD_PRESETS[method].get("ctx_init"):  # the tiny CLIP has no tokenizer to initialise from
        settings["ctx_init"] = None
    if method == "vpt":
        settings = {"depth": 3, "vision_n_ctx": 2}
    settings.update(overrides)
    return MuDPTConfig.for_method(method, **settings)


def test_presets_carry_the_papers_defaults():
    coop = MuDPTConfig.for_method("coop")
    assert (coop.text_prompts, coop.vision_prompts, coop.depth, coop.n_ctx, coop.fusion) == (True, False, 1, 16, "none")
    assert MuDPTConfig.for_method("CoOp", ctx_init="a photo of a").n_ctx == 4
    assert MuDPTConfig.for_method("coop", ctx_init="a photo of a", n_ctx=8).n_ctx == 8
    vpt = MuDPTConfig.for_method("vpt")
    assert (vpt.text_prompts, vpt.vision_prompts, vpt.resolved_vision_n_ctx, vpt.depth) == (False, True, 8, 12)
    assert vpt.resolved_text_depth == 0
    for method, fusion in [("ivlp", "none"), ("maple", "text_to_vision"), ("mudpt", "injection")]:
        config = MuDPTConfig.for_method(method)
        assert (config.fusion, config.depth, config.n_ctx) == (fusion, 9, 2)
    linear, linear_v1 = MuDPTConfig.for_method("mudpt_linear"), MuDPTConfig.for_method("MuDPT_Linear_V1")
    assert (linear.fusion, linear.depth, linear.n_ctx) == ("shared_linear", 9, 2)
    assert (linear_v1.fusion, linear_v1.depth, linear_v1.n_ctx) == ("linear", 9, 2)  # what "linear" always meant
    assert MuDPTConfig.for_method("mudpt", depth=5, injection_layers=2).injection_layers == 2
    with pytest.raises(ValueError, match="Unknown method 'lora'.*coop"):
        MuDPTConfig.for_method("lora")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fusion": "concat"}, "`fusion` must be one of"),
        ({"text_prompts": False, "vision_prompts": False}, "at least one tower"),
        ({"text_prompts": False}, "`fusion`='injection' couples the two towers"),
        ({"fusion": "linear", "n_ctx": 2, "vision_n_ctx": 3}, "must equal `n_ctx`"),
        ({"fusion": "text_to_vision", "depth": 3, "vision_depth": 2}, "must equal the text depth"),
        ({"fusion": "none", "text_prompts": False, "ctx_init": "a photo"}, "`text_prompts=False`"),
        ({"text_prompts": "yes"}, "`text_prompts` must be True or False"),
        ({"fusion": "shared_linear", "n_ctx": 2, "vision_n_ctx": 3}, "must equal `n_ctx`"),
        ({"fusion": "cross_attention", "cross_attention_dropout": 1.0}, "`cross_attention_dropout` must be in"),
        ({"injection_init_std": 0}, "`injection_init_std` must be a number > 0"),
    ],
)
def test_inconsistent_methods_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MuDPTConfig(**kwargs)


def test_cross_attention_may_mix_token_counts():
    config = MuDPTConfig(fusion="cross_attention", depth=2, n_ctx=2, vision_n_ctx=3)
    model = get_peft_model(make_clip(), config)
    assert model.base_model.model.vision_model.mudpt_prompts["default"].shape == (2, 3, 48)
    assert logits(model, make_inputs()).shape == (3, 3)


EXPECTED_FUSIONS = {
    "coop": (NoFusion, None),
    "vpt": (None, NoFusion),
    "ivlp": (NoFusion, NoFusion),
    "maple": (NoFusion, TextToVisionFusion),
    "mudpt": (InjectionFusion, InjectionFusion),
    "mudpt-linear": (SharedLinearFusion, SharedLinearFusion),
    "mudpt-linear-v1": (LinearFusion, LinearFusion),
    "cross-attention": (CrossAttentionFusion, CrossAttentionFusion),
    "cocoop": (MetaNetFusion, None),
    "kgcoop": (NoFusion, None),  # CoOp's adapter
    "promptsrc": (NoFusion, NoFusion),  # IVLP's adapter
}


# CoCoOp's text features exist only for an image (not through `CLIPModel.forward`): its lifecycle is in test_cocoop.py
@pytest.mark.parametrize("method", [name for name in METHOD_PRESETS if name != "cocoop"])
def test_every_method_runs_the_whole_lifecycle(method, tmp_path):
    inputs = make_inputs()
    base = make_clip()
    pristine = frozen_copy(base)
    hooks_before = hooks_of(base)
    expected_base = logits(pristine, inputs)  # frozen like the PeftModel's base: the same kernels
    model = get_peft_model(base, small(method))
    clip = model.base_model.model

    text_fusion, vision_fusion = EXPECTED_FUSIONS[method]
    for tower, fusion in (("text_model", text_fusion), ("vision_model", vision_fusion)):
        module = getattr(clip, tower)
        if fusion is None:  # this method leaves the tower alone: no wrapper at all
            assert not isinstance(module, MuDPTLayer)
        else:
            assert type(module.mudpt_fusion["default"]) is fusion
    assert ("default" in getattr(clip.vision_model, "mudpt_prompts", {})) == (method not in ("coop", "maple", "kgcoop"))

    # every trainable tensor gets a gradient (nothing unused); randomised first, since cross-attention's output
    # projection starts at zero (its other weights get zero gradients until it moves)
    randomize_adapter(model)
    model.train()
    model(**inputs, return_loss=True).loss.backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("mudpt_" in n for n in trainable)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in trainable.items()), [
        n for n, p in trainable.items() if p.grad is None or p.grad.abs().sum() == 0
    ]
    model.eval()

    adapted = logits(model, inputs)
    assert not torch.allclose(adapted, expected_base)
    with model.disable_adapter():
        assert torch.equal(logits(model, inputs), expected_base)

    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(make_clip(), tmp_path)
    assert torch.equal(logits(loaded, inputs), adapted)
    # `low_cpu_mem_usage` assigns the tensors read from the safetensors file (only 8-byte aligned there, and CPU
    # kernels round differently on such storage); the tuner copies them into fresh storage: the same computation
    loaded = PeftModel.from_pretrained(make_clip(), tmp_path, adapter_name="x", low_cpu_mem_usage=True)
    assert torch.equal(logits(loaded, inputs), adapted)

    unloaded = model.unload()
    assert not any(isinstance(m, MuDPTLayer) for m in unloaded.modules())
    assert list(unloaded.state_dict()) == list(pristine.state_dict())
    assert hooks_of(unloaded) == hooks_before
    assert torch.equal(logits(unloaded, inputs), expected_base)


def test_adapters_of_different_methods_coexist():
    inputs = make_inputs()
    singles = {}
    for index, method in enumerate(["coop", "maple", "vpt", "mudpt"]):
        single = get_peft_model(make_clip(), small(method), adapter_name=method)
        randomize_adapter(single, method, seed=index)
        singles[method] = single
    model = get_peft_model(make_clip(), small("coop"), adapter_name="coop")
    for method in ["maple", "vpt", "mudpt"]:
        model.add_adapter(method, small(method))
    for single in singles.values():
        model.load_state_dict({k: v for k, v in single.state_dict().items() if "mudpt_" in k}, strict=False)
    for method, single in singles.items():
        model.set_adapter(method)
        assert torch.equal(logits(model, inputs), logits(single, inputs)), method
    model.set_adapter("coop")  # the vision tower is wrapped (for other adapters) but coop leaves it alone
    with torch.no_grad():
        base_image = make_clip().get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
        image = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
    assert torch.equal(image, base_image)


def test_cross_attention_starts_from_the_uncoupled_prompts():
    inputs = make_inputs()
    coupled = get_peft_model(make_clip(), small("cross-attention"))
    uncoupled = get_peft_model(make_clip(), small("ivlp"))
    for model in (coupled, uncoupled):
        with torch.no_grad():
            for tower in ("text_model", "vision_model"):
                getattr(model.base_model.model, tower).mudpt_prompts["default"].normal_(
                    generator=torch.Generator().manual_seed(1)
                )
    assert torch.equal(logits(coupled, inputs), logits(uncoupled, inputs))  # zero-initialised output projection
    randomize_adapter(coupled)
    assert not torch.allclose(logits(coupled, inputs), logits(uncoupled, inputs))


def test_maple_vision_prompts_are_linear_maps_of_the_text_prompts():
    model = get_peft_model(make_clip(), small("maple"))
    randomize_adapter(model)
    clip = model.base_model.model
    text = clip.text_model.mudpt_prompts["default"]
    projections = clip.vision_model.mudpt_fusion["default"].projections
    used = clip.vision_model.used_prompts("default")
    assert len(projections) == 3
    for j in range(3):
        torch.testing.assert_close(used[j], projections[j](text[j]))
    assert torch.equal(clip.text_model.used_prompts("default"), text)


def test_linear_v1_fusion_couples_deep_layers_only():
    """The early official `mudpt.py`: one map per deep layer and direction, layer 0 uncoupled."""
    model = get_peft_model(make_clip(), small("mudpt-linear-v1"))
    randomize_adapter(model)
    clip = model.base_model.model
    text, vision = clip.text_model.mudpt_prompts["default"], clip.vision_model.mudpt_prompts["default"]
    text_maps = clip.text_model.mudpt_fusion["default"].projections
    vision_maps = clip.vision_model.mudpt_fusion["default"].projections
    used_text, used_vision = clip.text_model.used_prompts("default"), clip.vision_model.used_prompts("default")
    assert len(text_maps) == len(vision_maps) == 2
    assert torch.equal(used_text[0], text[0]) and torch.equal(used_vision[0], vision[0])
    for j in (1, 2):
        torch.testing.assert_close(used_text[j], text[j] + text_maps[j - 1](vision[j]))
        torch.testing.assert_close(used_vision[j], vision[j] + vision_maps[j - 1](text[j]))
    shallow = get_peft_model(make_clip(), small("mudpt-linear-v1", depth=1))
    assert all(
        isinstance(getattr(shallow.base_model.model, t).mudpt_fusion["default"], NoFusion)
        for t in ("text_model", "vision_model")
    )


@pytest.mark.parametrize(("text_depth", "vision_depth"), [(3, 3), (2, 3), (3, 2)])
def test_shared_linear_fusion_couples_layer_zero_and_shares_the_deep_map(text_depth, vision_depth):
    """The current official `mudpt.py`: `vision_0 = V_0 + E(T_0)`, one map per direction for all deep layers."""
    config = MuDPTConfig(fusion="shared_linear", depth=3, text_depth=text_depth, vision_depth=vision_depth)
    model = get_peft_model(make_clip(), config)
    randomize_adapter(model)
    clip = model.base_model.model
    text, vision = clip.text_model.mudpt_prompts["default"], clip.vision_model.mudpt_prompts["default"]
    text_fusion, vision_fusion = clip.text_model.mudpt_fusion["default"], clip.vision_model.mudpt_fusion["default"]
    assert text_fusion.first_projection is None  # no vision-to-text coupling at layer 0
    assert len(list(text_fusion.parameters())) == 2 and len(list(vision_fusion.parameters())) == 4
    used_text, used_vision = clip.text_model.used_prompts("default"), clip.vision_model.used_prompts("default")
    common = min(text_depth, vision_depth)
    assert torch.equal(used_text[0], text[0])
    torch.testing.assert_close(used_vision[0], vision[0] + vision_fusion.first_projection(text[0]))
    for j in range(1, common):
        torch.testing.assert_close(used_text[j], text[j] + text_fusion.deep_projection(vision[j]))
        torch.testing.assert_close(used_vision[j], vision[j] + vision_fusion.deep_projection(text[j]))
    for j in range(common, text_depth):
        assert torch.equal(used_text[j], text[j])
    for j in range(common, vision_depth):
        assert torch.equal(used_vision[j], vision[j])


def test_shared_linear_fusion_without_deep_layers_keeps_the_layer_zero_map():
    model = get_peft_model(make_clip(), MuDPTConfig(fusion="shared_linear", depth=1, n_ctx=2))
    clip = model.base_model.model
    assert isinstance(clip.text_model.mudpt_fusion["default"], NoFusion)
    vision_fusion = clip.vision_model.mudpt_fusion["default"]
    assert isinstance(vision_fusion, SharedLinearFusion) and vision_fusion.deep_projection is None
    randomize_adapter(model)
    model.train()
    model(**make_inputs(), return_loss=True).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in vision_fusion.parameters())
    with pytest.raises(ValueError, match="use NoFusion"):
        SharedLinearFusion(4, 4, first_layer=False, deep=False)


def test_cross_attention_adapters_saved_with_the_injection_fields_still_load(tmp_path):
    """Before `cross_attention_heads` / `cross_attention_dropout` existed, cross-attention read `injection_heads` /
    `injection_dropout`: such a config is read into the new fields and the adapter loads as it was trained."""
    import json

    inputs = make_inputs()
    model = get_peft_model(make_clip(), small("cross-attention", cross_attention_heads=2, cross_attention_dropout=0.1))
    randomize_adapter(model)
    model.eval()
    expected = logits(model, inputs)
    model.save_pretrained(tmp_path)
    config_path = tmp_path / "adapter_config.json"
    saved = json.loads(config_path.read_text())
    saved["injection_heads"], saved["injection_dropout"] = saved.pop("cross_attention_heads"), 0.1
    saved.pop("cross_attention_dropout")
    saved.pop("injection_init_std")
    config_path.write_text(json.dumps(saved))
    loaded = PeftModel.from_pretrained(make_clip(), tmp_path)
    config = loaded.peft_config["default"]
    assert (config.cross_attention_heads, config.cross_attention_dropout) == (2, 0.1)
    assert (config.injection_heads, config.injection_dropout) == (None, 0.0)
    assert loaded.base_model.model.text_model.mudpt_fusion["default"].num_heads == 2
    assert torch.equal(logits(loaded, inputs), expected)


def test_every_method_and_fusion_is_declared_in_one_place():
    """The presets, training recipes, card names and official conversions all come from `mudpt_peft.methods`."""
    from mudpt_peft.convert import OFFICIAL_METHODS
    from mudpt_peft.fusion import FUSIONS, Fusion
    from mudpt_peft.methods import METHODS, method_of, normalize_method
    from mudpt_peft.trainer import TRAINING_RECIPES

    assert list(METHOD_PRESETS) == list(METHODS) == list(TRAINING_RECIPES)
    assert set(OFFICIAL_METHODS) == {name for name, method in METHODS.items() if method.official}
    for name, method in METHODS.items():
        config = MuDPTConfig.for_method(name.upper().replace("-", "_"))
        assert method_of(config) == (method.adapter or name) and normalize_method(f" {name.upper()} ") == name
        assert TRAINING_RECIPES[name] == dict(method.recipe)
    assert {method.preset["fusion"] for method in METHODS.values()} == set(FUSIONS)
    assert all(issubclass(fusion, Fusion) and fusion.name == key for key, fusion in FUSIONS.items())
    with pytest.raises(ValueError, match="Unknown method 'lora'; choose one of coop, cocoop, vpt"):
        normalize_method("lora")
