"""`MuDPTConfig` validation (in `__post_init__` and against the model, before any weight exists) and `ctx_init`."""

from __future__ import annotations

import json
import re

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer, CLIPVisionModel

from mudpt_peft import MuDPTConfig
from mudpt_peft.adapter_files import NotAPeftConfigError, check_adapter
from mudpt_peft.layer import MuDPTLayer

from .helpers import logits, make_clip, make_inputs


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"depth": 0}, "depth"),
        ({"depth": 2.5}, "depth"),
        ({"text_depth": 0}, "text_depth"),
        ({"vision_depth": -1}, "vision_depth"),
        ({"n_ctx": 0}, "n_ctx"),
        ({"vision_n_ctx": 0}, "vision_n_ctx"),
        ({"n_ctx": 2, "vision_n_ctx": 3}, "vision_n_ctx"),
        ({"injection_layers": -1}, "injection_layers"),
        ({"injection_heads": 0}, "injection_heads"),
        ({"injection_mlp_ratio": 0}, "injection_mlp_ratio"),
        ({"injection_dropout": 1.0}, "injection_dropout"),
        ({"prompt_init_std": 0}, "prompt_init_std"),
        ({"ctx_init": "  "}, "ctx_init"),
        ({"ctx_init_token_ids": []}, "ctx_init_token_ids"),
        ({"ctx_init_token_ids": [1, 2, 3], "n_ctx": 2}, "ctx_init_token_ids"),
    ],
)
def test_bad_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"`{field}`"):
        MuDPTConfig(**kwargs)


def test_a_config_without_peft_type_is_refused_with_peft_s_error_type_and_message(tmp_path):
    """peft raises a `TypeError` for a config without `peft_type` (its test of every config class expects one); the
    project raises `ValueError`s for damaged files: `NotAPeftConfigError` is both, and names the file."""
    (tmp_path / "adapter_config.json").write_text(json.dumps({"foo": "bar", "baz": 123}))
    peft_message = "The MuDPTConfig config that is trying to be loaded is missing required keys: {'peft_type'}."
    for expected in (TypeError, ValueError, NotAPeftConfigError):
        with pytest.raises(expected, match=re.escape(peft_message)) as caught:
            MuDPTConfig.from_pretrained(tmp_path)
    assert type(caught.value) is NotAPeftConfigError
    assert f"'adapter_config.json' in the local folder '{tmp_path}' has no 'peft_type'" in str(caught.value)
    with pytest.raises(NotAPeftConfigError, match="has no 'peft_type'"):
        check_adapter(tmp_path)


def test_defaults_follow_the_paper():
    config = MuDPTConfig()
    assert (config.depth, config.n_ctx, config.injection_layers, config.injection_mlp_ratio) == (9, 2, 1, 4.0)
    assert config.resolved_vision_n_ctx == 2 and config.resolved_text_depth == config.resolved_vision_depth == 9
    assert config.peft_type == "MUDPT"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"depth": 5}, r"`depth`=5 is larger than the text tower's 4 layers; allowed: 1..4"),
        ({"depth": 2, "vision_depth": 6}, r"`vision_depth`=6 is larger than the vision tower's 4 layers"),
        ({"depth": 2, "injection_heads": 5}, r"`injection_heads`=5 does not divide the text width 32"),
        ({"depth": 2, "n_ctx": 15}, r"`n_ctx`=15 leaves no room"),
    ],
)
def test_validation_against_the_model_happens_before_any_weight(kwargs, message):
    clip = make_clip()
    state = {k: v.clone() for k, v in clip.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        get_peft_model(clip, MuDPTConfig(**kwargs))
    assert not any(isinstance(m, MuDPTLayer) for m in clip.modules())
    assert clip.state_dict().keys() == state.keys()


@pytest.mark.parametrize("model_class", [CLIPTextModel, CLIPVisionModel, torch.nn.Linear])
def test_unsupported_models_are_refused_with_the_supported_classes(model_class):
    if model_class is torch.nn.Linear:
        model = torch.nn.Linear(2, 2)
    else:
        config = make_clip().config
        model = model_class(config.text_config if model_class is CLIPTextModel else config.vision_config)
    with pytest.raises(ValueError, match=r"does not support .*Supported classes: CLIPModel"):
        get_peft_model(model, MuDPTConfig(depth=1))


def test_ctx_init_initialises_layer0_text_prompts(tokenizer_dir):
    clip = make_clip()
    config = MuDPTConfig(depth=2, n_ctx=4, ctx_init="a photo of a", tokenizer_name_or_path=str(tokenizer_dir))
    model = get_peft_model(clip, config)
    assert config.ctx_init_token_ids == [26, 55, 56, 26]
    prompts = model.base_model.model.text_model.mudpt_prompts["default"]
    token_embedding = model.base_model.model.text_model.base_layer.embeddings.token_embedding.base_layer
    assert torch.equal(prompts[0], token_embedding.weight[[26, 55, 56, 26]])
    assert not torch.equal(prompts[1], token_embedding.weight[[26, 55, 56, 26]])  # deep prompts stay random


def test_ctx_init_sets_n_ctx_from_the_word_count_and_reloads_without_tokenizer(tokenizer_dir, tmp_path):
    config = MuDPTConfig(depth=2, n_ctx=2, ctx_init="a photo of a", tokenizer_name_or_path=str(tokenizer_dir))
    with pytest.warns(UserWarning, match="`n_ctx` is set to 4"):
        model = get_peft_model(make_clip(), config)
    assert config.n_ctx == 4 and config.resolved_vision_n_ctx == 4
    assert model.base_model.model.vision_model.mudpt_prompts["default"].shape[1] == 4
    out_dir = tmp_path / "adapter"
    model.save_pretrained(out_dir)
    saved = json.loads((out_dir / "adapter_config.json").read_text())
    assert saved["n_ctx"] == 4 and saved["ctx_init_token_ids"] == [26, 55, 56, 26]
    for p in tokenizer_dir.iterdir():  # the tokenizer is gone: loading must not need it
        if p.is_file():
            p.unlink()
    loaded = PeftModel.from_pretrained(make_clip(), out_dir)
    inputs = make_inputs()
    assert torch.equal(logits(loaded, inputs), logits(model, inputs))


def test_ctx_init_uses_the_base_models_own_directory(tokenizer_dir, tmp_path):
    model_dir = tmp_path / "clip"
    make_clip().save_pretrained(model_dir)
    CLIPTokenizer.from_pretrained(tokenizer_dir).save_pretrained(model_dir)
    clip = CLIPModel.from_pretrained(model_dir)
    config = MuDPTConfig(depth=2, n_ctx=4, ctx_init="a photo of a")
    get_peft_model(clip, config)
    assert config.ctx_init_token_ids == [26, 55, 56, 26]


def test_ctx_init_without_a_loadable_tokenizer_fails_clearly(tmp_path):
    clip = make_clip()
    missing = tmp_path / "no-tokenizer-here"
    with pytest.raises(ValueError, match=r"needs a tokenizer, but none could be loaded from .*tokenizer_name_or_path"):
        get_peft_model(clip, MuDPTConfig(depth=2, ctx_init="a photo of a", tokenizer_name_or_path=str(missing)))
    with pytest.raises(ValueError, match="has no `name_or_path`"):
        get_peft_model(make_clip(), MuDPTConfig(depth=2, ctx_init="a photo of a"))
    assert not any(isinstance(m, MuDPTLayer) for m in clip.modules())


def test_ctx_init_token_ids_outside_the_vocabulary():
    clip = make_clip()
    with pytest.raises(ValueError, match="outside the text vocabulary of 99 tokens"):
        get_peft_model(clip, MuDPTConfig(depth=2, n_ctx=2, ctx_init_token_ids=[1, 500]))
    assert not any(isinstance(m, MuDPTLayer) for m in clip.modules())
