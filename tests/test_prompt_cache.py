"""The towers' inference-time prompt cache (`MuDPTTower.call_prompts`) follows every change it depends on."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from peft import get_peft_model

from mudpt_peft import MuDPTConfig, PromptClassifier

from .conftest import make_clip
from .test_classifier import CLASSES, clip_for_tokenizer
from .test_lifecycle import logits, randomize_adapter


class FusionCalls:
    """Counts the fusion evaluations of both towers."""

    def __init__(self, model) -> None:
        self.count = 0
        clip = model.base_model.model
        for tower in (clip.text_model, clip.vision_model):
            for fusion in tower.mudpt_fusion.values():
                fusion.register_forward_hook(self._count)

    def _count(self, *args) -> None:
        self.count += 1


def adapted(depth: int = 3, **kwargs):
    model = get_peft_model(make_clip(), MuDPTConfig(depth=depth, **kwargs))
    randomize_adapter(model)
    return model.eval()


def fresh_logits(model, inputs) -> torch.Tensor:
    """Logits with the prompts computed afresh (autograd enabled: no cache)."""
    return model(**inputs).logits_per_image.detach()


def test_cached_prompts_are_reused_and_equal_fresh_ones(inputs):
    model = adapted()
    calls = FusionCalls(model)
    first = logits(model, inputs)
    assert calls.count == 2  # one per tower
    assert torch.equal(logits(model, inputs), first) and calls.count == 2
    with torch.inference_mode():
        assert torch.equal(model(**inputs).logits_per_image, first)
    assert calls.count == 4  # inference mode has its own entry
    assert torch.equal(fresh_logits(model, inputs), first) and calls.count == 6  # autograd: computed afresh
    model.train()
    with torch.no_grad():
        model(**inputs)
    assert calls.count == 8  # training mode (the fusion may drop out): computed afresh


@pytest.mark.parametrize("tensor", ["own", "partner", "fusion"])
def test_in_place_changes_drop_the_cache(inputs, tensor):
    model = adapted()
    clip = model.base_model.model
    first = logits(model, inputs)
    target = {
        "own": clip.vision_model.mudpt_prompts["default"],
        "partner": clip.text_model.mudpt_prompts["default"],  # feeds the vision prompts through T2V
        "fusion": clip.vision_model.mudpt_fusion["default"].proj.weight,
    }[tensor]
    with torch.no_grad():  # not a constant: the layer norms would remove a constant shift
        target.add_(torch.randn(target.shape, generator=torch.Generator().manual_seed(0)))
    changed = logits(model, inputs)
    assert not torch.allclose(changed, first)
    assert torch.equal(changed, fresh_logits(model, inputs))


def test_dtype_change_adapter_switch_and_autocast_drop_the_cache(inputs):
    model = adapted()
    model.add_adapter("other", MuDPTConfig(depth=2))
    randomize_adapter(model, "other", seed=3)
    model.eval()
    first = logits(model, inputs)
    model.set_adapter("other")
    other = logits(model, inputs)
    assert not torch.allclose(other, first) and torch.equal(other, fresh_logits(model, inputs))
    model.set_adapter("default")
    assert torch.equal(logits(model, inputs), first)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = logits(model, inputs)
        assert torch.equal(autocast, fresh_logits(model, inputs))
    assert torch.equal(logits(model, inputs), first)
    model.to(torch.float64)  # same parameter objects and versions, new storages
    doubled_inputs = {**inputs, "pixel_values": inputs["pixel_values"].double()}
    doubled = logits(model, doubled_inputs)
    assert doubled.dtype == torch.float64 and torch.equal(doubled, fresh_logits(model, doubled_inputs))
    torch.testing.assert_close(doubled.float(), first, rtol=1e-4, atol=1e-4)


def test_copies_and_pickles_do_not_share_the_cache(inputs):
    model = adapted()
    first = logits(model, inputs)
    clone = copy.deepcopy(model)
    with torch.no_grad():
        prompts = clone.base_model.model.vision_model.mudpt_prompts["default"]
        prompts.add_(torch.randn(prompts.shape, generator=torch.Generator().manual_seed(0)))
    assert not torch.allclose(logits(clone, inputs), first)
    assert torch.equal(logits(model, inputs), first)
    buffer = io.BytesIO()
    torch.save(model, buffer, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    buffer.seek(0)
    restored = torch.load(buffer, weights_only=False)
    assert torch.equal(logits(restored, inputs), first)


def test_classifier_cache_follows_a_dtype_change(tokenizer):
    model = get_peft_model(clip_for_tokenizer(), MuDPTConfig(depth=3))
    randomize_adapter(model)
    clf = PromptClassifier(model, tokenizer, CLASSES).eval()
    pixel_values = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        clf(pixel_values=pixel_values)
        clf.to(torch.float64)
        assert clf.encode_classes().dtype == torch.float64
