"""Train the tiny CLIP's MuDPT adapter for a few steps with `PromptTuningTrainer`, then evaluate and save.

Run directly for one process, or under `python -m torch.distributed.run --nproc_per_node 2 tests/ddp_train_script.py`
for DDP on CPU (gloo); used by `tests/test_ddp_trainer.py`. Each rank writes `adapter_rank{RANK}.pt` (its adapter
weights) and `metrics_rank{RANK}.json` (training losses and evaluation metrics) into `--output-dir`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from peft import get_peft_model, get_peft_model_state_dict  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import CLIPTokenizer  # noqa: E402

from mudpt_peft import MuDPTConfig  # noqa: E402
from mudpt_peft.losses import PromptSRCObjective  # noqa: E402
from mudpt_peft.trainer import PromptTuningTrainer, default_training_arguments  # noqa: E402
from tests.helpers import TOKENIZER_EOS_ID, image_processor, make_clip, watchdog  # noqa: E402

CLASSES = ["cat", "dog", "zebra", "photo"]


def build_dataset(size: int = 8, seed: int = 0) -> datasets.Dataset:
    """`size` random 20×20 RGB images with labels `i % 4`, as an HF dataset with an `Image` feature."""
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)) for _ in range(size)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    return datasets.Dataset.from_dict({"image": images, "label": [i % 4 for i in range(size)]}, features=features)


def build_model():
    torch.manual_seed(0)
    return get_peft_model(make_clip(eos_token_id=TOKENIZER_EOS_ID), MuDPTConfig(depth=3))


def promptsrc_objective() -> PromptSRCObjective:
    """PromptSRC's objective with templates the tiny tokenizer spells and an aggregation centred on step (epoch) 2."""
    return PromptSRCObjective(gpa_mean=2.0, gpa_std=1.0, templates=("a photo of a {}.", "a {}."))


def build_trainer(
    output_dir: str, tokenizer_dir: str, per_device_batch: int, steps: int, objective: str | None = None, **overrides
) -> PromptTuningTrainer:
    """A trainer for `steps` SGD steps on the 8-image dataset (evaluated on the same images), saving one checkpoint at
    the end; `objective="promptsrc"` trains with [`promptsrc_objective`]; `overrides` replace any training
    argument."""
    settings = dict(
        max_steps=steps,
        per_device_train_batch_size=per_device_batch,
        per_device_eval_batch_size=per_device_batch,
        learning_rate=0.05,
        warmup_steps=0,
        save_strategy="steps",
        save_steps=steps,
        logging_steps=1,
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        use_cpu=True,
        seed=0,
        ddp_timeout=120,  # a lost peer fails the run in 2 minutes, not gloo's default 30
    )
    settings.update(overrides)
    args = default_training_arguments("mudpt", output_dir, **settings)
    dataset = build_dataset()
    return PromptTuningTrainer(
        build_model(),
        CLASSES,
        CLIPTokenizer.from_pretrained(tokenizer_dir),
        args=args,
        train_dataset=dataset,
        eval_dataset=dataset,
        image_processor=image_processor(),
        objective=promptsrc_objective() if objective == "promptsrc" else None,
    )


def train(
    output_dir: str, tokenizer_dir: str, per_device_batch: int, steps: int, objective: str | None = None, **overrides
) -> PromptTuningTrainer:
    """Build the trainer of [`build_trainer`], train it and return it."""
    trainer = build_trainer(output_dir, tokenizer_dir, per_device_batch, steps, objective, **overrides)
    trainer.train()
    return trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--tokenizer-dir", required=True)
    parser.add_argument("--per-device-batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--objective", choices=["promptsrc"], default=None)
    options = parser.parse_args()
    watchdog(240)
    torch.set_num_threads(1)
    trainer = train(
        options.output_dir, options.tokenizer_dir, options.per_device_batch, options.steps, options.objective
    )
    metrics = trainer.evaluate()
    rank = int(os.environ.get("RANK", "0"))
    state = {k: v.detach().cpu() for k, v in get_peft_model_state_dict(trainer.model).items()}
    torch.save(state, os.path.join(options.output_dir, f"adapter_rank{rank}.pt"))
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    record = {"losses": losses, "eval": metrics, "world_size": trainer.args.world_size}
    with open(os.path.join(options.output_dir, f"metrics_rank{rank}.json"), "w") as file:
        json.dump(record, file)


if __name__ == "__main__":
    main()
