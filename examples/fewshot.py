"""Few-shot prompt tuning and evaluation of a CLIP model with MuDPT (or any method preset), on one data set.

With no arguments it runs offline on the embedded default: the project's tiny pretrained CLIP
(`examples/assets/tiny-clip`) and scikit-learn's 8x8 digits, a task that model never saw in pretraining:

    python examples/fewshot.py --methods zero-shot,coop,maple,mudpt --shots 16

Point it at your own model and data the same way:

    python examples/fewshot.py --model openai/clip-vit-base-patch16 --dataset my_images/ --test_split 0.3

`--dataset` is an embedded data set, an HF dataset id, a folder saved with `datasets`' `save_to_disk` (a
`DatasetDict` or one `Dataset`), or an image folder (`<class>/*.png`, or `train/<class>/...` with `test/` or
`validation/`); a data set without a test or validation split needs `--test_split FRACTION` (a seeded, stratified
hold-out). Every argument is checked, and the data loaded, before anything is trained.

It trains each method with `mudpt_peft.PromptTuningTrainer` (the method's default recipe unless `--epochs`, `--lr`,
`--batch_size` say otherwise), evaluates zero-shot and tuned accuracy on the held-out images (base / new / harmonic
mean with `--base_to_new`), prints a table, and writes to `--output_dir`:

- `metrics.json`: the library versions, the data set (name, classes, sizes, shots, seed), each method's config and
  training arguments, and its results (top-1, top-5 with more than 5 classes, per-class accuracy, confusion matrix);
- `<method>/`: a ready classifier per tuned method (the adapter, `prompt_classifier.json`, the processor files and a
  model card with the evaluation), which `PromptClassifier.from_pretrained(base_model, "<output_dir>/<method>")`
  loads;
- `<method>/training_curves.png` (the training loss, and the held-out accuracy at `--curve_points` points of the
  training, for the picture only) and `<method>/confusion_matrix.png` (`zero_shot/` too), when matplotlib is
  installed (the `examples` extra has it).

Heavy libraries (torch, transformers, datasets) are imported inside the functions, so that `--help` is instant.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

EXAMPLES = Path(__file__).resolve().parent
EMBEDDED_MODEL = EXAMPLES / "assets" / "tiny-clip"
EMBEDDED_DATASETS = ("digits8x8", "mnist", "fashion_mnist", "animal_mnist")
ZERO_SHOT = ("zero-shot", "zero_shot", "zeroshot")
DEFAULT_TEMPLATE = "a photo of a {}."


@dataclass
class FewShotArguments:
    """Command-line arguments of the few-shot script (see `build_parser` for the help of each)."""

    model: str = str(EMBEDDED_MODEL)
    dataset: str = "digits8x8"
    methods: str = "zero-shot,mudpt"
    shots: int = 16
    seed: int = 1
    epochs: float | None = None
    lr: float | None = None
    batch_size: int | None = None
    template: str | None = None
    base_to_new: bool = False
    test_split: float | None = None
    image_column: str = "image"
    label_column: str = "label"
    num_workers: int = 0
    curve_points: int = 10
    output_dir: str = "out/fewshot"


HELP = {
    "model": "CLIP model id or directory (default: the embedded tiny CLIP).",
    "dataset": (
        f"An embedded data set ({', '.join(EMBEDDED_DATASETS)}), an HF dataset id, a `save_to_disk` folder, or an "
        "image folder (<class>/*.png)."
    ),
    "methods": "Comma-separated: zero-shot and/or presets (coop, vpt, ivlp, maple, mudpt, ...).",
    "shots": "Training examples per class.",
    "seed": "Seed of the few-shot sample, of the --test_split hold-out and of training.",
    "epochs": "Epochs (default: the method's recipe).",
    "lr": "Learning rate (default: the method's recipe).",
    "batch_size": "Batch size (default: the method's recipe).",
    "template": "Class prompt template with {} (default per data set).",
    "base_to_new": "Train on the first half of the classes only; evaluate on base and new classes.",
    "test_split": "Hold out this fraction (0-1) of each class for testing (seeded, stratified), for a data set "
    "without a test or validation split.",
    "image_column": "Image column of the data set.",
    "label_column": "Label column of the data set (a ClassLabel: its names are the class names).",
    "num_workers": "DataLoader worker processes for training and evaluation.",
    "curve_points": "Evaluations on the held-out images during training, for the accuracy curve only (never used to "
    "select anything; 0: none).",
    "output_dir": "Where metrics.json and the classifiers go.",
}


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (standard library only: `--help` imports nothing heavy)."""
    parser = argparse.ArgumentParser(
        prog="fewshot.py",
        description="Few-shot prompt tuning and evaluation of a CLIP model with MuDPT (or any method preset).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    types = {"int": int, "float": float, "str": str}
    for item in fields(FewShotArguments):
        if item.type == "bool":
            parser.add_argument(f"--{item.name}", action="store_true", help=HELP[item.name])
            continue
        kind = types[str(item.type).split(" |")[0]]
        parser.add_argument(f"--{item.name}", type=kind, default=item.default, help=HELP[item.name])
    return parser


def method_keys(methods: str) -> list[str]:
    """The methods of `--methods`, as `metrics.json` keys (`zero_shot`, or a `mudpt_peft.methods.METHODS` name); a
    `ValueError` for an unknown or repeated name."""
    from mudpt_peft.methods import normalize_method

    keys = []
    for name in (part.strip() for part in methods.split(",")):
        if not name:
            continue
        try:
            key = "zero_shot" if name.lower() in ZERO_SHOT else normalize_method(name)
        except ValueError as error:
            raise ValueError(f"--methods: {error} (or zero-shot)") from None
        if key in keys:
            raise ValueError(f"--methods names {name!r} twice.")
        keys.append(key)
    if not keys:
        raise ValueError("--methods names no method.")
    return keys


def check_args(args: FewShotArguments) -> list[str]:
    """Check every argument that can be checked without the data; return the method keys."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    from mudpt_peft._utils import check_template

    keys = method_keys(args.methods)
    if args.shots < 1:
        raise ValueError(f"--shots must be >= 1, got {args.shots}.")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}.")
    for name in ("epochs", "lr"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"--{name} must be > 0, got {value}.")
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {args.batch_size}.")
    if args.num_workers < 0:
        raise ValueError(f"--num_workers must be >= 0, got {args.num_workers}.")
    if args.curve_points < 0:
        raise ValueError(f"--curve_points must be >= 0, got {args.curve_points}.")
    if args.test_split is not None and not 0 < args.test_split < 1:
        raise ValueError(f"--test_split must be a fraction between 0 and 1, got {args.test_split}.")
    if args.test_split is not None and args.dataset in EMBEDDED_DATASETS:
        raise ValueError(f"--test_split is for data sets without a test split; {args.dataset!r} has its own.")
    if args.template is not None:
        try:
            check_template(args.template)
        except ValueError as error:
            raise ValueError(f"--template: {error}") from None
    if Path(args.output_dir).is_file():
        raise ValueError(f"--output_dir {args.output_dir!r} is a file.")
    for option, value, kind in (("--model", args.model, "model"), ("--dataset", args.dataset, "dataset")):
        if value in EMBEDDED_DATASETS or Path(value).is_dir():
            continue
        try:
            validate_repo_id(value)
        except HFValidationError:
            raise ValueError(f"{option} {value!r} is neither a local folder nor a Hub {kind} id.") from None
    return keys


def parse_args(argv: list[str] | None = None) -> tuple[FewShotArguments, list[str]]:
    """The arguments and the method keys, checked (a usage error exits with status 2)."""
    parser = build_parser()
    args = FewShotArguments(**vars(parser.parse_args(argv)))
    try:
        return args, check_args(args)
    except ValueError as error:
        parser.error(str(error))


# ------------------------------------------------------------------------------------------------------------------
# data


def is_saved_dataset(path: Path) -> bool:
    """Whether `path` is a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`."""
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def load_data(args: FewShotArguments) -> dict[str, Any]:
    """The data of `args.dataset`: `train` (the few-shot sample), `test`, `class_names`, `template` and `info` (what
    `metrics.json` records of it). Columns are renamed to `image` / `label`; a `ValueError` says what is wrong."""
    import datasets

    from mudpt_peft.data import few_shot

    source, test_name = "embedded", "test"
    if args.dataset in EMBEDDED_DATASETS:
        sys.path.insert(0, str(EXAMPLES))
        import tiny_clip_data

        def to_dataset(split) -> datasets.Dataset:
            features = datasets.Features(
                {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(split.class_names))}
            )
            return datasets.Dataset.from_dict(
                {"image": split.pil_images(), "label": split.labels.tolist()}, features=features
            )

        template = tiny_clip_data.TEMPLATES[args.dataset][0]
        if args.dataset == "digits8x8":  # one split only: the few-shot sample is drawn from it, the rest is the test
            every = to_dataset(tiny_clip_data.load_dataset("digits8x8", "test"))
            every = every.add_column("_index", list(range(len(every))))
            train = few_shot(every, args.shots, args.seed)
            chosen = set(train["_index"])
            test = every.select([i for i in range(len(every)) if i not in chosen]).remove_columns("_index")
            pool, train = every.remove_columns("_index"), train.remove_columns("_index")
        else:
            pool = to_dataset(tiny_clip_data.load_dataset(args.dataset, "train"))
            test = to_dataset(tiny_clip_data.load_dataset(args.dataset, "test"))
            train = few_shot(pool, args.shots, args.seed)
        names = list(pool.features["label"].names)
        return _data(args, train, test, names, template, source, len(pool), test_name)

    path = Path(args.dataset)
    if path.is_dir() and is_saved_dataset(path):
        source, data = "load_from_disk", datasets.load_from_disk(str(path))
    elif path.is_dir():
        source, data = "imagefolder", datasets.load_dataset("imagefolder", data_dir=str(path))
    else:
        source, data = "hub", datasets.load_dataset(args.dataset)
    if isinstance(data, datasets.Dataset):  # one saved Dataset: the pool to hold out from
        data = datasets.DatasetDict({"train": data})
    if "train" not in data:
        raise ValueError(f"{args.dataset!r} has no 'train' split (it has {list(data)}).")
    data = datasets.DatasetDict({name: _standard_columns(split, args, name) for name, split in data.items()})
    test_name = next((name for name in ("test", "validation") if name in data), None)
    pool = data["train"]
    if args.test_split is not None:
        if test_name is not None:
            raise ValueError(f"{args.dataset!r} has its own {test_name!r} split: drop --test_split.")
        held = pool.train_test_split(test_size=args.test_split, seed=args.seed, stratify_by_column="label")
        pool, test, test_name = held["train"], held["test"], f"held out ({args.test_split:g} of each class)"
    elif test_name is None:
        raise ValueError(
            f"{args.dataset!r} has no 'test' or 'validation' split to evaluate on (it has {list(data)}): pass "
            "--test_split FRACTION to hold out a seeded, stratified part of each class."
        )
    else:
        test = data[test_name]
    names = list(pool.features["label"].names)
    train = few_shot(pool, args.shots, args.seed)
    return _data(args, train, test, names, DEFAULT_TEMPLATE, source, len(pool), test_name)


def _standard_columns(split: Any, args: FewShotArguments, name: str) -> Any:
    """`split` with its image and label columns named `image` / `label`, checked."""
    import datasets

    for column, option in ((args.image_column, "--image_column"), (args.label_column, "--label_column")):
        if column not in split.column_names:
            raise ValueError(
                f"The {name!r} split of {args.dataset!r} has no column {column!r} (its columns: {split.column_names}): "
                f"pass the right {option}."
            )
    renames = {old: new for old, new in ((args.image_column, "image"), (args.label_column, "label")) if old != new}
    clashes = [new for new in renames.values() if new in split.column_names]
    if clashes:
        split = split.remove_columns(clashes)
    split = split.rename_columns(renames) if renames else split
    if not isinstance(split.features["label"], datasets.ClassLabel):
        raise ValueError(
            f"The label column {args.label_column!r} of {args.dataset!r} is not a `datasets.ClassLabel`, so its "
            "class names are unknown: cast it with `dataset.cast_column(column, datasets.ClassLabel(names=[...]))`."
        )
    return split


def _data(
    args: FewShotArguments, train: Any, test: Any, names: list[str], template: str, source: str, pool: int, split: str
) -> dict[str, Any]:
    template = args.template or template
    info = {
        "name": args.dataset if source in ("embedded", "hub") else Path(args.dataset).name,
        "source": source,
        "classes": names,
        "num_classes": len(names),
        "shots": args.shots,
        "seed": args.seed,
        "train_pool_size": pool,
        "train_size": len(train),
        "test_split": split,
        "test_split_fraction": args.test_split,
        "test_size": len(test),
        "template": template,
        "base_to_new": args.base_to_new,
    }
    return {"train": train, "test": test, "class_names": names, "template": template, "info": info}


# ------------------------------------------------------------------------------------------------------------------
# the run


def preset(method: str, model: Any, **overrides: Any) -> Any:
    """The method's preset, with its depth capped at the model's layer count (tiny models have few layers)."""
    from mudpt_peft import MuDPTConfig

    config = MuDPTConfig.for_method(method, **overrides)
    layers = min(model.config.text_config.num_hidden_layers, model.config.vision_config.num_hidden_layers)
    if config.depth > layers:
        config = MuDPTConfig.for_method(method, **{"depth": layers, **overrides})
    return config


def method_configs(methods: list[str], model: Any) -> dict[str, Any]:
    """Each tuned method's config, checked against the model before any method trains (a preset that does not fit,
    e.g. CoOp's 16 prompt tokens in a text tower of 16 positions, fails here, not after the earlier methods)."""
    from mudpt_peft.families import get_family_spec
    from mudpt_peft.model import validate_against_model

    configs = {}
    for key in methods:
        if key == "zero_shot":
            continue
        config = preset(key, model)
        try:
            validate_against_model(config, model, get_family_spec(model))
        except ValueError as error:
            raise ValueError(f"--methods {key}: its preset does not fit the model: {error}") from None
        configs[key] = config
    return configs


def versions() -> dict[str, str]:
    """The versions of the libraries a result depends on."""
    import datasets
    import peft
    import torch
    import transformers

    import mudpt_peft

    return {
        "mudpt-peft": mudpt_peft.__version__,
        "peft": peft.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "datasets": datasets.__version__,
        "python": platform.python_version(),
    }


def model_name(model: str) -> str:
    """The model as `metrics.json` records it: a Hub id as given, a local folder by its path relative to the
    repository when inside it (the embedded tiny CLIP), else by its name; never an absolute path."""
    path = Path(model)
    if not path.is_dir():
        return model
    resolved = path.resolve()
    root = EXAMPLES.parent
    return resolved.relative_to(root).as_posix() if resolved.is_relative_to(root) else resolved.name


def json_safe(value: Any) -> Any:
    """`value` with tuples, sets and other non-JSON values turned into lists / strings (for configs)."""
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [json_safe(item) for item in (sorted(value, key=str) if isinstance(value, set) else value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(getattr(value, "value", value))


def write_pictures(
    folder: Path, key: str, results: dict[str, Any], training: dict[str, Any] | None, splits: dict[str, Any]
) -> list[str]:
    """The method's PNGs in `folder`: its training curves (tuned methods) and the confusion matrix of each evaluated
    split; their file names (relative to `folder`'s parent), or none without matplotlib."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("matplotlib is not installed: no pictures (pip install matplotlib)")
        return []
    from mudpt_peft.plots import plot_confusion_matrix, plot_training_curves

    written = []
    if training is not None:
        plot_training_curves(
            training["log_history"], folder / "training_curves.png", title=f"{key}: training",
            accuracy_label="held-out accuracy (%)",
        )  # fmt: skip
        written.append(f"{key}/training_curves.png")
    for split, result in results.items():
        if not isinstance(result, dict) or "confusion_matrix" not in result:
            continue
        name = "confusion_matrix.png" if len(splits) == 1 else f"confusion_matrix_{split}.png"
        accuracy = result["accuracy"]
        plot_confusion_matrix(result["confusion_matrix"], splits[split][2], folder / name,
                              title=f"{key} on the {split} images: top-1 {accuracy:.1f} %")  # fmt: skip
        written.append(f"{key}/{name}")
    return written


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the script; return what it writes to `metrics.json`."""
    args, methods = parse_args(argv)
    import torch
    from peft import get_peft_model
    from transformers import AutoProcessor, CLIPModel, set_seed

    from mudpt_peft import PromptClassifier, PromptTuningTrainer, default_training_arguments
    from mudpt_peft.data import base_to_new
    from mudpt_peft.evaluation import evaluate, harmonic_mean
    from mudpt_peft.hub import save_pretrained

    output_dir = Path(args.output_dir)
    set_seed(args.seed)
    data = load_data(args)  # before any training: a data error costs no training time
    template, class_names, info = data["template"], data["class_names"], data["info"]
    processor = AutoProcessor.from_pretrained(args.model)
    tokenizer, image_processor = processor.tokenizer, processor.image_processor
    configs = method_configs(methods, CLIPModel.from_pretrained(args.model, dtype=torch.float32))

    splits = {"test": (data["train"], data["test"], class_names)}
    if args.base_to_new:
        train_split = base_to_new(data["train"], class_names)
        test_split = base_to_new(data["test"], class_names)
        splits = {
            "base": (train_split.base, test_split.base, train_split.base_class_names),
            "new": (None, test_split.new, test_split.new_class_names),
        }
        info["base_classes"], info["new_classes"] = test_split.base_class_names, test_split.new_class_names
    train_set, _, train_classes = splits["base" if args.base_to_new else "test"]
    print(
        f"data: {args.dataset}, {len(train_set)} training images ({args.shots} per class), "
        f"{sum(len(s[1]) for s in splits.values())} test images; template {template!r}"
    )
    output_dir.mkdir(parents=True, exist_ok=True)

    record: dict[str, Any] = {
        "versions": versions(),
        "model": model_name(args.model),
        "dataset": info,
        # as given, but no local absolute path: the model and data set by name, not the output folder
        "arguments": json_safe(
            vars(args) | {"model": model_name(args.model), "dataset": info["name"], "output_dir": None}
        ),
        "accuracy": {},
        "methods": {},
    }
    pictures: dict[str, dict[str, Any]] = {}
    for key in methods:
        start = time.perf_counter()
        model = CLIPModel.from_pretrained(args.model, dtype=torch.float32)
        entry: dict[str, Any] = {"config": None, "training": None}
        if key == "zero_shot":
            evaluated = model
        else:
            set_seed(args.seed)
            config = configs[key]
            evaluated = get_peft_model(model, config)
            overrides: dict[str, Any] = {
                "report_to": [],
                "logging_steps": 10,
                "save_strategy": "no",
                "seed": args.seed,
                "dataloader_num_workers": args.num_workers,
            }
            if args.epochs is not None:
                overrides["num_train_epochs"] = args.epochs
            if args.lr is not None:
                overrides["learning_rate"] = args.lr
            if args.batch_size is not None:
                overrides["per_device_train_batch_size"] = args.batch_size
            curve_set = splits["base" if args.base_to_new else "test"][1]
            if args.curve_points:  # the accuracy curve: evaluations at evenly spaced steps, never used for selection
                overrides.update(eval_strategy="steps", eval_steps=1.0 / args.curve_points)
            training_args = default_training_arguments(
                key, str(output_dir / key), shots=args.shots, use_cpu=not torch.cuda.is_available(), **overrides
            )
            # a loss every 10 steps, or 10 points on the curve of a shorter run
            batches = math.ceil(len(train_set) / training_args.per_device_train_batch_size)
            total_steps = training_args.max_steps if training_args.max_steps > 0 else math.ceil(
                batches * training_args.num_train_epochs
            )
            training_args.logging_steps = max(1, min(10, total_steps // 10))
            trainer = PromptTuningTrainer(
                evaluated,
                train_classes,
                tokenizer,
                training_args,
                train_dataset=train_set,
                eval_dataset=curve_set if args.curve_points else None,
                image_processor=image_processor,
                template=template,
                objective=key,  # KgCoOp / PromptSRC: their own loss
            )
            trainer.train()
            entry["config"] = json_safe(config.to_dict())
            entry["training"] = {
                name: json_safe(getattr(training_args, name))
                for name in (
                    "num_train_epochs",
                    "learning_rate",
                    "per_device_train_batch_size",
                    "optim",
                    "optim_args",
                    "weight_decay",
                    "lr_scheduler_type",
                    "warmup_steps",
                    "seed",
                )
            }
            entry["training"]["steps"] = trainer.state.global_step
            entry["training"]["loss_history"] = [
                {"step": row["step"], "loss": row["loss"]} for row in trainer.state.log_history if "loss" in row
            ]
            entry["training"]["held_out_accuracy_history"] = [
                {"step": row["step"], "accuracy": row["eval_accuracy"]}
                for row in trainer.state.log_history
                if "eval_accuracy" in row
            ]
            pictures[key] = {"log_history": list(trainer.state.log_history)}
        results: dict[str, Any] = {}
        for name, (_, test_set, names) in splits.items():
            results[name] = evaluate(
                evaluated,
                test_set,
                names,
                tokenizer,
                image_processor,
                template=template,
                num_workers=args.num_workers,
                dataset_name=info["name"],
                split=name,
                shots=args.shots,
                seed=args.seed,
            )
        if args.base_to_new:
            results["hm"] = harmonic_mean(results["base"]["accuracy"], results["new"]["accuracy"])
            record["accuracy"][key] = {
                "base": results["base"]["accuracy"],
                "new": results["new"]["accuracy"],
                "hm": results["hm"],
            }
        else:
            record["accuracy"][key] = results["test"]["accuracy"]
        entry["results"] = results
        entry["seconds"] = time.perf_counter() - start
        entry["pictures"] = write_pictures(output_dir / key, key, results, pictures.get(key), splits)
        if key != "zero_shot":  # a ready classifier: adapter, prompt_classifier.json, card with the results
            folder = output_dir / key
            classifier = PromptClassifier(evaluated, tokenizer, train_classes, template, image_processor)
            save_pretrained(classifier, folder)
            processor.save_pretrained(folder)
            entry["classifier"] = key
        record["methods"][key] = entry

    print()
    if args.base_to_new:
        print("| method | base | new | HM | seconds |\n| --- | ---: | ---: | ---: | ---: |")
        for key, value in record["accuracy"].items():
            seconds = record["methods"][key]["seconds"]
            print(f"| {key} | {value['base']:.1f} | {value['new']:.1f} | {value['hm']:.1f} | {seconds:.0f} |")
    else:
        print("| method | accuracy (%) | seconds |\n| --- | ---: | ---: |")
        for key, value in record["accuracy"].items():
            print(f"| {key} | {value:.1f} | {record['methods'][key]['seconds']:.0f} |")
    (output_dir / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwrote {output_dir / 'metrics.json'} (mudpt-peft {record['versions']['mudpt-peft']})")
    tuned = [key for key in methods if key != "zero_shot"]
    if tuned:
        print(
            f"reload a classifier: PromptClassifier.from_pretrained(CLIPModel.from_pretrained({args.model!r}), "
            f"{str(output_dir / tuned[-1])!r})"
        )
    return record


if __name__ == "__main__":
    main()
