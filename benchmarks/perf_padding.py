"""Class-prompt padding: to the longest prompt (what `PromptClassifier` does) vs to 77 tokens (the official code).

The official CoOp / MaPLe / MuDPT code tokenizes every class prompt to CLIP's full context of 77 tokens, prompt
placeholders included. `PromptClassifier` tokenizes the class prompts once, padded to the longest prompt, and the
text tower's MuDPT wrapper inserts the `n_ctx` prompt tokens after BOS. The text tower is causal and pools at EOS, so
the padding after EOS cannot change the class features: both paddings give the same logits (checked here, up to
floating-point summation order), and the shorter one is cheaper in proportion to the token count.

Cases, alternately in one process on one random-weight model (ViT-B/16 shape), the same `PromptClassifier` with its
class prompts padded either way (77 = the wrapper drops trailing padding to fit the 77 positions with the prompts):

- `encode`: encoding the class prompts once (inference, no autograd), for 100 and 1,000 classes;
- `train step`: a whole training step (batch 4, 100 classes: forward, backward, SGD), where the class prompts are
  re-encoded on every step.

    python benchmarks/perf_padding.py            # 1 thread, fp32
    python benchmarks/perf_padding.py --quick    # 100 classes only, fewer repetitions
"""

from __future__ import annotations

import argparse
import statistics

import perf_common as common
import torch

from mudpt_peft import PromptClassifier

TEMPLATE = "a photo of a {}."
CLOCK = common.default_clock()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_arguments(parser)
    parser.add_argument("--shape", default="vit-b16", choices=sorted(common.SHAPES))
    parser.add_argument("--encode_classes", default="100,1000", help="class counts of the encode case")
    parser.add_argument("--train_classes", type=int, default=100)
    parser.add_argument("--batch", type=int, default=4, help="images per training step")
    parser.add_argument("--depth", type=int, default=9)
    parser.add_argument("--n_ctx", type=int, default=2)
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 7; quick: 3)")
    parser.add_argument("--large_reps", type=int, default=3, help="repetitions with 1,000 classes")
    args = parser.parse_args()
    if args.quick:
        args.encode_classes = "100"
    args.reps = args.reps or (3 if args.quick else 7)
    return args


def padded_to_77(classifier: PromptClassifier, tokenizer) -> PromptClassifier:
    """A second classifier on the same model whose class prompts are padded to 77 tokens, as in the official code."""
    other = PromptClassifier(classifier.model, tokenizer, classifier.class_names, template=classifier.template)
    prompts = [classifier.template.format(name) for name in classifier.class_names]
    tokens = tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    other.class_input_ids = tokens["input_ids"].to(common.device())
    other.class_attention_mask = tokens["attention_mask"].to(common.device())
    other.clear_cache()
    return other.train(classifier.training)


def main() -> None:
    args = parse_args()
    common.setup(args)
    print("# Class prompts padded to the longest prompt vs to 77 tokens (MuDPT, PromptClassifier)\n")
    print(f"machine: {common.machine(args)}; shape {args.shape}")
    print(f"command: {common.command_line()}\n")
    tokenizer = common.load_tokenizer()
    plain = common.build_clip(args.shape)
    model = common.mudpt(plain, depth=args.depth, n_ctx=args.n_ctx)
    del plain
    rows = []
    header = [
        "case",
        "classes",
        "tokens (longest / 77)",
        f"longest ({CLOCK})",
        f"77 ({CLOCK})",
        "**speed-up (77 / longest)**",
        "fastest / fastest",
        "speed-up (wall)",
        "max abs logit difference",
        "reps",
    ]
    generator = torch.Generator().manual_seed(0)
    size = common.image_size(args.shape)
    pixel_values = torch.randn(args.batch, 3, size, size, generator=generator).to(common.device())

    for classes in map(int, args.encode_classes.split(",")):
        longest = PromptClassifier(model, tokenizer, common.class_names(classes), template=TEMPLATE).eval()
        full = padded_to_77(longest, tokenizer).eval()
        with torch.no_grad(), common.precision(args.dtype):
            difference = (longest(pixel_values=pixel_values).logits - full(pixel_values=pixel_values).logits).abs()

        def encode(classifier=None):
            with torch.no_grad(), common.precision(args.dtype):
                return classifier._encode_classes()

        reps = args.large_reps if classes >= 1000 else args.reps
        timings = common.alternate(
            {"longest": lambda c=longest: encode(c), "77": lambda c=full: encode(c)}, reps=reps, warmup=1
        )
        rows.append(row("encode (inference)", classes, longest, timings, difference, reps))
        print(common.table(header, rows[-1:]), flush=True)

    classes = args.train_classes
    longest = PromptClassifier(model, tokenizer, common.class_names(classes), template=TEMPLATE).train()
    full = padded_to_77(longest, tokenizer).train()
    labels = torch.randint(0, classes, (args.batch,), generator=torch.Generator().manual_seed(1)).to(common.device())
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.0025, momentum=0.9, weight_decay=5e-4
    )
    with torch.no_grad(), common.precision(args.dtype):
        difference = (longest(pixel_values=pixel_values).logits - full(pixel_values=pixel_values).logits).abs()

    def step(classifier):
        with common.precision(args.dtype):
            loss = classifier(pixel_values=pixel_values, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    timings = common.alternate({"longest": lambda: step(longest), "77": lambda: step(full)}, reps=args.reps, warmup=1)
    rows.append(row(f"train step (batch {args.batch})", classes, longest, timings, difference, args.reps))
    print(common.table(header, rows[-1:]), flush=True)

    lengths = common.token_lengths(tokenizer, [TEMPLATE.format(n) for n in common.class_names(1000)])
    print("\n## Summary (speed-ups: median [interquartile range] (min–max) over the repetitions)\n")
    print(common.table(header, rows))
    print(
        f"\nclass prompts '{TEMPLATE}' of the 1,000 benchmark class names: {statistics.mean(lengths):.1f} tokens on "
        f"average, {max(lengths)} at most (BOS and EOS included; + {args.n_ctx} prompt tokens in the text tower)"
    )
    print(f"clock: {CLOCK} time (see perf_common.Timings); after the runs: {common.load_average()}")


def row(case, classes, classifier, timings: common.Timings, difference: torch.Tensor, reps: int) -> list:
    times = timings.clock(CLOCK)
    length = classifier.class_input_ids.shape[1] + classifier.model.peft_config["default"].n_ctx
    return [
        case,
        classes,
        f"{min(length, 77)} / 77",
        common.seconds(times["longest"]),
        common.seconds(times["77"]),
        common.spread(timings.ratios("77", "longest", CLOCK), digits=2),
        f"{timings.fastest_ratio('77', 'longest', CLOCK):.2f}",
        common.spread(timings.ratios("77", "longest", "wall"), digits=2),
        f"{difference.max().item():.1e}",
        reps,
    ]


if __name__ == "__main__":
    main()
