"""Safe names: adapter names and subfolders are checked before they reach any file operation.

An adapter name becomes a folder name when the adapter is saved (peft saves every adapter other than `default` in
`<save_directory>/<adapter name>`), and a subfolder is joined to a local folder or a Hub repository when loading or
pushing. A name such as `/home/me/adapter` or `../x` would make those joins point outside the target folder: a save
could then write (and the crash-safe save move or delete) files anywhere. So:

- **Adapter names** ([`check_adapter_name`]) are one plain folder name: a non-blank string without `/`, `\\`, `.`
  (torch refuses `.` in module and parameter names, which also rules out `.`, `..` and file names such as
  `README.md`), `:` at the start of a Windows drive (`C:`), or control characters, at most 255 bytes in UTF-8.
  `MuDPTModel` checks every new adapter's name first thing (so `get_peft_model`, `add_adapter`, `load_adapter`,
  `inject_adapter_in_model` and MuDPT's own loaders refuse a bad name before any weight or file exists), and
  `mudpt_peft.hub` checks the names of the adapters it saves or pushes before it touches any file.
- **Subfolders** ([`check_subfolder`]) may be nested, as in peft: a relative path of `/`-separated components, each
  a non-empty name other than `.` and `..`, without `\\` or control characters, at most 255 bytes. Not absolute
  (`/x`, `C:/x`), no empty component (`a//b`, a trailing `/`). Dots inside a component are fine (`v1.2`).
  `""` and `None` mean "no subfolder".

Both raise [`UnsafeNameError`], a `ValueError` that says what is allowed.
"""

from __future__ import annotations

import ntpath
from typing import Any

__all__ = ["UnsafeNameError", "check_adapter_name", "check_subfolder"]

#: The most bytes (UTF-8) of one file name on common file systems.
MAX_NAME_BYTES = 255
#: The most characters of a subfolder (a path of several names).
MAX_SUBFOLDER_CHARS = 1024
_QUOTED = 80

_ADAPTER_NAME_RULE = (
    "an adapter name is one plain folder name: a non-blank string without '/', '\\', '.', a drive ('C:') or "
    f"control characters, at most {MAX_NAME_BYTES} bytes (e.g. 'default', 'eurosat', 'task_2')"
)
_SUBFOLDER_RULE = (
    "a subfolder is a relative path of '/'-separated names, each not empty, not '.' or '..', without '\\' or "
    f"control characters and at most {MAX_NAME_BYTES} bytes (e.g. 'eurosat' or 'adapters/eurosat'); not absolute"
)


class UnsafeNameError(ValueError):
    """An adapter name or subfolder that could point outside its folder, or that no file system accepts.

    A `ValueError`: code that catches `ValueError` for bad arguments catches it too.
    """


def _quoted(value: Any) -> str:
    """`repr(value)` cut short (names come from callers and from files: they can be huge)."""
    if not isinstance(value, str):
        return f"a {type(value).__name__}"
    if len(value) <= _QUOTED:
        return repr(value)
    return f"{value[:_QUOTED]!r}... ({len(value)} characters)"


def _component_problem(name: str) -> str | None:
    """What is wrong with `name` as one folder name, or `None`."""
    if not name.strip():
        return "it is empty" if not name else "it is blank"
    if name in (".", ".."):
        return f"'{name}' is not a folder of its own"
    if "\\" in name:
        return "it contains '\\' (a path separator on Windows)"
    if any(ord(char) < 32 or ord(char) == 127 for char in name):
        return "it contains a control character"
    if ntpath.splitdrive(name)[0]:
        return "it starts with a drive ('C:')"
    if len(name.encode("utf-8", errors="surrogatepass")) > MAX_NAME_BYTES:
        return f"it is longer than {MAX_NAME_BYTES} bytes"
    return None


def check_adapter_name(name: Any, what: str = "adapter name") -> str:
    """Return `name` if it is a safe adapter name, else raise [`UnsafeNameError`] saying what is allowed.

    Args:
        name (`str`):
            The adapter name (e.g. `adapter_name=` of `get_peft_model` / `load_adapter`).
        what (`str`, defaults to `"adapter name"`):
            How the error calls it, e.g. ``"`adapter_name`"``.

    Returns:
        `str`: `name`.

    Raises:
        UnsafeNameError: for a name that is not a plain folder name (see the module docstring).
    """
    if not isinstance(name, str):
        raise UnsafeNameError(f"The {what} must be a string, got {_quoted(name)}; {_ADAPTER_NAME_RULE}.")
    if "/" in name:
        problem = "it is an absolute path" if name.startswith("/") else "it contains '/'"
    elif "." in name:
        problem = "it contains '.'"
    else:
        problem = _component_problem(name)
    if problem is not None:
        raise UnsafeNameError(
            f"The {what} {_quoted(name)} is refused: {problem}. The name is used as a folder name when the adapter "
            f"is saved, so {_ADAPTER_NAME_RULE}. Pick such a name (for `load_adapter`: "
            "`load_adapter(path, adapter_name='eurosat')`)."
        )
    return name


def check_subfolder(subfolder: Any, what: str = "`subfolder`") -> str | None:
    """Return `subfolder` (`None` for `None` or `""`) if it is a safe subfolder, else raise [`UnsafeNameError`].

    Args:
        subfolder (`str`, *optional*):
            The folder of an adapter inside a local folder or a Hub repository, e.g. `"eurosat"` or `"adapters/dtd"`.
        what (`str`, defaults to ``"`subfolder`"``):
            How the error calls it.

    Returns:
        `str` or `None`: the subfolder, `None` when there is none.

    Raises:
        UnsafeNameError: for a subfolder that is absolute, contains `..`, `\\` or empty components, or is too long.
    """
    if subfolder is None or subfolder == "":
        return None
    if not isinstance(subfolder, str):
        raise UnsafeNameError(f"{what} must be a string, got {_quoted(subfolder)}; {_SUBFOLDER_RULE}.")
    problem = None
    if len(subfolder) > MAX_SUBFOLDER_CHARS:
        problem = f"it is longer than {MAX_SUBFOLDER_CHARS} characters"
    elif subfolder.startswith("/") or ntpath.isabs(subfolder):
        problem = "it is an absolute path"
    else:
        for index, component in enumerate(subfolder.split("/")):
            reason = _component_problem(component)
            if reason is not None:
                problem = f"its part {index + 1} ({_quoted(component)}) is refused: {reason}"
                break
    if problem is not None:
        raise UnsafeNameError(f"{what}={_quoted(subfolder)} is refused: {problem}; {_SUBFOLDER_RULE}.")
    return subfolder
