"""`python -m mudpt_peft.reproduce <protocol>`: one command per table of the papers.

Runs a protocol of the CoOp benchmark (see [`~mudpt_peft.protocols.PROTOCOLS`]) for a list of datasets, methods,
seeds and shots on a CLIP backbone, each method with its official recipe for the protocol
([`~mudpt_peft.protocols.recipe_for`]), and writes the papers' tables ([`~mudpt_peft.tables.format_tables`]):

    python -m mudpt_peft.reproduce fewshot --root ~/data --methods coop maple mudpt --zero-shot
    python -m mudpt_peft.reproduce base2new --root ~/data --methods mudpt
    python -m mudpt_peft.reproduce cross_dataset --root ~/data --methods maple mudpt
    python -m mudpt_peft.reproduce domain_generalization --root ~/data --methods maple mudpt

- **fewshot**: train on K shots per class of each dataset (Dassl's sampler, seeds 1 2 3), test on its test split.
- **base2new**: train on 16 shots of the base classes; the same adapter is tested on the base classes' test images
  and on the new classes' (relabelled from 0, with their own class names).
- **cross_dataset**: train on 16 shots of all 1000 ImageNet classes, test the same adapter on each target's test
  split with the target's class names.
- **domain_generalization**: the same ImageNet adapters on ImageNet-V2, -Sketch, -A and -R. The recipes are the
  cross-dataset ones, so the adapters of a cross-dataset run in the same `--output` are evaluated, not retrained.

The last checkpoint is evaluated. Every finished run appends one record per evaluated dataset to
`<output>/runs.jsonl` (protocol, dataset, method, seed, shots, the metrics, the exact recipe and adapter config,
versions, timings) and the tables `<output>/<protocol>.md` / `.csv` (and `fewshot.png` with matplotlib) are
rewritten, so an interrupted run has partial tables. A rerun skips the finished runs. A record is only reused for the
same recipe: if `runs.jsonl` holds a run with the same protocol, dataset, method, seed and shots but another recipe
(other hyper-parameters, backbone, `--max-steps`), the command refuses before training anything, so that one table
never mixes recipes; use another `--output` for another recipe. Each run's adapter is kept under
`<output>/adapters/` (`mudpt_peft.hub.save_pretrained`, with its model card) so that evaluations can be redone
(`--no-save-adapters` to skip).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ._version import __version__
from .benchmark_datasets import BENCHMARKS, get_benchmark, load_benchmark, protocol_splits
from .data import base_to_new
from .methods import normalize_method
from .protocols import (
    PROTOCOLS,
    RECIPES,
    Protocol,
    Recipe,
    get_protocol,
    recipe_for,
    trained_classes,
    training_steps,
)
from .tables import MATPLOTLIB_MISSING, ZERO_SHOT_METHODS, write_tables

__all__ = ["RESULTS_FILE", "PlannedRun", "RunStore", "Settings", "build_parser", "main", "plan_runs"]

#: The file of finished runs in `--output`.
RESULTS_FILE = "runs.jsonl"
DEFAULT_METHODS = ("coop", "vpt", "ivlp", "maple", "mudpt")
DEFAULT_BACKBONE = "openai/clip-vit-base-patch16"
_ZERO_SHOT_SOURCE = {
    "zero-shot": "KaiyangZhou/CoOp trainers/zsclip.py ZeroshotCLIP: CLIP with the dataset's CUSTOM_TEMPLATES prompt",
    "zero-shot-ensemble": "KaiyangZhou/CoOp trainers/zsclip.py ZeroshotCLIP2: the mean of CLIP's 7 selected ImageNet "
    "templates (and the dataset's own prompt on the other datasets)",
}


# ------------------------------------------------------------------------------------------------------------------
# the command line


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser (`python -m mudpt_peft.reproduce --help`)."""
    parser = argparse.ArgumentParser(
        prog="python -m mudpt_peft.reproduce",
        description="Run a protocol of the CoOp benchmark with each method's official recipe and write the papers' "
        "tables (see docs/reproduce.md).",
    )
    parser.add_argument("protocol", choices=list(PROTOCOLS), help="the protocol (the table) to run")
    parser.add_argument("--root", help="the benchmark data root (CoOp's $DATA; see docs/datasets.md)")
    parser.add_argument(
        "--datasets",
        nargs="+",
        metavar="NAME",
        help="datasets of mudpt_peft.benchmark_datasets.BENCHMARKS (default: the protocol's, see docs/reproduce.md; "
        "for cross_dataset and domain_generalization the targets)",
    )
    parser.add_argument("--source", help="the dataset the transfer protocols train on (default: imagenet)")
    parser.add_argument(
        "--methods",
        nargs="*",
        metavar="NAME",
        default=list(DEFAULT_METHODS),
        help=f"methods of mudpt_peft.methods.METHODS (default: {' '.join(DEFAULT_METHODS)}; none with --zero-shot "
        "alone: `--methods --zero-shot`)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], metavar="SEED", help="default: 1 2 3")
    parser.add_argument(
        "--shots", nargs="+", type=int, metavar="K", help="shots per class (fewshot: 1 2 4 8 16; the others: 16)"
    )
    parser.add_argument(
        "--backbone",
        default=DEFAULT_BACKBONE,
        help="a CLIP model: Hub id or local folder with its tokenizer and image processor (default: "
        f"{DEFAULT_BACKBONE})",
    )
    parser.add_argument("--output", default="out/reproduce", help="results folder (default: out/reproduce)")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"], help="default: cuda if available")
    parser.add_argument("--batch-size", type=int, default=100, help="evaluation batch size (default: 100, as Dassl)")
    parser.add_argument(
        "--num-workers", type=int, default=0, help="training data loader workers (default: 0; Dassl uses 8)"
    )
    parser.add_argument(
        "--zero-shot",
        nargs="?",
        const="template",
        choices=["template", "ensemble"],
        help="also evaluate zero-shot CLIP: with each dataset's CoOp template (`--zero-shot`: CoOp's ZeroshotCLIP, "
        "which every official zero-shot script runs) or CoOp's prompt ensemble (`--zero-shot ensemble`)",
    )
    parser.add_argument("--max-steps", type=int, help="stop each training after this many steps (smoke runs)")
    parser.add_argument("--no-save-adapters", action="store_true", help="do not keep each run's adapter")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their recipes, train nothing")
    parser.add_argument("--verbose", action="store_true", help="the Trainer's logging and progress bars per run")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status (2 for invalid arguments, named before anything runs).

    Args:
        argv (`Sequence[str]`, *optional*): The arguments (default: `sys.argv[1:]`).
    """
    args = build_parser().parse_args(argv)
    try:
        settings = _settings(args)
        store = RunStore(Path(args.output) / RESULTS_FILE)
        runs = plan_runs(settings)
        conflicts = store.conflicts(runs)
    except ValueError as error:
        print(f"python -m mudpt_peft.reproduce: error: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(_describe(settings, runs, store))
        return 0
    if conflicts:
        print(f"python -m mudpt_peft.reproduce: error: {_conflict_message(store, conflicts)}", file=sys.stderr)
        return 2
    try:
        session = _Session(settings)
        session.prepare(runs, store)
    except ValueError as error:
        print(f"python -m mudpt_peft.reproduce: error: {error}", file=sys.stderr)
        return 2
    with _quiet(settings.verbose):
        session.run(runs, store)
    return 0


@dataclass(frozen=True)
class Settings:
    """The validated arguments of a command."""

    protocol: Protocol
    datasets: tuple[str, ...]
    source: str | None
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    shots: tuple[int, ...]
    zero_shot: str | None
    backbone: str
    output: Path
    root: Path | None
    device: str
    batch_size: int
    num_workers: int
    max_steps: int | None
    save_adapters: bool
    verbose: bool


def _settings(args: argparse.Namespace) -> Settings:
    protocol = get_protocol(args.protocol)
    methods = tuple(dict.fromkeys(normalize_method(method) for method in args.methods))  # a typo fails here
    source = None
    if protocol.is_transfer:
        source = get_benchmark(args.source or protocol.source).name
        if get_benchmark(source).test_only:
            raise ValueError(f"--source {source}: {get_benchmark(source).title} is a test set only; train on ImageNet.")
    elif args.source is not None:
        raise ValueError(f"--source is for cross_dataset and domain_generalization, not {protocol.name}.")
    datasets = tuple(dict.fromkeys(get_benchmark(name).name for name in (args.datasets or protocol.datasets)))
    if not protocol.is_transfer:
        only_test = [get_benchmark(name).title for name in datasets if get_benchmark(name).test_only]
        if only_test:
            raise ValueError(
                f"{', '.join(only_test)} {'is a test set' if len(only_test) == 1 else 'are test sets'} only: "
                f"{protocol.name} trains on each dataset. Evaluate them with domain_generalization."
            )
    elif source in datasets:
        raise ValueError(f"--datasets lists the source {source!r}: it is evaluated anyway; list the targets only.")
    shots = tuple(dict.fromkeys(args.shots or protocol.shots))
    if any(k < 1 for k in shots):
        raise ValueError(f"--shots must be integers >= 1, got {list(shots)}.")
    if protocol.name != "fewshot" and len(shots) != 1:
        raise ValueError(f"{protocol.name} trains with one shot count (16 in the papers), got --shots {list(shots)}.")
    seeds = tuple(dict.fromkeys(args.seeds))
    if not seeds and methods:
        raise ValueError("--seeds needs at least one seed.")
    for name, value, low in (("--batch-size", args.batch_size, 1), ("--num-workers", args.num_workers, 0)):
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}.")
    if args.max_steps is not None and args.max_steps < 1:
        raise ValueError(f"--max-steps must be >= 1, got {args.max_steps}.")
    if not methods and not args.zero_shot:
        raise ValueError("Nothing to run: give --methods and/or --zero-shot.")
    if args.root is None and not args.dry_run:
        raise ValueError("--root (the benchmark data root, CoOp's $DATA) is required, except with --dry-run.")
    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available() and not args.dry_run:
        raise ValueError("--device cuda: torch sees no CUDA device here; use --device cpu (or auto).")
    return Settings(
        protocol=protocol,
        datasets=datasets,
        source=source,
        methods=methods,
        seeds=seeds,
        shots=shots,
        zero_shot={"template": "zero-shot", "ensemble": "zero-shot-ensemble"}.get(args.zero_shot),
        backbone=args.backbone,
        output=Path(args.output),
        root=Path(os.path.expanduser(args.root)) if args.root is not None else None,
        device=device,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        max_steps=args.max_steps,
        save_adapters=not args.no_save_adapters,
        verbose=args.verbose,
    )


# ------------------------------------------------------------------------------------------------------------------
# the runs


@dataclass(frozen=True, eq=False)
class PlannedRun:
    """One training (or zero-shot evaluation) and the datasets it is evaluated on.

    Args:
        protocol (`str`): The protocol.
        method (`str`): A [`~mudpt_peft.methods.METHODS`] name, `"zero-shot"` or `"zero-shot-ensemble"`.
        seed (`int`, *optional*): The run's seed (`None` for zero-shot).
        shots (`int`): Shots per class (0 for zero-shot).
        trained_on (`str`, *optional*): The dataset trained on (`None` for zero-shot).
        datasets (`tuple[str, ...]`): The datasets that get a record: the trained one, or the source and the targets.
        recipe (`Recipe`, *optional*): The recipe (`None` for zero-shot).
        recipe_hash (`str`): The hash of everything that determines the results.
        recipe_record (`dict`): The recipe as recorded.
    """

    protocol: str
    method: str
    seed: int | None
    shots: int
    trained_on: str | None
    datasets: tuple[str, ...]
    recipe: Recipe | None
    recipe_hash: str
    recipe_record: dict[str, Any] = field(compare=False)

    def key(self, dataset: str) -> tuple[str, str, str, int | None, int]:
        """The key of the record of `dataset`: `(protocol, dataset, method, seed, shots)`."""
        return (self.protocol, dataset, self.method, self.seed, self.shots)

    @property
    def zero_shot(self) -> bool:
        return self.method in ZERO_SHOT_METHODS


def plan_runs(settings: Settings) -> list[PlannedRun]:
    """The runs of a command, in the order they run: per dataset (the source for the transfer protocols), zero-shot
    first, then shots, seeds and methods."""
    protocol = settings.protocol
    runs: list[PlannedRun] = []
    trained = (settings.source,) if protocol.is_transfer else settings.datasets
    evaluated = {d: ((d, *settings.datasets) if protocol.is_transfer else (d,)) for d in trained}
    if settings.zero_shot:
        payload = {"method": settings.zero_shot, "backbone": settings.backbone, "subsample": protocol.subsample}
        record = {"official": True, "source": _ZERO_SHOT_SOURCE[settings.zero_shot], "note": "", "backbone": (
            settings.backbone)}  # fmt: skip
        datasets = tuple(d for d in trained for d in evaluated[d])
        runs.append(
            PlannedRun(protocol.name, settings.zero_shot, None, 0, None, datasets, None, _hash(payload), record)
        )
    for dataset in trained:
        for shots in settings.shots:
            for seed in settings.seeds:
                for method in settings.methods:
                    recipe = recipe_for(protocol.name, method, dataset, shots)
                    overrides = {"max_steps": settings.max_steps} if settings.max_steps else {}
                    payload = {
                        "recipe": {k: v for k, v in recipe.to_dict().items() if k not in ("source", "note")},
                        "training_overrides": overrides,
                        "backbone": settings.backbone,
                        "sampling": "dassl",
                        "subsample": protocol.subsample,
                        "seed": seed,
                    }
                    record = {**recipe.to_dict(), "training_overrides": overrides, "backbone": settings.backbone}
                    runs.append(
                        PlannedRun(
                            protocol.name,
                            method,
                            seed,
                            shots,
                            dataset,
                            evaluated[dataset],
                            recipe,
                            _hash(payload),
                            record,
                        )  # fmt: skip
                    )
    return runs


def _hash(payload: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


class RunStore:
    """The finished runs of an output folder: one JSON record per line of `runs.jsonl`.

    A record is appended (and flushed to disk) when its evaluation finishes. A last line cut off by an interrupted
    write is dropped from the file when it is next read, with a notice; any other unreadable line is an error that
    names it.

    Args:
        path (`str` or `os.PathLike`): The JSONL file (created on the first record).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.records: list[dict[str, Any]] = []
        self._index: dict[tuple, dict[str, Any]] = {}
        for record in self._read():
            self._add(record)

    def _add(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        self._index.setdefault(_record_key(record), record)

    def _read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        text = self.path.read_text(encoding="utf-8")
        lines = text.split("\n")
        records = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                if number == len(lines):  # no newline after it: the write was interrupted
                    print(
                        f"{self.path}: line {number} is incomplete (an interrupted write); dropping it, its run is "
                        "done again.",
                        file=sys.stderr,
                    )
                    self.path.write_text("\n".join(lines[:-1]) + ("\n" if number > 1 else ""), encoding="utf-8")
                    break
                raise ValueError(
                    f"Line {number} of {self.path} is not a JSON record ({error}); fix or remove it."
                ) from None
        return records

    def find(self, key: tuple) -> dict[str, Any] | None:
        """The (first) record with this `(protocol, dataset, method, seed, shots)` key, if any."""
        return self._index.get(key)

    def conflicts(self, runs: Sequence[PlannedRun]) -> list[tuple[PlannedRun, dict[str, Any]]]:
        """The planned runs whose key has a record made with another recipe (also two records of one key with
        different recipes in the file)."""
        found = []
        for record in self.records:
            first = self._index[_record_key(record)]
            if record.get("recipe_hash") != first.get("recipe_hash"):
                raise ValueError(
                    f"{self.path} holds two records of {_record_key(record)} with different recipes "
                    f"({first.get('recipe_hash')}, {record.get('recipe_hash')}); remove one of them."
                )
        for run in runs:
            for dataset in run.datasets:
                record = self.find(run.key(dataset))
                if record is not None and record.get("recipe_hash") != run.recipe_hash:
                    found.append((run, record))
                    break
        return found

    def done(self, run: PlannedRun) -> list[str]:
        """The datasets of `run` that have a record of its recipe."""
        found = [(d, self.find(run.key(d))) for d in run.datasets]
        return [d for d, record in found if record is not None and record.get("recipe_hash") == run.recipe_hash]

    def append(self, record: dict[str, Any]) -> None:
        """Append a record and flush it to disk."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self._add(record)


def _record_key(record: Mapping[str, Any]) -> tuple:
    return tuple(record.get(name) for name in ("protocol", "dataset", "method", "seed", "shots"))


def _conflict_message(store: RunStore, conflicts: Sequence[tuple[PlannedRun, dict[str, Any]]]) -> str:
    shown = []
    for run, record in conflicts[:5]:
        seed = "" if run.seed is None else f", seed {run.seed}"
        shown.append(
            f"  {run.protocol} {record['dataset']} {run.method}{seed}, {run.shots} shots: recorded "
            f"{record.get('recipe_hash')}, now {run.recipe_hash}"
        )
    more = f"\n  ... and {len(conflicts) - 5} more" if len(conflicts) > 5 else ""
    return (
        f"{store.path} holds {len(conflicts)} run(s) made with another recipe (hyper-parameters, backbone or "
        "--max-steps) than these arguments give:\n" + "\n".join(shown) + more + "\nThe tables would mix recipes: "
        "rerun with the arguments of those runs, pass another --output, or remove their lines from the file."
    )


# ------------------------------------------------------------------------------------------------------------------
# the dry run


def _describe(settings: Settings, runs: Sequence[PlannedRun], store: RunStore) -> str:
    protocol = settings.protocol
    pending = [run for run in runs if len(store.done(run)) < len(run.datasets)]
    conflicting = {id(run) for run, _ in store.conflicts(runs)}
    lines = [
        f"{protocol.name} ({protocol.title}; {protocol.tables}): {len(runs)} runs, {len(runs) - len(pending)} done, "
        f"backbone {settings.backbone}, output {settings.output}",
        "steps and images: for the real datasets' class counts, C x K training images per epoch "
        "(mudpt_peft.protocols.training_steps)",
        "",
        "| # | trained on | evaluated on | method | seed | shots | epochs | lr | batch | steps | images | status |",
        "| ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for number, run in enumerate(runs, 1):
        status = "pending" if any(run is other for other in pending) else "done"
        if id(run) in conflicting:
            status = "recorded with another recipe"
        evaluated = ", ".join(BENCHMARKS[d].title for d in run.datasets)
        seed = "–" if run.seed is None else str(run.seed)
        if run.recipe is None:
            lines.append(f"| {number} | – | {evaluated} | {run.method} | {seed} | 0 | – | – | – | – | – | {status} |")
            continue
        training = run.recipe.training
        epochs, batch = int(training["num_train_epochs"]), int(training["per_device_train_batch_size"])
        examples = trained_classes(run.trained_on, protocol.subsample) * run.shots
        steps = settings.max_steps or training_steps(examples, batch, epochs)
        images = steps * batch if settings.max_steps else examples * epochs
        lines.append(
            f"| {number} | {BENCHMARKS[run.trained_on].title} | {evaluated} | {run.method} | {seed} | {run.shots} | "
            f"{epochs} | {training['learning_rate']} | {batch} | {steps} | {images} | {status} |"
        )
    lines += ["", "Recipes (mudpt_peft.protocols.RECIPES):"]
    for method in settings.methods:
        row = RECIPES[(protocol.recipes, method)]
        kind = "official" if row.official else "not official"
        extra = []
        if row.config:
            extra.append(f"config overrides {dict(row.config)}")
        if row.epochs_by_shots:
            extra.append("epochs by shots " + ", ".join(f"<= {k}: {e}" for k, e in row.epochs_by_shots))
        if row.dataset_training:
            extra.append(f"per dataset {json.dumps({k: dict(v) for k, v in row.dataset_training.items()})}")
        lines.append(
            f"- {method} ({kind}): {dict(row.training)}, template {row.template!r}"
            + "".join(f"; {item}" for item in extra)
            + f"\n  source: {row.source}"
            + (f"\n  note: {row.note}" if row.note else "")
        )
    if settings.zero_shot:
        lines.append(f"- {settings.zero_shot}: {_ZERO_SHOT_SOURCE[settings.zero_shot]}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------------
# running


@contextlib.contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    """transformers' and datasets' logging and progress bars off during the runs (unless `verbose`), restored after."""
    import datasets
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = datasets.utils.logging.is_progress_bar_enabled()
    hf_bars = hf_logging.is_progress_bar_enabled()
    with warnings.catch_warnings():
        if not verbose:
            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()
            datasets.disable_progress_bars()
            # transformers' own deprecation, raised by the Trainer on every run (as pyproject.toml filters it)
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        try:
            yield
        finally:
            hf_logging.set_verbosity(verbosity)
            if hf_bars:
                hf_logging.enable_progress_bar()
            if bars:
                datasets.enable_progress_bars()


class _Session:
    """The backbone, the loaded datasets and the output folder of one command."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.splits: dict[str, Any] = {}
        self.halves: dict[str, tuple[Any, Any]] = {}
        self.plot_warned = False
        #: the class names and template of the last run trained here (for its ready classifier)
        self.trained_classes: tuple[list[str], str] | None = None

    def prepare(self, runs: Sequence[PlannedRun], store: RunStore) -> None:
        """Load the backbone's tokenizer, image processor and config and every dataset the pending runs need, and
        check every recipe against the backbone: all failures come before the first training."""
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPConfig

        from .config import MuDPTConfig

        backbone = self.settings.backbone
        try:
            self.model_config = CLIPConfig.from_pretrained(backbone)
            self.tokenizer = AutoTokenizer.from_pretrained(backbone)
            self.image_processor = AutoImageProcessor.from_pretrained(backbone)
        except OSError as error:
            raise ValueError(
                f"--backbone {backbone!r} could not be loaded as a CLIP model with its tokenizer and image processor "
                f"({str(error)[:300]})."
            ) from None
        layers = {
            "text": self.model_config.text_config.num_hidden_layers,
            "vision": self.model_config.vision_config.num_hidden_layers,
        }
        pending = [run for run in runs if len(store.done(run)) < len(run.datasets)]
        for run in pending:
            if run.recipe is None:
                continue
            config = MuDPTConfig.for_method(run.method, **run.recipe.config)
            for tower, prompted, depth in (
                ("text", config.text_prompts, config.text_depth or config.depth),
                ("vision", config.vision_prompts, config.vision_depth or config.depth),
            ):
                if prompted and depth > layers[tower]:
                    raise ValueError(
                        f"The {run.protocol} recipe of {run.method} prompts {depth} {tower} layers, but the backbone "
                        f"{backbone!r} has {layers[tower]}: the recipes are those of ViT-B/16 (12 layers per tower)."
                    )
        if self.settings.root is None:
            raise ValueError("--root is required to run (only --dry-run works without it).")
        for dataset in dict.fromkeys(d for run in pending for d in run.datasets):
            self.splits[dataset] = load_benchmark(dataset, self.settings.root)

    # --------------------------------------------------------------------------------------------------------------

    def run(self, runs: Sequence[PlannedRun], store: RunStore) -> None:
        from tqdm.auto import tqdm

        pending = [run for run in runs if len(store.done(run)) < len(run.datasets)]
        skipped = len(runs) - len(pending)
        protocol = self.settings.protocol.name
        bar = tqdm(total=len(runs), initial=skipped, desc=protocol, unit="run", file=sys.stderr, dynamic_ncols=True)
        try:
            for run in pending:
                if run.zero_shot:
                    bar.set_postfix_str(f"{run.method} on {len(run.datasets)} dataset(s)")
                else:
                    bar.set_postfix_str(f"{run.trained_on} {run.method} seed {run.seed}, {run.shots} shots")
                self._one(run, store)
                _release()
                self._tables(store)
                bar.update()
        finally:
            bar.close()
        self._tables(store)

    def _tables(self, store: RunStore) -> None:
        protocol = self.settings.protocol.name
        written = write_tables(protocol, store.records, self.settings.output)
        if protocol == "fewshot" and not any(path.suffix == ".png" for path in written) and not self.plot_warned:
            print(MATPLOTLIB_MISSING, file=sys.stderr)
            self.plot_warned = True

    def _one(self, run: PlannedRun, store: RunStore) -> None:
        done = set(store.done(run))
        todo = [d for d in run.datasets if d not in done]
        classifiers: dict[tuple, Any] = {}  # one per class names and templates: targets that share them share it
        if run.zero_shot:
            model = self._base_model()
            for dataset in todo:
                started = time.perf_counter()
                metrics = self._evaluate_dataset(run, model, dataset, classifiers)
                store.append(self._record(run, dataset, metrics, {"evaluate": time.perf_counter() - started}, {}))
            return
        adapter_dir = self._adapter_dir(run)
        started = time.perf_counter()
        checkpoint = False
        if (adapter_dir / "adapter_config.json").is_file():  # trained before; its evaluations were interrupted
            model = self._load_adapter(adapter_dir)
            info = {"adapter_reloaded": True, "adapter_config": _json_safe(model.peft_config["default"].to_dict())}
        else:
            model, info = self._train(run)
            if len(todo) > 1:  # a transfer run: kept until every target is evaluated, so a rerun need not train
                _save(model, adapter_dir)
                checkpoint = True
        if self.settings.save_adapters:
            info["adapter"] = adapter_dir.relative_to(self.settings.output).as_posix()
        train_seconds = time.perf_counter() - started
        for index, dataset in enumerate(todo):
            started = time.perf_counter()
            metrics = self._evaluate_dataset(run, model, dataset, classifiers)
            first = "load" if info.get("adapter_reloaded") else "train"
            seconds = {first: train_seconds if index == 0 else 0.0, "evaluate": time.perf_counter() - started}
            store.append(self._record(run, dataset, metrics, seconds, info))
        if self.settings.save_adapters:
            # with the evaluations in its model card; a ready classifier of the training classes when trained here
            trained = None if info.get("adapter_reloaded") else self.trained_classes
            _save(model, adapter_dir, trained, self.tokenizer, self.image_processor)
        elif checkpoint:  # --no-save-adapters: only the checkpoint this run wrote goes, never an earlier run's adapter
            shutil.rmtree(adapter_dir)

    # --------------------------------------------------------------------------------------------------------------

    def _base_model(self) -> Any:
        import torch
        from transformers import CLIPModel

        return CLIPModel.from_pretrained(self.settings.backbone, dtype=torch.float32).to(self.settings.device)

    def _load_adapter(self, folder: Path) -> Any:
        from peft import PeftModel

        return PeftModel.from_pretrained(self._base_model(), str(folder)).to(self.settings.device)

    def _adapter_dir(self, run: PlannedRun) -> Path:
        group = "transfer" if self.settings.protocol.is_transfer else run.protocol
        name = f"{run.shots}shots_seed{run.seed}_{run.recipe_hash}"
        return self.settings.output / "adapters" / group / run.trained_on / run.method / name

    def _train(self, run: PlannedRun) -> tuple[Any, dict[str, Any]]:
        from peft import get_peft_model
        from transformers import set_seed

        from .config import MuDPTConfig
        from .trainer import PromptTuningTrainer, default_training_arguments

        assert run.recipe is not None and run.seed is not None
        recipe = run.recipe
        splits = protocol_splits(
            self.splits[run.trained_on], run.shots, run.seed, subsample=self.settings.protocol.subsample
        )
        train = splits["train"]
        class_names = list(train.features["label"].names)
        set_seed(run.seed)
        model = get_peft_model(self._base_model(), MuDPTConfig.for_method(run.method, **recipe.config))
        batch = int(recipe.training["per_device_train_batch_size"])
        overrides: dict[str, Any] = {
            **recipe.training,
            "seed": run.seed,
            "use_cpu": self.settings.device == "cpu",
            "report_to": [],
            "save_strategy": "no",
            "logging_strategy": "steps" if self.settings.verbose else "no",
            "disable_tqdm": not self.settings.verbose,
            "dataloader_num_workers": self.settings.num_workers,
            # Dassl's training loader drops the last incomplete batch when there is a full one
            "dataloader_drop_last": len(train) >= batch,
            "per_device_eval_batch_size": self.settings.batch_size,
        }
        if self.settings.max_steps:
            overrides["max_steps"] = self.settings.max_steps
        with tempfile.TemporaryDirectory(prefix="mudpt-reproduce-") as work:
            args = default_training_arguments(run.method, work, shots=run.shots, **overrides)
            trainer = PromptTuningTrainer(
                model,
                class_names,
                self.tokenizer,
                args,
                train_dataset=train,
                image_processor=self.image_processor,
                template=recipe.template,
                augment=True,
                objective=_objective(run.method, recipe.objective),
            )
            if not self.settings.verbose:  # the Trainer prints its logs when its progress bars are off
                from transformers.trainer_callback import PrinterCallback

                trainer.remove_callback(PrinterCallback)
            output = trainer.train()
        model.eval()
        self.trained_classes = (class_names, recipe.template)
        return model, {
            "train_examples": len(train),
            "steps": int(output.global_step),
            "epochs": float(args.num_train_epochs),
            "dataloader_drop_last": bool(args.dataloader_drop_last),
            "adapter_config": _json_safe(model.peft_config["default"].to_dict()),
        }

    def _evaluate_dataset(
        self, run: PlannedRun, model: Any, dataset: str, classifiers: dict[tuple, Any]
    ) -> dict[str, Any]:
        """The accuracy of `model` on `dataset`'s test split (base and new halves with `subsample="base"`). The
        `PromptClassifier`s of earlier targets are in `classifiers`: a target with the same class names and templates
        (ImageNet-V2 and -Sketch after ImageNet) reuses its cached class features instead of encoding them again."""
        from .classifier import PromptClassifier
        from .evaluation import evaluate, harmonic_mean

        spec = get_benchmark(dataset)
        if run.zero_shot:
            templates = spec.templates(ensemble=run.method == "zero-shot-ensemble")
        else:
            templates = [run.recipe.template]
        subsample = self.settings.protocol.subsample

        def accuracy(split: Any) -> dict[str, Any]:
            names = list(split.features["label"].names)
            key = (tuple(names), tuple(templates))
            if key not in classifiers:
                classifiers[key] = PromptClassifier(
                    model, self.tokenizer, names, templates=templates, image_processor=self.image_processor
                )
            metrics = evaluate(
                classifiers[key], split, batch_size=self.settings.batch_size, dataset_name=dataset, split="test",
                shots=run.shots or None, seed=run.seed,
            )  # fmt: skip
            return {key: metrics[key] for key in ("accuracy", "top5_accuracy", "num_examples") if key in metrics}

        test = self.splits[dataset]["test"]
        if subsample == "base":
            if dataset not in self.halves:  # Dassl's subsample_classes, as protocol_splits applies it
                halves = base_to_new(test, list(test.features["label"].names))
                self.halves[dataset] = (halves.base, halves.new)
            base, new = self.halves[dataset]
            result = {"base": accuracy(base), "new": accuracy(new)}
            result["hm"] = harmonic_mean(result["base"]["accuracy"], result["new"]["accuracy"])
            return result
        return accuracy(test)

    def _record(
        self,
        run: PlannedRun,
        dataset: str,
        metrics: dict[str, Any],
        seconds: dict[str, float],
        info: dict[str, Any],
    ) -> dict[str, Any]:
        protocol = self.settings.protocol
        record: dict[str, Any] = {
            "protocol": run.protocol,
            "dataset": dataset,
            "method": run.method,
            "seed": run.seed,
            "shots": run.shots,
            "metrics": metrics,
        }
        if protocol.is_transfer:
            record["role"] = "source" if dataset == self.settings.source else "target"
        if run.trained_on is not None:
            record["trained_on"] = run.trained_on
        if run.zero_shot:
            spec = get_benchmark(dataset)
            info = {"templates": spec.templates(ensemble=run.method == "zero-shot-ensemble")}
        record.update(
            recipe_hash=run.recipe_hash,
            recipe=run.recipe_record,
            **info,
            seconds={key: round(value, 3) for key, value in seconds.items()},
            device=self.settings.device,
            dataloader_num_workers=self.settings.num_workers,
            versions=_versions(),
            finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        return record


def _save(
    model: Any,
    folder: Path,
    trained: tuple[list[str], str] | None = None,
    tokenizer: Any = None,
    image_processor: Any = None,
) -> None:
    """Save the adapter with its model card; with `trained` (the training class names and template) as a ready
    classifier: `prompt_classifier.json` and the processor files beside it, so that
    `PromptClassifier.from_pretrained(base_model, folder)` classifies images of the training classes."""
    from . import hub

    if trained is None:
        hub.save_pretrained(model, folder)
        return
    from .classifier import PromptClassifier

    class_names, template = trained
    hub.save_pretrained(PromptClassifier(model, tokenizer, class_names, template, image_processor), folder)
    for part in (tokenizer, image_processor):
        if part is not None and hasattr(part, "save_pretrained"):
            part.save_pretrained(folder)


def _release() -> None:
    """Free the memory of the finished run's model."""
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda item: sorted(item) if isinstance(item, set) else str(item)))


def _versions() -> dict[str, str]:
    versions = {"mudpt_peft": __version__, "python": platform.python_version()}
    for package in ("torch", "transformers", "peft", "datasets"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    return versions


if __name__ == "__main__":
    sys.exit(main())


def _objective(method: str, arguments: Mapping[str, Any]) -> Any:
    """The training objective of `method`'s row in `METHODS` (KgCoOp's, PromptSRC's; the cross-entropy for the
    others), with the protocol recipe's keyword arguments."""
    from .losses import OBJECTIVES
    from .methods import METHODS

    return OBJECTIVES[METHODS[method].objective](**arguments)
