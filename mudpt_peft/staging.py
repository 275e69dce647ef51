"""Crash-safe saves into a folder: stage beside it, move in with the config last, and finish or clean up after a crash.

[`mudpt_peft.hub.save_pretrained`] (and `PromptClassifier.save_pretrained`) saves into a target folder, say `out`:

1. It takes the target's lock, `fcntl.flock` on `.out.mudpt-save.lock` beside `out`: a second save into the same
   folder waits until the first has finished. The lock file is deleted when the save ends; a killed save leaves it
   (empty) behind, and the operating system releases its lock, so the next save or load knows that save is dead.
2. It runs [`recover`] on `out` (see 5), so that what dead saves left is finished or removed first.
3. It writes every file into a new staging folder `.out.mudpt-save-<random>` beside `out` and, when all are written
   and flushed, the marker `.mudpt-staged.json` in it: the staged copy is complete, and the marker says which folders
   to move, which file goes last (`adapter_config.json`) and which stale files to delete.
4. It moves the staged files into `out` folder by folder (adapter subfolders first, the root last); in each, the old
   `adapter_config.json` is removed first and the new one moved in last, so no folder ever holds a config with the
   weights of another save. Then it removes the staging folder and the lock file.
5. [`recover`]: a staging folder without marker is removed (its save died before touching `out`, which still holds
   the old adapter); a staging folder with marker is *rolled forward*: step 4 is finished for every folder whose
   staged `adapter_config.json` is still there, unless that folder's `adapter_config.json` in `out` is neither absent
   nor the one this save replaces (the marker records its sha256: another save wrote the folder after this one
   staged, and the newer one stays), and the staging folder is removed.
   It runs with the lock held: on the next save into the folder, and on every MuDPT load of a local folder
   ([`recover_interrupted_saves`]: `MuDPTConfig.from_pretrained`, `PromptClassifier.from_pretrained`,
   `check_adapter`) when the lock is free, i.e. no save is running (a load never waits for a save), and the folder
   can be written.

After a kill at any point, the folder therefore loads as exactly the old adapter or exactly the new one once a MuDPT
loader or the next save has looked at it. Before that, a folder whose config the move had already removed does not
load (peft's `PeftModel.from_pretrained` reads `adapter_config.json` before any MuDPT code runs and says "Can't find
'adapter_config.json'"), and MuDPT's loaders name the staged copy when they cannot finish the move themselves (a save
still running, a folder they cannot write, no `fcntl`). Without `fcntl` (Windows) saves take no lock and staging
folders of other saves are never removed (whether their save is still running cannot be known); they are named in
the errors instead.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .names import UnsafeNameError, check_subfolder

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "LockState",
    "mark_complete",
    "move_into_place",
    "new_staging_folder",
    "recover",
    "recover_interrupted_saves",
    "staged_copy_hint",
    "staging_folders",
    "target_lock",
]

#: The staging folders of a save into `out` are `.out<STAGING_INFIX><random>`, beside `out`.
STAGING_INFIX = ".mudpt-save-"
#: The lock file of saves into `out` is `.out<LOCK_SUFFIX>`, beside `out`.
LOCK_SUFFIX = ".mudpt-save.lock"
#: Written into a staging folder when every file of the save is in it (it contains `.`, which no adapter name may).
MARKER_NAME = ".mudpt-staged.json"
MARKER_FORMAT = 1


class LockState(enum.Enum):
    """What [`target_lock`] got: the lock (`HELD`), nothing because another save holds it (`BUSY`), or nothing
    because this file system or platform has no locks or the folder cannot be written (`UNAVAILABLE`)."""

    HELD = "held"
    BUSY = "busy"
    UNAVAILABLE = "unavailable"


def _fsync(path: Path) -> None:
    with contextlib.suppress(OSError):  # directories cannot be opened for fsync everywhere (e.g. Windows)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _lock_file(target: Path) -> Path:
    return target.parent / f".{target.name}{LOCK_SUFFIX}"


def _acquire(path: Path, blocking: bool) -> int | None:
    """An open descriptor of `path` holding its exclusive `flock`, or `None` when another holds it (not blocking).

    The file may be deleted by the holder that releases it; a lock taken on a deleted file would lock nothing, so the
    lock is taken again until the locked file is the one at `path`."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            locked, current = os.fstat(fd), os.stat(path)
            if (locked.st_dev, locked.st_ino) == (current.st_dev, current.st_ino):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextlib.contextmanager
def target_lock(target: Path, blocking: bool = True) -> Iterator[LockState]:
    """Hold the lock of saves into `target` (a resolved path) inside the block; yield what was got (see
    [`LockState`]). Blocking, it waits for a running save into `target` to finish."""
    if fcntl is None:
        yield LockState.UNAVAILABLE
        return
    path = _lock_file(target)
    try:
        fd = _acquire(path, blocking)
    except OSError:  # a folder that cannot be written, a file system without locks (ENOLCK)
        yield LockState.UNAVAILABLE
        return
    if fd is None:
        yield LockState.BUSY
        return
    try:
        yield LockState.HELD
    finally:
        try:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)  # before the lock is released, see `_acquire`
        finally:
            os.close(fd)


def staging_folders(target: Path) -> list[Path]:
    """The staging folders of saves into `target` (a resolved path) that exist now, in name order."""
    prefix = f".{target.name}{STAGING_INFIX}"
    try:
        entries = sorted(os.scandir(target.parent), key=lambda entry: entry.name)
    except OSError:
        return []
    return [
        Path(entry.path) for entry in entries if entry.name.startswith(prefix) and entry.is_dir(follow_symlinks=False)
    ]


def new_staging_folder(target: Path) -> Path:
    """Create an empty staging folder for a save into `target` (a resolved path), beside it."""
    return Path(tempfile.mkdtemp(prefix=f".{target.name}{STAGING_INFIX}", dir=target.parent))


def mark_complete(
    staging: Path,
    target: Path,
    folders: Sequence[str],
    last: str,
    first: Sequence[str] = (),
    delete: Sequence[str] = (),
) -> None:
    """Record that every file of the save is in `staging` (flushed to disk), and how [`move_into_place`] moves it.

    Args:
        staging (`Path`): The staging folder.
        target (`Path`): The folder the save is for (its last files now are recorded: what this save replaces).
        folders (`list[str]`): The folders to move, relative to the staging folder and the target (`""`: the root).
        last (`str`): The file moved last in each folder (and removed from the target folder first).
        first (`list[str]`): Files moved first in each folder.
        delete (`list[str]`): Files deleted from each target folder (stale files of older saves).
    """
    replaces = {folder: _sha256(target / folder / last) for folder in folders}
    marker = {"format": MARKER_FORMAT, "folders": list(folders), "last": last, "first": list(first)}
    marker.update(delete=list(delete), replaces=replaces)
    _check_marker(marker)
    for path in sorted(staging.rglob("*")):
        if path.is_file():
            _fsync(path)
    temporary = staging / f"{MARKER_NAME}.tmp"
    with open(temporary, "w", encoding="utf-8") as file:
        json.dump(marker, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, staging / MARKER_NAME)
    _fsync(staging)


def _sha256(path: Path) -> str | None:
    """The sha256 of a (small) file's bytes, `None` when there is no such file."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def _check_marker(marker: Any) -> dict[str, Any]:
    """`marker` if it is a valid marker (safe relative names only), else raise `ValueError`."""
    if not isinstance(marker, dict) or marker.get("format") != MARKER_FORMAT:
        raise ValueError("not a staging marker of this version")
    folders, last = marker.get("folders"), marker.get("last")
    first, delete = marker.get("first"), marker.get("delete")
    replaces = marker.get("replaces")
    if not all(isinstance(value, list) for value in (folders, first, delete)) or not isinstance(replaces, dict):
        raise ValueError("malformed staging marker")
    try:
        for folder in folders:
            if folder != "":
                check_subfolder(folder, "a staged folder")
        for name in [last, *first, *delete]:
            check_subfolder(name, "a staged file")
            if "/" in name:
                raise ValueError("a staged file name with '/'")
    except UnsafeNameError as error:
        raise ValueError(str(error)) from error
    return marker


def _read_marker(staging: Path) -> dict[str, Any] | None:
    """The staging folder's marker, or `None` when the staging is incomplete (or the marker unreadable)."""
    try:
        return _check_marker(json.loads((staging / MARKER_NAME).read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


def move_into_place(staging: Path, target: Path, roll_forward: bool = False) -> None:
    """Move the complete staged copy in `staging` into `target` as its marker says (step 4 of the module docstring).

    With `roll_forward` (finishing the move of a dead save), folders whose last file is no longer staged are done
    already, and a folder whose last file in `target` is neither absent nor the one this save replaces is left alone:
    another save wrote it after this one staged."""
    marker = _read_marker(staging)
    if marker is None:
        raise ValueError(f"The staging folder '{staging}' holds no complete staged copy.")
    last, first = marker["last"], marker["first"]
    for folder in sorted(marker["folders"], key=lambda f: (f == "", f)):  # subfolders first, the root last
        source, destination = staging / folder, target / folder
        staged_last = source / last
        if roll_forward:
            current = _sha256(destination / last)
            if not staged_last.is_file() or current not in (None, marker["replaces"].get(folder)):
                continue
        destination.mkdir(parents=True, exist_ok=True)
        (destination / last).unlink(missing_ok=True)  # from here on the folder is not a loadable adapter
        _fsync(destination)
        for name in marker["delete"]:
            (destination / name).unlink(missing_ok=True)
        files = [
            item
            for item in source.iterdir()
            if item.is_file() and item.name != last and not item.name.startswith(MARKER_NAME)
        ]
        for item in sorted(files, key=lambda item: (item.name not in first, item.name)):
            os.replace(item, destination / item.name)
        os.replace(staged_last, destination / last)
        _fsync(destination)


def recover(target: Path) -> None:
    """Finish or remove what dead saves into `target` (a resolved path) left (step 5 of the module docstring).

    Call it only while holding [`target_lock`] (`LockState.HELD`): then no staging folder of `target` belongs to a
    running save."""
    found = staging_folders(target)
    for staging in found:
        with contextlib.suppress(ValueError):  # no complete staged copy: its save died before touching `target`
            move_into_place(staging, target, roll_forward=True)
        shutil.rmtree(staging)
    if found:
        _fsync(target.parent)


def _targets(folder: Path) -> list[Path]:
    """The save targets whose saves write into `folder`: itself, and its parent (`folder` may be the subfolder of an
    adapter other than `default`)."""
    return [folder, folder.parent] if folder.parent != folder else [folder]


def recover_interrupted_saves(folder: str | os.PathLike) -> None:
    """Before loading from the local `folder`: [`recover`] the saves into it (or into its parent) that died, when no
    save is running and the folder can be written. Never raises for what it cannot do (the load then reports what is
    missing, with [`staged_copy_hint`])."""
    resolved = Path(folder).resolve()
    for target in _targets(resolved):
        if not staging_folders(target) and not _lock_file(target).exists():  # a killed save leaves its lock file
            continue
        with target_lock(target, blocking=False) as state:
            if state is LockState.HELD:
                with contextlib.suppress(OSError, ValueError):
                    recover(target)


def _is_busy(target: Path) -> bool:
    with target_lock(target, blocking=False) as state:
        return state is LockState.BUSY


def staged_copy_hint(folder: str | os.PathLike) -> str:
    """A sentence for the error of a load of `folder` without `adapter_config.json`: where a staged copy of its
    adapter is (or that a save into it is running), or `""`."""
    resolved = Path(folder).resolve()
    for target in _targets(resolved):
        relative = resolved.relative_to(target).as_posix()
        relative = "" if relative == "." else relative
        for staging in staging_folders(target):
            marker = _read_marker(staging)
            if marker is not None and relative in marker["folders"]:
                copy = staging / relative
                if not (copy / marker["last"]).is_file():
                    continue  # that save had moved this folder in already
                if _is_busy(target):
                    return (
                        f" A save into '{target}' is running now; its staged copy of this adapter is in '{copy}'. "
                        "Load again when the save has finished."
                    )
                return (
                    f" An interrupted save (`mudpt_peft.hub.save_pretrained`) left a complete copy of this adapter "
                    f"in '{copy}', which could not be moved into place here. Load it from there, save the adapter "
                    f"again, or move the files into '{resolved}' yourself ({marker['last']} last)."
                )
            if marker is None and _is_busy(target):
                return f" A save into '{target}' is running now (staging in '{staging}'); load again when it is done."
    return ""
