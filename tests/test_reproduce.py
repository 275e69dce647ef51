"""`python -m mudpt_peft.reproduce`: every protocol end to end through the command's entry point, on synthetic datasets
written here in the benchmark's layouts and a tiny 12-layer CLIP saved to a folder with its tokenizer and image
processor; resuming, the refusals that come before any training, the dry run, the recipe table, and the tables'
exact markdown and CSV for fixed records."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from mudpt_peft import MuDPTConfig
from mudpt_peft import reproduce as reproduce_module
from mudpt_peft.benchmark_datasets import BENCHMARKS
from mudpt_peft.classifier import PromptClassifier
from mudpt_peft.evaluation import harmonic_mean
from mudpt_peft.methods import METHODS
from mudpt_peft.protocols import ELEVEN_DATASETS, PROTOCOLS, RECIPES, recipe_for, training_steps
from mudpt_peft.reproduce import RunStore, main
from mudpt_peft.tables import MATPLOTLIB_MISSING, format_tables, plot_fewshot, write_tables
from mudpt_peft.templates import IMAGENET_7_TEMPLATES

from .helpers import (
    TOKENIZER_EOS_ID,
    image_processor,
    make_clip,
    make_tokenizer_files,
    write_aircraft,
    write_class_folders,
    write_classnames,
    write_split_file_dataset,
)

# tiny models: one thread (several threads on the shared cores make each step many times slower)
pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
#: class names the tiny tokenizer spells letter by letter
NAMES = ["cat", "dog", "zebra", "fox"]
WNIDS = ["n01000001", "n02000002", "n03000003", "n04000004"]


def _save_clip(folder, layers: int):
    model = make_clip(eos_token_id=TOKENIZER_EOS_ID, text_layers=layers, vision_layers=layers, max_positions=77)
    model.save_pretrained(folder)
    make_tokenizer_files(folder)
    image_processor().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """A data root with EuroSAT (split file), FGVC-Aircraft, ImageNet, ImageNet-V2 and ImageNet-A in their layouts
    (4 classes, 3 training, 1 validation and 2 test images each), and a 12-layer tiny CLIP folder."""
    base = tmp_path_factory.mktemp("reproduce")
    root = base / "data"
    spec = BENCHMARKS["eurosat"]
    entries = {
        split: [(f"{name}/{split}{i}.png", label, name) for label, name in enumerate(NAMES) for i in range(count)]
        for split, count in (("train", 3), ("val", 1), ("test", 2))
    }
    write_split_file_dataset(root / spec.folder, spec.split_file, spec.image_folder, entries)
    lines = {
        split: [(f"{split}{label}{i}", name) for label, name in enumerate(NAMES) for i in range(count)]
        for split, count in (("train", 3), ("val", 1), ("test", 2))
    }
    write_aircraft(root / BENCHMARKS["fgvc_aircraft"].folder, NAMES, lines)
    imagenet = root / BENCHMARKS["imagenet"].folder
    write_classnames(imagenet, dict(zip(WNIDS, NAMES, strict=True)))
    write_class_folders(imagenet / "images" / "train", {wnid: [f"{i}.png" for i in range(3)] for wnid in WNIDS})
    write_class_folders(imagenet / "images" / "val", {wnid: [f"{i}.png" for i in range(2)] for wnid in WNIDS})
    v2 = BENCHMARKS["imagenetv2"]
    write_classnames(root / v2.folder, dict(zip(WNIDS, NAMES, strict=True)))
    write_class_folders(root / v2.folder / v2.image_folder, {str(label): ["a.jpeg", "b.jpeg"] for label in range(4)})
    adversarial = BENCHMARKS["imagenet_a"]
    write_classnames(root / adversarial.folder, dict(zip(WNIDS, NAMES, strict=True)))
    write_class_folders(root / adversarial.folder / adversarial.image_folder, {wnid: ["a.jpg"] for wnid in WNIDS[1:]})
    return {"root": root, "backbone": _save_clip(base / "clip", 12), "base": base}


def _args(bench, output, protocol, *more):
    return [protocol, "--root", str(bench["root"]), "--backbone", str(bench["backbone"]), "--output", str(output),
            "--max-steps", "1", "--device", "cpu", *more]  # fmt: skip


@pytest.fixture
def trainings(monkeypatch):
    """Counts the trainings; `interrupt_at` raises KeyboardInterrupt instead of that (1-based) training."""
    state = {"count": 0, "interrupt_at": None}
    original = reproduce_module._Session._train

    def counted(self, run):
        state["count"] += 1
        if state["count"] == state["interrupt_at"]:
            raise KeyboardInterrupt
        return original(self, run)

    monkeypatch.setattr(reproduce_module._Session, "_train", counted)
    return state


def _records(output):
    return [json.loads(line) for line in (output / "runs.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------------------------------
# the protocols end to end


def test_fewshot_end_to_end_interrupted_after_the_first_training_and_resumed(bench, tmp_path, trainings, capsys):
    output = tmp_path / "out"
    args = _args(bench, output, "fewshot", "--datasets", "eurosat", "fgvc_aircraft", "--methods", "coop", "mudpt",
                 "--seeds", "1", "2", "--shots", "1", "--zero-shot")  # fmt: skip
    trainings["interrupt_at"] = 2
    with pytest.raises(KeyboardInterrupt):
        main(args)
    # zero-shot on both datasets and the first training are recorded, and the tables show them
    done = _records(output)
    assert [(r["dataset"], r["method"], r["seed"]) for r in done] == [
        ("eurosat", "zero-shot", None), ("fgvc_aircraft", "zero-shot", None), ("eurosat", "coop", 1)
    ]  # fmt: skip
    assert "| coop | – | " in (output / "fewshot.md").read_text()
    trainings.update(count=0, interrupt_at=None)
    assert main(args) == 0
    assert trainings["count"] == 7  # only the runs not done: 2 datasets x 2 seeds x 2 methods - 1
    records = _records(output)
    assert len(records) == 2 + 8
    keys = {(r["protocol"], r["dataset"], r["method"], r["seed"], r["shots"]) for r in records}
    assert len(keys) == len(records)  # one record per (protocol, dataset, method, seed, shots)
    coop = next(r for r in records if r["method"] == "coop" and r["dataset"] == "eurosat" and r["seed"] == 2)
    assert coop["recipe"]["template"] == "{}." and coop["recipe"]["config"]["n_ctx"] == 16
    assert coop["recipe"]["training"] == {"learning_rate": 0.002, "per_device_train_batch_size": 32,
                                          "num_train_epochs": 50}  # fmt: skip
    assert coop["recipe"]["training_overrides"] == {"max_steps": 1} and coop["steps"] == 1
    assert coop["train_examples"] == 4 and coop["metrics"]["num_examples"] == 8  # 1 shot of 4 classes; 8 test images
    assert coop["adapter_config"]["n_ctx"] == 16 and coop["adapter_config"]["peft_type"] == "MUDPT"
    assert {"mudpt_peft", "torch", "transformers", "peft", "datasets", "python"} <= set(coop["versions"])
    assert set(coop["seconds"]) == {"train", "evaluate"}
    assert (output / coop["adapter"] / "adapter_config.json").is_file()
    assert (output / coop["adapter"] / "README.md").is_file()  # with the model card
    # a ready classifier of the training classes, with the processor files beside it
    from transformers import CLIPModel

    from mudpt_peft import PromptClassifier

    base = CLIPModel.from_pretrained(bench["backbone"])
    classifier = PromptClassifier.from_pretrained(base, output / coop["adapter"])
    assert len(classifier.class_names) == 4 and classifier.template == "{}."
    assert classifier.image_processor is not None
    zero_shot = next(r for r in records if r["method"] == "zero-shot" and r["dataset"] == "eurosat")
    assert zero_shot["templates"] == ["a centered satellite photo of {}."]
    table = (output / "fewshot.md").read_text()
    assert "## Average over 2 datasets" in table and "## FGVCAircraft" in table and "## EuroSAT" in table
    assert re.search(r"\| coop \| – \| \d+\.\d\d ± \d+\.\d\d \|", table)
    assert (output / "fewshot.csv").read_text().startswith("dataset,method,shots,mean,std,seeds\nAverage,zero-shot,0,")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert MATPLOTLIB_MISSING in capsys.readouterr().err
        assert not (output / "fewshot.png").exists()
    else:
        assert (output / "fewshot.png").is_file()
    # a third run has nothing left to do
    trainings["count"] = 0
    assert main(args) == 0 and trainings["count"] == 0 and len(_records(output)) == 10


def test_base2new_trains_on_the_base_classes_and_tests_base_and_new(bench, tmp_path, trainings):
    output = tmp_path / "out"
    assert main(_args(bench, output, "base2new", "--datasets", "eurosat", "--methods", "maple", "--seeds", "1",
                      "--zero-shot")) == 0  # fmt: skip
    assert trainings["count"] == 1
    zero_shot, maple = _records(output)
    for record in (zero_shot, maple):
        metrics = record["metrics"]
        assert metrics["base"]["num_examples"] == metrics["new"]["num_examples"] == 4  # 2 classes x 2 test images
        base, new = metrics["base"]["accuracy"], metrics["new"]["accuracy"]
        assert metrics["hm"] == pytest.approx(0.0 if base + new == 0 else 2 * base * new / (base + new))
    assert maple["shots"] == 16 and maple["train_examples"] == 6  # all 3 training images of the 2 base classes
    assert maple["recipe"]["config"]["ctx_init"] == "a photo" and maple["recipe"]["template"] == "of a {}."
    assert maple["adapter_config"]["ctx_init_token_ids"] is not None and maple["adapter_config"]["n_ctx"] == 2
    table = (output / "base2new.md").read_text()
    assert "| method | Base | New | HM |" in table and "| maple | " in table and "## EuroSAT" in table


def test_a_changed_recipe_is_refused_with_the_runs_named(bench, tmp_path, trainings, capsys):
    output = tmp_path / "out"
    arguments = ["--datasets", "eurosat", "--methods", "coop", "--seeds", "1", "--shots", "1"]
    assert main(_args(bench, output, "fewshot", *arguments, "--no-save-adapters")) == 0
    assert not (output / "adapters").exists() and "adapter" not in _records(output)[0]
    changed = [*_args(bench, output, "fewshot", *arguments), "--max-steps", "2"]
    capsys.readouterr()
    assert main(changed) == 2
    error = capsys.readouterr().err
    assert "runs.jsonl holds 1 run(s) made with another recipe" in error
    assert "fewshot eurosat coop, seed 1, 1 shots: recorded" in error and "pass another --output" in error
    assert trainings["count"] == 1 and len(_records(output)) == 1
    assert main([*changed, "--dry-run"]) == 0
    assert "| 1 | EuroSAT | EuroSAT | coop | 1 | 1 | 50 | 0.002 | 32 | 2 | 64 | recorded with another recipe |" in (
        capsys.readouterr().out
    )


def test_zero_shot_alone_with_coop_s_prompt_ensemble(bench, tmp_path, trainings):
    output = tmp_path / "out"
    assert main(_args(bench, output, "fewshot", "--datasets", "eurosat", "--methods", "--zero-shot", "ensemble")) == 0
    (record,) = _records(output)
    assert trainings["count"] == 0 and record["method"] == "zero-shot-ensemble" and record["seed"] is None
    assert record["templates"] == [*IMAGENET_7_TEMPLATES, "a centered satellite photo of {}."]
    assert "| zero-shot-ensemble | " in (output / "fewshot.md").read_text()


def test_cross_dataset_then_domain_generalization_evaluates_the_same_imagenet_adapter(
    bench, tmp_path, trainings, monkeypatch
):
    output = tmp_path / "out"
    assert main(_args(bench, output, "cross_dataset", "--datasets", "eurosat", "fgvc_aircraft", "--methods", "mudpt",
                      "--seeds", "1", "--zero-shot")) == 0  # fmt: skip
    assert trainings["count"] == 1
    records = _records(output)
    assert [(r["dataset"], r["method"], r.get("role")) for r in records] == [
        ("imagenet", "zero-shot", "source"), ("eurosat", "zero-shot", "target"),
        ("fgvc_aircraft", "zero-shot", "target"), ("imagenet", "mudpt", "source"),
        ("eurosat", "mudpt", "target"), ("fgvc_aircraft", "mudpt", "target"),
    ]  # fmt: skip
    mudpt = records[3:]
    assert {r["trained_on"] for r in mudpt} == {"imagenet"} and len({r["adapter"] for r in mudpt}) == 1
    assert [r["metrics"]["num_examples"] for r in mudpt] == [8, 8, 8]
    assert mudpt[0]["recipe"]["training"]["num_train_epochs"] == 5 and mudpt[0]["train_examples"] == 12
    assert mudpt[0]["seconds"]["train"] > 0 and mudpt[1]["seconds"]["train"] == 0
    header = "| method | ImageNet (source) | FGVCAircraft | EuroSAT | Average |"
    assert header in (output / "cross_dataset.md").read_text()
    # domain generalisation: the cross-dataset recipe, so the adapter is evaluated, not trained again; ImageNet-V2 has
    # ImageNet's classes, so their class prompts are encoded once for both (ImageNet-A's subset once more)
    trainings["count"] = 0
    encodings, original = [], PromptClassifier._encode_classes
    monkeypatch.setattr(PromptClassifier, "_encode_classes", lambda self: encodings.append(1) or original(self))
    assert main(_args(bench, output, "domain_generalization", "--datasets", "imagenetv2", "imagenet_a", "--methods",
                      "mudpt", "--seeds", "1")) == 0  # fmt: skip
    assert trainings["count"] == 0 and len(encodings) == 2
    generalisation = [r for r in _records(output) if r["protocol"] == "domain_generalization"]
    assert [(r["dataset"], r["role"], r["adapter_reloaded"]) for r in generalisation] == [
        ("imagenet", "source", True), ("imagenetv2", "target", True), ("imagenet_a", "target", True)
    ]  # fmt: skip
    assert generalisation[0]["recipe_hash"] == mudpt[0]["recipe_hash"]
    assert [r["metrics"]["num_examples"] for r in generalisation] == [8, 8, 3]  # ImageNet-A: 3 classes, 1 image each
    table = (output / "domain_generalization.md").read_text()
    assert "| method | ImageNet (source) | ImageNet-V2 | ImageNet-A | Average |" in table


# ------------------------------------------------------------------------------------------------------------------
# refusals before anything runs, and the dry run


def test_a_misspelt_method_fails_before_anything_is_loaded_or_written(tmp_path, monkeypatch, capsys):
    def fail(*args, **kwargs):
        raise AssertionError("nothing may be loaded")

    monkeypatch.setattr(reproduce_module._Session, "prepare", fail)
    output = tmp_path / "out"
    status = main(["fewshot", "--root", str(tmp_path), "--output", str(output), "--methods", "coop", "mapel"])
    assert status == 2 and not output.exists()
    assert "error: Unknown method 'mapel'; choose one of coop, cocoop, vpt, ivlp" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["fewshot", "--datasets", "imagenet_r"], r"ImageNet-R is a test set only: fewshot trains on each dataset"),
        (["base2new", "--shots", "8", "16"], r"base2new trains with one shot count \(16 in the papers\)"),
        (["cross_dataset", "--datasets", "imagenet"], r"--datasets lists the source 'imagenet'"),
        (["cross_dataset", "--source", "imagenet_a"], r"ImageNet-A is a test set only; train on ImageNet"),
        (["fewshot", "--datasets", "cifar10"], r"Unknown benchmark dataset 'cifar10'"),
        (["fewshot", "--shots", "0"], r"--shots must be integers >= 1"),
        (["fewshot"], r"--root \(the benchmark data root, CoOp's \$DATA\) is required"),
    ],
)  # fmt: skip
def test_invalid_arguments_are_named(arguments, message, tmp_path, capsys):
    root = [] if arguments == ["fewshot"] else ["--root", str(tmp_path)]
    assert main([*arguments, *root, "--output", str(tmp_path / "out")]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_missing_data_and_a_too_shallow_backbone_fail_before_training(bench, tmp_path, trainings, capsys):
    shallow = _save_clip(tmp_path / "shallow", 4)
    arguments = ["base2new", "--root", str(bench["root"]), "--output", str(tmp_path / "out"), "--datasets", "eurosat"]
    assert main([*arguments, "--backbone", str(shallow), "--methods", "maple"]) == 2
    assert "The base2new recipe of maple prompts 9 text layers, but the backbone" in capsys.readouterr().err
    assert main([*arguments[:-1], "oxford_pets", "--backbone", str(bench["backbone"]), "--methods", "coop"]) == 2
    assert "The dataset folder " in capsys.readouterr().err
    assert trainings["count"] == 0 and not (tmp_path / "out").exists()


def test_the_dry_run_lists_the_runs_and_their_recipes_without_data(tmp_path, capsys):
    output = tmp_path / "out"
    status = main(["fewshot", "--dry-run", "--output", str(output), "--datasets", "imagenet", "eurosat", "--methods",
                   "coop", "maple", "--seeds", "1", "--shots", "1", "16", "--zero-shot"])  # fmt: skip
    assert status == 0 and not output.exists()
    text = capsys.readouterr().out
    assert text.startswith("fewshot (Few-shot learning; ")
    assert ": 9 runs, 0 done, backbone openai/clip-vit-base-patch16" in text
    # ImageNet: CoOp's 50 epochs for every shot count; 1000 classes x 16 shots / batch 32 = 500 steps per epoch
    assert "| 4 | ImageNet | ImageNet | coop | 1 | 16 | 50 | 0.002 | 32 | 25000 | 800000 | pending |" in text
    # EuroSAT, 1 shot: 10 images, fewer than a batch of 32, so one step per epoch, 50 epochs
    assert "| 6 | EuroSAT | EuroSAT | coop | 1 | 1 | 50 | 0.002 | 32 | 50 | 500 | pending |" in text
    assert "| 9 | EuroSAT | EuroSAT | maple | 1 | 16 | 5 | 0.0035 | 4 | 200 | 800 | pending |" in text
    assert "- maple (not official): " in text and "note: no official few-shot config" in text
    assert "epochs by shots <= 1: 50, <= 4: 100, <= 16: 200" in text and "- zero-shot: KaiyangZhou/CoOp" in text


def test_the_command_has_a_help_and_a_console_script(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "{fewshot,base2new,cross_dataset,domain_generalization}" in capsys.readouterr().out
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'mudpt-reproduce = "mudpt_peft.reproduce:main"' in pyproject


# ------------------------------------------------------------------------------------------------------------------
# the recipe table


def test_every_method_has_a_recipe_for_every_protocol_that_builds_a_config():
    for protocol in PROTOCOLS:
        for method in METHODS:
            recipe = recipe_for(protocol, method, "eurosat", 16)
            MuDPTConfig.for_method(method, **recipe.config)
            assert recipe.source and (recipe.official or recipe.note), (protocol, method)
            assert set(recipe.training) == {"learning_rate", "num_train_epochs", "per_device_train_batch_size"}
    assert {protocol for protocol, _ in RECIPES} == {"fewshot", "base2new", "cross_dataset"}


def test_the_recipes_follow_the_official_configs():
    def facts(protocol, method, dataset="eurosat", shots=16):
        recipe = recipe_for(protocol, method, dataset, shots)
        training, config = recipe.training, recipe.config
        return (training["learning_rate"], training["num_train_epochs"], training["per_device_train_batch_size"],
                config.get("n_ctx"), config["depth"], config.get("ctx_init"), recipe.template)  # fmt: skip

    # CoOp: 16 random context tokens in few-shot learning, 50 / 100 / 200 epochs by shots, 50 on ImageNet
    assert [facts("fewshot", "coop", shots=k)[1] for k in (1, 2, 4, 8, 16)] == [50, 100, 100, 200, 200]
    assert facts("fewshot", "coop", "imagenet", 16) == (0.002, 50, 32, 16, 1, None, "{}.")
    assert facts("base2new", "coop") == (0.002, 200, 32, 4, 1, "a photo of a", "{}.")
    assert facts("base2new", "coop", "imagenet")[1] == 50
    assert facts("cross_dataset", "coop", "imagenet") == (0.002, 50, 32, 4, 1, "a photo of a", "{}.")
    # MaPLe: depth 3, LR 0.0026, 2 epochs on ImageNet for cross-dataset transfer and domain generalisation
    assert facts("base2new", "maple") == (0.0035, 5, 4, 2, 9, "a photo", "of a {}.")
    assert facts("cross_dataset", "maple", "imagenet") == (0.0026, 2, 4, 2, 3, "a photo", "of a {}.")
    assert recipe_for("domain_generalization", "maple", "imagenet", 16) == recipe_for(
        "cross_dataset", "maple", "imagenet", 16
    )
    assert facts("base2new", "ivlp") == (0.0035, 5, 4, 2, 12, "a photo", "of a {}.")
    assert facts("base2new", "vpt")[:3] == (0.0025, 5, 4) and facts("base2new", "vpt")[-1] == "a photo of a {}."
    assert [facts(p, "mudpt")[1] for p in ("fewshot", "base2new", "cross_dataset")] == [10, 10, 5]
    assert facts("fewshot", "mudpt")[3:] == (2, 9, "a photo", "{}.")
    # the MuDPT scripts run trainers/mudpt.py (`mudpt-linear`); the Injection Model (`mudpt`) gets their recipe too
    assert [facts(p, "mudpt-linear")[:2] for p in ("fewshot", "cross_dataset")] == [(0.0025, 10), (0.0025, 5)]
    assert RECIPES[("base2new", "mudpt-linear")].official and not RECIPES[("base2new", "mudpt")].official
    assert "no official script runs trainers/uumudpt.py" in RECIPES[("base2new", "mudpt")].note
    assert not RECIPES[("fewshot", "maple")].official and RECIPES[("base2new", "maple")].official
    assert not RECIPES[("cross_dataset", "cross-attention")].official
    assert "configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx_cross_datasets.yaml" in RECIPES[
        ("cross_dataset", "maple")
    ].source
    # Dassl drops the last incomplete batch when there is a full one
    assert [training_steps(n, 4, 5) for n in (3, 4, 7, 8)] == [5, 5, 5, 10]


# ------------------------------------------------------------------------------------------------------------------
# the results file


def test_an_interrupted_last_line_is_dropped_and_other_damage_is_named(tmp_path, capsys):
    path = tmp_path / "runs.jsonl"
    good = {"protocol": "fewshot", "dataset": "eurosat", "method": "coop", "seed": 1, "shots": 1, "recipe_hash": "a"}
    path.write_text(json.dumps(good) + '\n{"protocol": "fews')
    store = RunStore(path)
    assert store.records == [good] and path.read_text() == json.dumps(good) + "\n"
    assert "line 2 is incomplete (an interrupted write); dropping it" in capsys.readouterr().err
    path.write_text('{"protocol"\n' + json.dumps(good) + "\n")
    with pytest.raises(ValueError, match=r"Line 1 of .*runs\.jsonl is not a JSON record"):
        RunStore(path)
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "recipe_hash": "b"}) + "\n")
    with pytest.raises(ValueError, match=r"two records of \('fewshot', 'eurosat', 'coop', 1, 1\) with different"):
        RunStore(path).conflicts([])


# ------------------------------------------------------------------------------------------------------------------
# the tables, exactly, for fixed records


def _record(protocol, dataset, method, seed, shots, metrics, source, official=True, note="", role=None):
    record = {"protocol": protocol, "dataset": dataset, "method": method, "seed": seed, "shots": shots,
              "metrics": metrics, "recipe": {"official": official, "source": source, "note": note}}  # fmt: skip
    if role:
        record["role"] = role
    return record


def _fewshot_records():
    acc = lambda value: {"accuracy": value}  # noqa: E731
    return [
        _record("fewshot", "eurosat", "zero-shot", None, 0, acc(40.0), "zs"),
        _record("fewshot", "fgvc_aircraft", "zero-shot", None, 0, acc(20.0), "zs"),
        *(_record("fewshot", d, "coop", s, 1, acc(v), "src-coop")
          for d, s, v in (("eurosat", 1, 50.0), ("eurosat", 2, 60.0), ("fgvc_aircraft", 1, 30.0),
                          ("fgvc_aircraft", 2, 40.0))),
        *(_record("fewshot", d, "coop", s, 2, acc(v), "src-coop")
          for d, s, v in (("eurosat", 1, 70.0), ("eurosat", 2, 70.0), ("fgvc_aircraft", 1, 45.0))),
        _record("fewshot", "eurosat", "mudpt", 1, 1, acc(55.0), "src-mudpt", official=False, note="a note"),
        _record("base2new", "eurosat", "coop", 1, 16, {}, "other protocols are left out"),
    ]  # fmt: skip


FEWSHOT_MD = """\
# Few-shot learning

Top-1 accuracy (%) on each dataset's test split after training on K shots per class (mean ± std over seeds 1, 2). \
Zero-shot CLIP is the `0 shots` column. The average is over the datasets below, computed per seed.

## Average over 2 datasets

| method | 0 shots | 1 shot | 2 shots |
| --- | ---: | ---: | ---: |
| zero-shot | 30.00 | – | – |
| coop | – | 45.00 ± 5.00 | 57.50 |
| mudpt | – | – | – |

## FGVCAircraft

| method | 0 shots | 1 shot | 2 shots |
| --- | ---: | ---: | ---: |
| zero-shot | 20.00 | – | – |
| coop | – | 35.00 ± 5.00 | 45.00 |
| mudpt | – | – | – |

## EuroSAT

| method | 0 shots | 1 shot | 2 shots |
| --- | ---: | ---: | ---: |
| zero-shot | 40.00 | – | – |
| coop | – | 55.00 ± 5.00 | 70.00 ± 0.00 |
| mudpt | – | 55.00 | – |

## Recipes

- `zero-shot` (official): zs
- `coop` (official): src-coop
- `mudpt` (not official): src-mudpt. a note

Written by `python -m mudpt_peft.reproduce fewshot` from `runs.jsonl` (10 records).
"""

FEWSHOT_CSV = """\
dataset,method,shots,mean,std,seeds
Average,zero-shot,0,30.00,,
Average,coop,1,45.00,5.00,1 2
Average,coop,2,57.50,,1
FGVCAircraft,zero-shot,0,20.00,,
FGVCAircraft,coop,1,35.00,5.00,1 2
FGVCAircraft,coop,2,45.00,,1
EuroSAT,zero-shot,0,40.00,,
EuroSAT,coop,1,55.00,5.00,1 2
EuroSAT,coop,2,70.00,0.00,1 2
EuroSAT,mudpt,1,55.00,,1
"""


def test_the_fewshot_table_mean_std_over_seeds_and_the_average_per_seed(tmp_path):
    markdown, table = format_tables("fewshot", _fewshot_records())
    assert markdown == FEWSHOT_MD
    assert table == FEWSHOT_CSV
    written = write_tables("fewshot", _fewshot_records(), tmp_path)
    assert (tmp_path / "fewshot.md").read_text() == FEWSHOT_MD and (tmp_path / "fewshot.csv").read_text() == FEWSHOT_CSV
    assert written[:2] == [tmp_path / "fewshot.md", tmp_path / "fewshot.csv"]


def test_the_fewshot_plot_or_the_message_without_matplotlib(tmp_path):
    drawn = plot_fewshot(_fewshot_records(), tmp_path / "fewshot.png")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert drawn is False and not (tmp_path / "fewshot.png").exists()
        assert MATPLOTLIB_MISSING == "matplotlib is not installed: no plot (pip install matplotlib)"
    else:
        assert drawn is True and (tmp_path / "fewshot.png").stat().st_size > 0


def _base2new_records():
    b2n = lambda base, new: {"base": {"accuracy": base}, "new": {"accuracy": new}}  # noqa: E731
    return [
        _record("base2new", "eurosat", "zero-shot", None, 0, b2n(60.0, 70.0), "zs"),
        _record("base2new", "fgvc_aircraft", "zero-shot", None, 0, b2n(20.0, 30.0), "zs"),
        _record("base2new", "eurosat", "coop", 1, 16, b2n(80.0, 40.0), "src-coop"),
        _record("base2new", "eurosat", "coop", 2, 16, b2n(90.0, 50.0), "src-coop"),
        _record("base2new", "fgvc_aircraft", "coop", 1, 16, b2n(40.0, 31.0), "src-coop"),
        _record("base2new", "fgvc_aircraft", "coop", 2, 16, b2n(40.0, 31.0), "src-coop"),
        _record("base2new", "eurosat", "maple", 1, 16, b2n(70.0, 60.0), "src-maple"),
    ]


BASE2NEW_MD = """\
# Base-to-new generalisation

Top-1 accuracy (%) of one adapter per seed, trained on 16 shots of the base classes (the first half of the labels), \
on the base classes' and on the new classes' test images (mean over seeds 1, 2). HM: the harmonic mean of the mean \
base and new accuracies; on the average row, of the averaged base and new accuracies.

## Average over 2 datasets

| method | Base | New | HM |
| --- | ---: | ---: | ---: |
| zero-shot | 40.00 | 50.00 | 44.44 |
| coop | 62.50 | 38.00 | 47.26 |
| maple | – | – | – |

## FGVCAircraft

| method | Base | New | HM |
| --- | ---: | ---: | ---: |
| zero-shot | 20.00 | 30.00 | 24.00 |
| coop | 40.00 | 31.00 | 34.93 |
| maple | – | – | – |

## EuroSAT

| method | Base | New | HM |
| --- | ---: | ---: | ---: |
| zero-shot | 60.00 | 70.00 | 64.62 |
| coop | 85.00 | 45.00 | 58.85 |
| maple | 70.00 | 60.00 | 64.62 |

## Recipes

- `zero-shot` (official): zs
- `coop` (official): src-coop
- `maple` (official): src-maple

Written by `python -m mudpt_peft.reproduce base2new` from `runs.jsonl` (7 records).
"""

BASE2NEW_CSV = """\
dataset,method,seeds,base,new,hm
Average,zero-shot,,40.00,50.00,44.44
Average,coop,1 2,62.50,38.00,47.26
FGVCAircraft,zero-shot,,20.00,30.00,24.00
FGVCAircraft,coop,1 2,40.00,31.00,34.93
EuroSAT,zero-shot,,60.00,70.00,64.62
EuroSAT,coop,1 2,85.00,45.00,58.85
EuroSAT,maple,1,70.00,60.00,64.62
"""


def test_the_base2new_table_and_the_harmonic_mean_of_the_averages():
    markdown, table = format_tables("base2new", _base2new_records())
    assert markdown == BASE2NEW_MD
    assert table == BASE2NEW_CSV
    # the average row's HM is that of the averaged accuracies, not the mean of the datasets' HMs (46.89)
    assert (58.85 + 34.93) / 2 == pytest.approx(46.89)


def _transfer_records():
    acc = lambda value: {"accuracy": value}  # noqa: E731
    cross = [
        _record("cross_dataset", "imagenet", "zero-shot", None, 0, acc(66.0), "zs", role="source"),
        _record("cross_dataset", "fgvc_aircraft", "zero-shot", None, 0, acc(24.0), "zs", role="target"),
        _record("cross_dataset", "eurosat", "zero-shot", None, 0, acc(48.0), "zs", role="target"),
        *(_record("cross_dataset", d, "maple", s, 16, acc(v), "src-maple", role=role)
          for d, role, values in (("imagenet", "source", (70.0, 72.0)), ("fgvc_aircraft", "target", (25.0, 27.0)),
                                  ("eurosat", "target", (45.0, 49.0)))
          for s, v in zip((1, 2), values, strict=True)),
        _record("cross_dataset", "imagenet", "mudpt", 1, 16, acc(71.0), "src-mudpt", role="source"),
        _record("cross_dataset", "eurosat", "mudpt", 1, 16, acc(50.0), "src-mudpt", role="target"),
    ]  # fmt: skip
    generalisation = [
        _record("domain_generalization", d, "maple", 1, 16, acc(v), "src-maple", role=role)
        for d, role, v in (("imagenet", "source", 70.0), ("imagenet_a", "target", 50.0),
                           ("imagenetv2", "target", 64.0))
    ]  # fmt: skip
    return cross + generalisation


CROSS_MD = """\
# Cross-dataset transfer

Top-1 accuracy (%) on each dataset's test split of one adapter per seed trained on the source (mean over seeds 1, \
2). Average: over the target datasets.

| method | ImageNet (source) | FGVCAircraft | EuroSAT | Average |
| --- | ---: | ---: | ---: | ---: |
| zero-shot | 66.00 | 24.00 | 48.00 | 36.00 |
| maple | 71.00 | 26.00 | 47.00 | 36.50 |
| mudpt | 71.00 | – | 50.00 | – |

## Recipes

- `zero-shot` (official): zs
- `maple` (official): src-maple
- `mudpt` (official): src-mudpt

Written by `python -m mudpt_peft.reproduce cross_dataset` from `runs.jsonl` (11 records).
"""

CROSS_CSV = """\
method,seeds,ImageNet (source),FGVCAircraft,EuroSAT,Average
zero-shot,,66.00,24.00,48.00,36.00
maple,1 2,71.00,26.00,47.00,36.50
mudpt,1,71.00,,50.00,
"""

GENERALISATION_MD = """\
# Domain generalisation

Top-1 accuracy (%) on each dataset's test split of one adapter per seed trained on the source (mean over seeds 1). \
Average: over the target datasets (ImageNet's variants).

| method | ImageNet (source) | ImageNet-V2 | ImageNet-A | Average |
| --- | ---: | ---: | ---: | ---: |
| maple | 70.00 | 64.00 | 50.00 | 57.00 |

## Recipes

- `maple` (official): src-maple

Written by `python -m mudpt_peft.reproduce domain_generalization` from `runs.jsonl` (3 records).
"""

GENERALISATION_CSV = """\
method,seeds,ImageNet (source),ImageNet-V2,ImageNet-A,Average
maple,1,70.00,64.00,50.00,57.00
"""


def test_the_cross_dataset_and_domain_generalization_tables():
    assert format_tables("cross_dataset", _transfer_records()) == (CROSS_MD, CROSS_CSV)
    assert format_tables("domain_generalization", _transfer_records()) == (GENERALISATION_MD, GENERALISATION_CSV)
    with pytest.raises(ValueError, match=r"Unknown protocol 'xd'"):
        format_tables("xd", [])


# ------------------------------------------------------------------------------------------------------------------
# the guide states the recipe table and the step counts as the code has them


def _recipe_table() -> str:
    lines = ["| protocol | method | official | LR | epochs | batch | preset overrides | template |",
             "| --- | --- | --- | ---: | --- | ---: | --- | --- |"]  # fmt: skip
    for (protocol, method), row in RECIPES.items():
        training = row.training
        if row.epochs_by_shots:
            epochs = ", ".join(f"{e} (≤ {k} shot{'s' * (k != 1)})" for k, e in row.epochs_by_shots)
        else:
            epochs = str(training["num_train_epochs"])
        epochs += "".join(f"; {BENCHMARKS[d].title}: {v['num_train_epochs']}" for d, v in row.dataset_training.items())
        overrides = ", ".join(f"`{k}={v!r}`" for k, v in row.config.items()) or "–"
        official, batch = "yes" if row.official else "no", training["per_device_train_batch_size"]
        lines.append(f"| {protocol} | {method} | {official} | {training['learning_rate']} | {epochs} | {batch} | "
                     f"{overrides} | `{row.template}` |")  # fmt: skip
    return "\n".join(lines)


def test_the_guide_has_the_recipe_table_and_the_step_counts_of_the_code():
    guide = (ROOT / "docs" / "reproduce.md").read_text()
    assert _recipe_table() in guide
    for dataset in ELEVEN_DATASETS:
        classes = BENCHMARKS[dataset].num_classes
        cells = []
        for protocol, trained in (("fewshot", classes), ("base2new", math.ceil(classes / 2))):
            steps = {}
            for method in ("coop", "vpt", "ivlp", "maple", "mudpt"):
                training = recipe_for(protocol, method, dataset, 16).training
                steps[method] = training_steps(
                    trained * 16, training["per_device_train_batch_size"], training["num_train_epochs"]
                )
            assert steps["vpt"] == steps["ivlp"] == steps["maple"]
            cells += [f"{steps[m]:,}" for m in ("coop", "maple", "mudpt")]
        row = f"| {BENCHMARKS[dataset].title} | {classes} ({math.ceil(classes / 2)}) | " + " | ".join(cells) + " |"
        assert row in guide, row
    assert "Reproduce the papers' tables: reproduce.md" in (ROOT / "mkdocs.yml").read_text()


def test_the_published_base_to_new_averages_follow_the_harmonic_mean_of_the_averages():
    guide = (ROOT / "docs" / "reproduce.md").read_text()
    published = re.findall(r"^\| ([^|]+?) \| (\d+\.\d\d) \| (\d+\.\d\d) \| (\d+\.\d\d) \| [^|]+ \|", guide, re.M)
    assert len(published) == 7 and published[0][0] == "CLIP (zero-shot)" and published[-1][0] == "PromptSRC"
    for method, base, new, hm in published:
        assert f"{harmonic_mean(float(base), float(new)):.2f}" == hm, method


def test_cocoop_runs_base2new_with_its_official_prompt(bench, tmp_path, trainings):
    """CoCoOp's per-image class encoding goes through the same runner: trained once, base and new evaluated."""
    output = tmp_path / "out"
    assert main(_args(bench, output, "base2new", "--datasets", "eurosat", "--methods", "cocoop", "--seeds", "1")) == 0
    assert trainings["count"] == 1
    (cocoop,) = _records(output)
    assert cocoop["recipe"]["official"] and cocoop["recipe"]["template"] == "{}."
    assert cocoop["recipe"]["config"]["ctx_init"] == "a photo of a" and cocoop["adapter_config"]["n_ctx"] == 4
    assert cocoop["adapter_config"]["fusion"] == "meta_net"
    assert cocoop["metrics"]["base"]["num_examples"] == cocoop["metrics"]["new"]["num_examples"] == 4


def test_regularised_methods_train_with_their_objective_and_the_protocol_s_arguments():
    """PromptSRC's Gaussian aggregation differs per protocol: the runner builds its objective from the recipe."""
    import mudpt_peft.reproduce as reproduce
    from mudpt_peft.losses import KgCoOpObjective, PromptSRCObjective

    assert recipe_for("cross_dataset", "promptsrc", "imagenet", 16).objective == {"gpa_mean": 6, "gpa_std": 10}
    assert recipe_for("base2new", "promptsrc", "eurosat", 16).config["depth"] == 9
    assert isinstance(reproduce._objective("kgcoop", {}), KgCoOpObjective)
    built = reproduce._objective("promptsrc", {"gpa_mean": 6, "gpa_std": 10})
    assert isinstance(built, PromptSRCObjective) and (built.aggregation.mean, built.aggregation.std) == (6, 10)
    assert type(reproduce._objective("maple", {})).__name__ == "TrainingObjective"
