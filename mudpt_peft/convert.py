"""Convert checkpoints of the official prompt-learning trainers into `mudpt_peft` adapters.

The official CoOp, VPT, IVLP, MaPLe and MuDPT trainers (built on Dassl) save `torch.save` files such as
`output/.../MultimodalDeepPromptTuning/model.pth.tar-5`, a dict whose `"state_dict"` holds the parameters of the whole
trainer model: the learned prompts and fusion modules, and also the frozen OpenAI CLIP weights. [`convert_official`]
reads the learned tensors, infers `n_ctx` and the prompt depths from their shapes, builds the equivalent
[`MuDPTConfig`] and returns a `peft.PeftModel` holding exactly those values, which saves with `save_pretrained` like any
adapter.

From the command line:

```bash
python -m mudpt_peft.convert --method maple --checkpoint model.pth.tar-5 \
    --base openai/clip-vit-base-patch16 --output clip-maple-adapter
```
"""

from __future__ import annotations

import argparse
import collections
import os
import pickle
import re
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, get_peft_model
from torch import nn
from transformers import CLIPModel

from .adapter_files import check_tensor_values
from .config import MuDPTConfig
from .families import get_family_spec
from .methods import METHODS, normalize_method
from .model import image_feature_dim, refuse_wrapped, validate_against_model
from .names import check_adapter_name

#: The methods whose official checkpoints [`convert_official`] reads.
OFFICIAL_METHODS: tuple[str, ...] = tuple(name for name, method in METHODS.items() if method.official)

# Frozen weights the official trainers save along with the prompts (they register the whole model): the OpenAI CLIP
# weights under `image_encoder.` / `text_encoder.`, `logit_scale`, and the prompt learners' token-embedding buffers.
_CLIP_BLOCK = (
    r"transformer\.resblocks\.\d+\."
    r"(attn\.(in_proj_weight|in_proj_bias|out_proj\.(weight|bias))|(ln_1|ln_2|mlp\.c_fc|mlp\.c_proj)\.(weight|bias))"
)
_FROZEN_KEYS = re.compile(
    r"^(logit_scale"
    r"|(.+\.)?token_(prefix|suffix)"
    r"|image_encoder\.(conv1\.weight|class_embedding|positional_embedding|proj|(ln_pre|ln_post)\.(weight|bias)"
    rf"|{_CLIP_BLOCK})"
    r"|text_encoder\.(positional_embedding|text_projection|token_embedding\.weight|ln_final\.(weight|bias)"
    rf"|{_CLIP_BLOCK})"
    r")$"
)

# Tensors of the official checkpoints that the official forward never uses, per (resolved) method.
_UNUSED_KEYS = {"mudpt-linear-v1": re.compile(r"^mudpt_prompt_learner\.embed_projection\.(weight|bias)$")}

# The two formats of the official `trainers/mudpt.py` (see `detect_mudpt_linear_format`): the early revisions keep one
# tensor / one `Linear` per deep layer (`.{k}` in the key), the current one ("3. finish uumudpt" on) one stacked tensor
# and one shared `Linear` per direction.
_MUDPT_LINEAR_EARLY_KEYS = re.compile(
    r"^(mudpt_prompt_learner\.deep_prompts|image_encoder\.visual_ctx_deep_prompts)\.\d+$"
    r"|^(mudpt_prompt_learner\.deep_projections|image_encoder\.visual_ctx_deep_projections)\.\d+\.(weight|bias)$"
)
_MUDPT_LINEAR_CURRENT_KEYS = frozenset(
    {
        "mudpt_prompt_learner.deep_prompts",
        "image_encoder.visual_ctx_deep_prompts",
        "mudpt_prompt_learner.deep_projections.weight",
        "mudpt_prompt_learner.deep_projections.bias",
        "image_encoder.visual_ctx_deep_projections.weight",
        "image_encoder.visual_ctx_deep_projections.bias",
    }
)

# One official transformer block (`LightTransformer`, CLIP's residual block) -> `InjectionBlock`:
# (official suffix, mudpt_peft suffix, shape as a function of (width, mlp hidden size)).
_BLOCK_KEYS = (
    ("attn.in_proj_weight", "attn.qkv.weight", lambda w, h: (3 * w, w)),
    ("attn.in_proj_bias", "attn.qkv.bias", lambda w, h: (3 * w,)),
    ("attn.out_proj.weight", "attn.out_proj.weight", lambda w, h: (w, w)),
    ("attn.out_proj.bias", "attn.out_proj.bias", lambda w, h: (w,)),
    ("ln_1.weight", "ln_1.weight", lambda w, h: (w,)),
    ("ln_1.bias", "ln_1.bias", lambda w, h: (w,)),
    ("ln_2.weight", "ln_2.weight", lambda w, h: (w,)),
    ("ln_2.bias", "ln_2.bias", lambda w, h: (w,)),
    ("mlp.c_fc.weight", "fc1.weight", lambda w, h: (h, w)),
    ("mlp.c_fc.bias", "fc1.bias", lambda w, h: (h,)),
    ("mlp.c_proj.weight", "fc2.weight", lambda w, h: (w, h)),
    ("mlp.c_proj.bias", "fc2.bias", lambda w, h: (w,)),
)


def convert_official(
    checkpoint: str | os.PathLike | Mapping[str, Any],
    method: str,
    base_model: nn.Module,
    adapter_name: str = "default",
    *,
    injection_heads: int | None = None,
    apply_last_deep_set: bool | None = None,
) -> PeftModel:
    """Convert a checkpoint of an official prompt-learning trainer into a MuDPT adapter on `base_model`.

    `n_ctx` and the prompt depths are inferred from the tensor shapes. The frozen CLIP weights and buffers that the
    official trainers save with the prompts (`image_encoder.conv1.weight`, `text_encoder.*`, `logit_scale`,
    `*.token_prefix`, `*.token_suffix`, ...) are ignored, a leading `module.` (`nn.DataParallel`) is stripped, and all
    values are cast to float32 (the official MaPLe stores some in fp16) before they are copied into the adapter.
    Everything is checked before `base_model` is wrapped, so on any error it is left untouched.

    The official keys and where they go (`T` / `V`: the text / vision prompts `(depth, n_ctx, width)` of the adapter,
    `tower.mudpt_prompts[adapter_name]`; "text fusion" / "vision fusion": `tower.mudpt_fusion[adapter_name]`):

    - `coop` (`KaiyangZhou/CoOp`; its checkpoint holds the prompt learner only, so keys have no prefix): `ctx`
      (or `prompt_learner.ctx`) `(n, w_t)` -> `T[0]`. Depth 1, text only.
    - `cocoop` (`KaiyangZhou/CoOp` `trainers/cocoop.py`; the prompt learner only, keys with or without
      `prompt_learner.`): `ctx` `(n, w_t)` -> `T[0]`; `meta_net.linear1` `(d // 16, d)` and `meta_net.linear2`
      `(w_t, d // 16)`, `d` the projection dim of the image features -> text fusion `linear1`, `linear2`. Depth 1,
      text only. The official fp16 meta-net (`PREC: fp16`) is cast to float32.
    - `vpt`: `image_encoder.VPT` `(n, w_v)` -> `V[0]`; `image_encoder.transformer.resblocks.{i}.VPT_shallow` ->
      `V[i]`, `i = 1..D-1`. Vision only.
    - `ivlp`: `prompt_learner.ctx` -> `T[0]`; `text_encoder.transformer.resblocks.{i}.VPT_shallow` -> `T[i]`; the
      `vpt` keys -> `V`. The towers' depths and token counts may differ.
    - `kgcoop` (`htyao89/KgCoOp` `trainers/kgcoop.py`; the prompt learner only): as `coop`; its `bias_vectors` and
      `meta_net.linear1`, which the official forward never uses, are dropped with a warning. Preset `kgcoop`.
    - `promptsrc` (`muzairkhattak/PromptSRC` `trainers/promptsrc.py`): as `ivlp` (the checkpoint holds the prompts
      after its Gaussian aggregation). Preset `promptsrc`.
    - `maple`: `prompt_learner.ctx` -> `T[0]`; `prompt_learner.compound_prompts_text.{k}` -> `T[k+1]`;
      `prompt_learner.proj` -> vision fusion `projections[0]`; `prompt_learner.compound_prompt_projections.{k}` ->
      `projections[k+1]`. No learned vision prompts.
    - `mudpt-linear` (`YzM1a0/MuDPT` `trainers/mudpt.py`) reads a checkpoint of either revision of that file, told
      apart by its keys ([`detect_mudpt_linear_format`]; keys of both formats at once are refused). The current
      format (commit "3. finish uumudpt", `8d7fbb7`, and later; `K` deep sets) converts to the preset
      `mudpt-linear` (`fusion="shared_linear"`), depth `K + 1`: `mudpt_prompt_learner.ctx` -> `T[0]`;
      `image_encoder.visual_ctx` -> `V[0]`; `mudpt_prompt_learner.deep_prompts` `(K, n, w_t)` -> `T[1..K]`;
      `image_encoder.visual_ctx_deep_prompts` `(K, n, w_v)` -> `V[1..K]`; `mudpt_prompt_learner.embed_projection`
      (text -> vision, layer 0) -> vision fusion `first_projection`; `mudpt_prompt_learner.deep_projections` (one
      `Linear` text -> vision for all deep layers) -> vision fusion `deep_projection`;
      `image_encoder.visual_ctx_deep_projections` (vision -> text) -> text fusion `deep_projection`.
    - `mudpt-linear`, early format (the commits before "3. finish uumudpt"; `K` deep sets): converts to the preset
      `mudpt-linear-v1` (`fusion="linear"`), depth `K`: `mudpt_prompt_learner.ctx` -> `T[0]`;
      `image_encoder.visual_ctx` -> `V[0]`; `mudpt_prompt_learner.deep_prompts.{k}` -> `T[k+1]`;
      `image_encoder.visual_ctx_deep_prompts.{k}` -> `V[k+1]`; `mudpt_prompt_learner.deep_projections.{k}` ->
      vision fusion `projections[k]`; `image_encoder.visual_ctx_deep_projections.{k}` -> text fusion
      `projections[k]`; `k = 0..K-2`.
    - `mudpt-linear-v1`: the early format of `trainers/mudpt.py` only, as above (a current-format checkpoint is
      refused).
    - `mudpt` (`YzM1a0/MuDPT` `trainers/uumudpt.py`): `uumudpt_prompt_learner.ctx` and `.deep_prompts` `(K, n, w_t)`
      -> `T[0]`, `T[1..K]`; `image_encoder.visual_ctx` and `.visual_ctx_deep_prompts` `(K, n, w_v)` -> `V[0]`,
      `V[1..K]`; depth `K + 1`. The T2V Injection Model `uumudpt_prompt_learner.{ln_pre, self_attn, ln_post,
      visual_proj}` -> vision fusion `ln_pre`, `blocks[0]`, `ln_post`, `proj`; the V2T one
      `image_encoder.visual_ctx_{ln_intra_pre, self_attn, ln_intra_post, text_proj}` -> text fusion `ln_pre`,
      `blocks[0]`, `ln_post`, `proj`. In a block, `attn.in_proj_weight` / `in_proj_bias` (q, k, v stacked) ->
      `attn.qkv`, `attn.out_proj` -> `attn.out_proj`, `ln_1` / `ln_2` -> `ln_1` / `ln_2`, `mlp.c_fc` / `mlp.c_proj`
      -> `fc1` / `fc2`.

    Quirks of the official code that the conversion reproduces:

    - `mudpt-linear`, early format: its forward never applies the last of its `K` deep prompt sets (an
      off-by-one), so the adapter has `depth=K` and the tensors of index `K - 1` are dropped with a warning (except
      with `apply_last_deep_set=True`, for the one early revision that had fixed it);
      `mudpt_prompt_learner.embed_projection` is built but never used there, so it is ignored. The current format
      applies all `K` sets and adds `embed_projection(ctx)` to the layer-0 visual prompts (text layer 0 stays
      uncoupled); with `K = 0` its shared deep projections map nothing and are dropped with a warning.
    - `mudpt-linear` and `mudpt`: the vision-to-text maps output CLIP's embed dim, which must equal the text width
      (true for every OpenAI CLIP), since their output is added to the text prompts.
    - `mudpt`: the official blocks have `width // 64` attention heads, the `mudpt_peft` default. A checkpoint does
      not record its head count, so when a width is not a multiple of 64, or the trainer was changed, pass
      `injection_heads`.
    - Class-specific CoOp contexts (`CSC=True`, `ctx` of shape `(n_cls, n, w_t)`) are not supported: `mudpt_peft`'s
      prompts are shared by all classes.

    Args:
        checkpoint (`str`, `os.PathLike` or `Mapping`):
            The path of an official checkpoint file, the dict loaded from one (with its `"state_dict"`), or the state
            dict itself. Files are read with `torch.load(..., weights_only=True)`: a file that needs arbitrary
            pickled objects is refused.
        method (`str`):
            One of `coop`, `cocoop`, `vpt`, `ivlp`, `maple`, `mudpt-linear`, `mudpt-linear-v1`, `mudpt`
            (case-insensitive; `_` and `-` are interchangeable). The adapter's config is the preset of that name,
            except that `mudpt-linear` gives `mudpt-linear-v1` for an early-format checkpoint.
        base_model (`transformers.CLIPModel`):
            The frozen model, converted from the OpenAI CLIP the checkpoint was trained with. It is wrapped in place.
        adapter_name (`str`, defaults to `"default"`):
            The name of the adapter.
        injection_heads (`int`, *optional*):
            Attention heads of the Injection Model blocks (`mudpt` only); defaults to `width // 64` (at least 1).
        apply_last_deep_set (`bool`, *optional*):
            Early-format `mudpt.py` checkpoints only: whether the forward that trained them applied the last of their
            `K` deep prompt sets. Two revisions wrote that format with the same keys: up to "2. add umudpt"
            (`f358682`) the blocks stop one set early (`False`, the default: depth `K`, the last set dropped); "3.
            finish umudpt" (`2b436f3`, which changed `clip/model.py` only) applies all of them (`True`: depth
            `K + 1`). The keys cannot tell them apart, so pass `True` for a checkpoint trained at that revision.

    Returns:
        `peft.PeftModel`: `base_model` with the converted adapter, ready for inference or `save_pretrained`.

    Raises:
        ValueError: for an unknown method, a file that cannot be loaded safely, missing or unknown prompt tensors,
            shapes that do not fit `base_model`, or an unsupported base model.

    Example:

        ```py
        >>> from transformers import CLIPModel
        >>> from mudpt_peft.convert import convert_official

        >>> clip = CLIPModel.from_pretrained("openai/clip-vit-base-patch16")
        >>> model = convert_official("output/MultiModalPromptLearner/model.pth.tar-5", "maple", clip)
        >>> model.save_pretrained("clip-maple-imagenet")
        ```
    """
    check_adapter_name(adapter_name, "`adapter_name`")  # before the checkpoint is read
    key = _normalize_method(method)
    if injection_heads is not None and key != "mudpt":
        raise ValueError(
            f"`injection_heads` only applies to method='mudpt' (the Injection Model); got method={method!r}. "
            "Leave it unset."
        )
    if apply_last_deep_set is not None and key not in ("mudpt-linear", "mudpt-linear-v1"):
        raise ValueError(
            f"`apply_last_deep_set` only applies to early-format `mudpt.py` checkpoints (method='mudpt-linear' or "
            f"'mudpt-linear-v1'); got method={method!r}. Leave it unset."
        )
    if apply_last_deep_set is not None and not isinstance(apply_last_deep_set, bool):
        raise ValueError(f"`apply_last_deep_set` must be True, False or None, got {apply_last_deep_set!r}.")
    if not isinstance(base_model, CLIPModel):
        raise ValueError(
            f"`convert_official` needs a `transformers.CLIPModel` (converted from the OpenAI CLIP the checkpoint was "
            f"trained with), got {type(base_model).__name__}. Load it with `CLIPModel.from_pretrained(...)`."
        )
    refuse_wrapped(base_model)
    spec = get_family_spec(base_model)
    widths = spec.geometry(base_model)
    geometry = _Geometry(**widths, image_feature_dim=image_feature_dim(base_model, widths))
    state_dict = _official_state_dict(checkpoint)

    plan = _Plan(state_dict, geometry, apply_last_deep_set=apply_last_deep_set)
    _PLANNERS[key](plan)
    key = plan.method or key  # `mudpt-linear`: the preset of the format the keys show
    plan.raise_problems(key, _UNUSED_KEYS.get(key))
    if plan.dropped:
        warnings.warn(
            f"{plan.dropped_reason} These tensors are not converted: {plan.dropped}.",
            UserWarning,
            stacklevel=2,
        )
    if injection_heads is not None:
        plan.overrides["injection_heads"] = injection_heads
    config = MuDPTConfig.for_method(key, **plan.overrides)
    validate_against_model(config, base_model, spec)
    what = "The checkpoint" + (f" {str(checkpoint)!r}" if isinstance(checkpoint, (str, os.PathLike)) else "")
    check_tensor_values({key: state_dict[key] for key in sorted(plan.used)}, what, only_mudpt=False)

    model = get_peft_model(base_model, config, adapter_name=adapter_name)
    try:
        _copy_values(model.get_base_model(), spec, adapter_name, plan.copies)
    except BaseException:
        model.unload()  # give the caller its base model back unwrapped
        raise
    return model


# ----------------------------------------------------------------------------------------------------------------------
# loading


def _normalize_method(method: str) -> str:
    return normalize_method(method, allowed=dict.fromkeys(OFFICIAL_METHODS))


def _torch_training_state_classes() -> list[type]:
    """torch's own optimizer and LR scheduler classes (and the containers they use).

    Dassl checkpoints of trainers with an LR warm-up pickle the scheduler that follows the warm-up (and, inside it,
    the optimizer). These are torch classes: `weights_only` loading may rebuild them (from their saved state, without
    running any constructor), while every other pickled object stays refused.
    """
    classes: list[type] = [collections.defaultdict, dict]
    for module in (torch.optim, torch.optim.lr_scheduler):
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(
                value, (torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler)
            ):
                classes.append(value)
    return classes


def _load_file(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint file at {str(path)!r}.")
    try:
        with torch.serialization.safe_globals(_torch_training_state_classes()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # not a torch zip file at all: report the original error below
            unsafe = []
        if unsafe:
            raise ValueError(
                f"The checkpoint {str(path)!r} could not be loaded safely: besides tensors it holds pickled Python "
                f"objects ({', '.join(unsafe)}), and loading those could run arbitrary code, so `torch.load` with "
                "`weights_only=True` refuses it (torch's optimizers and LR schedulers, which Dassl pickles, are "
                "accepted). Only if you trust the file: `ckpt = torch.load(path, weights_only=False)`, "
                "then pass `ckpt['state_dict']` to `convert_official`, or save it with "
                "`torch.save({'state_dict': ckpt['state_dict']}, 'weights.pth')` and convert that file."
            ) from error
        raise ValueError(f"The checkpoint {str(path)!r} could not be read by `torch.load`: {error}") from error
    except RuntimeError as error:
        raise ValueError(
            f"The checkpoint {str(path)!r} could not be read by `torch.load` ({error}). Is it a `torch.save` file?"
        ) from error


def _official_state_dict(checkpoint: str | os.PathLike | Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The trainer's state dict from a checkpoint (file, Dassl dict or state dict), with `module.` stripped.

    The values are not cast here: only the tensors that are converted are (in `_Plan.take`), so the frozen CLIP
    weights of a large checkpoint are not copied.
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint = _load_file(checkpoint)
    if not isinstance(checkpoint, Mapping):
        raise ValueError(
            f"Expected an official checkpoint (a dict with a 'state_dict'), or its state dict; got "
            f"{type(checkpoint).__name__}."
        )
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, Mapping):
        raise ValueError(f"The checkpoint's 'state_dict' is a {type(state).__name__}, not a dict of tensors.")
    not_tensors = sorted(str(k) for k, v in state.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise ValueError(
            f"This is not a state dict of tensors: {not_tensors[:10]} are not tensors. Pass the official checkpoint "
            "(with its 'state_dict' entry), or that state dict."
        )
    stripped: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        name = str(name).removeprefix("module.")
        if name in stripped:
            raise ValueError(f"The checkpoint holds `{name}` twice (with and without the `module.` prefix).")
        stripped[name] = value.detach()
    return stripped


# ----------------------------------------------------------------------------------------------------------------------
# planning: which official tensor goes where, and every problem found on the way


@dataclass(frozen=True)
class _Geometry:
    text_width: int
    vision_width: int
    text_layers: int
    vision_layers: int
    image_feature_dim: int | None = None

    def width(self, tower: str) -> int:
        return self.text_width if tower == "text" else self.vision_width

    def layers(self, tower: str) -> int:
        return self.text_layers if tower == "text" else self.vision_layers


@dataclass
class _Copy:
    """One tensor to copy: `value` into the `tower`'s prompts (row `layer`) or into its fusion parameter `target`."""

    source: str
    tower: str
    target: str
    layer: int | None
    value: torch.Tensor


@dataclass
class _Plan:
    state: dict[str, torch.Tensor]
    geometry: _Geometry
    used: set[str] = field(default_factory=set)
    missing: list[str] = field(default_factory=list)
    bad_shapes: list[str] = field(default_factory=list)
    copies: list[_Copy] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    dropped_reason: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)
    method: str | None = None  # the preset to build, when the planner tells it from the keys (else the method asked)
    apply_last_deep_set: bool | None = None  # early-format mudpt.py: the revision's handling of its last deep set

    # -- reading ------------------------------------------------------------------------------------------------------

    def take(self, key: str) -> torch.Tensor | None:
        """The tensor `key` in float32 (marked as used), or `None` (recorded as missing)."""
        if key not in self.state:
            self.missing.append(key)
            return None
        self.used.add(key)
        return self.state[key].to("cpu", torch.float32)

    def count(self, *patterns: str, start: int = 0) -> int:
        """How many indices `start, start+1, ...` the keys `patterns` (with `{i}`) span: the highest + 1 - start."""
        highest = start - 1
        for pattern in patterns:
            prefix, suffix = pattern.split("{i}")
            regex = re.compile(rf"^{re.escape(prefix)}(\d+){re.escape(suffix)}$")
            for key in self.state:
                match = regex.match(key)
                if match and int(match.group(1)) >= start:
                    highest = max(highest, int(match.group(1)))
        return highest + 1 - start

    # -- checking -----------------------------------------------------------------------------------------------------

    def expect(self, key: str, value: torch.Tensor, shape: tuple[int, ...], what: str) -> bool:
        if tuple(value.shape) == tuple(shape):
            return True
        self.bad_shapes.append(f"`{key}` has shape {tuple(value.shape)}, expected {tuple(shape)} ({what})")
        return False

    def fits_layer(self, key: str, tower: str, layer: int) -> bool:
        layers = self.geometry.layers(tower)
        if layer < layers:
            return True
        self.bad_shapes.append(
            f"`{key}` belongs to {tower} layer {layer}, but the base model's {tower} tower has {layers} layers "
            f"(0..{layers - 1})"
        )
        return False

    # -- planning -----------------------------------------------------------------------------------------------------

    def prompt(self, key: str, tower: str, layer: int, n_ctx: int | None) -> int | None:
        """Plan the prompts `key` `(n_ctx, width)` of `tower` layer `layer`; return its n_ctx (inferred at layer 0)."""
        value = self.take(key)
        if value is None:
            return n_ctx
        if value.dim() == 3 and tower == "text" and layer == 0:
            raise ValueError(
                f"`{key}` has shape {tuple(value.shape)}: a class-specific context (CoOp's CSC=True, one context per "
                "class) is not supported, since mudpt_peft's prompts are shared by all classes. Convert a checkpoint "
                "trained with CSC=False."
            )
        width = self.geometry.width(tower)
        if value.dim() != 2:
            expected = (n_ctx if n_ctx is not None else "n_ctx", width)
            self.bad_shapes.append(
                f"`{key}` has shape {tuple(value.shape)}, expected {expected} (n_ctx x {tower} width)"
            )
            return n_ctx
        if n_ctx is None:
            n_ctx = value.shape[0]
        if self.expect(key, value, (n_ctx, width), f"n_ctx x {tower} width") and self.fits_layer(key, tower, layer):
            self.copies.append(_Copy(key, tower, "prompts", layer, value))
        return n_ctx

    def stacked_prompts(self, key: str, tower: str, n_ctx: int | None) -> int:
        """Plan the deep prompts `key` `(K, n_ctx, width)` of `tower` layers 1..K; return K."""
        value = self.take(key)
        if value is None:
            return 0
        width, layers = self.geometry.width(tower), self.geometry.layers(tower)
        if value.dim() != 3 or n_ctx is None:
            self.bad_shapes.append(f"`{key}` has shape {tuple(value.shape)}, expected (K, n_ctx, {width})")
            return value.shape[0] if value.dim() == 3 else 0
        deep = value.shape[0]
        if not self.expect(key, value, (deep, n_ctx, width), f"deep layers x n_ctx x {tower} width"):
            return deep
        if deep + 1 > layers:
            self.bad_shapes.append(
                f"`{key}` has shape {tuple(value.shape)}: {deep} deep prompt sets for layers 1..{deep}, but the base "
                f"model's {tower} tower has {layers} layers; expected at most ({layers - 1}, {n_ctx}, {width})"
            )
            return deep
        for index in range(deep):
            self.copies.append(_Copy(f"{key}[{index}]", tower, "prompts", index + 1, value[index]))
        return deep

    def linear(self, prefix: str, tower: str, target: str, in_width: int, out_width: int, what: str) -> None:
        """Plan the `nn.Linear` `prefix.{weight,bias}` into the `tower`'s fusion parameters `target.{weight,bias}`."""
        for suffix, shape in (("weight", (out_width, in_width)), ("bias", (out_width,))):
            key = f"{prefix}.{suffix}"
            value = self.take(key)
            if value is not None and self.expect(key, value, shape, what):
                self.copies.append(_Copy(key, tower, f"{target}.{suffix}", None, value))

    def to_text_width(self, prefix: str, tower: str, target: str, what: str) -> None:
        """Like `linear` for a map vision width -> CLIP's embed dim, which must equal the text width."""
        weight = self.state.get(f"{prefix}.weight")
        text_width, vision_width = self.geometry.text_width, self.geometry.vision_width
        if (
            weight is not None
            and weight.dim() == 2
            and weight.shape[1] == vision_width
            and weight.shape[0] != text_width
        ):
            self.bad_shapes.append(
                f"`{prefix}.weight` has shape {tuple(weight.shape)}: it maps visual prompts to CLIP's embed dim "
                f"{weight.shape[0]}, but the base model's text width is {text_width}; its output is added to the text "
                f"prompts, so the embed dim must equal the text width (expected ({text_width}, {vision_width})). Was "
                "the checkpoint trained on another CLIP model?"
            )
            self.used.update({f"{prefix}.weight", f"{prefix}.bias"} & self.state.keys())
            return
        self.linear(prefix, tower, target, vision_width, text_width, what)

    def drop(self, key: str) -> None:
        if key in self.state:
            self.used.add(key)
            self.dropped.append(key)
        else:
            self.missing.append(key)

    # -- reporting ----------------------------------------------------------------------------------------------------

    def raise_problems(self, method: str, unused: re.Pattern | None) -> None:
        unknown = sorted(
            key
            for key in self.state
            if key not in self.used and not _FROZEN_KEYS.match(key) and not (unused is not None and unused.match(key))
        )
        problems = []
        if self.missing:
            problems.append(f"missing keys that an official `{method}` checkpoint has: {sorted(set(self.missing))}")
        if unknown:
            hint = ""
            guess = _guess_method(self.state)
            if guess is not None and _METHOD_FAMILY.get(guess, guess) != _METHOD_FAMILY.get(method, method):
                hint = f" They look like a `{guess}` checkpoint: pass method={guess!r}."
            problems.append(
                f"unknown keys (neither `{method}` prompt tensors nor frozen CLIP weights): {unknown}.{hint}"
            )
        if self.bad_shapes:
            g = self.geometry
            problems.append(
                f"tensors that do not fit the base model (text width {g.text_width}, {g.text_layers} layers; vision "
                f"width {g.vision_width}, {g.vision_layers} layers): " + "; ".join(self.bad_shapes)
            )
        if problems:
            raise ValueError(
                f"Cannot convert this checkpoint as an official `{method}` checkpoint: "
                + " | ".join(problems)
                + ". Check `method`, and that `base_model` is the CLIP the checkpoint was trained with."
            )


# `mudpt-linear` converts checkpoints of both revisions of the official `mudpt.py`, so it is the hint for either
_METHOD_FAMILY = {"mudpt-linear-v1": "mudpt-linear"}


def _guess_method(state: Mapping[str, torch.Tensor]) -> str | None:
    """The method whose official keys `state` has, if it is recognisable."""
    keys = set(state)
    if any(k.startswith("uumudpt_prompt_learner.") for k in keys):
        return "mudpt"
    if any(k.startswith("mudpt_prompt_learner.") for k in keys):
        return "mudpt-linear"
    if any(k.startswith(("prompt_learner.compound_prompts_text.", "prompt_learner.proj.")) for k in keys):
        return "maple"
    if "image_encoder.VPT" in keys:
        text_deep = any(k.startswith("text_encoder.") and k.endswith(".VPT_shallow") for k in keys)
        return "ivlp" if text_deep or "prompt_learner.ctx" in keys else "vpt"
    if any(k.startswith(("meta_net.", "prompt_learner.meta_net.")) for k in keys):
        return "cocoop"
    if "ctx" in keys or "prompt_learner.ctx" in keys:
        return "coop"
    return None


# ----------------------------------------------------------------------------------------------------------------------
# the methods


def _plan_coop(plan: _Plan) -> None:
    candidates = [key for key in ("ctx", "prompt_learner.ctx") if key in plan.state]
    if len(candidates) > 1:
        raise ValueError("The checkpoint holds both `ctx` and `prompt_learner.ctx`; pass the state dict of one model.")
    n_ctx = plan.prompt(candidates[0] if candidates else "ctx", "text", 0, None)
    plan.overrides.update(depth=1, n_ctx=n_ctx or 1)


def _plan_kgcoop(plan: _Plan) -> None:
    """KgCoOp's prompt learner: CoOp's `ctx`, plus `bias_vectors` and a `meta_net.linear1` that the official
    `trainers/kgcoop.py` creates (and its optimizer steps) but its forward never uses: dropped with a warning."""
    _plan_coop(plan)
    plan.overrides["ctx_init"] = None  # the context comes from the checkpoint: no initialisation to tokenize
    prefix = "prompt_learner." if "prompt_learner.ctx" in plan.state else ""
    unused = [f"{prefix}bias_vectors", f"{prefix}meta_net.linear1.weight", f"{prefix}meta_net.linear1.bias"]
    for key in unused:
        if key in plan.state:
            plan.drop(key)
    plan.dropped_reason = (
        "KgCoOp's prompt learner holds tensors that its forward never uses (official trainers/kgcoop.py)."
    )


def _plan_cocoop(plan: _Plan) -> None:
    prefixes = [prefix for prefix in ("", "prompt_learner.") if f"{prefix}ctx" in plan.state]
    if len(prefixes) > 1:
        raise ValueError("The checkpoint holds both `ctx` and `prompt_learner.ctx`; pass the state dict of one model.")
    prefix = prefixes[0] if prefixes else ""
    n_ctx = plan.prompt(f"{prefix}ctx", "text", 0, None)
    g = plan.geometry
    hidden = g.image_feature_dim // 16
    what = f"Linear image feature dim {g.image_feature_dim} -> {hidden}"
    plan.linear(f"{prefix}meta_net.linear1", "text", "linear1", g.image_feature_dim, hidden, what)
    plan.linear(
        f"{prefix}meta_net.linear2", "text", "linear2", hidden, g.text_width, f"Linear {hidden} -> text width"
    )
    plan.overrides.update(depth=1, n_ctx=n_ctx or 1)


def _plan_vision_vpt(plan: _Plan) -> tuple[int | None, int]:
    """`image_encoder.VPT` and its `VPT_shallow` deep prompts (VPT, IVLP): return the vision n_ctx and depth."""
    n_ctx = plan.prompt("image_encoder.VPT", "vision", 0, None)
    return n_ctx, 1 + _plan_vpt_shallow(plan, "image_encoder", "vision", n_ctx)


def _plan_vpt_shallow(plan: _Plan, encoder: str, tower: str, n_ctx: int | None) -> int:
    pattern = f"{encoder}.transformer.resblocks.{{i}}.VPT_shallow"
    deep = plan.count(pattern, start=1)
    for layer in range(1, 1 + deep):
        plan.prompt(pattern.format(i=layer), tower, layer, n_ctx)
    return deep


def _plan_vpt(plan: _Plan) -> None:
    n_ctx, depth = _plan_vision_vpt(plan)
    plan.overrides.update(depth=depth, vision_n_ctx=n_ctx or 1)


def _plan_ivlp(plan: _Plan) -> None:
    n_ctx = plan.prompt("prompt_learner.ctx", "text", 0, None)
    text_depth = 1 + _plan_vpt_shallow(plan, "text_encoder", "text", n_ctx)
    vision_n_ctx, vision_depth = _plan_vision_vpt(plan)
    plan.overrides.update(depth=max(text_depth, vision_depth), n_ctx=n_ctx or 1)
    if text_depth != vision_depth:
        plan.overrides.update(text_depth=text_depth, vision_depth=vision_depth)
    if vision_n_ctx is not None and vision_n_ctx != n_ctx:
        plan.overrides["vision_n_ctx"] = vision_n_ctx


def _plan_promptsrc(plan: _Plan) -> None:
    _plan_ivlp(plan)
    plan.overrides["ctx_init"] = None  # the context comes from the checkpoint: no initialisation to tokenize


def _plan_maple(plan: _Plan) -> None:
    g = plan.geometry
    prompts, projections = "prompt_learner.compound_prompts_text.{i}", "prompt_learner.compound_prompt_projections.{i}"
    deep = plan.count(prompts, projections + ".weight", projections + ".bias")
    n_ctx = plan.prompt("prompt_learner.ctx", "text", 0, None)
    what = "Linear text width -> vision width"
    plan.linear("prompt_learner.proj", "vision", "projections.0", g.text_width, g.vision_width, what)
    for k in range(deep):
        layer = k + 1
        plan.prompt(prompts.format(i=k), "text", layer, n_ctx)
        key = projections.format(i=k)
        if plan.fits_layer(key, "vision", layer):
            plan.linear(key, "vision", f"projections.{layer}", g.text_width, g.vision_width, what)
        else:
            plan.used.update({f"{key}.weight", f"{key}.bias"} & plan.state.keys())
    plan.overrides.update(depth=1 + deep, n_ctx=n_ctx or 1)


def detect_mudpt_linear_format(checkpoint: str | os.PathLike | Mapping[str, Any]) -> str:
    """Which revision of the official `YzM1a0/MuDPT` `trainers/mudpt.py` wrote `checkpoint`, from its keys.

    Returns `"mudpt-linear"` for the current format (commit "3. finish uumudpt" and later: stacked deep prompts
    `mudpt_prompt_learner.deep_prompts` / `image_encoder.visual_ctx_deep_prompts` of shape `(K, n_ctx, width)` and one
    shared `deep_projections` / `visual_ctx_deep_projections` `Linear` each), `"mudpt-linear-v1"` for the early one
    (one tensor and one `Linear` per deep layer: `deep_prompts.{k}`, `deep_projections.{k}.weight`, ...). These are the
    presets [`convert_official`] converts them to. A checkpoint with no deep-prompt keys at all is early-format: only
    the early code stores none (with `DEEP_PROMPT_DEPTH=1`; the current code then stores `(0, n_ctx, width)` tensors).

    Args:
        checkpoint (`str`, `os.PathLike` or `Mapping`): As for [`convert_official`].

    Raises:
        ValueError: when the keys mix the two formats.
    """
    return _mudpt_linear_format(_official_state_dict(checkpoint))


def _mudpt_linear_format(state: Mapping[str, torch.Tensor]) -> str:
    early = sorted(key for key in state if _MUDPT_LINEAR_EARLY_KEYS.match(key))
    current = sorted(key for key in state if key in _MUDPT_LINEAR_CURRENT_KEYS)
    if early and current:
        raise ValueError(
            "This checkpoint mixes the two formats of the official `trainers/mudpt.py`: the early format's per-layer "
            f"keys {early} and the current format's stacked / shared keys {current}. Pass the state dict of one "
            "official model."
        )
    return "mudpt-linear" if current else "mudpt-linear-v1"


def _plan_mudpt_linear(plan: _Plan) -> None:
    """`method="mudpt-linear"`: a checkpoint of either revision of the official `mudpt.py`, told apart by its keys."""
    if _mudpt_linear_format(plan.state) == "mudpt-linear":
        _plan_mudpt_linear_current(plan)
    else:
        _plan_mudpt_linear_v1(plan)


def _plan_mudpt_linear_v1_only(plan: _Plan) -> None:
    """`method="mudpt-linear-v1"`: the early format only."""
    if _mudpt_linear_format(plan.state) == "mudpt-linear":
        raise ValueError(
            "This is a checkpoint of the current official `trainers/mudpt.py` (stacked `deep_prompts` and shared "
            "`deep_projections`), not of its early revision: pass method='mudpt-linear'."
        )
    _plan_mudpt_linear_v1(plan)


def _plan_mudpt_linear_current(plan: _Plan) -> None:
    """The current format of the official `mudpt.py`: stacked deep prompts, shared projections, layer-0 coupling."""
    g = plan.geometry
    plan.method = "mudpt-linear"
    if plan.apply_last_deep_set is not None:
        raise ValueError(
            "`apply_last_deep_set` is for early-format `mudpt.py` checkpoints; this one has the current format, whose "
            "forward applies every deep prompt set. Leave it unset."
        )
    n_ctx, vision_n_ctx, text_deep = _plan_stacked_prompts(plan, "mudpt_prompt_learner")
    what = "Linear text width -> vision width"
    plan.linear(
        "mudpt_prompt_learner.embed_projection", "vision", "first_projection", g.text_width, g.vision_width, what
    )
    t2v, v2t = "mudpt_prompt_learner.deep_projections", "image_encoder.visual_ctx_deep_projections"
    if text_deep >= 1:
        plan.linear(t2v, "vision", "deep_projection", g.text_width, g.vision_width, what)
        plan.to_text_width(v2t, "text", "deep_projection", "Linear vision width -> text width")
    else:  # no deep layers: the official forward maps empty tensors with them, mudpt_peft builds no deep maps
        for prefix in (t2v, v2t):
            plan.drop(f"{prefix}.weight")
            plan.drop(f"{prefix}.bias")
        plan.dropped_reason = (
            "The checkpoint has no deep prompts, so its shared deep projections are unused by the official forward "
            "(they map empty tensors)."
        )
    plan.overrides.update(depth=1 + text_deep, n_ctx=n_ctx or 1)


def _plan_mudpt_linear_v1(plan: _Plan) -> None:
    """The early format of the official `mudpt.py`: per-layer deep prompts and projections (`.{k}` keys)."""
    plan.method = "mudpt-linear-v1"
    g = plan.geometry
    text_deep, vision_deep = "mudpt_prompt_learner.deep_prompts.{i}", "image_encoder.visual_ctx_deep_prompts.{i}"
    t2v, v2t = "mudpt_prompt_learner.deep_projections.{i}", "image_encoder.visual_ctx_deep_projections.{i}"
    deep = plan.count(text_deep, vision_deep, *(p + s for p in (t2v, v2t) for s in (".weight", ".bias")))
    n_ctx = plan.prompt("mudpt_prompt_learner.ctx", "text", 0, None)
    vision_n_ctx = plan.prompt("image_encoder.visual_ctx", "vision", 0, n_ctx)
    # up to f358682 the blocks apply deep prompts while `nth < len(prompts) - 1`, so index deep-1 is never used;
    # 2b436f3 made it `nth < len(prompts)` (same keys): `apply_last_deep_set=True`
    used = deep if plan.apply_last_deep_set else max(deep - 1, 0)
    for k in range(used):
        layer = k + 1
        plan.prompt(text_deep.format(i=k), "text", layer, n_ctx)
        plan.prompt(vision_deep.format(i=k), "vision", layer, vision_n_ctx)
        if plan.fits_layer(t2v.format(i=k), "vision", layer) and plan.fits_layer(v2t.format(i=k), "text", layer):
            what = "Linear text width -> vision width"
            plan.linear(t2v.format(i=k), "vision", f"projections.{k}", g.text_width, g.vision_width, what)
            plan.to_text_width(v2t.format(i=k), "text", f"projections.{k}", "Linear vision width -> text width")
        else:
            for prefix in (t2v.format(i=k), v2t.format(i=k)):
                plan.used.update({f"{prefix}.weight", f"{prefix}.bias"} & plan.state.keys())
    if used < deep:
        last = deep - 1
        for key in (text_deep.format(i=last), vision_deep.format(i=last)):
            plan.drop(key)
        for prefix in (t2v.format(i=last), v2t.format(i=last)):
            plan.drop(f"{prefix}.weight")
            plan.drop(f"{prefix}.bias")
        plan.dropped_reason = (
            f"The early official mudpt.py forward never applies the last of its {deep} deep prompt sets (index "
            f"{last}), so the converted adapter has depth={max(deep, 1)}, like the official model. (A checkpoint "
            "trained at its revision 2b436f3 '3. finish umudpt' did apply it: pass apply_last_deep_set=True.)"
        )
    plan.overrides.update(depth=1 + used, n_ctx=n_ctx or 1)


def _plan_stacked_prompts(plan: _Plan, learner: str) -> tuple[int | None, int | None, int]:
    """Plan the layer-0 prompts and the stacked deep prompts of both towers (the current `mudpt.py` and
    `uumudpt.py`): `(n_ctx, vision_n_ctx, deep prompt sets)`."""
    n_ctx = plan.prompt(f"{learner}.ctx", "text", 0, None)
    vision_n_ctx = plan.prompt("image_encoder.visual_ctx", "vision", 0, n_ctx)
    text_deep = plan.stacked_prompts(f"{learner}.deep_prompts", "text", n_ctx)
    vision_deep = plan.stacked_prompts("image_encoder.visual_ctx_deep_prompts", "vision", vision_n_ctx)
    if text_deep != vision_deep:
        plan.bad_shapes.append(
            f"`{learner}.deep_prompts` holds {text_deep} deep prompt sets but "
            f"`image_encoder.visual_ctx_deep_prompts` holds {vision_deep}; they must be equal"
        )
    return n_ctx, vision_n_ctx, text_deep


def _plan_mudpt(plan: _Plan) -> None:
    g = plan.geometry
    n_ctx, vision_n_ctx, text_deep = _plan_stacked_prompts(plan, "uumudpt_prompt_learner")
    # the MLP width of the official blocks is 4 x width; read it from the checkpoint in case a trainer changed it
    mlp_ratio = 4.0
    for key, width in (
        ("uumudpt_prompt_learner.self_attn.mlp.c_fc.weight", g.text_width),
        ("image_encoder.visual_ctx_self_attn.mlp.c_fc.weight", g.vision_width),
    ):
        value = plan.state.get(key)
        if value is not None and value.dim() == 2 and value.shape[1] == width:
            mlp_ratio = value.shape[0] / width
            break
    t2v = ("uumudpt_prompt_learner.ln_pre", "uumudpt_prompt_learner.self_attn", "uumudpt_prompt_learner.ln_post")
    _plan_injection(plan, "vision", *t2v, g.text_width, mlp_ratio)
    plan.linear("uumudpt_prompt_learner.visual_proj", "vision", "proj", g.text_width, g.vision_width, "T2V head")
    v2t = (
        "image_encoder.visual_ctx_ln_intra_pre",
        "image_encoder.visual_ctx_self_attn",
        "image_encoder.visual_ctx_ln_intra_post",
    )
    if text_deep >= 1:  # V2T feeds the deep text layers only
        _plan_injection(plan, "text", *v2t, g.vision_width, mlp_ratio)
        plan.to_text_width("image_encoder.visual_ctx_text_proj", "text", "proj", "V2T head")
    else:  # no deep layers: mudpt_peft builds no V2T model, and the official forward does not use it
        prefixes = tuple(f"{p}." for p in (*v2t, "image_encoder.visual_ctx_text_proj"))
        for key in sorted(k for k in plan.state if k.startswith(prefixes)):
            plan.drop(key)
        plan.dropped_reason = (
            "The checkpoint has no deep prompts, so its vision-to-text Injection Model (which feeds only the deep "
            "text layers) is unused by the official forward."
        )
    plan.overrides.update(depth=1 + text_deep, n_ctx=n_ctx or 1)
    if mlp_ratio != 4.0:
        plan.overrides["injection_mlp_ratio"] = mlp_ratio


def _plan_injection(
    plan: _Plan, tower: str, ln_pre: str, block: str, ln_post: str, width: int, mlp_ratio: float
) -> None:
    """Plan an official injection model (`ln_pre`, one block, `ln_post`) into the `tower`'s fusion parameters."""
    hidden = int(round(width * mlp_ratio))
    for official, ours in ((ln_pre, "ln_pre"), (ln_post, "ln_post")):
        for suffix in ("weight", "bias"):
            key = f"{official}.{suffix}"
            value = plan.take(key)
            if value is not None and plan.expect(key, value, (width,), "LayerNorm of the source width"):
                plan.copies.append(_Copy(key, tower, f"{ours}.{suffix}", None, value))
    for official, ours, shape in _BLOCK_KEYS:
        key = f"{block}.{official}"
        value = plan.take(key)
        if value is not None and plan.expect(key, value, shape(width, hidden), "transformer block of the source width"):
            plan.copies.append(_Copy(key, tower, f"blocks.0.{ours}", None, value))


_PLANNERS = {
    "coop": _plan_coop,
    "cocoop": _plan_cocoop,
    "vpt": _plan_vpt,
    "ivlp": _plan_ivlp,
    "maple": _plan_maple,
    "kgcoop": _plan_kgcoop,
    # PromptSRC's model is IVLP's (`VPT_shallow` deep prompts in both encoders); its checkpoint holds the prompts after
    # the Gaussian aggregation over epochs
    "promptsrc": _plan_promptsrc,
    "mudpt-linear": _plan_mudpt_linear,
    "mudpt-linear-v1": _plan_mudpt_linear_v1_only,
    "mudpt": _plan_mudpt,
}


# ----------------------------------------------------------------------------------------------------------------------
# copying


@torch.no_grad()
def _copy_values(model: nn.Module, spec: Any, adapter_name: str, copies: list[_Copy]) -> None:
    """Copy the planned values into the adapter, and check that every adapter tensor received one."""
    towers = {"text": model.get_submodule(spec.text_tower), "vision": model.get_submodule(spec.vision_tower)}
    filled: set[tuple[str, str, int | None]] = set()
    for copy in copies:
        tower = towers[copy.tower]
        if copy.target == "prompts":
            target = tower.mudpt_prompts[adapter_name][copy.layer]
        else:
            target = tower.mudpt_fusion[adapter_name].get_parameter(copy.target)
        if target.shape != copy.value.shape:  # the plan's shapes follow the config: a mismatch is a bug here
            raise RuntimeError(
                f"Internal error converting `{copy.source}`: the adapter tensor has shape {tuple(target.shape)}, the "
                f"checkpoint's {tuple(copy.value.shape)}. Please report this."
            )
        target.copy_(copy.value)
        filled.add((copy.tower, copy.target, copy.layer))
    unfilled = []
    for name, tower in towers.items():
        prompts = getattr(tower, "mudpt_prompts", {})
        if adapter_name in prompts:
            unfilled += [
                f"{name} prompts[{j}]"
                for j in range(prompts[adapter_name].shape[0])
                if (name, "prompts", j) not in filled
            ]
        fusions = getattr(tower, "mudpt_fusion", {})
        if adapter_name in fusions:
            unfilled += [
                f"{name} fusion {p}"
                for p, _ in fusions[adapter_name].named_parameters()
                if (name, p, None) not in filled
            ]
    if unfilled:
        raise RuntimeError(
            f"Internal error: no checkpoint value for the adapter tensors {unfilled}. Please report this."
        )


# ----------------------------------------------------------------------------------------------------------------------
# command line


def main(argv: list[str] | None = None) -> int:
    """Command line entry point: `python -m mudpt_peft.convert --method ... --checkpoint ... --base ... --output ...`.

    Args:
        argv (`list[str]`, *optional*): The arguments; defaults to `sys.argv[1:]`.

    Returns:
        `int`: The exit status (0 on success; errors exit with a message through `SystemExit`).
    """
    parser = argparse.ArgumentParser(
        prog="python -m mudpt_peft.convert",
        description="Convert a checkpoint of an official prompt-learning trainer (CoOp, VPT, IVLP, MaPLe, MuDPT) into "
        "a mudpt_peft adapter directory.",
    )
    parser.add_argument("--method", required=True, help=f"one of {', '.join(OFFICIAL_METHODS)}")
    parser.add_argument("--checkpoint", required=True, help="the official checkpoint file, e.g. model.pth.tar-5")
    parser.add_argument("--base", required=True, help="the base CLIP model: a model id or a local directory")
    parser.add_argument("--output", required=True, help="the directory to write the adapter to")
    parser.add_argument(
        "--adapter-name",
        default="default",
        help="the adapter name (default: %(default)s; peft saves other names in a subdirectory of --output)",
    )
    parser.add_argument(
        "--injection-heads", type=int, default=None, help="attention heads of the Injection Models (mudpt only)"
    )
    parser.add_argument(
        "--apply-last-deep-set",
        action="store_true",
        default=None,
        help="early-format mudpt.py checkpoints trained at its revision 2b436f3, which applied the last deep set",
    )
    args = parser.parse_args(argv)
    try:
        method = _normalize_method(args.method)
        base = CLIPModel.from_pretrained(args.base)
        model = convert_official(
            args.checkpoint,
            method,
            base,
            adapter_name=args.adapter_name,
            injection_heads=args.injection_heads,
            apply_last_deep_set=args.apply_last_deep_set,
        )
    except (ValueError, OSError) as error:
        parser.exit(1, f"error: {error}\n")
    model.save_pretrained(args.output)
    config: MuDPTConfig = model.peft_config[args.adapter_name]
    trainable, _ = model.get_nb_trainable_parameters()
    n_ctx = config.n_ctx if config.text_prompts else config.resolved_vision_n_ctx
    if config.text_prompts and config.vision_prompts and config.resolved_vision_n_ctx != config.n_ctx:
        n_ctx = f"{config.n_ctx} (vision {config.resolved_vision_n_ctx})"
    depth = config.resolved_text_depth or config.resolved_vision_depth
    if config.text_prompts and config.vision_prompts and config.resolved_vision_depth != depth:
        depth = f"{depth} (vision {config.resolved_vision_depth})"
    print(
        f"Converted {method} checkpoint {args.checkpoint}: n_ctx={n_ctx}, depth={depth}, "
        f"{trainable:,} trainable parameters -> {args.output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
