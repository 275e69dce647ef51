"""mudpt-peft: MuDPT (multi-modal deep-symphysis prompt tuning) as a PEFT method for CLIP-like models.

Importing this package registers the method with peft, so that `peft.get_peft_model(model, MuDPTConfig(...))`,
`PeftModel.from_pretrained` and `PeftConfig.from_pretrained` work with `"peft_type": "MUDPT"` adapters.
"""

from . import hub
from ._peft_type import MUDPT_PEFT_TYPE, MUDPT_PREFIX
from ._registration import register_mudpt
from ._version import __version__ as __version__
from .adapter_files import allow_pickled_weights
from .classifier import PromptClassifier
from .config import MuDPTConfig
from .families import (
    ALTCLIP_SPEC,
    CHINESE_CLIP_SPEC,
    CLIP_SPEC,
    METACLIP_2_SPEC,
    SIGLIP2_SPEC,
    SIGLIP_SPEC,
    FamilySpec,
    get_family_spec,
    register_family,
    registered_families,
    supported_model_classes,
)
from .injection import InjectionModel
from .model import MuDPTModel
from .model_card import write_model_card

register_mudpt()


# Imported on first use: the trainer pulls in `transformers.Trainer` and accelerate, and `python -m
# mudpt_peft.convert` must not find its module imported already.
_LAZY_EXPORTS = {
    "convert_official": ".convert",
    "PromptTuningTrainer": ".trainer",
    "default_training_arguments": ".trainer",
    "ImageClassificationCollator": ".data",
    "few_shot": ".data",
    "base_to_new": ".data",
    "evaluate": ".evaluation",
    "harmonic_mean": ".evaluation",
    "alignment": ".metrics",
}


def __getattr__(name: str):
    if name in _LAZY_EXPORTS:
        import importlib

        return getattr(importlib.import_module(_LAZY_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY_EXPORTS})


__all__ = [
    "ALTCLIP_SPEC",
    "CHINESE_CLIP_SPEC",
    "CLIP_SPEC",
    "METACLIP_2_SPEC",
    "SIGLIP2_SPEC",
    "SIGLIP_SPEC",
    "registered_families",
    "MUDPT_PEFT_TYPE",
    "MUDPT_PREFIX",
    "FamilySpec",
    "InjectionModel",
    "MuDPTConfig",
    "MuDPTModel",
    "PromptClassifier",
    "allow_pickled_weights",
    "hub",
    "write_model_card",
    *_LAZY_EXPORTS,
    "get_family_spec",
    "register_family",
    "register_mudpt",
    "supported_model_classes",
]
