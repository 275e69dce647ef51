"""CLIP-LoRA as a peer baseline: peft's LoRA with the official settings and recipe, trained by `PromptTuningTrainer`
unchanged: the step it takes is CLIP-LoRA's (checked against a hand-written step), its schedule is the official
`CosineAnnealingLR`, and what it saves is the LoRA adapter only, reloading to the same logits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file

from mudpt_peft import PromptTuningTrainer
from mudpt_peft._utils import projected_features as features
from mudpt_peft.clip_lora import CLIP_LORA_TEMPLATE, clip_lora_config, clip_lora_training_arguments

from .helpers import COLOR_CLASSES as CLASSES
from .helpers import TOKENIZER_EOS_ID, color_dataset, image_processor, make_clip

pytestmark = pytest.mark.usefixtures("one_thread")

QUIET = dict(report_to=[], disable_tqdm=True, dataloader_num_workers=0, dataloader_pin_memory=False, use_cpu=True)


def lora_clip(**overrides) -> PeftModel:
    return get_peft_model(make_clip(eos_token_id=TOKENIZER_EOS_ID), clip_lora_config(**overrides))


def lora_weights(model: PeftModel) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if "lora_" in name}


def test_the_official_settings_on_both_towers():
    model = lora_clip()
    layers = {name: module for name, module in model.named_modules() if isinstance(module, LoraLayer)}
    towers = {"text_model": 4, "vision_model": 4}  # the tiny CLIP's layer counts
    expected = {
        f"base_model.model.{tower}.encoder.layers.{i}.self_attn.{projection}"
        for tower, count in towers.items()
        for i in range(count)
        for projection in ("q_proj", "k_proj", "v_proj")
    }
    assert set(layers) == expected  # q/k/v of every layer of both encoders, nothing else
    for layer in layers.values():
        assert layer.r["default"] == 2
        assert layer.scaling["default"] == pytest.approx(1 / math.sqrt(2))  # alpha / sqrt(r), the official scaling
        assert layer.lora_dropout["default"].p == 0.25
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)


def test_the_schedule_is_the_official_cosine_annealing(tmp_path, tokenizer):
    args = clip_lora_training_arguments(str(tmp_path), shots=1, **QUIET)
    assert args.max_steps == 500 and args.per_device_train_batch_size == 32 and args.max_grad_norm == 0.0
    trainer = PromptTuningTrainer(
        lora_clip(), CLASSES, tokenizer, args, train_dataset=color_dataset(6), image_processor=image_processor()
    )
    trainer.create_optimizer_and_scheduler(num_training_steps=args.max_steps)
    optimizer = trainer.optimizer
    assert isinstance(optimizer, torch.optim.AdamW)
    group = optimizer.param_groups[0]
    assert group["betas"] == (0.9, 0.999) and group["eps"] == 1e-8 and group["weight_decay"] == 0.01
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {
        id(p) for name, p in trainer.model.named_parameters() if "lora_" in name
    }  # every LoRA parameter, each with the weight decay (no bias or norm among them)
    assert all(g["weight_decay"] == 0.01 for g in optimizer.param_groups if g["params"])

    reference_optimizer = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=2e-4)
    reference = torch.optim.lr_scheduler.CosineAnnealingLR(reference_optimizer, T_max=500, eta_min=1e-6)
    ours, official = [], []
    for _ in range(500):
        ours.append(trainer.lr_scheduler.get_last_lr()[0])
        official.append(reference.get_last_lr()[0])
        optimizer.step()
        trainer.lr_scheduler.step()
        reference_optimizer.step()
        reference.step()
    # two float64 evaluations of the same closed form (torch's is recursive): rounding only
    torch.testing.assert_close(torch.tensor(ours, dtype=torch.float64), torch.tensor(official, dtype=torch.float64),
                               rtol=1e-9, atol=1e-15)  # fmt: skip
    assert official[0] == 2e-4 and official[-1] < 1.1e-6


def test_one_trainer_step_is_the_hand_written_clip_lora_step(tmp_path, tokenizer):
    """One step on the whole 6-image dataset (no dropout: the only randomness) equals the official step written out:
    logit scale x cosine of image and template-prompt features, cross-entropy, AdamW."""
    data = color_dataset(6)
    args = clip_lora_training_arguments(str(tmp_path), shots=1, max_steps=1, per_device_train_batch_size=6,
                                        save_strategy="no", **QUIET)  # fmt: skip
    torch.manual_seed(0)
    model = lora_clip(lora_dropout=0.0)
    with torch.no_grad():  # B starts at zero: give it values so that A gets gradients too
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    reference = lora_clip(lora_dropout=0.0)
    reference.load_state_dict(model.state_dict())
    trainer = PromptTuningTrainer(
        model, CLASSES, tokenizer, args, train_dataset=data, image_processor=image_processor(),
        template=CLIP_LORA_TEMPLATE,
    )  # fmt: skip
    batch = trainer.data_collator([data[i] for i in range(len(data))])
    trainer.train()

    prompts = tokenizer([CLIP_LORA_TEMPLATE.format(name) for name in CLASSES], padding=True, return_tensors="pt")
    reference.train()
    text = F.normalize(features(reference.get_text_features(**prompts)), dim=-1)
    image = F.normalize(features(reference.get_image_features(pixel_values=batch["pixel_values"])), dim=-1)
    logits = reference.base_model.model.logit_scale.exp() * image @ text.T
    loss = F.cross_entropy(logits, batch["labels"])
    parameters = [p for name, p in reference.named_parameters() if "lora_" in name]
    optimizer = torch.optim.AdamW(parameters, lr=2e-4, betas=(0.9, 0.999), weight_decay=1e-2)
    loss.backward()
    optimizer.step()

    trained, expected = lora_weights(model), lora_weights(reference)
    moved = max((trained[k] - lora_weights(lora_clip())[k]).abs().max().item() for k in trained if "lora_A" in k)
    assert moved > 1e-5
    for key in expected:  # the same float32 arithmetic, in a different batch order: rounding only
        torch.testing.assert_close(trained[key], expected[key], rtol=1e-5, atol=1e-7, msg=key)


def test_trains_saves_the_lora_adapter_only_and_reloads(tmp_path, tokenizer):
    data = color_dataset(12)
    args = clip_lora_training_arguments(str(tmp_path / "run"), shots=2, max_steps=4, per_device_train_batch_size=6,
                                        save_strategy="no", **QUIET)  # fmt: skip
    model = lora_clip()
    before = lora_weights(model)
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    trainer = PromptTuningTrainer(
        model, CLASSES, tokenizer, args, train_dataset=data, eval_dataset=data, image_processor=image_processor(),
        template=CLIP_LORA_TEMPLATE, augment=True,
    )  # fmt: skip
    trainer.train()
    metrics = trainer.evaluate()
    assert 0 <= metrics["eval_accuracy"] <= 100 and math.isfinite(metrics["eval_loss"])
    after = lora_weights(model)
    assert any(not torch.equal(after[k], before[k]) for k in after)
    assert all(torch.equal(p, base_before[n]) for n, p in model.named_parameters() if "lora_" not in n)

    trainer.save_model(str(tmp_path / "adapter"))
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert saved and all("lora_" in key for key in saved)
    assert len(saved) == 2 * 3 * 8  # A and B of q/k/v in 8 layers
    reloaded = PeftModel.from_pretrained(make_clip(eos_token_id=TOKENIZER_EOS_ID), tmp_path / "adapter").eval()
    model.eval()
    batch = trainer.data_collator([data[i] for i in range(4)])
    prompts = tokenizer([CLIP_LORA_TEMPLATE.format(name) for name in CLASSES], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**prompts, pixel_values=batch["pixel_values"]).logits_per_image
        actual = reloaded(**prompts, pixel_values=batch["pixel_values"]).logits_per_image
    assert torch.equal(actual, expected)


def test_bad_shots():
    with pytest.raises(ValueError, match="shots"):
        clip_lora_training_arguments("out", shots=0)
