"""`alignment`: matched similarity, margin and modality gap, on features we control and against plain torch."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from peft import get_peft_model
from PIL import Image
from torch import nn

from mudpt_peft import MuDPTConfig
from mudpt_peft.metrics import alignment

from .helpers import TOKENIZER_EOS_ID, image_processor, make_clip, make_inputs, randomize_adapter

CLASSES = ["cat", "dog", "zebra"]

# tiny models: more threads only contend for the shared cores
pytestmark = pytest.mark.usefixtures("one_thread")


class ControlledModel(nn.Module):
    """A CLIP-like model whose features are given: class `c`'s text feature is `text[c]`; an image's feature is its
    pixel values, flattened (so `pixel_values` of shape `(n, 2, 1, 1)` are 2-d features)."""

    def __init__(self, text: torch.Tensor) -> None:
        super().__init__()
        self.text = text
        self.logit_scale = nn.Parameter(torch.tensor(0.0))

    def get_text_features(self, input_ids, attention_mask=None):
        return self.text[: input_ids.shape[0]] * 3.0  # the scale must not matter: features are normalised

    def get_image_features(self, pixel_values):
        return pixel_values.flatten(1) * 0.5


def test_known_values_on_controlled_features(tokenizer):
    model = ControlledModel(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    images = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]]).view(3, 2, 1, 1)
    labels = [0, 1, 0]
    result = alignment(model, images, labels, ["cat", "dog"], tokenizer)
    r = 1 / math.sqrt(2)
    # image 0 = class 0 exactly; image 1 halfway between both; image 2 = class 1 but labelled 0
    assert result["matched_similarity"] == pytest.approx((1 + r + 0) / 3)
    assert result["margin"] == pytest.approx(((1 - 0) + (r - r) + (0 - 1)) / 3)
    image_mean = torch.tensor([(1 + r + 0) / 3, (0 + r + 1) / 3])
    class_mean = torch.tensor([0.5, 0.5])
    assert result["modality_gap"] == pytest.approx((image_mean - class_mean).norm().item())
    assert result["accuracy"] == pytest.approx(100 / 3)  # image 1 is a tie resolved to class 0 (wrong), image 2 wrong
    assert result["num_examples"] == 3
    # identical embeddings in both modalities: similarity 1, no gap
    same = alignment(model, torch.eye(2).view(2, 2, 1, 1), [0, 1], ["cat", "dog"], tokenizer)
    assert same["matched_similarity"] == pytest.approx(1.0) and same["margin"] == pytest.approx(1.0)
    assert same["modality_gap"] == pytest.approx(0.0, abs=1e-7)
    # a single class: no margin
    assert math.isnan(alignment(model, images[:1], [0], ["cat"], tokenizer)["margin"])


def test_matches_a_hand_computation_on_tiny_clip(tokenizer):
    torch.manual_seed(0)
    model = get_peft_model(make_clip(eos_token_id=TOKENIZER_EOS_ID), MuDPTConfig(depth=3))
    randomize_adapter(model)
    pixel_values = make_inputs(batch=6)["pixel_values"]
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    model.train()
    result = alignment(model, pixel_values, labels, CLASSES, tokenizer, batch_size=4)
    assert model.training  # restored

    model.eval()
    with torch.no_grad():
        tokens = tokenizer([f"a photo of a {c}." for c in CLASSES], padding=True, return_tensors="pt")
        text = F.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)
        image = F.normalize(model.get_image_features(pixel_values=pixel_values).pooler_output, dim=-1)
    similarity = image @ text.t()
    matched = similarity[torch.arange(6), labels]
    best_other = similarity.masked_fill(F.one_hot(labels, 3).bool(), -2.0).max(dim=1).values
    assert result["matched_similarity"] == pytest.approx(matched.mean().item(), abs=1e-6)
    assert result["margin"] == pytest.approx((matched - best_other).mean().item(), abs=1e-6)
    assert result["modality_gap"] == pytest.approx((image.mean(0) - text.mean(0)).norm().item(), abs=1e-6)
    assert result["accuracy"] == pytest.approx(100 * (similarity.argmax(-1) == labels).float().mean().item())
    # the adapter's prompts are used: the disabled adapter (zero-shot CLIP) aligns differently
    with model.disable_adapter():
        zero_shot = alignment(model, pixel_values, labels, CLASSES, tokenizer)
    assert zero_shot["modality_gap"] != pytest.approx(result["modality_gap"], abs=1e-4)


def test_images_are_processed_with_the_image_processor(tokenizer):
    clip = make_clip(eos_token_id=TOKENIZER_EOS_ID)
    images = [Image.new("RGB", (20, 20), color) for color in ("red", "blue", "white", "black")]
    labels = [0, 1, 2, 0]
    from_images = alignment(clip, images, labels, CLASSES, tokenizer, image_processor=image_processor(), batch_size=3)
    pixel_values = image_processor()(images=images, return_tensors="pt")["pixel_values"]
    from_pixels = alignment(clip, pixel_values, labels, CLASSES, tokenizer)
    for key in ("matched_similarity", "margin", "modality_gap", "accuracy"):
        assert from_images[key] == pytest.approx(from_pixels[key], abs=1e-6)


def test_bad_input(tokenizer):
    clip = make_clip(eos_token_id=TOKENIZER_EOS_ID)
    pixel_values = make_inputs(batch=2)["pixel_values"]
    with pytest.raises(ValueError, match="non-empty list"):
        alignment(clip, pixel_values, [0, 1], [], tokenizer)
    with pytest.raises(ValueError, match="2 images but 3 labels"):
        alignment(clip, pixel_values, [0, 1, 0], CLASSES, tokenizer)
    with pytest.raises(ValueError, match=r"class indices in 0\.\.2"):
        alignment(clip, pixel_values, [0, 3], CLASSES, tokenizer)
    with pytest.raises(ValueError, match="image_processor"):
        alignment(clip, [Image.new("RGB", (16, 16))], [0], CLASSES, tokenizer)
