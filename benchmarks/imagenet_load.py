"""How long `load_benchmark("imagenet", root)` takes on a synthetic ImageNet folder, and the protocol's sampling on it.

The folder is CoOp's ImageNet layout (`classnames.txt`, `images/train/<wnid>/`, `images/val/<wnid>/`) with empty
files: the loader lists the folders and stores the paths without opening any image, so empty files measure the same
work as JPEGs. The timings are wall-clock (`time.perf_counter`), the median of `--reps` loads after one warm-up load
(which fills the file system's cache, as a second run on a real machine would be), and include building the Arrow
tables. `protocol_splits` is timed for 16 shots (training split only, as for ImageNet) and for the base classes.

    python benchmarks/imagenet_load.py                               # 1000 classes x 20 training images
    python benchmarks/imagenet_load.py --classes 5 --images 3 --reps 1   # a quick run (the test of the scripts)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mudpt_peft.benchmark_datasets import load_benchmark, protocol_splits  # noqa: E402


def write_imagenet(root: Path, classes: int, train_images: int, val_images: int) -> None:
    folder = root / "imagenet"
    wnids = [f"n{index:08d}" for index in range(classes)]
    folder.mkdir(parents=True)
    (folder / "classnames.txt").write_text("".join(f"{wnid} class {index}\n" for index, wnid in enumerate(wnids)))
    for split, count in (("train", train_images), ("val", val_images)):
        for wnid in wnids:
            class_dir = folder / "images" / split / wnid
            class_dir.mkdir(parents=True)
            for index in range(count):
                (class_dir / f"{wnid}_{index}.JPEG").touch()


def timed(function, reps: int) -> tuple[float, object]:
    result = function()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--images", type=int, default=20, help="training images per class")
    parser.add_argument("--val_images", type=int, default=5, help="validation images per class")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="ignored (the loader is single-threaded)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        start = time.perf_counter()
        write_imagenet(root, args.classes, args.images, args.val_images)
        written = time.perf_counter() - start
        load, splits = timed(lambda: load_benchmark("imagenet", root), args.reps)
        shots, run = timed(lambda: protocol_splits(splits, 16, 1), args.reps)
        base, base_run = timed(lambda: protocol_splits(splits, 16, 1, subsample="base"), args.reps)
    train, test = len(splits["train"]), len(splits["test"])
    print(f"# Synthetic ImageNet: {args.classes} classes, {train} training and {test} validation images\n")
    print("| step | seconds | rows |")
    print("| --- | ---: | ---: |")
    print(f"| writing the folder (empty files) | {written:.2f} | {train + test} |")
    print(f"| `load_benchmark('imagenet', root)` | {load:.3f} | {train} + {test} + {test} |")
    print(f"| `protocol_splits(..., 16, seed=1)` | {shots:.3f} | {len(run['train'])} |")
    print(f"| `protocol_splits(..., 16, seed=1, subsample='base')` | {base:.3f} | {len(base_run['train'])} |")
    print(f"\nmedian of {args.reps} after a warm-up; Python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
