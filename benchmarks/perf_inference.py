"""Inference cost of MuDPT: `PromptClassifier` (eval mode, cached class features) vs zero-shot CLIP on the same batch.

Three cases run alternately in one process on the same images, with random-weight CLIP models of the real shape:

- **mudpt**: `PromptClassifier(get_peft_model(clip, MuDPTConfig depth 9, n_ctx 2), ...)` in eval mode, the adapter
  frozen as when loaded for inference (`--adapter trainable`: as evaluated during training); its class
  features are cached (encoded on the warm-up call), so a call encodes the images only: the vision tower with its
  visual prompts, the T2V Injection Model (evaluated on every call), the class-feature cache check (a cheap key
  and a comparison of the text-side adapter values with a snapshot).
- **zero-shot**: the same weights without adapter, as plain CLIP zero-shot classification: `get_image_features`,
  normalise, matrix product with the cached class features, logit scale. No classifier object, no cache check.
- **limit**: zero-shot with `vision_n_ctx` extra tokens appended to the vision tokens (a hook on the vision
  embeddings; no prompt machinery): the cost of the longer sequence alone, `1 + n_ctx / (patches + 1)` in FLOPs.

Printed per shape and batch size: the median time per call and the ratios mudpt / zero-shot (target <= 1.05) and
mudpt / limit (the machinery alone), as median [interquartile range] (min–max) over the repetitions; as many
repetitions as `--budget` seconds allow (11 to 201).

    python benchmarks/perf_inference.py               # ViT-B/16 and ViT-B/32, batches 1 and 32, 1 thread, fp32
    python benchmarks/perf_inference.py --quick       # ViT-B/16, batch 1, 20 s of timed calls
    python benchmarks/perf_inference.py --dtype bf16  # under bf16 autocast (both sides)
    python benchmarks/perf_inference.py --profile     # also: where the time of one mudpt call goes
    python benchmarks/perf_inference.py --compile     # also: torch.compile of both vision towers (inductor)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time

import perf_common as common
import torch
from torch import nn

from mudpt_peft import PromptClassifier

TEMPLATE = "a photo of a {}."


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_arguments(parser)
    parser.add_argument(
        "--shapes",
        default="vit-b16,vit-b32",
        help="comma-separated: vit-b16, vit-b32 (smoke: toy widths, for the tests)",
    )
    parser.add_argument("--batch_sizes", default="1,32", help="comma-separated image batch sizes")
    parser.add_argument("--classes", type=int, default=100, help="number of classes (their features are cached)")
    parser.add_argument("--depth", type=int, default=9)
    parser.add_argument("--n_ctx", type=int, default=2)
    parser.add_argument(
        "--reps", type=int, default=None, help="timed repetitions per case (default: as many as --budget allows)"
    )
    parser.add_argument(
        "--budget", type=float, default=90.0, help="seconds of timed calls per shape and batch (11 to 201 reps)"
    )
    parser.add_argument(
        "--adapter",
        default="frozen",
        choices=["frozen", "trainable"],
        help="frozen: loaded for inference (PeftModel.from_pretrained's default); trainable: evaluation during "
        "training (the class-feature cache then also compares the trainable adapter values with a snapshot)",
    )
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="attention implementation")
    parser.add_argument("--profile", action="store_true", help="profile one mudpt call (torch.profiler)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd vision towers")
    args = parser.parse_args()
    if args.quick:
        args.shapes, args.batch_sizes, args.budget = "vit-b16", "1", 20.0
    return args


@contextlib.contextmanager
def extra_vision_tokens(clip: nn.Module, n_ctx: int):
    """Append `n_ctx` zero tokens to the vision embeddings' output (the sequence length MuDPT's prompts give)."""

    def hook(module, args, output):
        return torch.cat([output, output.new_zeros(output.shape[0], n_ctx, output.shape[2])], dim=1)

    handle = clip.vision_model.embeddings.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def build(args: argparse.Namespace, shape: str):
    """The classifier (mudpt), the plain model and its cached class features (zero-shot)."""
    tokenizer = common.load_tokenizer()
    names = common.class_names(args.classes)
    # frozen, as under the adapter: under autocast, weights that require grad have their low-precision casts cached
    # until the autocast region ends, which costs time on CPU (fresh memory on every call)
    plain = common.build_clip(shape, attn_implementation=args.attn).requires_grad_(False)
    model = common.mudpt(plain, depth=args.depth, n_ctx=args.n_ctx)
    if args.adapter == "frozen":
        model.requires_grad_(False)
    classifier = PromptClassifier(model, tokenizer, names, template=TEMPLATE).eval()
    zero_shot = PromptClassifier(plain, tokenizer, names, template=TEMPLATE).eval()
    with torch.no_grad(), common.precision(args.dtype):
        class_features = zero_shot.encode_classes().clone()
    return classifier, plain, class_features


def cases(args, classifier, plain, class_features, pixel_values):
    def mudpt():
        with torch.no_grad(), common.precision(args.dtype):
            return classifier(pixel_values=pixel_values).logits

    def zero_shot():
        with torch.no_grad(), common.precision(args.dtype):
            features = common.image_features(plain.get_image_features(pixel_values=pixel_values))
            return common.logits_of(features, class_features, plain.logit_scale)

    def limit():
        with extra_vision_tokens(plain, args.n_ctx):
            return zero_shot()

    return {"mudpt": mudpt, "zero-shot": zero_shot, "limit": limit}


CLOCK = common.default_clock()
HEADER = [
    "shape",
    "batch",
    f"mudpt ({CLOCK})",
    f"zero-shot ({CLOCK})",
    "**mudpt / zero-shot**",
    "fastest / fastest",
    "mudpt / zero-shot (wall)",
    "limit / zero-shot",
    "mudpt / limit",
    "reps",
]


def row(shape: str, batch: int, timings: common.Timings, reps: int) -> list:
    times = timings.clock(CLOCK)
    return [
        shape,
        batch,
        common.seconds(times["mudpt"]),
        common.seconds(times["zero-shot"]),
        common.spread(timings.ratios("mudpt", "zero-shot", CLOCK)),
        f"{timings.fastest_ratio('mudpt', 'zero-shot', CLOCK):.3f}",
        common.spread(timings.ratios("mudpt", "zero-shot", "wall")),
        common.spread(timings.ratios("limit", "zero-shot", CLOCK)),
        common.spread(timings.ratios("mudpt", "limit", CLOCK)),
        reps,
    ]


def repetitions(call, cases: int, budget: float) -> int:
    """As many repetitions as fit `budget` seconds (at least 11, at most 201), from one timed call."""
    call()
    start = time.perf_counter()
    call()
    return max(11, min(201, int(budget / (cases * (time.perf_counter() - start)))))


def component_costs(args, classifier, pixel_values) -> list[list[str]]:
    """Per-call costs of the machinery, measured in isolation (median CPU time of 50 calls)."""
    tower = classifier.model.base_model.model.vision_model

    with torch.no_grad(), common.precision(args.dtype):
        # the whole check before cached class features are reused: the cheap key, then the adapter's values
        cache_check = getattr(classifier, "_cached", None) or classifier._state_key  # `_state_key`: before 2026-12
        check = common.median_cpu_time(cache_check, n=50)
        prompts = common.median_cpu_time(lambda: tower.used_prompts("default"), n=50)
    return [
        ["class-feature cache check (`PromptClassifier._cached`)", f"{check * 1e3:.3f} ms"],
        ["vision prompts computed on every call (`used_prompts`: T2V Injection Model)", f"{prompts * 1e3:.3f} ms"],
    ]


def profile(args, call) -> None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def main() -> None:
    args = parse_args()
    common.setup(args)
    print(
        f"# Inference: PromptClassifier (MuDPT depth {args.depth}, n_ctx {args.n_ctx}, {args.adapter} adapter) vs "
        "zero-shot CLIP\n"
    )
    print(f"machine: {common.machine(args)}; attention: {args.attn}")
    print(f"command: {common.command_line()}\n")
    rows, component_rows, compiled_rows = [], [], []
    for shape in args.shapes.split(","):
        classifier, plain, class_features = build(args, shape)
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            torch.manual_seed(batch)
            size = common.image_size(shape)
            pixel_values = torch.randn(batch, 3, size, size).to(common.device())
            calls = cases(args, classifier, plain, class_features, pixel_values)
            reps = args.reps or repetitions(calls["mudpt"], len(calls), args.budget)
            timings = common.alternate(calls, reps=reps, warmup=2)
            rows.append(row(shape, batch, timings, reps))
            print(common.table(HEADER, rows[-1:]), flush=True)
            component_rows += [[shape, batch, *row] for row in component_costs(args, classifier, pixel_values)]
            if args.profile:
                print(f"\nprofile of one mudpt call ({shape}, batch {batch}):")
                profile(args, calls["mudpt"])
            if args.compile:
                compiled_rows.append([shape, batch, *compiled(args, classifier, plain, class_features, pixel_values)])
        del classifier, plain, class_features
    print("\n## Ratios (median [interquartile range] (min–max) over the repetitions)\n")
    print(common.table(HEADER, rows))
    print(f"\nclock: {CLOCK} time (see perf_common.Timings); after the runs: {common.load_average()}")
    print("\n## Per-call machinery costs, measured in isolation (median of 50 calls)\n")
    print(common.table(["shape", "batch", "component", "time"], component_rows))
    if compiled_rows:
        print("\n## torch.compile (inductor) of both vision towers\n")
        print(common.table(["shape", "batch", "compiled mudpt", "compiled zero-shot", "mudpt / zero-shot (compiled)",
                            "eager / compiled (mudpt)", "compile time"], compiled_rows))  # fmt: skip


def compiled(args, classifier, plain, class_features, pixel_values) -> list[str]:
    """Compile both vision towers in place (`nn.Module.compile`), time, then restore the eager towers."""
    towers = (classifier.model.base_model.model.vision_model, plain.vision_model)
    eager = cases(args, classifier, plain, class_features, pixel_values)["mudpt"]
    reps = args.reps or 11
    eager_times = common.alternate({"mudpt": eager}, reps=reps, warmup=1).clock(CLOCK)["mudpt"]
    saved = [copy.copy(tower.__dict__.get("_compiled_call_impl")) for tower in towers]
    start = time.perf_counter()
    for tower in towers:
        tower.compile()
    calls = cases(args, classifier, plain, class_features, pixel_values)
    for name in ("mudpt", "zero-shot"):
        calls[name]()
    compile_time = time.perf_counter() - start
    timings = common.alternate({"mudpt": calls["mudpt"], "zero-shot": calls["zero-shot"]}, reps=reps, warmup=1)
    for tower, impl in zip(towers, saved, strict=True):
        tower._compiled_call_impl = impl
    speedup = statistics.median(eager_times) / timings.median("mudpt", CLOCK)
    return [
        common.seconds(timings.clock(CLOCK)["mudpt"]),
        common.seconds(timings.clock(CLOCK)["zero-shot"]),
        common.spread(timings.ratios("mudpt", "zero-shot", CLOCK)),
        f"{speedup:.2f}",
        f"{compile_time:.0f} s",
    ]


if __name__ == "__main__":
    main()
