"""Every size-like `MuDPTConfig` field is bounded, so that an `adapter_config.json` from anyone is refused before
anything large is built, with a short message that names the field, the value and the allowed range.

Each bound: the boundary value is accepted (built on a tiny model where that is cheap), the next one refused. The
hostile values that used to take minutes and gigabytes (`benchmarks/hostile_configs.py` measures them) are refused
by `MuDPTConfig`, `PeftConfig.from_pretrained` and `PeftModel.from_pretrained`. No timing is asserted (the project's
rule); the message length is.
"""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from peft import PeftConfig, PeftModel, get_peft_model

from mudpt_peft import MuDPTConfig
from mudpt_peft.adapter_files import MAX_CONFIG_FILE_BYTES
from mudpt_peft.config import (
    MAX_CTX_INIT_CHARS,
    MAX_DEPTH,
    MAX_HEADS,
    MAX_INJECTION_BLOCK_WEIGHTS,
    MAX_INJECTION_LAYERS,
    MAX_MLP_RATIO,
    MAX_N_CTX,
    REPR_LIMIT,
    short_repr,
)
from mudpt_peft.layer import MuDPTLayer

from .helpers import logits, make_clip, make_inputs

# tiny models: more threads only contend for the shared cores
pytestmark = pytest.mark.usefixtures("one_thread")

#: The longest message a refusal may have (the loading paths add the config file's path to it).
MAX_MESSAGE = 400


def refusal(kwargs: dict) -> str:
    with pytest.raises(ValueError) as caught:
        MuDPTConfig(**kwargs)
    return str(caught.value)


def test_the_bounds():
    assert (MAX_DEPTH, MAX_N_CTX, MAX_INJECTION_LAYERS, MAX_MLP_RATIO) == (1024, 1024, 24, 16.0)
    assert (MAX_INJECTION_BLOCK_WEIGHTS, MAX_HEADS, MAX_CTX_INIT_CHARS, REPR_LIMIT) == (288, 256, 16384, 200)


# ---------------------------------------------------------------------------------------------------------------------
# each bound in the config: the boundary accepted, one more refused with the field, the value and the range


@pytest.mark.parametrize(
    ("accepted", "refused", "message"),
    [
        ({"depth": 1024}, {"depth": 1025}, "`depth` must be an integer in 1..1024, got 1025."),
        ({"text_depth": 1024}, {"text_depth": 1025}, "`text_depth` must be an integer in 1..1024 or None, got 1025."),
        ({"vision_depth": 1024}, {"vision_depth": 0}, "`vision_depth` must be an integer in 1..1024 or None, got 0."),
        ({"n_ctx": 1024}, {"n_ctx": 1025}, "`n_ctx` must be an integer in 1..1024, got 1025."),
        (
            {"fusion": "none", "vision_n_ctx": 1024},
            {"fusion": "none", "vision_n_ctx": 1025},
            "`vision_n_ctx` must be an integer in 1..1024 or None, got 1025.",
        ),
        (
            {"injection_layers": 24},
            {"injection_layers": 25, "injection_mlp_ratio": 1.0},
            "`injection_layers` must be an integer in 0..24, got 25.",
        ),
        ({"injection_layers": 0}, {"injection_layers": -1}, "`injection_layers` must be an integer in 0..24, got -1."),
        (
            {"injection_layers": 8, "injection_mlp_ratio": 16.0},
            {"injection_layers": 1, "injection_mlp_ratio": 16.5},
            "`injection_mlp_ratio` must be a finite number in (0, 16], got 16.5.",
        ),
        (
            {"injection_heads": 256},
            {"injection_heads": 257},
            "`injection_heads` must be an integer in 1..256 or None, got 257.",
        ),
        (
            {"fusion": "cross_attention", "cross_attention_heads": 256},
            {"fusion": "cross_attention", "cross_attention_heads": 257},
            "`cross_attention_heads` must be an integer in 1..256 or None, got 257.",
        ),
        (
            {"n_ctx": 1024, "ctx_init_token_ids": [1] * 1024},
            {"n_ctx": 1024, "ctx_init_token_ids": [1] * 1025},
            "`ctx_init_token_ids` must be a list of 1..1024 token ids (one per text prompt token), got [1, 1, 1, 1, "
            "1, 1, 1, 1, ...] (1025 items) (a list).",
        ),
        (
            {"ctx_init": "a" * 16384},
            {"ctx_init": "a" * 16385},
            "`ctx_init` must be a non-empty string such as 'a photo of a' of at most 16384 characters, got 'aaa",
        ),
    ],
)
def test_the_boundary_is_accepted_and_one_more_refused(accepted, refused, message):
    MuDPTConfig(**accepted)
    text = refusal(refused)
    assert text.startswith(message), text
    assert len(text) <= MAX_MESSAGE


@pytest.mark.parametrize(
    ("layers", "ratio", "accepted"),
    [(24, 4.0, True), (8, 16.0, True), (1, 16.0, True), (24, 4.5, False), (9, 16.0, False), (12, 12.0, False)],
)
def test_the_injection_blocks_have_a_weight_budget(layers, ratio, accepted):
    kwargs = {"injection_layers": layers, "injection_mlp_ratio": ratio}
    if accepted:
        MuDPTConfig(**kwargs)
        return
    text = refusal(kwargs)
    assert text.startswith(f"`injection_layers`={layers} with `injection_mlp_ratio`={ratio:g} makes Injection Model")
    assert "`injection_layers` x (4 + 2 x `injection_mlp_ratio`) <= 288" in text


# ---------------------------------------------------------------------------------------------------------------------
# types: no bool for a number, no float or string for an int, finite floats


INT_FIELDS = ["depth", "n_ctx", "text_depth", "vision_n_ctx", "injection_layers", "injection_heads"]
FLOAT_FIELDS = [
    "injection_mlp_ratio",
    "injection_dropout",
    "cross_attention_dropout",
    "prompt_init_std",
    "injection_init_std",
]


@pytest.mark.parametrize("field", INT_FIELDS)
@pytest.mark.parametrize(
    ("value", "shown"),
    [(True, "True (a bool)"), ("2", "'2' (a str)"), (2.5, "2.5"), (2.0, "2.0"), ([2], "[2] (a list)"), (None, "None")],
)
def test_ints_are_ints(field, value, shown):
    if value is None and field in ("text_depth", "vision_n_ctx", "injection_heads"):
        return  # optional
    text = refusal({field: value})
    pattern = rf"`{field}` must be an integer in \d\.\.\d+( or None)?, got {re.escape(shown)}( \(a NoneType\))?\."
    assert re.fullmatch(pattern, text), text


@pytest.mark.parametrize("field", FLOAT_FIELDS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, True, "0.1", [0.1], None])
def test_floats_are_finite_numbers(field, value):
    text = refusal({field: value})
    assert text.startswith(f"`{field}` must be ") and f"got {short_repr(value)}" in text, text


@pytest.mark.parametrize(
    ("field", "value"), [("injection_mlp_ratio", 2), ("injection_dropout", 0), ("prompt_init_std", 1)]
)
def test_an_int_is_a_fine_float(field, value):
    assert getattr(MuDPTConfig(**{field: value}), field) == value


@pytest.mark.parametrize("ids", [[1, True], [1, -1], [1, 2.0], [1, "2"], [1, None]])
def test_token_ids_are_non_negative_ints(ids):
    text = refusal({"n_ctx": 2, "ctx_init_token_ids": ids})
    assert text.startswith("`ctx_init_token_ids` must be a list of token ids (integers >= 0)"), text


def test_short_repr_is_short_and_cheap_for_huge_values():
    assert short_repr(1025) == "1025" and short_repr("a photo") == "'a photo'"
    assert short_repr(list(range(10**6))) == "[0, 1, 2, 3, 4, 5, 6, 7, ...] (1000000 items)"
    assert short_repr(10**5000) == "<an integer of about 5001 digits>"  # repr() refuses over 4300 digits
    for value in ("x" * 10**6, [[0] * 10**5] * 10**5, {str(i): i for i in range(1000)}, 1e300):
        assert len(short_repr(value)) <= REPR_LIMIT


# ---------------------------------------------------------------------------------------------------------------------
# the bounds against the model, at the boundary, on tiny models


def unwrapped(model) -> bool:
    return not any(isinstance(m, MuDPTLayer) for m in model.modules())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fusion": "none", "depth": 4, "n_ctx": 2, "vision_n_ctx": 1024},  # 1024 visual prompts after 4 patches + CLS
        {"depth": 2, "injection_layers": 24},
        {"depth": 2, "injection_layers": 8, "injection_mlp_ratio": 16.0},
        {"depth": 4, "n_ctx": 14},  # BOS, 14 prompts and one token fill the 16 positions
        {"depth": 2, "injection_heads": 16},  # divides both widths, 32 and 48
        {"depth": 2, "n_ctx": 2, "ctx_init_token_ids": [0, 98]},  # the vocabulary's first and last ids
    ],
)
def test_boundary_configs_build_and_run(kwargs):
    model = get_peft_model(make_clip(), MuDPTConfig(**kwargs))
    out = logits(model, make_inputs(batch=1, length=2))  # BOS and EOS: 14 prompts leave room for no more
    assert out.shape == (1, 1) and torch.isfinite(out).all()


TEXT_POSITIONS = "the text tower's 16 positions"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"depth": 4, "vision_depth": 5}, "`vision_depth`=5 is larger than the vision tower's 4 layers; allowed: 1..4"),
        ({"depth": 4, "n_ctx": 15}, f"`n_ctx`=15 leaves no room for text in {TEXT_POSITIONS}; allowed: 1..14"),
        ({"depth": 2, "injection_heads": 32}, "`injection_heads`=32 does not divide the vision width 48"),
        ({"depth": 2, "n_ctx": 2, "ctx_init_token_ids": [0, 99]}, "allowed: 0..98, found 99"),
    ],
)
def test_one_more_is_refused_against_the_model_before_any_weight(kwargs, message):
    clip = make_clip()
    with pytest.raises(ValueError) as caught:
        get_peft_model(clip, MuDPTConfig(**kwargs))
    assert message in str(caught.value) and len(str(caught.value)) <= MAX_MESSAGE
    assert unwrapped(clip)


def test_ctx_init_sets_n_ctx_to_at_most_1024_tokens(tokenizer_dir):
    clip = make_clip(max_positions=1026)  # room for BOS, 1024 prompts and one token
    config = MuDPTConfig(depth=1, ctx_init="a " * 1024, tokenizer_name_or_path=str(tokenizer_dir))
    with pytest.warns(UserWarning, match="`n_ctx` is set to 1024"):
        model = get_peft_model(clip, config)
    assert config.n_ctx == 1024 and model.base_model.model.text_model.mudpt_prompts["default"].shape[1] == 1024

    clip = make_clip(max_positions=1026)
    with pytest.raises(ValueError) as caught:
        get_peft_model(clip, MuDPTConfig(depth=1, ctx_init="a " * 1025, tokenizer_name_or_path=str(tokenizer_dir)))
    text = str(caught.value)
    assert "has 1025 tokens with the tokenizer from" in text and "allowed: 1..1024 tokens" in text
    assert len(text) <= MAX_MESSAGE + len(str(tokenizer_dir)) and unwrapped(clip)


# ---------------------------------------------------------------------------------------------------------------------
# hostile adapter_config.json files: refused by every way in, quickly, with a short message

#: Field values that used to exhaust the machine before they were refused (or produce a 491,600-character message).
HOSTILE = {
    "40000 injection layers": {"injection_layers": 40000},
    "300 injection layers": {"injection_layers": 300},
    "2e7 visual prompts": {"fusion": "cross_attention", "vision_n_ctx": 20_000_000},
    "2e7 visual prompts (float)": {"fusion": "cross_attention", "vision_n_ctx": 2e7},
    "2e7 text prompts, vision only": {"text_prompts": False, "fusion": "none", "n_ctx": 20_000_000},
    "MLP ratio 2e5": {"injection_mlp_ratio": 2e5},
    "MLP ratio 1e7": {"injection_mlp_ratio": 1e7},
    "300 ctx_init_token_ids": {"ctx_init_token_ids": list(range(300))},
    "10**6 ctx_init_token_ids": {"ctx_init_token_ids": list(range(10**6))},
    "NaN MLP ratio": {"injection_mlp_ratio": math.nan},
    "infinite init std": {"prompt_init_std": math.inf},
    "NaN dropout": {"injection_dropout": math.nan},
    "a 10**6-character fusion": {"fusion": "x" * 10**6},
    "a 4000-digit depth": {"depth": int("9" * 4000)},
}


@pytest.fixture(scope="module")
def tiny_adapter(tmp_path_factory):
    """A saved tiny adapter (depth 2): `(folder, its adapter_config.json as a dict)`."""
    folder = tmp_path_factory.mktemp("tiny-adapter")
    get_peft_model(make_clip(), MuDPTConfig(depth=2)).save_pretrained(folder)
    return folder, json.loads((folder / "adapter_config.json").read_text())


def write_adapter(folder, saved: dict, fields: dict, weights_from=None):
    """`adapter_config.json` of `saved` with `fields`, written by hand (NaN as JSON's `NaN`), and the weights."""
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({**saved, **fields}))
    if weights_from is not None:
        (folder / "adapter_model.safetensors").write_bytes((weights_from / "adapter_model.safetensors").read_bytes())
    return folder


@pytest.mark.parametrize("fields", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_values_are_refused_by_the_config_with_a_short_message(fields):
    text = refusal(fields)
    assert len(text) <= MAX_MESSAGE, len(text)
    assert any(f"`{name}`" in text for name in fields), text


@pytest.mark.parametrize("with_weights", [True, False], ids=["with weights", "config only"])
@pytest.mark.parametrize("fields", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_adapter_files_are_refused_by_every_loader(fields, with_weights, tiny_adapter, tmp_path):
    source, saved = tiny_adapter
    if not with_weights:  # written by hand: no fingerprint of weights to look for
        saved = {**saved, "auto_mapping": None}
    folder = write_adapter(tmp_path / "hostile", saved, fields, weights_from=source if with_weights else None)
    longest = MAX_MESSAGE + 2 * len(str(folder))  # the loaders name the file
    with pytest.raises(ValueError) as caught:
        PeftConfig.from_pretrained(str(folder))
    assert len(str(caught.value)) <= longest and any(f"`{name}`" in str(caught.value) for name in fields)

    clip = make_clip()
    with pytest.raises(ValueError) as caught:
        PeftModel.from_pretrained(clip, str(folder))
    text = str(caught.value)
    assert len(text) <= longest, len(text)
    if (folder / "adapter_config.json").stat().st_size > MAX_CONFIG_FILE_BYTES:  # 10**6 token ids: 6.9 MB
        assert "is larger than 1 MB, which no MuDPT adapter writes" in text, text  # refused before it is parsed
    else:
        assert "is not a valid MuDPT config: " in text and any(f"`{name}`" in text for name in fields), text
    assert unwrapped(clip)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"n_ctx": 300, "ctx_init_token_ids": list(range(300))}, "outside the text vocabulary of 99 tokens"),
        ({"n_ctx": 300, "ctx_init_token_ids": [1] * 300}, "`n_ctx`=300 leaves no room for text"),
        ({"depth": 1024}, "`depth`=1024 is larger than the text tower's 4 layers"),
        ({"injection_heads": 256}, "`injection_heads`=256 does not divide the text width 32"),
    ],
)
def test_hostile_values_within_the_config_bounds_are_refused_against_the_model(fields, message, tiny_adapter, tmp_path):
    source, saved = tiny_adapter
    folder = write_adapter(tmp_path / "hostile", saved, fields, weights_from=source)
    assert PeftConfig.from_pretrained(str(folder)).n_ctx == fields.get("n_ctx", 2)  # a valid config by itself
    clip = make_clip()
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        PeftModel.from_pretrained(clip, str(folder))
    assert len(str(caught.value)) <= MAX_MESSAGE and unwrapped(clip)


def test_a_valid_config_that_does_not_fit_its_weights_gets_a_short_list(tiny_adapter, tmp_path):
    """24 injection blocks next to the weights of 1: the missing tensors are listed by their first few names."""
    source, saved = tiny_adapter
    saved = {**saved, "auto_mapping": None}  # no fingerprint: the tensors themselves are compared
    folder = write_adapter(tmp_path / "deeper", saved, {"injection_layers": 24}, weights_from=source)
    clip = make_clip()
    with pytest.raises(ValueError, match=r"missing tensors: \[.*, \.\.\. and \d+ more\]") as caught:
        PeftModel.from_pretrained(clip, str(folder))
    assert len(str(caught.value)) <= 1500, len(str(caught.value))
    assert unwrapped(clip)


def test_the_tiny_adapter_itself_loads(tiny_adapter):
    """The hostile files above differ from a loadable adapter only in the hostile fields."""
    source, _ = tiny_adapter
    loaded = PeftModel.from_pretrained(make_clip(), str(source))
    assert torch.isfinite(logits(loaded, make_inputs())).all()
