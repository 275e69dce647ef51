"""Shared fixtures: tiny random CLIP models built from configs (no downloads), matching inputs, the tiny tokenizer, and
`one_thread` for the modules that opt into it. The builders behind them are in `helpers.py`."""

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


@pytest.fixture
def one_thread():
    """One intra-op torch thread during the test, for the modules that opt in with
    `pytestmark = pytest.mark.usefixtures("one_thread")`: their models are tiny, and with several threads on shared
    cores thread spinning costs up to 20x the compute (each module says why it opts in)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
