"""Training cost of MuDPT against the frozen-backbone limit: time, peak memory, gradient checkpointing, scaling.

A **mudpt** step is what `PromptTuningTrainer` does per batch with the official recipe: `PromptClassifier` in training
mode (the class prompts re-encoded through the text tower with its prompts), cross-entropy, backward, SGD (momentum
0.9, weight decay 5e-4) over the adapter's parameters (prompts and the two Injection Models), `zero_grad`.

The **limit** is the least any prompt method must do on the same frozen backbone: the same two encoders with the same
token counts (the class prompts widened by `n_ctx` placeholder tokens after BOS; `n_ctx` zero tokens appended to the
vision tokens), forward, the same logits and loss, and backward down to the encoders' inputs (the token-embedding and
vision-embedding outputs are made to require grad by hooks), with no prompt machinery, no Injection Model and no
optimizer step. Both run on the same weights (random, ViT-B/16 shape unless `--shape`), alternately in one process.

Sections (`--sections`, default all):

- `ratio`: step time, mudpt / limit, at 100 classes, batch 4 (the official recipe) and batch 32. Target <= 1.15.
- `memory`: peak memory of one step, mudpt / limit (target <= 1.1), and mudpt with gradient checkpointing: its peak
  and time relative to mudpt without it.
- `scaling`: step time vs the number of classes (10, 100, 1000; depth 9) and vs depth (1, 5, 9, 12; 100 classes).
- `profile`: where the time of a mudpt step goes (torch.profiler), and the machinery's costs in isolation.
- `compile` (only when asked for): a mudpt step with both towers `torch.compile`d (inductor) vs eager, batch 4.
- `imagenet` (only when asked for): ImageNet scale, 1,000 classes (`--imagenet_classes`): peak memory and step time
  of the `--imagenet_methods` presets (`MuDPTConfig.for_method`; default coop, cocoop, maple, mudpt) per
  `--imagenet_cases`: `all` (every text row in one forward, no shared prefix: the library before chunking, the
  reference of the time ratios), a chunk size (`PromptClassifier(class_chunk_size=...)`, checkpointed chunks), and
  `+prefix` for the shared text prefix (`share_text_prefix=True`, the default), `+vgc` for gradient checkpointing of
  the vision tower's layers only (the text side is already bounded by the chunks; checkpointing its layers too would
  turn the shared prefix off); default `all,256+prefix`. Each method
  against the frozen-backbone limit with its own prompt count. CoCoOp's `all` is one forward of `batch x classes` rows.
  Slow on a CPU: a 1,000-class step takes 40-150 s on one thread.

    python benchmarks/perf_training.py                  # everything, 1 thread, fp32 (about 40 minutes on 1 core)
    python benchmarks/perf_training.py --quick          # batch 4 only, fewer repetitions (about 5 minutes)
    python benchmarks/perf_training.py --sections ratio,memory --dtype bf16
    python benchmarks/perf_training.py --sections imagenet --imagenet_batch_sizes 4 --imagenet_reps 2
    python benchmarks/perf_training.py --sections imagenet --imagenet_methods mudpt --imagenet_cases 128,512 \
        --no_imagenet_limit   # the chunk size's trade-off
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import statistics
import time
import warnings

import perf_common as common
import torch
import torch.nn.functional as F
from peft import get_peft_model
from torch import nn

from mudpt_peft import MuDPTConfig, PromptClassifier
from mudpt_peft.classifier import DEFAULT_CLASS_CHUNK_SIZE
from mudpt_peft.layer import replace_tokens

TEMPLATE = "a photo of a {}."
CLOCK = common.default_clock()
SECTIONS = ("ratio", "memory", "scaling", "profile")
EXTRA_SECTIONS = ("compile", "imagenet")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_arguments(parser)
    parser.add_argument("--shape", default="vit-b16", choices=sorted(common.SHAPES))
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated: {', '.join(SECTIONS + EXTRA_SECTIONS)} (compile is not in the default)",
    )
    parser.add_argument("--batch_sizes", default="4,32", help="batch sizes of the ratio section")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--depth", type=int, default=9)
    parser.add_argument("--n_ctx", type=int, default=2)
    parser.add_argument("--scaling_classes", default="10,100,1000")
    parser.add_argument("--scaling_depths", default="1,5,9,12")
    parser.add_argument("--reps", type=int, default=None, help="repetitions at batch 4 (default 11; quick: 5)")
    parser.add_argument("--large_reps", type=int, default=5, help="repetitions at batch >= 32 or 1000 classes")
    parser.add_argument("--imagenet_classes", type=int, default=1000, help="classes of the imagenet section")
    parser.add_argument("--imagenet_methods", default="coop,cocoop,maple,mudpt", help="presets, imagenet section")
    parser.add_argument("--imagenet_batch_sizes", default="4,32", help="batch sizes of the imagenet section")
    parser.add_argument(
        "--imagenet_cases",
        default=f"all,{DEFAULT_CLASS_CHUNK_SIZE}+prefix",
        help="imagenet section: 'all' (one forward, the reference of the time ratios) or a class_chunk_size, "
        "'+prefix' for the shared text prefix, '+vgc' for gradient checkpointing of the vision layers",
    )
    parser.add_argument(
        "--share_text_prefix", action="store_true",
        help="the mudpt step of the other sections with the shared text prefix (the library's default; without this "
        "flag they measure the tower's own forward, against which the limit is defined)",
    )  # fmt: skip
    parser.add_argument("--no_imagenet_limit", action="store_true", help="imagenet section without the limit rows")
    parser.add_argument("--imagenet_reps", type=int, default=2, help="timed steps per case of the imagenet section")
    args = parser.parse_args()
    if args.quick:
        args.batch_sizes, args.scaling_classes, args.scaling_depths = "4", "10,100", "1,9"
    args.reps = args.reps or (5 if args.quick else 11)
    return args


# --------------------------------------------------------------------------------------------------------------------
# the two steps


class Setup:
    """The plain CLIP, its tokenizer and class names, and builders of both steps on one batch."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.plain = common.build_clip(args.shape).train().requires_grad_(False)  # the backbone is frozen
        self.tokenizer = common.load_tokenizer()
        self.names = common.class_names(
            max([args.classes, args.imagenet_classes, *map(int, args.scaling_classes.split(","))])
        )
        self._limit_hooks: list = []

    def batch(self, size: int, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(size)
        pixels = common.image_size(self.args.shape)
        pixel_values = torch.randn(size, 3, pixels, pixels, generator=generator)
        labels = torch.randint(0, classes, (size,), generator=generator)
        return pixel_values.to(common.device()), labels.to(common.device())

    def mudpt_step(self, batch: int, classes: int, depth: int, checkpointing: bool = False):
        """`(step, model, optimizer, classifier)`: one training step of MuDPT through `PromptClassifier`."""
        model = common.mudpt(self.plain, depth=depth, n_ctx=self.args.n_ctx)
        if checkpointing:
            enable_checkpointing(model.get_base_model())
        share = self.args.share_text_prefix
        classifier = PromptClassifier(
            model, self.tokenizer, self.names[:classes], template=TEMPLATE, share_text_prefix=share
        ).train()
        parameters = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(parameters, lr=0.0025, momentum=0.9, weight_decay=5e-4)
        pixel_values, labels = self.batch(batch, classes)

        def step():
            with common.precision(self.args.dtype):
                loss = classifier(pixel_values=pixel_values, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step, model, optimizer, (pixel_values, labels)

    def method_step(
        self, method: str, batch: int, classes: int, chunk: int, share: bool = False, vision_checkpointing: bool = False
    ):
        """`(step, persistent)`: one training step of a method's preset through `PromptClassifier` with
        `class_chunk_size=chunk` and `share_text_prefix=share` (SGD as in `mudpt_step`), the vision tower's layers
        checkpointed if `vision_checkpointing`; `persistent`: what is live between steps."""
        torch.manual_seed(0)
        model = get_peft_model(copy.deepcopy(self.plain), MuDPTConfig.for_method(method))
        if vision_checkpointing:
            enable_checkpointing(model)
            for module in model.base_model.model.text_model.modules():  # the text side: bounded by the chunks
                if hasattr(module, "gradient_checkpointing"):
                    module.gradient_checkpointing = False
        names = self.names[:classes]
        classifier = PromptClassifier(
            model, self.tokenizer, names, template=TEMPLATE, class_chunk_size=chunk, share_text_prefix=share
        ).train()
        parameters = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(parameters, lr=0.0025, momentum=0.9, weight_decay=5e-4)
        pixel_values, labels = self.batch(batch, classes)

        def step():
            with common.precision(self.args.dtype):
                loss = classifier(pixel_values=pixel_values, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step, [model, optimizer, pixel_values, labels, classifier.class_input_ids]

    def limit_step(self, batch: int, classes: int, n_ctx: int | None = None):
        """`(step, inputs)`: the frozen-backbone limit (see the module docstring) on the plain model, with `n_ctx`
        prompt tokens (default `--n_ctx`)."""
        n_ctx, plain = self.args.n_ctx if n_ctx is None else n_ctx, self.plain
        tokens = self.tokenizer(
            [TEMPLATE.format(n) for n in self.names[:classes]], padding="longest", return_tensors="pt"
        )
        ids, mask = tokens["input_ids"], tokens["attention_mask"]
        placeholder = torch.zeros(ids.shape[0], n_ctx, dtype=ids.dtype)
        ids = torch.cat([ids[:, :1], placeholder, ids[:, 1:]], dim=1)
        mask = torch.cat([mask[:, :1], torch.ones_like(placeholder), mask[:, 1:]], dim=1)
        ids, mask = ids.to(common.device()), mask.to(common.device())
        pixel_values, labels = self.batch(batch, classes)

        def step():
            with encoder_inputs_require_grad(plain, n_ctx), common.precision(self.args.dtype):
                text = F.normalize(common.image_features(plain.get_text_features(input_ids=ids, attention_mask=mask)))
                image = common.image_features(plain.get_image_features(pixel_values=pixel_values))
                logits = common.logits_of(image, text, plain.logit_scale)
                loss = F.cross_entropy(logits.float(), labels)
            loss.backward()

        return step, (ids, mask, pixel_values, labels)


@contextlib.contextmanager
def encoder_inputs_require_grad(clip: nn.Module, n_ctx: int):
    """Hooks making the encoders' inputs require grad (the vision tokens widened by `n_ctx` zero tokens)."""

    def text_hook(module, args, output):
        return output.detach().requires_grad_()

    def vision_hook(module, args, output):
        extra = output.new_zeros(output.shape[0], n_ctx, output.shape[2])
        return torch.cat([output.detach(), extra], dim=1).requires_grad_()

    handles = [
        clip.text_model.embeddings.token_embedding.register_forward_hook(text_hook),
        clip.vision_model.embeddings.register_forward_hook(vision_hook),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def enable_checkpointing(model: nn.Module) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable({"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable({"use_reentrant": False})


# --------------------------------------------------------------------------------------------------------------------
# sections


def ratio_row(label: list, timings: common.Timings, reps: int, case: str = "mudpt", reference: str = "limit") -> list:
    times = timings.clock(CLOCK)
    return [
        *label,
        common.seconds(times[case]),
        common.seconds(times[reference]),
        common.spread(timings.ratios(case, reference, CLOCK)),
        f"{timings.fastest_ratio(case, reference, CLOCK):.3f}",
        common.spread(timings.ratios(case, reference, "wall")),
        f"{common.seconds(timings.system[case])}, {common.seconds(timings.system[reference])}",
        reps,
    ]


RATIO_HEADER = [
    f"mudpt ({CLOCK})",
    f"limit ({CLOCK})",
    "**mudpt / limit**",
    "fastest / fastest",
    "mudpt / limit (wall)",
    "kernel time (mudpt, limit)",
    "reps",
]


def reps_for(args, batch: int, classes: int) -> int:
    return args.large_reps if batch >= 32 or classes >= 1000 else args.reps


def section_ratio(setup: Setup) -> str:
    args, rows = setup.args, []
    for batch in map(int, args.batch_sizes.split(",")):
        mudpt, *_ = setup.mudpt_step(batch, args.classes, args.depth)
        limit, _ = setup.limit_step(batch, args.classes)
        reps = reps_for(args, batch, args.classes)
        timings = common.alternate({"mudpt": mudpt, "limit": limit}, reps=reps, warmup=1)
        rows.append(ratio_row([batch, args.classes], timings, reps))
        print(common.table(["batch", "classes", *RATIO_HEADER], rows[-1:]), flush=True)
        del mudpt
    return common.table(["batch", "classes", *RATIO_HEADER], rows)


def section_memory(setup: Setup) -> str:
    args, rows = setup.args, []
    for batch in map(int, args.batch_sizes.split(",")):
        mudpt, model, optimizer, inputs = setup.mudpt_step(batch, args.classes, args.depth)
        mudpt()  # the optimizer's momentum buffers exist from the first step on
        measured = common.peak_memory(mudpt, [model, optimizer, inputs])
        del mudpt, model, optimizer
        limit, inputs = setup.limit_step(batch, args.classes)
        limit()
        reference = common.peak_memory(limit, [setup.plain, inputs])
        checkpointed, model, optimizer, inputs = setup.mudpt_step(batch, args.classes, args.depth, checkpointing=True)
        checkpointed()
        with_gc = common.peak_memory(checkpointed, [model, optimizer, inputs])
        mudpt, *_ = setup.mudpt_step(batch, args.classes, args.depth)
        reps = min(reps_for(args, batch, args.classes), 3 if batch >= 32 else args.reps)
        timings = common.alternate({"gc": checkpointed, "mudpt": mudpt}, reps=reps, warmup=1)
        rows.append(
            [
                batch,
                args.classes,
                common.mib(measured["peak"]),
                common.mib(reference["peak"]),
                f"**{measured['peak'] / reference['peak']:.3f}**",
                f"{measured['transient'] / reference['transient']:.3f}",
                common.mib(with_gc["peak"]),
                f"{1 - with_gc['peak'] / measured['peak']:.1%}",
                common.spread(timings.ratios("gc", "mudpt", CLOCK)),
                reps,
            ]
        )
        print(common.table(MEMORY_HEADER, rows[-1:]), flush=True)
        print(f"(persistent: mudpt {common.mib(measured['persistent'])}, limit {common.mib(reference['persistent'])})")
        del checkpointed, mudpt, model, optimizer
    return common.table(MEMORY_HEADER, rows)


MEMORY_HEADER = [
    "batch",
    "classes",
    "mudpt peak",
    "limit peak",
    "mudpt / limit (peak)",
    "mudpt / limit (above weights)",
    "mudpt + GC peak",
    "GC peak reduction",
    "GC time / no GC",
    "reps (GC time)",
]


def section_scaling(setup: Setup) -> str:
    args, rows = setup.args, []
    batch = 4
    limits: dict[int, object] = {}
    configs = [(classes, args.depth) for classes in map(int, args.scaling_classes.split(","))]
    configs += [(args.classes, depth) for depth in map(int, args.scaling_depths.split(",")) if depth != args.depth]
    for classes, depth in configs:
        if classes not in limits:
            limits[classes] = setup.limit_step(batch, classes)[0]
        mudpt, *_ = setup.mudpt_step(batch, classes, depth)
        reps = reps_for(args, batch, classes)
        timings = common.alternate({"mudpt": mudpt, "limit": limits[classes]}, reps=reps, warmup=1)
        rows.append(ratio_row([batch, classes, depth], timings, reps))
        print(common.table(["batch", "classes", "depth", *RATIO_HEADER], rows[-1:]), flush=True)
        del mudpt
    return common.table(["batch", "classes", "depth", *RATIO_HEADER], rows)


def section_profile(setup: Setup) -> str:
    """A torch.profiler table of one mudpt step, and the machinery's costs measured in isolation."""
    from torch.profiler import ProfilerActivity, profile

    args = setup.args
    batch = int(args.batch_sizes.split(",")[0])
    step, model, optimizer, _ = setup.mudpt_step(batch, args.classes, args.depth)
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20), flush=True)

    tuner = model.get_base_model()
    text, vision = tuner.text_model, tuner.vision_model

    def fusion():
        with common.precision(args.dtype):
            loss = text.used_prompts("default").float().sum() + vision.used_prompts("default").float().sum()
        loss.backward()

    parameters = [p for p in model.parameters() if p.requires_grad]

    def optimizer_step():
        for p in parameters:
            p.grad = torch.zeros_like(p)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def fill_grads():
        for p in parameters:
            p.grad = torch.zeros_like(p)

    ids = PromptClassifier(model, setup.tokenizer, setup.names[: args.classes], template=TEMPLATE).class_input_ids
    length = ids.shape[1] + args.n_ctx
    patches = (vision.config.image_size // vision.config.patch_size) ** 2 + 1 + args.n_ctx
    shapes = [(args.classes, length, text.config.hidden_size, 1), (batch, patches, vision.config.hidden_size, None)]

    def token_writes():
        total = 0
        for rows, tokens, width, start in shapes:
            hidden = torch.randn(rows, tokens, width, device=common.device(), requires_grad=True)
            prompts = torch.randn(args.depth, args.n_ctx, width, device=common.device(), requires_grad=True)
            out = hidden
            for layer in range(1, args.depth):
                out = replace_tokens(out, prompts[layer], start)
            total = total + out.sum()
        total.backward()

    def token_writes_baseline():  # the same tensors and the backward of the sum, without the writes
        total = 0
        for rows, tokens, width, _ in shapes:
            hidden = torch.randn(rows, tokens, width, device=common.device(), requires_grad=True)
            torch.randn(args.depth, args.n_ctx, width, device=common.device(), requires_grad=True)
            total = total + hidden.sum()
        total.backward()

    fill = common.median_cpu_time(fill_grads, 11, warmup=1)
    costs = [
        ["fusion forward + backward (both Injection Models)", common.median_cpu_time(fusion, 11, warmup=1)],
        [
            f"SGD step + zero_grad ({sum(p.numel() for p in parameters) / 1e6:.2f} M parameters)",
            common.median_cpu_time(optimizer_step, 11, warmup=1) - fill,
        ],
        [
            f"token writes, {args.depth - 1} deep layers x 2 towers, forward + backward",
            common.median_cpu_time(token_writes, 11, warmup=1)
            - common.median_cpu_time(token_writes_baseline, 11, warmup=1),
        ],
    ]
    limit, _ = setup.limit_step(batch, args.classes)
    timings = common.alternate({"mudpt": step, "limit": limit}, reps=args.reps, warmup=0)
    gap = timings.median("mudpt", CLOCK) - timings.median("limit", CLOCK)
    rows = [[name, f"{seconds * 1e3:.1f} ms"] for name, seconds in costs]
    rows.append(["sum of the above", f"{sum(c[1] for c in costs) * 1e3:.1f} ms"])
    rows.append(["measured: median mudpt step - median limit step", f"{gap * 1e3:.1f} ms"])
    rows.append(["median limit step", f"{timings.median('limit', CLOCK) * 1e3:.1f} ms"])
    for case in ("mudpt", "limit"):
        share = statistics.median(s / c for s, c in zip(timings.system[case], timings.cpu[case], strict=True))
        rows.append([f"share of system time (page faults) in a {case} step", f"{share:.1%}"])
    return common.table([f"machinery cost (batch {batch}, {args.classes} classes, depth {args.depth})", CLOCK], rows)


def section_compile(setup: Setup) -> str:
    """A mudpt step with both towers compiled (`nn.Module.compile`, inductor) vs the same step eager."""
    args, batch = setup.args, int(setup.args.batch_sizes.split(",")[0])
    eager, *_ = setup.mudpt_step(batch, args.classes, args.depth)
    compiled, model, *_ = setup.mudpt_step(batch, args.classes, args.depth)
    tuner = model.get_base_model()
    start = time.perf_counter()
    tuner.text_model.compile()
    tuner.vision_model.compile()
    compiled()
    compile_time = time.perf_counter() - start
    timings = common.alternate({"compiled": compiled, "eager": eager}, reps=args.reps, warmup=1)
    rows = [
        [
            batch,
            args.classes,
            common.seconds(timings.clock(CLOCK)["eager"]),
            common.seconds(timings.clock(CLOCK)["compiled"]),
            common.spread(timings.ratios("eager", "compiled", CLOCK)),
            f"{compile_time:.0f} s",
            args.reps,
        ]
    ]
    header = ["batch", "classes", "eager", "compiled", "**eager / compiled**", "first call (compiling)", "reps"]
    return common.table(header, rows)


IMAGENET_HEADER = [
    "method",
    "batch",
    "classes",
    "class_chunk_size",
    "text tokens",
    "**peak**",
    "transient",
    "peak / limit peak",
    f"step ({CLOCK})",
    "**time / one forward**",
    "reps",
]


def imagenet_case(case: str, method: str, batch: int, classes: int) -> tuple[int, bool, bool]:
    """`(class_chunk_size, share_text_prefix, vision_checkpointing)` of an `--imagenet_cases` entry: `all` (one
    forward of every text row, the reference of the time ratios) or a chunk size, `+prefix` for the shared text prefix,
    `+vgc` for gradient checkpointing of the vision layers."""
    chunk, *extras = case.split("+")
    if not set(extras) <= {"prefix", "vgc"} or not (chunk == "all" or chunk.isdigit()):
        raise SystemExit(
            f"--imagenet_cases: expected 'all' or a chunk size, optionally '+prefix' and '+vgc'; got {case!r}"
        )
    rows = batch * classes if method == "cocoop" else classes  # CoCoOp encodes every class for every image
    return (rows if chunk == "all" else int(chunk)), "prefix" in extras, "vgc" in extras


def section_imagenet(setup: Setup) -> str:
    """Peak memory and step time at ImageNet scale: the class prompts in one forward, in checkpointed chunks, with
    and without the shared text prefix, against the frozen-backbone limit with the method's prompt count."""
    args, rows = setup.args, []
    classes = args.imagenet_classes
    for batch in map(int, args.imagenet_batch_sizes.split(",")):
        for method in args.imagenet_methods.split(","):
            n_ctx = MuDPTConfig.for_method(method).n_ctx
            reference = None
            if not args.no_imagenet_limit:
                limit, inputs = setup.limit_step(batch, classes, n_ctx)
                limit()
                reference = common.peak_memory(limit, [setup.plain, inputs])
                timings = common.alternate({"limit": limit}, reps=args.imagenet_reps, warmup=0)
                rows.append([f"limit (n_ctx {n_ctx})", batch, classes, "–", inputs[0].shape[1],
                             f"**{common.mib(reference['peak'])}**", common.mib(reference["transient"]), "1",
                             common.seconds(timings.clock(CLOCK)["limit"]), "–", args.imagenet_reps])  # fmt: skip
                print(common.table(IMAGENET_HEADER, rows[-1:]), flush=True)
                del limit, inputs
                gc.collect()
            cases, memory = {}, {}
            for case in args.imagenet_cases.split(","):
                chunk, share, vision_checkpointing = imagenet_case(case, method, batch, classes)
                step, persistent = setup.method_step(method, batch, classes, chunk, share, vision_checkpointing)
                step()  # the optimizer's momentum buffers exist from the first step on
                memory[case] = common.peak_memory(step, persistent)
                cases[case] = step
                tokens = persistent[-1].shape[1] + n_ctx
            timings = common.alternate(cases, reps=args.imagenet_reps, warmup=0)
            for case in cases:
                ratio = "1" if case == "all" else "–"
                if case != "all" and "all" in cases:
                    ratio = common.spread(timings.ratios(case, "all", CLOCK))
                to_limit = "–" if reference is None else f"{memory[case]['peak'] / reference['peak']:.3f}"
                rows.append([method, batch, classes, case, tokens, f"**{common.mib(memory[case]['peak'])}**",
                             common.mib(memory[case]["transient"]), to_limit,
                             common.seconds(timings.clock(CLOCK)[case]), ratio, args.imagenet_reps])  # fmt: skip
                print(common.table(IMAGENET_HEADER, rows[-1:]), flush=True)
            del cases, step, persistent
            gc.collect()
    return common.table(IMAGENET_HEADER, rows)


def main() -> None:
    args = parse_args()
    common.setup(args)
    sections = args.sections.split(",")
    print(f"# Training step: MuDPT (depth {args.depth}, n_ctx {args.n_ctx}) vs the frozen-backbone limit\n")
    print(f"machine: {common.machine(args)}; shape {args.shape}")
    print(f"command: {common.command_line()}\n")
    setup = Setup(args)
    results = {}
    for name in SECTIONS + EXTRA_SECTIONS:
        if name in sections:
            print(f"\n## {name}\n", flush=True)
            results[name] = globals()[f"section_{name}"](setup)
    print("\n# Summary (ratios: median [interquartile range] (min–max) over the repetitions)")
    for name, text in results.items():
        print(f"\n## {name}\n\n{text}")
    print(f"\nclock: {CLOCK} time (see perf_common.Timings); after the runs: {common.load_average()}")


if __name__ == "__main__":
    main()
