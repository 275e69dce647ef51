"""Shared fixtures: tiny random CLIP models built from configs (no downloads), matching inputs and the tiny tokenizer.
The builders behind them are in `helpers.py`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import CLIPModel, CLIPTokenizer

from .helpers import make_clip, make_inputs, make_tokenizer_files


@pytest.fixture
def clip() -> CLIPModel:
    return make_clip()


@pytest.fixture
def inputs() -> dict[str, torch.Tensor]:
    return make_inputs()


@pytest.fixture
def tokenizer_dir(tmp_path) -> Path:
    return make_tokenizer_files(tmp_path / "tokenizer")


@pytest.fixture
def tokenizer(tokenizer_dir) -> CLIPTokenizer:
    """The tiny tokenizer; its BOS/EOS ids (57/58) differ from the tiny models' config, which only matters for EOS
    pooling: use `make_clip(eos_token_id=TOKENIZER_EOS_ID)` with it."""
    return CLIPTokenizer.from_pretrained(tokenizer_dir)

