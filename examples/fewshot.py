"""Few-shot prompt tuning and evaluation of a CLIP model with MuDPT (or any method preset), on one data set.

With no arguments it runs offline on the embedded default: the project's tiny pretrained CLIP
(`examples/assets/tiny-clip`) and scikit-learn's 8x8 digits, a task that model never saw in pretraining:

    python examples/fewshot.py --methods zero-shot,coop,maple,mudpt --shots 16

Point it at your own model and data the same way (an HF dataset id, or a local `imagefolder` directory):

    python examples/fewshot.py --model openai/clip-vit-base-patch16 --dataset my_images/ --methods mudpt

It trains each method with `mudpt_peft.PromptTuningTrainer` (the method's default recipe unless `--epochs`, `--lr`,
`--batch_size` say otherwise), evaluates zero-shot and tuned accuracy on the held-out images (base / new / harmonic
mean with `--base_to_new`), prints a table, and writes `metrics.json` and one adapter per method to `--output_dir`.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import get_peft_model
from transformers import AutoProcessor, CLIPModel, HfArgumentParser, set_seed

import mudpt_peft
from mudpt_peft import MuDPTConfig, PromptTuningTrainer, default_training_arguments
from mudpt_peft.data import base_to_new, few_shot
from mudpt_peft.evaluation import evaluate, harmonic_mean

EXAMPLES = Path(__file__).resolve().parent
EMBEDDED_MODEL = EXAMPLES / "assets" / "tiny-clip"
EMBEDDED_DATASETS = ("digits8x8", "mnist", "fashion_mnist", "animal_mnist")


@dataclass
class FewShotArguments:
    """Command-line arguments of the few-shot script."""

    model: str = field(default=str(EMBEDDED_MODEL), metadata={"help": "CLIP model id or directory."})
    dataset: str = field(
        default="digits8x8",
        metadata={"help": f"An embedded data set ({', '.join(EMBEDDED_DATASETS)}), an HF dataset id, or a directory."},
    )
    methods: str = field(
        default="zero-shot,mudpt",
        metadata={"help": "Comma-separated: zero-shot and/or presets (coop, vpt, ivlp, maple, mudpt, ...)."},
    )
    shots: int = field(default=16, metadata={"help": "Training examples per class."})
    seed: int = field(default=1, metadata={"help": "Seed of the few-shot sample and of training."})
    epochs: float | None = field(default=None, metadata={"help": "Epochs (default: the method's recipe)."})
    lr: float | None = field(default=None, metadata={"help": "Learning rate (default: the method's recipe)."})
    batch_size: int | None = field(default=None, metadata={"help": "Batch size (default: the method's recipe)."})
    template: str | None = field(default=None, metadata={"help": "Class prompt template with {} (default per data)."})
    base_to_new: bool = field(default=False, metadata={"help": "Train on the first half of the classes only."})
    image_column: str = field(default="image", metadata={"help": "Image column of an HF dataset."})
    label_column: str = field(default="label", metadata={"help": "Label column of an HF dataset."})
    output_dir: str = field(default="out/fewshot", metadata={"help": "Where metrics.json and the adapters go."})


def load_data(args: FewShotArguments):
    """(train pool, test set, class names, default template) for `args.dataset`."""
    import datasets

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
            test = every.select([i for i in range(len(every)) if i not in chosen])
            names = list(every.features["label"].names)
            return train.remove_columns("_index"), test.remove_columns("_index"), names, template
        train = to_dataset(tiny_clip_data.load_dataset(args.dataset, "train"))
        test = to_dataset(tiny_clip_data.load_dataset(args.dataset, "test"))
        return few_shot(train, args.shots, args.seed), test, list(train.features["label"].names), template

    path = Path(args.dataset)
    data = (
        datasets.load_dataset("imagefolder", data_dir=str(path))
        if path.is_dir()
        else datasets.load_dataset(args.dataset)
    )
    if "train" not in data:
        raise ValueError(f"{args.dataset!r} has no 'train' split (it has {list(data)}).")
    test_split = next((name for name in ("test", "validation") if name in data), None)
    if test_split is None:
        raise ValueError(f"{args.dataset!r} needs a 'test' or 'validation' split to evaluate on (it has {list(data)}).")
    train, test = data["train"], data[test_split]
    if args.image_column != "image":
        train, test = train.rename_column(args.image_column, "image"), test.rename_column(args.image_column, "image")
    if args.label_column != "label":
        train, test = train.rename_column(args.label_column, "label"), test.rename_column(args.label_column, "label")
    names = list(train.features["label"].names)
    return few_shot(train, args.shots, args.seed), test, names, "a photo of a {}."


def preset(method: str, model: CLIPModel, **overrides) -> MuDPTConfig:
    """The method's preset, with its depth capped at the model's layer count (tiny models have few layers)."""
    config = MuDPTConfig.for_method(method, **overrides)
    layers = min(model.config.text_config.num_hidden_layers, model.config.vision_config.num_hidden_layers)
    if config.depth > layers:
        config = MuDPTConfig.for_method(method, **{"depth": layers, **overrides})
    return config


def main() -> None:
    (args,) = HfArgumentParser(FewShotArguments).parse_args_into_dataclasses()
    methods = [m.strip().lower() for m in args.methods.split(",") if m.strip()]
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    set_seed(args.seed)
    train, test, class_names, default_template = load_data(args)
    template = args.template or default_template
    processor = AutoProcessor.from_pretrained(args.model)
    tokenizer, image_processor = processor.tokenizer, processor.image_processor

    splits = {"all": (train, test, class_names)}
    if args.base_to_new:
        train_split = base_to_new(train, class_names)
        test_split = base_to_new(test, class_names)
        splits = {
            "base": (train_split.base, test_split.base, train_split.base_class_names),
            "new": (None, test_split.new, test_split.new_class_names),
        }
    train_set, _, train_classes = splits["base" if args.base_to_new else "all"]
    print(
        f"data: {args.dataset}, {len(train_set)} training images ({args.shots} per class), "
        f"{sum(len(s[1]) for s in splits.values())} test images; template {template!r}"
    )

    metrics: dict[str, float | dict] = {}
    timings: dict[str, float] = {}
    for method in methods:
        start = time.perf_counter()
        model = CLIPModel.from_pretrained(args.model, dtype=torch.float32)
        if method in ("zero-shot", "zero_shot", "zeroshot"):
            evaluated = model
        else:
            set_seed(args.seed)
            evaluated = get_peft_model(model, preset(method, model))
            overrides = {"report_to": [], "logging_steps": 10, "save_strategy": "no", "seed": args.seed}
            if args.epochs is not None:
                overrides["num_train_epochs"] = args.epochs
            if args.lr is not None:
                overrides["learning_rate"] = args.lr
            if args.batch_size is not None:
                overrides["per_device_train_batch_size"] = args.batch_size
            training_args = default_training_arguments(
                method, str(output_dir / method), shots=args.shots, use_cpu=not torch.cuda.is_available(), **overrides
            )
            trainer = PromptTuningTrainer(
                evaluated,
                train_classes,
                tokenizer,
                training_args,
                train_dataset=train_set,
                image_processor=image_processor,
                template=template,
                objective=method,  # KgCoOp / PromptSRC: their own loss
            )
            trainer.train()
            evaluated.save_pretrained(output_dir / method)
        results = {
            name: evaluate(evaluated, test_set, names, tokenizer, image_processor, template=template)["accuracy"]
            for name, (_, test_set, names) in splits.items()
        }
        key = "zero_shot" if method.startswith("zero") else method
        if args.base_to_new:
            results["hm"] = harmonic_mean(results["base"], results["new"])
            metrics[key] = results
        else:
            metrics[key] = results["all"]
        timings[key] = time.perf_counter() - start

    print()
    if args.base_to_new:
        print("| method | base | new | HM | seconds |\n| --- | ---: | ---: | ---: | ---: |")
        for key, value in metrics.items():
            print(f"| {key} | {value['base']:.1f} | {value['new']:.1f} | {value['hm']:.1f} | {timings[key]:.0f} |")
    else:
        print("| method | accuracy (%) | seconds |\n| --- | ---: | ---: |")
        for key, value in metrics.items():
            print(f"| {key} | {value:.1f} | {timings[key]:.0f} |")
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"\nwrote {output_dir / 'metrics.json'} (mudpt-peft {mudpt_peft.__version__})")


if __name__ == "__main__":
    main()
