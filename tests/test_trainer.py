"""`PromptTuningTrainer`: training through the HF Trainer, accuracy in `evaluate()`, adapter-only checkpoints, exact
resumption, per-method default arguments, and clear errors for bad input before any training."""

from __future__ import annotations

import json
import os

import datasets
import pytest
import torch
from peft import PeftModel, get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import CLIPImageProcessor, TrainingArguments

from mudpt_peft import PromptClassifier
from mudpt_peft import shared_prefix as shared_prefix_module
from mudpt_peft.data import ImageClassificationCollator
from mudpt_peft.evaluation import evaluate
from mudpt_peft.trainer import TRAINING_RECIPES, PromptTuningTrainer, default_training_arguments

from .helpers import COLOR_CLASSES as CLASSES
from .helpers import TOKENIZER_EOS_ID, color_dataset, image_processor, make_clip, peft_model

# the models are tiny: with several threads on shared cores, thread spinning costs 20x the compute
pytestmark = pytest.mark.usefixtures("one_thread")


def quiet_args(output_dir, **overrides) -> TrainingArguments:
    settings = dict(report_to=[], disable_tqdm=True, dataloader_num_workers=0, dataloader_pin_memory=False)
    settings.update(save_strategy="no", seed=0)
    settings.update(overrides)
    return TrainingArguments(output_dir=str(output_dir), **settings)


def adapter_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


def test_training_learns_reports_accuracy_and_saves_the_adapter_only(tokenizer, tmp_path):
    # Plain TrainingArguments (remove_unused_columns=True, label_names=None) and non-default column names.
    train = color_dataset(24, seed=0, image_column="img", label_column="target")
    test = color_dataset(12, seed=1, image_column="img", label_column="target")
    model = peft_model()
    base_before = {k: v.clone() for k, v in model.get_base_model().state_dict().items() if "mudpt_" not in k}
    adapter_before = adapter_state(model)
    args = quiet_args(
        tmp_path / "run",
        num_train_epochs=5,
        per_device_train_batch_size=6,
        learning_rate=0.02,
        optim="adamw_torch",
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        save_strategy="epoch",
    )
    assert args.remove_unused_columns and args.label_names is None
    trainer = PromptTuningTrainer(
        model, CLASSES, tokenizer, args=args, train_dataset=train, eval_dataset=test,
        image_processor=image_processor(), image_column="img", label_column="target",
    )  # fmt: skip
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()

    assert {"eval_accuracy", "eval_top5_accuracy", "eval_loss"} <= after.keys()
    # it learns the colours (measured: loss 1.79 -> 1.68, accuracy 0% -> 42% on held-out images)
    assert after["eval_loss"] < before["eval_loss"] - 0.05
    assert after["eval_accuracy"] >= before["eval_accuracy"] + 25
    # the reported accuracy is the classifier's, as computed independently by `evaluate`
    columns = dict(image_column="img", label_column="target")
    independent = evaluate(model, test, CLASSES, tokenizer, image_processor(), **columns)
    assert after["eval_accuracy"] == pytest.approx(independent["accuracy"])
    assert after["eval_top5_accuracy"] == pytest.approx(independent["top5_accuracy"])

    # only the adapter moved
    for key, value in model.get_base_model().state_dict().items():
        if "mudpt_" not in key:
            assert torch.equal(value, base_before[key]), key
    assert any(not torch.equal(v, adapter_before[k]) for k, v in adapter_state(model).items())

    # adapter-only checkpoints, one per epoch, and the final save
    trainer.save_model(str(tmp_path / "final"))
    checkpoints = sorted(p for p in os.listdir(tmp_path / "run") if p.startswith("checkpoint-"))
    assert checkpoints == ["checkpoint-12", "checkpoint-16", "checkpoint-20", "checkpoint-4", "checkpoint-8"]
    for directory in [tmp_path / "run" / c for c in checkpoints] + [tmp_path / "final"]:
        files = set(os.listdir(directory))
        assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer_config.json"} <= files
        assert not files & {"model.safetensors", "pytorch_model.bin", "model.safetensors.index.json"}
    saved = load_file(tmp_path / "final" / "adapter_model.safetensors")
    assert saved and all("mudpt_" in key for key in saved)
    # the model card of the save lists the trainer's evaluation (4 shots per class, seed 0: recorded, the earlier
    # evaluation before training replaced) and the one of mudpt_peft.evaluate (no shots or seed given)
    card = (tmp_path / "final" / "README.md").read_text()
    assert f"| unnamed | – | 4 | 0 | {after['eval_accuracy']:.2f} | {after['eval_top5_accuracy']:.2f} |" in card
    assert f"| unnamed | – | – | – | {independent['accuracy']:.2f} |" in card
    assert card.count("| unnamed |") == 2
    assert json.loads((tmp_path / "final" / "adapter_config.json").read_text())["peft_type"] == "MUDPT"

    # the saved adapter reproduces the trained classifier
    reloaded = PeftModel.from_pretrained(make_clip(eos_token_id=TOKENIZER_EOS_ID), tmp_path / "final")
    again = evaluate(reloaded, test, CLASSES, tokenizer, image_processor(), **columns)
    assert again["accuracy"] == independent["accuracy"]

    # every save is a ready classifier: class names in label order, the template, the processor files beside it
    for directory in [tmp_path / "run" / c for c in checkpoints] + [tmp_path / "final"]:
        assert {"prompt_classifier.json", "preprocessor_config.json"} <= set(os.listdir(directory))
    info = json.loads((tmp_path / "final" / "prompt_classifier.json").read_text())
    assert info["class_names"] == CLASSES and info["template"] == "a photo of a {}."
    assert "## Classifier" in card and "`prompt_classifier.json` holds the 6 class names" in card
    assert 'pip install "mudpt-peft @ git+' in card and "pip install mudpt-peft\n" not in card
    classifier = PromptClassifier.from_pretrained(make_clip(eos_token_id=TOKENIZER_EOS_ID), tmp_path / "final")
    assert classifier.class_names == CLASSES and classifier.image_processor is not None  # both read from the folder
    images = [test[i]["img"] for i in range(len(test))]
    pixel_values = image_processor()(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = trainer.classifier.eval()(pixel_values=pixel_values).logits
        torch.testing.assert_close(classifier(pixel_values=pixel_values).logits, expected, rtol=0, atol=0)
    assert classifier.predict(images) == [CLASSES[i] for i in expected.argmax(-1).tolist()]


def test_training_step_matches_the_classifier_loss(tokenizer, tmp_path):
    """The training loss (one forward of the wrapped model) is the PromptClassifier's cross-entropy."""
    data = color_dataset(6)
    model = peft_model()
    trainer = PromptTuningTrainer(
        model, CLASSES, tokenizer, args=quiet_args(tmp_path), train_dataset=data, image_processor=image_processor()
    )
    batch = trainer.data_collator([data[i] for i in range(6)])
    model.train()
    loss, output = trainer.compute_loss(model, batch, return_outputs=True)
    expected = PromptClassifier(model, tokenizer, CLASSES).train()(**batch)
    torch.testing.assert_close(loss, expected.loss)
    torch.testing.assert_close(output.logits, expected.logits)
    loss.backward()
    assert model.base_model.model.text_model.mudpt_prompts["default"].grad.abs().sum() > 0
    # the arguments' label smoothing applies
    trainer.args.label_smoothing_factor = 0.1
    smoothed = trainer.compute_loss(model, batch)
    expected_smoothed = torch.nn.functional.cross_entropy(expected.logits, batch["labels"], label_smoothing=0.1)
    torch.testing.assert_close(smoothed, expected_smoothed)


def test_evaluation_encodes_the_class_prompts_once(tokenizer, tmp_path):
    data = color_dataset(12)
    model = peft_model()
    args = quiet_args(tmp_path, per_device_eval_batch_size=4)  # 3 eval batches
    trainer = PromptTuningTrainer(
        model, CLASSES, tokenizer, args=args, eval_dataset=data, image_processor=image_processor()
    )
    calls = []
    original = model.get_text_features
    model.get_text_features = lambda *a, **k: calls.append(1) or original(*a, **k)
    first = trainer.evaluate()
    assert len(calls) == 1  # cached across the batches of an evaluation
    second = trainer.evaluate()
    assert len(calls) == 2  # encoded afresh at the start of each evaluation, from the weights of that moment
    assert first["eval_accuracy"] == second["eval_accuracy"] and first["eval_loss"] == second["eval_loss"]
    assert "eval_top5_accuracy" in first
    # fewer than 5 classes: no top-5
    small = color_dataset(8, classes=4)
    trainer = PromptTuningTrainer(
        peft_model(), CLASSES[:4], tokenizer, args=args, eval_dataset=small, image_processor=image_processor()
    )
    metrics = trainer.evaluate()
    assert "eval_accuracy" in metrics and "eval_top5_accuracy" not in metrics


def test_augmentation_is_for_training_only(tokenizer, tmp_path):
    data = color_dataset(6)
    trainer = PromptTuningTrainer(
        peft_model(), CLASSES, tokenizer, args=quiet_args(tmp_path), train_dataset=data, eval_dataset=data,
        image_processor=image_processor(), augment=True,
    )  # fmt: skip
    assert trainer.data_collator.augment and not trainer.eval_data_collator.augment
    assert trainer.data_collator.image_size == 16  # from the model's vision_config
    train_batch = next(iter(trainer.get_train_dataloader()))
    eval_batch = next(iter(trainer.get_eval_dataloader()))
    plain = image_processor()(images=[data[i]["image"] for i in range(len(eval_batch["labels"]))], return_tensors="pt")
    torch.testing.assert_close(eval_batch["pixel_values"], plain["pixel_values"])
    assert train_batch["pixel_values"].shape[1:] == (3, 16, 16)


def test_a_processor_supplies_tokenizer_and_image_processor_and_is_saved(tokenizer, tmp_path):
    from transformers import CLIPProcessor

    processor = CLIPProcessor(image_processor=image_processor(), tokenizer=tokenizer)
    data = color_dataset(6)
    args = quiet_args(tmp_path, max_steps=1, per_device_train_batch_size=6)
    trainer = PromptTuningTrainer(peft_model(), CLASSES, processor=processor, args=args, train_dataset=data)
    assert trainer.tokenizer is tokenizer and trainer.image_processor is processor.image_processor
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    reloaded = CLIPProcessor.from_pretrained(tmp_path / "final")
    assert reloaded.tokenizer("a photo of a cat")["input_ids"] == tokenizer("a photo of a cat")["input_ids"]
    assert "model.safetensors" not in os.listdir(tmp_path / "final")


def test_another_active_adapter_is_saved_as_a_classifier_in_its_subfolder(tokenizer, tmp_path):
    """With the active adapter `other` (peft saves it in `other/`), `prompt_classifier.json` goes beside it, so that
    `PromptClassifier.from_pretrained(..., subfolder="other")` restores the trained classifier; the card lists both."""
    from mudpt_peft import MuDPTConfig

    model = peft_model()
    model.add_adapter("other", MuDPTConfig(depth=2, n_ctx=3))
    model.set_adapter("other")
    data = color_dataset(6)
    args = quiet_args(tmp_path, max_steps=1, per_device_train_batch_size=6, learning_rate=0.05, optim="adamw_torch")
    trainer = PromptTuningTrainer(
        model, CLASSES, tokenizer, args=args, train_dataset=data, image_processor=image_processor(), template="{}"
    )
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    assert not (tmp_path / "final" / "prompt_classifier.json").exists()
    info = json.loads((tmp_path / "final" / "other" / "prompt_classifier.json").read_text())
    assert info["class_names"] == CLASSES and info["template"] == "{}"
    card = (tmp_path / "final" / "README.md").read_text()
    assert "`default`" in card and "`other`" in card
    base = make_clip(eos_token_id=TOKENIZER_EOS_ID)
    classifier = PromptClassifier.from_pretrained(base, tmp_path / "final", tokenizer, subfolder="other")
    pixel_values = trainer.data_collator([data[i] for i in range(6)])["pixel_values"]
    with torch.no_grad():
        expected = trainer.classifier.eval()(pixel_values=pixel_values).logits
        torch.testing.assert_close(classifier(pixel_values=pixel_values).logits, expected, rtol=0, atol=0)


def test_training_on_a_dataset_already_mapped_to_pixel_values(tokenizer, tmp_path):
    """`dataset.map` to `pixel_values` (no image column left): the default collator takes the rows as they are, and
    the trainer's loss equals the one of the raw images."""
    raw = color_dataset(6)
    processor = image_processor()
    mapped = raw.map(
        lambda batch: {"pixel_values": processor(images=batch["image"], return_tensors="np")["pixel_values"]},
        batched=True,
        remove_columns=["image"],
    )
    losses = []
    for data in (raw, mapped):
        args = quiet_args(tmp_path / str(len(losses)), max_steps=1, per_device_train_batch_size=6)
        trainer = PromptTuningTrainer(
            peft_model(), CLASSES, tokenizer, args=args, train_dataset=data, eval_dataset=data,
            image_processor=processor,
        )  # fmt: skip
        losses.append(trainer.evaluate()["eval_loss"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)


def _resume_args(output_dir, steps: int, **overrides) -> TrainingArguments:
    settings = dict(
        max_steps=steps,
        per_device_train_batch_size=2,
        learning_rate=0.05,
        warmup_steps=1,
        save_strategy="steps",
        save_steps=2,
        report_to=[],
        disable_tqdm=True,
        dataloader_pin_memory=False,
        seed=3,
    )
    settings.update(overrides)
    return default_training_arguments("mudpt", str(output_dir), **settings)


@pytest.mark.parametrize(
    ("augment", "resume_step"),
    [(False, 2), (True, 4)],  # mid-epoch (4 steps per epoch); an epoch boundary with augmentation
)
def test_resuming_gives_the_uninterrupted_result(tokenizer, tmp_path, augment, resume_step):
    """SGD with momentum, cosine schedule with warm-up, shuffled data: resuming reloads adapter, optimizer, scheduler
    and RNG states, so the final adapter is bit-identical to an uninterrupted run."""
    data = color_dataset(8)

    def trainer(output_dir):
        return PromptTuningTrainer(
            peft_model(), CLASSES, tokenizer, args=_resume_args(output_dir, 6), train_dataset=data,
            image_processor=image_processor(), augment=augment,
        )  # fmt: skip

    full = trainer(tmp_path / "full")
    full.train()
    expected = adapter_state(full.model)
    checkpoint = tmp_path / "full" / f"checkpoint-{resume_step}"
    at_checkpoint = load_file(checkpoint / "adapter_model.safetensors")
    assert any(not torch.equal(at_checkpoint[k], v) for k, v in expected.items())  # training went on after it

    resumed = trainer(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 6
    result = adapter_state(resumed.model)
    assert result.keys() == expected.keys()
    for key in expected:
        assert torch.equal(result[key], expected[key]), key


def test_default_training_arguments(tmp_path):
    args = default_training_arguments("MuDPT", str(tmp_path))
    assert (args.learning_rate, args.num_train_epochs, args.per_device_train_batch_size) == (0.0025, 10, 4)
    assert args.optim.value == "sgd" and args.optim_args == "momentum=0.9" and args.weight_decay == 5e-4
    assert args.lr_scheduler_type.value == "cosine" and args.warmup_steps == pytest.approx(0.1)  # 1 of 10 epochs
    assert args.max_grad_norm == 0.0
    maple = default_training_arguments("maple", str(tmp_path))
    assert (maple.learning_rate, maple.num_train_epochs, maple.per_device_train_batch_size) == (0.0035, 5, 4)
    assert default_training_arguments("ivlp", str(tmp_path)).learning_rate == 0.0035
    vpt = default_training_arguments("vpt", str(tmp_path))
    assert (vpt.learning_rate, vpt.num_train_epochs, vpt.per_device_train_batch_size) == (0.0025, 5, 4)
    coop = default_training_arguments("coop", str(tmp_path))
    assert (coop.learning_rate, coop.num_train_epochs, coop.per_device_train_batch_size) == (0.002, 200, 32)
    assert coop.warmup_steps == pytest.approx(1 / 200)
    assert [default_training_arguments("coop", str(tmp_path), shots=k).num_train_epochs for k in (1, 2, 4, 8, 16)] == [
        50, 100, 100, 200, 200,
    ]  # fmt: skip
    methods = {"coop", "vpt", "ivlp", "maple", "mudpt", "mudpt-linear", "mudpt-linear-v1", "cross-attention", "cocoop"}
    assert set(TRAINING_RECIPES) == methods | {"kgcoop", "promptsrc"}
    custom = default_training_arguments("mudpt", str(tmp_path), num_train_epochs=4, optim="adamw_torch", report_to=[])
    assert custom.num_train_epochs == 4 and custom.warmup_steps == pytest.approx(0.25)
    assert custom.optim.value == "adamw_torch"
    assert default_training_arguments("mudpt", str(tmp_path), num_train_epochs=1).warmup_steps == 0
    with pytest.raises(ValueError, match="Unknown method 'lora'; choose one of coop"):
        default_training_arguments("lora", str(tmp_path))
    with pytest.raises(ValueError, match="`shots` must be an integer >= 1"):
        default_training_arguments("coop", str(tmp_path), shots=0)


def test_bad_input_is_refused_before_training(tokenizer, tmp_path):
    data = color_dataset(6)
    args = quiet_args(tmp_path)
    kwargs = dict(args=args, image_processor=image_processor())

    with pytest.raises(ValueError, match="non-empty list of class names"):
        PromptTuningTrainer(peft_model(), [], tokenizer, train_dataset=data, **kwargs)
    with pytest.raises(ValueError, match=r"must be a PeftModel \(got CLIPModel\).*get_peft_model"):
        PromptTuningTrainer(make_clip(eos_token_id=TOKENIZER_EOS_ID), CLASSES, tokenizer, **kwargs)
    with pytest.raises(ValueError, match="tokenizer"):
        PromptTuningTrainer(peft_model(), CLASSES, None, **kwargs)
    with pytest.raises(ValueError, match="`template` .a photo. has no `{}` placeholder"):
        PromptTuningTrainer(peft_model(), CLASSES, tokenizer, template="a photo", **kwargs)
    with pytest.raises(ValueError, match="`compute_loss_func` is not supported"):
        PromptTuningTrainer(peft_model(), CLASSES, tokenizer, compute_loss_func=lambda *a, **k: 0, **kwargs)
    # a label outside the class list
    with pytest.raises(ValueError, match=r"train_dataset: .*labels \[5\] outside the class list \(valid: 0\.\.4"):
        plain_labels = data.cast_column("label", datasets.Value("int64"))
        PromptTuningTrainer(peft_model(), CLASSES[:5], tokenizer, train_dataset=plain_labels, **kwargs)
    # a ClassLabel with a different number of classes
    with pytest.raises(ValueError, match=r"feature has 6 classes \(cat, dog, zebra, photo, of, \.\.\.\) but 5 class"):
        PromptTuningTrainer(peft_model(), CLASSES[:5], tokenizer, train_dataset=data, **kwargs)
    # no label column: the available columns are named
    renamed = data.rename_column("label", "target")
    with pytest.raises(ValueError, match=r"no label column 'label'; its columns are \['image', 'target'\]. Pass"):
        PromptTuningTrainer(peft_model(), CLASSES, tokenizer, train_dataset=renamed, **kwargs)
    with pytest.raises(ValueError, match=r"eval_dataset\['other'\]: .*no image column 'image'"):
        PromptTuningTrainer(
            peft_model(), CLASSES, tokenizer, eval_dataset={"other": data.rename_column("image", "pic")}, **kwargs
        )
    # images of the wrong size for the model (16 px, no position interpolation)
    big = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    with pytest.raises(ValueError, match=r"produces \(32, 32\) images but the model expects \(16, 16\)"):
        PromptTuningTrainer(peft_model(), CLASSES, tokenizer, args=args, train_dataset=data, image_processor=big)
    # a custom collator of the wrong size is caught too
    collator = ImageClassificationCollator(big)
    with pytest.raises(ValueError, match="model expects"):
        PromptTuningTrainer(peft_model(), CLASSES, tokenizer, args=args, train_dataset=data, data_collator=collator)


def test_a_distributed_launch_without_distributed_arguments_is_refused(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="launched as one of 2.*use_cpu=True"):
        PromptTuningTrainer(
            peft_model(), CLASSES, tokenizer, args=quiet_args(tmp_path), image_processor=image_processor()
        )


def test_class_chunk_size_bounds_the_training_forward_at_equal_gradients(tokenizer, tmp_path):
    """`class_chunk_size`: the training forward (the wrapped model's own, as under DDP) encodes the class prompts in
    chunks, checkpointed; loss and gradients are those of one forward (fp32 rounding of the sums over the rows)."""
    data = color_dataset(6)
    model = peft_model()
    encoder = model.base_model.model.text_model.base_layer.encoder
    rows = []
    encoder.register_forward_hook(lambda module, args, output: rows.append(output.last_hidden_state.shape[0]))
    batch = None

    def step(**options):
        nonlocal batch
        trainer = PromptTuningTrainer(
            model, CLASSES, tokenizer, args=quiet_args(tmp_path), image_processor=image_processor(), **options
        )
        batch = batch or trainer.data_collator([data[i] for i in range(6)])
        model.train()
        model.zero_grad(set_to_none=True)
        rows.clear()
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}, list(rows)

    loss, expected, calls = step()
    assert calls == [6]  # 6 classes <= 256: one forward, nothing recomputed
    chunked_loss, grads, calls = step(class_chunk_size=4)
    assert calls == [4, 2, 4]  # two chunks, the first recomputed in the backward pass
    torch.testing.assert_close(chunked_loss, loss, rtol=1e-5, atol=0)
    for name, grad in expected.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-5 * grad.abs().max().item(), msg=name)
    with pytest.raises(ValueError, match="`class_chunk_size` must be an integer >= 1"):
        step(class_chunk_size=0)


def test_share_text_prefix_in_the_training_forward_at_equal_gradients(tokenizer, tmp_path, monkeypatch):
    """`share_text_prefix` (the default): the training forward encodes the class prompts' common prefix once; loss and
    gradients are those of the unshared forward (`share_text_prefix=False`), also with chunks."""
    data = color_dataset(6)
    model = peft_model()
    prefixes, original = [], shared_prefix_module.encode_prefix
    monkeypatch.setattr(shared_prefix_module, "encode_prefix", lambda *a: prefixes.append(a[1].shape) or original(*a))
    batch = None

    def step(**options):
        nonlocal batch
        trainer = PromptTuningTrainer(
            model, CLASSES, tokenizer, args=quiet_args(tmp_path), image_processor=image_processor(), **options
        )
        batch = batch or trainer.data_collator([data[i] for i in range(6)])
        model.train()
        model.zero_grad(set_to_none=True)
        prefixes.clear()
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return loss.detach(), grads, len(prefixes)

    loss, expected, calls = step(share_text_prefix=False)
    assert calls == 0
    for options in ({}, {"share_text_prefix": True, "class_chunk_size": 4}):
        shared_loss, grads, calls = step(**options)
        assert calls == 1  # one prefix for all class prompts (outside the chunks)
        torch.testing.assert_close(shared_loss, loss, rtol=1e-5, atol=0)
        for name, grad in expected.items():
            torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-5 * grad.abs().max().item(), msg=name)
    with pytest.raises(ValueError, match="`share_text_prefix` must be a bool"):
        step(share_text_prefix="yes")
