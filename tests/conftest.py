"""Shared fixtures: tiny random CLIP models built from configs (no downloads), matching inputs, the tiny tokenizer, and
`one_thread` for the modules that opt into it. The builders behind them are in `helpers.py`.

And the suite's watchdog: a test (setup and teardown included) that runs past `MUDPT_TEST_TIMEOUT_S` seconds (default
900; 0 turns it off) ends the run: the stacks of every thread are printed, the processes it started with
`helpers.run_bounded` are killed, and pytest exits with status 3. A hang then costs minutes and says where it hung,
instead of running into CI's time limit with no output."""

from __future__ import annotations

import faulthandler
import logging
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import CLIPModel, CLIPTokenizer

from .helpers import RUNNING_GROUPS, TransformersLog, kill_group, make_clip, make_inputs, make_tokenizer_files

TEST_TIMEOUT_S = float(os.environ.get("MUDPT_TEST_TIMEOUT_S", "900"))
TIMED_OUT_STATUS = 3


def _time_out(item: pytest.Item) -> None:
    """The watchdog's end of the run (on its timer thread): report, dump the stacks, kill the children, exit."""
    capture = item.config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        try:
            capture.suspend(in_=False)  # the test's and the global capture: write to the real stderr
        except Exception:  # noqa: BLE001  (ending the run matters more than a clean capture state)
            pass
    sys.stderr.write(
        f"\n\n{item.nodeid} is still running after {TEST_TIMEOUT_S:.0f} s (MUDPT_TEST_TIMEOUT_S): the stacks of every "
        "thread follow, then the run ends.\n"
    )
    sys.stderr.flush()
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    for group in list(RUNNING_GROUPS):
        kill_group(group)
    sys.stderr.flush()
    os._exit(TIMED_OUT_STATUS)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    if TEST_TIMEOUT_S <= 0:
        yield
        return
    timer = threading.Timer(TEST_TIMEOUT_S, _time_out, args=(item,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


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
def transformers_log() -> Iterator[TransformersLog]:
    """The messages the `transformers` logger emits during the test."""
    records = TransformersLog()
    logger = logging.getLogger("transformers")
    logger.addHandler(records)
    yield records
    logger.removeHandler(records)


@pytest.fixture
def one_thread():
    """One intra-op torch thread during the test, for the modules that opt in with
    `pytestmark = pytest.mark.usefixtures("one_thread")`: their models are tiny, and with several threads on shared
    cores thread spinning costs up to 20x the compute (each module says why it opts in)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
