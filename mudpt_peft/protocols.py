"""The CoOp benchmark's four protocols and each method's official recipe for each, in one table.

A *protocol* says what is trained on what and evaluated where (few-shot learning, base-to-new generalisation,
cross-dataset transfer, domain generalisation); a *recipe* says how a method is trained in it: the overrides of the
method's preset ([`~mudpt_peft.methods.METHODS`]), the class-prompt template, the learning rate, epochs and batch
size. Every row names the official config and script it comes from. Where a method has no official config for a
protocol, its row says which recipe is used instead and why (`official=False`); `python -m mudpt_peft.reproduce`
records both in every result.

The template and `ctx_init` of a row rebuild the official prompt of the method's code. `mudpt_peft` inserts the
layer-0 text prompts right after BOS, in front of the template's words, so the official `prompt_prefix + " " + name
+ "."` with the first `n_ctx` tokens replaced by learned vectors is the template without those words: CoOp's
`"X X ... X {name}."` and MuDPT's `"a photo {name}."` (the first `N_CTX = 2` words of `"a photo of a"`) are
`"{}."`, MaPLe's and IVLP's `"a photo of a {name}."` with `"a photo"` replaced is `"of a {}."`, VPT's fixed
`"a photo of a {name}."` is `"a photo of a {}."`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .benchmark_datasets import BENCHMARKS, get_benchmark
from .methods import METHODS, normalize_method

__all__ = [
    "PROTOCOLS",
    "RECIPES",
    "Protocol",
    "ProtocolRecipe",
    "Recipe",
    "get_protocol",
    "images_per_run",
    "recipe_for",
    "trained_classes",
    "training_steps",
]

#: The 11 datasets of few-shot learning, base-to-new generalisation and cross-dataset transfer, in the tables' order.
ELEVEN_DATASETS = tuple(name for name, row in BENCHMARKS.items() if not row.test_only)
#: ImageNet's 4 variants of domain generalisation (test sets only).
IMAGENET_VARIANTS = tuple(name for name, row in BENCHMARKS.items() if row.test_only)


@dataclass(frozen=True)
class Protocol:
    """One protocol of the CoOp benchmark.

    Args:
        name (`str`): The protocol's name on the command line.
        title (`str`): Its title in the tables.
        datasets (`tuple[str, ...]`): The datasets it runs by default: trained and tested on (`fewshot`, `base2new`),
            or the targets the source's adapter is evaluated on (`cross_dataset`, `domain_generalization`).
        shots (`tuple[int, ...]`): The shots per class it runs by default.
        source (`str`, *optional*): The dataset the transfer protocols train on (ImageNet); `None` for the others.
        subsample (`str`, defaults to `"all"`): The classes trained on (`"base"` for base-to-new, see
            [`~mudpt_peft.benchmark_datasets.protocol_splits`]).
        recipes (`str`, *optional*): The protocol whose recipes it uses (domain generalisation evaluates the
            cross-dataset protocol's ImageNet adapters); defaults to its own name.
        tables (`str`): The papers' tables it reproduces (the table numbers as CoOp's README.md and COCOOP.md give
            them).
    """

    name: str
    title: str
    datasets: tuple[str, ...]
    shots: tuple[int, ...]
    source: str | None = None
    subsample: str = "all"
    recipes: str = ""
    tables: str = ""

    def __post_init__(self) -> None:
        if not self.recipes:
            object.__setattr__(self, "recipes", self.name)

    @property
    def is_transfer(self) -> bool:
        """Whether one adapter trained on `source` is evaluated on other datasets."""
        return self.source is not None


_PROTOCOLS = (
    Protocol("fewshot", "Few-shot learning", ELEVEN_DATASETS, (1, 2, 4, 8, 16),
             tables="CoOp (IJCV 2022) few-shot learning on 11 datasets; MuDPT's few-shot comparison"),
    Protocol("base2new", "Base-to-new generalisation", ELEVEN_DATASETS, (16,), subsample="base",
             tables="CoCoOp (CVPR 2022) Table 1; the base-to-novel tables of MaPLe and PromptSRC"),
    Protocol("cross_dataset", "Cross-dataset transfer", ELEVEN_DATASETS[1:], (16,), source="imagenet",
             tables="CoCoOp Table 2; MaPLe's cross-dataset table"),
    Protocol("domain_generalization", "Domain generalisation", IMAGENET_VARIANTS, (16,), source="imagenet",
             recipes="cross_dataset", tables="CoOp Table 1, CoCoOp Table 3; MaPLe's domain generalisation table"),
)  # fmt: skip

#: The protocols by name: `fewshot`, `base2new`, `cross_dataset`, `domain_generalization`.
PROTOCOLS: Mapping[str, Protocol] = MappingProxyType({protocol.name: protocol for protocol in _PROTOCOLS})


def get_protocol(name: str) -> Protocol:
    """The [`PROTOCOLS`] row of `name`; a `ValueError` that lists the names otherwise."""
    if name not in PROTOCOLS:
        raise ValueError(f"Unknown protocol {name!r}; choose one of {', '.join(PROTOCOLS)}.")
    return PROTOCOLS[name]


@dataclass(frozen=True)
class ProtocolRecipe:
    """One row of the recipe table: how a method is trained in a protocol.

    Args:
        protocol (`str`): `"fewshot"`, `"base2new"` or `"cross_dataset"` (domain generalisation uses the last).
        method (`str`): A [`~mudpt_peft.methods.METHODS`] name.
        training (`Mapping`): `learning_rate`, `num_train_epochs` and `per_device_train_batch_size`.
        template (`str`): The class-prompt template the adapter is trained and evaluated with.
        source (`str`): The official config and script the row comes from (repository and path).
        official (`bool`, defaults to `True`): Whether the method has an official config for this protocol; `False`:
            `note` says which recipe is used instead and why.
        config (`Mapping`, *optional*): `MuDPTConfig` overrides of the method's preset (e.g. `ctx_init`, `depth`).
        epochs_by_shots (`tuple[tuple[int, int], ...]`, *optional*): `(max shots, epochs)` pairs in increasing order:
            the epochs of the first pair whose shots are `>=` the run's (the last pair for more shots).
        dataset_training (`Mapping`, *optional*): Training overrides per dataset, applied last (CoOp: 50 epochs on
            ImageNet).
        note (`str`, *optional*): What else to know about the row.
        objective (`Mapping`, *optional*): Keyword arguments of the method's training objective
            (`mudpt_peft.losses.OBJECTIVES`), e.g. PromptSRC's Gaussian aggregation per protocol.
    """

    protocol: str
    method: str
    training: Mapping[str, float | int]
    template: str
    source: str
    official: bool = True
    config: Mapping[str, Any] = field(default_factory=dict)
    epochs_by_shots: tuple[tuple[int, int], ...] = ()
    dataset_training: Mapping[str, Mapping[str, float | int]] = field(default_factory=dict)
    note: str = ""
    objective: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("training", "config", "dataset_training", "objective"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))


@dataclass(frozen=True)
class Recipe:
    """A method's recipe for one run: its [`ProtocolRecipe`] resolved for a dataset and a shot count.

    Args:
        protocol (`str`): The protocol whose recipe it is (`"cross_dataset"` for domain generalisation).
        method (`str`): The method.
        dataset (`str`): The dataset trained on.
        shots (`int`): Shots per class.
        config (`dict`): The `MuDPTConfig` fields: the preset with the row's overrides (`MuDPTConfig.for_method(
            method, **config)` builds the adapter's config).
        training (`dict`): `learning_rate`, `num_train_epochs`, `per_device_train_batch_size`.
        template (`str`): The class-prompt template.
        source (`str`): Where the recipe comes from.
        official (`bool`): Whether it is the method's official recipe for the protocol.
        note (`str`): What else to know.
        objective (`dict`): Keyword arguments of the method's training objective (empty: its defaults).
    """

    protocol: str
    method: str
    dataset: str
    shots: int
    config: dict[str, Any]
    training: dict[str, float | int]
    template: str
    source: str
    official: bool
    note: str
    objective: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The recipe as JSON-ready data (what `python -m mudpt_peft.reproduce` records)."""
        return {
            "protocol": self.protocol,
            "method": self.method,
            "dataset": self.dataset,
            "shots": self.shots,
            "config": dict(self.config),
            "training": dict(self.training),
            "template": self.template,
            "source": self.source,
            "official": self.official,
            "note": self.note,
            "objective": dict(self.objective),
        }


_MMPL = "muzairkhattak/multimodal-prompt-learning"
_COOP = "KaiyangZhou/CoOp"
_MUDPT = "YzM1a0/MuDPT"
_SGD4 = {"per_device_train_batch_size": 4}

_COOP_FEWSHOT = (
    f"{_COOP} COOP.md (few-shot learning: the *_ep50 config for 1 shot, *_ep100 for 2 and 4 shots, the 200-epoch "
    "config for 8 and 16 shots; *_ep50 for ImageNet in every setting), configs/trainers/CoOp/vit_b16_ep50.yaml, "
    "vit_b16_ep100.yaml, vit_b16.yaml (SGD, LR 0.002, batch 32), scripts/coop/main.sh (16 context tokens at the "
    "front, class token at the end, no class-specific context), trainers/coop.py (prompt 'X X ... X {name}.')"
)
_COOP_B2N = (
    f"{_COOP} scripts/cocoop/base2new_train.sh (with TRAINER=CoOp: CFG=vit_b16_ctxv1, vit_b16_ep50_ctxv1 for "
    "ImageNet), configs/trainers/CoOp/vit_b16_ctxv1.yaml (200 epochs, LR 0.002, batch 32, CTX_INIT 'a photo of a'), "
    "vit_b16_ep50_ctxv1.yaml; trainers/coop.py (the CTX_INIT words are the context: 'X X X X {name}.')"
)
_COOP_XD = (
    f"{_COOP} scripts/cocoop/xd_train.sh (with TRAINER=CoOp on ImageNet: CFG=vit_b16_ep50_ctxv1), "
    "configs/trainers/CoOp/vit_b16_ep50_ctxv1.yaml (50 epochs, LR 0.002, batch 32, CTX_INIT 'a photo of a')"
)
_COCOOP = (
    f"{_COOP} configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml (4 context tokens, CTX_INIT 'a photo of a', "
    "SGD, LR 0.002, 10 epochs, batch 1), trainers/cocoop.py (the CTX_INIT words are the context: 'X X X X {name}.')"
)
_VPT = (
    f"{_MMPL} configs/trainers/VPT/vit_b16_c2_ep5_batch4_4.yaml (8 visual prompts, depth 12, LR 0.0025, 5 epochs, "
    "batch 4), trainers/vpt.py (fixed text 'a photo of a {name}.')"
)
_IVLP = (
    f"{_MMPL} configs/trainers/IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml (2 text and 2 visual prompts, "
    "PROMPT_DEPTH_TEXT and PROMPT_DEPTH_VISION 12, LR 0.0035, 5 epochs, batch 4, CTX_INIT 'a photo of a'), "
    "trainers/independentVL.py (the first N_CTX_TEXT tokens of 'a photo of a {name}.' learned)"
)
_MAPLE = (
    f"{_MMPL} configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml (2 prompts, depth 9, LR 0.0035, 5 epochs, "
    "batch 4, CTX_INIT 'a photo of a'), trainers/maple.py (the first N_CTX tokens of 'a photo of a {name}.' learned)"
)
_MAPLE_XD = (
    f"{_MMPL} configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx_cross_datasets.yaml (depth 3, LR 0.0026, 2 epochs, "
    "batch 4), scripts/maple/xd_train_maple.sh, xd_test_maple.sh (--load-epoch 2, also for the ImageNet variants)"
)
_MUDPT_SCRIPTS = {
    "fewshot": "scripts/mudpt/run_b16_cls.sh (shots 16 8 4 2 1, seeds 3 2 1) names configs/trainers/MuDPT/"
    "vit_b16_bz4_ep10_nctx4_depth9.yaml (SGD, LR 0.0025, 10 epochs, batch 4)",
    "base2new": "scripts/mudpt/train_base2new.sh and test_base2new.sh (--load_epoch 10) name configs/trainers/MuDPT/"
    "vit_b16_bz4_ep10_nctx4_depth9.yaml (LR 0.0025, 10 epochs, batch 4)",
    "cross_dataset": "scripts/mudpt/xd_test1.sh and mudpt_eval.sh (--load_epoch 5) name vit_b16_bz4_ep5_nctx2_depth9, "
    "which is configs/trainers/UMuDPT/vit_b16_bz4_ep5_nctx2_depth9.yaml (LR 0.0025, 5 epochs, batch 4; "
    "configs/trainers/MuDPT/ has no such file)",
}


def _mudpt_source(protocol: str, trainer: str) -> str:
    return (
        f"{_MUDPT} {_MUDPT_SCRIPTS[protocol]}; the scripts set TRAINER=MuDPT, the class of trainers/mudpt.py; "
        f"prompt as {trainer} builds it (the first N_CTX words of CTX_INIT 'a photo of a', then '{{name}}.')"
    )


_MUDPT_NOTE = (
    "n_ctx and depth are the preset's (2, 9): the official configs' TRAINER.MAPLE section (N_CTX 4 in the config the "
    "few-shot and base-to-new scripts name, 2 in the transfer one; DEEP_PROMPT_DEPTH 9) is read by neither "
    "trainers/mudpt.py (TRAINER.MUDPT) nor trainers/uumudpt.py (TRAINER.UUMUDPT; both N_CTX 2 and "
    "DEEP_PROMPT_DEPTH 8 by default in train.py), and train.py defines no TRAINER.MAPLE, so the published runs' "
    "prompt settings cannot be read off the repository; the configs' OPTIM and DATALOADER sections are used"
)
_INJECTION_NOTE = (
    "no official script runs trainers/uumudpt.py (the Injection Model of the paper, this preset): the MuDPT "
    "scripts run trainers/mudpt.py (the `mudpt-linear` preset); their recipe is used for the paper's method. "
)
_NO_FEWSHOT = (
    "no official few-shot config (the method's repository trains base-to-new, cross-dataset and domain "
    "generalisation only): its base-to-new config, the only one it has, is used"
)
_A_PHOTO = {"ctx_init": "a photo"}  # the first N_CTX = 2 words of CTX_INIT "a photo of a"

_ROWS: list[ProtocolRecipe] = [
    # CoOp
    ProtocolRecipe("fewshot", "coop", {"learning_rate": 0.002, "per_device_train_batch_size": 32}, "{}.",
                   _COOP_FEWSHOT, epochs_by_shots=((1, 50), (4, 100), (16, 200)),
                   dataset_training={"imagenet": {"num_train_epochs": 50}}),
    ProtocolRecipe("base2new", "coop",
                   {"learning_rate": 0.002, "num_train_epochs": 200, "per_device_train_batch_size": 32}, "{}.",
                   _COOP_B2N, config={"ctx_init": "a photo of a"},
                   dataset_training={"imagenet": {"num_train_epochs": 50}}),
    ProtocolRecipe("cross_dataset", "coop",
                   {"learning_rate": 0.002, "num_train_epochs": 50, "per_device_train_batch_size": 32}, "{}.",
                   _COOP_XD, config={"ctx_init": "a photo of a"}),
    # CoCoOp: one config for base-to-new and cross-dataset (its repository has no few-shot setting)
    *(ProtocolRecipe(protocol, "cocoop", {"learning_rate": 0.002, "num_train_epochs": 10,
                                          "per_device_train_batch_size": 1}, "{}.",
                     _COCOOP + (f", scripts/cocoop/{script}" if script else ""), official=bool(script),
                     config={"ctx_init": "a photo of a"}, note="" if script else _NO_FEWSHOT)
      for protocol, script in (("fewshot", ""), ("base2new", "base2new_train.sh"), ("cross_dataset", "xd_train.sh"))),
    # KgCoOp: CoOp's prompts with the knowledge-guided loss; its repository's ViT-B/16 config for every protocol
    *(ProtocolRecipe(protocol, "kgcoop", dict(METHODS["kgcoop"].recipe), "{}.",
                     f"{METHODS['kgcoop'].recipe_source} (the preset's recipe), trainers/kgcoop.py (the CTX_INIT words "
                     "are the context: 'X X X X {name}.')", official=False, config={"ctx_init": "a photo of a"},
                     note="one ViT-B/16 config of the repository for every protocol; its per-protocol scripts are not "
                     "cited here")
      for protocol in ("fewshot", "base2new", "cross_dataset")),
    # PromptSRC: IVLP prompts with self-regularisation; one config per protocol, with its Gaussian aggregation
    *(ProtocolRecipe(protocol, "promptsrc", {"learning_rate": 0.0025, "num_train_epochs": epochs, **_SGD4}, "{}.",
                     f"muzairkhattak/PromptSRC configs/trainers/PromptSRC/{config_file}.yaml (4+4 prompts, CTX_INIT "
                     f"'a photo of a', depth {depth}, LR 0.0025, {epochs} epochs, batch 4, GPA mean {mean} / std "
                     f"{std}), scripts/promptsrc/{script}", config={"ctx_init": "a photo of a", "depth": depth},
                     objective={"gpa_mean": mean, "gpa_std": std},
                     note="few-shot: the config's GPA 30 / 30 (its comment gives 45 / 5 for fine-grained datasets)"
                     if protocol == "fewshot" else "")
      for protocol, config_file, script, depth, epochs, mean, std in (
          ("fewshot", "vit_b16_c2_ep50_batch4_4+4ctx_few_shot", "few_shot.sh", 9, 50, 30, 30),
          ("base2new", "vit_b16_c2_ep20_batch4_4+4ctx", "base2new_train.sh", 9, 20, 15, 1),
          ("cross_dataset", "vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets", "xd_train.sh", 3, 20, 6, 10))),
    # VPT (deep vision prompting): one config for every protocol
    *(ProtocolRecipe(protocol, "vpt", {"learning_rate": 0.0025, "num_train_epochs": 5, **_SGD4}, "a photo of a {}.",
                     _VPT + (f", scripts/vpt/{script}" if script else ""), official=bool(script),
                     note="" if script else _NO_FEWSHOT)
      for protocol, script in (("fewshot", ""), ("base2new", "base2new_train_vpt.sh"),
                               ("cross_dataset", "xd_train_vpt.sh"))),
    # IVLP (independent vision-language prompting)
    *(ProtocolRecipe(protocol, "ivlp", {"learning_rate": 0.0035, "num_train_epochs": 5, **_SGD4}, "of a {}.",
                     _IVLP + (f", scripts/independent-vlp/{script}" if script else ""), official=bool(script),
                     config={**_A_PHOTO, "depth": 12},
                     note="depth 12 as in the config (the `ivlp` preset has depth 9)" + ("" if script else "; "
                                                                                          + _NO_FEWSHOT))
      for protocol, script in (("fewshot", ""), ("base2new", "base2new_train_ivlp.sh"),
                               ("cross_dataset", "xd_train_ivlp.sh"))),
    # MaPLe
    ProtocolRecipe("fewshot", "maple", {"learning_rate": 0.0035, "num_train_epochs": 5, **_SGD4}, "of a {}.", _MAPLE,
                   official=False, config=_A_PHOTO, note=_NO_FEWSHOT),
    ProtocolRecipe("base2new", "maple", {"learning_rate": 0.0035, "num_train_epochs": 5, **_SGD4}, "of a {}.",
                   _MAPLE + ", scripts/maple/base2new_train_maple.sh", config=_A_PHOTO),
    ProtocolRecipe("cross_dataset", "maple", {"learning_rate": 0.0026, "num_train_epochs": 2, **_SGD4}, "of a {}.",
                   _MAPLE_XD, config={**_A_PHOTO, "depth": 3}),
    # MuDPT: the scripts' recipe, for the linear variant they run and for the Injection Model of the paper
    *(ProtocolRecipe(protocol, "mudpt", {"learning_rate": 0.0025, "num_train_epochs": epochs, **_SGD4}, "{}.",
                     _mudpt_source(protocol, "trainers/uumudpt.py"), official=False, config=_A_PHOTO,
                     note=_INJECTION_NOTE + _MUDPT_NOTE)
      for protocol, epochs in (("fewshot", 10), ("base2new", 10), ("cross_dataset", 5))),
    *(ProtocolRecipe(protocol, "mudpt-linear", {"learning_rate": 0.0025, "num_train_epochs": epochs, **_SGD4}, "{}.",
                     _mudpt_source(protocol, "trainers/mudpt.py"), config=_A_PHOTO,
                     note="the learning rate is the scripts' 0.0025, not the preset's measured 0.005; " + _MUDPT_NOTE)
      for protocol, epochs in (("fewshot", 10), ("base2new", 10), ("cross_dataset", 5))),
]  # fmt: skip


def _preset_rows() -> list[ProtocolRecipe]:
    """The methods without any official config for any protocol: their preset recipe everywhere."""
    rows = []
    covered = {row.method for row in _ROWS}
    for name, method in METHODS.items():
        if name in covered:
            continue
        mudpt_code = (method.official or "").startswith(_MUDPT)
        for protocol in ("fewshot", "base2new", "cross_dataset"):
            rows.append(
                ProtocolRecipe(
                    protocol,
                    name,
                    dict(method.recipe),
                    "{}." if mudpt_code else "a photo of a {}.",
                    f"the `{name}` preset's recipe (mudpt_peft.methods.METHODS: {method.recipe_source})"
                    + (f"; prompt as {method.official} builds it" if mudpt_code else ""),
                    official=False,
                    config=_A_PHOTO if mudpt_code else {},
                    note=f"no official config is cited for this method: the preset's recipe (docs/train.md) is used, "
                    f"{'with the prompt of its official code' if mudpt_code else 'with the package default prompt'}",
                )
            )
    return rows


_ALL_ROWS = (*_ROWS, *_preset_rows())
#: The recipe table: `(protocol, method)` -> [`ProtocolRecipe`], for the protocols `fewshot`, `base2new` and
#: `cross_dataset` (which domain generalisation shares: the papers evaluate the cross-dataset ImageNet adapters on
#: ImageNet's variants) and every method of [`~mudpt_peft.methods.METHODS`].
RECIPES: Mapping[tuple[str, str], ProtocolRecipe] = MappingProxyType({(r.protocol, r.method): r for r in _ALL_ROWS})


def recipe_for(protocol: str, method: str, dataset: str, shots: int) -> Recipe:
    """A method's recipe for one run of a protocol.

    Args:
        protocol (`str`): A [`PROTOCOLS`] name.
        method (`str`): A [`~mudpt_peft.methods.METHODS`] name (case-insensitive, `_` or `-`).
        dataset (`str`): The dataset trained on (for the transfer protocols, the source).
        shots (`int`): Shots per class.

    Returns:
        [`Recipe`]: the preset with the row's overrides, the training arguments, template and sources.

    Example:

        ```py
        >>> recipe = recipe_for("cross_dataset", "maple", "imagenet", 16)
        >>> recipe.config["depth"], recipe.training
        (3, {'learning_rate': 0.0026, 'num_train_epochs': 2, 'per_device_train_batch_size': 4})
        ```
    """
    spec = get_protocol(protocol)
    key = normalize_method(method)
    dataset = get_benchmark(dataset).name
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise ValueError(f"`shots` must be an integer >= 1, got {shots!r}.")
    row = RECIPES[(spec.recipes, key)]
    training: dict[str, float | int] = dict(row.training)
    if row.epochs_by_shots:
        epochs = next((e for limit, e in row.epochs_by_shots if shots <= limit), row.epochs_by_shots[-1][1])
        training["num_train_epochs"] = epochs
    training.update(row.dataset_training.get(dataset, {}))
    return Recipe(
        protocol=spec.recipes,
        method=key,
        dataset=dataset,
        shots=shots,
        config=METHODS[key].config_fields(row.config),
        training=training,
        template=row.template,
        source=row.source,
        official=row.official,
        note=row.note,
        objective=dict(row.objective),
    )


def training_steps(examples: int, batch_size: int, epochs: int) -> int:
    """The optimizer steps of a run as Dassl counts them: `epochs` times `examples // batch_size` batches (its
    training loader drops the last incomplete batch when there is at least one full one), or one batch per epoch
    when there is none."""
    per_epoch = examples // batch_size if examples >= batch_size else 1
    return per_epoch * epochs


def images_per_run(num_classes: int, shots: int, epochs: int) -> int:
    """The training images a run reads: `num_classes * shots` per epoch (an upper bound: a class with fewer than
    `shots` training images keeps the ones it has)."""
    return num_classes * shots * epochs


def trained_classes(dataset: str, subsample: str) -> int:
    """The classes a run trains on, from the real dataset's class count (base-to-new: the first ⌈C/2⌉)."""
    count = get_benchmark(dataset).num_classes
    return math.ceil(count / 2) if subsample == "base" else count
