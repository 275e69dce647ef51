"""Which base model an adapter belongs to: the record every save writes, and the check every load makes.

An adapter's tensors can fit a base model it was not trained for (a CLIP adapter on a SigLIP model of the same
widths, or on a CLIP with other layer counts), and would then load without error. Every save of a MuDPT adapter
records the base model's family and geometry in `auto_mapping` of `adapter_config.json` ([`base_model_record`]), and
the tuner compares them with the model it is about to wrap ([`check_base_model`]) before it creates any weight.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ._utils import short_repr
from .families import get_family_spec

if TYPE_CHECKING:
    from .config import MuDPTConfig

__all__ = ["BASE_FAMILY_KEY", "BASE_GEOMETRY_KEY", "base_model_record", "check_base_model"]

#: The keys, inside `auto_mapping`, of the family name and the geometry (widths, layer counts) of the base model.
BASE_FAMILY_KEY = "mudpt_base_family"
BASE_GEOMETRY_KEY = "mudpt_base_geometry"


def _name(value: object) -> str:
    """A recorded name for a message: as it is when it is a short string, else cut short."""
    return value if isinstance(value, str) and len(value) <= 100 else short_repr(value, 100)


def base_model_record(model: Any) -> dict[str, Any]:
    """The family name and geometry (widths, layer counts) of a base model, as adapters record them in
    `auto_mapping` of `adapter_config.json` and [`check_base_model`] compares them."""
    spec = get_family_spec(model)
    return {BASE_FAMILY_KEY: spec.name, BASE_GEOMETRY_KEY: spec.geometry(model)}


def check_base_model(config: MuDPTConfig | Mapping[str, Any], model: Any) -> None:
    """Check that an adapter was saved for a base model like `model`, from what its config recorded.

    peft records the base model's class in `auto_mapping.base_model_class`; every save of a MuDPT adapter also records
    the family and geometry (widths and layer counts). An adapter whose tensors fit but that was trained for another
    family (e.g. a CLIP adapter on a SigLIP model of the same widths) or for a model with other layer
    counts would otherwise load without error; this raises a `ValueError` instead. Checks that nothing recorded are
    skipped. The tuner calls it before it creates any adapter weight, so `PeftModel.from_pretrained`, `load_adapter`
    and [`~mudpt_peft.PromptClassifier.from_pretrained`] refuse such an adapter and leave the model as it was.

    Args:
        config (`MuDPTConfig` or `dict`):
            The adapter's config (or the content of its `adapter_config.json`).
        model (`nn.Module`):
            The base model it is about to be loaded onto (not wrapped by peft).
    """
    auto_mapping = config.get("auto_mapping") if isinstance(config, Mapping) else getattr(config, "auto_mapping", None)
    if not isinstance(auto_mapping, Mapping):
        return
    base_name = config.get("base_model_name_or_path") if isinstance(config, Mapping) else None
    base_name = base_name or getattr(config, "base_model_name_or_path", None)
    # the values come from a file: quoted cut short (see `mudpt_peft.adapter_files.check_auto_mapping` for their types)
    hint = (
        f"Load it onto the base model it was trained for{f' ({short_repr(base_name)})' if base_name else ''}; to "
        "start a new adapter on this model from its config instead, set `config.auto_mapping = None` first."
    )
    recorded_class = auto_mapping.get("base_model_class")
    recorded_family = auto_mapping.get(BASE_FAMILY_KEY)
    actual = base_model_record(model)
    if recorded_family is not None and recorded_family != actual[BASE_FAMILY_KEY]:
        raise ValueError(
            f"This MuDPT adapter was saved for a {_name(recorded_class or recorded_family)} model (family "
            f"'{_name(recorded_family)}'), not for a {type(model).__name__} (family "
            f"'{actual[BASE_FAMILY_KEY]}'). {hint}"
        )
    known_class = isinstance(recorded_class, str) and recorded_class in {c.__name__ for c in type(model).__mro__}
    if recorded_family is None and recorded_class and not known_class:
        raise ValueError(
            f"This MuDPT adapter was saved for a {_name(recorded_class)} (`auto_mapping.base_model_class` in "
            f"adapter_config.json), not for a {type(model).__name__}. {hint}"
        )
    recorded_geometry = auto_mapping.get(BASE_GEOMETRY_KEY)
    if isinstance(recorded_geometry, Mapping):
        differences = [
            f"{key} {short_repr(recorded_geometry[key], 40)} (this model: {value})"
            for key, value in actual[BASE_GEOMETRY_KEY].items()
            if key in recorded_geometry and recorded_geometry[key] != value
        ]
        if differences:
            raise ValueError(f"This MuDPT adapter was saved for a base model with {', '.join(differences)}. {hint}")

