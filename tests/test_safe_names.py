"""Safe names: adapter names and subfolders that would point outside their folder are refused with a clear error
before any weight is created or any file written, on every route MuDPT code sees (the tuner, `mudpt_peft.hub`, the
loaders); nested subfolders of safe names work."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel, get_peft_model, inject_adapter_in_model

from mudpt_peft import MuDPTConfig, PromptClassifier, adapter_files, convert_official, hub
from mudpt_peft.layer import MuDPTLayer
from mudpt_peft.names import UnsafeNameError, check_adapter_name, check_subfolder

from .helpers import CLASSIFIER_CLASSES, folder_files, logits, make_clip, peft_model, randomize_adapter

GOOD_NAMES = ["default", "eurosat", "task_2", "Ünïcode", "a b", "x-y", "task:1", "-", "a" * 255]
#: bad adapter name -> what the error says is wrong with it
BAD_NAMES = {
    "": "it is empty",
    "   ": "it is blank",
    ".": "contains '.'",
    "..": "contains '.'",
    "../x": "contains '/'",
    "/abs/path": "it is an absolute path",
    "a/b": "contains '/'",
    "a\\b": "contains '\\\\'",
    "..\\x": "contains '.'",
    "C:": "drive",
    "v1.2": "contains '.'",
    "adapter_config.json": "contains '.'",
    "a\x00b": "control character",
    "new\nline": "control character",
    "é" * 128: "longer than 255 bytes",
}
GOOD_SUBFOLDERS = ["eurosat", "a/b", "adapters/v1.2/dtd", "..a", "a..", ".hidden", "x" * 255]
BAD_SUBFOLDERS = {
    "..": "'..' is not a folder of its own",
    "../x": "part 1",
    "a/../../x": "part 2",
    "a/./b": "'.' is not a folder of its own",
    "/abs": "absolute",
    "//server/share": "absolute",
    "C:/x": "absolute",
    "C:x": "drive",
    "a\\b": "'\\\\'",
    "a//b": "empty",
    "a/": "empty",
    "a/\x00": "control character",
    "x" * 256: "longer than 255 bytes",
    "a/" * 600: "longer than 1024 characters",
}


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_plain_folder_names_are_adapter_names(name):
    assert check_adapter_name(name) == name


@pytest.mark.parametrize("name", list(BAD_NAMES))
def test_names_that_are_no_plain_folder_name_are_refused(name):
    with pytest.raises(UnsafeNameError, match=BAD_NAMES[name]) as caught:
        check_adapter_name(name, "`adapter_name`")
    message = str(caught.value)
    assert isinstance(caught.value, ValueError) and "an adapter name is one plain folder name" in message
    assert len(message) < 700  # bounded, whatever the name


@pytest.mark.parametrize("value", [None, 3, b"x", ["a"]])
def test_adapter_names_must_be_strings(value):
    with pytest.raises(UnsafeNameError, match=f"must be a string, got a {type(value).__name__}"):
        check_adapter_name(value)


@pytest.mark.parametrize("subfolder", GOOD_SUBFOLDERS)
def test_relative_paths_of_safe_names_are_subfolders(subfolder):
    assert check_subfolder(subfolder) == subfolder
    assert check_subfolder(None) is None and check_subfolder("") is None


@pytest.mark.parametrize("subfolder", list(BAD_SUBFOLDERS))
def test_unsafe_subfolders_are_refused(subfolder):
    with pytest.raises(UnsafeNameError, match=BAD_SUBFOLDERS[subfolder]) as caught:
        check_subfolder(subfolder)
    assert "a subfolder is a relative path of '/'-separated names" in str(caught.value)
    assert len(str(caught.value)) < 700
    with pytest.raises(UnsafeNameError, match="must be a string"):
        check_subfolder(3)


def has_wrappers(model) -> bool:
    return any(isinstance(module, MuDPTLayer) for module in model.modules())


@pytest.mark.filterwarnings("ignore:Adapter name '' should not be contained in the prefix:UserWarning")  # peft's
@pytest.mark.parametrize("name", ["/abs/x", "../x", "", "a.b"])
def test_every_route_to_a_new_adapter_refuses_unsafe_names_before_any_weight(name, tmp_path, inputs):
    """get_peft_model, inject_adapter_in_model, add_adapter and load_adapter (peft's routes: the tuner checks the name
    first thing), and MuDPT's own loaders (before they read any file)."""
    config = MuDPTConfig(depth=2)
    base = make_clip()
    with pytest.raises(UnsafeNameError, match="is refused"):
        get_peft_model(base, config, adapter_name=name)
    with pytest.raises(UnsafeNameError, match="is refused"):
        inject_adapter_in_model(config, base, adapter_name=name)
    assert not has_wrappers(base) and not hasattr(base, "peft_config")

    model = get_peft_model(make_clip(), MuDPTConfig(depth=2))
    randomize_adapter(model)
    model.save_pretrained(tmp_path / "saved")
    before = logits(model, inputs)
    with pytest.raises(UnsafeNameError, match="is refused"):
        model.add_adapter(name, MuDPTConfig(depth=2))
    with pytest.raises(UnsafeNameError, match="is refused"):
        model.load_adapter(tmp_path / "saved", adapter_name=name)
    assert list(model.peft_config) == ["default"] and torch.equal(logits(model, inputs), before)
    assert sorted(tmp_path.iterdir()) == [tmp_path / "saved"]

    missing = tmp_path / "does-not-exist"  # a name checked after the files would fail on the path instead
    with pytest.raises(UnsafeNameError, match="is refused"):
        PromptClassifier.from_pretrained(make_clip(), missing, adapter_name=name)
    with pytest.raises(UnsafeNameError, match="is refused"):
        convert_official(missing, "maple", make_clip(), adapter_name=name)


def test_the_absolute_adapter_name_that_deleted_files_outside_the_target(tmp_path, inputs):
    """`load_adapter(path, adapter_name=str(path))` with an absolute path, then `hub.save_pretrained(model, "out")`,
    deleted `path/adapter_config.json`: the staging join resolved to the absolute name. Now `load_adapter` refuses the
    name, and `hub.save_pretrained` refuses such a name (an adapter added by a route that bypassed the tuner) before it
    touches any file."""
    source = tmp_path / "adapter"
    adapter = get_peft_model(make_clip(), MuDPTConfig(depth=2))
    randomize_adapter(adapter)
    hub.save_pretrained(adapter, source)
    model = get_peft_model(make_clip(), MuDPTConfig(depth=2))
    before, files = logits(model, inputs), folder_files(tmp_path)

    with pytest.raises(UnsafeNameError, match="'.*adapter' is refused: it is an absolute path"):
        model.load_adapter(str(source.resolve()), adapter_name=str(source.resolve()))
    assert list(model.peft_config) == ["default"] and torch.equal(logits(model, inputs), before)

    out = tmp_path / "out"
    for name in (str(source.resolve()), "../adapter", ".."):
        model.peft_config[name] = MuDPTConfig(depth=2)  # as if added by a route that bypassed the tuner
        for kwargs in ({}, {"selected_adapters": [name]}, {"is_main_process": False}):
            with pytest.raises(UnsafeNameError, match="The adapter name .* is refused"):
                hub.save_pretrained(model, out, **kwargs)
        with pytest.raises(UnsafeNameError, match="The adapter name .* is refused"):
            hub.push_to_hub(model, "someone/repo")  # before any request (no Hub is reachable from the tests)
        del model.peft_config[name]
        assert folder_files(tmp_path) == files and sorted(tmp_path.iterdir()) == [source]  # nothing touched
    assert torch.equal(logits(PeftModel.from_pretrained(make_clip(), source), inputs), logits(adapter, inputs))


@pytest.mark.parametrize("subfolder", ["../outside", "/abs", "a\\b", "a//b", "inside/../../outside"])
def test_unsafe_subfolders_are_refused_by_every_mudpt_loader_and_pusher(subfolder, tmp_path, tokenizer):
    root, outside = tmp_path / "root", tmp_path / "outside"
    model = peft_model()
    for folder in (root / "inside", outside):
        hub.save_pretrained(model, folder)
    files = folder_files(tmp_path)
    refusals = [
        lambda: MuDPTConfig.from_pretrained(root, subfolder=subfolder),
        lambda: adapter_files.check_adapter(root, subfolder=subfolder),
        lambda: PromptClassifier.from_pretrained(make_clip(), root, tokenizer, subfolder=subfolder),
        lambda: hub.push_to_hub(model, "someone/repo", subfolder=subfolder),  # before any request
        lambda: PromptClassifier(model, tokenizer, CLASSIFIER_CLASSES).push_to_hub("someone/repo", subfolder=subfolder),
    ]
    if subfolder in ("../outside", "inside/../../outside"):
        # peft reads '<root>/../outside/adapter_config.json' itself (a read), then MuDPT's config class refuses
        base, target = make_clip(), peft_model()
        refusals += [
            lambda: PeftModel.from_pretrained(base, root, subfolder=subfolder),
            lambda: target.load_adapter(root, adapter_name="other", subfolder=subfolder),
        ]
    for refusal in refusals:
        with pytest.raises(UnsafeNameError, match="`subfolder`=.* is refused"):
            refusal()
    assert folder_files(tmp_path) == files
    if subfolder in ("../outside", "inside/../../outside"):
        assert not has_wrappers(base) and list(target.peft_config) == ["default"]


def test_nested_subfolders_load_like_plain_ones(tmp_path, inputs):
    model = get_peft_model(make_clip(), MuDPTConfig(depth=2))
    randomize_adapter(model)
    hub.save_pretrained(model, tmp_path / "adapters" / "v1.2")
    assert MuDPTConfig.from_pretrained(tmp_path, subfolder="adapters/v1.2").depth == 2
    adapter_files.check_adapter(tmp_path, subfolder="adapters/v1.2")
    loaded = PeftModel.from_pretrained(make_clip(), tmp_path, subfolder="adapters/v1.2")
    assert torch.equal(logits(loaded, inputs), logits(model, inputs))
