"""`PromptTuningTrainer` under `torchrun` and `accelerate launch` (2 CPU processes, gloo) equals one process with the
same global batch; bf16 autocast on CPU keeps the adapter in fp32."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
import torch
from peft import get_peft_model_state_dict

from .ddp_train_script import build_model, build_trainer, train
from .helpers import distributed_environment, free_port, run_bounded, torchrun_command

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).with_name("ddp_train_script.py")


# torchrun gives each worker OMP_NUM_THREADS=1; the single-process reference uses one thread as well
pytestmark = pytest.mark.usefixtures("one_thread")


def adapter(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


def launcher_command(launcher: str) -> list[str]:
    """The command that starts 2 CPU processes of the training script: torchrun, or `accelerate launch` (whose
    `--multi_gpu` launcher is torchrun underneath; without a GPU each worker's Trainer initialises gloo, i.e. DDP on
    CPU, which `--cpu` would not do: `--cpu` with several processes needs MPI)."""
    if launcher == "torchrun":
        return torchrun_command(2)
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--main_process_port", str(free_port()), "--mixed_precision", "no",
        "--dynamo_backend", "no",
    ]  # fmt: skip


def test_promptsrc_under_ddp_equals_one_process_with_the_global_batch(tmp_path, tokenizer_dir):
    """PromptSRC's objective (frozen features with the adapter disabled, on each rank) and its prompt aggregation
    (one step per epoch here: every step is aggregated) under 2-process DDP give the single process's adapter."""
    ddp_dir = tmp_path / "ddp"
    ddp_dir.mkdir()
    command = launcher_command("torchrun") + [
        str(SCRIPT), "--output-dir", str(ddp_dir), "--tokenizer-dir", str(tokenizer_dir),
        "--per-device-batch", "4", "--steps", "3", "--objective", "promptsrc",
    ]  # fmt: skip
    run = run_bounded(command, timeout_s=300, cwd=ROOT, env=distributed_environment())
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    rank0, rank1 = (torch.load(ddp_dir / f"adapter_rank{r}.pt") for r in (0, 1))
    assert all(torch.equal(rank0[key], rank1[key]) for key in rank0)
    assert (ddp_dir / "checkpoint-3" / "training_objective.safetensors").is_file()
    single = train(str(tmp_path / "single"), str(tokenizer_dir), per_device_batch=8, steps=3, objective="promptsrc")
    assert single.objective.aggregation.epochs == 3
    expected = adapter(single.model)
    for key in expected:  # float32 summation order only (see the test below)
        torch.testing.assert_close(rank0[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_processes_equal_one_process_with_the_global_batch(tmp_path, tokenizer_dir, launcher):
    ddp_dir = tmp_path / "ddp"
    ddp_dir.mkdir()
    command = launcher_command(launcher) + [
        str(SCRIPT), "--output-dir", str(ddp_dir), "--tokenizer-dir", str(tokenizer_dir),
        "--per-device-batch", "4", "--steps", "3",
    ]  # fmt: skip
    # HF_HOME: no developer accelerate config (default_config.yaml)
    environment = distributed_environment(HF_HOME=str(tmp_path / "hf_home"))
    start = time.perf_counter()
    run = run_bounded(command, timeout_s=300, cwd=ROOT, env=environment)
    elapsed = time.perf_counter() - start
    print(f"\n{launcher} (2 CPU processes, 3 steps, evaluate, save) wall time: {elapsed:.1f} s")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]

    rank0 = torch.load(ddp_dir / "adapter_rank0.pt")
    rank1 = torch.load(ddp_dir / "adapter_rank1.pt")
    records = [json.loads((ddp_dir / f"metrics_rank{r}.json").read_text()) for r in (0, 1)]
    assert records[0]["world_size"] == records[1]["world_size"] == 2  # really distributed, not two lone runs
    assert rank0.keys() == rank1.keys() and len(rank0) > 10
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key  # DDP keeps the replicas identical

    # exactly one checkpoint, written once (by rank 0), adapter only
    written = sorted(str(p.relative_to(ddp_dir)) for p in ddp_dir.rglob("adapter_model.safetensors"))
    assert written == [os.path.join("checkpoint-3", "adapter_model.safetensors")]
    files = set(os.listdir(ddp_dir / "checkpoint-3"))
    assert {"adapter_config.json", "optimizer.pt", "scheduler.pt", "rng_state_0.pth", "rng_state_1.pth"} <= files
    assert not files & {"model.safetensors", "pytorch_model.bin"}

    # one process, per-device batch 8 = 4 x 2: every step sees the whole 8-image dataset in both runs, so each step's
    # gradient is the mean over the same 8 images (DDP: the average of two 4-image means)
    single = train(str(tmp_path / "single"), str(tokenizer_dir), per_device_batch=8, steps=3)
    expected = adapter(single.model)
    single_metrics = single.evaluate()
    initial = adapter(build_model())
    assert expected.keys() == rank0.keys()
    moved = max((expected[k] - initial[k]).abs().max().item() for k in expected)
    assert moved > 1e-2  # training moved the adapter far more than the tolerance below
    for key in expected:
        # Same arithmetic up to the order of float32 summation (all-reduce of two half-batch means vs one mean over
        # 8 images): differences of a few ulps per step (measured max 6e-8 after 3 steps). A missing or wrong
        # gradient synchronisation would show at the scale of `moved`.
        torch.testing.assert_close(rank0[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)
    losses = [entry["loss"] for entry in single.state.log_history if "loss" in entry]
    assert records[0]["losses"] == pytest.approx(losses, rel=1e-5)  # logged loss: mean over both ranks' batches
    assert records[0]["eval"]["eval_accuracy"] == single_metrics["eval_accuracy"]  # eval gathered over ranks
    assert records[0]["eval"]["eval_loss"] == pytest.approx(single_metrics["eval_loss"], rel=1e-5)


def test_bf16_autocast_on_cpu_keeps_the_adapter_in_fp32(tmp_path, tokenizer_dir):
    trainer = build_trainer(str(tmp_path), str(tokenizer_dir), 4, 3, bf16=True, save_strategy="no")
    assert trainer.args.use_cpu and trainer.args.bf16
    dtypes = set()
    mlp = trainer.model.get_base_model().vision_model.encoder.layers[0].mlp.fc1
    mlp.register_forward_hook(lambda module, inputs, output: dtypes.add(output.dtype))
    before = adapter(trainer.model)
    trainer.train()
    assert torch.bfloat16 in dtypes  # the forward really ran under bf16 autocast
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    after = adapter(trainer.model)
    assert all(v.dtype == torch.float32 for v in after.values())
    assert any(not torch.equal(after[k], before[k]) for k in after)
    metrics = trainer.evaluate()
    assert torch.isfinite(torch.tensor(metrics["eval_loss"])) and 0 <= metrics["eval_accuracy"] <= 100
    # bf16 numerics differ from fp32 by bf16 rounding only
    fp32 = train(str(tmp_path / "fp32"), str(tokenizer_dir), 4, 3, save_strategy="no")
    fp32_losses = [entry["loss"] for entry in fp32.state.log_history if "loss" in entry]
    assert losses != fp32_losses and losses == pytest.approx(fp32_losses, abs=0.05)
