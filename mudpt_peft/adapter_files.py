"""The files of a saved MuDPT adapter: finding them (locally or on the Hub), checking them, reading the config.

- Where an adapter lives: a local folder or a Hub repository with revision and subfolder ([`check_adapter`] and the
  loaders take the same arguments as peft's `from_pretrained`).
- The pickle policy: weights that exist only as a pickled `adapter_model.bin` are refused unless
  [`allow_pickled_weights`] is active or `MUDPT_ALLOW_PICKLED_WEIGHTS=1`, since unpickling can run code.
- The fingerprint: every save records in `adapter_config.json` (`auto_mapping`) the sha256 of the adapter's tensors
  ([`tensors_fingerprint`], computed from the tensors written); the tuner compares it with the tensors it is about to
  load, whatever the entry point (`PeftModel.from_pretrained`, `load_adapter`, transformers' `load_adapter` through
  `PeftConfig.from_pretrained`), so that a config and weights of two different saves never load as one adapter.
  Adapters saved by earlier versions record the sha256 of the safetensors file instead; it is checked when the
  config is read ([`load_config`]).
- Load-time checks before any weight is created ([`load_config`], run by `MuDPTConfig.from_pretrained`): the config
  is valid JSON of peft type MUDPT; the weights are complete safetensors (or an allowed pickle); weights are required
  when the config records their fingerprint.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import huggingface_hub
import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from ._peft_type import MUDPT_PEFT_TYPE, MUDPT_PREFIX, peft_type_value

if TYPE_CHECKING:
    from .config import MuDPTConfig

__all__ = [
    "ALLOW_PICKLED_WEIGHTS_ENV",
    "CLASSIFIER_CONFIG_NAME",
    "TENSORS_FINGERPRINT_KEY",
    "WEIGHTS_FINGERPRINT_KEY",
    "NotAPeftConfigError",
    "adapter_fingerprint",
    "allow_pickled_weights",
    "check_adapter",
    "load_classifier_info",
    "load_config",
    "pickled_weights_allowed",
    "tensors_fingerprint",
]

CONFIG_NAME = "adapter_config.json"
SAFETENSORS_WEIGHTS_NAME = "adapter_model.safetensors"
PICKLED_WEIGHTS_NAME = "adapter_model.bin"
#: The file beside a classifier's adapter that holds its class names and template.
CLASSIFIER_CONFIG_NAME = "prompt_classifier.json"
#: The key, inside `auto_mapping` of `adapter_config.json`, of the sha256 of the adapter's tensors
#: ([`tensors_fingerprint`]).
TENSORS_FINGERPRINT_KEY = "mudpt_tensors_sha256"
#: The key of the sha256 of `adapter_model.safetensors`, as adapters saved by mudpt-peft before 0.2 record it.
WEIGHTS_FINGERPRINT_KEY = "mudpt_weights_sha256"
#: Set this environment variable to `1` to allow loading pickled `adapter_model.bin` weights (see
#: [`allow_pickled_weights`]).
ALLOW_PICKLED_WEIGHTS_ENV = "MUDPT_ALLOW_PICKLED_WEIGHTS"
CLASSIFIER_FORMAT = 1
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
# the fingerprint of an adapter's tensors


def canonical_key(key: str) -> str:
    """A state-dict key as saved, without the `base_model.model.` prefix of a `PeftModel` (which a plain model's
    `set_peft_model_state_dict` keys lack)."""
    return key.removeprefix("base_model.model.")


def tensors_fingerprint(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The sha256 of an adapter's tensors: their names (see [`canonical_key`]), dtypes, shapes and bytes, in name order.

    The same for the tensors written by a save and the tensors read back by a load of that file, and independent of
    the safetensors file layout, so that the tuner can check the very tensors it loads.
    """
    digest = hashlib.sha256()
    for key in sorted(state_dict, key=canonical_key):
        tensor = state_dict[key].detach()
        header = json.dumps([canonical_key(key), str(tensor.dtype), list(tensor.shape)])
        digest.update(header.encode("utf-8"))
        digest.update(tensor.cpu().contiguous().view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def adapter_fingerprint(state_dict: Mapping[str, torch.Tensor]) -> str:
    """[`tensors_fingerprint`] of the MuDPT tensors of a state dict (what peft may save beside them, such as resized
    embeddings, left out): what a save records and what every load compares."""
    return tensors_fingerprint({key: value for key, value in state_dict.items() if MUDPT_PREFIX in key})


def mismatch_message(what: str, recorded: str, actual: str) -> str:
    """The error for weights that are not the ones saved with their config."""
    return (
        f"{what} does not belong to its adapter_config.json: the config was saved with tensors of sha256 "
        f"{recorded[:16]}…, these have sha256 {actual[:16]}…. The folder mixes files of two saves (an interrupted "
        "`save_pretrained` or upload, two writers at once) or the weights were replaced or damaged. Save the adapter "
        "again (`mudpt_peft.hub.save_pretrained` is crash-safe), or restore both files from the same save."
    )


# ---------------------------------------------------------------------------------------------------------------------
# finding the files of an adapter, locally or on the Hub

_HUB_DOWNLOAD_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "force_download", "user_agent")


@dataclass
class Source:
    """Where an adapter lives: a local folder or a Hub repository (with revision and subfolder)."""

    model_id: str
    subfolder: str | None
    local: bool
    download_kwargs: dict[str, Any]

    @classmethod
    def of(cls, model_id: str | os.PathLike, subfolder: str | None, **kwargs: Any) -> Source:
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


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, as hex."""
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


class NotAPeftConfigError(ValueError, TypeError):
    """An `adapter_config.json` without `peft_type`: the file is not the config of a peft adapter.

    A `ValueError`, as every refusal of a damaged or foreign adapter file is, and also a `TypeError`, which is what
    peft's `PeftConfig.from_pretrained` raises for such a file (its tests expect it of every config class), so that
    code written against either catches it.
    """


@dataclass
class CheckedAdapter:
    """An adapter whose config and weights files passed the load-time checks."""

    source: Source
    config_file: Path
    config: dict[str, Any]
    safetensors_file: Path | None  # None for pickled or absent weights


def recorded_fingerprints(config: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """`(tensors fingerprint, legacy file fingerprint)` recorded in an `adapter_config.json`'s `auto_mapping`."""
    auto_mapping = config.get("auto_mapping")
    if not isinstance(auto_mapping, Mapping):
        return None, None
    return auto_mapping.get(TENSORS_FINGERPRINT_KEY), auto_mapping.get(WEIGHTS_FINGERPRINT_KEY)


def _check_adapter(
    source: Source, require_weights: bool | None = None, config_class_name: str = "MuDPTConfig"
) -> CheckedAdapter:
    """Run the load-time checks on the adapter at `source`; raise a `ValueError` that says what is wrong
    ([`NotAPeftConfigError`] for a config without `peft_type`, named after `config_class_name` as peft names it).

    Weights that are present are always checked. Their absence is an error when `require_weights`, by default when
    the config records their fingerprint (every save of an adapter with its weights does; a config saved on its own,
    `MuDPTConfig.save_pretrained`, does not and loads by itself)."""
    config_file = source.require(CONFIG_NAME, "a MuDPT adapter folder holds adapter_config.json")
    config = _read_json(config_file, source.describe(CONFIG_NAME))
    peft_type = config.get("peft_type")
    if peft_type is None:
        # the first sentence is peft's own message for such a file
        raise NotAPeftConfigError(
            f"The {config_class_name} config that is trying to be loaded is missing required keys: {{'peft_type'}}. "
            f"{source.describe(CONFIG_NAME)} has no 'peft_type': it is not the config of a peft adapter. Load a "
            "folder written by `save_pretrained` of a MuDPT adapter."
        )
    if peft_type_value(peft_type) != MUDPT_PEFT_TYPE.value:
        raise ValueError(
            f"{source.describe(CONFIG_NAME)} is a {peft_type} adapter, not a MuDPT (MUDPT) adapter. Load it with "
            "`peft.PeftModel.from_pretrained` or `peft.PeftConfig.from_pretrained` instead."
        )
    tensors_sha, fingerprint = recorded_fingerprints(config)
    if require_weights is None:
        require_weights = tensors_sha is not None or fingerprint is not None
    weights_file = source.fetch(SAFETENSORS_WEIGHTS_NAME)
    if weights_file is None:
        return _check_pickled(source, config_file, config, tensors_sha or fingerprint, require_weights)

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
    if tensors_sha is not None:  # also compared by the tuner with what it loads; checked here to name the file
        from safetensors.torch import load_file

        actual = adapter_fingerprint(load_file(str(weights_file)))
        if actual != tensors_sha:
            raise ValueError(mismatch_message(source.describe(SAFETENSORS_WEIGHTS_NAME), tensors_sha, actual))
    sha = file_sha256(weights_file) if fingerprint is not None else None  # read only for a legacy fingerprint
    if fingerprint is not None and fingerprint != sha:
        raise ValueError(
            f"{source.describe(SAFETENSORS_WEIGHTS_NAME)} does not belong to its adapter_config.json: the config was "
            f"saved with weights of sha256 {fingerprint[:16]}…, this file has sha256 {sha[:16]}…. The folder mixes "
            "files of two saves (an interrupted `save_pretrained`?) or the weights were replaced or damaged. Save "
            "the adapter again with `mudpt_peft.hub.save_pretrained` / `push_to_hub`, or restore both files from "
            "the same save."
        )
    return CheckedAdapter(source, config_file, config, weights_file)


def _check_pickled(
    source: Source, config_file: Path, config: dict[str, Any], fingerprint: str | None, require_weights: bool
) -> CheckedAdapter:
    weights_file = source.fetch(PICKLED_WEIGHTS_NAME)  # fetching is harmless: only unpickling runs code
    if weights_file is None and not require_weights:
        return CheckedAdapter(source, config_file, config, None)
    if weights_file is None:
        raise ValueError(
            f"{source.describe(SAFETENSORS_WEIGHTS_NAME)} does not exist: an adapter needs its weights next to "
            f"adapter_config.json (the save or upload was incomplete?). Save or upload the adapter again."
        )
    if fingerprint is not None:
        raise ValueError(
            f"{source.describe(CONFIG_NAME)} was saved with adapter_model.safetensors (it records a sha256), but "
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
        torch.load(weights_file, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"{source.describe(PICKLED_WEIGHTS_NAME)} could not be read as a PyTorch state dict ({error}): it is "
            "truncated, corrupted or not a weights-only pickle."
        ) from error
    return CheckedAdapter(source, config_file, config, None)


def check_adapter(
    pretrained_model_name_or_path: str | os.PathLike, subfolder: str | None = None, **hub_kwargs: Any
) -> None:
    """Run every load-time check on a MuDPT adapter without loading it; raise a `ValueError` that says what is wrong.

    The checks are those `PeftModel.from_pretrained` runs through [`MuDPTConfig.from_pretrained`]: the repository,
    revision and files exist; `adapter_config.json` is valid JSON of peft type MUDPT; `adapter_model.safetensors` is
    complete (and present when the config records a fingerprint of it); pickled `adapter_model.bin` weights only
    inside [`allow_pickled_weights`]. A valid `MuDPTConfig` is not required here. The tensors fingerprint is compared
    when the tensors are loaded.

    Args:
        pretrained_model_name_or_path (`str` or `os.PathLike`):
            A local folder or a Hub repository id.
        subfolder (`str`, *optional*):
            The folder of the adapter inside it.
        hub_kwargs:
            `revision`, `token`, `cache_dir`, `local_files_only`, `force_download` for the Hub.
    """
    _check_adapter(Source.of(pretrained_model_name_or_path, subfolder, **hub_kwargs))


def load_config(
    config_cls: type[MuDPTConfig], pretrained_model_name_or_path: str | os.PathLike, subfolder: str | None, **kwargs
) -> MuDPTConfig:
    """The implementation of [`MuDPTConfig.from_pretrained`]: check the adapter's files, then build its config.

    Weights next to the config are always checked (pickles refused unless allowed, damage, a legacy file
    fingerprint); missing weights are refused when the config records their fingerprint. The tensors fingerprint
    stays in the config's `auto_mapping`: the tuner compares it with the tensors it loads.
    """
    hub_kwargs, class_kwargs, _ = config_cls._split_kwargs(kwargs)
    source = Source.of(pretrained_model_name_or_path, subfolder, **hub_kwargs)
    checked = _check_adapter(source, config_class_name=config_cls.__name__)
    attributes = config_cls.from_json_file(str(checked.config_file))
    auto_mapping = attributes.get("auto_mapping")
    if isinstance(auto_mapping, dict) and WEIGHTS_FINGERPRINT_KEY in auto_mapping:
        # the legacy file fingerprint was checked above; not kept, it describes that file only
        auto_mapping = {k: v for k, v in auto_mapping.items() if k != WEIGHTS_FINGERPRINT_KEY}
        attributes["auto_mapping"] = auto_mapping or None
    try:
        return config_cls.from_peft_type(**config_cls.check_kwargs(**{**class_kwargs, **attributes}))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{source.describe(CONFIG_NAME)} is not a valid MuDPT config: {error}") from error


# ---------------------------------------------------------------------------------------------------------------------
# prompt classifiers


def load_classifier_info(
    pretrained_model_name_or_path: str | os.PathLike, subfolder: str | None = None, **hub_kwargs: Any
) -> tuple[dict[str, Any], CheckedAdapter]:
    """Check the adapter at the location and read its `prompt_classifier.json`: `(classifier info, checked adapter)`."""
    source = Source.of(pretrained_model_name_or_path, subfolder, **hub_kwargs)
    checked = _check_adapter(source, require_weights=True)
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
    if info.get("format_version", CLASSIFIER_FORMAT) > CLASSIFIER_FORMAT:
        raise ValueError(
            f"{source.describe(CLASSIFIER_CONFIG_NAME)} has format version {info['format_version']}; this mudpt-peft "
            f"reads version {CLASSIFIER_FORMAT}. Upgrade mudpt-peft."
        )
    expected = info.get("adapter_weights_sha256")
    if expected is not None and (checked.safetensors_file is None or expected != file_sha256(checked.safetensors_file)):
        raise ValueError(
            f"{source.describe(CLASSIFIER_CONFIG_NAME)} was saved with another adapter than the one beside it (its "
            "adapter_model.safetensors has changed since). Save the classifier again with "
            "`PromptClassifier.save_pretrained` / `push_to_hub`."
        )
    return info, checked
