"""The prompt-learning methods the tuner runs, in one table: each method's config preset, training recipe, card name
and official code.

`MuDPTConfig.for_method`, `default_training_arguments`, the model card, `convert_official` and the benchmark scripts
all read [`METHODS`]; adding a method is one row here (plus a [`~mudpt_peft.fusion.Fusion`] if it couples the towers
in a new way).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from .families import get_family_spec

__all__ = ["METHODS", "Method", "card_tags", "method_of", "normalize_method"]


@dataclass(frozen=True)
class Method:
    """One prompt-learning method.

    Args:
        name (`str`): The method's name (`MuDPTConfig.for_method(name)`), also its tag in model cards.
        preset (`Mapping`): The `MuDPTConfig` fields of the method, with its paper's defaults.
        recipe (`Mapping`): Its training recipe: `learning_rate`, `num_train_epochs`, `per_device_train_batch_size`
            (see `mudpt_peft.trainer.default_training_arguments`).
        official (`str`, *optional*): The official code whose checkpoints `convert_official` converts to this
            method, or `None`.
        n_ctx_with_ctx_init (`int`, *optional*): The `n_ctx` of the preset when `ctx_init` is given (CoOp: 4, the
            tokens of "a photo of a"), unless `n_ctx` is given too.
        recipe_source (`str`): Where the recipe comes from.
        objective (`str`, defaults to `"cross_entropy"`): Its training objective, a key of
            `mudpt_peft.losses.OBJECTIVES` (`PromptTuningTrainer(..., objective=name)`).
        adapter (`str`, *optional*): The method whose adapter this one trains with another objective (KgCoOp: CoOp's),
            or `None`; `method_of` names that method for such an adapter, which alone cannot tell them apart.
    """

    name: str
    preset: Mapping[str, Any]
    recipe: Mapping[str, float | int]
    official: str | None = None
    n_ctx_with_ctx_init: int | None = None
    recipe_source: str = "official"
    objective: str = "cross_entropy"
    adapter: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "preset", MappingProxyType(dict(self.preset)))
        object.__setattr__(self, "recipe", MappingProxyType(dict(self.recipe)))

    def config_fields(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
        """The preset with `overrides` applied (and `n_ctx_with_ctx_init` where it applies)."""
        fields = dict(self.preset)
        initialised = overrides.get("ctx_init") or overrides.get("ctx_init_token_ids")
        if self.n_ctx_with_ctx_init is not None and initialised and "n_ctx" not in overrides:
            fields["n_ctx"] = self.n_ctx_with_ctx_init
        fields.update(overrides)
        return fields

    def matches(self, config: Any) -> bool:
        """Whether `config` implements this method: the same towers and coupling (depths and counts may differ); never
        for a method that trains another method's adapter (`adapter`)."""
        if self.adapter is not None:
            return False
        towers = (self.preset.get("text_prompts", True), self.preset.get("vision_prompts", True))
        return (config.text_prompts, config.vision_prompts) == towers and config.fusion == self.preset["fusion"]


_SGD_5 = {"num_train_epochs": 5, "per_device_train_batch_size": 4}
_SGD_10 = {"num_train_epochs": 10, "per_device_train_batch_size": 4}

_MMPL = "muzairkhattak/multimodal-prompt-learning trainers/"
_MEASURED = "MuDPT's, learning rate measured (benchmarks/lr_sweep.sh)"
_ROWS = (
    Method("coop", {"text_prompts": True, "vision_prompts": False, "fusion": "none", "depth": 1, "n_ctx": 16},
           {"learning_rate": 0.002, "num_train_epochs": 200, "per_device_train_batch_size": 32},
           official="KaiyangZhou/CoOp trainers/coop.py", n_ctx_with_ctx_init=4),
    # the official base-to-new config `vit_b16_c4_ep10_batch1_ctxv1.yaml`: pass ctx_init="a photo of a" for it
    Method("cocoop", {"text_prompts": True, "vision_prompts": False, "fusion": "meta_net", "depth": 1, "n_ctx": 4},
           {"learning_rate": 0.002, "num_train_epochs": 10, "per_device_train_batch_size": 1},
           official="KaiyangZhou/CoOp trainers/cocoop.py", n_ctx_with_ctx_init=4),
    Method("vpt", {"text_prompts": False, "vision_prompts": True, "fusion": "none", "depth": 12, "vision_n_ctx": 8},
           {"learning_rate": 0.0025, **_SGD_5}, official=_MMPL + "vpt.py"),
    Method("ivlp", {"fusion": "none", "depth": 9, "n_ctx": 2}, {"learning_rate": 0.0035, **_SGD_5},
           official=_MMPL + "independentVL.py"),
    Method("maple", {"fusion": "text_to_vision", "depth": 9, "n_ctx": 2}, {"learning_rate": 0.0035, **_SGD_5},
           official=_MMPL + "maple.py"),
    Method("mudpt", {"fusion": "injection", "depth": 9, "n_ctx": 2}, {"learning_rate": 0.0025, **_SGD_10},
           official="YzM1a0/MuDPT trainers/uumudpt.py"),
    # the current official `trainers/mudpt.py` ("3. finish uumudpt" on) and its early revisions
    Method("mudpt-linear", {"fusion": "shared_linear", "depth": 9, "n_ctx": 2}, {"learning_rate": 0.005, **_SGD_10},
           official="YzM1a0/MuDPT trainers/mudpt.py (current)", recipe_source=_MEASURED + ", per-layer variant"),
    Method("mudpt-linear-v1", {"fusion": "linear", "depth": 9, "n_ctx": 2}, {"learning_rate": 0.005, **_SGD_10},
           official="YzM1a0/MuDPT trainers/mudpt.py (early revisions)", recipe_source=_MEASURED),
    Method("cross-attention", {"fusion": "cross_attention", "depth": 9, "n_ctx": 2},
           {"learning_rate": 0.00125, **_SGD_10}, recipe_source=_MEASURED),
    # CoOp's / IVLP's adapters with a regularised objective (`mudpt_peft.losses`)
    Method("kgcoop", {"text_prompts": True, "vision_prompts": False, "fusion": "none", "depth": 1, "n_ctx": 4,
                      "ctx_init": "a photo of a"},
           {"learning_rate": 0.002, "num_train_epochs": 100, "per_device_train_batch_size": 128},
           official="htyao89/KgCoOp trainers/kgcoop.py",
           recipe_source="htyao89/KgCoOp configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml", objective="kgcoop",
           adapter="coop"),
    Method("promptsrc", {"fusion": "none", "depth": 9, "n_ctx": 4, "ctx_init": "a photo of a"},
           {"learning_rate": 0.0025, "num_train_epochs": 20, "per_device_train_batch_size": 4},
           official="muzairkhattak/PromptSRC trainers/promptsrc.py",
           recipe_source="muzairkhattak/PromptSRC configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml",
           objective="promptsrc", adapter="ivlp"),
)  # fmt: skip

#: Every method, by name. Recipes: the official ones where they exist (CoOp: `configs/trainers/CoOp/vit_b16*.yaml`;
#: CoCoOp: `configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1*.yaml`;
#: IVLP, MaPLe, VPT: the MaPLe repository's `configs/trainers/*/vit_b16_c2_ep5_batch4_*.yaml`; MuDPT: the MuDPT
#: paper), kept where a learning-rate sweep on the embedded tiny CLIP confirmed them (within 1 point of the best of
#: 0.5x / 1x / 2x, see docs/train.md); the measured best for the methods without an official recipe.
METHODS: Mapping[str, Method] = MappingProxyType({method.name: method for method in _ROWS})


def normalize_method(method: str, allowed: Mapping[str, Any] | None = None) -> str:
    """The [`METHODS`] key of a method name (case-insensitive, `_` and `-` interchangeable); a `ValueError` that
    lists the names otherwise. `allowed` narrows the accepted names (e.g. the methods with official code)."""
    allowed = METHODS if allowed is None else allowed
    key = method.strip().lower().replace("_", "-") if isinstance(method, str) else None
    if key not in allowed:
        raise ValueError(f"Unknown method {method!r}; choose one of {', '.join(allowed)}.")
    return key


def method_of(config: Any) -> str:
    """The method a config implements, as a [`METHODS`] name, from its towers and `fusion` (depths and token counts
    may differ from the preset's)."""
    for method in METHODS.values():
        if method.matches(config):
            return method.name
    raise ValueError(f"No method uses fusion={config.fusion!r} with these towers.")  # the config checks prevent it


def card_tags(model: Any, configs: Sequence[Any]) -> list[str]:
    """The tags of a MuDPT adapter's card: `mudpt`, `prompt-tuning`, the base model's family and the methods."""
    try:
        family = get_family_spec(model).name
    except ValueError:
        family = "clip"
    return ["mudpt", "prompt-tuning", family, *sorted({method_of(config) for config in configs})]
