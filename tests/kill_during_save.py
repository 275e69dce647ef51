"""Save over copies of an old adapter folder and really kill the saving process (SIGKILL) at chosen file operations.

Used by `tests/test_crash_safe_save.py`, to show that real kills leave what the in-process simulated ones leave:
`python tests/kill_during_save.py <template folder> <work folder> <k> [<k> ...]`. For each `k`, it copies the template
to `<work>/k<k>/out` and forks; the child saves `seeded_adapter(2)` there with `mudpt_peft.hub.save_pretrained` and
sends itself SIGKILL at its `k`-th file operation (counted by `FileOpFaults` exactly as the in-process test counts
them, before the operation runs). Prints one JSON line: `{k: whether the child died of SIGKILL}`. The models are
built once, before forking, so that only one interpreter start is paid.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from mudpt_peft import hub  # noqa: E402
from tests.helpers import FileOpFaults, seeded_adapter  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)  # no thread pool to inherit across fork
    template, work, points = Path(sys.argv[1]), Path(sys.argv[2]), [int(arg) for arg in sys.argv[3:]]
    model = seeded_adapter(2)
    killed = {}
    for k in points:
        out = work / f"k{k}" / "out"
        shutil.copytree(template, out)
        pid = os.fork()
        if pid == 0:  # the child: save, killed at operation k
            try:
                with FileOpFaults(k, action=lambda: os.kill(os.getpid(), signal.SIGKILL)):
                    hub.save_pretrained(model, out)
            finally:
                os._exit(3)  # only if it was not killed
        _, status = os.waitpid(pid, 0)
        killed[k] = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    print(json.dumps(killed))


if __name__ == "__main__":
    main()
