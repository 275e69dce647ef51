"""Adding a member to a closed `str` enum, such as peft's `PeftType`.

This module has no dependencies beyond the standard library, so that its behaviour can be checked on every Python
version the package supports without installing torch there.
"""

from __future__ import annotations

import enum


def extend_str_enum(enum_cls: type[enum.Enum], name: str, value: str | None = None) -> enum.Enum:
    """Add the member `name` (with value `value`, by default `name`) to the `str`-based enum `enum_cls`.

    The call is idempotent: when a member of that name already exists with the same value, it is returned unchanged.
    The new member behaves like a declared one: attribute access (`enum_cls.NAME`), lookup by value
    (`enum_cls("VALUE")`), iteration, `in`, comparison with the plain string, JSON, pickling and `copy.deepcopy`.

    Args:
        enum_cls (`type[enum.Enum]`):
            An enum class whose members are also `str` instances (`class X(str, enum.Enum)`).
        name (`str`):
            The member name, e.g. `"MUDPT"`.
        value (`str`, *optional*):
            The member value; defaults to `name`.

    Returns:
        `enum.Enum`: the (new or existing) member.

    Raises:
        ValueError: if `enum_cls` is not a `str` enum, or `name` or `value` is already taken by another member.
    """
    value = name if value is None else value
    if not (isinstance(enum_cls, enum.EnumMeta) and issubclass(enum_cls, str)):
        raise ValueError(f"{enum_cls!r} is not a str-based Enum class.")
    existing = enum_cls.__members__.get(name)
    if existing is not None:
        if existing.value != value:
            raise ValueError(f"{enum_cls.__name__}.{name} already exists with value {existing.value!r}, not {value!r}.")
        return existing
    if value in enum_cls._value2member_map_:
        raise ValueError(f"The value {value!r} is already used by {enum_cls._value2member_map_[value]!r}.")

    member = str.__new__(enum_cls, value)
    member._name_ = name
    member._value_ = value
    member.__objclass__ = enum_cls
    member.__init__(value)
    member._sort_order_ = len(enum_cls._member_names_)

    add_member = getattr(enum_cls, "_add_member_", None)  # Python >= 3.13
    if add_member is not None:
        add_member(name, member)  # sets the class attribute and `_member_map_`, nothing else
    else:
        enum_cls._member_map_[name] = member
        # Class attribute access; EnumMeta.__setattr__ would refuse names that look like members, so go through type.
        type.__setattr__(enum_cls, name, member)
    enum_cls._member_names_.append(name)  # iteration and len()
    enum_cls._value2member_map_[value] = member  # lookup by value
    return member
