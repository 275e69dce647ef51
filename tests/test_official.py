"""Exactness against the official methods: the tuner on an HF `CLIPModel` vs the official forwards on OpenAI's CLIP.

`tests/official_reference.py` re-implements the official forwards (CoOp, VPT, IVLP, MaPLe, MuDPT's `mudpt.py` in its
current and its early revision, and `uumudpt.py`) on a tiny random OpenAI-layout CLIP; the same weights are converted
to an HF `CLIPModel`, the official prompt parameters are copied into the tuner by hand, and both must give the same
`logits_per_image` in fp32.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from peft import PeftModel, get_peft_model

from mudpt_peft import MuDPTConfig, convert_official

from .official_reference import (
    EOT_ID,
    METHODS,
    MUDPT_LINEAR_2B436F3,
    load_into_tuner,
    make_class_tokens,
    make_official_state,
    make_openai_clip,
    method_n_ctx,
    official_logits,
    official_token_ids,
    openai_to_hf,
    tuner_config,
    tuner_token_ids,
    with_frozen_clip,
)

# eos_token_id == 2 takes HF's legacy `argmax(input_ids)` pooling; EOT_ID pools at the first EOT token
EOS_IDS = (EOT_ID, 2)
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}

# (method, depth_or_k, n_ctx, eos_token_id): depth D for coop/vpt/ivlp/maple, K deep prompt sets for mudpt-linear,
# mudpt-linear-v1 (D = K) and mudpt (D = K+1); each method runs with both HF pooling paths (EOT_ID and the legacy 2)
CASES = [
    ("coop", 1, 2, EOT_ID),
    ("coop", 1, 4, 2),
    ("vpt", 1, 3, EOT_ID),
    ("vpt", 3, 2, 2),
    ("vpt", 4, 2, EOT_ID),
    ("ivlp", 1, 2, 2),
    ("ivlp", 3, 2, EOT_ID),
    ("ivlp", 4, 3, 2),
    ("maple", 1, 2, EOT_ID),
    ("maple", 3, 2, 2),
    ("maple", 4, 3, EOT_ID),
    ("mudpt-linear", 0, 2, EOT_ID),  # DEEP_PROMPT_DEPTH=1: (0, n, w) deep prompts, layer 0 coupled
    ("mudpt-linear", 1, 3, 2),
    ("mudpt-linear", 2, 2, EOT_ID),
    ("mudpt-linear", 3, 4, 2),
    ("mudpt-linear-v1", 1, 2, 2),
    ("mudpt-linear-v1", 3, 2, EOT_ID),
    ("mudpt-linear-v1", 4, 3, 2),
    ("mudpt", 1, 2, EOT_ID),
    ("mudpt", 3, 2, 2),
]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The tensors are tiny: intra-op threads only add overhead (and stall badly on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def openai_clip() -> dict[str, torch.Tensor]:
    return make_openai_clip(seed=0)


@pytest.fixture(scope="module")
def pixel_values() -> torch.Tensor:
    return torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def class_tokens() -> list[list[int]]:
    return make_class_tokens((1, 2, 3, 5), seed=2)


def _tuner_logits(model, input_ids: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids, pixel_values=pixel_values).logits_per_image


def _compare(method, depth_or_k, n_ctx, eos_token_id, openai_clip, class_tokens, pixel_values, seed=3):
    state = make_official_state(method, openai_clip, depth_or_k, n_ctx, seed=seed)
    official_ids = official_token_ids(class_tokens, method_n_ctx(method, n_ctx))
    with torch.no_grad():
        expected = official_logits(method, openai_clip, state, official_ids, pixel_values)
    model = get_peft_model(
        openai_to_hf(openai_clip, eos_token_id=eos_token_id), tuner_config(method, depth_or_k, n_ctx)
    )
    load_into_tuner(method, model, state)
    input_ids = tuner_token_ids(official_ids, method_n_ctx(method, n_ctx))
    actual = _tuner_logits(model, input_ids, pixel_values)
    return expected, actual, model, input_ids


@pytest.mark.parametrize("eos_token_id", EOS_IDS)
def test_converted_clip_matches_openai_clip(eos_token_id, openai_clip, class_tokens, pixel_values):
    ids = official_token_ids(class_tokens, 0)
    with torch.no_grad():
        expected = official_logits("clip", openai_clip, {}, ids, pixel_values)
        actual = openai_to_hf(openai_clip, eos_token_id=eos_token_id)(input_ids=ids, pixel_values=pixel_values)
    assert expected.shape == (3, 4)
    assert expected.std() > 0.1  # logits that differ between images and classes
    torch.testing.assert_close(actual.logits_per_image, expected, **TOLERANCE)


@pytest.mark.parametrize(("method", "depth_or_k", "n_ctx", "eos_token_id"), CASES)
def test_tuner_matches_official(method, depth_or_k, n_ctx, eos_token_id, openai_clip, class_tokens, pixel_values):
    expected, actual, _, _ = _compare(method, depth_or_k, n_ctx, eos_token_id, openai_clip, class_tokens, pixel_values)
    assert expected.shape == actual.shape == (3, 4)
    torch.testing.assert_close(actual, expected, **TOLERANCE)

    # the prompts matter: the official logits are not those of CLIP without prompts
    with torch.no_grad():
        plain = official_logits("clip", openai_clip, {}, official_token_ids(class_tokens, 0), pixel_values)
    assert (expected - plain).abs().max() > 1e-2


def test_every_method_is_covered():
    for method in METHODS:
        assert {case[3] for case in CASES if case[0] == method} == set(EOS_IDS), method


def test_disabled_adapter_is_plain_clip(openai_clip, class_tokens, pixel_values):
    _, _, model, _ = _compare("mudpt", 3, 2, EOT_ID, openai_clip, class_tokens, pixel_values)
    ids = official_token_ids(class_tokens, 0)
    with torch.no_grad():
        plain = official_logits("clip", openai_clip, {}, ids, pixel_values)
    with model.disable_adapter():
        torch.testing.assert_close(_tuner_logits(model, ids, pixel_values), plain, **TOLERANCE)


# (method, depth_or_k, key, index into the tensor or None, whether the official forward uses it)
SENSITIVITY = [
    ("coop", 1, "prompt_learner.ctx", None, True),
    ("vpt", 3, "image_encoder.VPT", None, True),
    ("vpt", 3, "image_encoder.transformer.resblocks.2.VPT_shallow", None, True),
    ("ivlp", 3, "text_encoder.transformer.resblocks.2.VPT_shallow", None, True),
    ("ivlp", 3, "image_encoder.transformer.resblocks.2.VPT_shallow", None, True),
    ("maple", 3, "prompt_learner.compound_prompts_text.1", None, True),
    ("maple", 3, "prompt_learner.compound_prompt_projections.1.bias", None, True),
    ("maple", 3, "prompt_learner.proj.weight", None, True),
    # current mudpt.py: every deep set is applied (the last one included), and the layer-0 map is used
    ("mudpt-linear", 3, "mudpt_prompt_learner.deep_prompts", 0, True),
    ("mudpt-linear", 3, "mudpt_prompt_learner.deep_prompts", 2, True),
    ("mudpt-linear", 3, "image_encoder.visual_ctx_deep_prompts", 2, True),
    ("mudpt-linear", 3, "mudpt_prompt_learner.deep_projections.weight", None, True),
    ("mudpt-linear", 3, "image_encoder.visual_ctx_deep_projections.bias", None, True),
    ("mudpt-linear", 3, "mudpt_prompt_learner.embed_projection.weight", None, True),
    ("mudpt-linear", 0, "mudpt_prompt_learner.embed_projection.bias", None, True),
    ("mudpt-linear", 3, "mudpt_prompt_learner.ctx", None, True),
    ("mudpt-linear", 3, "image_encoder.visual_ctx", None, True),
    ("mudpt-linear-v1", 3, "mudpt_prompt_learner.deep_prompts.1", None, True),
    ("mudpt-linear-v1", 3, "image_encoder.visual_ctx_deep_prompts.1", None, True),
    ("mudpt-linear-v1", 3, "mudpt_prompt_learner.deep_projections.1.weight", None, True),
    ("mudpt-linear-v1", 3, "image_encoder.visual_ctx_deep_projections.1.bias", None, True),
    # the early code's off-by-one: the last of the K deep prompt sets (and its projections) is never applied
    ("mudpt-linear-v1", 3, "mudpt_prompt_learner.deep_prompts.2", None, False),
    ("mudpt-linear-v1", 3, "image_encoder.visual_ctx_deep_prompts.2", None, False),
    ("mudpt-linear-v1", 3, "mudpt_prompt_learner.deep_projections.2.weight", None, False),
    ("mudpt-linear-v1", 3, "image_encoder.visual_ctx_deep_projections.2.weight", None, False),
    # ... and its layer-0 map is built but never used
    ("mudpt-linear-v1", 3, "mudpt_prompt_learner.embed_projection.weight", None, False),
    ("mudpt", 3, "uumudpt_prompt_learner.deep_prompts", 2, True),
    ("mudpt", 3, "image_encoder.visual_ctx_deep_prompts", 2, True),
    ("mudpt", 3, "uumudpt_prompt_learner.ctx", None, True),
    ("mudpt", 3, "uumudpt_prompt_learner.self_attn.attn.in_proj_weight", None, True),
    ("mudpt", 3, "image_encoder.visual_ctx_self_attn.mlp.c_proj.weight", None, True),
]


@pytest.mark.parametrize(("method", "depth_or_k", "key", "index", "used"), SENSITIVITY)
def test_official_forward_is_sensitive(method, depth_or_k, key, index, used, openai_clip, class_tokens, pixel_values):
    n_ctx = 2
    state = make_official_state(method, openai_clip, depth_or_k, n_ctx, seed=4)
    ids = official_token_ids(class_tokens, method_n_ctx(method, n_ctx))
    changed = dict(state)
    noise = torch.randn(state[key].shape if index is None else state[key][index].shape) * 0.5
    changed[key] = state[key].clone()
    if index is None:
        changed[key] += noise
    else:
        changed[key][index] += noise
    with torch.no_grad():
        before = official_logits(method, openai_clip, state, ids, pixel_values)
        after = official_logits(method, openai_clip, changed, ids, pixel_values)
    if used:
        assert (before - after).abs().max() > 1e-3
    else:
        torch.testing.assert_close(before, after, rtol=0, atol=0)


@pytest.mark.parametrize("method", METHODS)
def test_frozen_clip_keys_are_ignored(method, openai_clip, class_tokens, pixel_values):
    """A full official state dict (prompts plus the frozen CLIP under `image_encoder.*`/`text_encoder.*`) works too."""
    depth_or_k = 1 if method == "coop" else 3
    state = make_official_state(method, openai_clip, depth_or_k, 2, seed=5)
    full = with_frozen_clip(state, openai_clip)
    assert "image_encoder.transformer.resblocks.0.attn.in_proj_weight" in full
    assert "text_encoder.transformer.resblocks.0.mlp.c_fc.weight" in full
    ids = official_token_ids(class_tokens, method_n_ctx(method, 2))
    with torch.no_grad():
        torch.testing.assert_close(
            official_logits(method, openai_clip, full, ids, pixel_values),
            official_logits(method, openai_clip, state, ids, pixel_values),
            rtol=0,
            atol=0,
        )


def test_mudpt_linear_v1_off_by_one_is_needed(openai_clip, class_tokens, pixel_values):
    """Applying all K early-format deep prompt sets (tuner depth K+1) would not reproduce the early `mudpt.py`."""
    k, n_ctx = 3, 2
    state = make_official_state("mudpt-linear-v1", openai_clip, k, n_ctx, seed=3)
    ids = official_token_ids(class_tokens, n_ctx)
    with torch.no_grad():
        expected = official_logits("mudpt-linear-v1", openai_clip, state, ids, pixel_values)
    model = get_peft_model(
        openai_to_hf(openai_clip), MuDPTConfig.for_method("mudpt-linear-v1", depth=k + 1, n_ctx=n_ctx)
    )
    clip = model.base_model.model
    with torch.no_grad():
        clip.text_model.mudpt_prompts["default"].copy_(
            torch.stack(
                [
                    state["mudpt_prompt_learner.ctx"],
                    *(state[f"mudpt_prompt_learner.deep_prompts.{j}"] for j in range(k)),
                ]
            )
        )
        clip.vision_model.mudpt_prompts["default"].copy_(
            torch.stack(
                [
                    state["image_encoder.visual_ctx"],
                    *(state[f"image_encoder.visual_ctx_deep_prompts.{j}"] for j in range(k)),
                ]
            )
        )
        for j in range(k):
            for linear, prefix in (
                (
                    clip.text_model.mudpt_fusion["default"].projections[j],
                    f"image_encoder.visual_ctx_deep_projections.{j}",
                ),
                (
                    clip.vision_model.mudpt_fusion["default"].projections[j],
                    f"mudpt_prompt_learner.deep_projections.{j}",
                ),
            ):
                linear.weight.copy_(state[f"{prefix}.weight"])
                linear.bias.copy_(state[f"{prefix}.bias"])
    actual = _tuner_logits(model, tuner_token_ids(ids, n_ctx), pixel_values)
    assert (actual - expected).abs().max() > 1e-2


@pytest.mark.parametrize("variant", ["early-semantics", "no-last-set"])
def test_mudpt_linear_current_needs_its_own_semantics(variant, openai_clip, class_tokens, pixel_values):
    """The current `mudpt.py` is reproduced neither by the early semantics (per-layer maps, layer 0 uncoupled) on
    the same tensors, nor by dropping its last deep set as the early code did."""
    k, n_ctx = 3, 2
    state = make_official_state("mudpt-linear", openai_clip, k, n_ctx, seed=3)
    ids = official_token_ids(class_tokens, n_ctx)
    with torch.no_grad():
        expected = official_logits("mudpt-linear", openai_clip, state, ids, pixel_values)
    if variant == "early-semantics":  # the current tensors, laid out as an early checkpoint with K+1 sets
        early = {key: state[key] for key in ("mudpt_prompt_learner.ctx", "image_encoder.visual_ctx")}
        for j in range(k + 1):  # the extra last set is never applied by the early code
            for name in ("mudpt_prompt_learner.deep_prompts", "image_encoder.visual_ctx_deep_prompts"):
                early[f"{name}.{j}"] = state[name][min(j, k - 1)]
            for name in ("mudpt_prompt_learner.deep_projections", "image_encoder.visual_ctx_deep_projections"):
                for suffix in ("weight", "bias"):
                    early[f"{name}.{j}.{suffix}"] = state[f"{name}.{suffix}"]
        with torch.no_grad():
            other = official_logits("mudpt-linear-v1", openai_clip, early, ids, pixel_values)
    else:
        shorter = dict(state)
        for name in ("mudpt_prompt_learner.deep_prompts", "image_encoder.visual_ctx_deep_prompts"):
            shorter[name] = state[name][: k - 1]
        with torch.no_grad():
            other = official_logits("mudpt-linear", openai_clip, shorter, ids, pixel_values)
    assert (other - expected).abs().max() > 1e-2


def test_mudpt_linear_converts_either_revision(openai_clip, class_tokens, pixel_values):
    """`method="mudpt-linear"` tells the two formats apart: the early one gives the `mudpt-linear-v1` preset;
    `method="mudpt-linear-v1"` refuses a current-format checkpoint."""
    k, n_ctx = 3, 2
    official_ids = official_token_ids(class_tokens, n_ctx)
    input_ids = tuner_token_ids(official_ids, n_ctx)
    for method, shared, depth in (("mudpt-linear", True, k + 1), ("mudpt-linear-v1", False, k)):
        state = make_official_state(method, openai_clip, k, n_ctx, seed=6)
        with torch.no_grad():
            expected = official_logits(method, openai_clip, state, official_ids, pixel_values)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the early format's unused last deep set
            converted = convert_official(
                with_frozen_clip(state, openai_clip), "mudpt-linear", openai_to_hf(openai_clip)
            )
        config = converted.peft_config["default"]
        assert (config.fusion, config.depth, config.n_ctx) == ("shared_linear" if shared else "linear", depth, n_ctx)
        torch.testing.assert_close(_tuner_logits(converted, input_ids, pixel_values), expected, **TOLERANCE)
    current = make_official_state("mudpt-linear", openai_clip, k, n_ctx, seed=6)
    with pytest.raises(ValueError, match="current official `trainers/mudpt.py`.*pass method='mudpt-linear'"):
        convert_official(current, "mudpt-linear-v1", openai_to_hf(openai_clip))


@pytest.mark.parametrize(("k", "n_ctx", "eos_token_id"), [(1, 2, EOT_ID), (2, 3, 2), (3, 2, EOT_ID)])
def test_mudpt_linear_early_format_as_2b436f3_ran_it(k, n_ctx, eos_token_id, openai_clip, class_tokens, pixel_values):
    """The early format has the same keys before and at 2b436f3 ("3. finish umudpt"), whose blocks apply all K deep
    sets: the tuner (depth K+1) and `convert_official(..., apply_last_deep_set=True)` reproduce that forward, the
    default conversion (the off-by-one of the commits before) does not."""
    method = MUDPT_LINEAR_2B436F3
    expected, actual, _, _ = _compare(method, k, n_ctx, eos_token_id, openai_clip, class_tokens, pixel_values)
    torch.testing.assert_close(actual, expected, **TOLERANCE)
    state = with_frozen_clip(make_official_state(method, openai_clip, k, n_ctx, seed=3), openai_clip)
    input_ids = tuner_token_ids(official_token_ids(class_tokens, n_ctx), n_ctx)
    converted = convert_official(
        state, "mudpt-linear", openai_to_hf(openai_clip, eos_token_id=eos_token_id), apply_last_deep_set=True
    )
    config = converted.peft_config["default"]
    assert (config.fusion, config.depth) == ("linear", k + 1)
    torch.testing.assert_close(_tuner_logits(converted, input_ids, pixel_values), expected, **TOLERANCE)
    with pytest.warns(UserWarning, match="apply_last_deep_set=True"):
        default = convert_official(state, "mudpt-linear", openai_to_hf(openai_clip, eos_token_id=eos_token_id))
    assert (_tuner_logits(default, input_ids, pixel_values) - expected).abs().max() > 1e-2


@pytest.mark.parametrize(("method", "depth_or_k", "n_ctx", "eos_token_id"), CASES)
def test_converted_official_checkpoint_matches_official(
    method, depth_or_k, n_ctx, eos_token_id, openai_clip, class_tokens, pixel_values, tmp_path
):
    """End to end: an official-format checkpoint (with the frozen CLIP inside, as Dassl saves it), converted by
    `convert_official`, saved and reloaded as a peft adapter, gives the official logits."""
    state = make_official_state(method, openai_clip, depth_or_k, n_ctx, seed=5)
    official_ids = official_token_ids(class_tokens, method_n_ctx(method, n_ctx))
    with torch.no_grad():
        expected = official_logits(method, openai_clip, state, official_ids, pixel_values)
    checkpoint = tmp_path / "model.pth.tar-5"
    torch.save({"state_dict": with_frozen_clip(state, openai_clip), "epoch": 5}, checkpoint)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mudpt-linear-v1 warns about its unused last deep set
        converted = convert_official(checkpoint, method, openai_to_hf(openai_clip, eos_token_id=eos_token_id))
    converted.save_pretrained(tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(openai_to_hf(openai_clip, eos_token_id=eos_token_id), tmp_path / "adapter")
    input_ids = tuner_token_ids(official_ids, method_n_ctx(method, n_ctx))
    torch.testing.assert_close(_tuner_logits(loaded, input_ids, pixel_values), expected, rtol=1e-5, atol=1e-5)
