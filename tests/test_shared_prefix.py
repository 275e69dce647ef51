"""The shared text prefix (`MuDPTTextTower.shared_prefix`): BOS and the context tokens encoded once for all rows of a
causal text tower, exact to the unshared forward and backward."""

from __future__ import annotations

import contextlib

import pytest
import torch
from peft import get_peft_model

from mudpt_peft import MuDPTConfig, PromptClassifier
from mudpt_peft import shared_prefix as shared_prefix_module
from mudpt_peft.families import CLIP_SPEC, SIGLIP_SPEC, FamilySpec, get_family_spec
from mudpt_peft.layer import MuDPTTextTower

from .helpers import COLOR_CLASSES, make_clip, make_inputs, randomize_adapter

pytestmark = pytest.mark.usefixtures("one_thread")

# fp32: the shared forward sums the attention over the prefix and the row's own tokens in another order than one
# attention over the whole row, and its GEMMs run on (1, prefix) and (rows, own) instead of (rows, tokens): each
# output differs by a few ulps per layer; over 4 layers of width 32 (activations of order 1..10) that is < 1e-5.
FP32 = {"rtol": 1e-5, "atol": 2e-5}
# fp64: the same reorderings at 2**-53: 1e-12 leaves four orders of magnitude of margin and still fails any real error
FP64 = {"rtol": 1e-12, "atol": 1e-12}
# fp64 with transformers' "eager" attention: it takes the softmax in float32 whatever the dtype, so the outputs and
# the gradients that flow back through it are rounded at float32's 6e-8 once per layer; the float32 softmax kernel's
# reduction order depends on the row length and the CPU (bit-equal with AVX-512 kernels, up to 1.9e-7 absolute and
# 4.3e-5 relative on small entries of the outputs with AVX2 ones): the fp32 tolerance
EAGER_FP64 = FP32
EAGER_FP64_GRADS = FP32


def adapted(method: str = "mudpt", dtype: torch.dtype = torch.float32, attn: str = "sdpa", **overrides):
    if method != "coop" and method != "cocoop":
        overrides = {"depth": 3, **overrides}
    config = MuDPTConfig.for_method(method, **overrides)
    model = get_peft_model(make_clip(attn_implementation=attn), config)
    randomize_adapter(model, seed=3)
    return model.to(dtype)


def text_tower(model) -> MuDPTTextTower:
    return next(m for m in model.modules() if isinstance(m, MuDPTTextTower))


def text_inputs(batch: int = 5, length: int = 7) -> dict[str, torch.Tensor]:
    inputs = make_inputs(batch=batch, length=length)
    return {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}


@contextlib.contextmanager
def counting_prefixes():
    """Count the calls of `encode_prefix` (how many times a prefix was encoded once for all rows)."""
    calls, original = [], shared_prefix_module.encode_prefix

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    shared_prefix_module.encode_prefix = counted
    try:
        yield calls
    finally:
        shared_prefix_module.encode_prefix = original


def forward_backward(model, inputs, share: bool, chunk: int | None = None):
    """Text features and the gradients of the trainable parameters, with or without the shared prefix."""
    model.zero_grad()
    tower = text_tower(model)
    with tower.shared_prefix(share), tower.chunked(chunk):
        output = model.base_model.model.text_model(**inputs)
    weights = torch.linspace(-1, 1, output.last_hidden_state.numel(), dtype=output.last_hidden_state.dtype)
    loss = (output.last_hidden_state.flatten() * weights).sum() + output.pooler_output.square().sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return output, grads


def assert_same(model, inputs, tolerance, chunk: int | None = None, grad_tolerance: dict | None = None):
    with counting_prefixes() as calls:
        shared, shared_grads = forward_backward(model, inputs, share=True, chunk=chunk)
    assert len(calls) == 1  # the prefix was encoded once, for every row (and every chunk)
    plain, plain_grads = forward_backward(model, inputs, share=False)
    torch.testing.assert_close(shared.last_hidden_state, plain.last_hidden_state, **tolerance)
    torch.testing.assert_close(shared.pooler_output, plain.pooler_output, **tolerance)
    assert shared_grads.keys() == plain_grads.keys() and plain_grads
    for name in plain_grads:
        torch.testing.assert_close(shared_grads[name], plain_grads[name], **(grad_tolerance or tolerance))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize(
    ("method", "overrides"),
    [("coop", {"n_ctx": 4}), ("mudpt", {}), ("mudpt", {"depth": 4, "n_ctx": 3}), ("maple", {})],
)
def test_exact_in_fp64(method, overrides, attn):
    outputs, grads = (EAGER_FP64, EAGER_FP64_GRADS) if attn == "eager" else (FP64, FP64)
    assert_same(adapted(method, torch.float64, attn, **overrides), text_inputs(), outputs, grad_tolerance=grads)


@pytest.mark.parametrize(("method", "overrides"), [("coop", {"n_ctx": 4}), ("mudpt", {})])
def test_exact_in_fp32(method, overrides):
    assert_same(adapted(method, **overrides), text_inputs(), FP32)


def test_composes_with_chunked_encoding():
    model = adapted("mudpt", torch.float64)
    assert_same(model, text_inputs(batch=7), FP64, chunk=3)
    assert_same(model, text_inputs(batch=7), FP64, chunk=7)  # one chunk: no checkpoint


def test_pooling_picks_each_rows_eos_and_honours_padding():
    model = adapted("mudpt", torch.float64)
    inputs = text_inputs()
    assert inputs["attention_mask"].sum(-1).unique().numel() > 1  # rows of several lengths, padded
    with torch.no_grad(), text_tower(model).shared_prefix():
        shared = model.base_model.model.text_model(**inputs)
    with torch.no_grad():
        plain = model.base_model.model.text_model(**inputs)
    torch.testing.assert_close(shared.pooler_output, plain.pooler_output, **FP64)
    # changing a padded token changes nothing (the mask is honoured); EOS_ID pads the rows
    padded = inputs["attention_mask"] == 0
    changed = inputs["input_ids"].masked_fill(padded, 3)
    with torch.no_grad(), text_tower(model).shared_prefix():
        again = model.base_model.model.text_model(input_ids=changed, attention_mask=inputs["attention_mask"])
    torch.testing.assert_close(again.pooler_output, plain.pooler_output, **FP64)


def test_off_by_default_and_for_unshareable_inputs():
    model = adapted("mudpt", torch.float64)
    tower = text_tower(model)
    inputs = text_inputs()
    with counting_prefixes() as calls, torch.no_grad():
        model.base_model.model.text_model(**inputs)  # off outside `shared_prefix`
        with tower.shared_prefix():
            model.base_model.model.text_model(**inputs, output_hidden_states=True)
            model.base_model.model.text_model(**{k: v[:1] for k, v in inputs.items()})  # one row: nothing to share
            model.base_model.model.text_model(input_ids=inputs["input_ids"], position_ids=torch.arange(7)[None])
            model.base_model.model.text_model(**inputs, return_dict=False)
            masked = inputs["attention_mask"].clone()
            masked[0, 0] = 0  # padding inside the prefix (the prompts, inserted after BOS, are attended)
            model.base_model.model.text_model(input_ids=inputs["input_ids"], attention_mask=masked)
            other_bos = inputs["input_ids"].clone()
            other_bos[0, 0] = 5  # rows that do not share their leading token
            model.base_model.model.text_model(input_ids=other_bos, attention_mask=inputs["attention_mask"])
            with tower.shared_prefix(False):
                model.base_model.model.text_model(**inputs)
    assert calls == []
    with pytest.raises(ValueError, match="must be a bool"):
        with tower.shared_prefix("yes"):
            pass


def test_declared_per_family():
    assert CLIP_SPEC.text_causal and not SIGLIP_SPEC.text_causal
    assert not FamilySpec(name="x", model_classes=(torch.nn.Module,)).text_causal
    model = adapted("mudpt")
    assert get_family_spec(model.base_model.model).text_causal


def test_bidirectional_tower_is_never_shared():
    model = adapted("mudpt", torch.float64)
    tower = text_tower(model)
    tower.spec = SIGLIP_SPEC.__class__(**{**vars(CLIP_SPEC), "text_causal": False})
    with counting_prefixes() as calls, torch.no_grad(), tower.shared_prefix():
        model.base_model.model.text_model(**text_inputs())
    assert calls == []


def test_cocoop_with_one_shift_per_row_is_not_shared():
    model = adapted("cocoop", torch.float64)
    tower = text_tower(model)
    inputs = text_inputs()
    shift = torch.randn(5, 32, dtype=torch.float64)
    with counting_prefixes() as calls, torch.no_grad(), tower.conditioned(shift), tower.shared_prefix():
        shared = model.base_model.model.text_model(**inputs)
    with torch.no_grad(), tower.conditioned(shift):
        plain = model.base_model.model.text_model(**inputs)
    assert calls == [] and torch.equal(shared.pooler_output, plain.pooler_output)


@pytest.mark.parametrize("image_index", [[0, 0, 1, 1, 1], [2, 0, 2, 1, 0], [1, 1, 1, 1, 1]])
def test_cocoop_shares_one_prefix_per_image(image_index):
    model = adapted("cocoop", torch.float64)
    tower = text_tower(model)
    inputs = text_inputs()
    shift = torch.randn(3, 32, dtype=torch.float64, requires_grad=True)
    image_index = torch.tensor(image_index)
    results = {}
    for share in (False, True):
        with counting_prefixes() as calls, tower.conditioned(shift, image_index), tower.shared_prefix(share):
            output = model.base_model.model.text_model(**inputs)
        assert len(calls) == share
        weights = torch.linspace(-1, 1, output.pooler_output.numel(), dtype=torch.float64)
        (output.pooler_output.flatten() @ weights).backward()
        trainable = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[share] = output, shift.grad.clone(), trainable
        model.zero_grad()
        shift.grad = None
    (plain, plain_shift, plain_grads), (shared, shared_shift, shared_grads) = results[False], results[True]
    torch.testing.assert_close(shared.last_hidden_state, plain.last_hidden_state, **FP64)
    torch.testing.assert_close(shared.pooler_output, plain.pooler_output, **FP64)
    torch.testing.assert_close(shared_shift, plain_shift, **FP64)
    assert shared_grads.keys() == plain_grads.keys() and plain_grads
    for name in plain_grads:
        torch.testing.assert_close(shared_grads[name], plain_grads[name], **FP64)


def test_cocoop_image_index_is_checked():
    model = adapted("cocoop", torch.float64)
    tower = text_tower(model)
    shift = torch.randn(2, 32, dtype=torch.float64)
    for bad in (torch.tensor([0, 1, 2, 0, 1]), torch.tensor([0, 1]), torch.tensor([0.0, 1, 0, 1, 0])):
        with pytest.raises(ValueError, match="a shift per image"), tower.conditioned(shift, bad):
            model.base_model.model.text_model(**text_inputs())


@pytest.mark.parametrize("chunk", [4, 7, 100])
def test_cocoop_classifier_shared_and_checkpointed_equals_one_forward(tokenizer, chunk):
    """CoCoOp's training step: (image, class) rows in chunks that cross images, every chunk but the last recomputed
    in the backward pass, the prefix once per image and chunk: the loss and every gradient of one unshared forward."""
    model = adapted("cocoop", torch.float64)
    pixels = make_inputs(batch=3)["pixel_values"].to(torch.float64)
    labels = torch.tensor([0, 4, 2])
    results = {}
    for share, size in ((False, 100), (True, chunk), (False, chunk)):
        classifier = PromptClassifier(
            model, tokenizer, COLOR_CLASSES, class_chunk_size=size, share_text_prefix=share
        ).train()
        with counting_prefixes() as calls:
            loss = classifier(pixel_values=pixels, labels=labels).loss
            loss.backward()
        chunks = -(-len(COLOR_CLASSES) * 3 // size)
        # each chunk's prefixes are encoded in its forward and again in its recomputation, the last chunk's once
        assert len(calls) == (2 * chunks - 1 if share else 0)
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[share, size] = loss.detach(), grads
        model.zero_grad()
    reference_loss, reference = results[False, 100]
    assert reference
    for key in ((True, chunk), (False, chunk)):
        loss, grads = results[key]
        torch.testing.assert_close(loss, reference_loss, **FP64)
        assert grads.keys() == reference.keys()
        for name in reference:
            torch.testing.assert_close(grads[name], reference[name], **FP64)


def test_prompt_classifier_option(tokenizer):
    model = adapted("coop", n_ctx=4)
    with pytest.raises(ValueError, match="share_text_prefix"):
        PromptClassifier(model, tokenizer, COLOR_CLASSES, share_text_prefix=1)
    plain = PromptClassifier(model, tokenizer, COLOR_CLASSES, template="{}.", share_text_prefix=False)
    shared = PromptClassifier(model, tokenizer, COLOR_CLASSES, template="{}.")  # shared by default
    assert not plain.share_text_prefix and shared.share_text_prefix
    with counting_prefixes() as calls:
        expected = plain.train().encode_classes()
        assert calls == []
        got = shared.train().encode_classes()
        assert len(calls) == 1
        with torch.no_grad():
            evaluated = shared.eval().encode_classes()
        assert len(calls) == 2
    torch.testing.assert_close(got, expected, **FP32)
    torch.testing.assert_close(evaluated, expected, **FP32)
    # the trainer's training forward runs inside `chunked_class_encoding`, which shares the prefix too
    with counting_prefixes() as calls, shared.chunked_class_encoding():
        model.get_text_features(input_ids=shared.class_input_ids, attention_mask=shared.class_attention_mask)
    assert len(calls) == 1
    with counting_prefixes() as calls, plain.chunked_class_encoding():
        model.get_text_features(input_ids=plain.class_input_ids, attention_mask=plain.class_attention_mask)
    assert calls == []


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_template_words_before_the_class_name_join_the_prefix(attn):
    model = adapted("mudpt", torch.float64, attn)
    inputs = text_inputs()
    inputs["input_ids"][:, 1:4] = torch.tensor([11, 12, 13])  # "a photo of" in every row, then each row's own words
    tower = text_tower(model)
    widened = tower.spec.widen_text_inputs(tower.base_layer, 2, dict(inputs))
    length = shared_prefix_module.shared_prefix_length(tower.base_layer, tower.spec, widened, 2, 1, False)
    assert length == 1 + 2 + 3
    outputs, grads = (EAGER_FP64, EAGER_FP64_GRADS) if attn == "eager" else (FP64, FP64)
    assert_same(model, inputs, outputs, grad_tolerance=grads)
    # every row the same: the prefix stops before the last column, each row keeps a token of its own
    same = {name: value[:1].expand(3, -1).clone() for name, value in inputs.items()}
    widened = tower.spec.widen_text_inputs(tower.base_layer, 2, dict(same))
    length = shared_prefix_module.shared_prefix_length(tower.base_layer, tower.spec, widened, 2, 1, False)
    assert length == widened["input_ids"].shape[1] - 1
    assert_same(model, same, outputs, grad_tolerance=grads)


def test_a_forward_hook_on_a_bypassed_module_runs_the_towers_own_forward():
    """The shared encoding calls the layers' submodules, not the layers: a hook there (a probe, accelerate's device
    placement) must see its calls, so nothing is shared and the hook fires."""
    model = adapted("mudpt", torch.float64)
    tower = text_tower(model)
    inputs = text_inputs()
    with torch.no_grad(), tower.shared_prefix():
        for module in (tower.base_layer.encoder.layers[2], tower.base_layer.encoder.layers[0].self_attn):
            seen = []
            handle = module.register_forward_hook(lambda *args, seen=seen: seen.append(1))
            with counting_prefixes() as calls:
                model.base_model.model.text_model(**inputs)
            handle.remove()
            assert calls == [] and seen == [1]
        with counting_prefixes() as calls:  # no hook left: shared again
            model.base_model.model.text_model(**inputs)
        assert calls == [1]
