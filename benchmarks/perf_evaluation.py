"""Evaluation throughput at scale: `mudpt_peft.evaluation.evaluate` with a prompt adapter vs zero-shot CLIP.

Both run on the same batches of one synthetic test set (random RGB images in an HF `datasets.Dataset`, `--images`
rows over `--classes` classes with the 1,000 ImageNet-like benchmark class names), in one process, alternately:

- **adapter**: `evaluate(peft_model, ...)` with a MuDPT adapter (`MuDPTConfig.for_method(--method)`): the class
  features are computed once per call through `PromptClassifier`'s cache, every batch runs the vision tower with its
  prompts and the cache check;
- **zero-shot**: `evaluate(clip, ...)` on the plain model (the same weights): zero-shot CLIP with the same prompts.

Both calls include everything `evaluate` does: reading and preprocessing the images, encoding the class prompts once,
the logits of every batch, the metrics. The table gives images per second of each and the ratio adapter / zero-shot
(target >= 0.97: the adapter's extra work is 2 vision tokens out of 197 and the cache check, ~1 %). A second table
times the classifier calls alone on the same preprocessed batches (no data loading), to separate the model's cost from
the pipeline's. Random weights of ViT-B/16 shape unless `--shape` (the cost does not depend on the weights).

    python benchmarks/perf_evaluation.py                                 # 1,000 classes, 2,000 images, batch 100
    python benchmarks/perf_evaluation.py --images 400 --reps 3           # shorter, on a CPU
    python benchmarks/perf_evaluation.py --shape smoke --classes 20 --images 40 --batch_size 10 --reps 2   # the test
"""

from __future__ import annotations

import argparse
import copy

import datasets
import numpy as np
import perf_common as common
import torch
from peft import get_peft_model
from PIL import Image
from transformers import CLIPImageProcessor

from mudpt_peft import MuDPTConfig, PromptClassifier
from mudpt_peft.evaluation import evaluate

TEMPLATE = "a photo of a {}."
CLOCK = common.default_clock()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_arguments(parser)
    parser.add_argument("--shape", default="vit-b16", choices=sorted(common.SHAPES))
    parser.add_argument("--method", default="mudpt", help="the adapter's preset (MuDPTConfig.for_method)")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--images", type=int, default=2000, help="rows of the synthetic test set")
    parser.add_argument("--batch_size", type=int, default=100)
    parser.add_argument("--reps", type=int, default=3, help="evaluate() calls per case")
    parser.add_argument("--model_reps", type=int, default=5, help="repetitions of the classifier-only timing")
    parser.add_argument("--model_batches", type=int, default=4, help="batches of the classifier-only timing")
    return parser.parse_args()


def synthetic_test_set(images: int, classes: int, size: int, seed: int = 0) -> datasets.Dataset:
    """`images` random RGB images (`size` px, stored as PNG like a real image column) with labels `i % classes`."""
    generator = np.random.default_rng(seed)
    rows = [Image.fromarray(generator.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(images)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    return datasets.Dataset.from_dict({"image": rows, "label": [i % classes for i in range(images)]}, features=features)


def main() -> None:
    args = parse_args()
    common.setup(args)
    torch.set_grad_enabled(False)
    print(f"# Evaluation throughput: evaluate() with a {args.method} adapter vs zero-shot CLIP\n")
    print(f"machine: {common.machine(args)}; shape {args.shape}")
    print(f"command: {common.command_line()}\n")
    size = common.image_size(args.shape)
    tokenizer = common.load_tokenizer()
    processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    names = common.class_names(args.classes)
    test_set = synthetic_test_set(args.images, args.classes, size)
    plain = common.build_clip(args.shape)
    torch.manual_seed(0)
    adapted = get_peft_model(copy.deepcopy(plain), MuDPTConfig.for_method(args.method))

    def run(model):
        return lambda: evaluate(model, test_set, names, tokenizer, processor, TEMPLATE, batch_size=args.batch_size)

    results = {}

    def case(name, model):
        def call():
            results[name] = run(model)()

        return call

    timings = common.alternate({"adapter": case("adapter", adapted), "zero-shot": case("zero-shot", plain)},
                               reps=args.reps, warmup=1)  # fmt: skip
    header = ["case", "classes", "images", "batch", f"time per evaluate() ({CLOCK})", "images / s", "wall images / s",
              "**images/s adapter / zero-shot**", "fastest / fastest", "reps"]  # fmt: skip
    rows = []
    throughput = {name: [args.images / t for t in times] for name, times in timings.clock(CLOCK).items()}
    ratios = [a / z for a, z in zip(throughput["adapter"], throughput["zero-shot"], strict=True)]
    for name in ("adapter", "zero-shot"):
        wall = args.images / common.statistics.median(timings.wall[name])
        rows.append([name, args.classes, args.images, args.batch_size, common.seconds(timings.clock(CLOCK)[name]),
                     f"{common.statistics.median(throughput[name]):.2f}", f"{wall:.2f}",
                     common.spread(ratios) if name == "adapter" else "1",
                     f"{timings.fastest_ratio('zero-shot', 'adapter', CLOCK):.3f}" if name == "adapter" else "–",
                     args.reps])  # fmt: skip
    print("## evaluate(), end to end\n")
    print(common.table(header, rows))
    agreement = results["adapter"]["num_examples"] == results["zero-shot"]["num_examples"] == args.images
    print(f"\nboth evaluated {args.images} images: {agreement}; accuracy (random weights): adapter "
          f"{results['adapter']['accuracy']:.2f} %, zero-shot {results['zero-shot']['accuracy']:.2f} %")  # fmt: skip

    # the classifier calls alone, on the same preprocessed batches
    batches = []
    for start in range(0, min(args.images, args.model_batches * args.batch_size), args.batch_size):
        rows_of_batch = [test_set[i]["image"] for i in range(start, min(start + args.batch_size, args.images))]
        batches.append(processor(images=rows_of_batch, return_tensors="pt")["pixel_values"].to(common.device()))
    classifiers = {
        "adapter": PromptClassifier(adapted, tokenizer, names, template=TEMPLATE).eval(),
        "zero-shot": PromptClassifier(plain, tokenizer, names, template=TEMPLATE).eval(),
    }
    for classifier in classifiers.values():
        classifier.encode_classes()  # cached from here on

    def model_only(classifier):
        def call():
            with common.precision(args.dtype):
                for pixel_values in batches:
                    classifier(pixel_values=pixel_values)

        return call

    images = sum(len(b) for b in batches)
    timings = common.alternate({name: model_only(c) for name, c in classifiers.items()}, reps=args.model_reps)
    model_ratios = [z / a for a, z in zip(timings.clock(CLOCK)["adapter"], timings.clock(CLOCK)["zero-shot"],
                                          strict=True)]  # fmt: skip
    print(f"\n## Classifier calls only ({len(batches)} preprocessed batches, {images} images, class features cached)\n")
    header = ["case", "images", f"time ({CLOCK})", "images / s", "**images/s adapter / zero-shot**", "reps"]
    rows = [
        [name, images, common.seconds(timings.clock(CLOCK)[name]),
         f"{images / common.statistics.median(timings.clock(CLOCK)[name]):.2f}",
         common.spread(model_ratios) if name == "adapter" else "1", args.model_reps]
        for name in classifiers
    ]  # fmt: skip
    print(common.table(header, rows))
    print(f"\nclock: {CLOCK} time (see perf_common.Timings); after the runs: {common.load_average()}")


if __name__ == "__main__":
    main()
