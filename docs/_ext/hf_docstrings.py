"""A griffe extension for the docs site: Hugging Face-style docstrings, rendered by mkdocstrings' Google parser.

`mudpt_peft` writes its docstrings the way transformers and peft do. Two of their conventions do not mean what the
Google parser expects; this extension rewrites them in the loaded docstrings (the source files are not touched):

- Parameter, return and exception types: ``name (`int`, *optional*, defaults to 9):`` becomes ``name (int):``, and
  ``(*optional*)`` alone is dropped so that the signature's annotation is shown (the default is in its own column).
  ``[`MuDPTConfig`]`` in a type becomes ``MuDPTConfig``, and backticks are removed from return and exception types.
- ``Example:`` sections: the Google parser reads them as doctest lines, which shows the fences of an HF-style
  example (indented Markdown) as text; they become a bold title followed by the unindented Markdown.
- Cross-references: ``[`PromptClassifier`]`` and ``[`~PromptClassifier.predict`]`` (``~`` shows the last name only)
  become mkdocs-autorefs links, resolved from the scope of the documented object like Python names are; a name that
  resolves to nothing in the loaded package, or to an object not rendered on the site, stays as code.

Enabled in mkdocs.yml: `extensions: [docs/_ext/hf_docstrings.py]` under the python handler's options.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_SECTION = re.compile(
    r"^(?P<indent>\s*)(?P<kind>Args|Arguments|Parameters|Keyword Args|Keyword Arguments|Other Parameters|Attributes"
    r"|Returns|Yields|Raises|Warns):\s*$"
)
_NAMED_SECTIONS = {
    "Args",
    "Arguments",
    "Parameters",
    "Keyword Args",
    "Keyword Arguments",
    "Other Parameters",
    "Attributes",
}
_EXAMPLE = re.compile(r"^(?P<indent>\s*)(?P<title>Examples?):\s*$")
_CROSSREF = re.compile(r"\[`(?P<tilde>~?)(?P<name>[A-Za-z_][\w.]*)`\](?![\[(])")
_FENCE = re.compile(r"^\s*(```|~~~)")


def _split_top_level(text: str, separator: str) -> list[str]:
    """`text` split at `separator` characters that are outside backticks and brackets."""
    parts, depth, in_code, start = [], 0, False, 0
    for i, char in enumerate(text):
        if char == "`":
            in_code = not in_code
        elif not in_code and char in "([{":
            depth += 1
        elif not in_code and char in ")]}":
            depth -= 1
        elif not in_code and depth == 0 and char == separator:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _clean_type(text: str) -> str:
    """The type of an HF-style entry without `*optional*` and `defaults to ...`, backticks and reference brackets."""
    kept = []
    for part in _split_top_level(text, ","):
        part = part.strip()
        if not part or part == "*optional*" or re.match(r"^defaults? (to|is)\b", part):
            continue
        kept.append(part)
    cleaned = _CROSSREF.sub(lambda m: m["name"].rsplit(".", 1)[-1] if m["tilde"] else m["name"], ", ".join(kept))
    return cleaned.replace("`", "").strip()


def _closing_paren(text: str, opening: int) -> int | None:
    """The index of the parenthesis closing the one at `opening` (backticked text ignored), or `None`."""
    depth, in_code = 0, False
    for i in range(opening, len(text)):
        char = text[i]
        if char == "`":
            in_code = not in_code
        elif in_code:
            continue
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return i
    return None


def _rewrite_named_item(line: str) -> str:
    """``name (type): description`` with the type cleaned (or dropped when nothing is left of it)."""
    match = re.match(r"^(?P<indent>\s*)(?P<name>\*{0,2}\w+)\s*\(", line)
    if not match:
        return line
    opening = match.end() - 1
    closing = _closing_paren(line, opening)
    if closing is None or not line[closing + 1 :].lstrip().startswith(":"):
        return line
    rest = line[closing + 1 :].lstrip()[1:]
    annotation = _clean_type(line[opening + 1 : closing])
    head = f"{match['indent']}{match['name']}" + (f" ({annotation})" if annotation else "")
    return f"{head}:{rest}"


def _rewrite_typed_item(line: str) -> str:
    """``type: description`` (returns, raises) with backticks and reference brackets removed from the type."""
    stripped = line.lstrip()
    if not stripped.startswith(("`", "[`")):
        return line
    parts = _split_top_level(stripped, ":")
    if len(parts) < 2:
        return line
    indent = line[: len(line) - len(stripped)]
    return f"{indent}{_clean_type(parts[0])}:{':'.join(parts[1:])}"


def _rewrite_sections(text: str) -> str:
    """Clean the item types of the parameter, attribute, return and exception sections of a docstring."""
    lines = text.split("\n")
    kind: str | None = None
    header_indent = item_indent = 0
    in_fence = False
    for number, line in enumerate(lines):
        if _FENCE.match(line):
            in_fence = not in_fence
        if in_fence or not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        section = _SECTION.match(line)
        if section:
            kind, header_indent, item_indent = section["kind"], len(section["indent"]), -1
            continue
        if kind is None:
            continue
        if indent <= header_indent:
            kind = None
            continue
        if item_indent < 0:
            item_indent = indent
        if indent == item_indent:
            lines[number] = _rewrite_named_item(line) if kind in _NAMED_SECTIONS else _rewrite_typed_item(line)
    return "\n".join(lines)


def _rewrite_examples(text: str) -> str:
    """``Example:`` sections (indented Markdown, usually a fenced code block) as a bold title and unindented Markdown.

    The Google parser reads an example section as doctest lines, so the fence lines of an HF-style example would show
    as text.
    """
    lines = text.split("\n")
    out: list[str] = []
    header: re.Match | None = None
    dedent = -1
    for line in lines:
        if header is None:
            header = _EXAMPLE.match(line)
            out.append(f"{header['indent']}**{header['title']}**" if header else line)
            dedent = -1
            continue
        indent = len(line) - len(line.lstrip())
        if line.strip() and indent <= len(header["indent"]):
            header = _EXAMPLE.match(line)
            out.append(f"{header['indent']}**{header['title']}**" if header else line)
            continue
        if line.strip() and dedent < 0:
            dedent = indent - len(header["indent"])
        removable = min(max(dedent, 0), indent)
        out.append(line[removable:] if line.strip() else line)
    return "\n".join(out)


def _lookup(scope: Any, name: str) -> Any:
    try:
        return scope[name]
    except Exception:  # noqa: BLE001 - any failure to look a name up means "not found"
        return None


def _resolve(obj: griffe.Object, name: str, collection: Any) -> str | None:
    """The canonical path of `name` as seen from `obj`: in its enclosing scopes, then as an absolute path."""
    scopes: list[Any] = []
    node: Any = obj
    while node is not None:
        if node.is_module or node.is_class:
            scopes.append(node)
        node = node.parent
    scopes.append(collection)
    for scope in scopes:
        found = _lookup(scope, name)
        if found is None:
            continue
        try:
            return found.canonical_path if found.is_alias else found.path
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):
            return None
    return None


def _rewrite_crossrefs(text: str, obj: griffe.Object, collection: Any) -> str:
    """HF-style ``[`name`]`` references outside code blocks as optional autorefs (plain code when unresolved)."""

    def replace(match: re.Match) -> str:
        name = match["name"]
        title = name.rsplit(".", 1)[-1] if match["tilde"] else name
        path = _resolve(obj, name, collection)
        if path is None:
            return f"`{title}`"
        return f'<autoref identifier="{path}" optional>`{title}`</autoref>'

    out, in_fence = [], False
    for line in text.split("\n"):
        if _FENCE.match(line):
            in_fence = not in_fence
        out.append(line if in_fence else _CROSSREF.sub(replace, line))
    return "\n".join(out)


class HFDocstrings(griffe.Extension):
    """Rewrite the HF-style docstrings of every object of a loaded package (see the module docstring)."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        self._visit(pkg, loader.modules_collection, set())

    def _visit(self, obj: griffe.Object, collection: Any, seen: set[str]) -> None:
        if obj.path in seen:
            return
        seen.add(obj.path)
        if obj.docstring is not None:
            text = _rewrite_sections(_rewrite_examples(obj.docstring.value))
            obj.docstring.value = _rewrite_crossrefs(text, obj, collection)
        for member in obj.members.values():
            if not member.is_alias:
                self._visit(member, collection, seen)
