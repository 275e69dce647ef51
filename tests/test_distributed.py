"""DistributedDataParallel: two CPU processes (torchrun, gloo) train the adapter exactly like one process on the full
batch. The workers run `ddp_raw_script.py` under torchrun in a process group of their own, bounded in time."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from .ddp_raw_script import BATCH, adapter_state, build, train
from .helpers import distributed_environment, run_bounded, torchrun_command

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).with_name("ddp_raw_script.py")

# torchrun gives each worker one intra-op thread; the single-process reference uses one thread as well
pytestmark = pytest.mark.usefixtures("one_thread")


def test_ddp_matches_single_process(tmp_path):
    run = run_bounded(
        torchrun_command(2) + [str(SCRIPT), str(tmp_path)], timeout_s=300, cwd=ROOT, env=distributed_environment()
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    rank0 = torch.load(tmp_path / "rank0.pt")
    rank1 = torch.load(tmp_path / "rank1.pt")

    single = build()
    train(single, slice(0, BATCH))  # mean over 4 images == DDP's average of 2 shard means
    expected = adapter_state(single)

    assert rank0.keys() == expected.keys() and len(expected) > 10
    for key in expected:
        assert torch.equal(rank0[key], rank1[key]), key
        # float32 summation order only (all-reduce of two half-batch means vs one mean over 4 images)
        torch.testing.assert_close(rank0[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)
    initial = adapter_state(build())
    assert any(not torch.equal(expected[k], initial[k]) for k in expected)  # training did move the adapter
