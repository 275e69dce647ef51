"""No inference cache returns a stale value: after every kind of change to the weights, a cached classifier and the
prompted towers give exactly what a freshly built copy holding the same weights gives.

The only cache is `PromptClassifier`'s class features (the towers compute their prompts on every call). Each test
fills it in eval mode, changes the weights *without* any mode switch or explicit invalidation (which would hide a
cache key that misses the change), checks that the change matters, and compares with a fresh copy (`torch.equal`:
the same computation on the same machine).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from peft import PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from transformers import Trainer, TrainingArguments
from transformers.optimization import Adafactor
from transformers.training_args import OptimizerNames

from mudpt_peft import MuDPTConfig, PromptClassifier
from mudpt_peft.trainer import PromptTuningTrainer

from .helpers import CLASSIFIER_CLASSES as CLASSES
from .helpers import COLOR_CLASSES as TRAINER_CLASSES
from .helpers import clip_for_tokenizer, color_dataset, image_processor, make_inputs, peft_model, randomize_adapter


def adapted_classifier(tokenizer, depth: int = 3) -> PromptClassifier:
    model = get_peft_model(clip_for_tokenizer(), MuDPTConfig(depth=depth))
    randomize_adapter(model)
    return PromptClassifier(model, tokenizer, CLASSES).eval()


def pixels(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return make_inputs(batch=5)["pixel_values"].to(dtype)


def logits(classifier: PromptClassifier, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    with torch.no_grad():
        return classifier(pixel_values=pixels(dtype)).logits


def fresh_logits(classifier: PromptClassifier, tokenizer, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The logits of a new classifier around a deep copy of the model: everything computed from the current values."""
    fresh = PromptClassifier(copy.deepcopy(classifier.model), tokenizer, classifier.class_names).eval()
    return logits(fresh, dtype)


def assert_fresh_after(classifier: PromptClassifier, tokenizer, change: Callable[[], None], dtype=torch.float32):
    """Fill the cache, apply `change`, and check that the classifier and the model follow it exactly."""
    model_inputs = {**make_inputs(), "pixel_values": make_inputs()["pixel_values"].to(dtype)}
    before = logits(classifier)
    change()
    after = logits(classifier, dtype)
    assert not torch.equal(after.float(), before), "the change must matter, or the test proves nothing"
    assert torch.equal(after, fresh_logits(classifier, tokenizer, dtype))
    assert torch.equal(logits(classifier, dtype), after)  # and the refilled cache is reused
    with torch.no_grad():  # the towers themselves (no cache): prompts from the current values
        expected = copy.deepcopy(classifier.model)(**model_inputs).logits_per_image
        assert torch.equal(classifier.model(**model_inputs).logits_per_image, expected)


def trainable(classifier: PromptClassifier) -> list[torch.nn.Parameter]:
    return [p for p in classifier.model.parameters() if p.requires_grad]


def step_with_random_gradients(optimizer: torch.optim.Optimizer, parameters: list[torch.nn.Parameter]) -> None:
    """One optimizer step with given gradients: no forward pass, so no mode switch and no autograd."""
    generator = torch.Generator().manual_seed(0)
    for p in parameters:
        p.grad = torch.randn(p.shape, generator=generator).to(p.dtype)
    optimizer.step()


# --------------------------------------------------------------------------------------------------------------------
# optimizers

TORCH_OPTIMIZERS: dict[str, Callable[[list], torch.optim.Optimizer]] = {
    "SGD": lambda ps: torch.optim.SGD(ps, lr=0.1),
    "SGD foreach": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, foreach=True),
    "SGD fused": lambda ps: torch.optim.SGD(ps, lr=0.1, fused=True),
    "Adam": lambda ps: torch.optim.Adam(ps, lr=1e-2, foreach=False),
    "Adam foreach": lambda ps: torch.optim.Adam(ps, lr=1e-2, foreach=True),
    "Adam fused": lambda ps: torch.optim.Adam(ps, lr=1e-2, fused=True),
    "AdamW": lambda ps: torch.optim.AdamW(ps, lr=1e-2, foreach=False),
    "AdamW foreach": lambda ps: torch.optim.AdamW(ps, lr=1e-2, foreach=True),
    "AdamW fused": lambda ps: torch.optim.AdamW(ps, lr=1e-2, fused=True),
    "Adafactor": lambda ps: Adafactor(ps, lr=1e-2, relative_step=False, scale_parameter=False),
}


@pytest.mark.parametrize("name", list(TORCH_OPTIMIZERS))
def test_optimizer_steps_are_seen(tokenizer, name):
    classifier = adapted_classifier(tokenizer)
    optimizer = TORCH_OPTIMIZERS[name](trainable(classifier))
    assert_fresh_after(classifier, tokenizer, lambda: step_with_random_gradients(optimizer, trainable(classifier)))


def _trainer_optimizers() -> dict[str, tuple[type, dict] | str]:
    """Every `TrainingArguments.optim`: its optimizer class and arguments, or why it cannot run on this machine."""
    built: dict[str, tuple[type, dict] | str] = {}
    model = torch.nn.Linear(2, 2)
    for name in OptimizerNames:
        try:
            args = TrainingArguments(output_dir="unused", optim=name.value, use_cpu=True, report_to=[])
            cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
            cls([torch.nn.Parameter(torch.zeros(2, 2))], **kwargs)
        except Exception as error:  # a missing package, a GPU-only kernel, an optimizer needing a model
            built[name.value] = f"{type(error).__name__}: {str(error)[:200]}"
        else:
            built[name.value] = (cls, kwargs)
    return built


TRAINER_OPTIMIZERS = _trainer_optimizers()
RUNNABLE = sorted(name for name, built in TRAINER_OPTIMIZERS.items() if isinstance(built, tuple))


def test_the_trainers_cpu_optimizers_are_all_covered():
    assert {"adamw_torch", "adamw_torch_fused", "adafactor", "sgd", "adagrad", "rmsprop"} <= set(RUNNABLE)


@pytest.mark.parametrize("name", RUNNABLE)
def test_every_trainer_optimizer_that_runs_here_is_seen(tokenizer, name):
    cls, kwargs = TRAINER_OPTIMIZERS[name]
    classifier = adapted_classifier(tokenizer)
    optimizer = cls(trainable(classifier), **{**kwargs, "lr": 1e-2})
    assert_fresh_after(classifier, tokenizer, lambda: step_with_random_gradients(optimizer, trainable(classifier)))


def test_the_default_training_arguments_use_a_fused_optimizer():
    """Why the key counts optimizer steps: the Trainer's default writes without bumping any version counter."""
    assert TrainingArguments(output_dir="unused", report_to=[]).optim == OptimizerNames.ADAMW_TORCH_FUSED
    p = torch.nn.Parameter(torch.zeros(3))
    version = p._version
    step_with_random_gradients(torch.optim.AdamW([p], lr=0.1, fused=True), [p])
    assert p.abs().sum() > 0 and p._version == version


# --------------------------------------------------------------------------------------------------------------------
# direct writes, loads, adapter switches, dtype


def _tensor(classifier: PromptClassifier, which: str) -> torch.Tensor:
    clip = classifier.model.base_model.model
    return {
        "text prompts": clip.text_model.mudpt_prompts["default"],
        "vision prompts": clip.vision_model.mudpt_prompts["default"],  # feed the text prompts through V2T
        "V2T weight": clip.text_model.mudpt_fusion["default"].proj.weight,
    }[which]


@pytest.mark.parametrize("which", ["text prompts", "vision prompts", "V2T weight"])
@pytest.mark.parametrize("how", ["p.data.copy_", "p.data -= ...", "no_grad copy_"])
def test_direct_writes_are_seen(tokenizer, which, how):
    classifier = adapted_classifier(tokenizer)
    p = _tensor(classifier, which)
    new = torch.randn(p.shape, generator=torch.Generator().manual_seed(5))

    def write() -> None:
        if how == "p.data.copy_":
            p.data.copy_(new)
        elif how == "p.data -= ...":
            p.data -= 0.1 * new
        else:
            with torch.no_grad():
                p.copy_(new)

    assert_fresh_after(classifier, tokenizer, write)


def test_load_state_dict_and_set_peft_model_state_dict_are_seen(tokenizer):
    classifier = adapted_classifier(tokenizer)
    other = get_peft_model(clip_for_tokenizer(), MuDPTConfig(depth=3))
    randomize_adapter(other, seed=7)
    state = {k: v for k, v in other.state_dict().items() if "mudpt_" in k}
    assert_fresh_after(classifier, tokenizer, lambda: classifier.model.load_state_dict(state, strict=False))
    randomize_adapter(other, seed=8)
    peft_state = get_peft_model_state_dict(other)
    assert_fresh_after(classifier, tokenizer, lambda: set_peft_model_state_dict(classifier.model, peft_state))


def test_set_adapter_load_adapter_and_disable_adapter_are_seen(tokenizer, tmp_path):
    classifier = adapted_classifier(tokenizer)
    model = classifier.model
    model.add_adapter("other", MuDPTConfig(depth=2))
    randomize_adapter(model, "other", seed=3)
    model.eval()
    assert_fresh_after(classifier, tokenizer, lambda: model.set_adapter("other"))

    saved = get_peft_model(clip_for_tokenizer(), MuDPTConfig(depth=3))
    randomize_adapter(saved, seed=9)
    saved.save_pretrained(tmp_path)
    model.set_adapter("default")

    def load_and_use() -> None:
        model.load_adapter(tmp_path, adapter_name="loaded")
        model.set_adapter("loaded")

    assert_fresh_after(classifier, tokenizer, load_and_use)
    randomize_adapter(saved, seed=10)
    saved.save_pretrained(tmp_path)
    # into the name in use: peft overwrites the tensors of the existing adapter
    assert_fresh_after(classifier, tokenizer, lambda: model.load_adapter(tmp_path, adapter_name="loaded"))

    adapted = logits(classifier)
    with model.disable_adapter():
        plain = logits(classifier)
        assert not torch.equal(plain, adapted) and torch.equal(plain, fresh_logits(classifier, tokenizer))
    assert torch.equal(logits(classifier), adapted)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_dtype_changes_are_seen(tokenizer, dtype):
    classifier = adapted_classifier(tokenizer)
    assert_fresh_after(classifier, tokenizer, lambda: classifier.to(dtype), dtype=dtype)
    assert classifier.encode_classes().dtype == dtype


def test_peft_model_from_pretrained_under_inference_mode(tokenizer, tmp_path):
    """Inference tensors have no version counter: their values are compared instead."""
    saved = get_peft_model(clip_for_tokenizer(), MuDPTConfig(depth=3))
    randomize_adapter(saved)
    saved.save_pretrained(tmp_path)
    with torch.inference_mode():
        model = PeftModel.from_pretrained(clip_for_tokenizer(), tmp_path)
        classifier = PromptClassifier(model, tokenizer, CLASSES).eval()
        before = classifier(pixel_values=pixels()).logits
        prompts = model.base_model.model.text_model.mudpt_prompts["default"]
        prompts.add_(1.0)
        after = classifier(pixel_values=pixels()).logits
    assert not torch.equal(after, before)
    with torch.inference_mode():
        fresh = PromptClassifier(copy.deepcopy(model), tokenizer, CLASSES).eval()
        assert torch.equal(after, fresh(pixel_values=pixels()).logits)


def test_the_cache_is_reused_while_nothing_changes(tokenizer):
    classifier = adapted_classifier(tokenizer)
    calls = []
    classifier.model.base_model.model.text_model.register_forward_hook(lambda *args: calls.append(1))
    first = logits(classifier)
    assert len(calls) == 1
    for _ in range(3):
        assert torch.equal(logits(classifier), first)
    with torch.enable_grad():
        classifier(pixel_values=pixels())
    assert len(calls) == 1  # eval mode: the class features are reused, with or without autograd
    classifier.clear_cache()
    assert torch.equal(logits(classifier), first) and len(calls) == 2
    classifier.train()
    with torch.no_grad():
        classifier(pixel_values=pixels())
    assert len(calls) == 3  # training mode: encoded on every call


def test_documented_limit_a_data_write_into_a_frozen_base_weight(tokenizer):
    """The write no key sees (documented): `.data` into a frozen weight. `clear_cache()` is the remedy."""
    classifier = adapted_classifier(tokenizer)
    before = logits(classifier)
    projection = classifier.model.base_model.model.text_projection.weight
    assert not projection.requires_grad
    projection.data.add_(torch.randn(projection.shape, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(logits(classifier), before)  # unseen: stale until
    classifier.clear_cache()
    after = logits(classifier)
    assert not torch.equal(after, before) and torch.equal(after, fresh_logits(classifier, tokenizer))


def test_copies_do_not_share_the_cache(tokenizer):
    classifier = adapted_classifier(tokenizer)
    first = logits(classifier)
    clone = copy.deepcopy(classifier)
    prompts = clone.model.base_model.model.text_model.mudpt_prompts["default"]
    with torch.no_grad():
        prompts.add_(torch.randn(prompts.shape, generator=torch.Generator().manual_seed(0)))
    assert not torch.equal(logits(clone), first)
    assert torch.equal(logits(classifier), first)


def test_a_fused_step_on_a_plain_models_own_weights_is_seen(tokenizer):
    """Full fine-tuning of an unwrapped CLIP: no adapter tensors to compare, the step count sees the fused write."""
    model = clip_for_tokenizer()
    classifier = PromptClassifier(model, tokenizer, CLASSES).eval()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    assert_fresh_after(classifier, tokenizer, lambda: step_with_random_gradients(optimizer, list(model.parameters())))


# --------------------------------------------------------------------------------------------------------------------
# end to end: the Trainer's own optimizer and evaluation loop


def test_trainer_with_default_arguments_reports_what_a_fresh_model_measures(tokenizer, tmp_path):
    """Default `TrainingArguments` (fused AdamW) with per-epoch evaluation: each epoch's reported loss and accuracy
    are exactly those of a fresh model loaded from that epoch's checkpoint."""
    train, test = color_dataset(24, seed=0), color_dataset(12, seed=1)
    args = TrainingArguments(
        output_dir=str(tmp_path), eval_strategy="epoch", save_strategy="epoch", num_train_epochs=3,
        learning_rate=1e-2, report_to=[], disable_tqdm=True, use_cpu=True,
    )  # fmt: skip
    assert args.optim == OptimizerNames.ADAMW_TORCH_FUSED
    processor = image_processor()
    trainer = PromptTuningTrainer(
        peft_model(), TRAINER_CLASSES, tokenizer, args, train, test, image_processor=processor
    )
    trainer.train()
    reported = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    assert len(reported) == 3
    assert len({entry["eval_loss"] for entry in reported}) == 3, "training must change what is evaluated"
    for entry in reported:
        checkpoint = tmp_path / f"checkpoint-{entry['step']}"
        fresh_model = PeftModel.from_pretrained(clip_for_tokenizer(), checkpoint)
        fresh = PromptTuningTrainer(
            fresh_model, TRAINER_CLASSES, tokenizer, args, eval_dataset=test, image_processor=processor
        )
        measured = fresh.evaluate()
        assert measured["eval_loss"] == entry["eval_loss"]
        assert measured["eval_accuracy"] == entry["eval_accuracy"]


def test_an_adapter_loaded_for_inference_is_keyed_by_versions(tokenizer, tmp_path):
    """Frozen adapter tensors (the default of `PeftModel.from_pretrained`): no value comparison, so no cost; every
    in-place write but one through `.data` bumps their version counters, and loads replace or copy them."""
    saved = get_peft_model(clip_for_tokenizer(), MuDPTConfig(depth=3))
    randomize_adapter(saved)
    saved.save_pretrained(tmp_path)
    model = PeftModel.from_pretrained(clip_for_tokenizer(), tmp_path)
    classifier = PromptClassifier(model, tokenizer, CLASSES).eval()
    assert not trainable(classifier) and classifier._value_checked() == []
    prompts = model.base_model.model.text_model.mudpt_prompts["default"]

    def write() -> None:
        with torch.no_grad():
            prompts.add_(torch.randn(prompts.shape, generator=torch.Generator().manual_seed(0)))

    assert_fresh_after(classifier, tokenizer, write)
    randomize_adapter(saved, seed=4)
    saved.save_pretrained(tmp_path)
    assert_fresh_after(classifier, tokenizer, lambda: model.load_adapter(tmp_path, adapter_name="default"))


def test_other_peft_adapters_are_value_checked_too(tokenizer):
    """A LoRA-adapted CLIP in a PromptClassifier: a `.data` write into a trainable LoRA weight is seen."""
    from peft import LoraConfig

    model = get_peft_model(clip_for_tokenizer(), LoraConfig(target_modules=["q_proj"], r=2, init_lora_weights=False))
    classifier = PromptClassifier(model, tokenizer, CLASSES).eval()
    lora_b = next(p for n, p in model.named_parameters() if "text_model" in n and "lora_B" in n)
    assert any(t is lora_b for t in classifier._value_checked())
    assert_fresh_after(classifier, tokenizer, lambda: lora_b.data.add_(1.0))


@pytest.mark.parametrize("one_reduction", [False, True])
def test_the_value_comparison_on_both_paths(one_reduction):
    """`_all_equal` per pair (CPU) and as one reduction (what a GPU runs, synchronising once): the same answers."""
    from mudpt_peft.classifier import _all_equal

    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 3, generator=generator), torch.randn(7, generator=generator)
    assert _all_equal([(a, a.clone()), (b, b.clone())], one_reduction)
    changed = b.clone()
    changed[3] = torch.nextafter(changed[3], changed[3] + 1)  # one ulp
    assert not _all_equal([(a, a.clone()), (b, changed)], one_reduction)
    nan = torch.tensor([float("nan")])
    assert not _all_equal([(nan, nan.clone())], one_reduction)  # NaN never equals: a miss, never a stale hit
    assert _all_equal([], one_reduction)
