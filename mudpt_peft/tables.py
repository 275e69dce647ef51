"""The papers' result tables, from the records `python -m mudpt_peft.reproduce` writes: markdown, CSV and a plot.

One layout per protocol, as the papers print them:

- `fewshot` (CoOp's few-shot curves as a table): per dataset and on average, a row per method and a column per shot
  count, mean ± std over seeds; zero-shot CLIP in a `0 shots` column.
- `base2new` (CoCoOp / MaPLe Table 1): per dataset and on average, Base / New / HM per method. A dataset's HM is the
  harmonic mean of its seed-averaged base and new accuracies; the average row's HM is the harmonic mean of the
  *averaged* base and new accuracies, not the mean of the datasets' HMs.
- `cross_dataset` (CoCoOp / MaPLe Table 2) and `domain_generalization` (Table 3): a row per method, the source and
  each target as columns, and the average of the targets.

Means are over seeds; std is numpy's default (`ddof=0`), as CoOp's `parse_test_res.py` computes it; numbers have two
decimals. An average is only shown where every dataset of the table has the cell (the few-shot average over the
seeds every dataset has), so a partial run has partial tables, never an average over fewer datasets.
"""

from __future__ import annotations

import csv
import io
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .benchmark_datasets import BENCHMARKS
from .evaluation import harmonic_mean
from .methods import METHODS

__all__ = ["MATPLOTLIB_MISSING", "format_tables", "plot_fewshot", "write_tables"]

#: The message when the few-shot plot cannot be drawn.
MATPLOTLIB_MISSING = "matplotlib is not installed: no plot (pip install matplotlib)"
#: The zero-shot rows, first in every table.
ZERO_SHOT_METHODS = ("zero-shot", "zero-shot-ensemble")
_DASH = "–"

_INTRO = {
    "fewshot": (
        "Few-shot learning",
        "Top-1 accuracy (%) on each dataset's test split after training on K shots per class ({seeds}). Zero-shot "
        "CLIP is the `0 shots` column. The average is over the datasets below, computed per seed.",
    ),
    "base2new": (
        "Base-to-new generalisation",
        "Top-1 accuracy (%) of one adapter per seed, trained on 16 shots of the base classes (the first half of "
        "the labels), on the base classes' and on the new classes' test images ({seeds}). HM: the harmonic mean of "
        "the mean base and new accuracies; on the average row, of the averaged base and new accuracies.",
    ),
    "cross_dataset": (
        "Cross-dataset transfer",
        "Top-1 accuracy (%) on each dataset's test split of one adapter per seed trained on the source ({seeds}). "
        "Average: over the target datasets.",
    ),
    "domain_generalization": (
        "Domain generalisation",
        "Top-1 accuracy (%) on each dataset's test split of one adapter per seed trained on the source ({seeds}). "
        "Average: over the target datasets (ImageNet's variants).",
    ),
}


def format_tables(protocol: str, records: Iterable[Mapping[str, Any]]) -> tuple[str, str]:
    """The markdown and CSV tables of a protocol's records.

    Args:
        protocol (`str`): `"fewshot"`, `"base2new"`, `"cross_dataset"` or `"domain_generalization"`.
        records (`Iterable[Mapping]`): Records of finished runs (the lines of `runs.jsonl`); those of other
            protocols are left out.

    Returns:
        `tuple[str, str]`: the markdown text and the CSV text.
    """
    if protocol not in _INTRO:
        raise ValueError(f"Unknown protocol {protocol!r}; choose one of {', '.join(_INTRO)}.")
    rows = [record for record in records if record.get("protocol") == protocol]
    title, intro = _INTRO[protocol]
    seeds = sorted({r["seed"] for r in rows if r.get("seed") is not None})
    listed = ", ".join(str(seed) for seed in seeds)
    described = f"mean ± std over seeds {listed}" if protocol == "fewshot" else f"mean over seeds {listed}"
    lines = [f"# {title}", "", intro.format(seeds=described if seeds else "no trained runs yet"), ""]
    if protocol == "fewshot":
        body, table = _fewshot(rows)
    elif protocol == "base2new":
        body, table = _base2new(rows)
    else:
        body, table = _transfer(rows)
    lines += body + _recipes(rows)
    lines.append(f"Written by `python -m mudpt_peft.reproduce {protocol}` from `runs.jsonl` ({len(rows)} records).")
    return "\n".join(lines) + "\n", _csv(table)


def write_tables(protocol: str, records: Iterable[Mapping[str, Any]], folder: str | Path) -> list[Path]:
    """Write `<protocol>.md` and `<protocol>.csv` into `folder` (and `fewshot.png` for the few-shot protocol when
    matplotlib is installed); returns the paths written."""
    records = list(records)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    markdown, table = format_tables(protocol, records)
    written = []
    for suffix, text in ((".md", markdown), (".csv", table)):
        path = folder / f"{protocol}{suffix}"
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(text, encoding="utf-8")
        temporary.replace(path)  # a reader never sees half a table
        written.append(path)
    if protocol == "fewshot" and plot_fewshot(records, folder / "fewshot.png"):
        written.append(folder / "fewshot.png")
    return written


def plot_fewshot(records: Iterable[Mapping[str, Any]], path: str | Path) -> bool:
    """The few-shot curves, as in the CoOp paper: accuracy against shots per class, one panel for the average and
    one per dataset, a line per method (mean ± std over seeds), zero-shot CLIP as a star at 0 shots.

    Returns:
        `bool`: `True` when the plot was written, `False` when matplotlib is not installed ([`MATPLOTLIB_MISSING`]).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [record for record in records if record.get("protocol") == "fewshot"]
    cells = _fewshot_cells(rows)
    datasets = _datasets(rows)
    methods = _methods(rows)
    shots = sorted({r["shots"] for r in rows if r["method"] not in ZERO_SHOT_METHODS})
    positions = {k: index + 1 for index, k in enumerate(shots)}  # zero-shot at 0, shots evenly spaced
    panels = [(_average_title(datasets), None), *((BENCHMARKS[d].title, d) for d in datasets)]
    columns = 4
    rows_count = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows_count, columns, figsize=(4 * columns, 3.4 * rows_count), squeeze=False)
    colors = plt.get_cmap("tab10")
    for axis, (title, dataset) in zip(axes.flat, panels, strict=False):
        for index, method in enumerate(methods):
            points = []
            for k in [0] if method in ZERO_SHOT_METHODS else shots:
                values = (
                    _average_seeds(cells, datasets, method, k)
                    if dataset is None
                    else _seed_values(cells.get((dataset, method, k), {}))
                )
                if values:
                    points.append((positions.get(k, 0), statistics.fmean(values), statistics.pstdev(values)))
            if not points:
                continue
            xs, means, stds = zip(*points, strict=True)
            if method in ZERO_SHOT_METHODS:
                axis.plot(xs, means, marker="*", markersize=12, linestyle="", color="black", label=method)
            else:
                axis.errorbar(xs, means, yerr=stds, marker="o", capsize=3, color=colors(index % 10), label=method)
        axis.set_xticks([0, *positions.values()], ["0", *(str(k) for k in shots)])
        axis.set_xlabel("shots per class")
        axis.set_ylabel("accuracy (%)")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(panels) :]:
        axis.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=max(1, min(len(labels), 8)), frameon=False)
    figure.tight_layout(rect=(0, 0.05, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


# ------------------------------------------------------------------------------------------------------------------
# the tables

_Table = list[list[str]]


def _fewshot_cells(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str, int], dict[Any, float]]:
    cells: dict[tuple[str, str, int], dict[Any, float]] = defaultdict(dict)
    for r in rows:
        cells[(r["dataset"], r["method"], r["shots"])][r.get("seed")] = float(r["metrics"]["accuracy"])
    return cells


def _seed_values(cell: Mapping[Any, float]) -> list[float]:
    return [cell[seed] for seed in sorted(cell, key=lambda s: (s is not None, s))]


def _average_seeds(
    cells: Mapping[tuple[str, str, int], Mapping[Any, float]], datasets: Sequence[str], method: str, shots: int
) -> list[float]:
    """Per seed that every dataset has, the mean over the datasets; empty when a dataset lacks the cell."""
    per_dataset = [cells.get((dataset, method, shots), {}) for dataset in datasets]
    if not per_dataset or not all(per_dataset):
        return []
    common = set.intersection(*(set(cell) for cell in per_dataset))
    return [statistics.fmean(cell[seed] for cell in per_dataset) for seed in sorted(common, key=_seed_order)]


def _seed_order(seed: Any) -> tuple[bool, Any]:
    return (seed is not None, seed if seed is not None else 0)


def _fewshot(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], _Table]:
    cells = _fewshot_cells(rows)
    datasets, methods = _datasets(rows), _methods(rows)
    zero_shot = any(method in ZERO_SHOT_METHODS for method in methods)
    shots = sorted({r["shots"] for r in rows if r["method"] not in ZERO_SHOT_METHODS})
    columns = [0] * zero_shot + shots
    header = ["method", *(f"{k} shot{'s' * (k != 1)}" for k in columns)]
    table: _Table = [["dataset", "method", "shots", "mean", "std", "seeds"]]
    lines: list[str] = []
    sections = [(_average_title(datasets), None), *((BENCHMARKS[d].title, d) for d in datasets)]
    for title, dataset in sections:
        name = "Average" if dataset is None else title
        rows_md = []
        for method in methods:
            row = [method]
            for k in columns:
                if (k == 0) != (method in ZERO_SHOT_METHODS):
                    row.append(_DASH)
                    continue
                if dataset is None:
                    values = _average_seeds(cells, datasets, method, k)
                    seeds = sorted(
                        set.intersection(*(set(cells.get((d, method, k), {})) for d in datasets)), key=_seed_order
                    ) if values else []  # fmt: skip
                else:
                    cell = cells.get((dataset, method, k), {})
                    values, seeds = _seed_values(cell), sorted(cell, key=_seed_order)
                row.append(_mean_std(values))
                if values:
                    std = f"{statistics.pstdev(values):.2f}" if len(values) > 1 else ""
                    table.append([name, method, str(k), f"{statistics.fmean(values):.2f}", std, _join(seeds)])
            rows_md.append(row)
        lines += [f"## {title}", "", *_markdown(header, rows_md), ""]
    return lines, table


def _base2new(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], _Table]:
    cells: dict[tuple[str, str], dict[Any, tuple[float, float]]] = defaultdict(dict)
    for r in rows:
        metrics = r["metrics"]
        cells[(r["dataset"], r["method"])][r.get("seed")] = (
            float(metrics["base"]["accuracy"]),
            float(metrics["new"]["accuracy"]),
        )
    datasets, methods = _datasets(rows), _methods(rows)
    means = {
        key: (statistics.fmean(b for b, _ in cell.values()), statistics.fmean(n for _, n in cell.values()))
        for key, cell in cells.items()
    }
    table: _Table = [["dataset", "method", "seeds", "base", "new", "hm"]]
    lines: list[str] = []
    sections = [(_average_title(datasets), None), *((BENCHMARKS[d].title, d) for d in datasets)]
    for title, dataset in sections:
        rows_md = []
        for method in methods:
            if dataset is None:
                found = [means.get((d, method)) for d in datasets]
                pair = None
                if found and all(found):
                    pair = (statistics.fmean(b for b, _ in found), statistics.fmean(n for _, n in found))
                seeds = sorted(set.intersection(*(set(cells[(d, method)]) for d in datasets)), key=_seed_order) if (
                    pair
                ) else []  # fmt: skip
            else:
                pair = means.get((dataset, method))
                seeds = sorted(cells.get((dataset, method), {}), key=_seed_order)
            if pair is None:
                rows_md.append([method, _DASH, _DASH, _DASH])
                continue
            numbers = [f"{value:.2f}" for value in (*pair, harmonic_mean(*pair))]
            rows_md.append([method, *numbers])
            table.append(["Average" if dataset is None else title, method, _join(seeds), *numbers])
        lines += [f"## {title}", "", *_markdown(["method", "Base", "New", "HM"], rows_md), ""]
    return lines, table


def _transfer(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], _Table]:
    cells: dict[tuple[str, str], dict[Any, float]] = defaultdict(dict)
    for r in rows:
        cells[(r["dataset"], r["method"])][r.get("seed")] = float(r["metrics"]["accuracy"])
    sources = _ordered({r["dataset"] for r in rows if r.get("role") == "source"})
    targets = [d for d in _datasets(rows) if d not in sources]
    methods = _methods(rows)
    titles = [f"{BENCHMARKS[d].title} (source)" for d in sources] + [BENCHMARKS[d].title for d in targets]
    header = ["method", *titles, "Average"]
    table: _Table = [["method", "seeds", *titles, "Average"]]
    rows_md = []
    for method in methods:
        means = {d: statistics.fmean(cells[(d, method)].values()) for d in (*sources, *targets) if (d, method) in cells}
        target_means = [means.get(d) for d in targets]
        average = statistics.fmean(target_means) if targets and None not in target_means else None
        numbers = [_number(means.get(d)) for d in (*sources, *targets)] + [_number(average)]
        seeds = sorted({seed for (d, m), cell in cells.items() if m == method for seed in cell}, key=_seed_order)
        rows_md.append([method, *numbers])
        table.append([method, _join(seeds), *("" if n == _DASH else n for n in numbers)])
    return [*_markdown(header, rows_md), ""], table


def _recipes(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """What each row was trained with, from the records: official or not, the source, the note."""
    seen: dict[str, list[tuple[bool, str, str]]] = defaultdict(list)
    for r in rows:
        recipe = r.get("recipe") or {}
        entry = (bool(recipe.get("official")), str(recipe.get("source", "")), str(recipe.get("note", "")))
        if entry not in seen[r["method"]]:
            seen[r["method"]].append(entry)
    if not seen:
        return []
    lines = ["## Recipes", ""]
    for method in _methods(rows):
        for official, source, note in seen[method]:
            kind = "official" if official else "not official"
            lines.append(f"- `{method}` ({kind}): {source}" + (f". {note}" if note else ""))
    return [*lines, ""]


# ------------------------------------------------------------------------------------------------------------------
# helpers


def _ordered(datasets: Iterable[str]) -> list[str]:
    """Datasets in the papers' order (that of [`BENCHMARKS`]), unknown names last, sorted."""
    names = set(datasets)
    return [d for d in BENCHMARKS if d in names] + sorted(names - set(BENCHMARKS))


def _datasets(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    unknown = sorted({r["dataset"] for r in rows} - set(BENCHMARKS))
    if unknown:
        raise ValueError(f"The records name datasets that are not in BENCHMARKS: {unknown[:5]}.")
    return _ordered(r["dataset"] for r in rows)


def _methods(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Zero-shot first, then the methods in [`METHODS`] order, then any other name, sorted."""
    names = {r["method"] for r in rows}
    known = [*ZERO_SHOT_METHODS, *METHODS]
    return [m for m in known if m in names] + sorted(names - set(known))


def _average_title(datasets: Sequence[str]) -> str:
    return f"Average over {len(datasets)} dataset{'s' * (len(datasets) != 1)}"


def _mean_std(values: Sequence[float]) -> str:
    if not values:
        return _DASH
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.fmean(values):.2f} ± {statistics.pstdev(values):.2f}"


def _number(value: float | None) -> str:
    return _DASH if value is None else f"{value:.2f}"


def _join(seeds: Iterable[Any]) -> str:
    return " ".join(str(seed) for seed in seeds if seed is not None)


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "| --- |" + " ---: |" * (len(header) - 1),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def _csv(table: _Table) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(table)
    return buffer.getvalue()
