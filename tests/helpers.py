"""Helpers shared by the test modules: tiny CLIP models and inputs, adapter utilities, datasets and reference math.

Test modules import from here, never from each other or from `conftest.py` (which holds the shared fixtures and
imports from here, never the other way round); `ddp_train_script.py` imports from here too, run as a script.
"""

from __future__ import annotations

import builtins
import copy
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from peft import PeftModel, get_peft_model
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

import mudpt_peft  # noqa: F401  (registers MUDPT with peft)
from mudpt_peft import MuDPTConfig

if TYPE_CHECKING:
    import datasets

# ------------------------------------------------------------------------------------------------------------------
# tiny random CLIP models, their inputs and the tiny tokenizer

VOCAB_SIZE = 99
BOS_ID = 97
EOS_ID = 98
TOKENIZER_EOS_ID = 58


def make_clip_config(
    text_width: int = 32,
    vision_width: int = 48,
    text_layers: int = 4,
    vision_layers: int = 4,
    max_positions: int = 16,
    eos_token_id: int = EOS_ID,
    image_size: int = 16,
    patch_size: int = 8,
    attn_implementation: str | None = None,
) -> CLIPConfig:
    """A tiny CLIP config; widths and layer counts differ per tower so that mix-ups show."""
    config = CLIPConfig(
        text_config=dict(
            vocab_size=VOCAB_SIZE,
            hidden_size=text_width,
            intermediate_size=37,
            num_hidden_layers=text_layers,
            num_attention_heads=4,
            max_position_embeddings=max_positions,
            bos_token_id=BOS_ID,
            eos_token_id=eos_token_id,
            pad_token_id=EOS_ID,
        ),
        vision_config=dict(
            hidden_size=vision_width,
            intermediate_size=37,
            num_hidden_layers=vision_layers,
            num_attention_heads=4,
            image_size=image_size,
            patch_size=patch_size,
        ),
        projection_dim=24,
    )
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
        config.text_config._attn_implementation = attn_implementation
        config.vision_config._attn_implementation = attn_implementation
    return config


def make_clip(seed: int = 0, **kwargs) -> CLIPModel:
    """A tiny random `CLIPModel` in eval mode."""
    torch.manual_seed(seed)
    return CLIPModel(make_clip_config(**kwargs)).eval()


def make_inputs(seed: int = 1, batch: int = 3, length: int = 7, image_size: int = 16) -> dict[str, torch.Tensor]:
    """Token ids (BOS, words, EOS, EOS padding), an attention mask and pixel values for `make_clip` models."""
    generator = torch.Generator().manual_seed(seed)
    lengths = [length - (i % 3) for i in range(batch)]  # real tokens per row, BOS and EOS included
    input_ids = torch.full((batch, length), EOS_ID)
    attention_mask = torch.zeros(batch, length, dtype=torch.long)
    for row, real in enumerate(lengths):
        words = torch.randint(1, BOS_ID - 1, (real - 2,), generator=generator)
        input_ids[row, :real] = torch.cat([torch.tensor([BOS_ID]), words, torch.tensor([EOS_ID])])
        attention_mask[row, :real] = 1
    pixel_values = torch.randn(batch, 3, image_size, image_size, generator=generator)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of `model` with every parameter frozen, as `get_peft_model` freezes the base model.

    The reference for a bit-exact comparison with a PeftModel must run the same kernels: freezing changes them
    (`nn.MultiheadAttention` takes its fast path only without autograd on its weights, as in SigLIP's pooling head).
    """
    return copy.deepcopy(model).requires_grad_(False)


def make_tokenizer_files(directory: Path) -> Path:
    """A real CLIP BPE tokenizer with a tiny vocabulary (59 tokens, ids < VOCAB_SIZE): 'a photo of a' is 4 tokens."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    merges = ["p h", "ph o", "pho t", "phot o</w>", "o f</w>"]
    vocab = {c: i for i, c in enumerate(letters)}
    vocab.update({c + "</w>": len(letters) + i for i, c in enumerate(letters)})
    vocab.update({m.replace(" ", ""): 2 * len(letters) + i for i, m in enumerate(merges)})
    vocab.update({"<|startoftext|>": 57, "<|endoftext|>": 58})
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    CLIPTokenizer.from_pretrained(directory).save_pretrained(directory)
    return directory


def clip_for_tokenizer(**kwargs):
    """A `make_clip` model whose EOS pooling uses the tiny tokenizer's EOS id."""
    return make_clip(eos_token_id=TOKENIZER_EOS_ID, **kwargs)


def peft_model(method: str = "mudpt", seed: int = 0) -> PeftModel:
    """A method preset (CoOp: 4 prompts, the others: depth 3) on a tiny CLIP that fits the tiny tokenizer."""
    torch.manual_seed(seed)
    overrides = {"n_ctx": 4} if method == "coop" else {"depth": 3}
    return get_peft_model(make_clip(eos_token_id=TOKENIZER_EOS_ID), MuDPTConfig.for_method(method, **overrides))


# ------------------------------------------------------------------------------------------------------------------
# adapted models: outputs, adapter values, hooks


def seeded_adapter(seed: int, names: tuple[str, ...] = ("default",)) -> PeftModel:
    """MuDPT adapters `names` (depth 2) on the tiny CLIP that fits the tiny tokenizer, adapter `names[i]` with
    random values from `seed + i`: the same values, and the same saved bytes, in every process."""
    model = get_peft_model(clip_for_tokenizer(), MuDPTConfig(depth=2), adapter_name=names[0])
    for name in names[1:]:
        model.add_adapter(name, MuDPTConfig(depth=2))
    for index, name in enumerate(names):
        randomize_adapter(model, name, seed=seed + index)
    return model


def logits(model, inputs) -> torch.Tensor:
    """The image-to-text logits of `model` on `inputs`, without autograd."""
    with torch.no_grad():
        return model(**inputs).logits_per_image


class CountingTextCalls:
    """Counts `get_text_features` calls on a model (via the peft model's attribute lookup)."""

    def __init__(self, model):
        self.count = 0
        original = model.get_text_features

        def counted(*args, **kwargs):
            self.count += 1
            return original(*args, **kwargs)

        model.get_text_features = counted


def randomize_adapter(model, adapter_name: str = "default", seed: int = 0) -> None:
    """Give the adapter non-trivial values (the injection output projection included)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "mudpt_" in name and f".{adapter_name}" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)


def hooks_of(model) -> list[tuple[str, int, int, int]]:
    """Per module of `model`: its name and its numbers of forward, forward-pre and backward hooks."""
    return [
        (name, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
        for name, m in model.named_modules()
    ]


# ------------------------------------------------------------------------------------------------------------------
# image classification data
#
# `datasets` is imported inside the builders: the Hub test's child run and the spawned DDP workers import this module
# without needing it, and it takes about a second to import.

#: The class names of the `PromptClassifier` tests: every one is a word of the tiny tokenizer.
CLASSIFIER_CLASSES = ["cat", "dog", "zebra", "of"]
#: The class names of `color_dataset`, one per colour of `COLORS`.
COLOR_CLASSES = ["cat", "dog", "zebra", "photo", "of", "a"]
COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255)]
#: The class names of `labelled` datasets.
LABELLED_CLASSES = ["cat", "dog", "zebra", "photo", "of"]


def image_processor() -> CLIPImageProcessor:
    """A CLIP image processor that produces the tiny models' 16×16 images."""
    return CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})


def color_dataset(
    size: int, seed: int = 0, image_column: str = "image", label_column: str = "label", classes: int = 6
) -> datasets.Dataset:
    """Noisy solid-colour 20×20 images, one colour per class (learnable), labels `i % classes`."""
    import datasets

    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(size):
        color = np.array(COLORS[i % classes], dtype=float)
        pixels = np.clip(color[None, None] + rng.normal(0, 30, (20, 20, 3)), 0, 255).astype(np.uint8)
        images.append(Image.fromarray(pixels))
        labels.append(i % classes)
    features = datasets.Features(
        {image_column: datasets.Image(), label_column: datasets.ClassLabel(names=COLOR_CLASSES[:classes])}
    )
    return datasets.Dataset.from_dict({image_column: images, label_column: labels}, features=features)


def labelled(counts: list[int], class_label: bool = True, size: int = 20, seed: int = 0) -> datasets.Dataset:
    """`counts[c]` random images of class `c`, interleaved; with a `ClassLabel` feature over `LABELLED_CLASSES`."""
    import datasets

    labels = [c for c, n in enumerate(counts) for _ in range(n)]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    labels = [labels[i] for i in order]
    images = [Image.fromarray(rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8)) for _ in labels]
    names = LABELLED_CLASSES[: len(counts)]
    label_feature = datasets.ClassLabel(names=names) if class_label else datasets.Value("int64")
    features = datasets.Features({"image": datasets.Image(), "label": label_feature})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


# ------------------------------------------------------------------------------------------------------------------
# reference math: plain torch ops on raw weights (the Injection Model and its building blocks)

INJECTION_LN_EPS = 1e-5


def ref_quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """CLIP's quick_gelu activation, x * sigmoid(1.702 x)."""
    return x * torch.sigmoid(1.702 * x)


def ref_layer_norm(x: torch.Tensor, norm, eps: float) -> torch.Tensor:
    """Layer norm over the last dimension with the weight and bias of the `nn.LayerNorm` `norm`."""
    return F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, eps)


def ref_linear(x: torch.Tensor, linear) -> torch.Tensor:
    """`x` through the weight and bias of the `nn.Linear` `linear`."""
    return F.linear(x, linear.weight, linear.bias)


def ref_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, additive_mask: torch.Tensor | None
) -> torch.Tensor:
    """q, k, v: (batch, heads, tokens, head_dim) -> (batch, tokens, heads * head_dim)."""
    scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    if additive_mask is not None:
        scores = scores + additive_mask
    out = torch.softmax(scores, dim=-1) @ v
    batch, heads, tokens, head_dim = out.shape
    return out.transpose(1, 2).reshape(batch, tokens, heads * head_dim)


def ref_injection(prompts: torch.Tensor, inj, heads: int) -> torch.Tensor:
    """Injection Model: proj(ln_post(blocks(ln_pre(P)))), P: (layers, n_ctx, src_width)."""
    layers, n_ctx, width = prompts.shape
    head_dim = width // heads
    x = ref_layer_norm(prompts, inj.ln_pre, INJECTION_LN_EPS)
    for block in inj.blocks:
        h = ref_layer_norm(x, block.ln_1, INJECTION_LN_EPS)
        qkv = ref_linear(h, block.attn.qkv).view(layers, n_ctx, 3, heads, head_dim)
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(dim=2))  # (layers, heads, n_ctx, head_dim)
        x = x + ref_linear(ref_attention(q, k, v, None), block.attn.out_proj)
        h = ref_layer_norm(x, block.ln_2, INJECTION_LN_EPS)
        x = x + ref_linear(ref_quick_gelu(ref_linear(h, block.fc1)), block.fc2)
    x = ref_layer_norm(x, inj.ln_post, INJECTION_LN_EPS)
    return ref_linear(x, inj.proj)


# ------------------------------------------------------------------------------------------------------------------
# file-system faults: a save interrupted at an exact file operation


class Killed(BaseException):
    """A simulated kill at a file operation; a `BaseException` like `KeyboardInterrupt`, so that no
    `except Exception` in the code under test stops it."""


class FileOpFaults:
    """Record the file-system changes made inside the block, and interrupt the `kill_at`-th one (0-based).

    Counted: `os.replace` / `rename` / `unlink` / `remove` / `rmdir` / `mkdir` / `fsync`, `os.open` with a writing
    flag, and `open` / `io.open` in a writing mode (safetensors writes its files from Rust: the operations just before
    and after it are counted). `ops` lists `(kind, path)` of every counted operation. At operation `kill_at`:

    - `mode="dead"`: raise [`Killed`] there and at every later operation, as for a killed process nothing more
      reaches the disk (descriptors are still closed by the code's `finally` blocks, as the OS closes a dead
      process's files, which releases its locks);
    - `mode="once"`: raise [`Killed`] there only (an interruption that the process survives, like Ctrl-C);
    - `mode="error"`: raise `OSError` there only (a failing disk);
    - `action`: call it there, then carry on (e.g. to look at the folder from "another process" at that point).
    """

    KINDS = ("replace", "rename", "unlink", "remove", "rmdir", "mkdir", "fsync")
    WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def __init__(self, kill_at: int | None = None, mode: str = "dead", action=None) -> None:
        assert mode in ("dead", "once", "error")
        self.kill_at, self.mode, self.action = kill_at, mode, action
        self.ops: list[tuple[str, str]] = []
        self.dead = False
        self._saved: list[tuple[object, str, object]] = []

    def _hit(self, kind: str, path: object) -> None:
        if self.dead:
            raise Killed(f"dead since operation {self.kill_at}")
        index = len(self.ops)
        self.ops.append((kind, os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else str(path)))
        if index != self.kill_at:
            return
        if self.action is not None:
            self.action()
        elif self.mode == "error":
            raise OSError(28, "No space left on device (simulated)")
        else:
            self.dead = self.mode == "dead"
            raise Killed(f"killed at operation {index}: {self.ops[-1]}")

    def _wrap(self, owner: object, name: str, counted) -> None:
        original = getattr(owner, name)
        self._saved.append((owner, name, original))

        def wrapper(*args, **kwargs):
            if counted(args, kwargs):
                self._hit(name, args[0] if args else kwargs.get("file", "?"))
            return original(*args, **kwargs)

        setattr(owner, name, wrapper)

    def __enter__(self) -> FileOpFaults:
        for kind in self.KINDS:
            self._wrap(os, kind, lambda args, kwargs: True)

        def writes(args, kwargs) -> bool:
            mode = args[1] if len(args) > 1 else kwargs.get("mode", "r")
            return isinstance(mode, str) and any(char in mode for char in "wax+")

        self._wrap(os, "open", lambda args, kwargs: bool((args[1] if len(args) > 1 else 0) & self.WRITE_FLAGS))
        self._wrap(builtins, "open", writes)
        self._wrap(io, "open", writes)
        return self

    def __exit__(self, *exc_info) -> None:
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)
        self._saved.clear()


def folder_files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative POSIX path -> bytes): what a load of it can see."""
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in files}
# the CoOp benchmark's on-disk layouts (CoOp's DATASETS.md), written with tiny images


def write_png(path: Path, value: int = 0, size: int = 4) -> Path:
    """A `size`×`size` PNG whose pixels are all `(value, 255 - value, 7)`, in new parent folders as needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (value % 256, 255 - value % 256, 7)).save(path, format="PNG")
    return path


def write_split_file_dataset(
    folder: Path, split_file: str, image_folder: str, entries: dict[str, list[tuple[str, int, str]]]
) -> Path:
    """A dataset in CoOp's split-file layout: `folder/<split_file>` holding `{"train"|"val"|"test": [[path, label,
    class name], ...]}` and a PNG for every path under `folder/<image_folder>` (the value of entry `i` of a split is
    `i`, so that decoded images can be told apart)."""
    for rows in entries.values():
        for index, (relative, _, _) in enumerate(rows):
            write_png(folder / image_folder / relative, value=index)
    folder.mkdir(parents=True, exist_ok=True)
    content = {split: [list(row) for row in rows] for split, rows in entries.items()}
    (folder / split_file).write_text(json.dumps(content), encoding="utf-8")
    return folder


def write_aircraft(folder: Path, variants: list[str], lines: dict[str, list[tuple[str, str]]]) -> Path:
    """FGVC-Aircraft's `data/` layout: `variants.txt`, `images_variant_{split}.txt` with `<image id> <variant>`
    lines, and `images/<image id>.jpg` (PNG bytes: decoders go by content)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "variants.txt").write_text("".join(f"{variant}\n" for variant in variants), encoding="utf-8")
    for split, rows in lines.items():
        text = "".join(f"{image_id} {variant}\n" for image_id, variant in rows)
        (folder / f"images_variant_{split}.txt").write_text(text, encoding="utf-8")
        for index, (image_id, _) in enumerate(rows):
            write_png(folder / "images" / f"{image_id}.jpg", value=index)
    return folder


def write_classnames(folder: Path, classnames: dict[str, str]) -> Path:
    """ImageNet's `classnames.txt`: one `<WordNet id> <class name>` line per class, in the dict's order."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "classnames.txt"
    path.write_text("".join(f"{wnid} {name}\n" for wnid, name in classnames.items()), encoding="utf-8")
    return path


def write_class_folders(image_dir: Path, files: dict[str, list[str]], empty: bool = False) -> Path:
    """One folder per key of `files` with those file names, created in the dicts' order; tiny PNGs (or empty files
    with `empty=True`, for loads that never decode)."""
    for folder, names in files.items():
        (image_dir / folder).mkdir(parents=True, exist_ok=True)
        for index, name in enumerate(names):
            if empty:
                (image_dir / folder / name).touch()
            else:
                write_png(image_dir / folder / name, value=index)
    return image_dir


# ------------------------------------------------------------------------------------------------------------------
# processes started by tests: bounded in time, killed with everything they started

#: process groups of the commands `run_bounded` is running; the suite's watchdog (conftest.py) kills them too
RUNNING_GROUPS: set[int] = set()


def kill_group(group: int) -> None:
    """SIGKILL every process of the process group `group` (a command started by `run_bounded` and its children)."""
    try:
        os.killpg(group, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_bounded(command: list[str], timeout_s: float, **kwargs) -> subprocess.CompletedProcess:
    """Run `command` (output captured as text) in a session of its own and return its `CompletedProcess`.

    Past `timeout_s` the whole process group is killed — a launcher's workers too, which `subprocess.run(timeout=)`
    leaves running, holding the output pipes open — and the test fails with what the command printed so far. Its
    stragglers are killed when it returns as well."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs
    )
    RUNNING_GROUPS.add(process.pid)
    try:
        try:
            stdout, stderr = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            kill_group(process.pid)
            stdout, stderr = process.communicate()
            raise AssertionError(
                f"{' '.join(command[:6])} ... did not finish within {timeout_s:.0f} s and was killed with its "
                f"children.\n--- stdout (end) ---\n{stdout[-3000:]}\n--- stderr (end) ---\n{stderr[-6000:]}"
            ) from None
    finally:
        kill_group(process.pid)
        RUNNING_GROUPS.discard(process.pid)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun_command(processes: int = 2) -> list[str]:
    """`torchrun --standalone` (its rendezvous on localhost) with `processes` CPU workers."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]


def distributed_environment(**extra: str) -> dict[str, str]:
    """This process's environment for a distributed launcher: without the variables of an enclosing launch, with one
    intra-op thread per worker (what torchrun gives each worker anyway), offline, plus `extra`."""
    environment = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    environment.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **extra)
    return environment


def watchdog(seconds: float) -> None:
    """In a worker process started by a test: dump every thread's stack and exit if still running after `seconds`
    (a hung collective then fails fast, with its stack in the test's output, instead of waiting out gloo's 30 min)."""
    import faulthandler

    faulthandler.dump_traceback_later(seconds, exit=True)


# ------------------------------------------------------------------------------------------------------------------
# logs


class TransformersLog(logging.Handler):
    """The messages logged under the `transformers` logger (which does not propagate to the root logger, so pytest's
    caplog does not see them); the `transformers_log` fixture attaches one for a test."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def saw(self, text: str) -> bool:
        return any(text in message for message in self.messages)
