"""Shared fixtures: tiny random CLIP models built from configs (no downloads) and matching inputs."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

import mudpt_peft  # noqa: F401  (registers MUDPT with peft)

VOCAB_SIZE = 99
BOS_ID = 97
EOS_ID = 98


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


@pytest.fixture
def clip() -> CLIPModel:
    return make_clip()


@pytest.fixture
def inputs() -> dict[str, torch.Tensor]:
    return make_inputs()


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


@pytest.fixture
def tokenizer_dir(tmp_path) -> Path:
    return make_tokenizer_files(tmp_path / "tokenizer")


@pytest.fixture
def tokenizer(tokenizer_dir) -> CLIPTokenizer:
    """The tiny tokenizer; its BOS/EOS ids (57/58) differ from the tiny models' config, which only matters for EOS
    pooling: use `make_clip(eos_token_id=TOKENIZER_EOS_ID)` with it."""
    return CLIPTokenizer.from_pretrained(tokenizer_dir)


TOKENIZER_EOS_ID = 58
