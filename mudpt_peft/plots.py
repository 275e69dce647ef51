"""Pictures of a run: training curves (loss and evaluation accuracy against the step) and the confusion matrix.

Drawn with matplotlib's object-oriented API on an Agg canvas (no `pyplot`, no global backend switch), written as PNG.
matplotlib is optional: `pip install matplotlib` (it comes with the `examples` and `benchmarks` extras).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["plot_confusion_matrix", "plot_training_curves"]


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Plotting needs matplotlib: `pip install matplotlib` (or the package's `examples` extra)."
        ) from error
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, path: str | os.PathLike) -> str:
    path = os.fspath(path)
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    figure.savefig(path, dpi=110, format="png")
    return path


def plot_training_curves(
    log_history: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    title: str | None = None,
    accuracy_key: str = "eval_accuracy",
    accuracy_label: str = "evaluation accuracy (%)",
) -> str:
    """Write the training loss and the evaluation accuracy against the optimizer step as a PNG.

    Args:
        log_history (`Sequence[Mapping]`):
            `trainer.state.log_history`: rows with `"step"` and `"loss"` (training) or `accuracy_key` (evaluation).
        path (`str` or `os.PathLike`):
            The PNG file to write (its folder is created).
        title (`str`, *optional*):
            The figure's title.
        accuracy_key (`str`, defaults to `"eval_accuracy"`):
            The key of the accuracy rows (`PromptTuningTrainer` logs `eval_accuracy` in percent).
        accuracy_label (`str`, defaults to `"evaluation accuracy (%)"`):
            The accuracy axis' label (say which split it is).

    Returns:
        `str`: the path written.

    Raises:
        `ValueError`: if no row has a finite training loss.
    """
    losses = [(row["step"], float(row["loss"])) for row in log_history if "loss" in row and "step" in row]
    losses = [(step, loss) for step, loss in losses if math.isfinite(loss)]
    accuracies = [
        (row["step"], float(row[accuracy_key])) for row in log_history if accuracy_key in row and "step" in row
    ]
    if not losses:
        raise ValueError(
            "`log_history` has no training loss to plot: train with `logging_steps` smaller than the number of steps "
            "(the rows need 'step' and 'loss')."
        )
    figure = _figure(10.0, 3.8)
    loss_axis, accuracy_axis = figure.subplots(1, 2)
    loss_axis.plot(*zip(*losses, strict=True), marker="." if len(losses) < 50 else None, color="tab:blue")
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("training loss")
    loss_axis.grid(alpha=0.3)
    if accuracies:
        accuracy_axis.plot(*zip(*accuracies, strict=True), marker="o", color="tab:green")
        top = max(accuracy for _, accuracy in accuracies)
        accuracy_axis.set_ylim(max(0.0, min(a for _, a in accuracies) - 5.0), min(100.0, top + 5.0))
    else:
        accuracy_axis.text(0.5, 0.5, "no evaluation during training", ha="center", va="center",
                           transform=accuracy_axis.transAxes)  # fmt: skip
    accuracy_axis.set_xlabel("step")
    accuracy_axis.set_ylabel(accuracy_label)
    accuracy_axis.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return _save(figure, path)


def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]],
    class_names: Sequence[str],
    path: str | os.PathLike,
    title: str | None = None,
) -> str:
    """Write a confusion matrix (rows: true class, columns: predicted class) as a PNG, each row coloured by its share
    of that class's images and annotated with the counts (up to 30 classes; beyond, colours only).

    Args:
        matrix (`Sequence[Sequence[int]]`):
            `matrix[i][j]`: the images of class `i` predicted as class `j` (`evaluate(...)["confusion_matrix"]`).
        class_names (`Sequence[str]`):
            The class of each row / column.
        path (`str` or `os.PathLike`):
            The PNG file to write (its folder is created).
        title (`str`, *optional*):
            The figure's title.

    Returns:
        `str`: the path written.

    Raises:
        `ValueError`: if the matrix is not square, its size differs from the number of class names, or it holds
            negative counts.
    """
    rows = [list(row) for row in matrix]
    size = len(rows)
    if size == 0 or any(len(row) != size for row in rows):
        raise ValueError(f"`matrix` must be square and non-empty, got rows of lengths {[len(r) for r in rows]}.")
    if len(class_names) != size:
        raise ValueError(f"`matrix` has {size} classes but `class_names` has {len(class_names)} names.")
    if any(value < 0 for row in rows for value in row):
        raise ValueError("`matrix` holds negative counts; pass the counts of `evaluate(...)['confusion_matrix']`.")
    shares = [[value / max(sum(row), 1) for value in row] for row in rows]
    side = min(max(4.0, 0.45 * size + 2.0), 24.0)
    figure = _figure(side + 1.0, side)
    axis = figure.subplots()
    image = axis.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="share of the true class")
    ticks = list(range(size))
    labels = [str(name) for name in class_names]
    axis.set_xticks(ticks, labels if size <= 60 else [""] * size, rotation=60, ha="right", fontsize=8)
    axis.set_yticks(ticks, labels if size <= 60 else [""] * size, fontsize=8)
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    if size <= 30:
        for i, row in enumerate(rows):
            for j, value in enumerate(row):
                if value:
                    color = "white" if shares[i][j] > 0.5 else "black"
                    axis.text(j, i, str(value), ha="center", va="center", fontsize=7, color=color)
    if title:
        axis.set_title(title)
    figure.tight_layout()
    return _save(figure, path)
