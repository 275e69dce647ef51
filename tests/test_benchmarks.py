"""The performance scripts in `benchmarks/` run from the checkout and print their ratio tables (`imagenet_load.py`: its
timings).

They run on the `smoke` shape (the ViT-B depth and the real tokenizer at toy widths), so that a change to the library
or to transformers that breaks a script fails here rather than in the next measurement. No timing is asserted: the
figures of a toy model on a shared machine mean nothing; only that every table is there and every ratio is a number.
`hostile_configs.py` prints a row per hostile adapter config: here, that each is refused with a short message.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RATIO = r"\d+\.\d+ (\[\d+\.\d+–\d+\.\d+\] )?\(\d+\.\d+–\d+\.\d+\)"  # median [q1–q3] (min–max)


def run_script(name: str, *arguments: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / name), "--threads", "1", *arguments],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


def section(output: str, heading: str) -> str:
    """The text under the last `heading` line, up to the next heading."""
    assert heading in output, output[-3000:]
    return output.rsplit(heading, 1)[1].split("\n#", 1)[0]


def table_rows(text: str, first_cell: str) -> list[list[str]]:
    rows = [line for line in text.splitlines() if line.startswith(f"| {first_cell} |")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def test_perf_inference_prints_the_ratios():
    output = run_script("perf_inference.py", "--shapes", "smoke", "--batch_sizes", "1,2", "--reps", "3")
    rows = table_rows(section(output, "## Ratios"), "smoke")
    assert [row[1] for row in rows] == ["1", "2"]
    for row in rows:
        assert re.fullmatch(RATIO, row[4]), row  # mudpt / zero-shot
        assert re.fullmatch(RATIO, row[7]) and re.fullmatch(RATIO, row[8]), row  # limit / zero-shot, mudpt / limit
        assert row[-1] == "3"
    components = section(output, "## Per-call machinery costs")
    assert components.count("| smoke |") == 4 and "PromptClassifier._cached" in components


def test_perf_training_prints_every_section():
    output = run_script("perf_training.py", "--quick", "--shape", "smoke", "--reps", "2")
    summary = output.rsplit("# Summary", 1)[1]
    ratio, memory, scaling, profile = (
        section(summary, f"## {name}\n") for name in ("ratio", "memory", "scaling", "profile")
    )
    (row,) = table_rows(ratio, "4")
    assert row[1] == "100" and re.fullmatch(RATIO, row[4]), row
    assert re.fullmatch(r"[\d.]+ m?s, [\d.]+ m?s", row[7]), row  # kernel time of each step
    (row,) = table_rows(memory, "4")
    assert re.fullmatch(r"\*\*\d+\.\d{3}\*\*", row[4]), row  # peak memory mudpt / limit
    assert [(row[1], row[2]) for row in table_rows(scaling, "4")] == [("10", "9"), ("100", "9"), ("100", "1")]
    assert "fusion forward + backward" in profile and "median limit step" in profile


def test_perf_padding_prints_speedups_at_equal_logits():
    output = run_script("perf_padding.py", "--quick", "--shape", "smoke", "--reps", "2")
    rows = table_rows(output, "encode (inference)") + table_rows(output, "train step (batch 4)")
    assert len(rows) == 4  # printed as measured, then in the summary
    for row in rows:
        assert row[2].endswith("/ 77"), row
        assert float(row[8]) < 1e-4, row  # the logits agree whatever the padding


def test_hostile_configs_prints_a_refusal_per_case():
    output = run_script("hostile_configs.py", "--shape", "smoke")
    lines = output.split("| --- |", 1)[1].splitlines()[1:]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines if line.startswith("| ")]
    assert len(rows) == 12, output
    for case, error, chars, seconds, peak, verdict in rows:
        assert re.fullmatch(r"\d+\.\d{3}", seconds) and re.fullmatch(r"\d+\.\d", peak), (case, seconds, peak)
        assert re.fullmatch(r"\d+", chars), (case, error)  # a ValueError, whatever the time it took
        if verdict != "(not held to them)":
            assert error.startswith("`") and int(chars) < 400, (case, error)  # names the field, briefly
    assert "missing tensors" in rows[-1][1]


def test_imagenet_load_prints_the_timings_and_row_counts():
    output = run_script("imagenet_load.py", "--classes", "5", "--images", "3", "--val_images", "2", "--reps", "1")
    assert "# Synthetic ImageNet: 5 classes, 15 training and 10 validation images" in output
    rows = {row[0]: row[1:] for row in (line.strip("|").split("|") for line in output.splitlines() if "| `" in line)}
    counts = [cells[1].strip() for cells in rows.values()]
    assert counts == ["15 + 10 + 10", "15", "9"], output  # 3 shots of 5 classes; base: the first 3 classes
    assert all(re.fullmatch(r"\d+\.\d{3}", cells[0].strip()) for cells in rows.values()), output


def test_perf_cocoop_prints_the_peak_memory_table():
    arguments = ("--shape", "smoke", "--classes", "10", "--batch_sizes", "1,2", "--chunks", "8,all")
    output = run_script("perf_cocoop.py", *arguments)
    rows = table_rows(section(output, "## Peak memory of the class encoding"), "cocoop")
    assert [(row[2], row[3], row[4]) for row in rows] == [("1", "8", "8"), ("1", "all", "10"), ("2", "8", "8"),
                                                          ("2", "all", "20")]  # fmt: skip
    assert all(re.fullmatch(r"\*\*[\d,]+ MiB\*\*", row[7]) for row in rows)
    assert len(table_rows(section(output, "## Peak memory of the class encoding"), "coop")) == 1


def test_perf_training_imagenet_section_prints_chunked_and_unchunked_rows():
    arguments = ("--sections", "imagenet", "--shape", "smoke", "--imagenet_classes", "30", "--imagenet_cases",
                 "all,8,8+prefix")  # fmt: skip
    output = run_script("perf_training.py", *arguments, "--imagenet_batch_sizes", "2", "--imagenet_reps", "2")
    table = section(output.rsplit("# Summary", 1)[1], "## imagenet\n")
    limits = [row for n in (16, 4, 2) for row in table_rows(table, f"limit (n_ctx {n})")]
    assert [row[0] for row in limits] == [f"limit (n_ctx {n})" for n in (16, 4, 2, 2)]
    assert all(re.fullmatch(r"\*\*[\d,]+ MiB\*\*", limit[5]) for limit in limits), limits
    for method in ("coop", "cocoop", "maple", "mudpt"):
        rows = table_rows(table, method)
        assert [(row[1], row[2], row[3]) for row in rows] == [("2", "30", c) for c in ("all", "8", "8+prefix")], rows
        assert all(re.fullmatch(r"\*\*[\d,]+ MiB\*\*", row[5]) and re.fullmatch(r"\d+\.\d{3}", row[7]) for row in rows)
        assert all(re.fullmatch(RATIO, row[9]) for row in rows[1:]), rows  # chunked time / one forward


def test_perf_evaluation_prints_the_throughput_ratio():
    arguments = ("--shape", "smoke", "--classes", "12", "--images", "24", "--batch_size", "8", "--reps", "2")
    output = run_script("perf_evaluation.py", *arguments, "--model_reps", "2")
    rows = table_rows(section(output, "## evaluate(), end to end"), "adapter")
    assert len(rows) == 1 and rows[0][1:4] == ["12", "24", "8"], rows
    assert re.fullmatch(RATIO, rows[0][7]), rows  # images/s adapter / zero-shot
    assert len(table_rows(section(output, "## evaluate(), end to end"), "zero-shot")) == 1
    assert "both evaluated 24 images: True" in output
    (row,) = table_rows(section(output, "## Classifier calls only"), "adapter")
    assert re.fullmatch(RATIO, row[4]), row


def test_perf_shared_prefix_prints_both_ratios():
    output = run_script("perf_shared_prefix.py", "--quick", "--shape", "smoke", "--reps", "2")
    text = section(output, "## Shared / unshared text-tower step")
    rows = {row[0]: row for row in (table_rows(text, "coop") + table_rows(text, "mudpt"))}
    assert sorted(rows) == ["coop", "mudpt"], output
    for row in rows.values():
        assert row[1] == "100" and re.fullmatch(r"\*\*" + RATIO + r"\*\*", row[6]), row
        assert re.fullmatch(r"\*\*\d+\.\d{3}\*\*", row[9]) and float(row[10]) < 1e-3, row
    assert "cocoop: not shared" in output
