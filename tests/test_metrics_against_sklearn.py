"""The evaluation metrics (`mudpt_peft.evaluation`) are written with torch, for tensors on any device and without a
dependency; scikit-learn (in the `test` extra) is the standard implementation they are checked against here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as sk

from mudpt_peft.evaluation import accuracy_metrics, confusion_matrix, per_class_accuracy


@pytest.mark.parametrize(("classes", "examples", "seed"), [(3, 50, 0), (7, 200, 1), (100, 1000, 2)])
def test_the_metrics_equal_scikit_learn_s(classes, examples, seed):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(examples, classes, generator=generator, dtype=torch.float64)  # continuous: no ties
    labels = torch.randint(0, classes, (examples,), generator=generator)
    labels[:classes // 2] = torch.arange(classes // 2)  # most classes present; with 100 classes some are absent
    predictions = logits.argmax(-1)

    ours = accuracy_metrics(logits, labels)
    assert ours["accuracy"] == pytest.approx(100 * sk.accuracy_score(labels.numpy(), predictions.numpy()), abs=1e-4)
    if classes > 5:
        expected = 100 * sk.top_k_accuracy_score(labels.numpy(), logits.numpy(), k=5, labels=np.arange(classes))
        assert ours["top5_accuracy"] == pytest.approx(expected, abs=1e-4)
    else:
        assert "top5_accuracy" not in ours

    matrix = confusion_matrix(labels, predictions, classes)
    assert matrix == sk.confusion_matrix(labels.numpy(), predictions.numpy(), labels=np.arange(classes)).tolist()

    names = [f"c{i}" for i in range(classes)]
    per_class = per_class_accuracy(matrix, names)
    present = np.isin(np.arange(classes), labels.numpy())
    recall = sk.recall_score(labels.numpy(), predictions.numpy(), labels=np.arange(classes), average=None,
                             zero_division=0)  # fmt: skip
    for index, name in enumerate(names):
        if present[index]:
            assert per_class[name] == pytest.approx(100 * recall[index], abs=1e-9)
        else:
            assert per_class[name] is None  # scikit-learn reports 0 for a class without examples; here: no number
