"""Registration of MuDPT with peft (`PeftType.MUDPT` and the config/tuner mappings)."""

from __future__ import annotations

from ._peft_type import MUDPT_PEFT_TYPE, MUDPT_PREFIX

__all__ = ["MUDPT_PEFT_TYPE", "MUDPT_PREFIX", "register_mudpt"]


def register_mudpt() -> None:
    """Register MuDPT with peft, once.

    Afterwards `get_peft_model`, `PeftModel.from_pretrained` and `PeftConfig.from_pretrained` accept
    `"peft_type": "MUDPT"`. Nothing of peft or transformers is patched: what MuDPT adds to saving and loading goes
    through peft's own extension points (the config's `save_pretrained`, the tuner's state-dict hooks). Calling it
    again is a no-op; if the registered classes come from an earlier import of this package (e.g. after
    `importlib.reload`), the mappings are pointed at the current classes.
    """
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils import register_peft_method

    from .config import MuDPTConfig  # looked up on each call: the current classes after a reload
    from .model import MuDPTModel

    if MUDPT_PEFT_TYPE not in PEFT_TYPE_TO_CONFIG_MAPPING:
        register_peft_method(name="mudpt", config_cls=MuDPTConfig, model_cls=MuDPTModel, prefix=MUDPT_PREFIX)
        return
    registered = PEFT_TYPE_TO_CONFIG_MAPPING[MUDPT_PEFT_TYPE]
    if registered is not MuDPTConfig and registered.__qualname__ != MuDPTConfig.__qualname__:
        raise ValueError(f"The peft type MUDPT is already registered to another method ({registered!r}).")
    PEFT_TYPE_TO_CONFIG_MAPPING[MUDPT_PEFT_TYPE] = MuDPTConfig
    PEFT_TYPE_TO_TUNER_MAPPING[MUDPT_PEFT_TYPE] = MuDPTModel
    PEFT_TYPE_TO_PREFIX_MAPPING[MUDPT_PEFT_TYPE] = MUDPT_PREFIX
