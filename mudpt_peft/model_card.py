"""The MuDPT model card (`README.md`) of a saved adapter, and the evaluation results it lists.

- [`write_model_card`]: the card for a folder where MuDPT adapters (or a prompt classifier) were saved: metadata
  (`library_name: peft`, base model, tags, `model-index`), the configuration, the evaluation results and a loading
  snippet. `mudpt_peft.hub.save_pretrained` / `push_to_hub` write it; a plain `PeftModel.save_pretrained` writes
  peft's own card, tagged by the tuner ([`card_tags`]).
- [`record_eval_result`] / [`recorded_eval_results`]: results kept with an adapter's config in memory until a card
  is written, in the one schema of [`EVAL_RESULT_KEYS`].
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from ._peft_type import MUDPT_PEFT_TYPE, peft_type_value
from ._version import __version__
from .adapter_files import CLASSIFIER_CONFIG_NAME, CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, TENSORS_FINGERPRINT_KEY
from .config import MuDPTConfig
from .layer import MuDPTLayer, MuDPTTower
from .methods import card_tags, method_of

if TYPE_CHECKING:
    from peft import PeftModel

    from .classifier import PromptClassifier

__all__ = [
    "EVAL_RESULT_KEYS",
    "card_tags",
    "method_preset",
    "normalize_eval_results",
    "record_eval_result",
    "recorded_eval_results",
    "write_model_card",
]

#: The install command of the model card (mudpt-peft is not on PyPI), as the README gives it.
INSTALL_COMMAND = 'pip install "mudpt-peft @ git+<the mudpt-peft repository>"   # or, in a clone: pip install .'

#: The attribute of an adapter's `MuDPTConfig` that holds its recorded evaluation results (not saved in the config).
RESULTS_ATTRIBUTE = "_mudpt_eval_results"


def method_preset(config: MuDPTConfig) -> str:
    """The method a config implements, as a [`MuDPTConfig.for_method`] name (see `mudpt_peft.methods.method_of`)."""
    return method_of(config)


#: The keys of an evaluation result (the one schema of `eval_results=` and [`record_eval_result`]).
EVAL_RESULT_KEYS = {
    "dataset": "the dataset name (required)",
    "accuracy": "top-1 accuracy in percent (required; `eval_accuracy` is accepted too)",
    "top5_accuracy": "top-5 accuracy in percent (or `eval_top5_accuracy`)",
    "shots": "training examples per class",
    "seed": "the random seed of the run",
    "split": "the evaluated split, e.g. 'test'",
    "dataset_id": "the dataset's Hub id, for the model-index metadata",
    "adapter": "the adapter evaluated, when several are saved",
}


def normalize_eval_results(
    eval_results: Mapping | Sequence[Mapping] | None, name: str = "eval_results"
) -> list[dict[str, Any]]:
    """Evaluation results as a list of checked rows (see [`EVAL_RESULT_KEYS`]); `None` gives `[]`."""
    if eval_results is None:
        return []
    entries = [eval_results] if isinstance(eval_results, Mapping) else list(eval_results)
    rows = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise ValueError(f"`{name}[{index}]` must be a dict such as {{'dataset': ..., 'accuracy': ...}}.")
        row = dict(entry)
        for short in ("accuracy", "top5_accuracy"):
            if f"eval_{short}" in row:
                row.setdefault(short, row.pop(f"eval_{short}"))
        if not isinstance(row.get("dataset"), str) or row.get("accuracy") is None:
            raise ValueError(
                f"`{name}[{index}]` needs `dataset` and `accuracy` (a dataset name; top-1 accuracy in percent), got "
                f"{entry!r}."
            )
        unknown = sorted(set(row) - set(EVAL_RESULT_KEYS))
        if unknown:
            allowed = "; ".join(f"`{key}`: {text}" for key, text in EVAL_RESULT_KEYS.items())
            raise ValueError(f"`{name}[{index}]` has unknown keys {unknown}. Allowed keys: {allowed}.")
        for key in ("accuracy", "top5_accuracy"):
            value = row.get(key)
            is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if value is not None and not (is_number and 0 <= value <= 100):
                raise ValueError(f"`{name}[{index}]['{key}']` must be a percentage in [0, 100], got {value!r}.")
        for key in ("shots", "seed"):
            value = row.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"`{name}[{index}]['{key}']` must be an integer, got {value!r}.")
        rows.append(row)
    return rows


def _human_size(size: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError


def _repo_id_or_none(name: str | None) -> str | None:
    """`name` if it can be a Hub model id (not a local path), for the card's `base_model` metadata."""
    if not name or os.path.exists(name) or name.startswith((".", "/", "~")):
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


@dataclass
class _CardAdapter:
    name: str
    folder: str  # relative to the card's folder, "" for the card's own folder
    config: MuDPTConfig
    parameters: int
    file_size: int | None


def _adapter_parameters(model: PeftModel, adapter_name: str) -> int:
    """The number of values the adapter saves: its prompts and its fusion modules' state, in each tower (counted on
    the towers: `get_peft_model_state_dict` would also fingerprint the tensors, as for a save)."""
    total = 0
    for module in model.modules():
        if isinstance(module, MuDPTTower):
            prompts = module.learned_prompts(adapter_name)
            total += 0 if prompts is None else prompts.numel()
            if adapter_name in module.mudpt_fusion:
                total += sum(t.numel() for t in module.mudpt_fusion[adapter_name].state_dict().values())
    return total


def _model_card_text(
    model: PeftModel,
    adapters: list[_CardAdapter],
    eval_rows: list[dict[str, Any]],
    classifier: PromptClassifier | None,
    repo_id: str | None,
    subfolder: str | None,
    revision: str | None,
    extra_tags: Sequence[str] = (),
) -> str:
    import peft
    import torch
    import transformers
    from huggingface_hub import EvalResult, ModelCardData

    base = model.get_base_model()
    base_name = adapters[0].config.base_model_name_or_path or getattr(base, "name_or_path", None) or None
    base_id = _repo_id_or_none(base_name)
    tags = card_tags(base, [adapter.config for adapter in adapters])
    family = tags[2]
    methods = tags[3:]
    if base_id:
        tags.append(f"base_model:adapter:{base_id}")
    tags += [str(tag) for tag in extra_tags]
    model_name = (repo_id.split("/")[-1] if repo_id else None) or f"{base_id or family} MuDPT adapter"
    eval_results = [
        EvalResult(
            task_type="image-classification",
            dataset_type=row.get("dataset_id") or row["dataset"],
            dataset_name=row["dataset"],
            dataset_split=row.get("split"),
            dataset_args={key: row[key] for key in ("shots", "seed") if row.get(key) is not None} or None,
            metric_type="accuracy",
            metric_name="top-1 accuracy (%)",
            metric_value=float(row["accuracy"]),
        )
        for row in eval_rows
    ]
    card_data = ModelCardData(
        library_name="peft",
        base_model=base_id,
        tags=list(dict.fromkeys(tags)),
        pipeline_tag="zero-shot-image-classification",
        model_name=model_name if eval_results else None,
        eval_results=eval_results or None,
    )

    def depths(config: MuDPTConfig) -> str:
        text, vision = config.resolved_text_depth or "–", config.resolved_vision_depth or "–"
        return f"{text} / {vision}"

    def tokens(config: MuDPTConfig) -> str:
        text = config.n_ctx if config.text_prompts else "–"
        vision = config.resolved_vision_n_ctx if config.vision_prompts else "–"
        return f"{text} / {vision}"

    # a local base model is named by its folder's name only: an absolute path means nothing on another machine
    local_name = Path(os.path.normpath(base_name)).name if base_name and not base_id else None
    where = (
        f"[`{base_id}`](https://huggingface.co/{base_id})"
        if base_id
        else f"`{local_name}` (a local model)"
        if local_name
        else "`unknown`"
    )
    lines = [
        f"# {model_name}",
        "",
        f"{'A' if len(adapters) == 1 else str(len(adapters))} MuDPT-family prompt-tuning adapter"
        f"{'' if len(adapters) == 1 else 's'} ({', '.join(f'`{m}`' for m in methods)}) for the {family.upper()} model "
        f"{where}, made with mudpt-peft and [PEFT](https://github.com/huggingface/peft) (MuDPT: "
        "[arXiv 2306.11400](https://arxiv.org/abs/2306.11400)). The base model stays frozen: the adapter holds only "
        "the learned text / visual prompts and the modules coupling them.",
        "",
        "## Adapter",
        "",
        "| adapter | folder | method | depth (text / vision) | n_ctx (text / vision) | fusion | trainable parameters "
        "| file size |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for adapter in adapters:
        size = "–" if adapter.file_size is None else f"{_human_size(adapter.file_size)} ({adapter.file_size:,} bytes)"
        lines.append(
            f"| `{adapter.name}` | `{adapter.folder or '.'}` | {method_preset(adapter.config)} | "
            f"{depths(adapter.config)} | {tokens(adapter.config)} | {adapter.config.fusion} | "
            f"{adapter.parameters:,} | {size} |"
        )
    lines += ["", "The full configuration is in `adapter_config.json`; the weights are in `adapter_model.safetensors`."]
    if eval_rows:
        show_adapter = any(row.get("adapter") for row in eval_rows)
        show_top5 = any(row.get("top5_accuracy") is not None for row in eval_rows)
        header = ["dataset", "split", "shots", "seed", "accuracy (%)"]
        header += ["top-5 accuracy (%)"] if show_top5 else []
        header = (["adapter"] if show_adapter else []) + header
        lines += ["", "## Evaluation", "", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        for row in eval_rows:
            cells = [row["dataset"], row.get("split") or "–", row.get("shots", "–"), row.get("seed", "–")]
            cells = [*(["`" + str(row.get("adapter") or "default") + "`"] if show_adapter else []), *cells]
            cells.append(f"{float(row['accuracy']):.2f}")
            if show_top5:
                top5 = row.get("top5_accuracy")
                cells.append("–" if top5 is None else f"{float(top5):.2f}")
            lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    if classifier is not None:
        names = classifier.class_names
        shown = ", ".join(f"`{name}`" for name in names[:50])
        shown += f", … ({len(names) - 50} more)" if len(names) > 50 else ""
        lines += [
            "",
            "## Classifier",
            "",
            f"`{CLASSIFIER_CONFIG_NAME}` holds the {len(names)} class names (in label order) and "
            + (
                f"the prompt template `{classifier.template}`"
                if classifier.template is not None
                else f"an ensemble of {len(classifier.templates)} prompt templates"
            )
            + ", so that `PromptClassifier.from_pretrained` restores a ready classifier.",
            "",
            f"Classes: {shown}.",
        ]

    repo_arg = json.dumps(repo_id) if repo_id else '"<this repository id, or a local folder>"'
    location = (("subfolder", subfolder), ("revision", revision))
    extra = "".join(f", {key}={json.dumps(value)}" for key, value in location if value)
    base_class = type(base).__name__
    base_arg = json.dumps(base_id or (f"<the folder of {local_name}>" if local_name else "<base model id>"))
    code = [
        "```python",
        "import mudpt_peft  # registers the MUDPT peft type; without it, loading fails with KeyError: 'MUDPT'",
        "from peft import PeftModel",
        f"from transformers import {base_class}",
        "",
        f"base_model = {base_class}.from_pretrained({base_arg})",
    ]
    if classifier is not None:
        code.append(f"classifier = mudpt_peft.PromptClassifier.from_pretrained(base_model, {repo_arg}{extra})")
        code.append("# classifier.predict(images) -> class names; classifier(pixel_values=...).logits -> logits")
    else:
        first, *others = adapters
        folder = "/".join(part for part in (subfolder, first.folder) if part) or None
        first_extra = "".join(
            f", {key}={json.dumps(value)}" for key, value in (("subfolder", folder), ("revision", revision)) if value
        )
        code.append(f"model = PeftModel.from_pretrained(base_model, {repo_arg}{first_extra})")
        for adapter in others:
            folder = "/".join(part for part in (subfolder, adapter.folder) if part)
            more = f', subfolder="{folder}"' + (f", revision={json.dumps(revision)}" if revision else "")
            code.append(f'model.load_adapter({repo_arg}, adapter_name="{adapter.name}"{more})')
    code.append("```")
    lines += [
        "",
        "## How to use",
        "",
        "mudpt-peft is not on PyPI: install it from its git repository, or from a clone with `pip install .`:",
        "",
        "```bash",
        INSTALL_COMMAND,
        "```",
        "",
        *code,
        "",
        "`import mudpt_peft` is required before loading: it registers the `MUDPT` peft type. Without it, "
        "`PeftModel.from_pretrained` fails with `KeyError: 'MUDPT'`.",
        "",
        "## Safety",
        "",
        "The weights are stored as safetensors, and `adapter_config.json` records the sha256 of the tensors "
        f"(`auto_mapping.{TENSORS_FINGERPRINT_KEY}`), which mudpt-peft checks when loading. mudpt-peft refuses "
        "adapters whose weights are only a pickled `adapter_model.bin` unless you opt in with "
        "`mudpt_peft.allow_pickled_weights()`.",
        "",
        "### Framework versions",
        "",
        f"- PEFT {peft.__version__}",
        f"- mudpt-peft {__version__}",
        f"- Transformers {transformers.__version__}",
        f"- PyTorch {torch.__version__}",
        "",
    ]
    return f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines)


def _recorded_rows(model: PeftModel, layout: Mapping[str, str]) -> list[dict[str, Any]]:
    """The evaluation results recorded for the adapters in `layout` (by `mudpt_peft.evaluate` or the trainer)."""
    rows = []
    for name in layout:
        for row in recorded_eval_results(model, name):
            rows.append({**row, "adapter": name} if len(layout) > 1 else row)
    return rows


def _card_adapters(model: PeftModel, layout: Mapping[str, str], directory: Path) -> list[_CardAdapter]:
    adapters = []
    for name, folder in layout.items():
        weights = directory / folder / SAFETENSORS_WEIGHTS_NAME
        adapters.append(
            _CardAdapter(
                name=name,
                folder=folder,
                config=model.peft_config[name],
                parameters=_adapter_parameters(model, name),
                file_size=weights.stat().st_size if weights.is_file() else None,
            )
        )
    return adapters


def write_model_card(
    model: PeftModel | PromptClassifier,
    save_directory: str | os.PathLike,
    eval_results: Mapping | Sequence[Mapping] | None = None,
    repo_id: str | None = None,
) -> Path:
    """Write the MuDPT model card, `README.md`, into a folder where `model` was saved; return its path.

    The card's metadata holds `library_name: peft`, the base model, the tags `mudpt`, `prompt-tuning`, the model
    family (`clip`) and the method preset (e.g. `maple`, see [`method_preset`]), and, with `eval_results`, a
    `model-index`. Its text has the configuration as a table (method, depth, n_ctx, fusion, trainable parameters,
    file size), the evaluation results, the classifier's classes for a [`~mudpt_peft.PromptClassifier`], and a loading
    snippet that starts with `import mudpt_peft` (without which peft fails with `KeyError: 'MUDPT'`). An existing
    `README.md` is replaced. A trainer can call this after `model.save_pretrained(save_directory)`;
    `mudpt_peft.hub.save_pretrained` and `push_to_hub` call it themselves.

    Args:
        model (`PeftModel` or [`~mudpt_peft.PromptClassifier`]):
            The model that was saved. For a `PeftModel`, every adapter found in peft's layout (`default` in the
            folder itself, any other adapter in a subfolder of its name) gets a row; for a classifier, its active
            adapter, saved in the folder itself.
        save_directory (`str` or `os.PathLike`):
            The folder.
        eval_results (`dict` or list of `dict`, *optional*):
            Evaluation results, each with `dataset` and `accuracy` (top-1, in percent; `eval_accuracy` as returned by
            the trainer's `evaluate()` is accepted too) and optionally `shots`, `seed`, `split`, `top5_accuracy`,
            `dataset_id` (the dataset's Hub id) and `adapter`. Default: the results recorded for the adapters by
            `mudpt_peft.evaluate` and `PromptTuningTrainer.evaluate` (pass `[]` for none).
        repo_id (`str`, *optional*):
            The Hub repository the folder is for, used in the loading snippet.

    Example:

        ```py
        >>> model.save_pretrained("out")
        >>> mudpt_peft.write_model_card(model, "out", {"dataset": "caltech101", "accuracy": 95.1, "shots": 16})
        ```
    """
    peft_model, classifier = split_model(model)
    directory = Path(save_directory)
    layout = adapters_to_save(peft_model, classifier, None)  # also checks that they are MuDPT adapters
    if classifier is None:  # the adapters saved there, or all of them if none is saved yet
        saved = {name: folder for name, folder in layout.items() if (directory / folder / CONFIG_NAME).is_file()}
        layout = saved or layout
    return write_card(peft_model, classifier, layout, directory, eval_results, repo_id, None, None)


def write_card(
    model: PeftModel,
    classifier: PromptClassifier | None,
    layout: Mapping[str, str],
    directory: Path,
    eval_results: Mapping | Sequence[Mapping] | None,
    repo_id: str | None,
    subfolder: str | None,
    revision: str | None,
    extra_tags: Sequence[str] = (),
) -> Path:
    """Write the card of the adapters in `layout` (name -> folder under `directory`) into `directory/README.md`."""
    rows = normalize_eval_results(eval_results) if eval_results is not None else _recorded_rows(model, layout)
    for row in rows:
        if row.get("adapter") is not None and row["adapter"] not in layout:
            raise ValueError(f"`eval_results` names the adapter {row['adapter']!r}, which is not saved here.")
    adapters = _card_adapters(model, layout, directory)
    text = _model_card_text(model, adapters, rows, classifier, repo_id, subfolder, revision, extra_tags)
    path = directory / "README.md"
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------------------------
# saving and pushing


def is_classifier(model: Any) -> bool:
    """Whether `model` is a [`~mudpt_peft.PromptClassifier`] (told by what it holds: a model, class names and a
    template, so that this module need not import the classifier, which is built on top of it)."""
    return all(hasattr(model, name) for name in ("model", "class_names", "template", "encode_classes"))


def split_model(model: Any) -> tuple[PeftModel, PromptClassifier | None]:
    """`(peft model, classifier or None)` for a `PeftModel` or a `PromptClassifier` around one."""
    from peft import PeftModel

    classifier = model if is_classifier(model) else None
    peft_model = classifier.model if classifier is not None else model
    if not isinstance(peft_model, PeftModel):
        what = "This classifier's model" if classifier is not None else "`model`"
        raise ValueError(
            f"{what} is a {type(peft_model).__name__}, not a peft model with a MuDPT adapter, so there is no adapter "
            "to save. Wrap the base model with `peft.get_peft_model(model, mudpt_peft.MuDPTConfig(...))` first."
        )
    return peft_model, classifier


def adapters_to_save(
    peft_model: PeftModel, classifier: PromptClassifier | None, selected: Sequence[str] | None
) -> dict[str, str]:
    """Adapter name -> folder (relative to the save directory) of the adapters to save."""
    if classifier is not None:
        if selected is not None:
            raise ValueError("A classifier saves its active adapter; `selected_adapters` is not supported for it.")
        names, layout = [peft_model.active_adapter], {peft_model.active_adapter: ""}
    else:
        names = list(peft_model.peft_config) if selected is None else list(selected)
        unknown = [name for name in names if name not in peft_model.peft_config]
        if unknown or not names:
            raise ValueError(f"Unknown adapters {unknown}; this model has {list(peft_model.peft_config)}.")
        layout = {name: "" if name == "default" else name for name in names}
    for name in names:
        peft_type = peft_type_value(peft_model.peft_config[name].peft_type)
        if peft_type != MUDPT_PEFT_TYPE.value:
            raise ValueError(
                f"The adapter '{name}' is a {peft_type} adapter; mudpt_peft.hub saves MuDPT adapters. Save it with "
                "`model.save_pretrained(...)`, or pass `selected_adapters=` without it."
            )
    return layout



# ---------------------------------------------------------------------------------------------------------------------
# evaluation results recorded for the card


def _active_mudpt_configs(model: Any) -> list[Any]:
    peft_config = getattr(model, "peft_config", None)
    if not isinstance(peft_config, Mapping):
        return []
    layer = next((module for module in model.modules() if isinstance(module, MuDPTLayer)), None)
    if layer is None or layer.disable_adapters:  # inside `disable_adapter()`: zero-shot, not the adapter's result
        return []
    active = getattr(model, "active_adapters", None) or []
    active = [active] if isinstance(active, str) else list(active)
    return [peft_config[name] for name in active if isinstance(peft_config.get(name), MuDPTConfig)]


def record_eval_result(model: Any, result: Mapping[str, Any]) -> None:
    """Remember an evaluation result of `model`'s active MuDPT adapter(s), for their model card.

    `mudpt_peft.evaluate` and `PromptTuningTrainer.evaluate` call this. The result is kept with the adapter's config in
    memory (not in `adapter_config.json`) and listed in the "Evaluation" section and the `model-index` metadata of the
    MuDPT model card that a later [`write_model_card`], `mudpt_peft.hub` helper or `PromptTuningTrainer` checkpoint
    writes (a plain `model.save_pretrained` / `push_to_hub` writes peft's / transformers' card). A later result
    for the same dataset, split, shots and seed replaces the earlier one. Nothing is recorded for a model without a
    MuDPT adapter (zero-shot CLIP) or inside `disable_adapter()`.

    Args:
        model (`PeftModel`):
            The evaluated model.
        result (`dict`):
            `dataset` (a name) and `accuracy` (top-1, percent), optionally `top5_accuracy`, `split`, `shots`, `seed`,
            `dataset_id` (see [`EVAL_RESULT_KEYS`]); entries that are `None` are left out.
    """
    entry = {name: value for name, value in result.items() if value is not None}
    if "adapter" in entry:
        raise ValueError("An evaluation result is recorded for the active adapter(s); drop its `adapter` key.")
    (row,) = normalize_eval_results(entry, name="result")
    row["accuracy"] = float(row["accuracy"])
    if "top5_accuracy" in row:
        row["top5_accuracy"] = float(row["top5_accuracy"])
    key = tuple(row.get(name) for name in ("dataset", "split", "shots", "seed"))
    for config in _active_mudpt_configs(model):
        results = [r for r in getattr(config, RESULTS_ATTRIBUTE, []) if r["key"] != key]
        results.append({"key": key, "row": row})
        setattr(config, RESULTS_ATTRIBUTE, results)


def recorded_eval_results(model: Any, adapter_name: str = "default") -> list[dict[str, Any]]:
    """The evaluation results recorded for adapter `adapter_name` of `model` (see [`record_eval_result`]), oldest
    first, as dicts with `dataset`, `accuracy` and whichever of `top5_accuracy`, `split`, `shots`, `seed` are known."""
    config = getattr(model, "peft_config", {}).get(adapter_name)
    return [dict(entry["row"]) for entry in getattr(config, RESULTS_ATTRIBUTE, [])]


