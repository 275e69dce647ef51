"""Hostile adapter configs: the time and the memory it takes to refuse each one.

Adapters are files from anyone. Before `MuDPTConfig` bounded its size-like fields, a tiny `adapter_config.json` could
exhaust the machine before it was refused: `injection_layers=40000` took 665 s and 10.2 GB, `vision_n_ctx=2e7` 52 s
and 7.9 GB, `injection_mlp_ratio=2e5` 51 s and 5.7 GB, `injection_mlp_ratio=1e7` tried to allocate 92 GB, and 300
injection layers produced a 491,600-character error message. Each case here is such a file, loaded the way a user
loads an adapter, `PeftModel.from_pretrained(base_model, folder)`; the targets are a refusal (a `ValueError`) in under
1 s and 100 MB, with a short message.

Method. The script imports the libraries, builds the base model (random weights, `--shape`) and saves a valid
one-block adapter once; then every case runs in a process of its own, forked from that state, so that each starts
from the same memory and none inherits another's allocations. The case's process writes the adapter folder by hand:
`adapter_config.json` with the case's fields over the valid config (`json.dumps` writes NaN and infinity as `NaN` /
`Infinity`, which Python's `json` reads back) and, for the cases that say so, the valid adapter's weights. Then it
resets the kernel's peak resident-set counter (writing `5` to `/proc/self/clear_refs` sets `VmHWM` to the current
RSS, Linux >= 4.0), reads `VmHWM`, and times `PeftModel.from_pretrained` (`time.perf_counter`) until it raises.
`peak MB` is the rise of `VmHWM` over the call: every page the refusal touched, whether Python, torch's CPU
allocator or a library allocated it. Where `clear_refs` cannot be written, the rise of
`getrusage(RUSAGE_SELF).ru_maxrss` is reported instead, which only counts what goes above the peak of the preparation
(an underestimate; the table says which method was used). A case's address space is limited to `--memory_limit_mb`
above what it starts with, and a case not refused within `--timeout` seconds is killed: a regression shows as a row,
not as a machine that swaps.

The last row is a config within the bounds (24 injection blocks, the most `injection_layers` allows at MLP ratio 4)
next to the weights of a one-block adapter: it is built, then refused because the tensors do not match, with a
message that lists five of the missing tensors. It shows the cost an accepted config may have before its weights are
compared (about 1 GB of Injection Models on ViT-B/16), which the bounds keep to about the size of the base model; it
is not held to the targets.

    python benchmarks/hostile_configs.py                  # ViT-B/16 shape
    python benchmarks/hostile_configs.py --shape smoke    # toy widths (the test of the benchmark scripts)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import signal
import tempfile
import time
from pathlib import Path

#: name: (the fields written over a valid config, whether the folder holds the weights of a one-block adapter,
#: whether the case is held to the targets).
CASES: dict[str, tuple[dict, bool, bool]] = {
    "injection_layers=40000": ({"injection_layers": 40000}, False, True),
    "injection_layers=300": ({"injection_layers": 300}, True, True),
    "vision_n_ctx=2e7": ({"fusion": "cross_attention", "vision_n_ctx": 20_000_000}, False, True),
    "vision_n_ctx=2e7 (JSON float)": ({"fusion": "cross_attention", "vision_n_ctx": 2e7}, False, True),
    "injection_mlp_ratio=2e5": ({"injection_mlp_ratio": 2e5}, False, True),
    "injection_mlp_ratio=1e7": ({"injection_mlp_ratio": 1e7}, False, True),
    "300 ctx_init_token_ids": ({"ctx_init_token_ids": list(range(300))}, False, True),
    "n_ctx=300 and 300 ctx_init_token_ids": ({"n_ctx": 300, "ctx_init_token_ids": [1] * 300}, False, True),
    "injection_mlp_ratio=NaN": ({"injection_mlp_ratio": math.nan}, False, True),
    "prompt_init_std=Infinity": ({"prompt_init_std": math.inf}, False, True),
    "depth=1024 (> 12 layers)": ({"depth": 1024}, True, True),
    "injection_layers=24 (accepted), 1-block weights": ({"injection_layers": 24}, True, False),
}
TARGET_SECONDS, TARGET_MB = 1.0, 100.0
#: What the loader puts before the config's own message (after the file's name).
LOADER_PREFIX = " is not a valid MuDPT config: "


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="vit-b16", help="base model shape of perf_common.SHAPES")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default: 1)")
    parser.add_argument("--cases", default=None, help="comma-separated case names (default: all)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds a case may take (default 60)")
    parser.add_argument("--memory_limit_mb", type=int, default=4096, help="address space a case may add")
    return parser.parse_args()


# ---------------------------------------------------------------------------------------------------------------------
# one case, in its own process


def peak_rss_kb() -> int:
    """`VmHWM`, the peak RSS in KB (reset by `reset_peak_rss`)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise OSError("no VmHWM in /proc/self/status")


def reset_peak_rss() -> bool:
    """Set `VmHWM` to the current RSS (Linux >= 4.0); whether that worked."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        peak_rss_kb()
        return True
    except OSError:
        return False


def limit_address_space(extra_mb: int) -> None:
    """Let this process map at most `extra_mb` more than it maps now (a runaway case fails instead of swapping)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[0])
        limit = pages * os.sysconf("SC_PAGE_SIZE") + extra_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (OSError, ValueError):
        pass


def run_case(name: str, model, valid: Path, workdir: Path, memory_limit_mb: int) -> dict:
    """Write the case's adapter folder, then time `PeftModel.from_pretrained` on it and measure its peak memory."""
    from peft import PeftModel

    fields, with_weights, _ = CASES[name]
    folder = workdir / "hostile"
    config = json.loads((valid / "adapter_config.json").read_text())
    config["auto_mapping"] = None  # written by hand: no fingerprint of the weights
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({**config, **fields}))
    if with_weights:
        (folder / "adapter_model.safetensors").write_bytes((valid / "adapter_model.safetensors").read_bytes())
    limit_address_space(memory_limit_mb)

    reset = reset_peak_rss()
    method = "VmHWM" if reset else "ru_maxrss"
    before = peak_rss_kb() if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    try:
        PeftModel.from_pretrained(model, str(folder))
        error, other = None, "**not refused**"
    except ValueError as refusal:
        error, other = str(refusal).replace(str(folder), "<folder>"), None
    except Exception as exception:  # e.g. at the address-space limit: not a refusal
        error, other = None, f"**raised {type(exception).__name__}**: {str(exception)[:60]}"
    seconds = time.perf_counter() - start
    after = peak_rss_kb() if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_mb = max(0, after - before) / 1024
    return {"error": error, "other": other, "seconds": seconds, "peak_mb": peak_mb, "method": method}


def failure(text: str, seconds: float = math.nan) -> dict:
    """The row of a case that did not report its own result."""
    return {"error": None, "other": text, "seconds": seconds, "peak_mb": math.nan, "method": None}


def measure(name: str, model, valid: Path, args: argparse.Namespace) -> dict:
    """`run_case` in a forked process, killed after `args.timeout` seconds."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the case's process
        os.close(read_end)
        try:
            with tempfile.TemporaryDirectory() as workdir:
                result = run_case(name, model, valid, Path(workdir), args.memory_limit_mb)
        except BaseException as error:  # noqa: BLE001  (reported as the case's row)
            result = failure(f"**failed**: {error!r}"[:100])
        os.write(write_end, json.dumps(result).encode())
        os._exit(0)
    os.close(write_end)
    deadline = time.monotonic() + args.timeout
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read_end)
            return failure(f"**killed at {args.timeout:g} s**", math.inf)
        time.sleep(0.005)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    return json.loads(data) if data else failure("**the process died**")


# ---------------------------------------------------------------------------------------------------------------------
# the table


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def main() -> None:
    args = parse_args()
    names = list(CASES) if args.cases is None else [name.strip() for name in args.cases.split(",")]
    import perf_common as common
    import torch
    from peft import get_peft_model

    from mudpt_peft import MuDPTConfig

    torch.set_num_threads(args.threads)
    model = common.build_clip(args.shape).cpu()
    where = common.machine(argparse.Namespace(dtype="fp32"))
    print(f"# Hostile adapter configs ({args.shape} base model)\n\n{where}\n")
    print(f"Targets for the hostile cases: refused (a ValueError) in < {TARGET_SECONDS:g} s and < {TARGET_MB:g} MB.\n")
    print("| case | error (first 80 chars, after the file's name) | chars | seconds | peak MB | within targets |")
    print("| --- | --- | --- | --- | --- | --- |")
    methods = set()
    with tempfile.TemporaryDirectory() as tmp:
        valid = Path(tmp) / "valid"
        get_peft_model(common.build_clip(args.shape).cpu(), MuDPTConfig(depth=2)).save_pretrained(valid)
        for name in names:
            result = measure(name, model, valid, args)
            methods.add(result["method"])
            error, seconds, peak = result["error"], result["seconds"], result["peak_mb"]
            within = error is not None and seconds < TARGET_SECONDS and peak < TARGET_MB
            verdict = ("yes" if within else "**no**") if CASES[name][2] else "(not held to them)"
            shown = cell(result["other"]) if error is None else cell(error.split(LOADER_PREFIX, 1)[-1][:80])
            chars = "-" if error is None else str(len(error))
            print(f"| {name} | {shown} | {chars} | {seconds:.3f} | {peak:.1f} | {verdict} |", flush=True)
    print(
        "\nchars: the length of the whole message (the folder's path counted as `<folder>`). peak MB: the rise of "
        f"{', '.join(sorted(m for m in methods if m))} during `PeftModel.from_pretrained`."
    )


if __name__ == "__main__":
    main()
