"""What is checked is what is loaded: every loading path checks the very tensors it loads, read once.

- The weights are read once per load, by the loader that loads them (`PeftModel.from_pretrained` reads no tensor in
  `MuDPTConfig.from_pretrained`); the tuner checks those tensors.
- Races, made deterministic by injecting the competing write at the exact point (a patched read in the test): a save
  landing between the config read and the weights read, two writers on one folder. None loads a mixed adapter.
- Tensors that are not floating point, or not finite, are refused on every path.
- The config fields no tensor shape reveals (`injection_heads`, ...) are fingerprinted: an edited or overridden
  config is refused.
- An adapter that already exists (`transformers.Trainer` resume and best-model loading): `mudpt_peft.loading.
  load_adapter` checks the checkpoint against its saved config and against the adapter; a refused load keeps the
  adapter's values; `PromptTuningTrainer` resumes through it (a truncated checkpoint is a clear error).
"""

from __future__ import annotations

import json
import shutil

import peft.utils.save_and_load as peft_save_and_load
import pytest
import safetensors.torch
import torch
from peft import PeftConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from mudpt_peft import MuDPTConfig, adapter_files, hub
from mudpt_peft.layer import MuDPTLayer
from mudpt_peft.loading import load_adapter

from .helpers import logits, make_clip, randomize_adapter

pytestmark = pytest.mark.usefixtures("one_thread")

WEIGHTS = "adapter_model.safetensors"
MISMATCH = "does not belong to its adapter_config.json"
OTHER_FIELDS = "was saved with other values of the config fields"


def saved(folder, seed: int, **fields):
    model = get_peft_model(make_clip(), MuDPTConfig(depth=2, **fields))
    randomize_adapter(model, seed=seed)
    model.save_pretrained(folder)
    return model


def has_wrappers(model) -> bool:
    return any(isinstance(m, MuDPTLayer) for m in model.modules())


def adapter_values(model, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in get_peft_model_state_dict(model, adapter_name=adapter_name).items()}


def assert_same_values(model, before: dict[str, torch.Tensor], adapter_name: str = "default") -> None:
    after = get_peft_model_state_dict(model, adapter_name=adapter_name)
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())


@pytest.fixture
def folders(tmp_path):
    """Two saves of the same architecture, `a` and `b`, and their models."""
    return {name: (tmp_path / name, saved(tmp_path / name, seed)) for name, seed in (("a", 1), ("b", 2))}


class Reads:
    """Counts the full reads of a safetensors file through peft's and safetensors' readers; `before_read` runs first
    (the competing write of a race)."""

    def __init__(self, monkeypatch, before_read=None) -> None:
        self.paths: list[str] = []
        self.before_read = before_read
        for module, name in ((peft_save_and_load, "safe_load_file"), (safetensors.torch, "load_file")):
            monkeypatch.setattr(module, name, self._wrap(getattr(module, name)))
        monkeypatch.setattr(safetensors.torch, "load", self._wrap(safetensors.torch.load))

    def _wrap(self, read):
        def wrapped(source, *args, **kwargs):
            self.paths.append(str(source) if not isinstance(source, bytes) else "<bytes>")
            if self.before_read is not None:
                before, self.before_read = self.before_read, None
                before()
            return read(source, *args, **kwargs)

        return wrapped


# ---------------------------------------------------------------------------------------------------------------------
# one read, checked


def test_from_pretrained_reads_the_weights_once_and_loads_them_exactly(folders, inputs, monkeypatch):
    folder, model = folders["a"]
    reads = Reads(monkeypatch)
    loaded = PeftModel.from_pretrained(make_clip(), folder)
    assert reads.paths == [str(folder / WEIGHTS)]
    assert torch.equal(logits(loaded, inputs), logits(model, inputs))
    reads.paths.clear()
    loaded.load_adapter(folder, adapter_name="again")
    assert reads.paths == [str(folder / WEIGHTS)]


def test_a_save_writes_its_fingerprints_from_the_tensors_it_writes_not_by_reading_back(tmp_path, monkeypatch):
    model = get_peft_model(make_clip(), MuDPTConfig(depth=2))
    randomize_adapter(model, seed=4)
    reads = Reads(monkeypatch)
    model.save_pretrained(tmp_path / "plain")
    hub.save_pretrained(model, tmp_path / "crash-safe")
    assert reads.paths == []
    for folder in ("plain", "crash-safe"):
        auto_mapping = json.loads((tmp_path / folder / "adapter_config.json").read_text())["auto_mapping"]
        tensors = load_file(tmp_path / folder / WEIGHTS)
        assert auto_mapping[adapter_files.TENSORS_FINGERPRINT_KEY] == adapter_files.adapter_fingerprint(tensors)
        assert auto_mapping[adapter_files.CONFIG_FINGERPRINT_KEY] == adapter_files.config_fingerprint(
            model.peft_config["default"]
        )


# ---------------------------------------------------------------------------------------------------------------------
# races, made deterministic


@pytest.mark.parametrize("writer", ["plain", "crash-safe"])
def test_a_save_landing_between_the_config_read_and_the_weights_read_is_refused(folders, inputs, monkeypatch, writer):
    """The reader has read adapter A's config; before it reads the weights, another process saves adapter B there."""
    folder, _ = folders["a"]
    _, model_b = folders["b"]

    def save_b():
        if writer == "plain":
            model_b.save_pretrained(folder)
        else:
            hub.save_pretrained(model_b, folder)

    Reads(monkeypatch, before_read=save_b)
    base = make_clip()
    with pytest.raises(ValueError, match=rf"'{WEIGHTS}' in the local folder '{folder}' {MISMATCH}"):
        PeftModel.from_pretrained(base, folder)
    assert not has_wrappers(base)
    # once the competing save is complete, the folder loads as exactly adapter B
    assert torch.equal(logits(PeftModel.from_pretrained(make_clip(), folder), inputs), logits(model_b, inputs))


def test_a_legacy_save_swapped_after_its_file_check_is_refused(folders, monkeypatch):
    """An adapter saved before 0.2 records the weights file's sha256: it is checked when the config is read, and the
    tensors fingerprint of those very bytes is what the tuner then compares with the tensors peft reads."""
    folder, _ = folders["a"]
    other, _ = folders["b"]
    config_file = folder / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["auto_mapping"] = {"mudpt_weights_sha256": adapter_files.file_sha256(folder / WEIGHTS)}
    config_file.write_text(json.dumps(config))
    assert PeftModel.from_pretrained(make_clip(), folder)  # a legacy save loads

    monkeypatch.setattr(
        peft_save_and_load,
        "safe_load_file",
        _before(peft_save_and_load.safe_load_file, lambda: shutil.copy(other / WEIGHTS, folder / WEIGHTS)),
    )
    with pytest.raises(ValueError, match=MISMATCH):
        PeftModel.from_pretrained(make_clip(), folder)


def _before(read, action):
    def wrapped(*args, **kwargs):
        action()
        return read(*args, **kwargs)

    return wrapped


def test_two_writers_on_one_folder_never_leave_a_folder_that_loads_mixed(folders, tmp_path, inputs):
    """Writer A has written its weights; before it writes its config, writer B saves completely. A's config then
    lands over B's weights: the fingerprint A recorded is that of the tensors A wrote, so the folder is refused."""
    _, model_a = folders["a"]
    _, model_b = folders["b"]
    target = tmp_path / "shared"
    config_a = model_a.peft_config["default"]
    real_save = type(config_a).save_pretrained

    def save_b_then_a(save_directory, **kwargs):
        model_b.save_pretrained(target)
        real_save(config_a, save_directory, **kwargs)

    config_a.save_pretrained = save_b_then_a  # this config object only: writer A's next config write
    try:
        model_a.save_pretrained(target)
    finally:
        del config_a.save_pretrained
    assert not torch.equal(load_file(target / WEIGHTS)["base_model.model.text_model.mudpt_prompts"],
                           model_a.base_model.model.text_model.mudpt_prompts["default"].detach())  # fmt: skip
    with pytest.raises(ValueError, match=MISMATCH):
        PeftModel.from_pretrained(make_clip(), target)
    model_b.save_pretrained(target)  # the next complete save repairs it
    assert torch.equal(logits(PeftModel.from_pretrained(make_clip(), target), inputs), logits(model_b, inputs))


# ---------------------------------------------------------------------------------------------------------------------
# tensor values


DAMAGES = {
    "NaN": (lambda t: t.index_fill(-1, torch.tensor([0]), float("nan")), "NaN or infinite values"),
    "Inf": (lambda t: t.index_fill(-1, torch.tensor([0]), float("inf")), "NaN or infinite values"),
    "int8": (lambda t: t.to(torch.int8), r"not floating point: .*\(torch.int8\)"),
    "int64": (lambda t: t.to(torch.int64), r"not floating point: .*\(torch.int64\)"),
    "bool": (lambda t: t != 0, r"not floating point: .*\(torch.bool\)"),
    "complex": (lambda t: t.to(torch.complex64), r"not floating point: .*\(torch.complex64\)"),
}


def _damaged_folder(folder, damage: str, refingerprint: bool):
    """The folder with one tensor damaged; with `refingerprint`, the config records the damaged tensors' fingerprint
    (as a save of such tensors would), so that only the value check can refuse them."""
    tensors = load_file(folder / WEIGHTS)
    key = "base_model.model.text_model.mudpt_prompts"
    tensors[key] = DAMAGES[damage][0](tensors[key])
    save_file(tensors, folder / WEIGHTS, metadata={"format": "pt"})
    if refingerprint:
        config_file = folder / "adapter_config.json"
        config = json.loads(config_file.read_text())
        config["auto_mapping"][adapter_files.TENSORS_FINGERPRINT_KEY] = adapter_files.adapter_fingerprint(tensors)
        config_file.write_text(json.dumps(config))
    return tensors


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_tensors_that_are_not_finite_floats_are_refused_on_every_path(folders, damage):
    folder, _ = folders["a"]
    tensors = _damaged_folder(folder, damage, refingerprint=True)
    match = rf"'{WEIGHTS}' in the local folder '{folder}' holds adapter tensors .*{DAMAGES[damage][1]}"
    for kwargs in ({}, {"low_cpu_mem_usage": True}):
        base = make_clip()
        with pytest.raises(ValueError, match=match):
            PeftModel.from_pretrained(base, folder, **kwargs)
        assert not has_wrappers(base)
    with pytest.raises(ValueError, match=match):
        adapter_files.check_adapter(folder)
    # into adapters that exist: refused, their values kept
    _, model_b = folders["b"]
    before = adapter_values(model_b)
    with pytest.raises(ValueError, match=match):
        load_adapter(model_b, folder, "default")
    with pytest.raises(ValueError, match=rf"state dict loaded into the MuDPT adapter 'default' .*{DAMAGES[damage][1]}"):
        set_peft_model_state_dict(model_b, tensors)
    with pytest.raises(ValueError, match=DAMAGES[damage][1]):
        model_b.load_adapter(folder, adapter_name="default")  # peft's own route into an existing adapter
    assert_same_values(model_b, before)
    assert list(model_b.peft_config) == ["default"]


# ---------------------------------------------------------------------------------------------------------------------
# config fields no shape reveals


def test_a_config_whose_unrevealed_fields_were_edited_is_refused(tmp_path):
    folder = tmp_path / "a"
    saved(folder, 1, injection_heads=4)
    config_file = folder / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["injection_heads"] = 2  # same tensor shapes, another computation
    config_file.write_text(json.dumps(config))
    base = make_clip()
    with pytest.raises(ValueError, match=rf"'{WEIGHTS}' in the local folder '{folder}' {OTHER_FIELDS}"):
        PeftModel.from_pretrained(base, folder)
    assert not has_wrappers(base)
    config["injection_heads"] = 4
    config_file.write_text(json.dumps(config))
    config_object = MuDPTConfig.from_pretrained(folder)
    config_object.injection_heads = 2  # changing the field of a config read from the save is the same edit
    with pytest.raises(ValueError, match=OTHER_FIELDS):
        PeftModel.from_pretrained(make_clip(), folder, config=config_object)
    config_object = MuDPTConfig.from_pretrained(folder)
    config_object.injection_dropout = 0.1  # not such a field: the adapter loads
    assert PeftModel.from_pretrained(make_clip(), folder, config=config_object)
    config["injection_heads"] = 2
    config_file.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=OTHER_FIELDS):
        adapter_files.check_adapter(folder)


# ---------------------------------------------------------------------------------------------------------------------
# into an adapter that exists


def test_load_adapter_into_an_existing_adapter_checks_the_checkpoint(folders, tmp_path, inputs):
    folder_a, model_a = folders["a"]
    folder_b, model_b = folders["b"]
    load_adapter(model_b, folder_a, "default")
    assert torch.equal(logits(model_b, inputs), logits(model_a, inputs))

    mixed = tmp_path / "mixed"
    shutil.copytree(folder_a, mixed)
    shutil.copy(folder_b / WEIGHTS, mixed / WEIGHTS)
    before = adapter_values(model_b)
    with pytest.raises(ValueError, match=rf"'{WEIGHTS}' in the local folder '{mixed}' {MISMATCH}"):
        load_adapter(model_b, mixed, "default")
    assert_same_values(model_b, before)

    other = tmp_path / "heads"
    saved(other, 3, injection_heads=2)  # same shapes as the adapter, another computation
    with pytest.raises(ValueError, match=r"made with other settings .*injection_heads: 2 saved, None here"):
        load_adapter(model_b, other, "default")
    assert_same_values(model_b, before)

    # a new name is peft's load_adapter, with the same checks
    load_adapter(model_b, folder_a, "second")
    assert list(model_b.peft_config) == ["default", "second"]


def test_refused_loads_into_an_existing_adapter_keep_it(folders, tmp_path):
    """A shape mismatch refused by the tuner removes the adapter only when it was created for that load."""
    _, model_b = folders["b"]
    before = adapter_values(model_b)
    deeper = tmp_path / "deeper"
    saved(deeper, 5, n_ctx=3)
    with pytest.raises(ValueError, match="does not fit this base model"):
        model_b.load_adapter(deeper, adapter_name="default")
    with pytest.raises(ValueError, match="does not fit this base model"):
        set_peft_model_state_dict(model_b, load_file(deeper / WEIGHTS))
    assert list(model_b.peft_config) == ["default"] and has_wrappers(model_b)
    assert_same_values(model_b, before)
    with pytest.raises(ValueError, match="made with other settings .*n_ctx: 3 saved, 2 here"):
        load_adapter(model_b, deeper, "default")


def test_the_fingerprints_are_spent_by_the_load(folders):
    """They describe the save's tensors, not what the adapter holds after training: a config saved on its own, or a
    second state dict loaded into the adapter, is not compared with them."""
    folder, _ = folders["a"]
    model = PeftModel.from_pretrained(make_clip(), folder, is_trainable=True)
    config = model.peft_config["default"]
    assert adapter_files.recorded_for_load(config) == (None, None)
    assert adapter_files.loaded_from(config) is None
    assert PeftConfig.from_pretrained(folder).auto_mapping[adapter_files.TENSORS_FINGERPRINT_KEY]


# ---------------------------------------------------------------------------------------------------------------------
# PromptTuningTrainer: resuming and the best checkpoint


def _trainer(output_dir, tokenizer, **overrides):
    from mudpt_peft.trainer import PromptTuningTrainer, default_training_arguments

    from .helpers import COLOR_CLASSES, color_dataset, image_processor, peft_model

    settings = dict(max_steps=4, per_device_train_batch_size=2, learning_rate=0.05, save_strategy="steps",
                    save_steps=2, report_to=[], disable_tqdm=True, dataloader_pin_memory=False, seed=3)  # fmt: skip
    settings.update(overrides)
    args = default_training_arguments("mudpt", str(output_dir), **settings)
    data = color_dataset(8)
    return PromptTuningTrainer(
        peft_model(), COLOR_CLASSES, tokenizer, args=args, train_dataset=data, eval_dataset=data,
        image_processor=image_processor(),
    )  # fmt: skip


@pytest.fixture
def checkpoint(tmp_path, tokenizer):
    trainer = _trainer(tmp_path / "run", tokenizer)
    trainer.train()
    return tmp_path / "run" / "checkpoint-2"


def test_resuming_from_a_damaged_checkpoint_is_a_clear_error(checkpoint, tokenizer, tmp_path):
    weights = checkpoint / WEIGHTS
    good = weights.read_bytes()
    cases = {
        "truncated": (good[: len(good) // 2], rf"'{WEIGHTS}' in the local folder '{checkpoint}' is not a valid"),
        "mixed": (None, rf"'{WEIGHTS}' in the local folder '{checkpoint}' {MISMATCH}"),
    }
    for name, (content, match) in cases.items():
        if content is None:  # another save's tensors of the same shapes
            tensors = load_file(weights)
            tensors = {k: v + 1 for k, v in tensors.items()}
            save_file(tensors, weights, metadata={"format": "pt"})
        else:
            weights.write_bytes(content)
        resumed = _trainer(tmp_path / name, tokenizer)
        before = adapter_values(resumed.model)
        with pytest.raises(ValueError, match=match):
            resumed.train(resume_from_checkpoint=str(checkpoint))
        assert_same_values(resumed.model, before)
        weights.write_bytes(good)
    resumed = _trainer(tmp_path / "good", tokenizer)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 4


def test_the_best_checkpoint_is_loaded_through_the_checked_path(tmp_path, tokenizer, monkeypatch):
    import mudpt_peft.trainer as trainer_module

    calls = []
    real = trainer_module.load_adapter
    monkeypatch.setattr(trainer_module, "load_adapter", lambda *a, **k: calls.append(a[1:3]) or real(*a, **k))
    trainer = _trainer(tmp_path / "run", tokenizer, eval_strategy="steps", eval_steps=2, load_best_model_at_end=True,
                       metric_for_best_model="accuracy")  # fmt: skip
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert calls == [(best, "default")]
    expected = load_file(f"{best}/{WEIGHTS}")
    state = get_peft_model_state_dict(trainer.model)
    assert state.keys() == expected.keys() and all(torch.equal(state[k], v) for k, v in expected.items())

