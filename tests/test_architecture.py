"""The package's structure: no import cycle, and no patching of peft or transformers, no stack inspection."""

from __future__ import annotations

import ast
from pathlib import Path

import mudpt_peft

PACKAGE = Path(mudpt_peft.__file__).parent
MODULES = {path.stem: path for path in sorted(PACKAGE.glob("*.py"))}
#: Packages whose objects mudpt_peft must not modify.
FOREIGN = ("peft", "transformers", "torch", "huggingface_hub", "accelerate", "safetensors")


def _statements(tree: ast.AST):
    """Every statement that runs, at any depth, leaving out `if TYPE_CHECKING:` blocks (annotations only)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                yield child
                yield from _statements(child)
            continue
        yield node
        yield from _statements(node)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (at module level or inside functions)."""
    graph = {}
    for name, path in MODULES.items():
        deps = set()
        for node in _statements(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps |= {node.module.split(".")[0]} if node.module else {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mudpt_peft"):
                deps.add((node.module.split(".") + ["__init__"])[1])
        graph[name] = {dep for dep in deps if dep in MODULES and dep != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert {"config", "model", "hub", "classifier", "adapter_files", "model_card"} <= set(graph)
    assert find_cycle(graph) is None, find_cycle(graph)
    # the direction a newcomer can draw: specs and config at the bottom, the tuner, then files / cards / Hub, then
    # the classifier, trainer, data, evaluation and convert
    for low, high in (("config", "model"), ("model", "hub"), ("hub", "classifier"), ("classifier", "trainer")):
        assert low not in _reachable(graph, low) and high not in _reachable(graph, low), (low, high)


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), list(graph[start])
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph[node])
    return seen


def _foreign_names(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name.split(".")[0] in FOREIGN}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] in FOREIGN:
            names |= {alias.asname or alias.name for alias in node.names}
    return names


def _root_name(node: ast.AST) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


#: The one modification of a peft object, and why: `PeftType` is a closed enum and `register_peft_method` accepts
#: only its members, so MuDPT's member is added to it (see `_enum.py`).
ALLOWED = {"_enum"}


def test_nothing_of_peft_or_transformers_is_patched_and_no_stack_is_inspected():
    problems = []
    for name, path in MODULES.items():
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
        for needle in ("sys._getframe", "inspect.stack", "inspect.currentframe", "f_back"):
            if needle in source:
                problems.append(f"{name}: {needle}")
        if name in ALLOWED:
            continue
        foreign = _foreign_names(tree)
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else []
            for target in targets:
                if isinstance(target, ast.Attribute) and _root_name(target) in foreign:
                    problems.append(f"{name}:{node.lineno}: assigns {ast.unparse(target)}")
            is_setattr = isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            if is_setattr and node.func.id in ("setattr", "delattr"):
                if node.args and _root_name(node.args[0]) in foreign:
                    problems.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
    assert not problems, problems
    assert not (PACKAGE / "_peft_hooks.py").exists()


#: The public API as it stood before the restructuring (`mudpt_peft.__all__`), which it was to keep or shrink.
PUBLIC_API = {
    "ALTCLIP_SPEC", "CHINESE_CLIP_SPEC", "CLIP_SPEC", "FamilySpec", "ImageClassificationCollator", "InjectionModel",
    "METACLIP_2_SPEC", "MUDPT_PEFT_TYPE", "MUDPT_PREFIX", "MuDPTConfig", "MuDPTModel", "PromptClassifier",
    "PromptTuningTrainer", "SIGLIP2_SPEC", "SIGLIP_SPEC", "alignment", "allow_pickled_weights", "base_to_new",
    "convert_official", "default_training_arguments", "evaluate", "few_shot", "get_family_spec", "harmonic_mean",
    "hub", "register_family", "register_mudpt", "registered_families", "supported_model_classes", "write_model_card",
}  # fmt: skip


def test_the_public_api_is_unchanged_and_listed_by_dir():
    assert set(mudpt_peft.__all__) <= PUBLIC_API and len(mudpt_peft.__all__) == len(set(mudpt_peft.__all__))
    listed = set(dir(mudpt_peft))
    assert set(mudpt_peft.__all__) <= listed  # the lazy exports (trainer, data, ...) too, before their first use
    for name in mudpt_peft.__all__:
        assert getattr(mudpt_peft, name) is not None
