"""Registration of MuDPT with peft (`PeftType.MUDPT` and the config/tuner mappings)."""

from __future__ import annotations

from peft.utils import PeftType

from ._enum import extend_str_enum

#: The peft type of MuDPT adapters (`"MUDPT"` in `adapter_config.json`).
MUDPT_PEFT_TYPE = extend_str_enum(PeftType, "MUDPT")

#: The prefix of every MuDPT parameter name, and of the tensors in `adapter_model.safetensors`.
MUDPT_PREFIX = "mudpt_"


def register_mudpt() -> None:
    """Register MuDPT with peft, once.

    Afterwards `get_peft_model`, `PeftModel.from_pretrained` and `PeftConfig.from_pretrained` accept
    `"peft_type": "MUDPT"`, and a plain `PeftModel.save_pretrained` / `push_to_hub` of MuDPT adapters writes the
    MuDPT model card and the weights' fingerprint (see `mudpt_peft._peft_hooks`). Calling it again is a no-op; if
    the registered classes come from an earlier import of this package (e.g. after `importlib.reload`), the mappings
    are pointed at the current classes.
    """
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils import register_peft_method

    from ._peft_hooks import install
    from .config import MuDPTConfig
    from .model import MuDPTModel

    install()  # MuDPT model card and weights fingerprint for plain save_pretrained / push_to_hub
    if MUDPT_PEFT_TYPE not in PEFT_TYPE_TO_CONFIG_MAPPING:
        register_peft_method(name="mudpt", config_cls=MuDPTConfig, model_cls=MuDPTModel, prefix=MUDPT_PREFIX)
        return
    registered = PEFT_TYPE_TO_CONFIG_MAPPING[MUDPT_PEFT_TYPE]
    if registered is not MuDPTConfig and registered.__qualname__ != MuDPTConfig.__qualname__:
        raise ValueError(f"The peft type MUDPT is already registered to another method ({registered!r}).")
    PEFT_TYPE_TO_CONFIG_MAPPING[MUDPT_PEFT_TYPE] = MuDPTConfig
    PEFT_TYPE_TO_TUNER_MAPPING[MUDPT_PEFT_TYPE] = MuDPTModel
    PEFT_TYPE_TO_PREFIX_MAPPING[MUDPT_PEFT_TYPE] = MUDPT_PREFIX
