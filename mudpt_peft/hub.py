"""Share MuDPT adapters and prompt classifiers on the Hugging Face Hub, and load them safely.

Plain peft works for MuDPT adapters once `mudpt_peft` is imported: `peft_model.push_to_hub(repo_id)`,
`PeftModel.from_pretrained(base_model, repo_id, revision=..., subfolder=...)`. This module adds:

- [`save_pretrained`] / [`push_to_hub`]: save or push a `PeftModel` (or a [`~mudpt_peft.PromptClassifier`], whose
  class names and template travel in `prompt_classifier.json` beside the adapter) with a MuDPT model card, an
  integrity fingerprint and, locally, a crash-safe write order (see below).
- [`write_model_card`]: the MuDPT model card (`README.md`) for a folder saved by any of the above or by peft.
- Load-time checks, run by [`MuDPTConfig.from_pretrained`] (peft calls it before creating any adapter weight, so a
  refused adapter leaves the base model untouched): the config must be a MUDPT config; weights must be safetensors
  (a folder or repository with only a pickled `adapter_model.bin` is refused unless [`allow_pickled_weights`] is
  active or `MUDPT_ALLOW_PICKLED_WEIGHTS=1`); the safetensors file must be complete; and, when the config carries
  the fingerprint, the weights must be the ones saved with it.

Why the fingerprint and the write order: peft's `save_pretrained` writes `README.md`, then `adapter_model.safetensors`,
then `adapter_config.json`, each in place. A save of adapter B over a folder holding adapter A that is interrupted
between the weights and the config leaves B's weights with A's config; if both have the same tensor shapes (for
instance they differ only in `injection_heads`, or in the base model they were trained for), that folder loads
without error as a wrong adapter. [`save_pretrained`] therefore stages every file in a temporary folder, records the
sha256 of `adapter_model.safetensors` in `adapter_config.json` (under `auto_mapping`, the one config field peft
round-trips as a free-form dict, so that peft loads the config without warnings), and moves the files into place
with the config removed first and written last: an interrupted save leaves a folder without `adapter_config.json`,
which does not load at all. The fingerprint also exposes a later plain `model.save_pretrained` over that folder that
was interrupted after the weights, a weights file replaced by hand or by a partial upload, and silent corruption.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import huggingface_hub
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from ._registration import MUDPT_PEFT_TYPE

if TYPE_CHECKING:
    from peft import PeftModel

    from .classifier import PromptClassifier
    from .config import MuDPTConfig

__all__ = [
    "ALLOW_PICKLED_WEIGHTS_ENV",
    "BASE_FAMILY_KEY",
    "BASE_GEOMETRY_KEY",
    "CLASSIFIER_CONFIG_NAME",
    "WEIGHTS_FINGERPRINT_KEY",
    "allow_pickled_weights",
    "base_model_record",
    "check_adapter",
    "check_base_model",
    "finish_plain_save",
    "is_mudpt_model",
    "method_preset",
    "pickled_weights_allowed",
    "push_to_hub",
    "rewrite_card_for_push",
    "save_pretrained",
    "write_model_card",
]

CONFIG_NAME = "adapter_config.json"
SAFETENSORS_WEIGHTS_NAME = "adapter_model.safetensors"
PICKLED_WEIGHTS_NAME = "adapter_model.bin"
#: The file beside a classifier's adapter that holds its class names and template.
CLASSIFIER_CONFIG_NAME = "prompt_classifier.json"
#: The key, inside `auto_mapping` of `adapter_config.json`, of the sha256 of `adapter_model.safetensors`.
WEIGHTS_FINGERPRINT_KEY = "mudpt_weights_sha256"
#: The keys, inside `auto_mapping`, of the family name and the geometry (widths, layer counts) of the base model.
BASE_FAMILY_KEY = "mudpt_base_family"
BASE_GEOMETRY_KEY = "mudpt_base_geometry"
#: Set this environment variable to `1` to allow loading pickled `adapter_model.bin` weights (see
#: [`allow_pickled_weights`]).
ALLOW_PICKLED_WEIGHTS_ENV = "MUDPT_ALLOW_PICKLED_WEIGHTS"
_CLASSIFIER_FORMAT = 1
_TRUE = ("1", "true", "yes", "on")

_pickles_allowed: contextvars.ContextVar[bool] = contextvars.ContextVar("mudpt_allow_pickled_weights", default=False)


# ---------------------------------------------------------------------------------------------------------------------
# pickled weights


@contextlib.contextmanager
def allow_pickled_weights() -> Iterator[None]:
    """Allow loading MuDPT adapters whose weights exist only as a pickled `adapter_model.bin`, inside the block.

    By default such adapters are refused: unpickling a file can run code chosen by whoever wrote it. Use this only for
    files from a source you trust, and prefer converting them once to safetensors (load inside this block, then
    `save_pretrained` the model). Setting the environment variable `MUDPT_ALLOW_PICKLED_WEIGHTS=1` has the same effect
    process-wide. peft then reads the file with `torch.load(weights_only=True)`.

    Example:

        ```py
        >>> import mudpt_peft
        >>> with mudpt_peft.allow_pickled_weights():
        ...     model = PeftModel.from_pretrained(clip, "someone/old-mudpt-adapter")
        ```
    """
    token = _pickles_allowed.set(True)
    try:
        yield
    finally:
        _pickles_allowed.reset(token)


def pickled_weights_allowed() -> bool:
    """Whether pickled adapter weights may be loaded now (see [`allow_pickled_weights`])."""
    return _pickles_allowed.get() or os.environ.get(ALLOW_PICKLED_WEIGHTS_ENV, "").strip().lower() in _TRUE


# ---------------------------------------------------------------------------------------------------------------------
# finding the files of an adapter, locally or on the Hub

_HUB_DOWNLOAD_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "force_download", "user_agent")


@dataclass
class _Source:
    """Where an adapter lives: a local folder or a Hub repository (with revision and subfolder)."""

    model_id: str
    subfolder: str | None
    local: bool
    download_kwargs: dict[str, Any]

    @classmethod
    def of(cls, model_id: str | os.PathLike, subfolder: str | None, **kwargs: Any) -> _Source:
        model_id = os.fspath(model_id)
        subfolder = subfolder or None
        if os.path.isdir(os.path.join(model_id, subfolder or "")):
            return cls(model_id, subfolder, True, {})
        if os.path.isdir(model_id):
            raise ValueError(f"The local folder '{model_id}' has no subfolder '{subfolder}'.")
        try:
            validate_repo_id(model_id)
        except HFValidationError as error:
            raise ValueError(
                f"'{model_id}' is neither an existing local folder nor a valid Hub repository id ('name' or "
                f"'namespace/name'): {error}"
            ) from error
        download_kwargs = {key: kwargs[key] for key in _HUB_DOWNLOAD_KWARGS if kwargs.get(key) is not None}
        return cls(model_id, subfolder, False, download_kwargs)

    def path_in_repo(self, filename: str) -> str:
        return f"{self.subfolder.strip('/')}/{filename}" if self.subfolder else filename

    def describe(self, filename: str | None = None) -> str:
        """E.g. `'adapter_config.json' in the local folder 'x'` or `'a/adapter_config.json' in Hub repository 'u/r'`."""
        if self.local:
            folder = os.path.join(self.model_id, self.subfolder) if self.subfolder else self.model_id
            where = f"the local folder '{folder}'"
            return f"'{filename}' in {where}" if filename else where
        revision = self.download_kwargs.get("revision")
        where = f"the Hub repository '{self.model_id}'" + (f" (revision '{revision}')" if revision else "")
        return f"'{self.path_in_repo(filename)}' in {where}" if filename else where

    def fetch(self, filename: str) -> Path | None:
        """The local path of `filename` (downloaded if needed), or `None` if it does not exist; other failures raise
        a `ValueError` that says what to do."""
        if self.local:
            path = Path(self.model_id, self.subfolder or "", filename)
            return path if path.is_file() else None
        try:
            return Path(hf_hub_download(self.model_id, filename, subfolder=self.subfolder, **self.download_kwargs))
        except GatedRepoError as error:
            raise ValueError(
                f"The Hub repository '{self.model_id}' is gated: accept its conditions on the Hub and log in "
                f"(`hf auth login`) or pass `token=`. ({error})"
            ) from error
        except RepositoryNotFoundError as error:
            raise ValueError(
                f"The Hub repository '{self.model_id}' was not found at {huggingface_hub.constants.ENDPOINT}. Check "
                "the repository id; if the repository is private, log in (`hf auth login`) or pass `token=`."
            ) from error
        except RevisionNotFoundError as error:
            revision = self.download_kwargs.get("revision")
            raise ValueError(
                f"The revision '{revision}' was not found in the Hub repository '{self.model_id}'. Pass an existing "
                f"branch, tag or full commit hash as `revision=` (list them with "
                f"`huggingface_hub.HfApi().list_repo_refs('{self.model_id}')`)."
            ) from error
        except LocalEntryNotFoundError as error:
            raise ValueError(
                f"{self.describe(filename)} could not be downloaded and is not in the local cache ({error})."
            ) from error
        except EntryNotFoundError:
            return None
        except HFValidationError as error:
            raise ValueError(f"Invalid Hub arguments for {self.describe(filename)}: {error}") from error

    def require(self, filename: str, what: str) -> Path:
        path = self.fetch(filename)
        if path is None:
            hint = (
                f" Is `subfolder='{self.subfolder}'` right?"
                if self.subfolder
                else " If the adapter is in a folder of the repository, pass `subfolder=`."
            )
            raise ValueError(f"{self.describe(filename)} does not exist: {what}.{hint}")
        return path


def _type_value(peft_type: Any) -> Any:
    """`"LORA"` for `PeftType.LORA` (whose `str()` is `"PeftType.LORA"`) and for `"LORA"`."""
    return getattr(peft_type, "value", peft_type)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_json(path: Path, description: str) -> dict[str, Any]:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(
            f"{description} is not valid JSON ({error}); the file is truncated or corrupted (an interrupted save or "
            "upload?). Save or upload it again."
        ) from error
    if not isinstance(content, dict):
        raise ValueError(f"{description} must hold a JSON object, got {type(content).__name__}.")
    return content


@dataclass
class _CheckedAdapter:
    """An adapter whose config and weights passed the load-time checks."""

    source: _Source
    config_file: Path
    config: dict[str, Any]
    weights_file: Path | None  # None when only the config was checked
    pickled: bool
    weights_sha256: str | None  # of the safetensors file; None for pickled weights


def _check_adapter(source: _Source, require_weights: bool = True) -> _CheckedAdapter:
    """Run the load-time checks on the adapter at `source`; raise a `ValueError` that says what is wrong.

    Weights that are present are always checked; their absence is an error only with `require_weights`: when peft is
    loading the adapter (a config saved on its own has none)."""
    config_file = source.require(CONFIG_NAME, "a MuDPT adapter folder holds adapter_config.json")
    config = _read_json(config_file, source.describe(CONFIG_NAME))
    peft_type = config.get("peft_type")
    if peft_type is None:
        raise ValueError(f"{source.describe(CONFIG_NAME)} has no 'peft_type': it is not a peft adapter config.")
    if _type_value(peft_type) != MUDPT_PEFT_TYPE.value:
        raise ValueError(
            f"{source.describe(CONFIG_NAME)} is a {peft_type} adapter, not a MuDPT (MUDPT) adapter. Load it with "
            "`peft.PeftModel.from_pretrained` or `peft.PeftConfig.from_pretrained` instead."
        )
    auto_mapping = config.get("auto_mapping")
    fingerprint = auto_mapping.get(WEIGHTS_FINGERPRINT_KEY) if isinstance(auto_mapping, dict) else None
    weights_file = source.fetch(SAFETENSORS_WEIGHTS_NAME)
    if weights_file is None:
        return _check_pickled(source, config_file, config, fingerprint, require_weights)

    try:
        from safetensors import safe_open

        with safe_open(str(weights_file), framework="pt"):
            pass  # parses the header and checks that the tensors cover the file exactly
    except Exception as error:  # safetensors raises SafetensorError; OSError for unreadable files
        raise ValueError(
            f"{source.describe(SAFETENSORS_WEIGHTS_NAME)} is not a valid safetensors file ({error}): it is truncated "
            "or corrupted (an interrupted save or upload?). Save or upload the adapter again; for a damaged download, "
            "pass `force_download=True`."
        ) from error
    sha = _sha256(weights_file)
    if fingerprint is not None and fingerprint != sha:
        raise ValueError(
            f"{source.describe(SAFETENSORS_WEIGHTS_NAME)} does not belong to its adapter_config.json: the config was "
            f"saved with weights of sha256 {fingerprint[:16]}…, this file has sha256 {sha[:16]}…. The folder mixes "
            "files of two saves (an interrupted `save_pretrained`?) or the weights were replaced or damaged. Save "
            "the adapter again with `mudpt_peft.hub.save_pretrained` / `push_to_hub`, or restore both files from "
            "the same save."
        )
    return _CheckedAdapter(source, config_file, config, weights_file, False, sha)


def _check_pickled(
    source: _Source, config_file: Path, config: dict[str, Any], fingerprint: str | None, require_weights: bool
) -> _CheckedAdapter:
    weights_file = source.fetch(PICKLED_WEIGHTS_NAME)  # fetching is harmless: only unpickling runs code
    if weights_file is None and not require_weights:
        return _CheckedAdapter(source, config_file, config, None, False, None)
    if weights_file is None:
        raise ValueError(
            f"{source.describe(SAFETENSORS_WEIGHTS_NAME)} does not exist: an adapter needs its weights next to "
            f"adapter_config.json (the save or upload was incomplete?). Save or upload the adapter again."
        )
    if fingerprint is not None:
        raise ValueError(
            f"{source.describe(CONFIG_NAME)} was saved with adapter_model.safetensors (it records its sha256), but "
            f"only a pickled {PICKLED_WEIGHTS_NAME} is there. Restore adapter_model.safetensors from that save."
        )
    if not pickled_weights_allowed():
        raise ValueError(
            f"Refusing to load {source.describe(PICKLED_WEIGHTS_NAME)}: it holds pickled weights and there is no "
            f"{SAFETENSORS_WEIGHTS_NAME}. Unpickling can run code chosen by the file's author. Ask for the adapter in "
            "safetensors format; or, if you trust its source, load it inside `with "
            f"mudpt_peft.allow_pickled_weights():` (or set {ALLOW_PICKLED_WEIGHTS_ENV}=1) and re-save it with "
            "`save_pretrained`, which writes safetensors."
        )
    try:
        import torch

        torch.load(weights_file, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"{source.describe(PICKLED_WEIGHTS_NAME)} could not be read as a PyTorch state dict ({error}): it is "
            "truncated, corrupted or not a weights-only pickle."
        ) from error
    return _CheckedAdapter(source, config_file, config, weights_file, True, None)


def _called_by_peft_loader() -> bool:
    """Whether the code that called `MuDPTConfig.from_pretrained` is peft loading an adapter: the first caller outside
    `mudpt_peft` is `from_pretrained` or `load_adapter` of a peft module (`PeftModel`, `PeftMixedModel`).

    peft reads the config before it creates any adapter weight and loads the weights only afterwards; knowing that it
    is about to load them lets a missing weights file be refused before the base model is touched. (A known wart: a
    hook in peft for this would be better.)
    """
    frame = sys._getframe(1)
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module != "mudpt_peft" and not module.startswith("mudpt_peft."):
            return module.startswith("peft.") and frame.f_code.co_name in ("from_pretrained", "load_adapter")
        frame = frame.f_back
    return False


def check_adapter(
    pretrained_model_name_or_path: str | os.PathLike, subfolder: str | None = None, **hub_kwargs: Any
) -> None:
    """Run every load-time check on a MuDPT adapter without loading it; raise a `ValueError` that says what is wrong.

    The checks are those `PeftModel.from_pretrained` runs through [`MuDPTConfig.from_pretrained`]: the repository,
    revision and files exist; `adapter_config.json` is valid JSON of peft type MUDPT; `adapter_model.safetensors` is
    complete and, when the config records its sha256, is the file saved with it; pickled `adapter_model.bin` weights
    only inside [`allow_pickled_weights`]. A valid `MuDPTConfig` is not required here.

    Args:
        pretrained_model_name_or_path (`str` or `os.PathLike`):
            A local folder or a Hub repository id.
        subfolder (`str`, *optional*):
            The folder of the adapter inside it.
        hub_kwargs:
            `revision`, `token`, `cache_dir`, `local_files_only`, `force_download` for the Hub.
    """
    _check_adapter(_Source.of(pretrained_model_name_or_path, subfolder, **hub_kwargs))


def load_config(
    config_cls: type[MuDPTConfig], pretrained_model_name_or_path: str | os.PathLike, subfolder: str | None, **kwargs
) -> MuDPTConfig:
    """The implementation of [`MuDPTConfig.from_pretrained`]: check the adapter, then build its config.

    Weights next to the config are always checked (pickles refused unless allowed, damage, fingerprint); missing
    weights are refused when peft is loading the adapter (`PeftModel.from_pretrained`, `load_adapter`), recognised
    from the caller, so that a config saved on its own (`MuDPTConfig.save_pretrained`) still loads by itself.
    """
    hub_kwargs, class_kwargs, _ = config_cls._split_kwargs(kwargs)
    source = _Source.of(pretrained_model_name_or_path, subfolder, **hub_kwargs)
    checked = _check_adapter(source, require_weights=_called_by_peft_loader())
    attributes = config_cls.from_json_file(str(checked.config_file))
    auto_mapping = attributes.get("auto_mapping")
    if isinstance(auto_mapping, dict) and WEIGHTS_FINGERPRINT_KEY in auto_mapping:
        # checked; not kept, so that a later plain `save_pretrained` of other weights cannot carry a stale one
        auto_mapping = {k: v for k, v in auto_mapping.items() if k != WEIGHTS_FINGERPRINT_KEY}
        attributes["auto_mapping"] = auto_mapping or None
    try:
        return config_cls.from_peft_type(**config_cls.check_kwargs(**{**class_kwargs, **attributes}))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{source.describe(CONFIG_NAME)} is not a valid MuDPT config: {error}") from error


def base_model_record(model: Any) -> dict[str, Any]:
    """The family name and geometry (widths, layer counts) of a base model, as adapters record them in
    `auto_mapping` of `adapter_config.json` and [`check_base_model`] compares them."""
    from .families import get_family_spec

    spec = get_family_spec(model)
    geometry = {
        "text_width": spec.text_width(model),
        "vision_width": spec.vision_width(model),
        "text_layers": spec.num_text_layers(model),
        "vision_layers": spec.num_vision_layers(model),
    }
    return {BASE_FAMILY_KEY: spec.name, BASE_GEOMETRY_KEY: geometry}


def check_base_model(config: MuDPTConfig | Mapping[str, Any], model: Any) -> None:
    """Check that an adapter was saved for a base model like `model`, from what its config recorded.

    peft records the base model's class in `auto_mapping.base_model_class`; [`save_pretrained`] and [`push_to_hub`]
    also record its family and geometry (widths and layer counts). An adapter whose tensors fit but that was trained
    for another family (e.g. a CLIP adapter on a SigLIP model of the same widths) or for a model with other layer
    counts would otherwise load without error; this raises a `ValueError` instead. Checks that nothing recorded are
    skipped. The tuner calls it before it creates any adapter weight, so `PeftModel.from_pretrained`, `load_adapter`
    and [`~mudpt_peft.PromptClassifier.from_pretrained`] refuse such an adapter and leave the model as it was; a
    plain `PeftModel.save_pretrained` / `push_to_hub` records the family and geometry too.

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
    hint = (
        f"Load it onto the base model it was trained for{f' ({base_name!r})' if base_name else ''}; to start a new "
        "adapter on this model from its config instead, set `config.auto_mapping = None` first."
    )
    recorded_class = auto_mapping.get("base_model_class")
    recorded_family = auto_mapping.get(BASE_FAMILY_KEY)
    actual = base_model_record(model)
    if recorded_family is not None and recorded_family != actual[BASE_FAMILY_KEY]:
        raise ValueError(
            f"This MuDPT adapter was saved for a {recorded_class or recorded_family} model (family "
            f"'{recorded_family}'), not for a {type(model).__name__} (family '{actual[BASE_FAMILY_KEY]}'). {hint}"
        )
    if recorded_family is None and recorded_class and recorded_class not in {c.__name__ for c in type(model).__mro__}:
        raise ValueError(
            f"This MuDPT adapter was saved for a {recorded_class} (`auto_mapping.base_model_class` in "
            f"adapter_config.json), not for a {type(model).__name__}. {hint}"
        )
    recorded_geometry = auto_mapping.get(BASE_GEOMETRY_KEY)
    if isinstance(recorded_geometry, Mapping):
        differences = [
            f"{key} {recorded_geometry[key]} (this model: {value})"
            for key, value in actual[BASE_GEOMETRY_KEY].items()
            if key in recorded_geometry and recorded_geometry[key] != value
        ]
        if differences:
            raise ValueError(f"This MuDPT adapter was saved for a base model with {', '.join(differences)}. {hint}")


# ---------------------------------------------------------------------------------------------------------------------
# model card


def method_preset(config: MuDPTConfig) -> str:
    """The method a config implements, as a [`MuDPTConfig.for_method`] name (`"coop"`, `"vpt"`, `"ivlp"`, `"maple"`,
    `"mudpt"`, `"mudpt-linear"`, `"mudpt-linear-v1"` or `"cross-attention"`), derived from `fusion`, `linear_shared`,
    `text_prompts` and `vision_prompts` (depths and token counts may differ from the preset's defaults)."""
    if config.fusion == "none":
        if config.text_prompts and config.vision_prompts:
            return "ivlp"
        return "coop" if config.text_prompts else "vpt"
    return {
        "text_to_vision": "maple",
        "injection": "mudpt",
        "linear": "mudpt-linear" if config.linear_shared else "mudpt-linear-v1",
        "cross_attention": "cross-attention",
    }[config.fusion]


_EVAL_KEYS = {
    "dataset": "the dataset name (required)",
    "accuracy": "top-1 accuracy in percent (required; `eval_accuracy` is accepted too)",
    "top5_accuracy": "top-5 accuracy in percent (or `eval_top5_accuracy`)",
    "shots": "training examples per class",
    "seed": "the random seed of the run",
    "split": "the evaluated split, e.g. 'test'",
    "dataset_id": "the dataset's Hub id, for the model-index metadata",
    "adapter": "the adapter evaluated, when several are saved",
}


def _normalize_eval_results(eval_results: Mapping | Sequence[Mapping] | None) -> list[dict[str, Any]]:
    if eval_results is None:
        return []
    entries = [eval_results] if isinstance(eval_results, Mapping) else list(eval_results)
    rows = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise ValueError(f"`eval_results[{index}]` must be a dict such as {{'dataset': ..., 'accuracy': ...}}.")
        row = dict(entry)
        for short in ("accuracy", "top5_accuracy"):
            if f"eval_{short}" in row:
                row.setdefault(short, row.pop(f"eval_{short}"))
        unknown = sorted(set(row) - set(_EVAL_KEYS))
        if unknown:
            allowed = "; ".join(f"`{key}`: {text}" for key, text in _EVAL_KEYS.items())
            raise ValueError(f"`eval_results[{index}]` has unknown keys {unknown}. Allowed keys: {allowed}.")
        if not isinstance(row.get("dataset"), str) or row.get("accuracy") is None:
            raise ValueError(
                f"`eval_results[{index}]` needs `dataset` (a name) and `accuracy` (top-1, in percent), got {entry!r}."
            )
        for key in ("accuracy", "top5_accuracy"):
            value = row.get(key)
            is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if value is not None and not (is_number and 0 <= value <= 100):
                raise ValueError(f"`eval_results[{index}]['{key}']` must be a percentage in [0, 100], got {value!r}.")
        for key in ("shots", "seed"):
            value = row.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"`eval_results[{index}]['{key}']` must be an integer, got {value!r}.")
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
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(model, adapter_name=adapter_name)
    return sum(tensor.numel() for tensor in state.values())


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

    from . import __version__
    from .families import get_family_spec

    base = model.get_base_model()
    base_name = adapters[0].config.base_model_name_or_path or getattr(base, "name_or_path", None) or None
    base_id = _repo_id_or_none(base_name)
    try:
        family = get_family_spec(base).name
    except ValueError:
        family = "clip"
    methods = sorted({method_preset(adapter.config) for adapter in adapters})
    tags = ["mudpt", "prompt-tuning", family, *methods]
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

    where = f"[`{base_id}`](https://huggingface.co/{base_id})" if base_id else f"`{base_name or 'unknown'}`"
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
            f"`{CLASSIFIER_CONFIG_NAME}` holds the {len(names)} class names (in label order) and the prompt template "
            f"`{classifier.template}`, so that `PromptClassifier.from_pretrained` restores a ready classifier.",
            "",
            f"Classes: {shown}.",
        ]

    repo_arg = json.dumps(repo_id) if repo_id else '"<this repository id, or a local folder>"'
    location = (("subfolder", subfolder), ("revision", revision))
    extra = "".join(f", {key}={json.dumps(value)}" for key, value in location if value)
    base_class = type(base).__name__
    base_arg = json.dumps(base_id or base_name or "<base model id>")
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
        "```bash",
        "pip install mudpt-peft",
        "```",
        "",
        *code,
        "",
        "`import mudpt_peft` is required before loading: it registers the `MUDPT` peft type. Without it, "
        "`PeftModel.from_pretrained` fails with `KeyError: 'MUDPT'`.",
        "",
        "## Safety",
        "",
        "The weights are stored as safetensors, and `adapter_config.json` records their sha256 "
        f"(`auto_mapping.{WEIGHTS_FINGERPRINT_KEY}`), which mudpt-peft checks when loading. mudpt-peft refuses "
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
    from .evaluation import recorded_eval_results

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
    [`save_pretrained`] and [`push_to_hub`] call it themselves.

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
        >>> mudpt_peft.hub.write_model_card(model, "out", {"dataset": "caltech101", "accuracy": 95.1, "shots": 16})
        ```
    """
    peft_model, classifier = _split_model(model)
    directory = Path(save_directory)
    layout = _selected_adapters(peft_model, classifier, None)  # also checks that they are MuDPT adapters
    if classifier is None:  # the adapters saved there, or all of them if none is saved yet
        saved = {name: folder for name, folder in layout.items() if (directory / folder / CONFIG_NAME).is_file()}
        layout = saved or layout
    return _write_card(peft_model, classifier, layout, directory, eval_results, repo_id, None, None)


def _write_card(
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
    rows = _normalize_eval_results(eval_results) if eval_results is not None else _recorded_rows(model, layout)
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


def _split_model(model: Any) -> tuple[PeftModel, PromptClassifier | None]:
    """`(peft model, classifier or None)` for a `PeftModel` or a `PromptClassifier` around one."""
    from peft import PeftModel

    from .classifier import PromptClassifier

    classifier = model if isinstance(model, PromptClassifier) else None
    peft_model = classifier.model if classifier is not None else model
    if not isinstance(peft_model, PeftModel):
        what = "This classifier's model" if classifier is not None else "`model`"
        raise ValueError(
            f"{what} is a {type(peft_model).__name__}, not a peft model with a MuDPT adapter, so there is no adapter "
            "to save. Wrap the base model with `peft.get_peft_model(model, mudpt_peft.MuDPTConfig(...))` first."
        )
    return peft_model, classifier


def _selected_adapters(
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
        peft_type = _type_value(peft_model.peft_config[name].peft_type)
        if peft_type != MUDPT_PEFT_TYPE.value:
            raise ValueError(
                f"The adapter '{name}' is a {peft_type} adapter; mudpt_peft.hub saves MuDPT adapters. Save it with "
                "`model.save_pretrained(...)`, or pass `selected_adapters=` without it."
            )
    return layout


def _stage(
    peft_model: PeftModel,
    classifier: PromptClassifier | None,
    layout: Mapping[str, str],
    staging: Path,
    eval_results: Mapping | Sequence[Mapping] | None,
    repo_id: str | None = None,
    subfolder: str | None = None,
    revision: str | None = None,
) -> None:
    """Write every file of the save into `staging` (in `layout`), with fingerprints and the model card."""
    _normalize_eval_results(eval_results)  # fail before writing anything
    base_record = base_model_record(peft_model.get_base_model())
    peft_model.save_pretrained(str(staging), selected_adapters=list(layout), safe_serialization=True)
    for name, folder in layout.items():
        written = staging / ("" if name == "default" else name)
        if written != staging / folder:  # a classifier's active adapter that is not "default": move it to the root
            for item in written.iterdir():
                os.replace(item, staging / folder / item.name)
            written.rmdir()
        sha = _record_fingerprint(staging / folder, base_record)
        if classifier is not None:
            info = {
                "format_version": _CLASSIFIER_FORMAT,
                "class_names": classifier.class_names,
                "template": classifier.template,
                "adapter_weights_sha256": sha,
            }
            (staging / folder / CLASSIFIER_CONFIG_NAME).write_text(json.dumps(info, indent=2), encoding="utf-8")
    _write_card(peft_model, classifier, layout, staging, eval_results, repo_id, subfolder, revision)


def _record_fingerprint(folder: Path, base_record: Mapping[str, Any]) -> str:
    """Write the sha256 of `folder`'s safetensors weights (and the base model record) into its `adapter_config.json`,
    last, so that weights and config written by different saves are told apart on loading; return the sha256."""
    config_path = folder / CONFIG_NAME
    config = json.loads(config_path.read_text(encoding="utf-8"))
    sha = _sha256(folder / SAFETENSORS_WEIGHTS_NAME)
    config["auto_mapping"] = {**(config.get("auto_mapping") or {}), WEIGHTS_FINGERPRINT_KEY: sha, **base_record}
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
    return sha


def is_mudpt_model(model: Any) -> bool:
    """Whether `model` is a `PeftModel` whose adapters are all MuDPT adapters."""
    from .config import MuDPTConfig

    configs = getattr(model, "peft_config", None)
    return isinstance(configs, Mapping) and bool(configs) and all(isinstance(c, MuDPTConfig) for c in configs.values())


def finish_plain_save(model: PeftModel, save_directory: str | os.PathLike, selected: Sequence[str] | None) -> None:
    """What a plain `PeftModel.save_pretrained` of MuDPT adapters adds after peft has written its files: the weights'
    fingerprint in each `adapter_config.json` and the MuDPT model card (with the recorded evaluation results).

    `import mudpt_peft` installs this after `PeftModel.save_pretrained` for models whose adapters are all MuDPT
    adapters saved as safetensors (see `mudpt_peft._peft_hooks`).
    """
    directory = Path(save_directory)
    layout = _selected_adapters(model, None, selected)
    base_record = base_model_record(model.get_base_model())
    for folder in layout.values():
        if (directory / folder / SAFETENSORS_WEIGHTS_NAME).is_file():
            _record_fingerprint(directory / folder, base_record)
    _write_card(model, None, layout, directory, None, None, None, None)


def rewrite_card_for_push(
    model: PeftModel, working_dir: str | os.PathLike, repo_id: str, revision: str | None = None
) -> None:
    """Replace the card that transformers' `push_to_hub` put into its upload folder (the repository's card, or a blank
    template for a new repository) by the MuDPT model card, keeping that card's tags.

    `import mudpt_peft` installs this before the upload of a plain `PeftModel.push_to_hub` of MuDPT adapters.
    """
    from huggingface_hub import ModelCard

    directory = Path(working_dir)
    layout = {
        name: folder
        for name, folder in _selected_adapters(model, None, None).items()
        if (directory / folder / CONFIG_NAME).is_file()
    }
    if not layout:
        return
    tags: list[str] = []
    card_path = directory / "README.md"
    if card_path.is_file():
        with contextlib.suppress(Exception):  # an unreadable card is replaced all the same
            tags = list(ModelCard.load(card_path).data.tags or [])
    _write_card(model, None, layout, directory, None, repo_id, None, revision, extra_tags=tags)


def _fsync(path: Path) -> None:
    with contextlib.suppress(OSError):  # directories cannot be opened for fsync everywhere (e.g. Windows)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _move_into_place(staging: Path, target: Path, layout: Mapping[str, str], classifier: bool) -> None:
    """Move the staged files into `target`, each adapter's config removed first and written last."""
    for folder in sorted(set(layout.values()), key=lambda f: (f == "", f)):  # subfolders first, the root last
        source, destination = staging / folder, target / folder
        destination.mkdir(parents=True, exist_ok=True)
        (destination / CONFIG_NAME).unlink(missing_ok=True)  # from here on the folder is not a loadable adapter
        _fsync(destination)
        if not classifier:
            (destination / CLASSIFIER_CONFIG_NAME).unlink(missing_ok=True)  # stale: belongs to an older save
        files = [item for item in source.iterdir() if item.is_file() and item.name != CONFIG_NAME]
        for item in [*sorted(files, key=lambda i: i.name != SAFETENSORS_WEIGHTS_NAME), source / CONFIG_NAME]:
            _fsync(item)
            os.replace(item, destination / item.name)
        _fsync(destination)


def save_pretrained(
    model: PeftModel | PromptClassifier,
    save_directory: str | os.PathLike,
    selected_adapters: Sequence[str] | None = None,
    eval_results: Mapping | Sequence[Mapping] | None = None,
    is_main_process: bool = True,
) -> Path:
    """Save MuDPT adapters (or a prompt classifier) like `PeftModel.save_pretrained`, crash-safe and with a model card.

    The folder gets what peft writes (`adapter_config.json`, `adapter_model.safetensors`; adapters other than
    `default` in a subfolder of their name), the MuDPT model card (`README.md`, see [`write_model_card`]) and, for a
    [`~mudpt_peft.PromptClassifier`], `prompt_classifier.json` with the class names and template beside its active
    adapter (saved in the folder itself whatever its name). Each `adapter_config.json` records the sha256 of its
    weights, checked when loading. Files are written to a temporary folder first and moved into place with each
    config removed first and written last, so an interrupted save never leaves a folder that loads as a wrong
    adapter. Weights are always safetensors.

    Args:
        model (`PeftModel` or [`~mudpt_peft.PromptClassifier`]):
            The model whose adapters to save.
        save_directory (`str` or `os.PathLike`):
            The folder (created if needed). Files of an earlier save there are replaced.
        selected_adapters (`list[str]`, *optional*):
            The adapters to save (default: all; not for a classifier).
        eval_results (`dict` or list of `dict`, *optional*):
            Evaluation results for the model card (see [`write_model_card`]).
        is_main_process (`bool`, defaults to `True`):
            Write nothing unless `True` (for distributed training).

    Returns:
        `Path`: the folder.

    Example:

        ```py
        >>> mudpt_peft.hub.save_pretrained(model, "out", eval_results={"dataset": "eurosat", "accuracy": 84.2})
        >>> PeftModel.from_pretrained(CLIPModel.from_pretrained(base_id), "out")
        ```
    """
    target = Path(save_directory)
    if target.is_file():
        raise ValueError(f"`save_directory` must be a folder, but '{target}' is a file.")
    peft_model, classifier = _split_model(model)
    layout = _selected_adapters(peft_model, classifier, selected_adapters)
    if not is_main_process:
        return target
    target.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.resolve().name}.mudpt-save-", dir=target.resolve().parent))
    try:
        _stage(peft_model, classifier, layout, staging, eval_results)
        _move_into_place(staging, target, layout, classifier is not None)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def push_to_hub(
    model: PeftModel | PromptClassifier,
    repo_id: str,
    *,
    subfolder: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    create_pr: bool = False,
    selected_adapters: Sequence[str] | None = None,
    eval_results: Mapping | Sequence[Mapping] | None = None,
) -> huggingface_hub.CommitInfo:
    """Push MuDPT adapters (or a prompt classifier) to a Hub repository in one commit, with the MuDPT model card.

    Uploads the files [`save_pretrained`] writes (the card goes beside the adapter: into `subfolder` when one is
    given, leaving the repository's root card alone). Creates the repository and the branch `revision` if needed.
    Stale files of an older push in the same folder that this push would contradict (`adapter_model.bin`, a
    `prompt_classifier.json` of an earlier classifier) are deleted in the same commit.

    Args:
        model (`PeftModel` or [`~mudpt_peft.PromptClassifier`]):
            The model whose adapters to push.
        repo_id (`str`):
            The repository, e.g. `"your-name/clip-mudpt-eurosat"`.
        subfolder (`str`, *optional*):
            A folder of the repository to push to, so that one repository can hold several adapters (load them with
            `PeftModel.from_pretrained(base, repo_id, subfolder=...)`).
        revision (`str`, *optional*):
            The branch to push to (created from `main` if it does not exist).
        commit_message (`str`, *optional*):
            Defaults to `"Upload MuDPT adapter"`.
        commit_description (`str`, *optional*):
            The commit's description.
        private (`bool`, *optional*):
            Whether a newly created repository is private.
        token (`str` or `bool`, *optional*):
            The Hub token (default: the one you are logged in with).
        create_pr (`bool`, defaults to `False`):
            Open a pull request instead of committing to `revision`.
        selected_adapters (`list[str]`, *optional*):
            The adapters to push (default: all; not for a classifier).
        eval_results (`dict` or list of `dict`, *optional*):
            Evaluation results for the model card (see [`write_model_card`]).

    Returns:
        `huggingface_hub.CommitInfo`: the commit (its `oid` can be passed as `revision=` when loading).
    """
    peft_model, classifier = _split_model(model)
    layout = _selected_adapters(peft_model, classifier, selected_adapters)
    prefix = (subfolder or "").strip("/")
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if revision is not None and not revision.startswith("refs/pr"):
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mudpt-push-") as tmp:
        staging = Path(tmp)
        _stage(peft_model, classifier, layout, staging, eval_results, repo_id, prefix or None, revision)
        operations: list[CommitOperationAdd | CommitOperationDelete] = []
        uploaded = set()
        for path in sorted(staging.rglob("*")):
            if path.is_file():
                path_in_repo = "/".join(part for part in (prefix, path.relative_to(staging).as_posix()) if part)
                uploaded.add(path_in_repo)
                operations.append(CommitOperationAdd(path_in_repo=path_in_repo, path_or_fileobj=str(path)))
        remote = set(api.list_repo_files(repo_id, revision=revision))
        for folder in set(layout.values()):
            for stale in (PICKLED_WEIGHTS_NAME, CLASSIFIER_CONFIG_NAME):
                path_in_repo = "/".join(part for part in (prefix, folder, stale) if part)
                if path_in_repo in remote and path_in_repo not in uploaded:
                    operations.append(CommitOperationDelete(path_in_repo=path_in_repo))
        return api.create_commit(
            repo_id,
            operations,
            commit_message=commit_message or f"Upload MuDPT {'prompt classifier' if classifier else 'adapter'}",
            commit_description=commit_description,
            revision=revision,
            create_pr=create_pr,
        )


# ---------------------------------------------------------------------------------------------------------------------
# prompt classifiers


def load_classifier_info(
    pretrained_model_name_or_path: str | os.PathLike, subfolder: str | None = None, **hub_kwargs: Any
) -> tuple[dict[str, Any], _CheckedAdapter]:
    """Check the adapter at the location and read its `prompt_classifier.json`: `(classifier info, checked adapter)`."""
    source = _Source.of(pretrained_model_name_or_path, subfolder, **hub_kwargs)
    checked = _check_adapter(source)
    path = source.fetch(CLASSIFIER_CONFIG_NAME)
    if path is None:
        raise ValueError(
            f"{source.describe(CLASSIFIER_CONFIG_NAME)} does not exist: {source.describe()} holds a MuDPT adapter but "
            "no prompt classifier. Load the adapter with `PeftModel.from_pretrained` and build "
            "`PromptClassifier(model, tokenizer, class_names, template)` yourself."
        )
    info = _read_json(path, source.describe(CLASSIFIER_CONFIG_NAME))
    names, template = info.get("class_names"), info.get("template")
    if (
        not isinstance(names, list)
        or not names
        or not all(isinstance(name, str) for name in names)
        or not isinstance(template, str)
        or "{}" not in template
    ):
        raise ValueError(
            f"{source.describe(CLASSIFIER_CONFIG_NAME)} must hold 'class_names' (a non-empty list of strings) and "
            f"'template' (a string with '{{}}'), got {info!r}."
        )
    if info.get("format_version", _CLASSIFIER_FORMAT) > _CLASSIFIER_FORMAT:
        raise ValueError(
            f"{source.describe(CLASSIFIER_CONFIG_NAME)} has format version {info['format_version']}; this mudpt-peft "
            f"reads version {_CLASSIFIER_FORMAT}. Upgrade mudpt-peft."
        )
    expected = info.get("adapter_weights_sha256")
    if expected is not None and expected != checked.weights_sha256:
        raise ValueError(
            f"{source.describe(CLASSIFIER_CONFIG_NAME)} was saved with another adapter than the one beside it (its "
            "adapter_model.safetensors has changed since). Save the classifier again with "
            "`PromptClassifier.save_pretrained` / `push_to_hub`."
        )
    return info, checked
