"""Small helpers shared by several modules of the package."""

from __future__ import annotations

import reprlib
import string
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

#: Values quoted in error messages are cut to this many characters.
REPR_LIMIT = 200

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxset = 2, 8, 8, 8, 8
_REPR.maxstring, _REPR.maxlong, _REPR.maxother = REPR_LIMIT, 60, REPR_LIMIT


def short_repr(value: object, limit: int = REPR_LIMIT) -> str:
    """`repr(value)` for an error message: at most `limit` characters, and cheap for huge values (a list of millions
    of items, a string of megabytes, an integer of thousands of digits)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        text = f"<an integer of about {int(value.bit_length() * 0.30103) + 1} digits>"
    else:
        try:
            text = _REPR.repr(value)
        except Exception:  # a repr that fails says nothing useful: name the type
            text = f"<a {type(value).__name__}>"
    if isinstance(value, (list, tuple, dict, set)) and len(value) > _REPR.maxlist:
        text += f" ({len(value)} items)"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def value_and_type(value: object, limit: int = REPR_LIMIT) -> str:
    """A refused value for an error message ([`short_repr`]), with its type unless it is an int or float."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return short_repr(value, limit)
    return f"{short_repr(value, limit)} (a {type(value).__name__})"


#: How many offending items (duplicate class names, ...) an error message lists.
_LISTED = 5


def check_class_names(class_names: Sequence[str]) -> list[str]:
    """The class names as a list of strings; a `ValueError` for a string, `None`, an empty list, a name that is not a
    non-empty string, or a name that occurs twice (two classes with one prompt can never be told apart)."""
    if isinstance(class_names, (str, bytes, Mapping)) or not hasattr(class_names, "__len__") or len(class_names) == 0:
        raise ValueError(
            "`class_names` must be a non-empty list of class names in label order, e.g. `dataset.features['label']"
            f".names`, got {value_and_type(class_names, 80)}."
        )
    names = list(class_names)
    for index, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            raise ValueError(
                f"`class_names` must hold non-empty strings (one per label), got {value_and_type(name, 80)} at "
                f"index {index}."
            )
    counts = Counter(names)
    if len(counts) < len(names):
        duplicated = [name for name, count in counts.items() if count > 1]
        listed = ", ".join(f"{short_repr(name, 60)} ({counts[name]}x)" for name in duplicated[:_LISTED])
        more = f" and {len(duplicated) - _LISTED} more" if len(duplicated) > _LISTED else ""
        raise ValueError(
            f"`class_names` must be distinct: {len(duplicated)} name(s) occur more than once: {listed}{more}. Two "
            "classes with the same name get the same prompt and can never be told apart; rename or merge them."
        )
    return [str(name) for name in names]  # str subclasses (numpy.str_) become plain strings


def check_template(template: object) -> str:
    """A class-prompt template such as `"a photo of a {}."`: a string with exactly one `{}` placeholder and no other
    replacement field (literal braces are written `{{` and `}}`); a `ValueError` otherwise."""
    rule = (
        "a template needs exactly one `{}` placeholder, where the class name goes, and no other fields (write "
        "literal braces as `{{` and `}}`), e.g. 'a photo of a {}.'"
    )
    if not isinstance(template, str):
        raise ValueError(f"`template` must be a string, got {value_and_type(template, 80)}: {rule}.")
    try:
        fields = [
            (name, spec, conversion)
            for _, name, spec, conversion in string.Formatter().parse(template)
            if name is not None
        ]
    except ValueError as error:  # a single '{' or '}'
        raise ValueError(f"`template` {short_repr(template, 80)} is not a valid template ({error}): {rule}.") from None
    if fields != [("", "", None)]:
        if not fields:
            found = "no `{}` placeholder"
        elif len(fields) > 1:
            found = f"{len(fields)} fields"
        else:
            name, spec, conversion = fields[0]
            shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            found = f"the field {short_repr(shown, 60)} instead of `{{}}`"
        raise ValueError(f"`template` {short_repr(template, 80)} has {found}: {rule}.")
    return template


def first_float_parameter(module: nn.Module) -> torch.nn.Parameter:
    """The first floating-point parameter of `module`: where its weights live and in which dtype."""
    return next(p for p in module.parameters() if p.is_floating_point())


def base_model_of(model: nn.Module) -> nn.Module:
    """The model under a peft wrapper (`get_base_model()`), or `model` itself when it is not wrapped."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


def model_image_size(model: nn.Module) -> int | None:
    """`vision_config.image_size` of a CLIP-like model (wrapped by peft or not), if it has one."""
    vision_config = getattr(getattr(base_model_of(model), "config", None), "vision_config", None)
    size = getattr(vision_config, "image_size", None)
    return int(size) if isinstance(size, int) else None


def projected_features(output: Any) -> torch.Tensor:
    """The projected features from `get_text_features` / `get_image_features` (an output object in transformers 5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def iter_modules(root: nn.Module) -> Iterator[nn.Module]:
    """Every module under `root` once (`root.modules()` without building the dotted names: cheaper per call)."""
    stack, seen = [root], set()
    while stack:
        module = stack.pop()
        if module is None or id(module) in seen:
            continue
        seen.add(id(module))
        yield module
        stack.extend(module._modules.values())


def replace_tokens(hidden_states: torch.Tensor, prompts: torch.Tensor, start: int | None) -> torch.Tensor:
    """Return `hidden_states` with the tokens at `start .. start+n_ctx` (or the last `n_ctx`) replaced by `prompts`
    (`(n_ctx, width)` for every row, or `(rows, n_ctx, width)`, one set per row).

    Out of place: transformers keeps references to earlier hidden states for `output_hidden_states`. One
    `slice_scatter` (a copy with the slice written): its backward allocates one tensor of the hidden states' size,
    where a `cat` of slices allocates one per slice and adds them up.
    """
    length, n_ctx = hidden_states.shape[1], prompts.shape[-2]
    start = length - n_ctx if start is None else start
    expanded = prompts.to(hidden_states.dtype)
    if expanded.dim() == 2:
        expanded = expanded.unsqueeze(0).expand(hidden_states.shape[0], -1, -1)
    return hidden_states.slice_scatter(expanded, dim=1, start=start, end=start + n_ctx)
