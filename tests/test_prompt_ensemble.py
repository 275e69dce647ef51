"""Prompt ensembling in `PromptClassifier` and `evaluate` (`templates=[...]`): the class features are the mean of the
L2-normalised features of each template's prompts, normalised again, as CoOp's `ZeroshotCLIP2` computes them.

The reference encodes each template's prompts on their own (a batch padded to its longest prompt, as a classifier with
that one template does), sums the normalised features, divides by the number of templates and normalises. Tolerance:
`assert_close(rtol=0, atol=1e-6)` on unit vectors. Both sides run the same kernels on the same inputs and agree
bit for bit on the CPU (measured: 0.0); the bound leaves room only for another kernel blocking or summation order of
a few fp32 terms of magnitude <= 1, each rounding <= 6e-8 (padding all templates into one batch instead moves the
features by 9e-8), far below what a wrong average would change (the templates' features differ by > 1e-2 here).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from peft import get_peft_model

from mudpt_peft import MuDPTConfig, PromptClassifier
from mudpt_peft.evaluation import evaluate

from .helpers import CLASSIFIER_CLASSES as CLASSES
from .helpers import (
    COLOR_CLASSES,
    CountingTextCalls,
    clip_for_tokenizer,
    color_dataset,
    image_processor,
    make_inputs,
    randomize_adapter,
)

#: Templates of different token lengths, so that each is padded to its own longest prompt.
TEMPLATES = ["a photo of a {}.", "{}", "the {} of a photo."]
ATOL = 1e-6


def features(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def reference_class_features(model, tokenizer, class_names, templates) -> torch.Tensor:
    total = 0
    for template in templates:
        tokens = tokenizer([template.format(name) for name in class_names], padding=True, return_tensors="pt")
        text = features(model.get_text_features(**tokens))
        total = total + text / text.norm(dim=-1, keepdim=True)
    mean = total / len(templates)
    return mean / mean.norm(dim=-1, keepdim=True)


def reference_logits(model, class_features, pixel_values) -> torch.Tensor:
    image = features(model.get_image_features(pixel_values=pixel_values))
    image = image / image.norm(dim=-1, keepdim=True)
    return model.logit_scale.exp() * image @ class_features.t()


def test_zero_shot_ensemble_matches_the_reference(tokenizer):
    clip = clip_for_tokenizer()
    pixel_values = make_inputs(batch=5)["pixel_values"]
    classifier = PromptClassifier(clip, tokenizer, CLASSES, templates=TEMPLATES).eval()
    assert classifier.templates == TEMPLATES and classifier.template is None
    with torch.no_grad():
        expected = reference_class_features(clip, tokenizer, CLASSES, TEMPLATES)
        torch.testing.assert_close(classifier.encode_classes(), expected, rtol=0, atol=ATOL)
        logits = classifier(pixel_values=pixel_values).logits
        torch.testing.assert_close(logits, reference_logits(clip, expected, pixel_values), rtol=0, atol=1e-4)
        # the ensemble is not any one of its templates, and one template in a list is that template
        for template in TEMPLATES:
            single = reference_class_features(clip, tokenizer, CLASSES, [template])
            assert (single - expected).abs().max() > 1e-2
        one = PromptClassifier(clip, tokenizer, CLASSES, templates=[TEMPLATES[2]]).eval()
        plain = PromptClassifier(clip, tokenizer, CLASSES, template=TEMPLATES[2]).eval()
        assert torch.equal(one.encode_classes(), plain.encode_classes()) and one.template == TEMPLATES[2]
        assert torch.equal(one.class_input_ids, plain.class_input_ids)


def test_each_template_is_padded_to_its_own_longest_prompt(tokenizer):
    classifier = PromptClassifier(clip_for_tokenizer(), tokenizer, ["a", "of a photo"], templates=["{}", "a {}"])
    # "{}": 3 and 5 tokens (BOS, words, EOS); "a {}": 4 and 6; one tensor of 6 columns, template after template
    assert classifier.class_input_ids.shape == (4, 6) and classifier._template_lengths == [5, 6]
    assert classifier.class_attention_mask.sum(-1).tolist() == [3, 5, 4, 6]
    classifier.class_names = ["a"]  # new names: re-tokenized for every template
    assert classifier.class_input_ids.shape == (2, 4) and classifier._template_lengths == [3, 4]


def test_adapted_ensemble_trains_caches_and_follows_the_adapter(tokenizer):
    torch.manual_seed(0)
    model = get_peft_model(clip_for_tokenizer(), MuDPTConfig(depth=3))
    randomize_adapter(model, seed=1)
    pixel_values = make_inputs(batch=4)["pixel_values"]
    classifier = PromptClassifier(model, tokenizer, CLASSES, templates=TEMPLATES)
    counter = CountingTextCalls(model)

    classifier.train()
    out = classifier(pixel_values=pixel_values, labels=torch.tensor([0, 1, 2, 3]))
    assert counter.count == len(TEMPLATES)  # one batch per template
    out.loss.backward()
    assert model.base_model.model.text_model.mudpt_prompts["default"].grad.abs().sum() > 0
    with torch.no_grad():
        expected = reference_class_features(model, tokenizer, CLASSES, TEMPLATES)
        torch.testing.assert_close(out.logits, reference_logits(model, expected, pixel_values), rtol=0, atol=1e-4)

    classifier.eval()
    counter.count = 0
    with torch.no_grad():
        first = classifier.encode_classes()
        second = classifier.encode_classes()
    assert counter.count == len(TEMPLATES) and second is first  # encoded once, then cached
    torch.testing.assert_close(first, reference_class_features(model, tokenizer, CLASSES, TEMPLATES), rtol=0, atol=ATOL)

    randomize_adapter(model, seed=3)  # in-place writes into the adapter: the cached ensemble is stale
    with torch.no_grad():
        counter.count = 0
        after = classifier.encode_classes()
        assert counter.count == len(TEMPLATES) and classifier.encode_classes() is after
        expected_after = reference_class_features(model, tokenizer, CLASSES, TEMPLATES)
    assert (after - first).abs().max() > 1e-3
    torch.testing.assert_close(after, expected_after, rtol=0, atol=ATOL)


def test_evaluate_with_templates_scores_the_ensemble(tokenizer):
    clip = clip_for_tokenizer()
    dataset = color_dataset(12, seed=3)
    processor = image_processor()
    metrics = evaluate(clip, dataset, COLOR_CLASSES, tokenizer, processor, templates=TEMPLATES, batch_size=5)
    with torch.no_grad():
        pixel_values = processor(images=[row["image"] for row in dataset], return_tensors="pt")["pixel_values"]
        class_features = reference_class_features(clip, tokenizer, COLOR_CLASSES, TEMPLATES)
        logits = reference_logits(clip, class_features, pixel_values)
    labels = torch.tensor(dataset["label"][:])
    assert metrics["accuracy"] == pytest.approx(100.0 * (logits.argmax(-1) == labels).float().mean().item())
    top5 = (logits.topk(5, dim=-1).indices == labels[:, None]).any(-1).float().mean().item()
    assert metrics["top5_accuracy"] == pytest.approx(100.0 * top5) and metrics["num_examples"] == 12
    one = evaluate(clip, dataset, COLOR_CLASSES, tokenizer, processor, templates=TEMPLATES[2:])
    assert one == evaluate(clip, dataset, COLOR_CLASSES, tokenizer, processor, template=TEMPLATES[2])


def test_template_arguments_are_checked(tokenizer):
    clip = clip_for_tokenizer()
    with pytest.raises(ValueError, match=r"Pass either `template` \(one prompt per class\) or `templates`"):
        PromptClassifier(clip, tokenizer, CLASSES, template="a {}.", templates=TEMPLATES)
    with pytest.raises(ValueError, match=r"`templates` must be a non-empty list of templates, got \[\]"):
        PromptClassifier(clip, tokenizer, CLASSES, templates=[])
    with pytest.raises(ValueError, match=r"`templates` must be a non-empty list of templates, got 'a \{\}.'"):
        PromptClassifier(clip, tokenizer, CLASSES, templates="a {}.")
    with pytest.raises(ValueError, match=r"`template` 'a photo.' has no `\{\}` placeholder"):
        PromptClassifier(clip, tokenizer, CLASSES, templates=["a {}.", "a photo."])
    assert PromptClassifier(clip, tokenizer, CLASSES).templates == ["a photo of a {}."]


def test_an_ensemble_classifier_saves_and_restores_its_templates(tokenizer, tmp_path):
    torch.manual_seed(0)
    model = get_peft_model(clip_for_tokenizer(), MuDPTConfig(depth=2))
    randomize_adapter(model, seed=2)
    pixel_values = make_inputs(batch=3)["pixel_values"]
    classifier = PromptClassifier(model, tokenizer, CLASSES, templates=TEMPLATES).eval()
    with torch.no_grad():
        expected = classifier(pixel_values=pixel_values).logits
    classifier.save_pretrained(tmp_path / "ensemble")
    info = json.loads((tmp_path / "ensemble" / "prompt_classifier.json").read_text())
    assert info["format_version"] == 2 and info["templates"] == TEMPLATES and info["template"] == TEMPLATES[0]
    assert "an ensemble of 3 prompt templates" in (tmp_path / "ensemble" / "README.md").read_text()
    restored = PromptClassifier.from_pretrained(clip_for_tokenizer(), tmp_path / "ensemble", tokenizer=tokenizer)
    assert restored.templates == TEMPLATES and restored.template is None
    with torch.no_grad():
        assert torch.equal(restored(pixel_values=pixel_values).logits, expected)

    single = PromptClassifier(model, tokenizer, CLASSES, template="a photo of {}.").eval()
    single.save_pretrained(tmp_path / "single")  # readable by versions without ensembles
    info = json.loads((tmp_path / "single" / "prompt_classifier.json").read_text())
    assert info["format_version"] == 1 and "templates" not in info and info["template"] == "a photo of {}."

    path = tmp_path / "ensemble" / "prompt_classifier.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "templates": ["no placeholder"]}))
    with pytest.raises(ValueError, match=r"invalid template in 'templates': .template. 'no placeholder' has no"):
        PromptClassifier.from_pretrained(clip_for_tokenizer(), tmp_path / "ensemble", tokenizer=tokenizer)


def test_one_template_keeps_the_single_template_computation(tokenizer):
    clip = clip_for_tokenizer()
    classifier = PromptClassifier(clip, tokenizer, CLASSES, template="a photo of {}.").eval()
    with torch.no_grad():
        tokens = tokenizer([f"a photo of {name}." for name in CLASSES], padding=True, return_tensors="pt")
        expected = F.normalize(features(clip.get_text_features(**tokens)), dim=-1)
        assert torch.equal(classifier.encode_classes(), expected)
