"""Peak memory of CoCoOp's per-image class encoding (`PromptClassifier` with `MuDPTConfig.for_method("cocoop")`).

CoCoOp shifts its context by a function of each image, so its class prompts are encoded once per image: a batch of
`B` images against `C` classes is `B x C` text sequences, where CoOp encodes `C` once and caches them.
`PromptClassifier` encodes them `class_chunk_size` (image, class) rows per text forward, so that the activations alive
at once are those of one chunk. This script measures the peak of that encoding (image features given, inference
without autograd), per class count, batch size and chunk size ("all": the `B x C` rows in one forward, what the
official `trainers/cocoop.py` does per image), and CoOp's one encoding of the same classes for comparison. The
model is a random-weight CLIP of ViT-B/16 shape (only the shapes matter for memory); the class prompts are
"{name}." after the 4 context tokens (the official CoCoOp prompt), with 1,000 realistic class names.

Peak = persistent (the model's weights and the image features) + transient (the most the allocator handed out during
the call; see `perf_common.peak_memory`).

    python benchmarks/perf_cocoop.py                      # ViT-B/16 shape, 100 and 1,000 classes, batch 1 and 4
    python benchmarks/perf_cocoop.py --chunks 64,256,all  # other chunk sizes
    python benchmarks/perf_cocoop.py --quick              # 100 classes only
"""

from __future__ import annotations

import argparse
import time

import perf_common as common
import torch
import torch.nn.functional as F
from peft import get_peft_model

from mudpt_peft import MuDPTConfig, PromptClassifier
from mudpt_peft._utils import projected_features
from mudpt_peft.classifier import DEFAULT_CLASS_CHUNK_SIZE

TEMPLATE = "{}."


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_arguments(parser)
    parser.add_argument("--shape", default="vit-b16", choices=sorted(common.SHAPES))
    parser.add_argument("--classes", default="100,1000", help="class counts")
    parser.add_argument("--batch_sizes", default="1,4", help="images per call")
    parser.add_argument(
        "--chunks", default=f"{DEFAULT_CLASS_CHUNK_SIZE},all", help="class_chunk_size values; 'all': one forward"
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    common.setup(args)
    print("# CoCoOp: peak memory of the per-image class encoding (PromptClassifier, inference)\n")
    print(f"machine: {common.machine(args)}; shape {args.shape}")
    print(f"command: {common.command_line()}\n")
    tokenizer = common.load_tokenizer()
    clip = common.build_clip(args.shape)
    torch.manual_seed(0)
    cocoop = get_peft_model(clip, MuDPTConfig.for_method("cocoop"))
    size = common.image_size(args.shape)
    rows = []
    header = ["method", "classes", "batch", "class_chunk_size", "text rows per forward", "tokens", "transient",
              "**peak**", "seconds (wall)"]  # fmt: skip
    for classes in map(int, ("100" if args.quick else args.classes).split(",")):
        names = common.class_names(classes)
        tokens = max(common.token_lengths(tokenizer, [TEMPLATE.format(name) for name in names])) + 4
        for batch in map(int, args.batch_sizes.split(",")):
            pixel_values = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
            with torch.no_grad():
                features = projected_features(cocoop.get_image_features(pixel_values=pixel_values.to(common.device())))
                features = F.normalize(features, dim=-1)
            for chunk in args.chunks.split(","):
                chunk_size = batch * classes if chunk == "all" else int(chunk)
                classifier = PromptClassifier(cocoop, tokenizer, names, template=TEMPLATE, class_chunk_size=chunk_size)
                classifier.eval()
                tower = classifier.conditioned_text_tower()

                def step(classifier=classifier, tower=tower, features=features):
                    with torch.no_grad(), common.precision(args.dtype):
                        return classifier._conditioned_similarities(tower, features)

                start = time.perf_counter()
                memory = common.peak_memory(step, [cocoop, features])
                elapsed = time.perf_counter() - start
                per_forward = min(chunk_size, batch * classes)
                rows.append(["cocoop", classes, batch, chunk, per_forward, tokens, common.mib(memory["transient"]),
                             f"**{common.mib(memory['peak'])}**", f"{elapsed:.1f}"])  # fmt: skip
                print("| " + " | ".join(map(str, rows[-1])) + " |", flush=True)
        # CoOp for comparison: its class features are encoded once for every image (and cached)
        coop = get_peft_model(common.build_clip(args.shape), MuDPTConfig.for_method("coop", n_ctx=4))
        classifier = PromptClassifier(coop, tokenizer, names, template=TEMPLATE).eval()

        def encode(classifier=classifier):
            with torch.no_grad(), common.precision(args.dtype):
                return classifier._encode_classes()

        memory = common.peak_memory(encode, [coop])
        rows.append(["coop", classes, "any", "–", classes, tokens, common.mib(memory["transient"]),
                     f"**{common.mib(memory['peak'])}**", "–"])  # fmt: skip
        print("| " + " | ".join(map(str, rows[-1])) + " |", flush=True)
        del coop, classifier
    print("\n## Peak memory of the class encoding\n")
    print(common.table(header, rows))


if __name__ == "__main__":
    main()
