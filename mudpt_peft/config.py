"""Configuration of MuDPT adapters."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peft.config import PeftConfig
from peft.utils import TaskType

from ._peft_type import MUDPT_PEFT_TYPE
from ._utils import REPR_LIMIT, short_repr  # noqa: F401  (REPR_LIMIT, short_repr: re-exported)
from ._utils import value_and_type as _got
from .adapter_files import (
    CONFIG_FINGERPRINT_KEY,
    SAFETENSORS_WEIGHTS_NAME,
    TENSORS_FINGERPRINT_KEY,
    WEIGHTS_FINGERPRINT_KEY,
    check_auto_mapping,
    config_fingerprint,
    load_config,
)
from .fusion import FUSIONS
from .methods import METHODS, normalize_method

#: Upper bounds of the size-like fields, checked in `MuDPTConfig.__post_init__` before anything is built (the field
#: docstrings say why each is generous for research yet keeps a refused config cheap to refuse).
MAX_DEPTH = 1024
MAX_N_CTX = 1024
MAX_INJECTION_LAYERS = 24
MAX_MLP_RATIO = 16.0
#: `injection_layers * (4 + 2 * injection_mlp_ratio)`, the weights of one Injection Model's blocks in units of
#: `width**2`, is at most that of 24 CLIP blocks of MLP ratio 4 (`24 * 12`).
MAX_INJECTION_BLOCK_WEIGHTS = 288
MAX_HEADS = 256
MAX_CTX_INIT_CHARS = 16384
#: The longest name or path accepted in `base_model_name_or_path`, `revision`, `peft_version` and
#: `tokenizer_name_or_path` (file systems allow paths of 4096 bytes).
MAX_NAME_CHARS = 4096


def _check_int(name: str, value: object, minimum: int, maximum: int, optional: bool = False) -> None:
    """An `int` (not a `bool`, float or string) in `minimum..maximum`, or None when `optional`."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        allowed = f"an integer in {minimum}..{maximum}" + (" or None" if optional else "")
        raise ValueError(f"`{name}` must be {allowed}, got {_got(value)}.")


def _is_finite_number(value: object) -> bool:
    """An `int` or `float` (not a `bool`) that is neither NaN nor infinite, and as a float too (torch's initialisers
    convert it: an integer of 309 digits or more raises `OverflowError` there)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


@dataclass
class MuDPTConfig(PeftConfig):
    """Configuration of a MuDPT (Multi-modal Deep-symphysis Prompt Tuning) adapter.

    MuDPT learns `n_ctx` text prompt tokens (inserted right after the BOS token) and `vision_n_ctx` visual prompt tokens
    (appended after the patch tokens) at the input of the first `depth` encoder layers of each tower of a CLIP-like
    model, and couples the two modalities with an *Injection Model* per direction (a small transformer block and a
    linear head) whose output is added to the other modality's prompts, layer by layer. The backbone stays frozen.

    The same tuner also runs the methods MuDPT is compared with, as configurations (see [`MuDPTConfig.for_method`]):
    CoOp (text prompts only), CoCoOp (CoOp's prompts shifted per image by a meta-net), VPT (vision prompts only),
    IVLP (both, uncoupled), MaPLe (vision prompts mapped from the text prompts) and the two revisions of MuDPT's
    linear variant, plus a cross-attention coupling (`mudpt_peft.methods.METHODS`).

    Args:
        text_prompts (`bool`, defaults to `True`):
            Whether the text tower gets learned prompts.
        vision_prompts (`bool`, defaults to `True`):
            Whether the vision tower gets prompts (with `fusion="text_to_vision"` they are mapped from the text
            prompts instead of learned).
        fusion (`str`, defaults to `"injection"`):
            How the towers' prompts are coupled (`mudpt_peft.fusion.FUSIONS`): `"injection"` (MuDPT's Injection
            Model), `"shared_linear"` (the current official `mudpt.py`: one map per direction for the deep layers and
            a text-to-vision map at layer 0), `"linear"` (its early revisions: one map per deep layer and direction),
            `"text_to_vision"` (MaPLe), `"none"` (independent prompts), `"cross_attention"` or `"meta_net"`
            (CoCoOp: each image's features shift the layer-0 text prompts, so the text prompts depend on the image).
        depth (`int`, defaults to 9):
            Number of layers that get prompts, counting the input layer: prompts are used at layers `0..depth-1`, i.e.
            `depth - 1` deep prompt sets (`PROMPT_DEPTH` in the official code). `1..1024`, and at most the layer count
            of each prompted tower (checked against the model before any weight is created): the real bound is the
            model's; 1024 only refuses absurd values before a model is seen (the deepest CLIP-like towers have 48).
        text_depth (`int`, *optional*):
            Overrides `depth` for the text tower (same bounds).
        vision_depth (`int`, *optional*):
            Overrides `depth` for the vision tower (same bounds).
        n_ctx (`int`, defaults to 2):
            Number of learned text prompt tokens per layer. `1..1024`, and with text prompts the prompts and at least
            one text token must fit the text tower's `max_position_embeddings` (checked against the model).
        vision_n_ctx (`int`, *optional*):
            Number of learned visual prompt tokens per layer; defaults to `n_ctx`. `1..1024`: a fixed cap rather than
            one relative to the patch count, which varies with the resolution (variable-resolution towers, position
            interpolation) and is smaller than real prompt counts on small inputs (VPT uses 8 prompts, its paper up to
            200 on ViT-B/16's 197 tokens; MuDPT uses 2-16). At the cap the visual prompts of a layer hold
            `1024 * width` values, fewer than one encoder layer's `12 * width**2` weights for any width >= 86, and the
            sequence is at most 1024 tokens longer.
        ctx_init (`str`, *optional*):
            Words such as `"a photo of a"` whose token embeddings (from the base model's own embedding table)
            initialise the layer-0 text prompts. When their token count differs from `n_ctx`, `n_ctx` is set to it (with
            a warning); that count must be at most 1024 too. At most 16384 characters (16 per token at the cap), so
            that tokenizing it stays instant.
        ctx_init_token_ids (`list[int]`, *optional*):
            The token ids of `ctx_init`, filled in when the adapter is created so that re-creating it (e.g. when
            loading) needs no tokenizer. Can also be given directly instead of `ctx_init`. One id >= 0 per text prompt
            token (so `1..1024` ids), each below the text vocabulary size (checked against the model).
        tokenizer_name_or_path (`str`, *optional*):
            Tokenizer used to tokenize `ctx_init`; defaults to the base model's `name_or_path`.
        injection_layers (`int`, defaults to 1):
            Number of transformer blocks in each Injection Model (0 keeps only the norms and the linear head).
            `0..24` (the paper uses 1; 24 is the depth of ViT-L's vision tower), and with `injection_mlp_ratio`:
            `injection_layers * (4 + 2 * injection_mlp_ratio) <= 288`. A block of source width `w` holds about
            `(4 + 2 * ratio) * w**2` weights, so this bounds each Injection Model's blocks by the weights of 24 CLIP
            blocks (MLP ratio 4): 24 blocks of ratio 4, or 8 of ratio 16. The largest accepted pair of Injection
            Models is then about as large as the base model: 0.25 B weights on ViT-B/16 (base: 0.15 B), 0.47 B on
            ViT-L/14 (base: 0.43 B).
        injection_heads (`int`, *optional*):
            Attention heads of the Injection Model blocks; defaults to `width // 64` (at least 1) of the source tower.
            `1..256`, and must divide both widths (checked against the model; 256 heads are 8 wide at width 2048).
        injection_mlp_ratio (`float`, defaults to 4.0):
            Hidden size of the blocks' MLP as a multiple of the source width. A finite number in `(0, 16]` (CLIP
            uses 4), within the budget given under `injection_layers`.
        injection_dropout (`float`, defaults to 0.0):
            Dropout on the attention weights and the residual branches of the Injection Model blocks; in `[0, 1)`.
        injection_init_std (`float`, defaults to 0.02):
            Standard deviation of the normal initialisation of the Injection Model's weights; finite and > 0.
        cross_attention_heads (`int`, *optional*):
            Attention heads of `fusion="cross_attention"`; defaults to `width // 64` (at least 1) of the target tower.
            `1..256`, and must divide both widths (checked against the model).
        cross_attention_dropout (`float`, defaults to 0.0):
            Dropout on the attention weights of `fusion="cross_attention"`; in `[0, 1)`.
        prompt_init_std (`float`, defaults to 0.02):
            Standard deviation of the normal initialisation of the prompts; finite and > 0.

    Integer fields take Python `int`s only (not `bool`, `float` such as `2.0` or strings such as `"2"`); float fields
    take `int` or `float` but not `bool`, NaN or infinity (nor an integer too large for a float). Every bound is
    checked in `__post_init__`, or against the model before any weight is created, so that an `adapter_config.json`
    from anyone is refused in well under a second and a few MB; a refusal is a `ValueError` that names the field, the
    value (cut to 200 characters) and the allowed range. The fields every peft config has are checked too:
    `peft_type` is `"MUDPT"` or None, `task_type` None or a peft `TaskType`, `inference_mode` a bool,
    `base_model_name_or_path` / `revision` / `peft_version` / `tokenizer_name_or_path` None or strings of at most 4096
    characters, and `auto_mapping` None or a dict whose records have the types a save writes
    ([`~mudpt_peft.adapter_files.check_auto_mapping`]). An unknown keyword argument stays a `TypeError`: peft's
    `from_peft_type` relies on it to ignore the fields of newer versions.

    Configs saved before `cross_attention_heads` / `cross_attention_dropout` existed kept those settings in
    `injection_heads` / `injection_dropout`; they are read into the new fields, so such adapters load unchanged.
    """

    text_prompts: bool = field(default=True, metadata={"help": "Whether the text tower gets learned prompts."})
    vision_prompts: bool = field(default=True, metadata={"help": "Whether the vision tower gets prompts."})
    fusion: str = field(
        default="injection",
        metadata={"help": f"How the towers' prompts are coupled, one of {', '.join(FUSIONS)}."},
    )
    depth: int = field(
        default=9,
        metadata={"help": "Layers that get prompts, counting the input layer (prompts at layers 0..depth-1)."},
    )
    text_depth: int | None = field(default=None, metadata={"help": "Overrides `depth` for the text tower."})
    vision_depth: int | None = field(default=None, metadata={"help": "Overrides `depth` for the vision tower."})
    n_ctx: int = field(default=2, metadata={"help": "Learned text prompt tokens per layer."})
    vision_n_ctx: int | None = field(
        default=None, metadata={"help": "Learned visual prompt tokens per layer (default: same as `n_ctx`)."}
    )
    ctx_init: str | None = field(
        default=None,
        metadata={"help": "Words (e.g. 'a photo of a') whose token embeddings initialise the layer-0 text prompts."},
    )
    ctx_init_token_ids: list[int] | None = field(
        default=None,
        metadata={
            "help": "Token ids of `ctx_init`; filled in when the adapter is created, so reloading needs no tokenizer."
        },
    )
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer for `ctx_init` (default: the base model's `name_or_path`)."}
    )
    injection_layers: int = field(default=1, metadata={"help": "Transformer blocks per Injection Model."})
    injection_heads: int | None = field(
        default=None, metadata={"help": "Attention heads of the Injection Model (default: source width // 64)."}
    )
    injection_mlp_ratio: float = field(
        default=4.0, metadata={"help": "MLP width of the Injection Model blocks / width."}
    )
    injection_dropout: float = field(default=0.0, metadata={"help": "Dropout inside the Injection Model blocks."})
    injection_init_std: float = field(
        default=0.02, metadata={"help": "Std of the normal initialisation of the Injection Model's weights."}
    )
    cross_attention_heads: int | None = field(
        default=None, metadata={"help": "Attention heads of fusion='cross_attention' (default: width // 64)."}
    )
    cross_attention_dropout: float = field(
        default=0.0, metadata={"help": "Dropout on the attention weights of fusion='cross_attention'."}
    )
    prompt_init_std: float = field(default=0.02, metadata={"help": "Std of the normal initialisation of the prompts."})

    def __post_init__(self) -> None:
        self._check_peft_fields()
        super().__post_init__()
        self.peft_type = MUDPT_PEFT_TYPE
        if self.fusion == "cross_attention":  # saved before the cross-attention fields existed
            if self.cross_attention_heads is None and self.injection_heads is not None:
                self.cross_attention_heads, self.injection_heads = self.injection_heads, None
            if self.cross_attention_dropout == 0.0 and self.injection_dropout:
                self.cross_attention_dropout, self.injection_dropout = self.injection_dropout, 0.0
        _check_int("depth", self.depth, 1, MAX_DEPTH)
        _check_int("text_depth", self.text_depth, 1, MAX_DEPTH, optional=True)
        _check_int("vision_depth", self.vision_depth, 1, MAX_DEPTH, optional=True)
        _check_int("n_ctx", self.n_ctx, 1, MAX_N_CTX)
        _check_int("vision_n_ctx", self.vision_n_ctx, 1, MAX_N_CTX, optional=True)
        _check_int("injection_layers", self.injection_layers, 0, MAX_INJECTION_LAYERS)
        _check_int("injection_heads", self.injection_heads, 1, MAX_HEADS, optional=True)
        ratio = self.injection_mlp_ratio
        if not (_is_finite_number(ratio) and 0 < ratio <= MAX_MLP_RATIO):
            raise ValueError(
                f"`injection_mlp_ratio` must be a finite number in (0, {MAX_MLP_RATIO:g}], got {_got(ratio)}."
            )
        if self.injection_layers * (4 + 2 * ratio) > MAX_INJECTION_BLOCK_WEIGHTS:
            raise ValueError(
                f"`injection_layers`={self.injection_layers} with `injection_mlp_ratio`={ratio:g} makes Injection "
                f"Model blocks of {self.injection_layers * (4 + 2 * ratio):g} x width**2 weights; allowed: "
                f"`injection_layers` x (4 + 2 x `injection_mlp_ratio`) <= {MAX_INJECTION_BLOCK_WEIGHTS}, the weights "
                "of 24 CLIP blocks of MLP ratio 4 (e.g. 24 blocks of ratio 4, or 8 of ratio 16)."
            )
        _check_int("cross_attention_heads", self.cross_attention_heads, 1, MAX_HEADS, optional=True)
        for name in ("injection_dropout", "cross_attention_dropout"):
            value = getattr(self, name)
            if not (_is_finite_number(value) and 0.0 <= value < 1.0):
                raise ValueError(f"`{name}` must be in [0, 1), got {_got(value)}.")
        for name in ("prompt_init_std", "injection_init_std"):
            value = getattr(self, name)
            if not (_is_finite_number(value) and value > 0):
                raise ValueError(f"`{name}` must be a number > 0 (and finite), got {_got(value)}.")
        if self.ctx_init is not None and (
            not isinstance(self.ctx_init, str) or not self.ctx_init.strip() or len(self.ctx_init) > MAX_CTX_INIT_CHARS
        ):
            raise ValueError(
                f"`ctx_init` must be a non-empty string such as 'a photo of a' of at most {MAX_CTX_INIT_CHARS} "
                f"characters, got {_got(self.ctx_init)}"
                + (f" of {len(self.ctx_init)} characters." if isinstance(self.ctx_init, str) else ".")
            )
        if self.ctx_init_token_ids is not None:
            ids = self.ctx_init_token_ids
            if not isinstance(ids, (list, tuple)) or not 1 <= len(ids) <= MAX_N_CTX:
                raise ValueError(
                    f"`ctx_init_token_ids` must be a list of 1..{MAX_N_CTX} token ids (one per text prompt token), "
                    f"got {_got(ids)}."
                )
            bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, int) or i < 0]
            if bad:
                raise ValueError(
                    f"`ctx_init_token_ids` must be a list of token ids (integers >= 0), got {short_repr(ids)}, "
                    f"which holds {_got(bad[0])}."
                )
            self.ctx_init_token_ids = list(ids)
            if len(ids) != self.n_ctx:
                raise ValueError(
                    f"`ctx_init_token_ids` has {len(ids)} ids but `n_ctx` is {self.n_ctx}; they must be equal."
                )
        self._check_method()

    def _check_peft_fields(self) -> None:
        """The fields every peft config has, and `tokenizer_name_or_path`: the types their readers expect, checked
        before peft's own `__post_init__` (whose message for a bad `task_type` quotes it whole)."""
        peft_type = self.peft_type
        # a string is replaced by MUDPT, as every peft config class replaces it (peft's `test_set_attributes`); a
        # file of another type is refused by the loaders before a config is built
        if peft_type is not None and not isinstance(peft_type, str):
            raise ValueError(f"`peft_type` of a MuDPTConfig must be 'MUDPT' (or None), got {_got(peft_type)}.")
        task_types = [task_type.value for task_type in TaskType]
        if self.task_type is not None and not (isinstance(self.task_type, str) and self.task_type in task_types):
            shown = self.task_type if isinstance(self.task_type, str) else short_repr(self.task_type, 80)
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            raise ValueError(  # peft's message (which its tests match), with the value cut short
                f"Invalid task type: '{shown}'. Must be one of the following task types: {', '.join(task_types)}. "
                f"(`task_type` of a MuDPTConfig; MuDPT's default is None.)"
            )
        if not isinstance(self.inference_mode, bool):
            raise ValueError(f"`inference_mode` must be True or False, got {_got(self.inference_mode)}.")
        for name in ("base_model_name_or_path", "revision", "peft_version", "tokenizer_name_or_path"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike) and name.endswith("name_or_path"):
                value = os.fspath(value)
                setattr(self, name, value)
            if value is not None and (not isinstance(value, str) or not 0 < len(value) <= MAX_NAME_CHARS):
                raise ValueError(
                    f"`{name}` must be None or a non-empty string of at most {MAX_NAME_CHARS} characters, got "
                    f"{_got(value)}" + (f" of {len(value)} characters." if isinstance(value, str) else ".")
                )
        check_auto_mapping(self.auto_mapping)

    def _check_method(self) -> None:
        """The towers and the coupling fit together, as the fusion declares (see `mudpt_peft.fusion.Fusion`)."""
        for name in ("text_prompts", "vision_prompts"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be True or False, got {_got(getattr(self, name))}.")
        fusion = FUSIONS.get(self.fusion) if isinstance(self.fusion, str) else None
        if fusion is None:
            raise ValueError(f"`fusion` must be one of {', '.join(FUSIONS)}; got {short_repr(self.fusion)}.")
        if not self.text_prompts and (self.ctx_init is not None or self.ctx_init_token_ids is not None):
            raise ValueError("`ctx_init` initialises text prompts, but `text_prompts=False`.")
        if fusion.conditions_on_image and not (self.text_prompts and not self.vision_prompts):
            raise ValueError(
                f"`fusion`={self.fusion!r} (CoCoOp) conditions the text prompts on the image features, so it needs "
                "`text_prompts=True` and `vision_prompts=False`."
            )
        if not (self.text_prompts or self.vision_prompts):
            raise ValueError("`text_prompts` and `vision_prompts` are both False: at least one tower needs prompts.")
        if fusion.couples and not (self.text_prompts and self.vision_prompts):
            raise ValueError(
                f"`fusion`={self.fusion!r} couples the two towers, so it needs `text_prompts=True` and "
                "`vision_prompts=True`; use `fusion='none'` for prompts in one tower only."
            )
        if fusion.maps_tokens and self.resolved_vision_n_ctx != self.n_ctx:
            raise ValueError(
                f"`fusion`={self.fusion!r} maps each text prompt token to a visual prompt token, so `vision_n_ctx` "
                f"({self.vision_n_ctx}) must equal `n_ctx` ({self.n_ctx}); leave `vision_n_ctx=None` to follow it."
            )
        if fusion.derives_vision_prompts and self.vision_depth not in (None, self.resolved_text_depth):
            raise ValueError(
                f"`fusion`={self.fusion!r} derives every vision layer's prompts from the text prompts of that layer, "
                f"so `vision_depth` ({self.vision_depth}) must equal the text depth ({self.resolved_text_depth})."
            )

    @property
    def learns_vision_prompts(self) -> bool:
        """Whether the vision tower has learned prompts of its own (not when the fusion derives them)."""
        return self.vision_prompts and not FUSIONS[self.fusion].derives_vision_prompts

    @property
    def resolved_text_depth(self) -> int:
        """The number of text layers that get prompts (`text_depth`, else `depth`; 0 without text prompts)."""
        if not self.text_prompts:
            return 0
        return self.depth if self.text_depth is None else self.text_depth

    @property
    def resolved_vision_depth(self) -> int:
        """The number of vision layers that get prompts (`vision_depth`, else `depth`; 0 without vision prompts)."""
        if not self.vision_prompts:
            return 0
        if FUSIONS[self.fusion].derives_vision_prompts:
            return self.resolved_text_depth
        return self.depth if self.vision_depth is None else self.vision_depth

    @property
    def resolved_vision_n_ctx(self) -> int:
        """The number of visual prompt tokens per layer (`vision_n_ctx`, else `n_ctx`)."""
        return self.n_ctx if self.vision_n_ctx is None else self.vision_n_ctx

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, subfolder: str | None = None, **kwargs: Any
    ) -> MuDPTConfig:
        """Load the config of a MuDPT adapter from a local folder or a Hub repository, after checking the adapter.

        peft calls this (as the registered config class of `MUDPT`) in `PeftModel.from_pretrained` and
        `PeftModel.load_adapter` before it creates any adapter weight, so an adapter refused here leaves the model as
        it was. On top of `PeftConfig.from_pretrained`, a `ValueError` that names the file and says what to do is
        raised when the repository, revision or file does not exist, or `adapter_config.json` is damaged (larger than
        1 MB, not UTF-8, not a JSON object, nested more than 16 levels deep, an integer of thousands of digits), not a
        MUDPT config or not a valid one (every field is checked; entries that are not fields are ignored with a
        warning); when `adapter_model.safetensors` is truncated or corrupted, or missing although the config
        records its fingerprint (every save with weights does; a config saved on its own does not, and loads by
        itself), or the weights exist only as a pickled `adapter_model.bin` and pickles were not allowed with
        `mudpt_peft.allow_pickled_weights()`. `mudpt_peft.check_adapter` runs these checks. Whether the tensors are
        the ones saved with this config is checked by the tuner when it loads them, on every loading path.

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`):
                A local folder or a Hub repository id.
            subfolder (`str`, *optional*):
                The folder of the adapter inside it.
            kwargs:
                `revision`, `token`, `cache_dir`, `local_files_only`, `force_download` for the Hub, and config fields
                to override.
        """
        return load_config(cls, pretrained_model_name_or_path, subfolder, **kwargs)

    def record_base_model(self, record: dict[str, Any]) -> None:
        """Remember the family and geometry of the base model this adapter was created on (`MuDPTModel` calls this).

        `save_pretrained` writes them into `auto_mapping` of `adapter_config.json`, beside the base model class that
        peft records, so that loading the adapter onto a model of another family or geometry is refused (see
        `mudpt_peft.compat.check_base_model`). Not a config field: it does not take part in comparisons.
        """
        self._base_model_record = dict(record)

    def record_saved_tensors(self, fingerprint: str) -> None:
        """Remember the fingerprint of the adapter tensors a save is writing (`MuDPTModel` calls this when peft takes
        the adapter's state dict); the next `save_pretrained` beside an `adapter_model.safetensors` written since
        records it."""
        self._saved_tensors_fingerprint = (fingerprint, time.time_ns())

    def save_pretrained(self, save_directory: str, **kwargs: Any) -> None:
        """`PeftConfig.save_pretrained`, with MuDPT's records in `auto_mapping`.

        peft's `PeftModel.save_pretrained` writes the weights, then calls this for each adapter folder. Recorded: the
        base model's family and geometry when this config was used to create an adapter, and, when the folder holds
        the tensors just written, their fingerprint ([`~mudpt_peft.adapter_files.adapter_fingerprint`], computed
        from the tensors peft wrote, not read back) and that of this config's fields that decide what they compute
        ([`~mudpt_peft.adapter_files.config_fingerprint`]). A fingerprint recorded by an earlier save is never
        carried over: a config saved on its own records none.
        """
        recorded = dict(kwargs.get("auto_mapping_dict") or self.auto_mapping or {})
        for key in (TENSORS_FINGERPRINT_KEY, CONFIG_FINGERPRINT_KEY, WEIGHTS_FINGERPRINT_KEY):
            recorded.pop(key, None)
        recorded.update(getattr(self, "_base_model_record", None) or {})
        fingerprint, taken = self.__dict__.pop("_saved_tensors_fingerprint", (None, 0))
        weights = Path(save_directory) / SAFETENSORS_WEIGHTS_NAME
        # written since the tensors were taken (file times come from a coarser clock: a second of slack)
        if fingerprint is not None and weights.is_file() and weights.stat().st_mtime_ns >= taken - 10**9:
            recorded[TENSORS_FINGERPRINT_KEY] = fingerprint
            recorded[CONFIG_FINGERPRINT_KEY] = config_fingerprint(self)
        # an empty dict rather than None, where the `auto_mapping` field holds something now stale
        kwargs["auto_mapping_dict"] = recorded if recorded or self.auto_mapping else None
        super().save_pretrained(save_directory, **kwargs)

    @classmethod
    def for_method(cls, method: str, **overrides) -> MuDPTConfig:
        """A config for one of the prompt-learning methods, with its paper's defaults; `overrides` replace any field.

        | method | towers | coupling (`fusion`) | depth | n_ctx |
        | --- | --- | --- | --- | --- |
        | `"coop"` | text | none | 1 | 16 (4 with `ctx_init`) |
        | `"vpt"` | vision | none | 12 | 8 (`vision_n_ctx`) |
        | `"ivlp"` | both | none | 9 | 2 |
        | `"maple"` | both | text_to_vision | 9 | 2 |
        | `"mudpt"` | both | injection | 9 | 2 |
        | `"mudpt-linear"` | both | shared_linear (current official `mudpt.py`) | 9 | 2 |
        | `"mudpt-linear-v1"` | both | linear (its early revisions) | 9 | 2 |
        | `"cross-attention"` | both | cross_attention | 9 | 2 |
        | `"cocoop"` | text | meta_net (image-conditioned) | 1 | 4 |
        | `"kgcoop"` | text | none | 1 | 4, from "a photo of a" |
        | `"promptsrc"` | both | none | 9 | 4 + 4, text from "a photo of a" |

        The presets are the rows of `mudpt_peft.methods.METHODS`. KgCoOp and PromptSRC train CoOp's and IVLP's
        adapters with a regularised objective (`PromptTuningTrainer(..., objective="kgcoop")`, see
        `mudpt_peft.losses`); their `ctx_init` needs the base model's tokenizer (or `tokenizer_name_or_path`), and
        their official class prompt is `[ctx] {class}.`: train them with `template="{}."`.

        Args:
            method (`str`): One of the names above (case-insensitive; `_` and `-` are interchangeable).
            **overrides: Any [`MuDPTConfig`] field.

        Example:

            ```py
            >>> config = MuDPTConfig.for_method("maple", ctx_init="a photo of a")
            ```
        """
        return cls(**METHODS[normalize_method(method)].config_fields(overrides))


#: The settings of each named method (see [`MuDPTConfig.for_method`] and `mudpt_peft.methods.METHODS`).
METHOD_PRESETS: dict[str, dict] = {name: dict(method.preset) for name, method in METHODS.items()}
