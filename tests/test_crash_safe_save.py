"""Crash-safe saves (`mudpt_peft.hub.save_pretrained`, see `mudpt_peft.staging`): a save of adapter B over adapter A
interrupted at any file operation leaves a folder that loads as exactly A or exactly B (or, before anything has
looked at it, a folder without `adapter_config.json`), never a mix; the next MuDPT load or save finishes or removes
what the interrupted save left, and a load that cannot says where the staged copy is.

Deterministic: the interruption is injected at the k-th file operation of the save (`FileOpFaults`), for every k; a
few points are also really killed with SIGKILL in a child process (`kill_during_save.py`), which must leave exactly
what the simulated kill leaves.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from mudpt_peft import MuDPTConfig, PromptClassifier, adapter_files, hub, staging

from .helpers import (
    CLASSIFIER_CLASSES,
    FileOpFaults,
    Killed,
    clip_for_tokenizer,
    folder_files,
    logits,
    make_inputs,
    seeded_adapter,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only cost time on shared cores

CONFIG, WEIGHTS, CLASSIFIER = "adapter_config.json", "adapter_model.safetensors", "prompt_classifier.json"
ROOT = Path(__file__).resolve().parents[1]


def beside(folder: Path) -> list[str]:
    """What saves into `folder` keep beside it (staging folders, the lock file)."""
    return sorted(path.name for path in folder.parent.iterdir() if path.name.startswith(f".{folder.name}.mudpt-save"))


def complete_copies(folder: Path) -> list[Path]:
    return [path for path in staging.staging_folders(folder) if (path / staging.MARKER_NAME).is_file()]


def saved(model, folder: Path) -> dict[str, bytes]:
    hub.save_pretrained(model, folder)
    return folder_files(folder)


def save_operations(model, template: Path, folder: Path) -> list[tuple[str, str]]:
    """The file operations of a save of `model` over a copy of `template` (the same as over any copy of it)."""
    shutil.copytree(template, folder)
    with FileOpFaults() as counted:
        hub.save_pretrained(model, folder)
    return counted.ops


def check_every_config_has_its_own_files(files: dict, saves: list[dict], folders: list[str]) -> list[str]:
    """Each adapter folder that has a config holds the config, weights and classifier file of one save (what a load
    reads); return the folders without config."""
    without_config = []
    for folder in folders:
        names = [f"{folder}/{name}".lstrip("/") for name in (CONFIG, WEIGHTS, CLASSIFIER)]
        if names[0] not in files:
            without_config.append(folder)
            continue
        assert any(all(files.get(n) == save.get(n) for n in names) for save in saves), f"mixed files in '{folder}'"
    return without_config


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    """name -> (old model, new model, adapter folders, load kwargs that reach the last folder)."""
    from transformers import CLIPTokenizer

    from .helpers import make_tokenizer_files

    tokenizer = CLIPTokenizer.from_pretrained(make_tokenizer_files(tmp_path_factory.mktemp("tokenizer")))
    classifier = PromptClassifier(seeded_adapter(1), tokenizer, CLASSIFIER_CLASSES)
    return {
        "one adapter": (seeded_adapter(1), seeded_adapter(2), [""], {}),
        # the subfolder is moved first, then the root; a load of the subfolder recovers the save into its parent
        "two adapters": (
            seeded_adapter(1, ("default", "second")),
            seeded_adapter(5, ("default", "second")),
            ["", "second"],
            {"subfolder": "second"},
        ),
        # an adapter saved over a classifier: its stale prompt_classifier.json goes with the old config
        "adapter over classifier": (classifier, seeded_adapter(2), [""], {}),
    }


@pytest.mark.parametrize("mode", ["dead", "once", "error"])
@pytest.mark.parametrize("variant", ["one adapter", "two adapters", "adapter over classifier"])
def test_a_save_interrupted_at_any_file_operation_loads_as_exactly_the_old_or_the_new_adapter(
    variant, mode, variants, tmp_path
):
    """`dead`: nothing reaches the disk from operation k on (a killed process); `once`: a `KeyboardInterrupt`-like
    exception at operation k; `error`: an `OSError` at operation k (a failing disk)."""
    old_model, new_model, folders, load_kwargs = variants[variant]
    old, new = saved(old_model, tmp_path / "old" / "out"), saved(new_model, tmp_path / "new" / "out")
    assert old != new
    template = tmp_path / "old" / "out"
    ops = save_operations(new_model, template, tmp_path / "count" / "out")
    assert 20 <= len(ops) <= 200, ops

    outcomes: Counter = Counter()
    for k in range(len(ops)):
        out = tmp_path / f"k{k}" / "out"
        shutil.copytree(template, out)
        failure = None
        with FileOpFaults(k, mode):
            try:
                hub.save_pretrained(new_model, out)
            except (Killed, OSError) as error:
                failure = error
        assert mode == "error" or isinstance(failure, Killed), (k, ops[k])  # an interruption always shows
        files = folder_files(out)
        without_config = check_every_config_has_its_own_files(files, [old, new], folders)
        copies = complete_copies(out)
        if without_config:
            assert copies, f"operation {k}: a folder without config and no staged copy to finish it from"
            outcomes["without config"] += 1
        if isinstance(failure, OSError) and copies:  # a failed move says where the complete copy is
            assert str(copies[0]) in str(failure) and "finishes the move" in str(failure)

        # the next MuDPT load (of the root folder, or of the last adapter folder) or, at every third point, the next
        # save finishes or removes what the interrupted save left
        if k % 3 == 2:
            hub.save_pretrained(old_model, out)
            assert folder_files(out) == old
        else:
            adapter_files.check_adapter(out, **(load_kwargs if k % 2 else {}))
            after = folder_files(out)
            assert after in (old, new), f"operation {k} ({ops[k]}): neither the old nor the new folder"
            outcomes["old" if after == old else "new"] += 1
            assert after == new or not without_config  # a started move is finished, not undone
        assert beside(out) == [], (k, ops[k], beside(out))
    assert outcomes["old"] and outcomes["new"] and outcomes["without config"], outcomes


def test_the_old_and_new_folders_load_as_their_models(variants, tmp_path):
    """What the test above compares file by file is what loads: the saved folders give the models' logits."""
    inputs = make_inputs()
    old_model, new_model, _, _ = variants["one adapter"]
    for model, name in ((old_model, "old"), (new_model, "new")):
        hub.save_pretrained(model, tmp_path / name)
        loaded = PeftModel.from_pretrained(clip_for_tokenizer(), tmp_path / name)
        assert torch.equal(logits(loaded, inputs), logits(model, inputs))


def kill_points(ops: list[tuple[str, str]]) -> dict[str, int]:
    """The operations of a save that matter most: before the lock, while staging, the marker, mid-move, the end."""
    kinds = [f"{kind} {Path(path).name}" for kind, path in ops]
    marker = kinds.index(f"replace {staging.MARKER_NAME}.tmp")
    unlink_config = kinds.index(f"unlink {CONFIG}")
    return {
        "first": 0,
        "staging": kinds.index(f"open {CONFIG}"),  # peft writes the staged config
        "marker": marker,
        "after the config was removed": unlink_config + 1,
        "weights moved": kinds.index(f"replace {WEIGHTS}") + 1,
        "config moved": kinds.index(f"replace {CONFIG}", unlink_config) + 1,
        "last": len(ops) - 1,
    }


def test_plain_peft_loads_before_recovery_give_the_old_adapter_or_cannot_find_the_config(variants, tmp_path):
    """Before any MuDPT code has looked at it, peft's own `PeftModel.from_pretrained` (which reads the config before
    MuDPT code runs) loads the old adapter, or the new one, or finds no config: never a mix."""
    old_model, new_model, _, _ = variants["one adapter"]
    inputs = make_inputs()
    expected = {"old": logits(old_model, inputs), "new": logits(new_model, inputs)}
    template = tmp_path / "template"
    hub.save_pretrained(old_model, template)
    ops = save_operations(new_model, template, tmp_path / "count")
    seen = set()
    for point, k in kill_points(ops).items():
        out = tmp_path / f"k{k}" / "out"
        shutil.copytree(template, out)
        with FileOpFaults(k), pytest.raises(Killed):
            hub.save_pretrained(new_model, out)
        try:
            result = logits(PeftModel.from_pretrained(clip_for_tokenizer(), out), inputs)
        except ValueError as error:
            assert "Can't find 'adapter_config.json'" in str(error), point
            seen.add("no config")
            continue
        seen |= {name for name, value in expected.items() if torch.equal(result, value)}
        assert any(torch.equal(result, value) for value in expected.values()), point
    assert seen == {"old", "new", "no config"}


def test_a_real_sigkill_leaves_what_the_simulated_kill_leaves(variants, tmp_path):
    old_model, new_model, _, _ = variants["one adapter"]
    template = tmp_path / "template"
    hub.save_pretrained(old_model, template)
    new = saved(new_model, tmp_path / "new")
    ops = save_operations(new_model, template, tmp_path / "count")
    points = sorted(set(kill_points(ops).values()))
    run = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "kill_during_save.py"), str(template), str(tmp_path / "real")]
        + [str(k) for k in points],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {str(k): True for k in points}
    for k in points:
        real, simulated = tmp_path / "real" / f"k{k}" / "out", tmp_path / "simulated" / f"k{k}" / "out"
        shutil.copytree(template, simulated)
        with FileOpFaults(k), pytest.raises(Killed):
            hub.save_pretrained(new_model, simulated)
        assert folder_files(real) == folder_files(simulated), k
        assert [len(os.listdir(path)) for path in staging.staging_folders(real)] == [
            len(os.listdir(path)) for path in staging.staging_folders(simulated)
        ], k
        assert [p.replace(".mudpt-save-", "")[:4] for p in beside(real)] == [
            p.replace(".mudpt-save-", "")[:4] for p in beside(simulated)
        ], k
        adapter_files.check_adapter(real)
        assert folder_files(real) in (folder_files(template), new) and beside(real) == [], k


def test_a_load_during_a_running_save_leaves_its_staging_alone_and_names_it(variants, tmp_path):
    """A load never removes or finishes the staging of a save that is still running (its lock is held): while the
    save stages, the folder loads as the old adapter; once the move has removed the old config, the load names the
    staged copy and says to load again; the save then completes."""
    old_model, new_model, _, _ = variants["one adapter"]
    out = tmp_path / "out"
    old, new = saved(old_model, out), saved(new_model, tmp_path / "new")
    ops = save_operations(new_model, out, tmp_path / "count")
    points = kill_points(ops)
    seen = []

    def load_while_staging():
        assert MuDPTConfig.from_pretrained(out).depth == 2 and folder_files(out) == old
        seen.append(beside(out))

    def load_while_moving():
        with pytest.raises(
            ValueError, match="A save into '.*' is running now; its staged copy of this adapter is in"
        ) as caught:
            adapter_files.check_adapter(out)
        seen.append(str(caught.value))

    for point, action in (("staging", load_while_staging), ("after the config was removed", load_while_moving)):
        with FileOpFaults(points[point], action=action):
            hub.save_pretrained(new_model, out)
        assert folder_files(out) == new and beside(out) == []
        hub.save_pretrained(old_model, out)
    assert len(seen[0]) == 2 and any(".mudpt-save.lock" in name for name in seen[0])  # the staging and the lock
    assert str(tmp_path) in seen[1] and ".out.mudpt-save-" in seen[1] and "Load again when" in seen[1]
    assert len(seen[1]) < 1200


def test_without_locks_a_load_names_the_staged_copy_instead_of_finishing_it(variants, tmp_path, monkeypatch):
    """Where no lock can be taken (no `fcntl`, a file system without locks, a folder the loader cannot write), whether
    the save is dead cannot be known: staged copies are left alone and named in the error."""
    old_model, new_model, _, _ = variants["one adapter"]
    out = tmp_path / "out"
    hub.save_pretrained(old_model, out)
    new = saved(new_model, tmp_path / "new")
    ops = save_operations(new_model, out, tmp_path / "count")
    with monkeypatch.context() as patch:
        patch.setattr(staging, "fcntl", None)
        with FileOpFaults(kill_points(ops)["weights moved"]), pytest.raises(Killed):
            hub.save_pretrained(new_model, out)
        (copy,) = complete_copies(out)
        for load in (lambda: adapter_files.check_adapter(out), lambda: MuDPTConfig.from_pretrained(out)):
            with pytest.raises(ValueError, match="does not exist") as caught:
                load()
            assert f"left a complete copy of this adapter in '{copy}'" in str(caught.value)
            assert "adapter_config.json last" in str(caught.value)
        assert complete_copies(out) == [copy]  # left alone
    adapter_files.check_adapter(out)  # with locks again: finished
    assert folder_files(out) == new and beside(out) == []


def test_a_roll_forward_never_overwrites_a_newer_save(variants, tmp_path):
    """A plain `save_pretrained` into the folder after a helper save died mid-move wins over the dead save's staged
    copy (the marker records which config the dead save replaces)."""
    old_model, new_model, _, _ = variants["two adapters"]
    out = tmp_path / "out"
    hub.save_pretrained(old_model, out)
    ops = save_operations(new_model, out, tmp_path / "count")
    second_done = [i for i, (kind, path) in enumerate(ops) if kind == "replace" and path.endswith(f"second/{CONFIG}")]
    with FileOpFaults(second_done[0] + 1), pytest.raises(Killed):  # "second" moved, the root not yet
        hub.save_pretrained(new_model, out)
    newest = seeded_adapter(9, ("default", "second"))
    newest.save_pretrained(out)  # plain peft: in place, no lock
    expected = folder_files(out)
    adapter_files.check_adapter(out)
    assert folder_files(out) == expected
    assert beside(out) == []


def test_a_recovery_killed_at_any_point_is_finished_by_the_next_one(variants, tmp_path):
    """The roll-forward is itself crash-safe: a load that dies while it finishes a dead save's move leaves what the
    next load finishes, to exactly the new adapter."""
    old_model, new_model, _, load_kwargs = variants["two adapters"]
    template = tmp_path / "template"
    hub.save_pretrained(old_model, template)
    new = saved(new_model, tmp_path / "new")
    ops = save_operations(new_model, template, tmp_path / "count")
    interrupted = tmp_path / "state" / "interrupted"
    shutil.copytree(template, interrupted)
    with FileOpFaults(kill_points(ops)["weights moved"]), pytest.raises(Killed):  # inside "second", the first folder
        hub.save_pretrained(new_model, interrupted)
    assert complete_copies(interrupted)  # state/: the folder and what the dead save left beside it
    recovery = tmp_path / "recovery"
    shutil.copytree(tmp_path / "state", recovery)
    with FileOpFaults() as counted:
        adapter_files.check_adapter(recovery / "interrupted", **load_kwargs)
    assert folder_files(recovery / "interrupted") == new and len(counted.ops) >= 8
    for k in range(len(counted.ops)):
        copy = tmp_path / f"r{k}"
        shutil.copytree(tmp_path / "state", copy)
        with FileOpFaults(k), pytest.raises(Killed):
            adapter_files.check_adapter(copy / "interrupted", **load_kwargs)
        adapter_files.check_adapter(copy / "interrupted")
        assert folder_files(copy / "interrupted") == new, (k, counted.ops[k])
        assert beside(copy / "interrupted") == [], (k, counted.ops[k])
