"""The few-shot benchmark table, in miniature: methods x shots x seeds x tasks on the embedded tiny CLIP.

Every run trains one method preset with `mudpt_peft.PromptTuningTrainer` and its default recipe
(`mudpt_peft.default_training_arguments`) on a K-shot sample, and evaluates it on a fixed test set. Tasks (all
offline, from the data the examples use, see `examples/tiny_clip_data.py`):

- ``digits8x8``: scikit-learn's 8x8 digits, unseen in the tiny CLIP's pretraining; test = 100 images per class
  (fixed), the few-shot pool = the other images.
- ``fashion_inverted``: Fashion-MNIST with inverted intensities (dark garments on white; pretraining saw the
  originals); pool = 500 training images per class, test = 100 t10k images per class.
- ``animal_lowres``: Animal-MNIST at 7x7 (4x4 average pooling; the processor upsamples to 28 again); pool = 500
  training images per class, test = 100 test images per class.
- ``animal_base_to_new``: Animal-MNIST (full resolution) split base-to-new (bear ... dog base, elephant ... zebra new):
  trained on base classes only, evaluated on base and new test images with their own class names; harmonic mean.

Besides the prompt methods (every preset of `mudpt_peft.methods.METHODS`), the peers:

- ``clip-lora``: peft's LoRA with CLIP-LoRA's settings and recipe (`mudpt_peft.clip_lora`), trained by
  `PromptTuningTrainer` like the prompt methods (no augmentation, like them here; batch 32), for the official
  500 x shots steps capped at ``--lora_max_steps`` (default 500, the official count at 1 shot: the full count takes
  about an hour per 16-shot run on a CPU thread);
- ``linear-probe``: CoOp's linear probe on the frozen image features (`mudpt_peft.feature_classifiers`), C searched on
  a validation split of ``min(shots, 4)`` images per class drawn from the rest of the pool;
- ``tip-adapter`` and ``tip-adapter-f``: Tip-Adapter's cache of 10 augmented views per training image, (beta, alpha)
  searched on the same validation split over the default grid (largest beta 7, largest alpha 3), init alpha 1, beta 1;
  Tip-Adapter-F fine-tuned for 20 epochs.

The three feature classifiers cannot name classes they never saw, so they skip the base-to-new task.

Results are appended one JSON line per run to ``<results>/fewshot_grid.jsonl`` (a rerun skips what is there, so an
interrupted grid resumes), and a markdown table (mean ± std over seeds) and a plot (accuracy vs shots per method) are
written to ``<results>/fewshot_grid.md`` and ``<results>/fewshot_grid.png``.

    python benchmarks/fewshot_grid.py                       # the whole grid (hours on 2 CPU cores)
    python benchmarks/fewshot_grid.py --shots 1,16 --seeds 1 --methods zero-shot,coop,mudpt --tasks digits8x8
    python benchmarks/fewshot_grid.py --report_only         # tables and plot from the results so far
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from peft import get_peft_model
from transformers import AutoProcessor, CLIPModel, HfArgumentParser, set_seed
from transformers.utils import logging as hf_logging

from mudpt_peft import PromptClassifier, PromptTuningTrainer, default_training_arguments
from mudpt_peft.clip_lora import clip_lora_config, clip_lora_training_arguments
from mudpt_peft.data import ImageClassificationCollator, base_to_new, few_shot
from mudpt_peft.evaluation import evaluate, harmonic_mean
from mudpt_peft.feature_classifiers import (
    COOP_VAL_SHOTS,
    LinearProbe,
    TipAdapter,
    TipAdapterF,
    extract_image_features,
    zero_shot_text_weights,
)
from mudpt_peft.methods import METHODS as TUNED_METHODS

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import tiny_clip_data  # noqa: E402
from fewshot import EMBEDDED_MODEL, preset  # noqa: E402

#: the peers trained like a prompt method (`PromptTuningTrainer`), and the classifiers on frozen features
TRAINED_PEERS = ("clip-lora",)
FEATURE_PEERS = ("linear-probe", "tip-adapter", "tip-adapter-f")
METHODS = ("zero-shot", *TUNED_METHODS, *TRAINED_PEERS, *FEATURE_PEERS)
#: augmented views per training image in Tip-Adapter's cache (the official `augment_epoch`)
TIP_VIEWS = 10
TASKS = ("digits8x8", "fashion_inverted", "animal_lowres", "animal_base_to_new")


@dataclass
class GridArguments:
    """Command-line arguments of the grid."""

    methods: str = field(default=",".join(METHODS), metadata={"help": "Comma-separated methods."})
    shots: str = field(default="1,4,16,2,8", metadata={"help": "Comma-separated shot counts, run in this order."})
    seeds: str = field(default="1,2,3", metadata={"help": "Comma-separated seeds (few-shot sample and training)."})
    tasks: str = field(default=",".join(TASKS), metadata={"help": f"Comma-separated, of {', '.join(TASKS)}."})
    model: str = field(default=str(EMBEDDED_MODEL), metadata={"help": "The CLIP model (default: the tiny CLIP)."})
    test_per_class: int = field(default=100, metadata={"help": "Test images per class."})
    pool_per_class: int = field(default=500, metadata={"help": "Few-shot pool per class (where there is a pool)."})
    threads: int = field(default=1, metadata={"help": "torch threads."})
    lora_max_steps: int = field(
        default=500,
        metadata={"help": "Cap on CLIP-LoRA's 500 x shots steps (0: none): the official count costs about an hour "
                  "per 16-shot run on one CPU thread; 500 is the official count at 1 shot."},
    )  # fmt: skip
    results: str = field(default=str(ROOT / "benchmarks" / "results"), metadata={"help": "Results directory."})
    report_only: bool = field(default=False, metadata={"help": "Only write the table and plot from the results."})
    docs_plot: str = field(
        default=str(ROOT / "docs" / "assets" / "fewshot_grid.png"),
        metadata={"help": "A copy of the plot for the docs site (empty: none)."},
    )


# ------------------------------------------------------------------------------------------------------------------
# tasks


@dataclass
class Task:
    """A task: a few-shot pool, test sets with their class names, and the class prompt template."""

    name: str
    pool: object  # datasets.Dataset
    tests: dict[str, object]  # split name -> datasets.Dataset ("all", or "base" and "new")
    class_names: dict[str, list[str]]  # split name -> class names of that split ("all" or "base"/"new")
    template: str
    train_split: str  # the split whose classes are trained ("all" or "base")


def _per_class(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Indices of `count` images per class (all of a class if it has fewer), seeded, in index order."""
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == label))[:count] for label in np.unique(labels)]
    return np.sort(np.concatenate(chosen))


def _dataset(images: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...]):
    import datasets
    from PIL import Image

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(class_names))})
    return datasets.Dataset.from_dict(
        {"image": [Image.fromarray(image) for image in images], "label": labels.tolist()}, features=features
    )


def _downsample(images: np.ndarray, factor: int = 4) -> np.ndarray:
    """Average pooling by `factor`: N x 28 x 28 -> N x 7 x 7 by default."""
    n, h, w = images.shape
    pooled = images.reshape(n, h // factor, factor, w // factor, factor).astype(np.float32).mean(axis=(2, 4))
    return pooled.round().astype(np.uint8)


def load_task(name: str, test_per_class: int, pool_per_class: int) -> Task:
    """Builds task `name` (deterministic: the test sets and pools do not depend on the run's seed)."""
    if name == "digits8x8":
        split = tiny_clip_data.load_dataset("digits8x8", "test")
        test = _per_class(split.labels, test_per_class, seed=0)
        pool = np.setdiff1d(np.arange(len(split)), test)
        images, labels, names = split.images, split.labels, split.class_names
        pool_set = _dataset(images[pool], labels[pool], names)
        test_set = _dataset(images[test], labels[test], names)
        template = tiny_clip_data.TEMPLATES["digits8x8"][0]
    elif name in ("fashion_inverted", "animal_lowres", "animal_base_to_new"):
        source = "fashion_mnist" if name == "fashion_inverted" else "animal_mnist"
        train = tiny_clip_data.load_dataset(source, "train")
        test = tiny_clip_data.load_dataset(source, "test")
        pool = _per_class(train.labels, pool_per_class, seed=0)
        held = _per_class(test.labels, test_per_class, seed=0)

        def transform(images: np.ndarray) -> np.ndarray:
            if name == "fashion_inverted":
                return 255 - images
            if name == "animal_lowres":
                return _downsample(images)
            return images

        names = train.class_names
        pool_set = _dataset(transform(train.images[pool]), train.labels[pool], names)
        test_set = _dataset(transform(test.images[held]), test.labels[held], names)
        template = tiny_clip_data.TEMPLATES[source][0]
    else:
        raise ValueError(f"Unknown task {name!r}; choose from {', '.join(TASKS)}.")
    if name != "animal_base_to_new":
        return Task(name, pool_set, {"all": test_set}, {"all": list(names)}, template, "all")
    pool_split = base_to_new(pool_set, list(names))
    test_split = base_to_new(test_set, list(names))
    return Task(
        name,
        pool_split.base,
        {"base": test_split.base, "new": test_split.new},
        {"base": test_split.base_class_names, "new": test_split.new_class_names},
        template,
        "base",
    )


# ------------------------------------------------------------------------------------------------------------------
# one run


def applies(method: str, task: Task) -> bool:
    """Whether `method` runs on `task`: the feature classifiers have no weights for unseen classes (no base-to-new)."""
    return method not in FEATURE_PEERS or task.train_split == "all"


def _validation_split(task: Task, shots: int, seed: int):
    """CoOp's linear-probe validation split: `min(shots, 4)` images per class of the pool, none of them among the
    `few_shot(task.pool, shots, seed)` training images (the same sampler on the remaining rows)."""
    rows = few_shot(task.pool.add_column("pool_row", list(range(len(task.pool)))), shots, seed)["pool_row"]
    rest = task.pool.select(sorted(set(range(len(task.pool))) - set(rows)))
    return few_shot(rest, COOP_VAL_SHOTS.get(shots, min(shots, 4)), seed)


def run_feature_peer(task: Task, method: str, shots: int, seed: int, model: CLIPModel, processor) -> dict:
    """The linear probe or Tip-Adapter(-F) on the frozen features: the test accuracies (percent) and the chosen
    hyper-parameters."""
    tokenizer, image_processor = processor.tokenizer, processor.image_processor
    set_seed(seed)
    train, val, test = few_shot(task.pool, shots, seed), _validation_split(task, shots, seed), task.tests["all"]
    if method == "linear-probe":
        features = [extract_image_features(model, split, image_processor, normalize=False) for split in (train, val)]
        test_features = extract_image_features(model, test, image_processor, normalize=False)
        result = LinearProbe.search(features[0].features, features[0].labels, features[1].features, features[1].labels)
        return {"accuracy": {"all": 100 * result.probe.score(test_features.features, test_features.labels)},
                "chosen": {"C": result.C}}  # fmt: skip
    classifier = PromptClassifier(model, tokenizer, task.class_names["all"], template=task.template)
    weights = zero_shot_text_weights(classifier)
    augment = ImageClassificationCollator(image_processor, augment=True, scale=(0.5, 1.0))
    views = torch.stack(
        [extract_image_features(model, train, collator=augment, normalize=False).features for _ in range(TIP_VIEWS)]
    )
    labels = extract_image_features(model, train, image_processor).labels
    val_features = extract_image_features(model, val, image_processor)
    test_features = extract_image_features(model, test, image_processor)
    adapter = TipAdapter(weights) if method == "tip-adapter" else TipAdapterF(weights)
    adapter.fit(views, labels, val_features.features, val_features.labels)
    return {"accuracy": {"all": 100 * adapter.score(test_features.features, test_features.labels)},
            "chosen": {"alpha": adapter.alpha, "beta": adapter.beta}}  # fmt: skip


def run_one(
    task: Task, method: str, shots: int, seed: int, model_path: str, processor, lora_max_steps: int = 0
) -> dict:
    """Trains `method` on `shots` images per class (seed `seed`) and returns the test accuracies (percent)."""
    tokenizer, image_processor = processor.tokenizer, processor.image_processor
    start = time.perf_counter()
    model = CLIPModel.from_pretrained(model_path, dtype=torch.float32)
    steps = 0
    if method in FEATURE_PEERS:
        record = run_feature_peer(task, method, shots, seed, model, processor)
        return {**record, "steps": 0, "seconds": round(time.perf_counter() - start, 2)}
    if method == "zero-shot":
        evaluated = model
    else:
        set_seed(seed)
        peer = method in TRAINED_PEERS
        evaluated = get_peft_model(model, clip_lora_config() if peer else preset(method, model))
        train = few_shot(task.pool, shots, seed)
        with tempfile.TemporaryDirectory() as output_dir:
            quiet = dict(use_cpu=True, seed=seed, report_to=[], save_strategy="no", logging_strategy="no",
                         disable_tqdm=True)  # fmt: skip
            if peer:
                args = clip_lora_training_arguments(output_dir, shots, **quiet)
                if lora_max_steps and args.max_steps > lora_max_steps:
                    args = clip_lora_training_arguments(output_dir, shots, max_steps=lora_max_steps, **quiet)
            else:
                args = default_training_arguments(method, output_dir, shots=shots, **quiet)
            trainer = PromptTuningTrainer(
                evaluated,
                task.class_names[task.train_split],
                tokenizer,
                args,
                train_dataset=train,
                image_processor=image_processor,
                template=task.template,
                objective=None if peer else method,  # KgCoOp / PromptSRC: their own loss
            )
            steps = trainer.train().global_step
    accuracy = {
        split: evaluate(evaluated, test, task.class_names[split], tokenizer, image_processor, template=task.template)[
            "accuracy"
        ]
        for split, test in task.tests.items()
    }
    if "base" in accuracy:
        accuracy["hm"] = harmonic_mean(accuracy["base"], accuracy["new"])
    return {"accuracy": accuracy, "steps": steps, "seconds": round(time.perf_counter() - start, 2)}


# ------------------------------------------------------------------------------------------------------------------
# report


def _headline(record: dict) -> float:
    """The number a task is ranked by: accuracy, or the harmonic mean for base-to-new."""
    accuracy = record["accuracy"]
    return accuracy["hm"] if "hm" in accuracy else accuracy["all"]


def _mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    mean = float(np.mean(values))
    if len(values) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {float(np.std(values, ddof=1)):.1f}"


def load_results(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_report(records: list[dict], results: Path, docs_plot: str = "") -> None:
    """Writes the markdown table and the plot for `records` (and a copy of the plot to `docs_plot`, if given)."""
    grouped: dict[tuple[str, str, int], list[dict]] = defaultdict(list)
    for record in records:
        grouped[(record["task"], record["method"], record["shots"])].append(record)
    tasks = [task for task in TASKS if any(key[0] == task for key in grouped)]
    methods = [method for method in METHODS if any(key[1] == method for key in grouped)]
    shots = sorted({key[2] for key in grouped if key[2] > 0})
    seeds = sorted({record["seed"] for record in records if record["shots"] > 0})
    lines = [
        "# Few-shot grid on the embedded tiny CLIP",
        "",
        f"Top-1 accuracy (%) on the test images, mean ± sample std over seeds {', '.join(map(str, seeds))} (the "
        "few-shot sample and the training seed); base-to-new: the harmonic mean of base and new accuracy. "
        "Zero-shot does not depend on shots or seeds. Written by `python benchmarks/fewshot_grid.py`; see "
        "docs/benchmarks.md.",
        "",
    ]
    for task in tasks:
        lines += [f"## {task}", "", "| method | " + " | ".join(f"{k} shot{'s' * (k > 1)}" for k in shots) + " |"]
        lines.append("| --- |" + " ---: |" * len(shots))
        for method in methods:
            if task == "animal_base_to_new" and method in FEATURE_PEERS:
                continue  # no weights for the new classes (see `applies`)
            if method == "zero-shot":
                values = [_headline(r) for r in grouped.get((task, method, 0), [])]
                lines.append("| zero-shot | " + " | ".join([_mean_std(values)] * len(shots)) + " |")
                continue
            cells = [_mean_std([_headline(r) for r in grouped.get((task, method, k), [])]) for k in shots]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        if task == "animal_base_to_new" and shots:
            top = shots[-1]
            lines += ["", f"Base / new / HM at {top} shots:", "", "| method | base | new | HM |"]
            lines.append("| --- | ---: | ---: | ---: |")
            for method in methods:
                if method in FEATURE_PEERS:
                    continue
                runs = grouped.get((task, method, 0 if method == "zero-shot" else top), [])
                cells = [_mean_std([r["accuracy"][split] for r in runs]) for split in ("base", "new", "hm")]
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    seconds = sum(record.get("seconds", 0.0) for record in records)
    lines.append(f"{len(records)} runs, {seconds / 3600:.1f} hours of compute (one CPU thread per run).")
    (results / "fewshot_grid.md").write_text("\n".join(lines) + "\n")
    _plot(grouped, tasks, methods, shots, results / "fewshot_grid.png")
    if docs_plot and (results / "fewshot_grid.png").is_file():
        Path(docs_plot).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(results / "fewshot_grid.png", docs_plot)


def _plot(grouped, tasks, methods, shots, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return
    columns = 2
    rows = math.ceil(len(tasks) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(14, 5.2 * rows), squeeze=False)
    prompt_colors, peer_colors = plt.get_cmap("tab20"), plt.get_cmap("Dark2")
    tuned = [method for method in methods if method != "zero-shot"]
    prompts = [method for method in tuned if method not in (*TRAINED_PEERS, *FEATURE_PEERS)]
    peers = [method for method in tuned if method not in prompts]
    # each method's points sit slightly apart along the (log2) shots axis, so that error bars do not overlap
    spread = 0.5 / max(len(tuned), 1)
    for axis, task in zip(axes.flat, tasks, strict=False):
        for method in methods:
            if method == "zero-shot":
                values = [_headline(r) for r in grouped.get((task, method, 0), [])]
                if values:
                    axis.axhline(float(np.mean(values)), color="gray", linestyle=":", linewidth=1.5, label="zero-shot")
                continue
            xs, means, lower, upper = [], [], [], []
            offset = 2 ** ((tuned.index(method) - (len(tuned) - 1) / 2) * spread)
            for k in shots:
                values = [_headline(r) for r in grouped.get((task, method, k), [])]
                if values:
                    mean = float(np.mean(values))
                    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
                    xs.append(k * offset)
                    means.append(mean)
                    lower.append(min(std, mean))
                    upper.append(min(std, 100.0 - mean))  # accuracy is at most 100: the bar stops there
            if not xs:
                continue
            if method in prompts:
                style = dict(color=prompt_colors(2 * prompts.index(method) % 20), marker="o", linestyle="-")
            else:
                style = dict(color=peer_colors(peers.index(method) % 8), marker="s", linestyle="--")
            axis.errorbar(xs, means, yerr=[lower, upper], capsize=2, markersize=4, linewidth=1.3,
                          elinewidth=0.8, label=method + (" (peer)" if method in peers else ""), **style)  # fmt: skip
        axis.set_xscale("log", base=2)
        axis.set_xticks(shots, [str(k) for k in shots])
        axis.set_xlabel("shots per class")
        axis.set_ylabel("HM of base and new (%)" if task == "animal_base_to_new" else "accuracy (%)")
        bottom, top = axis.get_ylim()
        axis.set_ylim(max(bottom, 0.0), min(top, 100.0))  # the axis never runs past 100 %
        axis.set_title(task)
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(tasks) :]:
        axis.axis("off")
    handles, labels = {}, []
    for axis in axes.flat:  # every method that appears in some panel, in the order of `methods`
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    labels = list(handles)
    figure.legend([handles[label] for label in labels], labels, loc="lower center", ncol=min(len(labels), 6),
                  frameon=False)  # fmt: skip
    figure.suptitle(
        "Few-shot tuning of the embedded tiny CLIP (mean ± std over seeds): prompt methods (solid), peers (dashed)"
    )
    legend_rows = math.ceil(len(labels) / 6)
    figure.tight_layout(rect=(0, 0.035 * legend_rows / rows * 2, 1, 0.97))
    figure.savefig(path, dpi=110)
    plt.close(figure)


# ------------------------------------------------------------------------------------------------------------------


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def main() -> None:
    (args,) = HfArgumentParser(GridArguments).parse_args_into_dataclasses()
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    store = results / "fewshot_grid.jsonl"
    if args.report_only:
        write_report(load_results(store), results, args.docs_plot)
        print(f"wrote {results / 'fewshot_grid.md'} and {results / 'fewshot_grid.png'}")
        return
    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    methods = [m.lower().replace("_", "-") for m in _split(args.methods)]
    methods = ["zero-shot" if m in ("zero-shot", "zeroshot") else m for m in methods]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"Unknown methods {unknown}; choose from {', '.join(METHODS)}.")
    shots = [int(k) for k in _split(args.shots)]
    seeds = [int(s) for s in _split(args.seeds)]
    tasks = _split(args.tasks)
    done = {(r["task"], r["method"], r["shots"], r["seed"]) for r in load_results(store)}
    processor = AutoProcessor.from_pretrained(args.model)
    start = time.perf_counter()
    loaded: dict[str, Task] = {}
    for shot in shots:  # shots outermost: an interrupted grid has every task at the first shot counts
        for task_name in tasks:
            if task_name not in loaded:
                loaded[task_name] = load_task(task_name, args.test_per_class, args.pool_per_class)
            task = loaded[task_name]
            for seed in seeds:
                for method in methods:
                    key = (task_name, method, 0, 0) if method == "zero-shot" else (task_name, method, shot, seed)
                    if key in done or not applies(method, task):
                        continue
                    record = {"task": key[0], "method": method, "shots": key[2], "seed": key[3]}
                    record.update(
                        run_one(task, method, max(shot, 1), seed, args.model, processor, args.lora_max_steps)
                    )
                    done.add(key)
                    with store.open("a") as handle:
                        handle.write(json.dumps(record) + "\n")
                    elapsed = (time.perf_counter() - start) / 60
                    print(f"[{elapsed:6.1f} min] {json.dumps(record)}", flush=True)
        write_report(load_results(store), results, args.docs_plot)
    write_report(load_results(store), results, args.docs_plot)
    print(f"wrote {results / 'fewshot_grid.md'} and {results / 'fewshot_grid.png'}")


if __name__ == "__main__":
    main()
