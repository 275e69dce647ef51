"""Train the tiny CLIP's MuDPT adapter for 2 SGD steps under plain `DistributedDataParallel` (no Trainer).

Run under `python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_raw_script.py OUTPUT_DIR` (gloo,
CPU); used by `tests/test_distributed.py`. Each of the 2 ranks trains on its half of a 4-image batch (every image
against all 4 texts) and writes its adapter weights to `OUTPUT_DIR/rank{RANK}.pt`.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from peft import get_peft_model  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

from mudpt_peft import MuDPTConfig  # noqa: E402
from tests.helpers import make_clip, make_inputs, watchdog  # noqa: E402

STEPS = 2
BATCH = 4
LEARNING_RATE = 0.1


def build() -> torch.nn.Module:
    """The seeded MuDPT model (depth 3) on the tiny CLIP, in training mode: the same weights in every process."""
    torch.manual_seed(0)
    model = get_peft_model(make_clip(), MuDPTConfig(depth=3))
    model.train()
    return model


def loss_on(model: torch.nn.Module, inputs: dict[str, torch.Tensor], images: slice) -> torch.Tensor:
    """Cross-entropy of the images in `images` against all texts (image i belongs to text i)."""
    output = model(
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        pixel_values=inputs["pixel_values"][images],
    )
    labels = torch.arange(inputs["input_ids"].shape[0])[images]
    return torch.nn.functional.cross_entropy(output.logits_per_image, labels)


def adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "mudpt_" in k}


def train(model: torch.nn.Module, images: slice) -> None:
    """`STEPS` SGD steps of `loss_on(model, inputs, images)` on the fixed 4-image batch."""
    inputs = make_inputs(batch=BATCH)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LEARNING_RATE)
    for _ in range(STEPS):
        loss_on(model, inputs, images).backward()
        optimizer.step()
        optimizer.zero_grad()


def main() -> None:
    watchdog(240)
    output_dir = sys.argv[1]
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    try:
        rank, world_size = dist.get_rank(), dist.get_world_size()
        peft_model = build()
        shard = BATCH // world_size
        # all adapter parameters are used: no find_unused_parameters
        train(DistributedDataParallel(peft_model), slice(shard * rank, shard * (rank + 1)))
        torch.save(adapter_state(peft_model), os.path.join(output_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
