"""mudpt-peft: MuDPT (multi-modal deep-symphysis prompt tuning) as a PEFT method for CLIP-like models.

Importing this package registers the method with peft, so that `peft.get_peft_model(model, MuDPTConfig(...))`,
`PeftModel.from_pretrained` and `PeftConfig.from_pretrained` work with `"peft_type": "MUDPT"` adapters.
"""

from ._registration import MUDPT_PEFT_TYPE, MUDPT_PREFIX, register_mudpt
from .classifier import PromptClassifier
from .config import MuDPTConfig
from .families import CLIP_SPEC, FamilySpec, get_family_spec, register_family, supported_model_classes
from .injection import InjectionModel
from .model import MuDPTModel

register_mudpt()


def __getattr__(name: str):
    # imported lazily so that `python -m mudpt_peft.convert` does not find the module imported already
    if name == "convert_official":
        from .convert import convert_official

        return convert_official
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "CLIP_SPEC",
    "MUDPT_PEFT_TYPE",
    "MUDPT_PREFIX",
    "FamilySpec",
    "InjectionModel",
    "MuDPTConfig",
    "MuDPTModel",
    "PromptClassifier",
    "convert_official",
    "get_family_spec",
    "register_family",
    "register_mudpt",
    "supported_model_classes",
]
