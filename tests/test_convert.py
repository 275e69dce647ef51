"""Converting checkpoints of the official trainers (CoOp, VPT, IVLP, MaPLe, MuDPT) into mudpt_peft adapters.

The checkpoints are synthesized with the official key names (random values, plus frozen CLIP weights and buffers that
the converter must ignore); every converted tensor must land, unchanged, at its place in the adapter.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers import CLIPModel

from mudpt_peft import MuDPTConfig
from mudpt_peft import convert as convert_module
from mudpt_peft.convert import OFFICIAL_METHODS, convert_official, detect_mudpt_linear_format, main

from .helpers import make_clip, make_inputs

WT, WV, LAYERS = 32, 48, 4  # the widths and layer counts of `make_clip()`
WIDTH = {"text": WT, "vision": WV}
REPO = Path(__file__).resolve().parents[1]

#: Where a tensor lands: (tower, "prompts" or a fusion parameter name, layer of the prompts or None).
Target = tuple[str, str, "int | None"]

# official LightTransformer / CLIP residual block -> InjectionBlock
BLOCK = (
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


class Official:
    """The state dict of an official checkpoint under construction, and where each learned tensor must land."""

    def __init__(self, seed: int = 0, widths: dict[str, int] | None = None) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.width = widths or WIDTH
        self.state: dict[str, torch.Tensor] = {}
        self.expected: list[tuple[str, int | None, Target]] = []

    def tensor(self, key: str, *shape: int, to: Target | None = None) -> None:
        self.state[key] = torch.randn(shape, generator=self.generator)
        if to is not None:
            self.expected.append((key, None, to))

    def prompt(self, key: str, tower: str, layer: int | None, n_ctx: int) -> None:
        self.tensor(key, n_ctx, self.width[tower], to=(tower, "prompts", layer) if layer is not None else None)

    def stacked(self, key: str, tower: str, deep: int, n_ctx: int) -> None:
        self.tensor(key, deep, n_ctx, self.width[tower])
        self.expected += [(key, k, (tower, "prompts", k + 1)) for k in range(deep)]

    def linear(self, prefix: str, source: str, out_width: int, to: tuple[str, str] | None) -> None:
        for suffix, shape in (("weight", (out_width, self.width[source])), ("bias", (out_width,))):
            self.tensor(f"{prefix}.{suffix}", *shape, to=(to[0], f"{to[1]}.{suffix}", None) if to else None)

    def injection(self, prefixes: tuple[str, str, str], source: str, target: str, mlp_ratio: float, to: bool) -> None:
        width = self.width[source]
        ln_pre, block, ln_post = prefixes
        for official, ours in ((ln_pre, "ln_pre"), (ln_post, "ln_post")):
            for suffix in ("weight", "bias"):
                self.tensor(f"{official}.{suffix}", width, to=(target, f"{ours}.{suffix}", None) if to else None)
        for official, ours, shape in BLOCK:
            destination = (target, f"blocks.0.{ours}", None) if to else None
            self.tensor(f"{block}.{official}", *shape(width, int(width * mlp_ratio)), to=destination)

    def frozen(self, learner: str | None, clip: bool = True) -> Official:
        """Add frozen weights and buffers as the official trainers save them (the converter must ignore them).

        `learner` is the prompt learner holding the `token_prefix` / `token_suffix` buffers ("" for CoOp, whose
        checkpoint holds the prompt learner alone; `None` for VPT, which has none).
        """
        if learner is not None:
            prefix = f"{learner}." if learner else ""
            self.tensor(f"{prefix}token_prefix", 5, 1, self.width["text"])
            self.tensor(f"{prefix}token_suffix", 5, 10, self.width["text"])
        if clip:
            wt, wv = self.width["text"], self.width["vision"]
            self.tensor("image_encoder.conv1.weight", wv, 3, 8, 8)
            self.tensor("image_encoder.class_embedding", wv)
            self.tensor("image_encoder.positional_embedding", 5, wv)
            self.tensor("image_encoder.ln_pre.weight", wv)
            self.tensor("image_encoder.transformer.resblocks.0.attn.in_proj_weight", 3 * wv, wv)
            self.tensor("image_encoder.transformer.resblocks.3.mlp.c_fc.bias", 4 * wv)
            self.tensor("image_encoder.proj", wv, 24)
            self.tensor("text_encoder.positional_embedding", 16, wt)
            self.tensor("text_encoder.transformer.resblocks.1.ln_2.bias", wt)
            self.tensor("text_encoder.ln_final.weight", wt)
            self.tensor("text_encoder.text_projection", wt, 24)
            self.tensor("logit_scale")
        return self

    def checkpoint(self) -> dict:
        """The dict Dassl's `save_checkpoint` writes."""
        return {"state_dict": dict(self.state), "epoch": 5, "val_result": 71.5}

    def source(self, key: str, index: int | None) -> torch.Tensor:
        value = self.state[key]
        return (value if index is None else value[index]).float()


# ----------------------------------------------------------------------------------------------------------------------
# official checkpoints of each method


def coop(n_ctx: int = 3, key: str = "ctx") -> Official:
    official = Official(seed=1)
    official.prompt(key, "text", 0, n_ctx)
    return official.frozen("prompt_learner" if key.startswith("prompt_learner.") else "", clip=False)


def kgcoop(n_ctx: int = 4) -> Official:
    """KgCoOp's prompt learner: CoOp's `ctx`, and the `bias_vectors` and `meta_net` its forward never uses."""
    official = Official(seed=8)
    official.prompt("ctx", "text", 0, n_ctx)
    official.tensor("bias_vectors", 1, 24)
    official.tensor("meta_net.linear1.weight", 24, 24)
    official.tensor("meta_net.linear1.bias", 24)
    return official.frozen("", clip=False)


def vpt(depth: int = 3, n_ctx: int = 2) -> Official:
    official = Official(seed=2)
    official.prompt("image_encoder.VPT", "vision", 0, n_ctx)
    for i in range(1, depth):
        official.prompt(f"image_encoder.transformer.resblocks.{i}.VPT_shallow", "vision", i, n_ctx)
    return official.frozen(None)


def ivlp(text_depth: int = 3, vision_depth: int = 2, n_ctx: int = 2, vision_n_ctx: int = 3) -> Official:
    official = Official(seed=3)
    official.prompt("prompt_learner.ctx", "text", 0, n_ctx)
    for i in range(1, text_depth):
        official.prompt(f"text_encoder.transformer.resblocks.{i}.VPT_shallow", "text", i, n_ctx)
    official.prompt("image_encoder.VPT", "vision", 0, vision_n_ctx)
    for i in range(1, vision_depth):
        official.prompt(f"image_encoder.transformer.resblocks.{i}.VPT_shallow", "vision", i, vision_n_ctx)
    return official.frozen("prompt_learner")


def maple(depth: int = 4, n_ctx: int = 2) -> Official:
    official = Official(seed=4)
    official.prompt("prompt_learner.ctx", "text", 0, n_ctx)
    official.linear("prompt_learner.proj", "text", WV, to=("vision", "projections.0"))
    for k in range(depth - 1):
        official.prompt(f"prompt_learner.compound_prompts_text.{k}", "text", k + 1, n_ctx)
        official.linear(
            f"prompt_learner.compound_prompt_projections.{k}", "text", WV, to=("vision", f"projections.{k + 1}")
        )
    return official.frozen("prompt_learner")


def mudpt_linear(deep: int = 2, n_ctx: int = 2, embed_dim: int = WT) -> Official:
    """The current official `mudpt.py`: K = `deep` stacked deep prompt sets, all used (layers 1..K), one shared
    `Linear` per direction, and the layer-0 `embed_projection` (text -> vision)."""
    official = Official(seed=7)
    official.prompt("mudpt_prompt_learner.ctx", "text", 0, n_ctx)
    official.prompt("image_encoder.visual_ctx", "vision", 0, n_ctx)
    official.stacked("mudpt_prompt_learner.deep_prompts", "text", deep, n_ctx)
    official.stacked("image_encoder.visual_ctx_deep_prompts", "vision", deep, n_ctx)
    official.linear("mudpt_prompt_learner.embed_projection", "text", WV, to=("vision", "first_projection"))
    # without deep layers the shared maps are unused (officially they map empty tensors)
    t2v, v2t = ("vision", "deep_projection"), ("text", "deep_projection")
    official.linear("mudpt_prompt_learner.deep_projections", "text", WV, to=t2v if deep else None)
    official.linear("image_encoder.visual_ctx_deep_projections", "vision", embed_dim, to=v2t if deep else None)
    return official.frozen("mudpt_prompt_learner")


def mudpt_linear_v1(deep: int = 3, n_ctx: int = 2, embed_dim: int = WT, all_used: bool = False) -> Official:
    """The early official `mudpt.py`: K = `deep` per-layer deep prompt sets, of which it uses the first K-1 (layers
    1..K-1; all K with `all_used`, as its revision 2b436f3 did), one `Linear` per deep layer and direction."""
    official = Official(seed=5)
    official.prompt("mudpt_prompt_learner.ctx", "text", 0, n_ctx)
    official.prompt("image_encoder.visual_ctx", "vision", 0, n_ctx)
    official.linear("mudpt_prompt_learner.embed_projection", "text", WV, to=None)  # never used officially
    for k in range(deep):
        used = all_used or k < deep - 1
        official.prompt(f"mudpt_prompt_learner.deep_prompts.{k}", "text", k + 1 if used else None, n_ctx)
        official.prompt(f"image_encoder.visual_ctx_deep_prompts.{k}", "vision", k + 1 if used else None, n_ctx)
        t2v, v2t = ("vision", f"projections.{k}"), ("text", f"projections.{k}")
        official.linear(f"mudpt_prompt_learner.deep_projections.{k}", "text", WV, to=t2v if used else None)
        official.linear(f"image_encoder.visual_ctx_deep_projections.{k}", "vision", embed_dim, to=v2t if used else None)
    return official.frozen("mudpt_prompt_learner")


def mudpt(deep: int = 2, n_ctx: int = 2, mlp_ratio: float = 4.0, widths: dict[str, int] | None = None) -> Official:
    official = Official(seed=6, widths=widths)
    wt, wv = official.width["text"], official.width["vision"]
    official.prompt("uumudpt_prompt_learner.ctx", "text", 0, n_ctx)
    official.stacked("uumudpt_prompt_learner.deep_prompts", "text", deep, n_ctx)
    official.prompt("image_encoder.visual_ctx", "vision", 0, n_ctx)
    official.stacked("image_encoder.visual_ctx_deep_prompts", "vision", deep, n_ctx)
    t2v = ("uumudpt_prompt_learner.ln_pre", "uumudpt_prompt_learner.self_attn", "uumudpt_prompt_learner.ln_post")
    official.injection(t2v, "text", "vision", mlp_ratio, to=True)
    official.linear("uumudpt_prompt_learner.visual_proj", "text", wv, to=("vision", "proj"))
    v2t = (
        "image_encoder.visual_ctx_ln_intra_pre",
        "image_encoder.visual_ctx_self_attn",
        "image_encoder.visual_ctx_ln_intra_post",
    )
    official.injection(v2t, "vision", "text", mlp_ratio, to=deep > 0)  # no deep layers: no V2T model
    official.linear("image_encoder.visual_ctx_text_proj", "vision", wt, to=("text", "proj") if deep > 0 else None)
    return official.frozen("uumudpt_prompt_learner")


# (id, method, checkpoint, expected config attributes, warning the conversion must give or None)
CASES: list[tuple[str, str, Callable[[], Official], dict, str | None]] = [
    ("coop", "coop", coop, {"fusion": "none", "n_ctx": 3, "resolved_text_depth": 1, "resolved_vision_depth": 0}, None),
    (
        "coop-prefixed",
        "CoOp",
        lambda: coop(n_ctx=4, key="prompt_learner.ctx"),
        {"n_ctx": 4, "resolved_text_depth": 1, "vision_prompts": False},
        None,
    ),
    (
        "vpt",
        "vpt",
        vpt,
        {"text_prompts": False, "resolved_vision_depth": 3, "resolved_vision_n_ctx": 2, "fusion": "none"},
        None,
    ),
    (
        "ivlp",
        "ivlp",
        ivlp,
        {"n_ctx": 2, "resolved_vision_n_ctx": 3, "resolved_text_depth": 3, "resolved_vision_depth": 2},
        None,
    ),
    ("kgcoop", "KgCoOp", kgcoop, {"fusion": "none", "n_ctx": 4, "resolved_text_depth": 1, "vision_prompts": False},
     "never uses"),
    (
        "promptsrc",
        "promptsrc",
        lambda: ivlp(text_depth=3, vision_depth=3, n_ctx=2, vision_n_ctx=2),
        {"fusion": "none", "n_ctx": 2, "resolved_text_depth": 3, "resolved_vision_depth": 3},
        None,
    ),
    ("maple", "MaPLe", maple, {"fusion": "text_to_vision", "n_ctx": 2, "depth": 4, "resolved_vision_depth": 4}, None),
    ("mudpt-linear", "mudpt-linear", mudpt_linear, {"fusion": "shared_linear", "depth": 3}, None),
    (
        "mudpt-linear-full-depth",
        "mudpt_linear",
        lambda: mudpt_linear(deep=3, n_ctx=3),
        {"fusion": "shared_linear", "n_ctx": 3, "depth": 4},
        None,
    ),
    (
        "mudpt-linear-no-deep",
        "MuDPT-Linear",
        lambda: mudpt_linear(deep=0),
        {"fusion": "shared_linear", "depth": 1},
        "unused",
    ),
    (
        "mudpt-linear-v1",
        "mudpt-linear-v1",
        mudpt_linear_v1,
        {"fusion": "linear", "n_ctx": 2, "depth": 3},
        "never applies",
    ),
    (
        "mudpt-linear-v1-detected",
        "mudpt-linear",
        mudpt_linear_v1,
        {"fusion": "linear", "n_ctx": 2, "depth": 3},
        "never applies",
    ),
    (
        "mudpt-linear-v1-one-set",
        "mudpt_linear_v1",
        lambda: mudpt_linear_v1(deep=1),
        {"fusion": "linear", "depth": 1},
        "never applies",
    ),
    (
        "mudpt-linear-v1-2b436f3",
        ("mudpt-linear", {"apply_last_deep_set": True}),
        lambda: mudpt_linear_v1(deep=3, all_used=True),
        {"fusion": "linear", "depth": 4},
        None,
    ),
    (
        "mudpt-linear-v1-2b436f3-explicit",
        ("mudpt-linear-v1", {"apply_last_deep_set": True}),
        lambda: mudpt_linear_v1(deep=2, n_ctx=3, all_used=True),
        {"fusion": "linear", "depth": 3, "n_ctx": 3},
        None,
    ),
    (
        "mudpt-linear-v1-no-deep",
        "mudpt-linear",
        lambda: mudpt_linear_v1(deep=0),
        {"fusion": "linear", "depth": 1},
        None,
    ),
    ("mudpt", "mudpt", mudpt, {"fusion": "injection", "n_ctx": 2, "depth": 3, "injection_layers": 1}, None),
    ("mudpt-no-deep", "MuDPT", lambda: mudpt(deep=0), {"fusion": "injection", "depth": 1}, "unused"),
    ("mudpt-mlp-ratio", "mudpt", lambda: mudpt(mlp_ratio=2.0), {"injection_mlp_ratio": 2.0, "depth": 3}, None),
]


def target_tensor(model: PeftModel, target: Target, adapter_name: str = "default") -> torch.Tensor:
    tower_name, name, layer = target
    clip = model.get_base_model()
    tower = clip.text_model if tower_name == "text" else clip.vision_model
    if name == "prompts":
        return tower.mudpt_prompts[adapter_name][layer]
    return tower.mudpt_fusion[adapter_name].get_parameter(name)


def assert_converted(model: PeftModel, official: Official, adapter_name: str = "default") -> None:
    """Every expected tensor is at its place, unchanged, and nothing else is in the adapter."""
    for key, index, target in official.expected:
        actual = target_tensor(model, target, adapter_name)
        assert actual.dtype == torch.float32
        assert torch.equal(actual, official.source(key, index)), (key, index, target)
    adapter = sum(p.numel() for n, p in model.named_parameters() if ".mudpt_prompts." in n or ".mudpt_fusion." in n)
    assert adapter == sum(official.source(key, index).numel() for key, index, _ in official.expected)


def logits(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits_per_image


def assert_untouched(clip: CLIPModel, keys_before: set[str]) -> None:
    assert not any(isinstance(module, BaseTunerLayer) for module in clip.modules())
    assert not hasattr(clip, "peft_config")
    assert set(clip.state_dict()) == keys_before


# ----------------------------------------------------------------------------------------------------------------------
# conversion


@pytest.mark.parametrize(
    ("method", "make", "expected_config", "expected_warning"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_convert_puts_every_tensor_in_place(tmp_path, method, make, expected_config, expected_warning):
    method, kwargs = method if isinstance(method, tuple) else (method, {})
    official = make()
    inputs = make_inputs()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = convert_official(official.checkpoint(), method, make_clip(), **kwargs)
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    if expected_warning is None:
        assert not [m for m in messages if "never applies" in m or "unused" in m]
    else:
        assert any(expected_warning in m for m in messages), messages

    assert isinstance(model, PeftModel)
    config = model.peft_config["default"]
    assert isinstance(config, MuDPTConfig)
    for name, value in expected_config.items():
        assert getattr(config, name) == value, name
    assert_converted(model, official)

    # the adapter changes the outputs, and saves and reloads like any adapter
    converted = logits(model, inputs)
    assert not torch.allclose(converted, logits(make_clip(), inputs))
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(make_clip(), tmp_path / "adapter")
    assert torch.equal(logits(reloaded, inputs), converted)


def test_every_official_method_is_covered():
    methods = {case[1][0] if isinstance(case[1], tuple) else case[1] for case in CASES}
    methods.add("cocoop")  # its logits need a PromptClassifier (text features per image): tests/test_cocoop.py
    assert {method.lower().replace("_", "-") for method in methods} == set(OFFICIAL_METHODS)


@pytest.mark.parametrize("as_path", [str, Path])
def test_convert_from_file_with_dataparallel_prefix(tmp_path, as_path):
    official = maple(depth=3)
    checkpoint = official.checkpoint()
    checkpoint["state_dict"] = {f"module.{key}": value for key, value in checkpoint["state_dict"].items()}
    path = tmp_path / "MultiModalPromptLearner" / "model.pth.tar-5"
    path.parent.mkdir()
    torch.save(checkpoint, path)
    model = convert_official(as_path(path), "maple", make_clip(), adapter_name="imagenet")
    assert model.active_adapter == "imagenet"
    assert_converted(model, official, adapter_name="imagenet")


def test_convert_bare_state_dict_in_fp16():
    official = maple(depth=2)
    official.state = {key: value.half() for key, value in official.state.items()}
    model = convert_official(official.state, "maple", make_clip())
    assert_converted(model, official)  # fp16 values, cast to float32 exactly


@pytest.mark.parametrize(
    ("widths", "injection_heads", "expected_heads"),
    [({"text": WT, "vision": WV}, 2, (2, 2)), ({"text": 128, "vision": 192}, None, (2, 3))],
    ids=["injection_heads", "width//64"],
)
def test_mudpt_injection_models_compute_the_official_light_transformer(widths, injection_heads, expected_heads):
    """T2V and V2T on the converted adapter = the official LightTransformer math (nn.MultiheadAttention, LND)."""
    official = mudpt(deep=2, n_ctx=3, widths=widths)
    clip = make_clip(text_width=widths["text"], vision_width=widths["vision"])
    model = convert_official(official.checkpoint(), "mudpt", clip, injection_heads=injection_heads)
    assert model.peft_config["default"].injection_heads == injection_heads
    text, vision = model.get_base_model().text_model, model.get_base_model().vision_model
    assert vision.mudpt_fusion["default"].blocks[0].attn.num_heads == expected_heads[0]
    assert text.mudpt_fusion["default"].blocks[0].attn.num_heads == expected_heads[1]

    # Two different computations of the same math, so no bit-equality and no fixed tolerance: the adapter runs in
    # float32, with kernels that change with the CPU's instruction set and thread count (its outputs moved by up to
    # 3e-4 between AVX-512 and AVX2 here, at |x| up to 57), so the official math is computed in float64 and the
    # adapter must match it within gamma_w = w * eps32 of the output scale: the classic worst-case relative error of
    # a float32 dot product of length w (Higham), w the wider tower's width. A real mistake (a head count, a norm, a
    # bias) moves the outputs by O(1).
    state = {key: value.double() for key, value in official.state.items()}

    def within_float32_rounding(actual: torch.Tensor, oracle: torch.Tensor) -> None:
        bound = max(widths.values()) * torch.finfo(torch.float32).eps * oracle.abs().max().item()
        torch.testing.assert_close(actual.double(), oracle, rtol=0, atol=bound)

    def injection(x: torch.Tensor, ln_pre: str, block: str, ln_post: str, proj: str, heads: int) -> torch.Tensor:
        def ln(h: torch.Tensor, prefix: str) -> torch.Tensor:
            return F.layer_norm(h, (h.shape[-1],), state[f"{prefix}.weight"], state[f"{prefix}.bias"])

        def linear(h: torch.Tensor, prefix: str) -> torch.Tensor:
            return F.linear(h, state[f"{prefix}.weight"], state[f"{prefix}.bias"])

        width = x.shape[-1]
        attention = nn.MultiheadAttention(width, heads, dtype=torch.float64)
        attention.load_state_dict(
            {name: state[f"{block}.attn.{name}"] for name in ("in_proj_weight", "in_proj_bias")}
            | {f"out_proj.{p}": state[f"{block}.attn.out_proj.{p}"] for p in ("weight", "bias")}
        )
        h = ln(x, ln_pre).permute(1, 0, 2)  # (layers, n_ctx, w) -> LND: the n_ctx tokens attend per layer
        h = h + attention(*(ln(h, f"{block}.ln_1"),) * 3, need_weights=False)[0]
        mlp = linear(ln(h, f"{block}.ln_2"), f"{block}.mlp.c_fc")
        h = h + linear(mlp * torch.sigmoid(1.702 * mlp), f"{block}.mlp.c_proj")
        return linear(ln(h.permute(1, 0, 2), ln_post), proj)

    p = "uumudpt_prompt_learner"
    with torch.no_grad():
        all_text = torch.cat([state[f"{p}.ctx"][None], state[f"{p}.deep_prompts"]])
        t2v = injection(all_text, f"{p}.ln_pre", f"{p}.self_attn", f"{p}.ln_post", f"{p}.visual_proj", heads=2)
        v2t = injection(
            state["image_encoder.visual_ctx_deep_prompts"],
            "image_encoder.visual_ctx_ln_intra_pre",
            "image_encoder.visual_ctx_self_attn",
            "image_encoder.visual_ctx_ln_intra_post",
            "image_encoder.visual_ctx_text_proj",
            heads=expected_heads[1],
        )
        vision_used = vision.used_prompts("default") - vision.mudpt_prompts["default"]
        text_used = text.used_prompts("default") - text.mudpt_prompts["default"]
    within_float32_rounding(vision_used, t2v)
    assert torch.equal(text_used[0], torch.zeros_like(text_used[0]))  # text layer 0 gets no injection
    within_float32_rounding(text_used[1:], v2t)


# ----------------------------------------------------------------------------------------------------------------------
# errors: clear, and before the base model is touched

PICKLE_LOADS: list[str] = []


class SomeCustomObject:
    """Stands for the pickled objects of a checkpoint (e.g. a yacs config or an LR scheduler)."""

    def __init__(self) -> None:
        self.lr = 0.0035

    def __setstate__(self, state: dict) -> None:  # would run if the file were unpickled
        PICKLE_LOADS.append("unpickled")
        self.__dict__.update(state)


def _with(official: Official, changes: dict[str, torch.Tensor | None]) -> dict:
    """The official checkpoint with some tensors replaced (or removed, for `None`)."""
    state = dict(official.state)
    for key, value in changes.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    return {"state_dict": state, "epoch": 5}


ERRORS = [
    ("unknown-method", lambda: maple().checkpoint(), "lora", r"Unknown method 'lora'; choose one of coop, cocoop, vpt"),
    (
        "missing-key",
        lambda: _with(maple(), {"prompt_learner.proj.weight": None}),
        "maple",
        r"missing keys .*\['prompt_learner\.proj\.weight'\]",
    ),
    (
        "unknown-prompt-key",
        lambda: _with(maple(), {"prompt_learner.mystery": torch.zeros(2, WT)}),
        "maple",
        r"unknown keys .*\['prompt_learner\.mystery'\]",
    ),
    ("other-method", lambda: maple().checkpoint(), "ivlp", r"look like a `maple` checkpoint: pass method='maple'"),
    (
        "wrong-width",
        lambda: _with(maple(), {"prompt_learner.ctx": torch.zeros(2, 40)}),
        "maple",
        r"`prompt_learner\.ctx` has shape \(2, 40\), expected \(2, 32\)",
    ),
    (
        "wrong-projection-width",
        lambda: _with(maple(depth=2), {"prompt_learner.proj.weight": torch.zeros(64, WT)}),
        "maple",
        r"`prompt_learner\.proj\.weight` has shape \(64, 32\), expected \(48, 32\)",
    ),
    (
        "too-many-layers",
        lambda: maple(depth=6).checkpoint(),
        "maple",
        r"`prompt_learner\.compound_prompts_text\.3` belongs to text layer 4, but the base model's text tower has 4",
    ),
    (
        "too-many-stacked-layers",
        lambda: mudpt(deep=4).checkpoint(),
        "mudpt",
        r"`uumudpt_prompt_learner\.deep_prompts` has shape \(4, 2, 32\).*expected at most \(3, 2, 32\)",
    ),
    (
        "vpt-layer-gap",
        lambda: _with(vpt(depth=4), {"image_encoder.transformer.resblocks.2.VPT_shallow": None}),
        "vpt",
        r"missing keys .*image_encoder\.transformer\.resblocks\.2\.VPT_shallow",
    ),
    ("csc", lambda: _with(coop(), {"ctx": torch.zeros(5, 3, WT)}), "coop", r"class-specific context \(CoOp's CSC=True"),
    (
        "nan",
        lambda: _with(maple(), {"prompt_learner.ctx": torch.full((2, WT), float("nan"))}),
        "maple",
        r"The checkpoint holds adapter tensors with NaN or infinite values: prompt_learner\.ctx",
    ),
    (
        "integer",
        lambda: _with(coop(), {"ctx": torch.zeros(3, WT, dtype=torch.int64)}),
        "coop",
        r"The checkpoint holds adapter tensors that are not floating point: ctx \(torch\.int64\)",
    ),
    (
        "embed-dim",
        lambda: mudpt_linear(embed_dim=24).checkpoint(),
        "mudpt-linear",
        r"`image_encoder\.visual_ctx_deep_projections\.weight` has shape \(24, 48\).*CLIP's embed dim 24, but the "
        "base model's text width is 32",
    ),
    (
        "embed-dim-v1",
        lambda: mudpt_linear_v1(embed_dim=24).checkpoint(),
        "mudpt-linear",
        r"CLIP's embed dim 24, but the base model's text width is 32",
    ),
    (
        "mudpt-linear-mixed-formats",
        lambda: _with(mudpt_linear(), {"mudpt_prompt_learner.deep_prompts.0": torch.zeros(2, WT)}),
        "mudpt-linear",
        r"mixes the two formats .*per-layer keys \['mudpt_prompt_learner\.deep_prompts\.0'\] and the current "
        r"format's stacked / shared keys \['image_encoder\.visual_ctx_deep_projections\.bias'",
    ),
    (
        "mudpt-linear-v1-mixed-formats",
        lambda: _with(mudpt_linear_v1(), {"image_encoder.visual_ctx_deep_projections.weight": torch.zeros(WT, WV)}),
        "mudpt-linear-v1",
        r"mixes the two formats",
    ),
    (
        "mudpt-linear-current-as-v1",
        lambda: mudpt_linear().checkpoint(),
        "mudpt-linear-v1",
        r"a checkpoint of the current official `trainers/mudpt\.py`.*pass method='mudpt-linear'",
    ),
    (
        "mudpt-linear-deep-counts-differ",
        lambda: _with(mudpt_linear(), {"image_encoder.visual_ctx_deep_prompts": torch.zeros(1, 2, WV)}),
        "mudpt-linear",
        r"`mudpt_prompt_learner\.deep_prompts` holds 2 deep prompt sets but `image_encoder\.visual_ctx_deep_prompts` "
        "holds 1",
    ),
    (
        "mudpt-linear-too-many-layers",
        lambda: mudpt_linear(deep=4).checkpoint(),
        "mudpt-linear",
        r"`mudpt_prompt_learner\.deep_prompts` has shape \(4, 2, 32\).*expected at most \(3, 2, 32\)",
    ),
    (
        "mudpt-linear-missing-layer-0-map",
        lambda: _with(mudpt_linear(), {"mudpt_prompt_learner.embed_projection.bias": None}),
        "mudpt-linear",
        r"missing keys .*\['mudpt_prompt_learner\.embed_projection\.bias'\]",
    ),
    (
        "mudpt-linear-wrong-shared-map",
        lambda: _with(mudpt_linear(), {"mudpt_prompt_learner.deep_projections.weight": torch.zeros(2, WV, WT)}),
        "mudpt-linear",
        r"`mudpt_prompt_learner\.deep_projections\.weight` has shape \(2, 48, 32\), expected \(48, 32\)",
    ),
    (
        "no-room-for-text",
        lambda: coop(n_ctx=15).checkpoint(),
        "coop",
        r"`n_ctx`=15 leaves no room for text",
    ),
    (
        "heads-do-not-divide",
        lambda: mudpt().checkpoint(),
        ("mudpt", {"injection_heads": 5}),
        r"`injection_heads`=5 does not divide",
    ),
    (
        "heads-for-another-method",
        lambda: maple().checkpoint(),
        ("maple", {"injection_heads": 2}),
        r"`injection_heads` only applies to method='mudpt'",
    ),
    ("not-tensors", lambda: {"state_dict": {"ctx": [1.0, 2.0]}}, "coop", r"not a state dict of tensors: \['ctx'\]"),
    (
        "last-deep-set-for-another-method",
        lambda: maple().checkpoint(),
        ("maple", {"apply_last_deep_set": True}),
        r"`apply_last_deep_set` only applies to early-format `mudpt\.py` checkpoints",
    ),
    (
        "last-deep-set-for-the-current-format",
        lambda: mudpt_linear().checkpoint(),
        ("mudpt-linear", {"apply_last_deep_set": False}),
        r"this one has the current format, whose forward applies every deep prompt set",
    ),
    (
        "last-deep-set-beyond-the-model",
        lambda: mudpt_linear_v1(deep=4, all_used=True).checkpoint(),
        ("mudpt-linear", {"apply_last_deep_set": True}),
        r"`mudpt_prompt_learner\.deep_prompts\.3` belongs to text layer 4, but the base model's text tower has 4",
    ),
]


@pytest.mark.parametrize(("make", "method", "match"), [case[1:] for case in ERRORS], ids=[case[0] for case in ERRORS])
def test_clear_errors_leave_the_base_model_untouched(make, method, match):
    method, kwargs = method if isinstance(method, tuple) else (method, {})
    clip = make_clip()
    keys_before = set(clip.state_dict())
    with pytest.raises(ValueError, match=match):
        convert_official(make(), method, clip, **kwargs)
    assert_untouched(clip, keys_before)


def test_detect_mudpt_linear_format(tmp_path):
    """The two formats of the official `mudpt.py` are told apart by their keys; a mix of both is refused."""
    assert detect_mudpt_linear_format(mudpt_linear().checkpoint()) == "mudpt-linear"
    assert detect_mudpt_linear_format(mudpt_linear(deep=0).state) == "mudpt-linear"  # (0, n, w) deep prompts
    assert detect_mudpt_linear_format(mudpt_linear_v1().checkpoint()) == "mudpt-linear-v1"
    assert detect_mudpt_linear_format(mudpt_linear_v1(deep=0).state) == "mudpt-linear-v1"  # no deep keys at all
    path = tmp_path / "model.pth.tar-5"
    torch.save({"state_dict": {f"module.{k}": v for k, v in mudpt_linear().state.items()}}, path)
    assert detect_mudpt_linear_format(path) == "mudpt-linear"
    for garbled in (
        _with(mudpt_linear(), {"mudpt_prompt_learner.deep_projections.0.weight": torch.zeros(WV, WT)}),
        _with(mudpt_linear_v1(), {"image_encoder.visual_ctx_deep_prompts": torch.zeros(3, 2, WV)}),
        {**mudpt_linear_v1().state, "module.mudpt_prompt_learner.deep_prompts": torch.zeros(3, 2, WT)},
    ):
        with pytest.raises(ValueError, match="mixes the two formats of the official `trainers/mudpt.py`"):
            detect_mudpt_linear_format(garbled)


def test_mudpt_linear_hints_treat_both_formats_as_one_method():
    """Unknown keys in an early-format checkpoint converted as `mudpt-linear` give no "pass method=" hint; another
    method's name on a `mudpt.py` checkpoint of either format points to `mudpt-linear`."""
    with pytest.raises(ValueError, match="unknown keys") as error:
        convert_official(
            _with(mudpt_linear_v1(), {"mudpt_prompt_learner.mystery": torch.zeros(2)}), "mudpt-linear", make_clip()
        )
    assert "look like" not in str(error.value)
    for make in (mudpt_linear, mudpt_linear_v1):
        with pytest.raises(ValueError, match="look like a `mudpt-linear` checkpoint: pass method='mudpt-linear'"):
            convert_official(make().checkpoint(), "ivlp", make_clip())


def test_dassl_checkpoint_with_a_pickled_lr_scheduler_loads(tmp_path):
    """Dassl's warm-up scheduler pickles its successor scheduler (and the optimizer inside): torch classes only."""
    parameter = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([parameter], lr=0.1)
    successor = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 10)
    path = tmp_path / "model.pth.tar-5"
    case = maple()
    checkpoint = {
        "state_dict": case.state,
        "epoch": 5,
        "optimizer": optimizer.state_dict(),
        "scheduler": {"successor": successor, "warmup_epoch": 1, "cons_lr": 1e-5, "last_epoch": 5},
    }
    torch.save(checkpoint, path)
    model = convert_official(path, "maple", make_clip())
    assert model.peft_config["default"].fusion == "text_to_vision"


def test_checkpoint_that_needs_pickles_is_refused(tmp_path):
    path = tmp_path / "model.pth.tar-5"
    torch.save({"state_dict": maple().state, "epoch": 5, "cfg": SomeCustomObject()}, path)
    clip = make_clip()
    keys_before = set(clip.state_dict())
    with pytest.raises(ValueError, match=r"could not be loaded safely.*SomeCustomObject.*weights_only=False"):
        convert_official(path, "maple", clip)
    assert PICKLE_LOADS == []  # nothing of the file was unpickled
    assert_untouched(clip, keys_before)


def test_unreadable_and_missing_files(tmp_path):
    garbage = tmp_path / "model.pth.tar-1"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not be read by `torch.load`"):
        convert_official(garbage, "maple", make_clip())
    with pytest.raises(FileNotFoundError, match="No checkpoint file"):
        convert_official(tmp_path / "absent.pth.tar", "maple", make_clip())


def test_failure_while_copying_unwraps_the_base_model(monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("copy failed")

    monkeypatch.setattr(convert_module, "_copy_values", fail)
    clip = make_clip()
    keys_before = set(clip.state_dict())
    with pytest.raises(RuntimeError, match="copy failed"):
        convert_official(maple().checkpoint(), "maple", clip)
    assert_untouched(clip, keys_before)


def test_wrapped_or_unsupported_base_models_are_refused():
    wrapped = get_peft_model(make_clip(), MuDPTConfig(depth=1))
    with pytest.raises(ValueError, match="already wrapped by peft"):
        convert_official(maple().checkpoint(), "maple", wrapped.get_base_model())
    with pytest.raises(ValueError, match="needs a `transformers.CLIPModel`"):
        convert_official(maple().checkpoint(), "maple", make_clip().text_model)


# ----------------------------------------------------------------------------------------------------------------------
# command line


def test_cli_converts_and_saves_an_adapter(tmp_path):
    base_dir, output = tmp_path / "base", tmp_path / "adapter"
    make_clip().save_pretrained(base_dir)
    official = maple(depth=3, n_ctx=2)
    checkpoint = tmp_path / "model.pth.tar-5"
    torch.save(official.checkpoint(), checkpoint)
    args = ["--method", "maple", "--checkpoint", str(checkpoint), "--base", str(base_dir), "--output", str(output)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mudpt_peft.convert", *args], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    trainable = 3 * 2 * WT + 3 * (WV * WT + WV)  # text prompts + one Linear per layer
    assert len(lines) == 1
    assert "n_ctx=2" in lines[0] and "depth=3" in lines[0] and f"{trainable:,} trainable parameters" in lines[0]

    loaded = PeftModel.from_pretrained(CLIPModel.from_pretrained(base_dir).eval(), output)
    assert loaded.peft_config["default"].base_model_name_or_path == str(base_dir)
    assert_converted(loaded, official)
    inputs = make_inputs()
    assert torch.equal(logits(loaded, inputs), logits(convert_official(checkpoint, "maple", make_clip()), inputs))


def test_cli_reports_errors(tmp_path, capsys):
    base_dir = tmp_path / "base"
    make_clip().save_pretrained(base_dir)
    checkpoint = tmp_path / "model.pth.tar-5"
    torch.save(_with(maple(), {"prompt_learner.proj.bias": None}), checkpoint)
    output = tmp_path / "unused"
    args = ["--method", "maple", "--checkpoint", str(checkpoint), "--base", str(base_dir), "--output", str(output)]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 1
    assert "error: Cannot convert" in capsys.readouterr().err
    assert not output.exists()


def test_cli_mudpt_linear_formats(tmp_path, capsys):
    """`--method mudpt-linear` converts either format; `--apply-last-deep-set` is the early format as 2b436f3 ran it."""
    base_dir = tmp_path / "base"
    make_clip().save_pretrained(base_dir)
    for name, official, extra, depth in (
        ("current", mudpt_linear(deep=2), [], 3),
        ("early", mudpt_linear_v1(deep=3, all_used=True), ["--apply-last-deep-set"], 4),
    ):
        checkpoint = tmp_path / f"{name}.pth.tar-5"
        torch.save(official.checkpoint(), checkpoint)
        output = tmp_path / name
        args = ["--method", "mudpt-linear", "--checkpoint", str(checkpoint), "--base", str(base_dir)]
        assert main([*args, "--output", str(output), *extra]) == 0
        assert f"depth={depth}" in capsys.readouterr().out
        loaded = PeftModel.from_pretrained(CLIPModel.from_pretrained(base_dir).eval(), output)
        assert_converted(loaded, official)
