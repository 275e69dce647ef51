"""Every peft way of loading MuDPT weights compares them with the fingerprint their config recorded: a folder that
mixes the config of one save with the weights of another (same shapes) is refused by `PeftModel.from_pretrained`,
`load_adapter` and `set_peft_model_state_dict` after `PeftConfig.from_pretrained`, and nothing of peft or transformers
is patched for that."""

from __future__ import annotations

import shutil

import pytest
import torch
from peft import PeftConfig, PeftModel, get_peft_model, inject_adapter_in_model, set_peft_model_state_dict
from safetensors.torch import load_file

from mudpt_peft import MuDPTConfig, adapter_files
from mudpt_peft.layer import MuDPTLayer

from .helpers import logits, make_clip, randomize_adapter


@pytest.fixture
def mixed(tmp_path):
    """`(good folder, mixed folder)`: the mixed one has adapter A's config and adapter B's weights."""
    for name, seed in (("a", 1), ("b", 2)):
        model = get_peft_model(make_clip(), MuDPTConfig(depth=2))
        randomize_adapter(model, seed=seed)
        model.save_pretrained(tmp_path / name)
    shutil.copytree(tmp_path / "a", tmp_path / "mixed")
    shutil.copy(tmp_path / "b" / "adapter_model.safetensors", tmp_path / "mixed" / "adapter_model.safetensors")
    return tmp_path / "a", tmp_path / "mixed"


MISMATCH = "does not belong to its adapter_config.json"


def test_the_fingerprint_covers_exactly_the_tensors_saved(mixed):
    good, _ = mixed
    recorded = PeftConfig.from_pretrained(good).auto_mapping[adapter_files.TENSORS_FINGERPRINT_KEY]
    assert recorded == adapter_files.adapter_fingerprint(load_file(good / "adapter_model.safetensors"))


def test_peft_model_from_pretrained_and_load_adapter_refuse_a_mixed_folder(mixed, inputs):
    good, bad = mixed
    for kwargs in ({}, {"low_cpu_mem_usage": True}):
        base = make_clip()
        with pytest.raises(ValueError, match=MISMATCH):
            PeftModel.from_pretrained(base, bad, **kwargs)
        assert not any(isinstance(m, MuDPTLayer) for m in base.modules())  # refused before any weight was made
    model = PeftModel.from_pretrained(make_clip(), good)
    before = logits(model, inputs)
    with pytest.raises(ValueError, match=MISMATCH):
        model.load_adapter(bad, adapter_name="other")
    assert list(model.peft_config) == ["default"] and torch.equal(logits(model, inputs), before)


def test_from_pretrained_with_a_given_config_refuses_a_mixed_folder(mixed):
    """`PeftModel.from_pretrained(..., config=...)` reads no config itself: the tuner still checks the tensors."""
    _, bad = mixed
    base = make_clip()
    with pytest.raises(ValueError, match=MISMATCH):
        PeftModel.from_pretrained(base, bad, config=PeftConfig.from_pretrained(bad))
    assert not any(isinstance(m, MuDPTLayer) for m in base.modules())  # the half-loaded adapter was removed


def test_peft_config_from_pretrained_then_loading_the_tensors_is_refused(mixed):
    """`PeftConfig.from_pretrained` is peft's own reader (no MuDPT code runs); the tuner checks the tensors when
    `set_peft_model_state_dict` loads them, and removes the half-loaded adapter."""
    _, bad = mixed
    config = PeftConfig.from_pretrained(bad)
    assert type(config) is MuDPTConfig
    base = make_clip()
    model = inject_adapter_in_model(config, base, adapter_name="default")
    with pytest.raises(ValueError, match=MISMATCH):
        set_peft_model_state_dict(model, load_file(bad / "adapter_model.safetensors"), adapter_name="default")


def test_transformers_load_adapter_loads_a_good_folder_exactly(mixed, inputs):
    """transformers' own `load_adapter` reads the config with `PeftConfig.from_pretrained` and the weights with its
    own loader: no MuDPT code sees those weights (no hook in peft or transformers), so it cannot refuse a mixed
    folder; documented in docs/hub.md. What it loads from a good folder is exactly the adapter."""
    good, _ = mixed
    clip = make_clip()
    clip.load_adapter(str(good), adapter_name="x")
    expected = logits(PeftModel.from_pretrained(make_clip(), good), inputs)
    assert torch.equal(logits(clip, inputs), expected)
