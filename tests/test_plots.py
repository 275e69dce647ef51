"""`mudpt_peft.plots`: the PNGs of a run (training curves, confusion matrix) are written, sized to their content, drawn
without touching matplotlib's global state, and bad inputs are refused with a clear error."""

from __future__ import annotations

import pytest
from PIL import Image

from mudpt_peft.plots import plot_confusion_matrix, plot_training_curves

pytest.importorskip("matplotlib")

HISTORY = [
    *({"loss": 2.0 / (step + 1), "step": step, "epoch": step / 10} for step in range(1, 41)),
    *({"eval_accuracy": 40.0 + step, "eval_loss": 1.0, "step": step} for step in (10, 20, 30, 40)),
    {"train_runtime": 1.0, "step": 40},
]


def opened(path):
    with Image.open(path) as picture:
        picture.load()
        return picture


def test_training_curves_are_a_png_with_both_panels_drawn(tmp_path):
    written = plot_training_curves(HISTORY, tmp_path / "sub" / "curves.png", title="mudpt")
    assert written == str(tmp_path / "sub" / "curves.png")
    picture = opened(written)
    assert picture.format == "PNG" and (picture.width, picture.height) == (1100, 418)
    # not blank: both panels have drawn (non-white) pixels in their middle columns
    rgb = picture.convert("RGB")
    for x in (picture.width // 4, 3 * picture.width // 4):
        column = {rgb.getpixel((x, y)) for y in range(picture.height)}
        assert len(column) > 3


def test_training_curves_without_evaluations_say_so_and_without_losses_refuse(tmp_path):
    plot_training_curves([row for row in HISTORY if "eval_accuracy" not in row], tmp_path / "curves.png")
    assert opened(tmp_path / "curves.png").format == "PNG"
    with pytest.raises(ValueError, match="no training loss"):
        plot_training_curves([{"eval_accuracy": 50.0, "step": 3}], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_confusion_matrix_grows_with_the_class_count(tmp_path):
    small = plot_confusion_matrix([[3, 1], [0, 4]], ["cat", "dog"], tmp_path / "small.png", title="t")
    names = [f"class {i}" for i in range(40)]
    matrix = [[5 if i == j else (1 if j == (i + 1) % 40 else 0) for j in range(40)] for i in range(40)]
    large = plot_confusion_matrix(matrix, names, tmp_path / "large.png")
    assert opened(small).format == opened(large).format == "PNG"
    assert opened(large).width > opened(small).width and opened(large).height > opened(small).height


@pytest.mark.parametrize(
    ("matrix", "names", "message"),
    [
        ([[1, 2], [3]], ["a", "b"], "square"),
        ([], [], "square"),
        ([[1, 0], [0, 1]], ["a"], "has 2 classes but `class_names` has 1"),
        ([[1, -1], [0, 1]], ["a", "b"], "negative"),
    ],
)
def test_confusion_matrix_refuses_bad_input(tmp_path, matrix, names, message):
    with pytest.raises(ValueError, match=message):
        plot_confusion_matrix(matrix, names, tmp_path / "bad.png")


def test_no_global_matplotlib_state_is_touched(tmp_path):
    import matplotlib

    backend = matplotlib.get_backend()
    plot_confusion_matrix([[1, 0], [0, 1]], ["a", "b"], tmp_path / "m.png")
    plot_training_curves(HISTORY, tmp_path / "c.png")
    assert matplotlib.get_backend() == backend
    import sys

    if "matplotlib.pyplot" in sys.modules:  # pyplot imported by someone else: no figure of ours is left open
        assert sys.modules["matplotlib.pyplot"].get_fignums() == []
