"""The files of a saved MuDPT adapter: finding them (locally or on the Hub), checking them, reading the config.

- Where an adapter lives: a local folder or a Hub repository with revision and subfolder ([`check_adapter`] and the
  loaders take the same arguments as peft's `from_pretrained`). A Hub revision (a branch, a tag, by default `main`)
  is resolved to one commit first, and every file is read from that commit.
- The pickle policy: weights that exist only as a pickled `adapter_model.bin` are refused unless
  [`allow_pickled_weights`] is active or `MUDPT_ALLOW_PICKLED_WEIGHTS=1`, since unpickling can run code.
- The fingerprints: every save records in `adapter_config.json` (`auto_mapping`) the sha256 of the adapter's tensors
  ([`tensors_fingerprint`], computed from the tensors written, not read back) and of the config fields that decide
  what they compute ([`config_fingerprint`], e.g. `injection_heads`, which no tensor shape reveals). The tuner
  compares both with the tensors it is about to load and the config it loads them for, whatever the entry point
  (`PeftModel.from_pretrained` with or without `config=`, `load_adapter`, `set_peft_model_state_dict` after
  `PeftConfig.from_pretrained`), so that a config and weights of two different saves never load as one adapter;
  it also refuses tensors that are not floating point or not finite ([`check_tensor_values`]). The weights are read
  once, by the loader that loads them. Adapters saved by earlier versions record the sha256 of the safetensors
  file instead; [`load_config`] checks it and derives the tensors fingerprint from the same bytes.
- Load-time checks before any weight is created ([`load_config`], run by `MuDPTConfig.from_pretrained`): the config
  is a JSON object of bounded size and nesting, of peft type MUDPT, with an `auto_mapping` of the expected structure
  ([`check_auto_mapping`]); the weights file is a complete safetensors file (its header is parsed, its tensors are
  not read) or an allowed pickle; weights are required when the config records their fingerprint. Every refusal is
  a `ValueError` that names the file, with values from the file quoted cut short.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import json
import os
import re
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
from .names import check_subfolder
from .staging import recover_interrupted_saves, staged_copy_hint

if TYPE_CHECKING:
    from .config import MuDPTConfig

__all__ = [
    "ALLOW_PICKLED_WEIGHTS_ENV",
    "CLASSIFIER_CONFIG_NAME",
    "CONFIG_FINGERPRINT_KEY",
    "FINGERPRINTED_FIELDS",
    "TENSORS_FINGERPRINT_KEY",
    "WEIGHTS_FINGERPRINT_KEY",
    "NotAPeftConfigError",
    "adapter_fingerprint",
    "allow_pickled_weights",
    "check_adapter",
    "check_auto_mapping",
    "check_tensor_values",
    "config_fingerprint",
    "load_classifier_info",
    "load_config",
    "pickled_weights_allowed",
    "tensors_fingerprint",
]

CONFIG_NAME = "adapter_config.json"
SAFETENSORS_WEIGHTS_NAME = "adapter_model.safetensors"
PICKLED_WEIGHTS_NAME = "adapter_model.bin"
#: The file beside a classifier's adapter that holds its class names and template (or templates).
CLASSIFIER_CONFIG_NAME = "prompt_classifier.json"
#: The key, in `prompt_classifier.json`, of the tensors fingerprint of the adapter it was saved with (the one its
#: `adapter_config.json` records; files of earlier versions hold `adapter_weights_sha256`, the weights file's sha256).
CLASSIFIER_TENSORS_KEY = "adapter_tensors_sha256"
#: The key, inside `auto_mapping` of `adapter_config.json`, of the sha256 of the adapter's tensors
#: ([`tensors_fingerprint`]).
TENSORS_FINGERPRINT_KEY = "mudpt_tensors_sha256"
#: The key, inside `auto_mapping`, of the sha256 of the config fields an adapter's tensors were saved with
#: ([`config_fingerprint`]).
CONFIG_FINGERPRINT_KEY = "mudpt_config_sha256"
#: The `MuDPTConfig` fields that decide what an adapter's tensors compute. Some are revealed by no tensor shape
#: (`injection_heads`, `fusion` between kinds of equal shapes, depths beyond the saved prompts), so they are
#: fingerprinted. Initialisation-only fields (`ctx_init`, `prompt_init_std`, ...) and dropouts are not.
FINGERPRINTED_FIELDS = (
    "text_prompts",
    "vision_prompts",
    "fusion",
    "depth",
    "text_depth",
    "vision_depth",
    "n_ctx",
    "vision_n_ctx",
    "injection_layers",
    "injection_heads",
    "injection_mlp_ratio",
    "cross_attention_heads",
)
#: The floating dtypes adapter tensors may have on disk.
TENSOR_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
#: The key of the sha256 of `adapter_model.safetensors`, as adapters saved by mudpt-peft before 0.2 record it.
WEIGHTS_FINGERPRINT_KEY = "mudpt_weights_sha256"
#: Set this environment variable to `1` to allow loading pickled `adapter_model.bin` weights (see
#: [`allow_pickled_weights`]).
ALLOW_PICKLED_WEIGHTS_ENV = "MUDPT_ALLOW_PICKLED_WEIGHTS"
#: The newest `prompt_classifier.json` format: 2 adds `templates` (prompt ensembles); a single template is written as 1.
CLASSIFIER_FORMAT = 2
#: The most templates a `prompt_classifier.json` ensemble may hold (CLIP's ImageNet ensemble has 80).
MAX_TEMPLATES = 1024
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


def _field(config: Any, name: str) -> Any:
    return config.get(name) if isinstance(config, Mapping) else getattr(config, name, None)


def config_fingerprint(config: MuDPTConfig | Mapping[str, Any]) -> str:
    """The sha256 of the [`FINGERPRINTED_FIELDS`] of a config (a `MuDPTConfig` or its `adapter_config.json` content):
    what a save records beside the tensors fingerprint and what every load compares with the config it loads for."""
    values = {name: _field(config, name) for name in FINGERPRINTED_FIELDS}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def config_mismatch_message(what: str) -> str:
    """The error for weights loaded with config fields other than those they were saved with."""
    return (
        f"{what} was saved with other values of the config fields that decide what its tensors compute "
        f"({', '.join(FINGERPRINTED_FIELDS)}) than the config it is being loaded with: adapter_config.json was "
        "edited after the save, or such a field was changed on the config passed as `config=`. Restore "
        "adapter_config.json from that save, and leave those fields of a config read from it as they are."
    )


def check_tensor_values(state_dict: Mapping[str, torch.Tensor], what: str, only_mudpt: bool = True) -> None:
    """Refuse MuDPT tensors (with `only_mudpt=False`: all tensors) that are not floating point (integers and booleans
    would be cast silently, or kept as they are under `low_cpu_mem_usage`) or hold NaN or infinite values (a diverged
    or damaged save); `what` names the file or state dict in the `ValueError`."""
    tensors = {canonical_key(key): value for key, value in state_dict.items() if not only_mudpt or MUDPT_PREFIX in key}
    wrong = [f"{key} ({value.dtype})" for key, value in tensors.items() if value.dtype not in TENSOR_DTYPES]
    if wrong:
        raise ValueError(
            f"{what} holds adapter tensors that are not floating point: {_listed(wrong)}. Adapter weights are "
            "float16, bfloat16, float32 or float64; the file was not written by a save of a MuDPT adapter, or was "
            "damaged. Save the adapter again."
        )
    nonfinite = [key for key, value in tensors.items() if value.numel() and not torch.isfinite(value).all()]
    if nonfinite:
        raise ValueError(
            f"{what} holds adapter tensors with NaN or infinite values: {_listed(nonfinite)}. The training that "
            "saved them diverged (lower the learning rate, or use fp32 / bf16 instead of fp16), or the file was "
            "damaged. Load an earlier checkpoint."
        )


def _listed(items: list[str], limit: int = 5) -> str:
    listed = ", ".join(item if len(item) <= 120 else item[:117] + "..." for item in items[:limit])
    return listed + (f" and {len(items) - limit} more" if len(items) > limit else "")


def recorded_for_load(config: Any) -> tuple[str | None, str | None]:
    """`(tensors fingerprint, config fingerprint)` a config read from a save records for its tensors (None for a
    config that was not read from a save, or whose fingerprints a load has spent)."""
    auto_mapping = _field(config, "auto_mapping")
    if not isinstance(auto_mapping, Mapping):
        return None, None
    return auto_mapping.get(TENSORS_FINGERPRINT_KEY), auto_mapping.get(CONFIG_FINGERPRINT_KEY)


def spend_fingerprints(config: MuDPTConfig) -> None:
    """Remove the recorded fingerprints (and the record of the files it was read from) from a config whose tensors a
    load checked: they describe that save's tensors, not what the adapter holds later (a config saved on its own then
    records none)."""
    auto_mapping = config.auto_mapping if isinstance(config.auto_mapping, dict) else {}
    spent = (TENSORS_FINGERPRINT_KEY, CONFIG_FINGERPRINT_KEY)
    config.auto_mapping = {k: v for k, v in auto_mapping.items() if k not in spent} or None
    config.__dict__.pop("_loaded_from", None)


def verify_tensors(
    state_dict: Mapping[str, torch.Tensor],
    config: Any,
    what: str,
    recorded: tuple[str | None, str | None] | None = None,
) -> None:
    """Every check of tensors about to be loaded for `config`: [`check_tensor_values`], then the tensors and config
    fingerprints recorded by the save (`recorded`, by default those in `config`); a `ValueError` naming `what`."""
    check_tensor_values(state_dict, what)
    tensors_sha, config_sha = recorded_for_load(config) if recorded is None else recorded
    if tensors_sha is not None:
        actual = adapter_fingerprint(state_dict)
        if actual != tensors_sha:
            raise ValueError(mismatch_message(what, tensors_sha, actual))
    if config_sha is not None and config_fingerprint(config) != config_sha:
        raise ValueError(config_mismatch_message(what))


# ---------------------------------------------------------------------------------------------------------------------
# finding the files of an adapter, locally or on the Hub

_HUB_DOWNLOAD_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "force_download", "user_agent")


@dataclass
class Source:
    """Where an adapter lives: a local folder or a Hub repository (with revision and subfolder).

    On the Hub, the first file fetched pins the revision to the commit it came from (a branch such as `main` moves
    when someone pushes), so that every later file of the adapter comes from the same commit.
    """

    model_id: str
    subfolder: str | None
    local: bool
    download_kwargs: dict[str, Any]
    requested_revision: str | None = None

    @classmethod
    def of(cls, model_id: str | os.PathLike, subfolder: str | None, **kwargs: Any) -> Source:
        model_id = os.fspath(model_id)
        subfolder = check_subfolder(subfolder)  # before any file operation: no absolute path, no `..`
        if os.path.isdir(model_id):  # finish or clean up interrupted crash-safe saves first, see `mudpt_peft.staging`
            recover_interrupted_saves(os.path.join(model_id, subfolder or ""))
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
        return cls(model_id, subfolder, False, download_kwargs, download_kwargs.get("revision"))

    @property
    def commit(self) -> str | None:
        """The commit every file is read from, once the first file was fetched from the Hub (else None)."""
        revision = self.download_kwargs.get("revision")
        return revision if not self.local and _is_commit(revision) else None

    def _pin_commit(self, downloaded: Path) -> None:
        """Read every later file from the commit `downloaded` came from (the cache keeps each file under
        `snapshots/<commit>/`)."""
        if self.commit is not None:
            return
        parts = downloaded.parts
        if "snapshots" in parts[:-1] and _is_commit(commit := parts[parts.index("snapshots") + 1]):
            self.download_kwargs["revision"] = commit

    def path_in_repo(self, filename: str) -> str:
        return f"{self.subfolder.strip('/')}/{filename}" if self.subfolder else filename

    def describe(self, filename: str | None = None) -> str:
        """E.g. `'adapter_config.json' in the local folder 'x'` or `'a/adapter_config.json' in Hub repository 'u/r'`."""
        if self.local:
            folder = os.path.join(self.model_id, self.subfolder) if self.subfolder else self.model_id
            where = f"the local folder '{folder}'"
            return f"'{filename}' in {where}" if filename else where
        revision, commit = self.requested_revision, self.commit
        at = [f"revision '{revision}'"] if revision and revision != commit else []
        at += [f"commit {commit[:12]}"] if commit else []
        where = f"the Hub repository '{self.model_id}'" + (f" ({', '.join(at)})" if at else "")
        return f"'{self.path_in_repo(filename)}' in {where}" if filename else where

    def fetch(self, filename: str) -> Path | None:
        """The local path of `filename` (downloaded if needed), or `None` if it does not exist; other failures raise
        a `ValueError` that says what to do."""
        if self.local:
            path = Path(self.model_id, self.subfolder or "", filename)
            return path if path.is_file() else None
        try:
            path = Path(hf_hub_download(self.model_id, filename, subfolder=self.subfolder, **self.download_kwargs))
            self._pin_commit(path)
            return path
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
            revision = self.requested_revision
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
            if self.local:  # an interrupted crash-safe save may have left the adapter staged beside the folder
                hint += staged_copy_hint(os.path.join(self.model_id, self.subfolder or ""))
            raise ValueError(f"{self.describe(filename)} does not exist: {what}.{hint}")
        return path


def _is_commit(revision: object) -> bool:
    return isinstance(revision, str) and re.fullmatch(r"[0-9a-f]{40}", revision) is not None


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _damaged_safetensors(description: str, error: Exception) -> ValueError:
    return ValueError(
        f"{description} is not a valid safetensors file ({short_message(error)}): it is truncated or corrupted (an "
        "interrupted save or upload?). Save or upload the adapter again; for a damaged download, pass "
        "`force_download=True`."
    )


def short_message(error: Exception, limit: int = 200) -> str:
    """An exception's message for another message, at most `limit` characters."""
    text = str(error) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_safetensors_header(path: Path, description: str) -> None:
    """Parse the header of a safetensors file (not its tensors): a `ValueError` naming `description` if the file is
    truncated, corrupted or unreadable."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt"):
            pass  # parses the header and checks that the tensors cover the file exactly
    except Exception as error:  # safetensors raises SafetensorError; OSError for unreadable files
        raise _damaged_safetensors(description, error) from error


def read_safetensors(source: Path | bytes, description: str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (a path or its bytes), on the CPU; a `ValueError` naming `description` if the
    file is damaged."""
    from safetensors.torch import load, load_file

    try:
        return load(source) if isinstance(source, bytes) else load_file(str(source))
    except Exception as error:  # SafetensorError, OSError
        raise _damaged_safetensors(description, error) from error
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
    ([`TENSORS_FINGERPRINT_KEY`], [`CONFIG_FINGERPRINT_KEY`], [`WEIGHTS_FINGERPRINT_KEY`]: sha256 hex digests, as
    every save writes them) and
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
    for key in (TENSORS_FINGERPRINT_KEY, CONFIG_FINGERPRINT_KEY, WEIGHTS_FINGERPRINT_KEY):
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
    #: The fingerprint the tensors must have: recorded by the save, or derived from the bytes of a legacy save.
    tensors_fingerprint: str | None = None


def recorded_fingerprints(config: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """`(tensors fingerprint, legacy file fingerprint)` recorded in an `adapter_config.json`'s `auto_mapping`."""
    auto_mapping = config.get("auto_mapping")
    if not isinstance(auto_mapping, Mapping):
        return None, None
    return auto_mapping.get(TENSORS_FINGERPRINT_KEY), auto_mapping.get(WEIGHTS_FINGERPRINT_KEY)


def _check_adapter(
    source: Source,
    require_weights: bool | None = None,
    verify: bool = False,
    config_class_name: str = "MuDPTConfig",
) -> CheckedAdapter:
    """Run the load-time checks on the adapter at `source`; raise a `ValueError` that says what is wrong
    ([`NotAPeftConfigError`] for a config without `peft_type`, named after `config_class_name` as peft names it).

    Weights that are present are always checked. Their absence is an error when `require_weights`, by default when
    the config records their fingerprint (every save of an adapter with its weights does; a config saved on its own,
    `MuDPTConfig.save_pretrained`, does not and loads by itself). With `verify`, the tensors are read and checked
    too ([`verify_tensors`]); loaders leave that to the tuner, which checks the tensors it loads."""
    config_file = source.require(CONFIG_NAME, "a MuDPT adapter folder holds adapter_config.json")
    config = _read_json(config_file, source.describe(CONFIG_NAME))
    peft_type = config.get("peft_type")
    if peft_type is None:
        # the file first, as in every refusal here; then peft's own message for such a file
        raise NotAPeftConfigError(
            f"{source.describe(CONFIG_NAME)} has no 'peft_type': The {config_class_name} config that is trying to be "
            "loaded is missing required keys: {'peft_type'}. It is not the config of a peft adapter: load a folder "
            "written by `save_pretrained` of a MuDPT adapter."
        )
    if peft_type_value(peft_type) != MUDPT_PEFT_TYPE.value:
        raise ValueError(
            f"{source.describe(CONFIG_NAME)} is a {peft_type} adapter, not a MuDPT (MUDPT) adapter. Load it with "
            "`peft.PeftModel.from_pretrained` or `peft.PeftConfig.from_pretrained` instead."
        )
    tensors_sha, fingerprint = recorded_fingerprints(config)
    config_sha = recorded_for_load(config)[1]
    if require_weights is None:
        require_weights = tensors_sha is not None or fingerprint is not None
    weights_file = source.fetch(SAFETENSORS_WEIGHTS_NAME)
    if weights_file is None:
        return _check_pickled(source, config_file, config, tensors_sha or fingerprint, require_weights)

    if fingerprint is not None:  # a legacy save: check the file's sha256 and derive the tensors' from the same bytes
        data = weights_file.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        if fingerprint != sha:
            raise ValueError(
                f"{source.describe(SAFETENSORS_WEIGHTS_NAME)} does not belong to its adapter_config.json: the config "
                f"was saved with weights of sha256 {fingerprint[:16]}…, this file has sha256 {sha[:16]}…. The folder "
                "mixes files of two saves (an interrupted `save_pretrained`?) or the weights were replaced or damaged. "
                "Save the adapter again with `mudpt_peft.hub.save_pretrained` / `push_to_hub`, or restore both files "
                "from the same save."
            )
        tensors_sha = adapter_fingerprint(read_safetensors(data, source.describe(SAFETENSORS_WEIGHTS_NAME)))
    else:  # the header only: the tensors are read once, by the loader, and checked against the fingerprint then
        check_safetensors_header(weights_file, source.describe(SAFETENSORS_WEIGHTS_NAME))
    if verify:
        state_dict = read_safetensors(weights_file, source.describe(SAFETENSORS_WEIGHTS_NAME))
        verify_tensors(state_dict, config, source.describe(SAFETENSORS_WEIGHTS_NAME), (tensors_sha, config_sha))
    return CheckedAdapter(source, config_file, config, weights_file, tensors_sha)


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

    The checks are those `PeftModel.from_pretrained` runs: the repository, revision and files exist;
    `adapter_config.json` is valid JSON of peft type MUDPT; `adapter_model.safetensors` is complete (and present when
    the config records a fingerprint of it); pickled `adapter_model.bin` weights only inside
    [`allow_pickled_weights`]; the tensors are floating point and finite, and they and the config are those of one
    save (the fingerprints). A valid `MuDPTConfig` is not required here, but `adapter_config.json` must be a JSON
    object of at most 1 MB and 16 levels of nesting, with a string `peft_type` and a well-formed `auto_mapping`.

    Args:
        pretrained_model_name_or_path (`str` or `os.PathLike`):
            A local folder or a Hub repository id.
        subfolder (`str`, *optional*):
            The folder of the adapter inside it.
        hub_kwargs:
            `revision`, `token`, `cache_dir`, `local_files_only`, `force_download` for the Hub.
    """
    _check_adapter(Source.of(pretrained_model_name_or_path, subfolder, **hub_kwargs), verify=True)


def load_config(
    config_cls: type[MuDPTConfig], pretrained_model_name_or_path: str | os.PathLike, subfolder: str | None, **kwargs
) -> MuDPTConfig:
    """The implementation of [`MuDPTConfig.from_pretrained`]: check the adapter's files, then build its config.

    Weights next to the config are checked without reading their tensors (pickles refused unless allowed, a
    damaged header, a legacy file fingerprint); missing weights are refused when the config records their
    fingerprint. The fingerprints stay in the config's `auto_mapping`: the tuner compares them with the tensors it
    loads (for a legacy save, the tensors fingerprint of the bytes whose file sha256 was checked here). The config
    remembers where it was read from ([`loaded_from`]), for the tuner's messages and for loaders that read the
    weights themselves from the same commit.

    The config is built from the very content that was checked (the file is read once). As peft does, entries that
    are not fields of `config_cls` (written by a newer version) are ignored with a warning, and a `runtime_config`
    entry is dropped; every field is then checked by the config itself, and a refusal names the file.
    """
    hub_kwargs, class_kwargs, _ = config_cls._split_kwargs(kwargs)
    source = Source.of(pretrained_model_name_or_path, subfolder, **hub_kwargs)
    checked = _check_adapter(source, config_class_name=config_cls.__name__)
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
        # the legacy file fingerprint was checked above and describes that file only: the tuner checks the tensors
        auto_mapping = {k: v for k, v in auto_mapping.items() if k != WEIGHTS_FINGERPRINT_KEY}
        auto_mapping[TENSORS_FINGERPRINT_KEY] = checked.tensors_fingerprint
        attributes["auto_mapping"] = auto_mapping
    try:
        config = config_cls.from_peft_type(**config_cls.check_kwargs(**{**class_kwargs, **attributes}))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{source.describe(CONFIG_NAME)} is not a valid MuDPT config: {error}") from error
    config._loaded_from = checked
    return config


def loaded_from(config: Any) -> CheckedAdapter | None:
    """The checked files a config was read from by [`load_config`] (None for a config built otherwise)."""
    checked = getattr(config, "_loaded_from", None)
    return checked if isinstance(checked, CheckedAdapter) else None


def weights_description(config: Any, adapter_name: str) -> str:
    """What to call the tensors loaded for `config` in an error: the weights file it was read beside, if known."""
    checked = loaded_from(config)
    if checked is not None:
        name = SAFETENSORS_WEIGHTS_NAME if checked.safetensors_file is not None else PICKLED_WEIGHTS_NAME
        return checked.source.describe(name)
    return f"The state dict loaded into the MuDPT adapter '{adapter_name}'"


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
    if "templates" in info:  # an ensemble (format 2)
        templates = info["templates"]
        if not isinstance(templates, list) or not templates or len(templates) > MAX_TEMPLATES:
            raise ValueError(
                f"{description} has a 'templates' of {value_and_type(templates, 80)}; it must be a non-empty list of "
                f"at most {MAX_TEMPLATES} templates (an ensemble): {_AGAIN} with `PromptClassifier.save_pretrained`."
            )
        try:
            info["templates"] = [check_template(template) for template in templates]
        except ValueError as error:
            raise ValueError(f"{description} holds an invalid template in 'templates': {error}") from None
    expected, legacy = info.get(CLASSIFIER_TENSORS_KEY), info.get("adapter_weights_sha256")
    for key, value in ((CLASSIFIER_TENSORS_KEY, expected), ("adapter_weights_sha256", legacy)):
        if value is not None and not _is_sha256(value):
            raise ValueError(
                f"{description} has an '{key}' of {value_and_type(value, 80)}; it must be a sha256 (64 lowercase "
                f"hexadecimal digits) as `PromptClassifier.save_pretrained` records it: {_AGAIN}."
            )
    if (expected is not None and expected != checked.tensors_fingerprint) or (
        legacy is not None and (checked.safetensors_file is None or legacy != file_sha256(checked.safetensors_file))
    ):
        raise ValueError(
            f"{description} was saved with another adapter than the one beside it (its "
            "adapter_model.safetensors has changed since). Save the classifier again with "
            "`PromptClassifier.save_pretrained` / `push_to_hub`."
        )
    return info, checked
