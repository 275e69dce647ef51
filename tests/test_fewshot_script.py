"""`examples/fewshot.py`: its inputs (image folders with `--test_split`, `save_to_disk` folders, column names), its
argument checks before any training, an instant `--help`, and what a run leaves: a self-describing `metrics.json` and
a ready classifier per tuned method."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest
from PIL import Image
from transformers import CLIPModel, CLIPProcessor, CLIPTokenizer

from mudpt_peft import MuDPTConfig, PromptClassifier
from mudpt_peft.evaluation import evaluate

from .helpers import clip_for_tokenizer, image_processor, make_tokenizer_files, write_png

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "fewshot.py"
sys.path.insert(0, str(ROOT / "examples"))
import fewshot  # noqa: E402

#: Class names the tiny tokenizer spells (letters only), in the alphabetical order an image folder gives them.
NAMES = ["cat", "dog", "zebra"]
COLORS = {"a": 0, "cat": 30, "dog": 130, "zebra": 230}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny CLIP with its processor (the tiny tokenizer, 16x16 images), as a local model folder."""
    folder = tmp_path_factory.mktemp("model")
    clip_for_tokenizer().save_pretrained(folder)
    tokenizer = CLIPTokenizer.from_pretrained(make_tokenizer_files(folder / "tokenizer"))
    CLIPProcessor(image_processor=image_processor(), tokenizer=tokenizer).save_pretrained(folder)
    return folder


def flat_folder(root: Path, per_class: int = 10, names: list[str] = NAMES) -> Path:
    """`<class>/*.png`: one solid colour per class (a learnable task), `per_class` images each."""
    for name in names:
        for index in range(per_class):
            write_png(root / name / f"{index}.png", value=COLORS[name] + index, size=20)
    return root


def run(model_dir: Path, output: Path, *extra: str) -> dict:
    argv = ["--model", str(model_dir), "--shots", "2", "--epochs", "1", "--batch_size", "3", "--lr", "0.01"]
    return fewshot.main([*argv, "--output_dir", str(output), *extra])


def test_help_is_instant_and_imports_nothing_heavy():
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=True)
    elapsed = time.perf_counter() - start
    assert "--test_split" in done.stdout and "--methods" in done.stdout and "--image_column" in done.stdout
    assert elapsed < 10  # measured 0.2 s; generous for a loaded machine (it took 14-23 s with top-level imports)
    code = f"import sys; sys.argv = ['fewshot.py', '--help']; sys.path.insert(0, {str(SCRIPT.parent)!r})\n"
    code += "import fewshot\ntry:\n    fewshot.build_parser().parse_args(['--help'])\nexcept SystemExit:\n    pass\n"
    code += "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'peft') if m in sys.modules))"
    modules = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert modules.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--methods", "zero-shot,mudpt,mapel"], "Unknown method 'mapel'"),
        (["--methods", "coop,CoOp"], "names 'CoOp' twice"),
        (["--methods", ","], "names no method"),
        (["--shots", "0"], "--shots must be >= 1"),
        (["--lr", "-1"], "--lr must be > 0"),
        (["--epochs", "nan"], "--epochs must be > 0"),
        (["--batch_size", "0"], "--batch_size must be >= 1"),
        (["--num_workers", "-2"], "--num_workers must be >= 0"),
        (["--test_split", "1.5"], "--test_split must be a fraction"),
        (["--test_split", "0.3"], "'digits8x8' has its own"),
        (["--template", "a {} of {}"], "--template"),
        (["--model", "/no/such/folder"], "--model '/no/such/folder' is neither a local folder nor a Hub model id"),
        (["--dataset", "./no/such"], "--dataset './no/such' is neither a local folder nor a Hub dataset id"),
    ],
)
def test_every_argument_is_checked_before_anything_runs(extra, message, capsys, monkeypatch):
    monkeypatch.setattr(fewshot, "load_data", lambda args: pytest.fail("the data were loaded"))
    with pytest.raises(SystemExit) as exit_info:
        fewshot.main(extra)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_flat_class_folder_with_test_split_leaves_a_ready_classifier(model_dir, tmp_path):
    images = flat_folder(tmp_path / "colors")
    record = run(model_dir, tmp_path / "out", "--dataset", str(images), "--methods", "zero-shot,mudpt", "--test_split",
                 "0.3")  # fmt: skip
    info = record["dataset"]
    assert info["classes"] == NAMES and info["num_classes"] == 3 and info["source"] == "imagefolder"
    assert info["name"] == "colors" and info["shots"] == 2 and info["seed"] == 1
    assert (info["train_pool_size"], info["test_size"], info["train_size"]) == (21, 9, 6)  # 3 of 10 per class held out
    on_disk = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(record))
    assert set(on_disk["versions"]) >= {"mudpt-peft", "peft", "transformers", "torch", "datasets", "python"}
    assert str(tmp_path) not in json.dumps(on_disk) and on_disk["model"] == model_dir.name  # no local path
    zero, tuned = on_disk["methods"]["zero_shot"], on_disk["methods"]["mudpt"]
    preset = MuDPTConfig.for_method("mudpt")
    assert zero["config"] is None and tuned["config"]["peft_type"] == "MUDPT"
    assert tuned["config"]["fusion"] == preset.fusion and tuned["config"]["n_ctx"] == preset.n_ctx
    assert tuned["config"]["depth"] == 4  # the preset's depth capped at the tiny model's 4 layers
    assert tuned["training"]["learning_rate"] == 0.01 and tuned["training"]["per_device_train_batch_size"] == 3
    for entry in (zero, tuned):
        result = entry["results"]["test"]
        assert "top5_accuracy" not in result  # 3 classes
        assert list(result["per_class_accuracy"]) == NAMES
        assert sum(map(sum, result["confusion_matrix"])) == result["num_examples"] == 9
        assert [sum(row) for row in result["confusion_matrix"]] == [3, 3, 3]  # stratified
    assert on_disk["accuracy"] == {"zero_shot": zero["results"]["test"]["accuracy"],
                                   "mudpt": tuned["results"]["test"]["accuracy"]}  # fmt: skip

    # the classifier of the run, in three lines, with the processor saved beside it
    folder = tmp_path / "out" / "mudpt"
    files = {path.name for path in folder.iterdir()}
    assert {"prompt_classifier.json", "processor_config.json", "tokenizer_config.json", "README.md"} <= files
    classifier = PromptClassifier.from_pretrained(CLIPModel.from_pretrained(model_dir), folder)
    assert classifier.class_names == NAMES and classifier.template == "a photo of a {}."
    # it reproduces the run's evaluation exactly, on the same held-out images
    held = datasets.load_dataset("imagefolder", data_dir=str(images))["train"]
    held = held.train_test_split(test_size=0.3, seed=1, stratify_by_column="label")["test"]
    again = evaluate(
        classifier.model, held, NAMES, classifier.tokenizer, classifier.image_processor, return_predictions=True
    )
    assert again["confusion_matrix"] == tuned["results"]["test"]["confusion_matrix"]
    assert again["accuracy"] == tuned["results"]["test"]["accuracy"]
    predicted = classifier.predict([held[i]["image"] for i in range(len(held))])
    assert predicted == [NAMES[index] for index in again["predictions"]]
    card = (folder / "README.md").read_text()
    assert "## Evaluation" in card and f"{tuned['results']['test']['accuracy']:.2f}" in card
    # the pictures: curves and confusion matrix of the tuned method, the confusion matrix of zero-shot
    assert tuned["pictures"] == ["mudpt/training_curves.png", "mudpt/confusion_matrix.png"]
    assert zero["pictures"] == ["zero_shot/confusion_matrix.png"]
    for name in tuned["pictures"] + zero["pictures"]:
        with Image.open(tmp_path / "out" / name) as picture:
            assert picture.format == "PNG" and picture.width > 300 and picture.height > 300
    curve = tuned["training"]["held_out_accuracy_history"]
    steps = tuned["training"]["steps"]
    assert curve and all(0 < point["step"] <= steps for point in curve)
    if curve[-1]["step"] == steps:  # evaluated at the end of training: the run's own test evaluation
        assert curve[-1]["accuracy"] == pytest.approx(tuned["results"]["test"]["accuracy"])
    assert str(tmp_path) not in card and "pip install mudpt-peft\n" not in card


def test_a_preset_that_does_not_fit_the_model_fails_before_the_first_method(model_dir, tmp_path):
    images = flat_folder(tmp_path / "colors", per_class=4)
    with pytest.raises(ValueError, match=r"--methods coop: its preset does not fit the model: `n_ctx`=16"):
        run(model_dir, tmp_path / "out", "--dataset", str(images), "--methods", "zero-shot,mudpt,coop", "--test_split",
            "0.5")  # fmt: skip
    assert not (tmp_path / "out").exists()  # nothing ran, nothing was written


def test_a_saved_dataset_dict_with_other_column_names(model_dir, tmp_path):
    def split(count: int, offset: int) -> datasets.Dataset:
        images = [write_png(tmp_path / "png" / f"{offset + i}.png", 40 * (i % 3) + i, 20) for i in range(count)]
        features = datasets.Features({"picture": datasets.Image(), "kind": datasets.ClassLabel(names=NAMES)})
        rows = {"picture": [str(path) for path in images], "kind": [i % 3 for i in range(count)]}
        return datasets.Dataset.from_dict(rows, features=features)

    datasets.DatasetDict({"train": split(9, 0), "validation": split(6, 100)}).save_to_disk(tmp_path / "saved")
    with pytest.raises(ValueError, match=r"no column 'image' \(its columns: \['picture', 'kind'\]\): pass the right "):
        run(model_dir, tmp_path / "out", "--dataset", str(tmp_path / "saved"), "--methods", "mudpt")
    assert not (tmp_path / "out" / "mudpt").exists()  # nothing trained
    record = run(model_dir, tmp_path / "out", "--dataset", str(tmp_path / "saved"), "--methods", "zero-shot",
                 "--image_column", "picture", "--label_column", "kind")  # fmt: skip
    info = record["dataset"]
    assert info["source"] == "load_from_disk" and info["test_split"] == "validation" and info["test_size"] == 6
    assert info["classes"] == NAMES and info["train_size"] == 6
    # one saved Dataset (no splits) needs --test_split
    split(9, 200).save_to_disk(tmp_path / "one")
    with pytest.raises(ValueError, match="pass --test_split FRACTION"):
        run(model_dir, tmp_path / "out2", "--dataset", str(tmp_path / "one"), "--image_column", "picture",
            "--label_column", "kind")  # fmt: skip


def test_metrics_of_the_embedded_default_record_top5_with_more_than_5_classes(tmp_path):
    """The embedded digits (10 classes), zero-shot only: top-5 is reported, and the model is named by its repository
    path, not an absolute one."""
    record = fewshot.main(["--methods", "zero-shot", "--shots", "1", "--output_dir", str(tmp_path / "out")])
    result = record["methods"]["zero_shot"]["results"]["test"]
    assert "top5_accuracy" in result and len(result["per_class_accuracy"]) == 10
    assert record["model"] == "examples/assets/tiny-clip" and record["dataset"]["test_size"] == 1797 - 10


def test_base_to_new_records_both_halves_and_saves_the_base_classifier(model_dir, tmp_path):
    four = ["a", *NAMES]
    images = flat_folder(tmp_path / "colors", per_class=6, names=four)
    record = run(model_dir, tmp_path / "out", "--dataset", str(images), "--methods", "zero-shot,mudpt", "--test_split",
                 "0.5", "--base_to_new")  # fmt: skip
    info = record["dataset"]
    assert info["base_to_new"] and info["base_classes"] == four[:2] and info["new_classes"] == four[2:]
    for key in ("zero_shot", "mudpt"):
        results = record["methods"][key]["results"]
        assert list(results["base"]["per_class_accuracy"]) == four[:2] and results["base"]["num_examples"] == 6
        assert list(results["new"]["per_class_accuracy"]) == four[2:] and results["new"]["num_examples"] == 6
        expected_hm = fewshot_hm(results["base"]["accuracy"], results["new"]["accuracy"])
        assert record["accuracy"][key] == {
            "base": results["base"]["accuracy"], "new": results["new"]["accuracy"], "hm": expected_hm
        }  # fmt: skip
    classifier = PromptClassifier.from_pretrained(CLIPModel.from_pretrained(model_dir), tmp_path / "out" / "mudpt")
    assert classifier.class_names == four[:2]  # trained on the base classes
    assert record["methods"]["zero_shot"]["pictures"] == [
        "zero_shot/confusion_matrix_base.png", "zero_shot/confusion_matrix_new.png"
    ]  # fmt: skip
    assert all((tmp_path / "out" / name).is_file() for name in record["methods"]["mudpt"]["pictures"])


def fewshot_hm(base: float, new: float) -> float:
    return 0.0 if base + new == 0 else 2 * base * new / (base + new)
