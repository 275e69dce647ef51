"""CoCoOp (`MuDPTConfig.for_method("cocoop")`): CoOp's context shifted per image by a meta-net.

Exact to an independent re-implementation of the official forward (`official_reference.official_cocoop_logits`), the
per-image class encoding in chunks equal to one forward, no class-feature cache, training with
`PromptTuningTrainer`, save / load / evaluate, and `convert_official` of its checkpoints.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel, get_peft_model
from transformers import BatchEncoding

from mudpt_peft import MuDPTConfig, PromptClassifier
from mudpt_peft._utils import projected_features
from mudpt_peft.convert import convert_official
from mudpt_peft.evaluation import evaluate
from mudpt_peft.fusion import MetaNetFusion
from mudpt_peft.methods import METHODS, method_of
from mudpt_peft.trainer import PromptTuningTrainer, default_training_arguments

from .helpers import COLOR_CLASSES, TOKENIZER_EOS_ID, color_dataset, image_processor, make_clip, make_inputs
from .official_reference import (
    COCOOP_KEYS,
    EOT_ID,
    load_cocoop_into_tuner,
    make_class_tokens,
    make_cocoop_state,
    make_openai_clip,
    official_cocoop_logits,
    official_token_ids,
    openai_to_hf,
    tuner_token_ids,
)

# the models are tiny: with several threads on shared cores, thread spinning costs 20x the compute
pytestmark = pytest.mark.usefixtures("one_thread")

#: fp32 logits of the tuner vs. the official re-implementation: the same math in another operation order (HF's fused
#: attention, the per-row dot product instead of a matmul); measured differences are below 3e-6 on logits of size ~10.
EXACT = {"atol": 1e-5, "rtol": 0.0}
#: chunked vs. one forward: the same operations on text batches of other sizes, whose CPU GEMM blockings round
#: differently in the last bits (fp32 eps 1.2e-7 times logit scales up to ~15); measured below 5e-7.
CHUNKED = {"atol": 2e-6, "rtol": 0.0}


class IdsTokenizer:
    """A tokenizer that returns prescribed token ids for each prompt (the official tokenization, placeholders
    removed), so that the classifier encodes exactly the official sequences."""

    pad_token_id = 0

    def __init__(self, ids_by_prompt: dict[str, torch.Tensor]) -> None:
        self.ids_by_prompt = ids_by_prompt

    def __call__(self, texts: list[str], padding: str = "longest", return_tensors: str = "pt") -> BatchEncoding:
        input_ids = torch.stack([self.ids_by_prompt[text] for text in texts])
        return BatchEncoding({"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)})


@pytest.fixture(scope="module")
def openai_clip() -> dict[str, torch.Tensor]:
    return make_openai_clip(seed=0, embed_dim=48)


@pytest.fixture(scope="module")
def pixel_values() -> torch.Tensor:
    return torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def official_setup(openai_clip, n_ctx: int, eos_token_id: int = EOT_ID, seed: int = 3):
    """The official state, token ids and expected logits, and a classifier over an adapter loaded by hand."""
    state = make_cocoop_state(openai_clip, n_ctx, seed=seed)
    class_tokens = make_class_tokens((1, 2, 3, 5), seed=2)
    official_ids = official_token_ids(class_tokens, n_ctx)
    ids = tuner_token_ids(official_ids, n_ctx)
    names = [f"class {i}" for i in range(len(class_tokens))]
    tokenizer = IdsTokenizer(dict(zip(names, ids, strict=True)))
    config = MuDPTConfig.for_method("cocoop", n_ctx=n_ctx)
    model = get_peft_model(openai_to_hf(openai_clip, eos_token_id=eos_token_id), config)
    return state, official_ids, model, tokenizer, names


def classifier_logits(classifier: PromptClassifier, pixel_values: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return classifier(pixel_values=pixel_values).logits


# ----------------------------------------------------------------------------------------------------------------------
# the method


def test_preset_recipe_and_fusion():
    config = MuDPTConfig.for_method("CoCoOp")
    assert (config.text_prompts, config.vision_prompts, config.fusion, config.depth, config.n_ctx) == (
        True, False, "meta_net", 1, 4,
    )  # fmt: skip
    assert MuDPTConfig.for_method("cocoop", ctx_init_token_ids=[3, 4, 5, 6]).n_ctx == 4
    assert method_of(config) == "cocoop" and method_of(MuDPTConfig.for_method("coop")) == "coop"
    assert METHODS["cocoop"].official == "KaiyangZhou/CoOp trainers/cocoop.py"
    # configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml: SGD, lr 0.002, 10 epochs, batch 1
    args = default_training_arguments("cocoop", "unused", report_to=[])
    assert (args.learning_rate, args.num_train_epochs, args.per_device_train_batch_size) == (0.002, 10, 1)
    assert args.optim.value == "sgd" and args.lr_scheduler_type.value == "cosine"
    for towers in ({"text_prompts": False}, {"vision_prompts": True}):
        with pytest.raises(ValueError, match="needs `text_prompts=True` and `vision_prompts=False`"):
            MuDPTConfig.for_method("cocoop", **towers, vision_n_ctx=2)

    model = get_peft_model(make_clip(), config)
    clip = model.base_model.model
    meta_net = clip.text_model.mudpt_fusion["default"]
    # Linear(embed dim, embed dim // 16) -> ReLU -> Linear(-> text width); the tiny CLIP's projection dim is 24
    assert isinstance(meta_net, MetaNetFusion)
    assert (meta_net.linear1.in_features, meta_net.linear1.out_features) == (24, 1)
    assert (meta_net.linear2.in_features, meta_net.linear2.out_features) == (1, 32)
    assert clip.text_model.mudpt_prompts["default"].shape == (1, 4, 32)
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == [
        "base_model.model.text_model.mudpt_fusion.default.linear1.bias",
        "base_model.model.text_model.mudpt_fusion.default.linear1.weight",
        "base_model.model.text_model.mudpt_fusion.default.linear2.bias",
        "base_model.model.text_model.mudpt_fusion.default.linear2.weight",
        "base_model.model.text_model.mudpt_prompts.default",
    ]


@pytest.mark.parametrize(("n_ctx", "eos_token_id"), [(4, EOT_ID), (2, EOT_ID), (4, 2)])
def test_matches_the_official_forward(openai_clip, pixel_values, n_ctx, eos_token_id):
    state, official_ids, model, tokenizer, names = official_setup(openai_clip, n_ctx, eos_token_id)
    load_cocoop_into_tuner(model, state)
    classifier = PromptClassifier(model, tokenizer, names, template="{}").eval()
    with torch.no_grad():
        expected = official_cocoop_logits(openai_clip, state, official_ids, pixel_values)
    actual = classifier_logits(classifier, pixel_values)
    torch.testing.assert_close(actual, expected, **EXACT)

    # the test is sensitive: the meta-net's shift and the per-image prompts both matter
    with torch.no_grad():
        unshifted = {**state, "meta_net.linear2.weight": torch.zeros_like(state["meta_net.linear2.weight"]),
                     "meta_net.linear2.bias": torch.zeros_like(state["meta_net.linear2.bias"])}  # fmt: skip
        coop_like = official_cocoop_logits(openai_clip, unshifted, official_ids, pixel_values)
    assert (coop_like - expected).abs().max() > 100 * EXACT["atol"]
    # the meta-net reads the *normalised* image features, which differ from the raw ones here
    with torch.no_grad():
        raw = projected_features(model.base_model.model.get_image_features(pixel_values=pixel_values))
    assert (raw.norm(dim=-1) - 1).abs().min() > 0.1, "the test needs image features whose norm is not 1"


def test_classes_are_encoded_per_image_and_never_cached(openai_clip, pixel_values):
    state, _, model, tokenizer, names = official_setup(openai_clip, 4)
    load_cocoop_into_tuner(model, state)
    classifier = PromptClassifier(model, tokenizer, names, template="{}").eval()
    together = classifier_logits(classifier, pixel_values)
    alone = torch.cat([classifier_logits(classifier, pixel_values[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, **CHUNKED)
    assert classifier._cache is None  # no class feature is cached for an image-conditioned adapter

    # a write that no version counter sees (through `.data`) is used at once: nothing is cached
    meta_net = model.base_model.model.text_model.mudpt_fusion["default"]
    # (a random vector: a constant one is invisible, every read of the residual stream goes through a LayerNorm)
    meta_net.linear2.bias.data += torch.randn(meta_net.linear2.bias.shape, generator=torch.Generator().manual_seed(0))
    changed = classifier_logits(classifier, pixel_values)
    assert (changed - together).abs().max() > 1e-3
    with model.disable_adapter():  # without the adapter: plain CLIP with the class prompts, one encoding for all
        plain = classifier_logits(classifier, pixel_values)
        assert classifier.conditioned_text_tower() is None
    assert not torch.allclose(plain, changed)


@pytest.mark.parametrize("chunk", [1, 3, 5, 11, 12, 1000])
def test_chunked_encoding_equals_one_forward(openai_clip, pixel_values, chunk):
    state, _, model, tokenizer, names = official_setup(openai_clip, 4)
    load_cocoop_into_tuner(model, state)
    one_forward = PromptClassifier(model, tokenizer, names, template="{}", class_chunk_size=3 * len(names)).eval()
    chunked = PromptClassifier(model, tokenizer, names, template="{}", class_chunk_size=chunk).eval()
    expected = classifier_logits(one_forward, pixel_values)
    torch.testing.assert_close(classifier_logits(chunked, pixel_values), expected, **CHUNKED)


def test_chunked_ensemble_equals_one_forward(tokenizer):
    torch.manual_seed(0)
    model = get_peft_model(make_clip(eos_token_id=TOKENIZER_EOS_ID), MuDPTConfig.for_method("cocoop"))
    meta_net = model.base_model.model.text_model.mudpt_fusion["default"]
    with torch.no_grad():
        meta_net.linear2.weight.normal_(0, 2.0)
    templates = ["{}", "a {}", "{} a"]
    pixel_values = make_inputs(batch=3)["pixel_values"]
    names = COLOR_CLASSES[:4]
    one = PromptClassifier(model, tokenizer, names, templates=templates, class_chunk_size=12).eval()
    expected = classifier_logits(one, pixel_values)
    for chunk in (1, 5, 7):
        chunked = PromptClassifier(model, tokenizer, names, templates=templates, class_chunk_size=chunk).eval()
        torch.testing.assert_close(classifier_logits(chunked, pixel_values), expected, **CHUNKED)
    # each image's row, by hand: its shift on every class prompt of each template, the normalised features averaged
    text, clip = model.base_model.model.text_model, model.base_model.model
    with torch.no_grad():
        images = F.normalize(projected_features(clip.get_image_features(pixel_values=pixel_values)), dim=-1)
        shifts = meta_net.linear2(torch.relu(meta_net.linear1(images)))
        rows = []
        for image, shift in zip(images, shifts, strict=True):
            total = 0
            for template in templates:
                batch = tokenizer([template.format(name) for name in names], padding="longest", return_tensors="pt")
                with text.conditioned(shift.expand(len(names), -1)):
                    features = projected_features(clip.get_text_features(**batch))
                total = total + F.normalize(features, dim=-1)
            rows.append(clip.logit_scale.exp() * F.normalize(total / len(templates), dim=-1) @ image)
    torch.testing.assert_close(expected, torch.stack(rows), **EXACT)
    with pytest.raises(ValueError, match="`class_chunk_size` must be an integer >= 1"):
        PromptClassifier(model, tokenizer, names, class_chunk_size=0)


def test_text_features_need_an_image(tokenizer):
    model = get_peft_model(make_clip(), MuDPTConfig.for_method("cocoop"))
    inputs = make_inputs()
    with pytest.raises(ValueError, match="conditions the text prompts on each image"):
        model.get_text_features(input_ids=inputs["input_ids"])
    with pytest.raises(ValueError, match="conditions the text prompts on each image"):
        model(**inputs)
    with pytest.raises(ValueError, match="no class features without an image"):
        PromptClassifier(model, tokenizer, COLOR_CLASSES[:2]).eval().encode_classes()
    text = model.base_model.model.text_model
    with pytest.raises(ValueError, match="one shift per text row"), text.conditioned(torch.zeros(1, 32)):
        model.get_text_features(input_ids=inputs["input_ids"])
    # a zero shift inside `conditioned` is CoOp with the same context
    with torch.no_grad(), text.conditioned(torch.zeros(3, 32)):
        conditioned = model.get_text_features(input_ids=inputs["input_ids"]).pooler_output
    coop = get_peft_model(make_clip(), MuDPTConfig.for_method("coop", n_ctx=4))
    with torch.no_grad():
        coop.base_model.model.text_model.mudpt_prompts["default"].copy_(text.mudpt_prompts["default"])
        expected = coop.get_text_features(input_ids=inputs["input_ids"]).pooler_output
    assert torch.equal(conditioned, expected)


def test_every_trainable_tensor_gets_a_gradient(tokenizer):
    torch.manual_seed(0)
    model = get_peft_model(make_clip(eos_token_id=TOKENIZER_EOS_ID), MuDPTConfig.for_method("cocoop"))
    classifier = PromptClassifier(model, tokenizer, COLOR_CLASSES[:4], class_chunk_size=5).train()
    output = classifier(pixel_values=make_inputs(batch=2)["pixel_values"], labels=torch.tensor([0, 3]))
    output.loss.backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert len(trainable) == 5
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable.values())


# ----------------------------------------------------------------------------------------------------------------------
# training, saving, loading, evaluating


def test_trains_saves_loads_and_evaluates(tokenizer, tmp_path):
    train = color_dataset(12, seed=0, classes=4)
    test = color_dataset(8, seed=1, classes=4)
    classes = COLOR_CLASSES[:4]
    torch.manual_seed(0)
    model = get_peft_model(make_clip(eos_token_id=TOKENIZER_EOS_ID), MuDPTConfig.for_method("cocoop"))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    args = default_training_arguments(
        "cocoop", str(tmp_path / "run"), num_train_epochs=2, learning_rate=0.05, report_to=[], disable_tqdm=True,
        dataloader_num_workers=0, dataloader_pin_memory=False, save_strategy="no", seed=0,
    )  # fmt: skip
    assert args.per_device_train_batch_size == 1  # the official recipe: one image per step
    trainer = PromptTuningTrainer(
        model, classes, tokenizer, args=args, train_dataset=train, eval_dataset=test, image_processor=image_processor()
    )
    start = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    assert trainer.state.global_step == 24
    moved = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert len(moved) == 5  # the context and both meta-net layers learned
    assert after["eval_loss"] < start["eval_loss"]
    assert trainer.classifier._cache is None

    independent = evaluate(model, test, classes, tokenizer, image_processor())
    assert after["eval_accuracy"] == pytest.approx(independent["accuracy"])

    trainer.save_model(str(tmp_path / "final"))
    reloaded = PeftModel.from_pretrained(make_clip(eos_token_id=TOKENIZER_EOS_ID), tmp_path / "final")
    assert reloaded.peft_config["default"].fusion == "meta_net"
    pixel_values = make_inputs(batch=3)["pixel_values"]
    trained = PromptClassifier(model, tokenizer, classes).eval()
    loaded = PromptClassifier(reloaded, tokenizer, classes).eval()
    assert torch.equal(classifier_logits(loaded, pixel_values), classifier_logits(trained, pixel_values))
    again = evaluate(reloaded, test, classes, tokenizer, image_processor())
    assert again["accuracy"] == independent["accuracy"]
    # the meta-net is created on meta and assigned when loading with low_cpu_mem_usage
    lazily = PeftModel.from_pretrained(
        make_clip(eos_token_id=TOKENIZER_EOS_ID), tmp_path / "final", low_cpu_mem_usage=True
    )
    lazy = PromptClassifier(lazily, tokenizer, classes).eval()
    assert torch.equal(classifier_logits(lazy, pixel_values), classifier_logits(trained, pixel_values))

    # it trains through the classifier, not through a distributed wrapper's forward: refused with a wrapper
    wrapper = torch.nn.Module()
    with pytest.raises(ValueError, match="trains on one process only"):
        trainer._training_output(wrapper, pixel_values)

    # the classifier's own save restores a ready classifier
    trained.save_pretrained(tmp_path / "classifier")
    restored = PromptClassifier.from_pretrained(
        make_clip(eos_token_id=TOKENIZER_EOS_ID), tmp_path / "classifier", tokenizer
    )
    assert torch.equal(classifier_logits(restored, pixel_values), classifier_logits(trained, pixel_values))
    assert "cocoop" in (tmp_path / "classifier" / "README.md").read_text()


# ----------------------------------------------------------------------------------------------------------------------
# converting official checkpoints


@pytest.mark.parametrize("prefix", ["", "prompt_learner.", "module."])
def test_convert_official_checkpoint(openai_clip, pixel_values, prefix):
    state, official_ids, _, tokenizer, names = official_setup(openai_clip, 4)
    checkpoint = {"state_dict": {prefix + key: value for key, value in state.items()}, "epoch": 10}
    model = convert_official(checkpoint, "cocoop", openai_to_hf(openai_clip))
    text = model.base_model.model.text_model
    assert model.peft_config["default"].fusion == "meta_net" and model.peft_config["default"].n_ctx == 4
    assert torch.equal(text.mudpt_prompts["default"][0], state["ctx"])
    meta_net = text.mudpt_fusion["default"]
    for key in COCOOP_KEYS[1:]:
        assert torch.equal(meta_net.get_parameter(key.removeprefix("meta_net.")), state[key]), key

    classifier = PromptClassifier(model, tokenizer, names, template="{}").eval()
    with torch.no_grad():
        expected = official_cocoop_logits(openai_clip, state, official_ids, pixel_values)
    torch.testing.assert_close(classifier_logits(classifier, pixel_values), expected, **EXACT)


def test_convert_official_fp16_checkpoint_and_errors(openai_clip):
    state = make_cocoop_state(openai_clip, 4)
    half = {key: value.half() if key.startswith("meta_net.") else value for key, value in state.items()}  # PREC fp16
    model = convert_official(half, "cocoop", openai_to_hf(openai_clip))
    meta_net = model.base_model.model.text_model.mudpt_fusion["default"]
    assert meta_net.linear1.weight.dtype == torch.float32
    assert torch.equal(meta_net.linear1.weight, half["meta_net.linear1.weight"].float())

    clip = openai_to_hf(openai_clip)
    keys_before = set(clip.state_dict())
    missing = {key: value for key, value in state.items() if key != "meta_net.linear2.bias"}
    with pytest.raises(ValueError, match=r"missing keys .*meta_net\.linear2\.bias"):
        convert_official(missing, "cocoop", clip)
    with pytest.raises(ValueError, match="look like a `cocoop` checkpoint: pass method='cocoop'"):
        convert_official(state, "coop", clip)
    wrong = {**state, "meta_net.linear1.weight": torch.zeros(5, 48)}
    with pytest.raises(ValueError, match=r"`meta_net\.linear1\.weight` has shape \(5, 48\), expected \(3, 48\)"):
        convert_official(wrong, "cocoop", clip)
    assert set(clip.state_dict()) == keys_before  # untouched on every error
