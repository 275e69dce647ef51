"""MuDPT's peft type and parameter prefix: the two names every other module agrees on."""

from __future__ import annotations

from peft.utils import PeftType

from ._enum import extend_str_enum

#: The peft type of MuDPT adapters (`"MUDPT"` in `adapter_config.json`).
MUDPT_PEFT_TYPE = extend_str_enum(PeftType, "MUDPT")

#: The prefix of every MuDPT parameter name, and of the tensors in `adapter_model.safetensors`.
MUDPT_PREFIX = "mudpt_"


def peft_type_value(peft_type: object) -> object:
    """`"LORA"` for `PeftType.LORA` (whose `str()` is `"PeftType.LORA"`) and for `"LORA"`."""
    return getattr(peft_type, "value", peft_type)
