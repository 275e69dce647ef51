"""Damaged inputs get a clear `ValueError`, never a raw `KeyError` / `TypeError` / `JSONDecodeError` /
`RecursionError` / `OverflowError`: every field of `adapter_config.json` fuzzed with hostile JSON values, damaged files
(not JSON, not UTF-8, nested too deeply, too large), `prompt_classifier.json`, class-prompt templates, class names, a
one-class training set, and text longer than the text tower's positions.

Each refusal names the field (and, where a file is read, the file), in a message of bounded length. Values a field
accepts are listed explicitly (`ACCEPTED`), so that a value that starts being accepted, or refused, fails a test.

What peft parses itself, before MuDPT is involved, is out of reach: `PeftConfig.from_pretrained` and
`PeftModel.from_pretrained` read `adapter_config.json` with peft's own `json.load` and look its `peft_type` up in
peft's mapping, so a file that is not JSON, or whose `peft_type` is not a registered type, gets peft's error there
(`check_adapter`, `MuDPTConfig.from_pretrained` and `PromptClassifier.from_pretrained` name the file).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import warnings
from pathlib import Path

import pytest
import torch
from peft import PeftConfig, PeftModel, TaskType, get_peft_model

import mudpt_peft
from mudpt_peft import MuDPTConfig, PromptClassifier, PromptTuningTrainer
from mudpt_peft.adapter_files import MAX_CLASSIFIER_FILE_BYTES, MAX_CONFIG_FILE_BYTES, MAX_JSON_DEPTH, check_adapter
from mudpt_peft.data import check_image_classification_dataset, few_shot
from mudpt_peft.evaluation import evaluate
from mudpt_peft.layer import MuDPTLayer
from mudpt_peft.metrics import alignment

from .helpers import (
    BOS_ID,
    CLASSIFIER_CLASSES,
    COLOR_CLASSES,
    EOS_ID,
    TOKENIZER_EOS_ID,
    clip_for_tokenizer,
    color_dataset,
    image_processor,
    labelled,
    make_clip,
    make_inputs,
    make_tokenizer_files,
    peft_model,
)

# tiny models: more threads only contend for the shared cores
pytestmark = pytest.mark.usefixtures("one_thread")

#: The longest message of a refusal by the config itself (as in test_bounded_configs.py); the loaders add the file
#: and its folder.
MAX_MESSAGE = 400

#: JSON values that damaged or hostile files hold, by name (NaN and the infinities as Python's `json` reads them).
HOSTILE = {
    "null": None,
    "true": True,
    "false": False,
    "zero": 0,
    "minus one": -1,
    "10**30": 10**30,
    "10**400": 10**400,  # an int too large for a float
    "2.5": 2.5,
    "1e999": math.inf,
    "-1e999": -math.inf,
    "NaN": math.nan,
    "empty string": "",
    "string": "x",
    "5000-character string": "x" * 5000,
    "empty list": [],
    "list of int": [1],
    "list of string": ["x"],
    "empty object": {},
    "object": {"a": 1},
    "nested lists": [[[[[[1]]]]]],
}

#: The hostile values each field accepts (on top of the tiny adapter's other fields: depth 2, n_ctx 2, MuDPT's
#: injection fusion). Every other value is refused with a `ValueError` that names the field.
ACCEPTED: dict[str, set[str]] = {
    "task_type": {"null"},
    "peft_type": {"null", "empty string", "string", "5000-character string"},  # a string becomes MUDPT, as in peft
    "auto_mapping": {"null", "empty object", "object"},  # entries of other tools are left alone
    "peft_version": {"null", "string"},
    "base_model_name_or_path": {"null", "string"},
    "revision": {"null", "string"},
    "inference_mode": {"true", "false"},
    "text_prompts": {"true"},  # false: the injection fusion couples both towers
    "vision_prompts": {"true"},
    "fusion": set(),
    "depth": set(),
    "text_depth": {"null"},
    "vision_depth": {"null"},
    "n_ctx": set(),
    "vision_n_ctx": {"null"},
    "ctx_init": {"null", "string", "5000-character string"},
    "ctx_init_token_ids": {"null"},  # [1]: one id for n_ctx=2
    "tokenizer_name_or_path": {"null", "string"},
    "injection_layers": {"zero"},
    "injection_heads": {"null"},
    "injection_mlp_ratio": {"2.5"},
    "injection_dropout": {"zero"},
    "injection_init_std": {"2.5", "10**30"},  # finite, if silly
    "cross_attention_heads": {"null"},
    "cross_attention_dropout": {"zero"},
    "prompt_init_std": {"2.5", "10**30"},
}

#: The records in `auto_mapping` and the hostile values each accepts.
AUTO_MAPPING_ACCEPTED: dict[str, set[str]] = {
    "base_model_class": {"null", "string"},
    "parent_library": {"null", "string"},
    "mudpt_base_family": {"null", "string"},
    "mudpt_base_geometry": {"null", "empty object", "object"},  # {"a": 1}: a record compat does not compare
    "mudpt_tensors_sha256": {"null"},  # absent: nothing to compare
    "mudpt_weights_sha256": {"null"},
}

FIELD_CASES = [
    pytest.param(field, name, id=f"{field}={name}")
    for field in ACCEPTED
    for name in HOSTILE
    if name not in ACCEPTED[field]
]
ACCEPTED_CASES = [pytest.param(field, name, id=f"{field}={name}") for field in ACCEPTED for name in ACCEPTED[field]]


def names_field(text: str, field: str) -> bool:
    """Whether an error message names `field` as code (`` `field` ``, `` `field=...` `` or `` `field.key` ``)."""
    return re.search(rf"`{re.escape(field)}\b", text) is not None


def unwrapped(model) -> bool:
    return not any(isinstance(m, MuDPTLayer) for m in model.modules())


@pytest.fixture(scope="module")
def tiny_adapter(tmp_path_factory) -> tuple[Path, dict]:
    """A saved tiny adapter (depth 2): `(folder, its adapter_config.json as a dict)`."""
    folder = tmp_path_factory.mktemp("tiny-adapter")
    get_peft_model(make_clip(), MuDPTConfig(depth=2)).save_pretrained(folder)
    return folder, json.loads((folder / "adapter_config.json").read_text())


@pytest.fixture(scope="module")
def shared_clip():
    """One base model for the refusals, which must leave it untouched (checked after each)."""
    return make_clip()


def write_adapter(folder: Path, source: Path, text: str | bytes) -> Path:
    """A folder with `text` as its adapter_config.json, beside the weights of `source`."""
    folder.mkdir()
    (folder / "adapter_config.json").write_bytes(text.encode() if isinstance(text, str) else text)
    (folder / "adapter_model.safetensors").write_bytes((source / "adapter_model.safetensors").read_bytes())
    return folder


def config_fields(saved: dict) -> dict:
    """The MuDPTConfig fields of a saved config."""
    return {f.name: saved[f.name] for f in dataclasses.fields(MuDPTConfig)}


# ---------------------------------------------------------------------------------------------------------------------
# every field of the config, with every hostile value


def test_every_field_is_fuzzed():
    assert set(ACCEPTED) == {f.name for f in dataclasses.fields(MuDPTConfig)}


@pytest.mark.parametrize(("field", "name"), FIELD_CASES)
def test_a_hostile_value_is_refused_by_the_config(field, name, tiny_adapter):
    _, saved = tiny_adapter
    with pytest.raises(ValueError) as caught:
        MuDPTConfig(**{**config_fields(saved), field: HOSTILE[name]})
    text = str(caught.value)
    assert type(caught.value) is ValueError and names_field(text, field), text
    assert len(text) <= MAX_MESSAGE, len(text)


@pytest.mark.parametrize(("field", "name"), ACCEPTED_CASES)
def test_an_accepted_value_is_kept(field, name, tiny_adapter):
    _, saved = tiny_adapter
    config = MuDPTConfig(**{**config_fields(saved), field: HOSTILE[name]})
    if field == "peft_type":
        assert config.peft_type == mudpt_peft.MUDPT_PEFT_TYPE
    elif field == "peft_version" and HOSTILE[name] is None:
        assert config.peft_version == saved["peft_version"]  # peft fills it in
    else:
        assert getattr(config, field) == HOSTILE[name]


@pytest.mark.parametrize("name", sorted(ACCEPTED["peft_type"] - {"null"}))
def test_a_string_peft_type_other_than_mudpt_in_a_file_is_refused(name, tiny_adapter, tmp_path):
    source, saved = tiny_adapter
    folder = write_adapter(tmp_path / "adapter", source, json.dumps({**saved, "peft_type": HOSTILE[name]}))
    file = rf"^'adapter_config.json' in the local folder '{re.escape(str(folder))}' "
    for load in (MuDPTConfig.from_pretrained, check_adapter):
        with pytest.raises(ValueError, match=file + "(is a .* adapter, not a MuDPT|has a 'peft_type' of)") as caught:
            load(folder)
        assert len(str(caught.value)) <= MAX_MESSAGE + len(str(folder))


@pytest.mark.parametrize(("field", "name"), FIELD_CASES)
def test_a_hostile_value_in_a_file_is_refused_by_every_loader(field, name, tiny_adapter, shared_clip, tmp_path):
    source, saved = tiny_adapter
    folder = write_adapter(tmp_path / "adapter", source, json.dumps({**saved, field: HOSTILE[name]}))
    longest = MAX_MESSAGE + 2 * len(str(folder))
    file = rf"'adapter_config.json' in the local folder '{re.escape(str(folder))}'"

    for load in (MuDPTConfig.from_pretrained, check_adapter):
        if load is check_adapter and field not in ("peft_type", "auto_mapping"):
            continue  # the adapter's files, not a config, are what check_adapter checks
        with pytest.raises(ValueError, match=file) as caught:
            load(folder)
        text = str(caught.value)
        assert len(text) <= longest, len(text)
        assert names_field(text, field) or field == "peft_type", text  # "is a x adapter", "has no 'peft_type'"
    if field == "peft_type":
        return  # peft's own mapping rejects a peft_type it does not know, before mudpt_peft is involved

    with pytest.raises(ValueError) as caught:  # peft reads the file and calls MuDPTConfig(**fields)
        PeftConfig.from_pretrained(str(folder))
    assert type(caught.value) is ValueError and names_field(str(caught.value), field), str(caught.value)
    assert len(str(caught.value)) <= MAX_MESSAGE

    with pytest.raises(ValueError, match=file + " is not a valid MuDPT config: ") as caught:
        PeftModel.from_pretrained(shared_clip, str(folder))
    assert names_field(str(caught.value), field) and len(str(caught.value)) <= longest
    assert unwrapped(shared_clip)


@pytest.mark.parametrize(
    ("key", "name"),
    [pytest.param(k, n, id=f"{k}={n}") for k in AUTO_MAPPING_ACCEPTED for n in HOSTILE],
)
def test_the_records_in_auto_mapping_are_checked(key, name, tiny_adapter, tmp_path):
    source, saved = tiny_adapter
    auto_mapping = {**saved["auto_mapping"], key: HOSTILE[name]}
    folder = write_adapter(tmp_path / "adapter", source, json.dumps({**saved, "auto_mapping": auto_mapping}))
    if name in AUTO_MAPPING_ACCEPTED[key]:
        assert (MuDPTConfig.from_pretrained(folder).auto_mapping or {}).get(key) == HOSTILE[name]
        return
    for load in (MuDPTConfig.from_pretrained, check_adapter, PeftConfig.from_pretrained):
        with pytest.raises(ValueError) as caught:
            load(str(folder))
        text = str(caught.value)
        assert f"`auto_mapping.{key}` must be " in text, text
        assert len(text) <= MAX_MESSAGE + 2 * len(str(folder)), len(text)


def test_a_malformed_fingerprint_is_refused_not_skipped(tiny_adapter, tmp_path):
    """A fingerprint that is not a sha256 (here: the right one, upper-cased) is an error, never "nothing recorded"."""
    source, saved = tiny_adapter
    recorded = saved["auto_mapping"]["mudpt_tensors_sha256"]
    upper = {**saved, "auto_mapping": {**saved["auto_mapping"], "mudpt_tensors_sha256": recorded.upper()}}
    folder = write_adapter(tmp_path / "adapter", source, json.dumps(upper))
    with pytest.raises(ValueError, match=r"`auto_mapping.mudpt_tensors_sha256` must be a sha256 \(64 lowercase"):
        PeftModel.from_pretrained(make_clip(), str(folder))
    with pytest.raises(ValueError, match=r"`auto_mapping` must be a JSON object"):
        MuDPTConfig(auto_mapping=["mudpt_tensors_sha256", recorded])


def test_geometry_records_are_integers(tiny_adapter, tmp_path):
    source, saved = tiny_adapter
    geometry = {**saved["auto_mapping"]["mudpt_base_geometry"], "text_width": 32.0}
    auto_mapping = {**saved["auto_mapping"], "mudpt_base_geometry": geometry}
    folder = write_adapter(tmp_path / "adapter", source, json.dumps({**saved, "auto_mapping": auto_mapping}))
    with pytest.raises(ValueError, match=r"`auto_mapping.mudpt_base_geometry.text_width` must be an integer"):
        MuDPTConfig.from_pretrained(folder)


def test_peft_contract_for_two_unknown_entries_and_an_invalid_task_type(tiny_adapter, tmp_path):
    """What peft's own config tests check of every config class (`test_from_pretrained_forward_compatible`,
    `test_invalid_task_type`)."""
    source, saved = tiny_adapter
    folder = write_adapter(tmp_path / "adapter", source, json.dumps({**saved, "foobar": "baz", "spam": 123}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        MuDPTConfig.from_pretrained(folder)
    assert len(caught) == 1, [str(w.message) for w in caught]
    assert str(caught[0].message).startswith(
        "Unexpected keyword arguments ['foobar', 'spam'] for class MuDPTConfig, these are ignored."
    )
    task_types = ", ".join(t.value for t in TaskType)
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"Invalid task type: 'invalid-task-type'. Must be one of the following task types: {task_types}."
        ),
    ):
        MuDPTConfig(task_type="invalid-task-type")


def test_unknown_keyword_arguments_stay_a_type_error():
    """peft's forward compatibility relies on it: `from_peft_type` drops fields it gets this TypeError for."""
    with pytest.raises(TypeError, match="unexpected keyword argument 'target_modules'"):
        MuDPTConfig(target_modules=["q_proj"])


def test_unknown_entries_in_a_file_are_ignored_with_a_short_warning(tiny_adapter, tmp_path):
    source, saved = tiny_adapter
    unknown = {f"field_{i}": [i] * 1000 for i in range(40)}
    unknown.update({"target_modules": {"weird": [None]}, "cls": 1, "self": 2, "runtime_config": {"x": 1}})
    folder = write_adapter(tmp_path / "adapter", source, json.dumps({**saved, **unknown}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = MuDPTConfig.from_pretrained(folder)
    messages = [str(w.message) for w in caught]
    # peft's warning (its tests match the start), with the list cut short
    start = "Unexpected keyword arguments ['cls', 'field_0', 'field_1', 'field_10', 'field_11', ... and 38 more] for "
    ignored = [m for m in messages if m.startswith(start + "class MuDPTConfig, these are ignored. They are in ")]
    assert len(ignored) == 1 and len(ignored[0]) <= MAX_MESSAGE + len(str(folder)), messages
    assert any("contains a `runtime_config` entry; it is ignored" in m for m in messages), messages
    assert config.depth == 2 and not hasattr(config, "target_modules")
    with warnings.catch_warnings(record=True) as caught:  # and it loads (peft warns of `runtime_config` too)
        warnings.simplefilter("always")
        assert PeftModel.from_pretrained(make_clip(), str(folder)).peft_config["default"].depth == 2
    assert any(str(w.message).startswith("Unexpected keyword arguments ['cls', ") for w in caught)


# ---------------------------------------------------------------------------------------------------------------------
# damaged files


def nested(levels: int) -> str:
    """A config whose values nest `levels` deep: the file's object, `auto_mapping`, then lists."""
    lists = levels - 2
    return '{"peft_type": "MUDPT", "auto_mapping": {"x": ' + "[" * lists + "]" * lists + "}}"


DAMAGED_FILES = {
    "empty": (b"", r"is not valid JSON \(Expecting value: line 1 column 1 \(char 0\)\); the file is truncated"),
    "truncated": (b'{"peft_type": "MUDPT", "dep', r"is not valid JSON \(.*\); the file is truncated or corrupted"),
    "not UTF-8": (b'{"peft_type": "MUDPT\xff"}', r"is not valid JSON \(not UTF-8\); the file is truncated"),
    "a list": (b"[1, 2]", r"must hold a JSON object, got list"),
    "a string": (b'"MUDPT"', r"must hold a JSON object, got str"),
    "null": (b"null", r"must hold a JSON object, got NoneType"),
    "nested 100000 deep": (nested(100_000).encode(), r"nests JSON values too deeply to be read"),
    "nested 17 deep": (nested(MAX_JSON_DEPTH + 1).encode(), rf"nests JSON values more than {MAX_JSON_DEPTH} levels"),
    "a 5000-digit integer": (
        b'{"peft_type": "MUDPT", "depth": ' + b"9" * 5000 + b"}",
        r"holds an integer of thousands",
    ),
    "larger than 1 MB": (
        b'{"peft_type": "MUDPT", "ctx_init": "' + b"a" * MAX_CONFIG_FILE_BYTES + b'"}',
        r"is larger than 1 MB, which no MuDPT adapter writes",
    ),
    "peft_type a list": (b'{"peft_type": ["MUDPT"]}', r"has a 'peft_type' of \['MUDPT'\] \(a list\); it must be"),
    "peft_type a long string": (
        b'{"peft_type": "' + b"M" * 10**5 + b'"}',
        r"has a 'peft_type' of 'MMMM.*\(a str\); it must be the name of a peft method",
    ),
    "peft_type missing": (b'{"depth": 2}', r"has no 'peft_type'"),
    "peft_type of another method": (b'{"peft_type": "LORA"}', r"is a LORA adapter, not a MuDPT"),
}


@pytest.mark.parametrize(("content", "message"), list(DAMAGED_FILES.values()), ids=list(DAMAGED_FILES))
def test_a_damaged_config_file_is_refused_naming_the_file(content, message, tiny_adapter, tmp_path):
    source, _ = tiny_adapter
    folder = write_adapter(tmp_path / "adapter", source, content)
    file = rf"^'adapter_config.json' in the local folder '{re.escape(str(folder))}' "
    for load in (MuDPTConfig.from_pretrained, check_adapter):
        with pytest.raises(ValueError, match=file + message) as caught:
            load(folder)
        assert len(str(caught.value)) <= MAX_MESSAGE + len(str(folder)), len(str(caught.value))
    clip = clip_for_tokenizer()
    with pytest.raises(ValueError, match=file + message):
        PromptClassifier.from_pretrained(clip, folder, tokenizer=object())
    assert unwrapped(clip)


def test_a_config_within_the_limits_is_read(tiny_adapter, tmp_path):
    """The boundaries: values nested exactly MAX_JSON_DEPTH levels deep and a file of exactly 1 MB load."""
    source, saved = tiny_adapter
    lists = MAX_JSON_DEPTH - 2  # inside the file's object and `auto_mapping`
    auto_mapping = {**saved["auto_mapping"], "x": json.loads("[" * lists + "]" * lists)}
    text = json.dumps({**saved, "auto_mapping": auto_mapping, "ctx_init": None})
    padding = MAX_CONFIG_FILE_BYTES - len(text) - len(', "pad": ""')
    padded = text[:-1] + f', "pad": "{"p" * padding}"' + "}"
    assert len(padded.encode()) == MAX_CONFIG_FILE_BYTES
    folder = write_adapter(tmp_path / "adapter", source, padded)
    with pytest.warns(UserWarning, match="'pad'"):
        assert MuDPTConfig.from_pretrained(folder).auto_mapping["x"] == auto_mapping["x"]


# ---------------------------------------------------------------------------------------------------------------------
# prompt_classifier.json


@pytest.fixture(scope="module")
def saved_classifier(tmp_path_factory) -> tuple[Path, dict, object]:
    """A saved tiny classifier: `(folder, its prompt_classifier.json as a dict, the tokenizer)`."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(make_tokenizer_files(tmp_path_factory.mktemp("tokenizer")))
    folder = tmp_path_factory.mktemp("classifier")
    model = get_peft_model(clip_for_tokenizer(), MuDPTConfig(depth=2))
    PromptClassifier(model, tokenizer, CLASSIFIER_CLASSES).save_pretrained(folder)
    return folder, json.loads((folder / "prompt_classifier.json").read_text()), tokenizer


def copy_classifier(source: Path, folder: Path, info: dict | bytes) -> Path:
    folder.mkdir()
    for path in source.iterdir():
        if path.is_file():
            (folder / path.name).write_bytes(path.read_bytes())
    text = info if isinstance(info, bytes) else json.dumps(info).encode()
    (folder / "prompt_classifier.json").write_bytes(text)
    return folder


#: Per entry of prompt_classifier.json: the hostile values it accepts, and the start of the refusal's reason.
CLASSIFIER_ENTRIES = {
    "class_names": ({"list of string"}, r"holds an invalid 'class_names': `class_names` must "),  # one class: "x"
    "template": (set(), r"holds an invalid 'template': `template` "),
    "format_version": ({"null"}, r"has (a 'format_version' of |format version )"),  # null: as if absent
    "adapter_weights_sha256": ({"null"}, r"has an 'adapter_weights_sha256' of "),
}


@pytest.mark.parametrize(
    ("key", "name"),
    [pytest.param(k, n, id=f"{k}={n}") for k, (accepted, _) in CLASSIFIER_ENTRIES.items() for n in HOSTILE],
)
def test_a_hostile_value_in_the_classifier_file_is_refused(key, name, saved_classifier, tmp_path):
    source, info, tokenizer = saved_classifier
    accepted, message = CLASSIFIER_ENTRIES[key]
    folder = copy_classifier(source, tmp_path / "classifier", {**info, key: HOSTILE[name]})
    clip = clip_for_tokenizer()
    if name in accepted:
        classifier = PromptClassifier.from_pretrained(clip, folder, tokenizer=tokenizer)
        assert classifier.class_names == (HOSTILE[name] if key == "class_names" else CLASSIFIER_CLASSES)
        return
    file = rf"^'prompt_classifier.json' in the local folder '{re.escape(str(folder))}' "
    with pytest.raises(ValueError, match=file + message) as caught:
        PromptClassifier.from_pretrained(clip, folder, tokenizer=tokenizer)
    assert type(caught.value) is ValueError and len(str(caught.value)) <= MAX_MESSAGE + len(str(folder))
    assert unwrapped(clip)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"class_names": ["cat", "dog", "cat"]}, r"`class_names` must be distinct: 1 name\(s\) occur more than once"),
        ({"class_names": ["cat", 7]}, r"`class_names` must hold non-empty strings .*got 7 at index 1"),
        ({"class_names": ["cat", "  "]}, r"`class_names` must hold non-empty strings"),
        ({"template": "{} {x}"}, r"`template` '\{\} \{x\}' has 2 fields"),
        ({"template": "a photo of a {0}."}, r"has the field '\{0\}' instead of `\{\}`"),
        ({"format_version": 3}, r"has format version 3; this mudpt-peft reads version 2. Upgrade mudpt-peft."),
        ({"format_version": "1"}, r"has a 'format_version' of '1' \(a str\); it must be an integer >= 1"),
        ({"adapter_weights_sha256": "0" * 64}, r"was saved with another adapter than the one beside it"),
    ],
)
def test_invalid_classifier_entries_are_named(change, message, saved_classifier, tmp_path):
    source, info, tokenizer = saved_classifier
    folder = copy_classifier(source, tmp_path / "classifier", {**info, **change})
    with pytest.raises(ValueError, match=message):
        PromptClassifier.from_pretrained(clip_for_tokenizer(), folder, tokenizer=tokenizer)


@pytest.mark.parametrize("key", ["class_names", "template"])
def test_a_missing_classifier_entry_is_named(key, saved_classifier, tmp_path):
    source, info, tokenizer = saved_classifier
    folder = copy_classifier(source, tmp_path / "classifier", {k: v for k, v in info.items() if k != key})
    with pytest.raises(ValueError, match=rf"prompt_classifier.json' in the local folder .* has no '{key}'"):
        PromptClassifier.from_pretrained(clip_for_tokenizer(), folder, tokenizer=tokenizer)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", r"is not valid JSON \(Expecting value"),
        (b"\xff\xfe{}", r"is not valid JSON \(not UTF-8\)"),
        (b"[" * 100_000 + b"]" * 100_000, r"nests JSON values too deeply to be read"),
        (b'{"class_names": ' + b"[" * 20 + b"]" * 20 + b"}", r"nests JSON values more than 16 levels deep"),
        (b'{"format_version": ' + b"1" * 5000 + b"}", r"holds an integer of thousands of digits"),
        (b'["cat"]', r"must hold a JSON object, got list"),
        (b'{"x": "' + b"x" * MAX_CLASSIFIER_FILE_BYTES + b'"}', r"is larger than 16 MB"),
    ],
    ids=["empty", "not UTF-8", "nested 100000 deep", "nested 20 deep", "5000 digits", "a list", "larger than 16 MB"],
)
def test_a_damaged_classifier_file_is_refused_naming_it(content, message, saved_classifier, tmp_path):
    source, _, tokenizer = saved_classifier
    folder = copy_classifier(source, tmp_path / "classifier", content)
    clip = clip_for_tokenizer()
    with pytest.raises(ValueError, match=r"^'prompt_classifier.json' in the local folder .*' " + message):
        PromptClassifier.from_pretrained(clip, folder, tokenizer=tokenizer)
    assert unwrapped(clip)


# ---------------------------------------------------------------------------------------------------------------------
# templates: exactly one `{}` and no other field, checked where the classifier is built

BAD_TEMPLATES = {
    "{} {x}": r"`template` '\{\} \{x\}' has 2 fields",
    "{}{}": r"`template` '\{\}\{\}' has 2 fields",
    "{0}": r"`template` '\{0\}' has the field '\{0\}' instead of `\{\}`",
    "a {name}.": r"has the field '\{name\}' instead of `\{\}`",
    "a {!r}.": r"has the field '\{!r\}' instead of `\{\}`",
    "{": r"`template` '\{' is not a valid template \(Single '\{' encountered in format string\)",
    "a } {}": r"is not a valid template \(Single '\}' encountered",
    "a photo": r"`template` 'a photo' has no `\{\}` placeholder",
    42: r"`template` must be a string, got 42: ",
}
RULE = r"a template needs exactly one `\{\}` placeholder, where the class name goes, and no other fields"


@pytest.mark.parametrize(("template", "message"), list(BAD_TEMPLATES.items()), ids=[str(t) for t in BAD_TEMPLATES])
def test_a_bad_template_is_refused_where_the_classifier_is_built(template, message, tokenizer, tmp_path):
    clip = clip_for_tokenizer()
    pattern = message + ".*" + RULE + r" \(write literal braces as `\{\{` and `\}\}`\)"
    with pytest.raises(ValueError, match=pattern):
        PromptClassifier(clip, tokenizer, CLASSIFIER_CLASSES, template=template)
    with pytest.raises(ValueError, match=pattern):
        evaluate(clip, labelled([1, 1]), ["cat", "dog"], tokenizer, image_processor(), template=template)
    with pytest.raises(ValueError, match=pattern):
        alignment(clip, make_inputs(batch=2)["pixel_values"], [0, 1], ["cat", "dog"], tokenizer, template=template)
    args = dict(args=quiet_args(tmp_path), image_processor=image_processor())
    with pytest.raises(ValueError, match=pattern):
        PromptTuningTrainer(peft_model(), COLOR_CLASSES, tokenizer, template=template, **args)


def test_good_templates_and_escaped_braces(tokenizer):
    classifier = PromptClassifier(clip_for_tokenizer(), tokenizer, ["cat", "dog"], template="{{a}} photo of a {}")
    expected = tokenizer(["{a} photo of a cat", "{a} photo of a dog"], padding="longest", return_tensors="pt")
    assert torch.equal(classifier.class_input_ids, expected["input_ids"])


# ---------------------------------------------------------------------------------------------------------------------
# class names: distinct non-empty strings; training needs two classes


def quiet_args(output_dir):
    from transformers import TrainingArguments

    return TrainingArguments(output_dir=str(output_dir), report_to=[], use_cpu=True, disable_tqdm=True)


DUPLICATES = ["cat", "dog", "cat", "zebra", "dog", "cat"]
DUPLICATES_MESSAGE = r"`class_names` must be distinct: 2 name\(s\) occur more than once: 'cat' \(3x\), 'dog' \(2x\)\."


def test_duplicate_class_names_are_refused_everywhere(tokenizer, tmp_path):
    clip = clip_for_tokenizer()
    with pytest.raises(ValueError, match=DUPLICATES_MESSAGE):
        PromptClassifier(clip, tokenizer, DUPLICATES)
    classifier = PromptClassifier(clip, tokenizer, ["cat", "dog"])
    with pytest.raises(ValueError, match=DUPLICATES_MESSAGE):
        classifier.class_names = DUPLICATES
    assert classifier.class_names == ["cat", "dog"]  # unchanged
    data = color_dataset(6)
    with pytest.raises(ValueError, match=DUPLICATES_MESSAGE):
        check_image_classification_dataset(data, DUPLICATES)
    with pytest.raises(ValueError, match=DUPLICATES_MESSAGE):
        evaluate(clip, data, DUPLICATES, tokenizer, image_processor())
    with pytest.raises(ValueError, match=DUPLICATES_MESSAGE):
        mudpt_peft.base_to_new(labelled([1] * 6, class_label=False), DUPLICATES)
    args = dict(args=quiet_args(tmp_path), image_processor=image_processor())
    with pytest.raises(ValueError, match=DUPLICATES_MESSAGE):
        PromptTuningTrainer(peft_model(), DUPLICATES, tokenizer, train_dataset=data, **args)


def test_many_duplicates_are_listed_briefly():
    names = [f"class {i % 50}" for i in range(100)]
    with pytest.raises(ValueError, match=r"50 name\(s\) occur more than once: 'class 0' \(2x\), .* and 45 more\.") as e:
        PromptClassifier(make_clip(), None, names)
    assert len(str(e.value)) <= MAX_MESSAGE


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["cat", None], r"must hold non-empty strings \(one per label\), got None \(a NoneType\) at index 1"),
        (["cat", 3], r"got 3 at index 1"),
        (["", "dog"], r"got '' \(a str\) at index 0"),
        ("cat", r"must be a non-empty list of class names in label order.*got 'cat' \(a str\)"),
        ({"cat": 0}, r"must be a non-empty list of class names"),
        (None, r"must be a non-empty list of class names"),
    ],
)
def test_class_names_are_non_empty_strings(names, message, tokenizer):
    with pytest.raises(ValueError, match=r"`class_names` .*" + message):
        PromptClassifier(clip_for_tokenizer(), tokenizer, names)


ONE_CLASS = r"with one class to choose from, the loss is 0 and the accuracy trivially 100 %, so nothing is learned"


def test_a_one_class_training_set_is_refused(tokenizer, tmp_path):
    data = color_dataset(6)
    args = dict(args=quiet_args(tmp_path), image_processor=image_processor())
    with pytest.raises(
        ValueError, match=r"PromptTuningTrainer needs at least 2 classes, got 1 \('cat'\): " + ONE_CLASS
    ):
        PromptTuningTrainer(peft_model(), ["cat"], tokenizer, train_dataset=color_dataset(3, classes=1), **args)
    # two class names, but the training examples are all of one class
    only_dogs = data.filter(lambda row: row["label"] == 1)
    with pytest.raises(ValueError, match=r"train_dataset: The training set holds examples of one class only \('dog'"):
        PromptTuningTrainer(peft_model(), COLOR_CLASSES, tokenizer, train_dataset=only_dogs, **args)
    # ...which is fine for an evaluation set (e.g. the accuracy on one class)
    trainer = PromptTuningTrainer(
        peft_model(), COLOR_CLASSES, tokenizer, train_dataset=data, eval_dataset=only_dogs, **args
    )
    assert trainer.class_names == COLOR_CLASSES
    with pytest.raises(ValueError, match=r"Training needs at least 2 classes, got 1 \('cat'\)"):
        check_image_classification_dataset(color_dataset(3, classes=1), ["cat"], training=True)
    check_image_classification_dataset(color_dataset(3, classes=1), ["cat"])  # not a training set


def test_few_shot_refuses_a_one_class_dataset():
    with pytest.raises(
        ValueError,
        match=r"`few_shot` builds a training set, which needs at least 2 classes; the "
        r"dataset has 1 \('cat'\): " + ONE_CLASS,
    ):
        few_shot(labelled([4]), shots=2)
    with pytest.raises(ValueError, match=r"the dataset has 1 \(0\)"):
        few_shot(labelled([4], class_label=False), shots=2)
    assert len(few_shot(labelled([2, 2]), shots=2)) == 4


# ---------------------------------------------------------------------------------------------------------------------
# text longer than the text tower's positions: refused as plain CLIP refuses it, never cut silently

MAX_POSITIONS, N_CTX = 16, 2


def text_model(eos_token_id: int = EOS_ID):
    """`(plain text tower, the same tower with a MuDPT adapter of N_CTX prompts)` of a tiny CLIP with 16 positions."""
    plain = make_clip(eos_token_id=eos_token_id)
    adapted = get_peft_model(make_clip(eos_token_id=eos_token_id), MuDPTConfig(depth=2, n_ctx=N_CTX))
    return plain.text_model, adapted.base_model.model.text_model


def words(length: int, seed: int = 0) -> torch.Tensor:
    """A row of BOS and `length - 1` word ids: no EOS."""
    generator = torch.Generator().manual_seed(seed)
    return torch.cat([torch.tensor([BOS_ID]), torch.randint(1, BOS_ID - 1, (length - 1,), generator=generator)])[None]


@pytest.mark.parametrize("with_mask", [False, True], ids=["no mask", "mask"])
@pytest.mark.parametrize("with_eos", [False, True], ids=["no EOS", "EOS"])
def test_over_long_text_is_refused_as_plain_clip_refuses_it(with_eos, with_mask):
    plain, adapted = text_model()
    input_ids = words(40)
    if with_eos:
        input_ids[0, 5:] = EOS_ID  # 4 words, then EOS and EOS padding: still longer than the tower
    inputs = {"input_ids": input_ids}
    if with_mask:
        inputs["attention_mask"] = (torch.arange(40) < (6 if with_eos else 40)).long()[None]
    with pytest.raises(ValueError, match="Sequence length must be less than max_position_embeddings"):
        plain(**inputs)
    with pytest.raises(
        ValueError,
        match=r"^The text inputs are 40 tokens long, but the text tower has only 16 positions, of which 2 go to the "
        r"learned prompt tokens. Tokenize with `max_length=14, truncation=True` \(16 positions - n_ctx\).$",
    ):
        adapted(**inputs)


def test_text_without_eos_that_fits_the_tower_but_not_the_prompts_is_refused():
    """16 tokens without EOS fill the 16 positions: nothing tells padding from text, so nothing is dropped (it was
    cut to 14 tokens silently). Plain CLIP takes them; with the 2 prompts they do not fit."""
    plain, adapted = text_model()
    input_ids = words(MAX_POSITIONS)
    plain(input_ids=input_ids)
    with pytest.raises(
        ValueError, match=r"hold 16 tokens that must be kept, and 2 learned prompt tokens .*max_length=14"
    ):
        adapted(input_ids=input_ids)
    with torch.no_grad():  # tokenized to fit: fine
        assert adapted(input_ids=input_ids[:, :14]).last_hidden_state.shape[1] == MAX_POSITIONS


@pytest.mark.parametrize("eos_token_id", [EOS_ID, 2], ids=["EOS id", "legacy argmax"])
def test_padding_after_eos_still_makes_room_for_the_prompts(eos_token_id):
    """Padded to the tower's length with EOS present, the prompts replace padding (with or without a mask); a row
    without EOS among them keeps all its tokens."""
    _, adapted = text_model(eos_token_id)
    short = make_inputs(batch=3, length=10)  # BOS, words, EOS; EOS padding; EOS_ID is the vocabulary's last id
    padded = torch.cat([short["input_ids"], torch.full((3, MAX_POSITIONS - 10), EOS_ID)], dim=1)
    mask = torch.cat([short["attention_mask"], torch.zeros(3, MAX_POSITIONS - 10, dtype=torch.long)], dim=1)
    with torch.no_grad():
        reference = adapted(input_ids=short["input_ids"]).pooler_output
        torch.testing.assert_close(adapted(input_ids=padded).pooler_output, reference, rtol=1e-6, atol=1e-6)
        with_mask = adapted(input_ids=padded, attention_mask=mask).pooler_output
        torch.testing.assert_close(
            with_mask, adapted(**{k: short[k] for k in ("input_ids", "attention_mask")}).pooler_output
        )
    no_eos = padded.clone()
    no_eos[1] = words(MAX_POSITIONS, seed=3)[0]
    with pytest.raises(ValueError, match=r"hold 16 tokens that must be kept"):
        adapted(input_ids=no_eos)


def test_the_classifier_tokenisation_still_works(tokenizer):
    """The classifier pads its prompts to the longest; with the prompts inserted they stay within the positions."""
    model = get_peft_model(clip_for_tokenizer(), MuDPTConfig(depth=2, n_ctx=N_CTX))
    classifier = PromptClassifier(model, tokenizer, CLASSIFIER_CLASSES).eval()
    features = classifier.encode_classes()
    assert features.shape == (len(CLASSIFIER_CLASSES), 24) and torch.isfinite(features).all()
    # text tokenized with the advised truncation fits too, however long it was
    long_text = tokenizer(
        ["a photo of a " * 10], truncation=True, max_length=MAX_POSITIONS - N_CTX, return_tensors="pt"
    )
    assert long_text["input_ids"].shape[1] == MAX_POSITIONS - N_CTX
    assert long_text["input_ids"][0, -1] == TOKENIZER_EOS_ID
    with torch.no_grad():
        out = model.get_text_features(**long_text).pooler_output
    assert torch.isfinite(out).all()
    too_long = tokenizer(["a photo of a " * 10], return_tensors="pt")
    with pytest.raises(ValueError, match=r"The text inputs are \d+ tokens long, .*`max_length=14, truncation=True`"):
        model.get_text_features(**too_long)
