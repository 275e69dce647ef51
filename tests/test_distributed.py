"""DistributedDataParallel: two CPU processes (gloo) train the adapter exactly like one process on the full batch."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from peft import get_peft_model
from torch.nn.parallel import DistributedDataParallel

from mudpt_peft import MuDPTConfig

from .helpers import make_clip, make_inputs

WORLD_SIZE = 2


def build():
    model = get_peft_model(make_clip(), MuDPTConfig(depth=3))
    model.train()
    return model


def loss_on(model, inputs, images: slice) -> torch.Tensor:
    """Cross-entropy of the images in `images` against all texts (image i belongs to text i)."""
    output = model(
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        pixel_values=inputs["pixel_values"][images],
    )
    labels = torch.arange(inputs["input_ids"].shape[0])[images]
    return torch.nn.functional.cross_entropy(output.logits_per_image, labels)


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        torch.manual_seed(0)
        peft_model = build()
        ddp = DistributedDataParallel(peft_model)  # all adapter parameters are used: no find_unused_parameters
        inputs = make_inputs(batch=4)
        optimizer = torch.optim.SGD([p for p in ddp.parameters() if p.requires_grad], lr=0.1)
        shard = slice(2 * rank, 2 * rank + 2)
        for _ in range(2):
            loss_on(ddp, inputs, shard).backward()
            optimizer.step()
            optimizer.zero_grad()
        state = {k: v for k, v in peft_model.state_dict().items() if "mudpt_" in k}
        torch.save(state, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_matches_single_process(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    rank0 = torch.load(tmp_path / "rank0.pt")
    rank1 = torch.load(tmp_path / "rank1.pt")

    torch.manual_seed(0)
    single = build()
    inputs = make_inputs(batch=4)
    optimizer = torch.optim.SGD([p for p in single.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        loss_on(single, inputs, slice(0, 4)).backward()  # mean over 4 images == DDP's average of 2 shard means
        optimizer.step()
        optimizer.zero_grad()
    expected = {k: v for k, v in single.state_dict().items() if "mudpt_" in k}

    assert rank0.keys() == expected.keys() and len(expected) > 10
    for key in expected:
        assert torch.equal(rank0[key], rank1[key]), key
        torch.testing.assert_close(rank0[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)
    initial = {k: v for k, v in build().state_dict().items() if "mudpt_" in k}
    assert any(not torch.equal(expected[k], initial[k]) for k in expected)  # training did move the adapter
