"""The test suite's own structure: test modules share code through `helpers.py` and fixtures through `conftest.py`,
never by importing each other (which runs the imported module's module-level code and couples unrelated tests)."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
TEST_MODULES = sorted(TESTS.glob("test_*.py"))
#: The modules that test modules may import (the ddp_*_script.py files also run as scripts), and conftest.py.
SHARED_MODULES = [
    TESTS / name
    for name in (
        "helpers.py", "official_reference.py", "hub_server.py", "ddp_train_script.py", "ddp_raw_script.py",
        "conftest.py",
    )
]  # fmt: skip


def imported_modules(source: str) -> list[tuple[int, str]]:
    """(line, dotted name) of every module an import anywhere in `source` names; `.` for each level of a relative one.

    `from . import x` and `from .pkg import x` also name `.x` / `.pkg.x`: `x` may be a module.
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            found.append((node.lineno, base))
            separator = "" if base.endswith(".") else "."
            found += [(node.lineno, base + separator + alias.name) for alias in node.names]
    return found


def is_test_module_or_conftest(name: str) -> bool:
    """Whether the dotted `name` is a test module (`test_*`, relative or absolute) or `conftest`."""
    return any(part.startswith("test_") or part == "conftest" for part in name.split("."))


def offending_imports(path: Path) -> list[str]:
    """The imports in `path` of a test module or of conftest, as `file:line: name` (the first such name per line)."""
    first: dict[int, str] = {}
    for line, name in imported_modules(path.read_text()):
        if is_test_module_or_conftest(name):
            first.setdefault(line, name)
    return [f"{path.name}:{line}: {name}" for line, name in sorted(first.items())]


def test_the_import_check_sees_every_form():
    source = """
import tests.test_lifecycle
import test_lifecycle as lifecycle
from . import test_lifecycle
from .test_lifecycle import logits
from tests.test_lifecycle import logits
from .conftest import make_clip
from tests import conftest

def inside():
    from .test_data import labelled
"""
    flagged = sorted({name for _, name in imported_modules(source) if is_test_module_or_conftest(name)})
    assert flagged == [
        ".conftest",
        ".conftest.make_clip",
        ".test_data",
        ".test_data.labelled",
        ".test_lifecycle",
        ".test_lifecycle.logits",
        "test_lifecycle",
        "tests.conftest",
        "tests.test_lifecycle",
        "tests.test_lifecycle.logits",
    ]
    allowed = "import torch\nfrom .helpers import logits\nfrom tests.helpers import make_clip\nfrom . import helpers\n"
    assert not [name for _, name in imported_modules(allowed) if is_test_module_or_conftest(name)]


def test_no_test_module_imports_another_test_module_or_conftest():
    assert len(TEST_MODULES) > 10 and Path(__file__) in TEST_MODULES
    offenders = [offence for path in TEST_MODULES for offence in offending_imports(path)]
    assert not offenders, "import shared code from tests/helpers.py instead:\n" + "\n".join(offenders)


def test_helpers_support_modules_and_conftest_import_no_test_module_nor_conftest():
    assert all(path.is_file() for path in SHARED_MODULES)
    offenders = [offence for path in SHARED_MODULES for offence in offending_imports(path)]
    assert not offenders, "\n".join(offenders)


def test_one_thread_is_defined_only_in_conftest():
    definers = sorted(
        path.name
        for path in TESTS.glob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "one_thread"
    )
    assert definers == ["conftest.py"]
