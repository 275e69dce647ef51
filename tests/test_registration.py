"""`import mudpt_peft` registers MUDPT with peft, robustly and idempotently."""

from __future__ import annotations

import copy
import glob
import json
import os
import pickle
import shutil
import subprocess
from pathlib import Path

import pytest
from peft import PeftConfig, PeftModel, get_peft_model
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils import PeftType

import mudpt_peft
from mudpt_peft import MuDPTConfig, MuDPTModel

from .helpers import make_clip

ENUM_HELPER = Path(mudpt_peft.__file__).parent / "_enum.py"


def test_peft_type_member_and_mappings():
    assert PeftType.MUDPT is mudpt_peft.MUDPT_PEFT_TYPE
    assert PeftType("MUDPT") is PeftType.MUDPT and PeftType["MUDPT"] is PeftType.MUDPT
    assert PeftType.MUDPT in list(PeftType) and PeftType.MUDPT == "MUDPT"
    assert PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.MUDPT] is MuDPTConfig
    assert PEFT_TYPE_TO_TUNER_MAPPING[PeftType.MUDPT] is MuDPTModel
    assert PEFT_TYPE_TO_PREFIX_MAPPING[PeftType.MUDPT] == "mudpt_"
    assert json.dumps({"peft_type": PeftType.MUDPT}) == '{"peft_type": "MUDPT"}'
    assert pickle.loads(pickle.dumps(PeftType.MUDPT)) is PeftType.MUDPT
    assert copy.deepcopy(PeftType.MUDPT) is PeftType.MUDPT


def test_registration_is_idempotent():
    members_before = list(PeftType)
    mudpt_peft.register_mudpt()
    mudpt_peft.register_mudpt()
    assert list(PeftType) == members_before
    assert mudpt_peft._enum.extend_str_enum(PeftType, "MUDPT") is PeftType.MUDPT
    with pytest.raises(ValueError, match="already exists"):
        mudpt_peft._enum.extend_str_enum(PeftType, "MUDPT", "OTHER")
    with pytest.raises(ValueError, match="already used"):
        mudpt_peft._enum.extend_str_enum(PeftType, "LORA_TWIN", "LORA")


def test_config_roundtrip_through_peft_config(tmp_path):
    config = MuDPTConfig(depth=3, n_ctx=3, injection_layers=2, base_model_name_or_path="tiny")
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "MUDPT" and saved["depth"] == 3
    for loader in (PeftConfig.from_pretrained, MuDPTConfig.from_pretrained):
        loaded = loader(tmp_path)
        assert isinstance(loaded, MuDPTConfig)
        assert loaded.to_dict() == config.to_dict()


def test_get_peft_model_and_from_pretrained_use_the_registration(tmp_path):
    model = get_peft_model(make_clip(), MuDPTConfig(depth=2))
    assert isinstance(model.base_model, MuDPTModel)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(make_clip(), tmp_path)
    assert isinstance(loaded.base_model, MuDPTModel)


def _find_python(version: str) -> str | None:
    """An interpreter of `version` that runs: on PATH, or installed by pyenv (whose shims may not select it)."""
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = [
        shutil.which(f"python{version}"),
        *sorted(glob.glob(f"{pyenv_root}/versions/{version}.*/bin/python")),
    ]
    for candidate in filter(None, candidates):
        probe = subprocess.run(
            [candidate, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True, timeout=60
        )
        if probe.returncode == 0 and f"(3, {version.split('.')[1]})" in probe.stdout:
            return candidate
    return None


@pytest.mark.parametrize("version", ["3.10", "3.11", "3.12", "3.13"])
def test_enum_extension_on_each_python(version):
    """The enum helper has no dependencies, so it runs under every supported interpreter that is installed here."""
    python = _find_python(version)
    if python is None:
        pytest.skip(f"python{version} is not installed")
    script = f"""
import copy, enum, json, pickle, sys, importlib.util
spec = importlib.util.spec_from_file_location("_enum", {str(ENUM_HELPER)!r})
module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
class PeftType(str, enum.Enum):
    LORA = "LORA"
member = module.extend_str_enum(PeftType, "MUDPT")
assert module.extend_str_enum(PeftType, "MUDPT") is member
assert PeftType.MUDPT is member and PeftType("MUDPT") is member and PeftType["MUDPT"] is member
assert list(PeftType) == [PeftType.LORA, member] and len(PeftType) == 2 and member == "MUDPT"
assert json.dumps(member) == '"MUDPT"'
sys.modules["__main__"].PeftType = PeftType
assert pickle.loads(pickle.dumps(member)) is member and copy.deepcopy(member) is member
print(sys.version_info[:2])
"""
    result = subprocess.run([python, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"(3, {version.split('.')[1]})" in result.stdout
