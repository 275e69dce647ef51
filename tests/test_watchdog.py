"""The suite's watchdog (conftest.py): a hanging test ends the run in bounded time, with every thread's stack printed
and the processes it started killed, instead of running into CI's time limit silently."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from .helpers import run_bounded

ROOT = Path(__file__).resolve().parents[1]
MARKER = f"601.{os.getpid()}"  # `sleep 601.<pid>`: a command line no other process (or concurrent run) has


def processes_with(argument: str) -> list[int]:
    """The pids whose command line has `argument` as one of its arguments."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                arguments = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argument.encode() in arguments:
                found.append(int(entry.name))
    return found


def test_a_hanging_test_ends_the_run_with_its_stack_and_its_children_killed(tmp_path):
    test_file = tmp_path / "test_hangs.py"
    test_file.write_text(
        textwrap.dedent(
            f"""
            from tests.helpers import run_bounded


            def test_hangs_in_a_child():
                run_bounded(["sleep", "{MARKER}"], timeout_s=1000)
            """
        )
    )
    environment = {**os.environ, "MUDPT_TEST_TIMEOUT_S": "5"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-p", "tests.conftest", str(test_file)],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 3, output
    assert "test_hangs_in_a_child is still running after 5 s" in output
    assert "in test_hangs_in_a_child" in output and "in run_bounded" in output  # the hung test's own stack
    assert processes_with(MARKER) == []  # its child was killed with it


def test_run_bounded_kills_the_whole_group_and_reports_the_output():
    script = f"import subprocess, sys; subprocess.Popen(['sleep', '{MARKER}']); print('started', flush=True); "
    script += "import time; time.sleep(600)"
    try:
        run_bounded([sys.executable, "-c", script], timeout_s=5)
    except AssertionError as error:
        message = str(error)
    else:
        raise AssertionError("run_bounded returned from a command that never ends")
    assert "did not finish within 5 s" in message and "started" in message
    assert processes_with(MARKER) == []  # the grandchild went with the group
