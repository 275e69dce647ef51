"""Text-tower training step with the shared text prefix (`PromptClassifier(share_text_prefix=True)`) against without.

A step is what `PromptTuningTrainer` does to the text side per batch: `PromptClassifier.encode_classes()` in training
mode (every class prompt re-encoded under autograd, in checkpointed chunks of `class_chunk_size`), the logits of a
batch of fixed image features against them, cross-entropy and backward, then `zero_grad`. With the shared prefix the
BOS and the `n_ctx` context tokens (and their deep prompts) are encoded once per step instead of once per class; each
class's own tokens attend to their keys and values. Both cases run on the same weights (random, ViT-B/16 text tower
unless `--shape`: width 512, 12 layers), alternately in one process; the ratio is shared / unshared per repetition.
The class prompts are "a photo of a {name}." with realistic class names. CoCoOp is not measured: its layer-0 context
differs per image, so its prefixes are not shared (the library runs its unshared encoding).

    python benchmarks/perf_shared_prefix.py                 # coop (n_ctx 16), mudpt (n_ctx 2), 100 and 1,000 classes
    python benchmarks/perf_shared_prefix.py --quick         # 100 classes only
"""

from __future__ import annotations

import argparse

import perf_common as common
import torch
import torch.nn.functional as F
from peft import get_peft_model

from mudpt_peft import MuDPTConfig, PromptClassifier
from mudpt_peft.classifier import DEFAULT_CLASS_CHUNK_SIZE

TEMPLATE = "a photo of a {}."
CLOCK = common.default_clock()
METHODS = {"coop": {"n_ctx": 16}, "mudpt": {"n_ctx": 2}}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_arguments(parser)
    parser.add_argument("--shape", default="vit-b16", choices=sorted(common.SHAPES))
    parser.add_argument("--classes", default="100,1000", help="class counts")
    parser.add_argument("--methods", default="coop,mudpt", help=f"among {sorted(METHODS)}")
    parser.add_argument("--batch", type=int, default=4, help="image features per step")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions per case")
    parser.add_argument("--class_chunk_size", type=int, default=DEFAULT_CLASS_CHUNK_SIZE)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    common.setup(args)
    print("# Shared text prefix: text-tower training step, shared / unshared\n")
    print(f"machine: {common.machine(args)}; shape {args.shape}; batch {args.batch}; clock {CLOCK}")
    print(f"command: {common.command_line()}\n")
    tokenizer = common.load_tokenizer()
    clip = common.build_clip(args.shape)
    width = clip.config.projection_dim
    header = ["method", "classes", "n_ctx", "tokens", "unshared step", "shared step", "**time ratio**",
              "unshared peak", "shared peak", "**peak ratio**", "max abs logit difference"]  # fmt: skip
    rows = []
    for method in args.methods.split(","):
        torch.manual_seed(0)
        model = get_peft_model(clip, MuDPTConfig.for_method(method, **METHODS[method]))
        for classes in map(int, ("100" if args.quick else args.classes).split(",")):
            names = common.class_names(classes)
            generator = torch.Generator().manual_seed(classes)
            features = F.normalize(torch.randn(args.batch, width, generator=generator), dim=-1).to(common.device())
            labels = torch.randint(0, classes, (args.batch,), generator=generator).to(common.device())
            classifiers = {
                share: PromptClassifier(
                    model, tokenizer, names, template=TEMPLATE, class_chunk_size=args.class_chunk_size,
                    share_text_prefix=share,
                ).train()
                for share in (False, True)
            }  # fmt: skip
            logits = {}

            def step(
                share: bool, classifiers=classifiers, features=features, labels=labels, logits=logits, model=model
            ) -> None:
                with common.precision(args.dtype):
                    scores = 100.0 * features @ classifiers[share].encode_classes().t()
                    F.cross_entropy(scores.float(), labels).backward()
                logits[share] = scores.detach()
                model.zero_grad(set_to_none=True)

            timings = common.alternate(
                {"unshared": lambda: step(False), "shared": lambda: step(True)}, args.reps, warmup=1
            )
            memory = {share: common.peak_memory(lambda s=share: step(s), [model, features]) for share in (False, True)}
            ratios = timings.ratios("shared", "unshared", CLOCK)
            difference = (logits[True] - logits[False]).abs().max().item()
            tokens = classifiers[False].class_input_ids.shape[1] + METHODS[method]["n_ctx"]
            rows.append([
                method, classes, METHODS[method]["n_ctx"], tokens,
                common.seconds(timings.clock(CLOCK)["unshared"]), common.seconds(timings.clock(CLOCK)["shared"]),
                f"**{common.spread(ratios)}**", common.mib(memory[False]["peak"]), common.mib(memory[True]["peak"]),
                f"**{memory[True]['peak'] / memory[False]['peak']:.3f}**", f"{difference:.2e}",
            ])  # fmt: skip
            print("| " + " | ".join(map(str, rows[-1])) + " |", flush=True)
        model = model.unload()
    print("\n## Shared / unshared text-tower step\n")
    print(common.table(header, rows))
    print("\ncocoop: not shared (its layer-0 context differs per image); not measured.")


if __name__ == "__main__":
    main()
