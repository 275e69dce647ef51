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
  is a JSON object of bounded size and nesting, of peft type MUDPT, with an `auto_mapping` of the expected structure
  ([`check_auto_mapping`]); the weights are complete safetensors (or an allowed pickle); weights are required when
  the config records their fingerprint. Every refusal is a `ValueError` that names the file, with values from the
  file quoted cut short.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import json
import os
import warnings
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
from ._utils import check_class_names, check_template, short_repr, value_and_type
from .compat import BASE_FAMILY_KEY, BASE_GEOMETRY_KEY

if TYPE_CHECKING:
    from .config import MuDPTConfig

__all__ = [
    "ALLOW_PICKLED_WEIGHTS_ENV",
    "CLASSIFIER_CONFIG_NAME",
    "TENSORS_FINGERPRINT_KEY",
    "WEIGHTS_FINGERPRINT_KEY",
    "adapter_fingerprint",
    "allow_pickled_weights",
    "check_adapter",
    "check_auto_mapping",
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


#: The largest `adapter_config.json` read (a real one is about 1 KB; `ctx_init` at its 16384-character cap and 1024
#: token ids stay far below).
MAX_CONFIG_FILE_BYTES = 1 << 20
#: The largest `prompt_classifier.json` read (ImageNet-21k's 21,843 class names take about 0.5 MB).
MAX_CLASSIFIER_FILE_BYTES = 16 << 20
#: How deeply the JSON values of these files may nest (MuDPT's own nest 3 levels: `auto_mapping`, the geometry).
MAX_JSON_DEPTH = 16
#: The longest `peft_type` string read (peft's types are at most 15 characters).
_MAX_PEFT_TYPE_CHARS = 64
_SHA256_HEX = frozenset("0123456789abcdef")
_AGAIN = "the file is truncated, corrupted or was edited by hand; save or upload it again"


def _json_depth_exceeds(value: Any, limit: int) -> bool:
    """Whether `value` (parsed JSON) nests lists / objects more than `limit` levels deep; iterative, so that no depth
    of nesting can exhaust the stack."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            if depth >= limit:
                return True
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


def _read_json(path: Path, description: str) -> dict[str, Any]:
    """The JSON object in `path`, or a `ValueError` that starts with `description` (the file and where it is) and
    says what is wrong: unreadable, larger than it can be, not UTF-8, not JSON, a JSON value that is not an object,
    nested deeper than [`MAX_JSON_DEPTH`], an integer of more digits than Python converts.

    An `adapter_config.json` is also checked for what the load-time checks read before any config is built: its
    `peft_type` (a string) and its `auto_mapping` (see [`check_auto_mapping`]).
    """
    limit = MAX_CONFIG_FILE_BYTES if path.name == CONFIG_NAME else MAX_CLASSIFIER_FILE_BYTES
    try:
        with open(path, "rb") as file:
            data = file.read(limit + 1)  # never more than the limit, whatever the file grows to meanwhile
    except OSError as error:
        raise ValueError(f"{description} could not be read ({error.strerror or error}).") from error
    if len(data) > limit:
        raise ValueError(
            f"{description} is larger than {limit // (1 << 20)} MB, which no MuDPT adapter writes: {_AGAIN}."
        )
    try:
        content = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        reason = short_repr(str(error), 120)[1:-1] if isinstance(error, json.JSONDecodeError) else "not UTF-8"
        raise ValueError(
            f"{description} is not valid JSON ({reason}); the file is truncated or corrupted (an interrupted save or "
            "upload?). Save or upload it again."
        ) from None
    except RecursionError:
        raise ValueError(f"{description} nests JSON values too deeply to be read: {_AGAIN}.") from None
    except ValueError:  # int(): more than sys.get_int_max_str_digits() digits
        raise ValueError(f"{description} holds an integer of thousands of digits: {_AGAIN}.") from None
    if not isinstance(content, dict):
        raise ValueError(f"{description} must hold a JSON object, got {type(content).__name__}: {_AGAIN}.")
    if _json_depth_exceeds(content, MAX_JSON_DEPTH):
        raise ValueError(f"{description} nests JSON values more than {MAX_JSON_DEPTH} levels deep: {_AGAIN}.")
    if path.name == CONFIG_NAME:
        peft_type = content.get("peft_type")
        if peft_type is not None and (not isinstance(peft_type, str) or len(peft_type) > _MAX_PEFT_TYPE_CHARS):
            raise ValueError(
                f"{description} has a 'peft_type' of {value_and_type(peft_type, 80)}; it must be the name of a peft "
                f"method, such as 'MUDPT' or 'LORA': {_AGAIN}."
            )
        try:
            check_auto_mapping(content.get("auto_mapping"))
        except ValueError as error:
            raise ValueError(f"{description} is not a valid MuDPT config: {error}") from None
    return content


def _is_sha256(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and _SHA256_HEX.issuperset(value)


def check_auto_mapping(auto_mapping: object) -> None:
    """Check the `auto_mapping` of an adapter config: `None` or a dict whose records have the types their readers
    expect; a `ValueError` that names the entry otherwise.

    The records: peft's `base_model_class` and `parent_library` (strings); MuDPT's fingerprints
    ([`TENSORS_FINGERPRINT_KEY`], [`WEIGHTS_FINGERPRINT_KEY`]: sha256 hex digests, as every save writes them) and
    base model record (`mudpt_base_family`: a string, `mudpt_base_geometry`: an object of integers, see
    `mudpt_peft.compat`). Other entries (another tool's) are left alone, as long as they nest at most
    [`MAX_JSON_DEPTH`] levels.
    """
    if auto_mapping is None:
        return
    if not isinstance(auto_mapping, Mapping):
        raise ValueError(
            "`auto_mapping` must be a JSON object (the records of the base model and of the weights) or null, got "
            f"{value_and_type(auto_mapping, 80)}."
        )
    if _json_depth_exceeds(dict(auto_mapping), MAX_JSON_DEPTH):
        raise ValueError(f"`auto_mapping` nests more than {MAX_JSON_DEPTH} levels deep.")
    for key in (TENSORS_FINGERPRINT_KEY, WEIGHTS_FINGERPRINT_KEY):
        value = auto_mapping.get(key)
        if value is not None and not _is_sha256(value):
            raise ValueError(
                f"`auto_mapping.{key}` must be a sha256 (64 lowercase hexadecimal digits) as every save records it, "
                f"got {value_and_type(value, 80)}; restore adapter_config.json from the save of its weights."
            )
    for key in ("base_model_class", "parent_library", BASE_FAMILY_KEY):
        value = auto_mapping.get(key)
        if value is not None and (not isinstance(value, str) or not 0 < len(value) <= 1000):
            raise ValueError(
                f"`auto_mapping.{key}` must be a name (a non-empty string of at most 1000 characters), got "
                f"{value_and_type(value, 80)}."
            )
    geometry = auto_mapping.get(BASE_GEOMETRY_KEY)
    if geometry is not None:
        bad = (
            [(None, geometry)]
            if not isinstance(geometry, Mapping)
            else [
                (name, size)
                for name, size in geometry.items()
                if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size < 1 << 31
            ]
        )
        if bad:
            name, size = bad[0]
            where = f"`auto_mapping.{BASE_GEOMETRY_KEY}" + (f".{short_repr(str(name), 60)[1:-1]}" if name else "") + "`"
            raise ValueError(
                f"{where} must be {'an integer' if name else 'an object of widths and layer counts'} (as every save "
                f"records it), got {value_and_type(size, 80)}."
            )


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


def _check_adapter(source: Source, require_weights: bool | None = None) -> CheckedAdapter:
    """Run the load-time checks on the adapter at `source`; raise a `ValueError` that says what is wrong.

    Weights that are present are always checked. Their absence is an error when `require_weights`, by default when
    the config records their fingerprint (every save of an adapter with its weights does; a config saved on its own,
    `MuDPTConfig.save_pretrained`, does not and loads by itself)."""
    config_file = source.require(CONFIG_NAME, "a MuDPT adapter folder holds adapter_config.json")
    config = _read_json(config_file, source.describe(CONFIG_NAME))
    peft_type = config.get("peft_type")
    if peft_type is None:
        raise ValueError(f"{source.describe(CONFIG_NAME)} has no 'peft_type': it is not a peft adapter config.")
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
    inside [`allow_pickled_weights`]. A valid `MuDPTConfig` is not required here, but `adapter_config.json` must be a
    JSON object of at most 1 MB and 16 levels of nesting, with a string `peft_type` and a well-formed `auto_mapping`.
    The tensors fingerprint is compared when the tensors are loaded.

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

    The config is built from the very content that was checked (the file is read once). As peft does, entries that
    are not fields of `config_cls` (written by a newer version) are ignored with a warning, and a `runtime_config`
    entry is dropped; every field is then checked by the config itself, and a refusal names the file.
    """
    hub_kwargs, class_kwargs, _ = config_cls._split_kwargs(kwargs)
    source = Source.of(pretrained_model_name_or_path, subfolder, **hub_kwargs)
    checked = _check_adapter(source)
    attributes = dict(checked.config)
    if attributes.pop("runtime_config", None) is not None:
        warnings.warn(
            f"{source.describe(CONFIG_NAME)} contains a `runtime_config` entry; it is ignored (runtime settings are "
            "only valid at runtime).",
            stacklevel=3,
        )
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(key for key in attributes if key not in fields)
    if unknown:
        for key in unknown:
            del attributes[key]
        listed = "[" + ", ".join(short_repr(key, 60) for key in unknown[:5])
        listed += f", ... and {len(unknown) - 5} more]" if len(unknown) > 5 else "]"
        warnings.warn(  # peft's message (which its tests match), with the list cut short and the file named
            f"Unexpected keyword arguments {listed} for class {config_cls.__name__}, these are ignored. They are in "
            f"{source.describe(CONFIG_NAME)}, probably saved by a newer version of mudpt-peft or peft; upgrading "
            "is recommended.",
            stacklevel=3,
        )
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
    description = source.describe(CLASSIFIER_CONFIG_NAME)
    info = _read_json(path, description)
    version = info.get("format_version")
    version = CLASSIFIER_FORMAT if version is None else version
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(
            f"{description} has a 'format_version' of {value_and_type(version, 80)}; it must be an integer >= 1 "
            f"(this mudpt-peft writes {CLASSIFIER_FORMAT}): {_AGAIN}."
        )
    if version > CLASSIFIER_FORMAT:
        raise ValueError(
            f"{description} has format version {short_repr(version, 80)}; this mudpt-peft reads version "
            f"{CLASSIFIER_FORMAT}. Upgrade mudpt-peft."
        )
    for key, check in (("class_names", check_class_names), ("template", check_template)):
        if key not in info:
            raise ValueError(f"{description} has no '{key}': {_AGAIN} with `PromptClassifier.save_pretrained`.")
        try:
            info[key] = check(info[key])
        except ValueError as error:
            raise ValueError(f"{description} holds an invalid '{key}': {error}") from None
    expected = info.get("adapter_weights_sha256")
    if expected is not None and not _is_sha256(expected):
        raise ValueError(
            f"{description} has an 'adapter_weights_sha256' of {value_and_type(expected, 80)}; it must be the sha256 "
            f"(64 lowercase hexadecimal digits) of the adapter's weights file: {_AGAIN}."
        )
    if expected is not None and (checked.safetensors_file is None or expected != file_sha256(checked.safetensors_file)):
        raise ValueError(
            f"{description} was saved with another adapter than the one beside it (its "
            "adapter_model.safetensors has changed since). Save the classifier again with "
            "`PromptClassifier.save_pretrained` / `push_to_hub`."
        )
    return info, checked
