"""Training objectives (`mudpt_peft.losses`): the default cross-entropy, a user's regulariser, KgCoOp and PromptSRC
against independent re-implementations of their official losses (frozen features from a separate frozen copy of the
base CLIP), Gaussian prompt aggregation over epochs, and its state across a resume."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import TrainerCallback

from mudpt_peft import MuDPTConfig
from mudpt_peft.evaluation import evaluate
from mudpt_peft.losses import (
    OBJECTIVES,
    GaussianPromptAggregation,
    KgCoOpObjective,
    LossInputs,
    PromptSRCObjective,
    TrainingObjective,
    gaussian_epoch_weights,
    resolve_objective,
)
from mudpt_peft.methods import METHODS, method_of
from mudpt_peft.templates import IMAGENET_80_TEMPLATES, PROMPTSRC_TEMPLATES
from mudpt_peft.trainer import OBJECTIVE_NAME, PromptTuningTrainer, default_training_arguments

from .helpers import COLOR_CLASSES as CLASSES
from .helpers import clip_for_tokenizer, color_dataset, frozen_copy, image_processor, randomize_adapter
from .official_reference import gpa_weights, kgcoop_loss, promptsrc_loss

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread avoids spinning on shared cores

#: Templates the tiny tokenizer spells (letters only) and that fit the tiny CLIP's 16 positions.
SHORT_TEMPLATES = ("a photo of a {}.", "a {}.", "itap of a {}.")


def _args(output_dir, **overrides):
    settings = dict(
        per_device_train_batch_size=2, learning_rate=0.05, report_to=[], disable_tqdm=True, save_strategy="no",
        dataloader_pin_memory=False, seed=3, use_cpu=True,
    )  # fmt: skip
    settings.update(overrides)
    return default_training_arguments("ivlp", str(output_dir), **settings)


def _setup(method: str, tokenizer, tmp_path, objective=None, callbacks=None, randomize=True, template=None, **args):
    """A randomised adapter of `method`'s preset (depth 2 where it has deep prompts, initialised from the tiny
    tokenizer), its trainer, and a frozen copy of the base model taken before it was adapted."""
    base = clip_for_tokenizer()
    pristine = frozen_copy(base)
    overrides = {} if method == "kgcoop" else {"depth": 2}
    config = MuDPTConfig.for_method(method, tokenizer_name_or_path=tokenizer.name_or_path, **overrides)
    torch.manual_seed(0)
    model = get_peft_model(base, config)
    if randomize:
        randomize_adapter(model, seed=1)
    trainer = PromptTuningTrainer(
        model, CLASSES, tokenizer, _args(tmp_path, **args), train_dataset=color_dataset(8),
        image_processor=image_processor(), objective=method if objective is None else objective, callbacks=callbacks,
        template=template or "a photo of a {}.",
    )  # fmt: skip
    return model, trainer, pristine


def _batch(trainer, size: int = 4) -> dict[str, torch.Tensor]:
    return trainer.data_collator([trainer.train_dataset[i] for i in range(size)])


def _prompted(model, trainer, batch):
    """Prompted logits, normalised class and image features from the tuner's own forward (in training mode), with the
    text encoded as the trainer's training forward encodes it (its shared text prefix, its chunks)."""
    with trainer.classifier.chunked_class_encoding():
        output = model(
            input_ids=trainer.classifier.class_input_ids,
            attention_mask=trainer.classifier.class_attention_mask,
            pixel_values=batch["pixel_values"],
        )
    return output.logits_per_image, output.text_embeds, output.image_embeds


def _frozen_text(pristine, tokenizer, template: str) -> torch.Tensor:
    tokens = tokenizer([template.format(name) for name in CLASSES], padding="longest", return_tensors="pt")
    output = pristine.get_text_features(**tokens)
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _frozen_image(pristine, pixel_values) -> torch.Tensor:
    output = pristine.get_image_features(pixel_values=pixel_values)
    return output if isinstance(output, torch.Tensor) else output.pooler_output


# ------------------------------------------------------------------------------------------------------------------
# the interface


def test_objectives_resolve_from_the_methods_table():
    assert type(resolve_objective(None)) is TrainingObjective
    assert type(resolve_objective("coop")) is type(resolve_objective("MuDPT")) is TrainingObjective
    kgcoop, promptsrc = resolve_objective("kgcoop"), resolve_objective("PromptSRC")
    assert isinstance(kgcoop, KgCoOpObjective) and kgcoop.weight == 8.0
    assert isinstance(promptsrc, PromptSRCObjective)
    assert (promptsrc.text_weight, promptsrc.image_weight) == (25.0, 10.0)
    assert (promptsrc.aggregation.mean, promptsrc.aggregation.std) == (15.0, 1.0)
    custom = KgCoOpObjective(weight=2.0)
    assert resolve_objective(custom) is custom
    assert {method.objective for method in METHODS.values()} <= set(OBJECTIVES)
    with pytest.raises(ValueError, match="Unknown method 'lora'"):
        resolve_objective("lora")
    with pytest.raises(ValueError, match="must be a TrainingObjective"):
        resolve_objective(3)
    with pytest.raises(ValueError, match="`weight` must be a finite number"):
        KgCoOpObjective(weight=float("nan"))
    with pytest.raises(ValueError, match="std > 0"):
        PromptSRCObjective(gpa_std=0.0)


def test_presets_and_recipes_are_the_official_ones(tokenizer):
    kgcoop, promptsrc = MuDPTConfig.for_method("kgcoop"), MuDPTConfig.for_method("promptsrc")
    assert (kgcoop.text_prompts, kgcoop.vision_prompts, kgcoop.depth, kgcoop.n_ctx, kgcoop.ctx_init) == (
        True, False, 1, 4, "a photo of a",
    )  # fmt: skip
    assert (promptsrc.fusion, promptsrc.depth, promptsrc.n_ctx, promptsrc.resolved_vision_n_ctx) == ("none", 9, 4, 4)
    assert promptsrc.ctx_init == "a photo of a"
    # the adapters are CoOp's and IVLP's: the model card names those
    assert (method_of(kgcoop), method_of(promptsrc)) == ("coop", "ivlp")
    args = default_training_arguments("kgcoop", "out")
    assert (args.learning_rate, args.num_train_epochs, args.per_device_train_batch_size) == (0.002, 100, 128)
    args = default_training_arguments("promptsrc", "out")
    assert (args.learning_rate, args.num_train_epochs, args.per_device_train_batch_size) == (0.0025, 20, 4)
    # "a photo of a" initialises the layer-0 text prompts from the token embeddings
    base = clip_for_tokenizer()
    config = MuDPTConfig.for_method("kgcoop", tokenizer_name_or_path=tokenizer.name_or_path)
    model = get_peft_model(base, config)
    ids = tokenizer("a photo of a")["input_ids"][1:-1]
    prompts = model.base_model.model.text_model.mudpt_prompts["default"]
    torch.testing.assert_close(prompts[0], base.text_model.embeddings.token_embedding.weight[ids], rtol=0, atol=0)


def test_promptsrc_templates_are_its_official_ensemble():
    """60 of CLIP's 80 ImageNet templates: "a photo of a {}." first, then the first 60 others in CLIP's order."""
    assert len(PROMPTSRC_TEMPLATES) == len(set(PROMPTSRC_TEMPLATES)) == 60
    assert PROMPTSRC_TEMPLATES[0] == "a photo of a {}." and set(PROMPTSRC_TEMPLATES) == set(IMAGENET_80_TEMPLATES[:60])
    assert PROMPTSRC_TEMPLATES[1:4] == ("a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.")


def test_a_user_regulariser_is_added_to_the_cross_entropy_and_trains(tokenizer, tmp_path):
    class PromptNormPenalty(TrainingObjective):
        def __init__(self, weight: float) -> None:
            self.weight, self.seen = weight, []

        def regularization(self, inputs: LossInputs) -> torch.Tensor:
            self.seen.append(inputs)
            prompts = [p for p in inputs.trainer.model.parameters() if p.requires_grad]
            return self.weight * sum(p.pow(2).sum() for p in prompts)

    objective = PromptNormPenalty(0.5)
    model, trainer, _ = _setup("ivlp", tokenizer, tmp_path, objective=objective, max_steps=2)
    batch = _batch(trainer)
    model.train()
    loss = trainer.compute_loss(model, batch)
    logits, text, image = _prompted(model, trainer, batch)
    prompts = [p for p in model.parameters() if p.requires_grad]
    expected = F.cross_entropy(logits, batch["labels"]) + 0.5 * sum(p.pow(2).sum() for p in prompts)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)  # fp32, the same kernels: rounding only
    seen = objective.seen[0]
    assert seen.trainer is trainer and torch.equal(seen.labels, batch["labels"])
    torch.testing.assert_close(seen.class_features, text, rtol=0, atol=0)
    torch.testing.assert_close(seen.image_features, image, rtol=0, atol=0)
    # evaluation losses are the cross-entropy alone
    model.eval()
    eval_loss = trainer.compute_loss(model, batch)
    assert len(objective.seen) == 1
    eval_logits = trainer.classifier(pixel_values=batch["pixel_values"]).logits
    torch.testing.assert_close(eval_loss, F.cross_entropy(eval_logits, batch["labels"]), rtol=1e-6, atol=1e-6)
    # a large penalty shrinks the prompts in training
    before = sum(p.detach().pow(2).sum() for p in prompts)
    trainer.train()
    assert sum(p.detach().pow(2).sum() for p in prompts) < before


def test_the_default_objective_is_the_label_smoothed_cross_entropy(tokenizer, tmp_path):
    model, trainer, _ = _setup("ivlp", tokenizer, tmp_path, objective=TrainingObjective(), label_smoothing_factor=0.1)
    batch = _batch(trainer)
    model.train()
    logits, _, _ = _prompted(model, trainer, batch)
    expected = F.cross_entropy(logits, batch["labels"], label_smoothing=0.1)
    torch.testing.assert_close(trainer.compute_loss(model, batch), expected, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------------------------------
# KgCoOp and PromptSRC: the official losses


def test_kgcoop_loss_is_the_official_one(tokenizer, tmp_path):
    model, trainer, pristine = _setup("kgcoop", tokenizer, tmp_path)
    batch = _batch(trainer)
    model.train()
    loss = trainer.compute_loss(model, batch)
    logits, text, _ = _prompted(model, trainer, batch)
    clip_text = _frozen_text(pristine, tokenizer, "a photo of a {}.")
    expected = kgcoop_loss(logits, batch["labels"], text, clip_text, weight=8.0)
    # fp32; the frozen features come from another module (the copy) through the same kernels: rounding only
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    regulariser = expected - F.cross_entropy(logits, batch["labels"])
    assert regulariser > 1e-3  # the randomised prompts moved the class features away from CLIP's
    # = W / 2 · mean ‖w − w^clip‖² (the paper's form, at half its λ)
    squared = (F.normalize(text, dim=-1) - F.normalize(clip_text, dim=-1)).pow(2).sum(-1).mean()
    torch.testing.assert_close(regulariser, 4.0 * squared, rtol=1e-5, atol=1e-6)
    # the loss reaches the prompts; the frozen features were computed once, with the adapter enabled again after
    loss.backward()
    assert model.base_model.model.text_model.mudpt_prompts["default"].grad.abs().sum() > 0
    assert trainer.objective._clip_features._cache is not None
    assert not model.base_model.model.text_model.disable_adapters


def test_kgcoop_starts_at_clip_with_the_official_class_prompt(tokenizer, tmp_path):
    """The official class prompt is `[ctx] {class}.` with the context initialised from "a photo of a": at the start the
    prompted class features are CLIP's on "a photo of a {}.", so the knowledge-guided term is 0. The trainer's
    template must then be `"{}."` (the learned prompts go before the template's words)."""
    model, trainer, _ = _setup("kgcoop", tokenizer, tmp_path, randomize=False, template="{}.")
    batch = _batch(trainer)
    model.train()
    logits, text, image = _prompted(model, trainer, batch)
    inputs = LossInputs(trainer, logits, batch["labels"], batch["pixel_values"], image, text)
    # fp32: the same tokens through the same kernels, the context rows copied from the token embeddings
    torch.testing.assert_close(trainer.objective.regularization(inputs), torch.tensor(0.0), rtol=0, atol=1e-6)
    _, wrong, _ = _setup("kgcoop", tokenizer, tmp_path / "wrong", randomize=False)  # "a photo of a a photo of a ..."
    model, batch = wrong.model, _batch(wrong)
    logits, text, image = _prompted(model, wrong, batch)
    inputs = LossInputs(wrong, logits, batch["labels"], batch["pixel_values"], image, text)
    assert wrong.objective.regularization(inputs) > 1e-4


@pytest.mark.parametrize("templates", [SHORT_TEMPLATES[:1], SHORT_TEMPLATES])
def test_promptsrc_loss_is_the_official_one(tokenizer, tmp_path, templates):
    objective = PromptSRCObjective(templates=templates)
    model, trainer, pristine = _setup("promptsrc", tokenizer, tmp_path, objective=objective)
    batch = _batch(trainer)
    model.train()
    loss = trainer.compute_loss(model, batch)
    logits, text, image = _prompted(model, trainer, batch)
    frozen_text = torch.stack([_frozen_text(pristine, tokenizer, template) for template in templates])
    frozen_image = _frozen_image(pristine, batch["pixel_values"])
    expected = promptsrc_loss(
        logits, batch["labels"], text, image, frozen_text, frozen_image, pristine.logit_scale, 25.0, 10.0
    )
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)  # fp32: rounding only (see above)
    assert expected - F.cross_entropy(logits, batch["labels"]) > 1e-3
    loss.backward()
    clip = model.base_model.model
    for tower in (clip.text_model, clip.vision_model):
        assert tower.mudpt_prompts["default"].grad.abs().sum() > 0
        assert not tower.disable_adapters


# ------------------------------------------------------------------------------------------------------------------
# Gaussian prompt aggregation


def test_gaussian_epoch_weights_are_the_official_normalised_density():
    for epochs, mean, std in [(20, 15, 1), (50, 30, 30), (50, 45, 5), (3, 2, 1)]:
        torch.testing.assert_close(
            torch.from_numpy(gaussian_epoch_weights(epochs, mean, std)),
            torch.tensor(gpa_weights(epochs, mean, std), dtype=torch.float64),
            rtol=1e-12, atol=1e-15,
        )  # fmt: skip
    far = gaussian_epoch_weights(5, 15, 0.1)  # the density underflows to 0 at every epoch: the last epoch takes all
    assert far[-1] == 1.0 and far.sum() == 1.0
    with pytest.raises(ValueError, match="`epochs` must be an integer"):
        gaussian_epoch_weights(0, 1, 1)


class _RecordPrompts(TrainerCallback):
    """The trainable tensors at each epoch end (added before the aggregation, so it sees them first)."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, torch.Tensor]] = []

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        self.epochs.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})


@pytest.mark.parametrize("accumulation", [1, 3])  # 4 batches per epoch: 4 steps, or 2 (the second of 1 batch)
def test_promptsrc_aggregates_the_prompts_of_every_epoch(tokenizer, tmp_path, accumulation):
    """3 epochs; mean 2, std 1: weights 0.212, 0.576, 0.212. The final adapter (what is saved) is the weighted sum of
    the prompts at the three epoch ends."""
    record = _RecordPrompts()
    objective = PromptSRCObjective(gpa_mean=2.0, gpa_std=1.0, templates=SHORT_TEMPLATES)
    model, trainer, _ = _setup(
        "promptsrc", tokenizer, tmp_path, objective=objective, num_train_epochs=3, callbacks=[record],
        gradient_accumulation_steps=accumulation,
    )  # fmt: skip
    trainer.train()
    assert trainer.state.global_step == (12 if accumulation == 1 else 6)
    assert len(record.epochs) == 3 and objective.aggregation.epochs == 3
    weights = gpa_weights(3, 2.0, 1.0)
    final = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    assert final.keys() == record.epochs[0].keys() and len(final) == 2  # text and vision prompts
    for name, value in final.items():
        expected = sum(w * epoch[name] for w, epoch in zip(weights, record.epochs, strict=True))
        torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-7)  # fp32 sums in another order
        assert not torch.equal(value, record.epochs[-1][name])  # not the last epoch's prompts
    trainer.save_model(str(tmp_path / "saved"))
    saved = load_file(tmp_path / "saved" / "adapter_model.safetensors")
    assert any(torch.equal(tensor, final[name]) for tensor in saved.values() for name in final)


def test_aggregation_keeps_the_last_prompts_when_training_stops_early(tokenizer, tmp_path):
    objective = PromptSRCObjective(gpa_mean=2.0, gpa_std=1.0, templates=SHORT_TEMPLATES)
    record = _RecordPrompts()
    model, trainer, _ = _setup(
        "promptsrc", tokenizer, tmp_path, objective=objective, num_train_epochs=3, callbacks=[record]
    )
    trainer.add_callback(_StopAfterEpoch(1))
    with pytest.warns(UserWarning, match="covers 1 complete epochs of 3"):
        trainer.train()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert torch.equal(p.detach(), record.epochs[-1][name])


class _StopAfterEpoch(TrainerCallback):
    def __init__(self, epochs: int) -> None:
        self.stop_at = epochs

    def on_epoch_end(self, args, state, control, **kwargs):
        if state.epoch >= self.stop_at:
            control.should_training_stop = True
        return control


@pytest.mark.parametrize("resume_step", [6, 8])  # mid-epoch 2; the end of epoch 2
def test_resuming_promptsrc_gives_the_uninterrupted_aggregate(tokenizer, tmp_path, resume_step):
    """The aggregation's running sum is saved in each checkpoint and restored on resume: the aggregate after
    resuming is bit-identical to an uninterrupted run's."""

    def run(output_dir, checkpoint=None):
        objective = PromptSRCObjective(gpa_mean=2.0, gpa_std=1.0, templates=SHORT_TEMPLATES)
        model, trainer, _ = _setup(
            "promptsrc", tokenizer, output_dir, objective=objective, num_train_epochs=3, save_strategy="steps",
            save_steps=2,
        )  # fmt: skip
        trainer.train(resume_from_checkpoint=checkpoint)
        return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    expected = run(tmp_path / "full")
    checkpoint = tmp_path / "full" / f"checkpoint-{resume_step}"
    state = load_file(checkpoint / OBJECTIVE_NAME)
    assert int(state["gpa.epochs"][0]) == (1 if resume_step == 6 else 2)
    result = run(tmp_path / "resumed", str(checkpoint))
    assert result.keys() == expected.keys()
    for name in expected:
        assert torch.equal(result[name], expected[name]), name


def test_objective_state_is_checked_on_load():
    objective = PromptSRCObjective()
    with pytest.raises(ValueError, match="Not a PromptSRC objective state"):
        objective.load_state_dict({"other": torch.zeros(1)})
    with pytest.raises(ValueError, match="keeps no state"):
        TrainingObjective().load_state_dict({"gpa.epochs": torch.zeros(1)})
    aggregation = GaussianPromptAggregation(15, 1)
    aggregation.total, aggregation.epochs = {"p": torch.ones(2)}, 3
    objective.aggregation = aggregation
    again = PromptSRCObjective()
    again.load_state_dict(objective.state_dict())
    assert again.aggregation.epochs == 3 and torch.equal(again.aggregation.total["p"], torch.ones(2))


@pytest.mark.parametrize("method", ["kgcoop", "promptsrc"])
def test_regularised_methods_train_save_load_and_evaluate(tokenizer, tmp_path, method):
    """Trained with their objective, saved, loaded onto a fresh base model: the same adapter and the same accuracy."""
    objective = (
        PromptSRCObjective(gpa_mean=1.0, gpa_std=1.0, templates=SHORT_TEMPLATES) if method == "promptsrc" else None
    )
    model, trainer, _ = _setup(method, tokenizer, tmp_path, objective=objective, num_train_epochs=2)
    trainer.train()
    trainer.save_model(str(tmp_path / "saved"))
    data = color_dataset(12, seed=5)
    accuracy = evaluate(model, data, CLASSES, tokenizer, image_processor())["accuracy"]
    assert trainer.evaluate(data)["eval_accuracy"] == accuracy
    loaded = PeftModel.from_pretrained(clip_for_tokenizer(), str(tmp_path / "saved"))
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    for name, parameter in loaded.named_parameters():
        if "mudpt_" in name:
            assert torch.equal(parameter, trained[name]), name
    assert evaluate(loaded, data, CLASSES, tokenizer, image_processor())["accuracy"] == accuracy
