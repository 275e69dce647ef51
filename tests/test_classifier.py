"""`PromptClassifier`: zero-shot equivalence, training re-encodes, eval caches, and the cache is dropped when needed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel, get_peft_model

from mudpt_peft import MuDPTConfig, PromptClassifier

from .helpers import CLASSIFIER_CLASSES as CLASSES
from .helpers import CountingTextCalls, clip_for_tokenizer, make_inputs, randomize_adapter


@pytest.fixture
def pixel_values():
    return make_inputs(batch=5)["pixel_values"]


def test_unwrapped_model_is_plain_zero_shot_clip(tokenizer, pixel_values):
    clip = clip_for_tokenizer()
    clf = PromptClassifier(clip, tokenizer, CLASSES, template="a photo of a {}.").eval()
    with torch.no_grad():
        logits = clf(pixel_values=pixel_values).logits
        tokens = tokenizer([f"a photo of a {c}." for c in CLASSES], padding=True, return_tensors="pt")
        text = F.normalize(clip.get_text_features(**tokens).pooler_output, dim=-1)
        image = F.normalize(clip.get_image_features(pixel_values=pixel_values).pooler_output, dim=-1)
        expected = clip.logit_scale.exp() * image @ text.t()
        full = clip(**tokens, pixel_values=pixel_values).logits_per_image
    assert logits.shape == (5, 4)
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(logits, full)


def test_class_prompts_are_padded_to_the_longest(tokenizer):
    clf = PromptClassifier(clip_for_tokenizer(), tokenizer, ["a", "photo"], template="{}")
    assert clf.class_input_ids.shape == (2, 3)  # BOS, word tokens, EOS: never 77
    assert clf.class_attention_mask.tolist() == [[1, 1, 1], [1, 1, 1]]
    clf.class_names = ["a", "of a photo"]
    assert clf.class_input_ids.shape == (2, 5) and clf.class_attention_mask[0].tolist() == [1, 1, 1, 0, 0]


def test_adapted_logits_and_training_reencodes(tokenizer, pixel_values):
    model = get_peft_model(clip_for_tokenizer(), MuDPTConfig(depth=3))
    randomize_adapter(model)
    clf = PromptClassifier(model, tokenizer, CLASSES)
    counter = CountingTextCalls(model)
    clf.train()
    out = clf(pixel_values=pixel_values, labels=torch.tensor([0, 1, 2, 3, 0]))
    clf(pixel_values=pixel_values)
    assert counter.count == 2  # re-encoded on every training call
    out.loss.backward()
    assert model.base_model.model.text_model.mudpt_prompts["default"].grad.abs().sum() > 0
    tokens = tokenizer([f"a photo of a {c}." for c in CLASSES], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**tokens, pixel_values=pixel_values).logits_per_image
    torch.testing.assert_close(out.logits.detach(), expected)
    torch.testing.assert_close(out.loss, F.cross_entropy(expected, torch.tensor([0, 1, 2, 3, 0])))


def test_eval_caches_and_the_cache_follows_every_change(tokenizer, pixel_values, tmp_path):
    model = get_peft_model(clip_for_tokenizer(), MuDPTConfig(depth=3))
    model.add_adapter("other", MuDPTConfig(depth=2))
    randomize_adapter(model, "default", seed=1)
    randomize_adapter(model, "other", seed=2)
    clf = PromptClassifier(model, tokenizer, CLASSES).eval()
    counter = CountingTextCalls(model)

    def logits():
        with torch.no_grad():
            return clf(pixel_values=pixel_values).logits

    first = logits()
    assert torch.equal(logits(), first) and counter.count == 1  # cached

    model.set_adapter("other")
    other = logits()
    assert counter.count == 2 and not torch.allclose(other, first)
    model.set_adapter("default")
    assert torch.equal(logits(), first) and counter.count == 3

    with model.disable_adapter():
        disabled = logits()
        assert counter.count == 4
    assert not torch.allclose(disabled, first)
    assert torch.equal(logits(), first) and counter.count == 5

    # an optimizer step changes the prompts in place
    clf.train()
    loss = clf(pixel_values=pixel_values, labels=torch.tensor([0, 1, 2, 3, 0])).loss
    loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0).step()
    clf.eval()
    stepped = logits()
    assert not torch.allclose(stepped, first)

    # loading other weights into the adapter
    model.save_pretrained(tmp_path)
    count = counter.count
    with torch.no_grad():  # the vision prompts feed the text prompts through V2T: the class features change
        vision_prompts = model.base_model.model.vision_model.mudpt_prompts["default"]
        vision_prompts.add_(torch.randn(vision_prompts.shape, generator=torch.Generator().manual_seed(0)))
    assert not torch.allclose(logits(), stepped) and counter.count == count + 1
    model.load_adapter(tmp_path, adapter_name="loaded")
    model.set_adapter("loaded")
    torch.testing.assert_close(logits(), stepped)

    clf.class_names = ["dog", "cat", "zebra", "of"]
    swapped = logits()
    torch.testing.assert_close(swapped[:, [1, 0, 2, 3]], stepped)


def test_cached_features_equal_fresh_ones(tokenizer, pixel_values):
    model = get_peft_model(clip_for_tokenizer(), MuDPTConfig(depth=3))
    randomize_adapter(model)
    clf = PromptClassifier(model, tokenizer, CLASSES)
    with torch.no_grad():
        fresh = clf.train()(pixel_values=pixel_values).logits
        cached = clf.eval()(pixel_values=pixel_values).logits
    assert torch.equal(fresh, cached)


def test_reloaded_adapter_classifies_identically(tokenizer, pixel_values, tmp_path):
    model = get_peft_model(clip_for_tokenizer(), MuDPTConfig(depth=3))
    randomize_adapter(model)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(clip_for_tokenizer(), tmp_path)
    with torch.no_grad():
        a = PromptClassifier(model, tokenizer, CLASSES).eval()(pixel_values=pixel_values).logits
        b = PromptClassifier(loaded, tokenizer, CLASSES).eval()(pixel_values=pixel_values).logits
    assert torch.equal(a, b)


def test_bad_input_is_refused(tokenizer, pixel_values):
    clip = clip_for_tokenizer()
    with pytest.raises(ValueError, match="non-empty list"):
        PromptClassifier(clip, tokenizer, [])
    with pytest.raises(ValueError, match="has no `{}` placeholder: a template needs exactly one `{}` placeholder"):
        PromptClassifier(clip, tokenizer, CLASSES, template="a photo")
    clf = PromptClassifier(clip, tokenizer, CLASSES)
    with pytest.raises(ValueError, match=r"class indices in 0\.\.3"):
        clf(pixel_values=pixel_values, labels=torch.tensor([0, 1, 2, 3, 4]))
    with pytest.raises(ValueError, match="image processor"):
        clf.predict([])


def test_predict_with_an_image_processor(tokenizer):
    from PIL import Image
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    clf = PromptClassifier(clip_for_tokenizer(), tokenizer, CLASSES, image_processor=processor).eval()
    images = [Image.new("RGB", (20, 20), color) for color in ("red", "blue", "white")]
    predictions = clf.predict(images, batch_size=2)
    pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = [CLASSES[i] for i in clf(pixel_values=pixel_values).logits.argmax(-1).tolist()]
    assert predictions == expected and len(predictions) == 3


def test_the_card_of_a_local_base_model_names_no_absolute_path(tokenizer, tokenizer_dir, tmp_path):
    """A base model loaded from a local folder: the card names the folder's name only (a path means nothing on another
    machine), and the classifier reloads with the processor files saved beside it."""
    from transformers import CLIPModel

    from .helpers import image_processor

    clip_for_tokenizer().save_pretrained(tmp_path / "my-clip")
    base = CLIPModel.from_pretrained(tmp_path / "my-clip")
    assert str(tmp_path) in base.name_or_path
    model = get_peft_model(base, MuDPTConfig(depth=2))
    randomize_adapter(model)
    saved = PromptClassifier(model, tokenizer, CLASSES).save_pretrained(tmp_path / "out")
    card = (saved / "README.md").read_text()
    assert str(tmp_path) not in card and "`my-clip` (a local model)" in card
    assert 'CLIPModel.from_pretrained("<the folder of my-clip>")' in card
    assert "base_model:" not in card.split("---")[1]  # no Hub id to record in the metadata
    # without processor files the classifier has no image processor; with them it reads both from the folder
    plain = PromptClassifier.from_pretrained(CLIPModel.from_pretrained(tmp_path / "my-clip"), saved, tokenizer)
    assert plain.image_processor is None
    image_processor().save_pretrained(saved)
    tokenizer.save_pretrained(saved)
    ready = PromptClassifier.from_pretrained(CLIPModel.from_pretrained(tmp_path / "my-clip"), saved)
    assert ready.image_processor.to_dict() == image_processor().to_dict()
    assert ready.class_input_ids.tolist() == plain.class_input_ids.tolist()


# ----------------------------------------------------------------------------------------------------------------------
# bounded-memory class encoding in training (`class_chunk_size`)

#: 13 distinct class names of 1 to 4 letters (prompts of different lengths, so the chunks see padding too).
MANY_CLASSES = ["".join(chr(97 + (i * 7 + j) % 26) for j in range(1 + i % 4)) for i in range(13)]


def _training_gradients(model, tokenizer, chunk: int, pixel_values, dtype=torch.float32, seed: int = 0):
    """The loss and the adapter's gradients of one training step of a `PromptClassifier` with `class_chunk_size`."""
    classifier = PromptClassifier(model, tokenizer, MANY_CLASSES, class_chunk_size=chunk).train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = classifier(pixel_values=pixel_values.to(dtype), labels=torch.tensor([0, 5, 12, 7, 3])).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return loss.detach(), grads


@pytest.mark.parametrize("method", ["mudpt", "coop", "maple"])
def test_chunked_class_encoding_gives_the_gradients_of_one_forward(tokenizer, pixel_values, method):
    """Chunks of 4 and of 1 class prompt (each but the last checkpointed) against one forward of all 13 classes.

    Chunking changes only which rows share a matrix product and the order in which the chunks' gradient contributions
    are summed, so it computes the same function: in fp64 the gradients agree to ~1e-14 relative (asserted at 1e-12).
    In fp32 both the chunked and the one-forward gradients carry rounding errors of their own (measured up to 1.2e-5
    of the largest entry for the LayerNorm weights of the Injection Model, which sum over every row and token, and
    depending on the thread count and the CPU's kernels), so each is compared with the fp64 gradients: the chunked
    error may be up to 3x the one-forward fp32 error plus 1e-4 of the gradient's largest entry (measured: at most
    1.1e-5 of it, AVX2 kernels, 2 threads). A chunk whose gradient is missing or counted twice moves a gradient by a
    sizeable fraction of its largest entry (one chunk of 4 is 30% of the 13 rows), three orders above this bound."""
    model = get_peft_model(
        clip_for_tokenizer(), MuDPTConfig.for_method(method, **({"n_ctx": 4} if method == "coop" else {"depth": 3}))
    )
    randomize_adapter(model)
    model.to(torch.float64)
    loss64, reference = _training_gradients(model, tokenizer, 256, pixel_values, torch.float64)
    assert len(reference) == sum(p.requires_grad for p in model.parameters()) > 0
    for chunk in (4, 1):
        chunked_loss, grads = _training_gradients(model, tokenizer, chunk, pixel_values, torch.float64)
        torch.testing.assert_close(chunked_loss, loss64, rtol=1e-12, atol=0)
        assert grads.keys() == reference.keys()
        for name, grad in reference.items():
            scale = grad.abs().max().item()
            torch.testing.assert_close(grads[name], grad, rtol=1e-12, atol=1e-12 * scale, msg=name)
    model.to(torch.float32)
    loss32, one_forward = _training_gradients(model, tokenizer, 256, pixel_values, torch.float32)
    for chunk in (4, 1):
        chunked_loss, grads = _training_gradients(model, tokenizer, chunk, pixel_values, torch.float32)
        torch.testing.assert_close(chunked_loss, loss32, rtol=1e-5, atol=0)
        assert grads.keys() == reference.keys()
        for name, grad in reference.items():
            scale = grad.abs().max().item()
            one_error = (one_forward[name].double() - grad).abs().max().item()
            chunked_error = (grads[name].double() - grad).abs().max().item()
            assert chunked_error <= 3 * one_error + 1e-4 * scale, (name, chunked_error / scale, one_error / scale)


def test_chunked_class_encoding_keeps_one_chunk_of_activations(tokenizer, pixel_values):
    """The activations the text forward keeps for the backward pass: those of the last chunk only, the others are
    recomputed (checkpointed); the forward-and-backward count shows the recomputation."""
    model = get_peft_model(clip_for_tokenizer(), MuDPTConfig(depth=3))
    tower = model.base_model.model.text_model
    encoder_calls = []
    tower.base_layer.encoder.register_forward_hook(lambda module, args, output: encoder_calls.append(args))

    def saved_bytes(chunk: int) -> int:
        total = [0]

        def pack(tensor):
            total[0] += tensor.numel() * tensor.element_size()
            return tensor

        # the tower's own forward (the shared prefix, on by default, encodes without calling the encoder module)
        classifier = PromptClassifier(
            model, tokenizer, MANY_CLASSES, class_chunk_size=chunk, share_text_prefix=False
        ).train()
        encoder_calls.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            features = classifier.encode_classes()
        assert len(encoder_calls) == -(-len(MANY_CLASSES) // chunk)  # one encoder forward per chunk
        features.sum().backward()
        assert len(encoder_calls) == 2 * -(-len(MANY_CLASSES) // chunk) - 1  # recomputed, but for the last
        return total[0]

    one_forward, chunked = saved_bytes(256), saved_bytes(4)
    assert chunked < one_forward / 3  # 1 of 13 rows kept (plus the prompts' own graph)


def test_chunked_class_encoding_draws_the_fusion_dropout_once(tokenizer, pixel_values):
    """The prompts are computed once for all chunks: with dropout in the Injection Models, the chunked step is the
    unchunked one (one draw of the dropout, the same RNG stream afterwards for the vision tower)."""
    model = get_peft_model(clip_for_tokenizer(), MuDPTConfig(depth=3, injection_dropout=0.5))
    randomize_adapter(model)
    loss, expected = _training_gradients(model, tokenizer, 256, pixel_values, seed=3)
    chunked_loss, grads = _training_gradients(model, tokenizer, 4, pixel_values, seed=3)
    other_seed, _ = _training_gradients(model, tokenizer, 256, pixel_values, seed=4)
    assert not torch.equal(other_seed, loss)  # the dropout is drawn
    torch.testing.assert_close(chunked_loss, loss, rtol=1e-5, atol=0)
    for name, grad in expected.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-5 * grad.abs().max().item(), msg=name)


def test_class_chunks_apply_in_training_under_autograd_only(tokenizer, pixel_values):
    model = get_peft_model(clip_for_tokenizer(), MuDPTConfig(depth=3))
    encoder = model.base_model.model.text_model.base_layer.encoder
    calls = []
    encoder.register_forward_hook(lambda module, args, output: calls.append(output.last_hidden_state.shape[0]))
    classifier = PromptClassifier(model, tokenizer, MANY_CLASSES, class_chunk_size=5)
    classifier.eval()(pixel_values=pixel_values)
    classifier.train()
    with torch.no_grad():
        classifier(pixel_values=pixel_values)
    assert calls == [13, 13]  # eval (cached) and no-grad training: one forward
    calls.clear()
    classifier(pixel_values=pixel_values)
    assert calls == [5, 5, 3]
    calls.clear()
    with model.base_model.model.text_model.chunked(None):  # outside the classifier, nothing is chunked
        model.get_text_features(input_ids=classifier.class_input_ids, attention_mask=classifier.class_attention_mask)
    assert calls == [13]
    with pytest.raises(ValueError, match="chunk size must be an integer >= 1"):
        with model.base_model.model.text_model.chunked(0):
            pass
