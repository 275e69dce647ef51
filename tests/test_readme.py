"""The README's quickstart runs as written."""

from __future__ import annotations

import json
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_quickstart_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python code block"
    exec(compile(blocks[0], str(README), "exec"), {"__name__": "__readme__"})
    out = capsys.readouterr().out
    assert "trainable params" in out and "torch.Size([2, 2])" in out


def test_readme_names_the_ci_test_command():
    ci = (README.parent / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in README.read_text() and "bash scripts/test.sh" in ci


def test_readme_reuse_of_a_run_classifies_in_three_lines(tmp_path, capsys):
    """The 'Reuse a run' lines, on the folder a (short) run of examples/fewshot.py leaves: they print the class the
    reloaded classifier predicts, the one the run's own model predicts."""
    import sys

    import torch
    from peft import PeftModel
    from PIL import Image
    from transformers import AutoProcessor, CLIPModel

    import mudpt_peft

    root = README.parent
    sys.path.insert(0, str(root / "examples"))
    import fewshot
    import tiny_clip_data

    text = README.read_text()
    section = text[text.index("## Reuse a run") :]
    code = re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]
    assert len(code.strip().splitlines()) == 3
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        output = tmp_path / "out" / "main"
        fewshot.main(["--methods", "mudpt", "--shots", "1", "--epochs", "1", "--output_dir", str(output)])
        digits = tiny_clip_data.load_dataset("digits8x8", "test")
        digits.pil_images()[3].save(tmp_path / "digit.png")
        code = code.replace('"examples/assets/tiny-clip"', repr(str(root / "examples" / "assets" / "tiny-clip")))
        code = code.replace('"out/main/mudpt"', repr(str(output / "mudpt"))).replace(
            '"digit.png"', repr(str(tmp_path / "digit.png"))
        )
        capsys.readouterr()
        exec(compile(code, str(README), "exec"), {"torch": torch, "mudpt_peft": mudpt_peft, "Image": Image,
                                                  "CLIPModel": CLIPModel})  # fmt: skip
        printed = capsys.readouterr().out.strip()
        # the same, by hand: the adapter on the base model, the base model's processor, the class names of the run
        base = root / "examples" / "assets" / "tiny-clip"
        model = PeftModel.from_pretrained(CLIPModel.from_pretrained(base, dtype=torch.float32), output / "mudpt")
        processor = AutoProcessor.from_pretrained(base)
        names = json.loads((output / "metrics.json").read_text())["dataset"]["classes"]
        template = tiny_clip_data.TEMPLATES["digits8x8"][0]
        by_hand = mudpt_peft.PromptClassifier(model, processor.tokenizer, names, template, processor.image_processor)
        expected = by_hand.eval().predict([Image.open(tmp_path / "digit.png")])
    finally:
        torch.set_num_threads(threads)
    assert printed == repr(expected) and expected[0] in tiny_clip_data.DIGIT_NAMES
