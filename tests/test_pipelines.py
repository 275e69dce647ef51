"""transformers' entry points with a MuDPT adapter, measured: the zero-shot-image-classification pipeline (on the
`PeftModel`, on the adapter folder, through `mudpt_peft.pipelines.zero_shot_pipeline`) against `PromptClassifier`,
and `CLIPModel.from_pretrained(adapter_dir)` against the `PeftModel`'s logits."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import CLIPModel, CLIPProcessor, pipeline
from transformers.pipelines.zero_shot_image_classification import ZeroShotImageClassificationPipeline

from mudpt_peft import MuDPTConfig, PromptClassifier
from mudpt_peft.pipelines import PeftZeroShotImageClassificationPipeline, supported_model_names, zero_shot_pipeline

from .helpers import CLASSIFIER_CLASSES, clip_for_tokenizer, color_dataset, image_processor, logits, randomize_adapter

TASK = "zero-shot-image-classification"
TEMPLATE = "a photo of a {}."
NOT_SUPPORTED = "is not supported for zero-shot-image-classification"

# tiny models: with several threads on shared cores thread spinning costs up to 20x the compute
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def images() -> list:
    return list(color_dataset(6)["image"])


@pytest.fixture
def base_dir(tmp_path, tokenizer):
    """A saved tiny CLIP with its tokenizer and image processor (what a Hub id or a local copy holds)."""
    folder = tmp_path / "base"
    clip_for_tokenizer().save_pretrained(folder)
    CLIPProcessor(image_processor=image_processor(), tokenizer=tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture
def adapted(base_dir, tmp_path):
    """`(PeftModel, adapter_dir)`: a MuDPT adapter with random values on the model from `base_dir`, and its folder
    (whose `adapter_config.json` names `base_dir` as the base model)."""
    model = get_peft_model(CLIPModel.from_pretrained(base_dir), MuDPTConfig(depth=2))
    randomize_adapter(model, seed=3)  # non-trivial: the adapter moves the scores (checked below)
    model.eval()
    adapter_dir = tmp_path / "adapter"
    model.save_pretrained(adapter_dir)
    return model, adapter_dir


def scores_tensor(results: list[dict], labels: list[str]) -> torch.Tensor:
    """A pipeline's `[{'score', 'label'}]` (sorted by score) as a tensor in `labels` order."""
    by_label = {result["label"]: result["score"] for result in results}
    assert sorted(by_label) == sorted(labels)
    return torch.tensor([by_label[label] for label in labels], dtype=torch.float64)


def pipeline_scores(classify, images, labels=CLASSIFIER_CLASSES) -> torch.Tensor:
    return torch.stack(
        [
            scores_tensor(classify(image, candidate_labels=labels, hypothesis_template=TEMPLATE), labels)
            for image in images
        ]
    )


def test_pipeline_on_the_peft_model_gives_prompt_classifier_probabilities(adapted, tokenizer, images):
    model, _ = adapted
    classify = pipeline(TASK, model=model, tokenizer=tokenizer, image_processor=image_processor())
    scores = pipeline_scores(classify, images)

    classifier = PromptClassifier(model, tokenizer, CLASSIFIER_CLASSES, template=TEMPLATE).eval()
    pixel_values = image_processor()(images=[image.convert("RGB") for image in images], return_tensors="pt")
    with torch.no_grad():
        probabilities = classifier(pixel_values["pixel_values"]).logits.softmax(-1).double()
    # Both are softmax(logit_scale * cos(image, "a photo of a {class}.")) from the same fp32 weights and tokens; they
    # differ only in the order of the fp32 operations (the model's forward normalises and multiplies itself, the
    # classifier uses F.normalize and a cached class matrix): a few ulps of the probabilities, 1.3e-7 at most
    # (measured); 1e-6 bounds it.
    torch.testing.assert_close(scores, probabilities, rtol=0, atol=1e-6)

    with model.disable_adapter():  # the adapter matters: without it the scores move by far more than the tolerance
        base_scores = pipeline_scores(classify, images)
    assert (base_scores - scores).abs().max() > 1e-3


def test_pipeline_on_the_adapter_folder_equals_the_peft_model(adapted, tokenizer, images, transformers_log):
    model, adapter_dir = adapted
    from_model = pipeline(TASK, model=model, tokenizer=tokenizer, image_processor=image_processor())
    assert transformers_log.saw("The model 'PeftModel' " + NOT_SUPPORTED)  # what zero_shot_pipeline avoids
    transformers_log.messages.clear()

    from_folder = pipeline(TASK, model=str(adapter_dir))  # the base, its tokenizer and image processor: base_dir
    assert type(from_folder.model) is CLIPModel and "default" in from_folder.model.peft_config
    assert not transformers_log.saw(NOT_SUPPORTED)
    # the same weights, tokens and pixels through the same modules (the adapter injected by peft either way): the
    # fp32 results agree to rounding
    torch.testing.assert_close(pipeline_scores(from_folder, images), pipeline_scores(from_model, images))


def test_clip_from_pretrained_on_the_adapter_folder_applies_the_adapter(adapted, base_dir, inputs_for_tokenizer):
    model, adapter_dir = adapted
    loaded = CLIPModel.from_pretrained(adapter_dir).eval()
    assert type(loaded) is CLIPModel and "default" in loaded.peft_config
    expected = logits(model, inputs_for_tokenizer)
    torch.testing.assert_close(logits(loaded, inputs_for_tokenizer), expected)  # fp32 defaults: rounding only
    plain = CLIPModel.from_pretrained(base_dir).eval()
    assert (logits(plain, inputs_for_tokenizer) - expected).abs().max() > 1e-3  # and the adapter is not a no-op
    # as the page says, transformers' own adapter methods on it may ask for a newer peft than the project supports
    # (transformers 5.24 with peft 0.21: "please use a version >= 0.22.0"); with a newer peft they work
    try:
        active = loaded.active_adapters()
    except ValueError as error:
        assert "version of PEFT you are using is not compatible" in str(error)
    else:
        assert active == ["default"]


@pytest.fixture
def inputs_for_tokenizer(tokenizer, images) -> dict[str, torch.Tensor]:
    text = tokenizer([TEMPLATE.format(name) for name in CLASSIFIER_CLASSES], padding=True, return_tensors="pt")
    pixel_values = image_processor()(images=[image.convert("RGB") for image in images], return_tensors="pt")
    return {**text, "pixel_values": pixel_values["pixel_values"]}


# --------------------------------------------------------------------------------------------------------------------
# mudpt_peft.pipelines


def test_zero_shot_pipeline_has_no_not_supported_log_and_the_same_scores(adapted, tokenizer, images, transformers_log):
    model, adapter_dir = adapted
    plain = pipeline(TASK, model=model, tokenizer=tokenizer, image_processor=image_processor())
    transformers_log.messages.clear()

    classify = zero_shot_pipeline(model, tokenizer, image_processor())
    assert isinstance(classify, PeftZeroShotImageClassificationPipeline)
    assert isinstance(classify, ZeroShotImageClassificationPipeline) and classify.model is model
    assert not transformers_log.saw(NOT_SUPPORTED), transformers_log.messages
    # the same pipeline class apart from the check: bit-identical scores
    assert torch.equal(pipeline_scores(classify, images), pipeline_scores(plain, images))

    processor = CLIPProcessor(image_processor=image_processor(), tokenizer=tokenizer)
    with_processor = zero_shot_pipeline(model, processor=processor)
    assert with_processor.tokenizer is tokenizer and with_processor.image_processor is processor.image_processor
    assert torch.equal(pipeline_scores(with_processor, images[:2]), pipeline_scores(plain, images[:2]))

    from_folder = zero_shot_pipeline(adapter_dir)  # a path: loaded by transformers' PEFT integration
    assert isinstance(from_folder, PeftZeroShotImageClassificationPipeline) and type(from_folder.model) is CLIPModel
    torch.testing.assert_close(pipeline_scores(from_folder, images[:2]), pipeline_scores(plain, images[:2]))
    assert not transformers_log.saw(NOT_SUPPORTED), transformers_log.messages


def test_the_pipeline_class_keeps_the_check_for_other_models(adapted, tokenizer, transformers_log):
    classify = zero_shot_pipeline(adapted[0], tokenizer, image_processor())
    lora = get_peft_model(torch.nn.Sequential(torch.nn.Linear(4, 4)), LoraConfig(r=2, target_modules=["0"]))
    classify.model = lora  # a PeftModel on an unsupported base: the parent's check, and its log
    classify.check_model_type(["CLIPModel"])
    assert transformers_log.saw("The model 'PeftModel' is not supported")
    transformers_log.messages.clear()
    classify.model = clip_for_tokenizer()  # a plain supported model: the parent's check passes it
    classify.check_model_type({"clip": "CLIPModel"})
    classify.model = adapted[0]  # and the adapted one, against a mapping of tuples too
    classify.check_model_type({"clip": ("CLIPModel", "OtherModel")})
    assert not transformers_log.saw("not supported"), transformers_log.messages


def test_supported_model_names_reads_lists_and_mappings():
    assert supported_model_names(["CLIPModel"]) == ["CLIPModel"]
    assert supported_model_names({"clip": "CLIPModel", "x": ("AModel", "BModel")}) == ["CLIPModel", "AModel", "BModel"]
    from transformers.models.auto.modeling_auto import MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES

    names = supported_model_names(MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES)
    assert {"CLIPModel", "SiglipModel"} <= set(names)


def test_zero_shot_pipeline_errors(adapted, tokenizer):
    model, _ = adapted
    with pytest.raises(ValueError, match="PeftModel or the folder / Hub id"):
        zero_shot_pipeline(CLIPModel(model.get_base_model().config), tokenizer, image_processor())
    with pytest.raises(ValueError, match="needs its image_processor: pass `image_processor=` or `processor=`"):
        zero_shot_pipeline(model, tokenizer)
    with pytest.raises(ValueError, match="needs its tokenizer and image_processor"):
        zero_shot_pipeline(model)
    with pytest.raises(ValueError, match="`task` is fixed"):
        zero_shot_pipeline(model, tokenizer, image_processor(), task="image-classification")
    with pytest.raises(ValueError, match="`pipeline_class` is fixed"):
        zero_shot_pipeline(model, tokenizer, image_processor(), pipeline_class=ZeroShotImageClassificationPipeline)
    lora = get_peft_model(torch.nn.Sequential(torch.nn.Linear(4, 4)), LoraConfig(r=2, target_modules=["0"]))
    assert isinstance(lora, PeftModel)
    with pytest.raises(ValueError, match="base model is a Sequential, which the zero-shot-image-classification"):
        zero_shot_pipeline(lora, tokenizer, image_processor())
