#!/usr/bin/env bash
# Packaging check: builds the sdist and the wheel (`python -m build`, the wheel from the sdist), checks that the wheel
# holds the library only (no examples/, tests/ or benchmarks/), installs it — not editable — into a fresh virtual
# environment and, from a directory outside the checkout, runs a smoke test: wrap a tiny random CLIP, forward, save the
# adapter, reload it onto a fresh model and compare the outputs. Exits non-zero on any failure.
#
#   bash scripts/wheel_smoke.sh
#
# `build` comes from the package's `docs` extra in the project's environment (set up on the first run, see
# scripts/setup.sh: MUDPT_VENV, PYTHON); the fresh environment is made with the same PYTHON and removed afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"
MUDPT_EXTRAS=docs
# shellcheck disable=SC1091
. scripts/setup.sh

work="$(mktemp -d "${TMPDIR:-/tmp}/mudpt-wheel-smoke.XXXXXX")"
trap 'rm -rf "$work"' EXIT

echo "== building the sdist and the wheel into $work/dist =="
python -m build --outdir "$work/dist" . >"$work/build.log" 2>&1 || { cat "$work/build.log" >&2; exit 1; }
shopt -s nullglob
wheels=("$work"/dist/*.whl)
sdists=("$work"/dist/*.tar.gz)
shopt -u nullglob
if [ "${#wheels[@]}" -ne 1 ] || [ "${#sdists[@]}" -ne 1 ]; then
  echo "expected one wheel and one sdist, got: $(ls "$work/dist")" >&2
  exit 1
fi
wheel="${wheels[0]}"

echo "== checking the wheel's contents =="
python - "$wheel" <<'PY'
import sys
import zipfile

path = sys.argv[1]
names = [info.filename for info in zipfile.ZipFile(path).infolist() if not info.is_dir()]
forbidden = [n for n in names if n.split("/")[0] in {"examples", "tests", "benchmarks"} or "/assets/" in n]
foreign = [n for n in names if not (n.startswith("mudpt_peft/") or n.split("/")[0].endswith(".dist-info"))]
if forbidden or foreign:
    print(f"the wheel must hold the library only; unexpected files: {sorted(set(forbidden + foreign))}", file=sys.stderr)
    sys.exit(1)
if "mudpt_peft/__init__.py" not in names:
    print("the wheel has no mudpt_peft/__init__.py", file=sys.stderr)
    sys.exit(1)
modules = sum(n.startswith("mudpt_peft/") for n in names)
size = sum(info.file_size for info in zipfile.ZipFile(path).infolist())
print(f"{path.rsplit('/', 1)[-1]}: {len(names)} files ({modules} in mudpt_peft/), {size:,} bytes uncompressed: library only")
PY
ls -l "$work/dist"

echo "== installing the wheel into a fresh virtual environment =="
"${PYTHON:-python3}" -m venv "$work/venv"
smoke_pip() { "$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check "$@"; }
# torch first, pinned: on this project's machines 2.13.0 is a local CPU wheel; an open range would pull a CUDA build
smoke_pip "torch==2.13.0"
smoke_pip "$wheel"

echo "== smoke test from outside the checkout =="
mkdir "$work/run"
cat >"$work/run/smoke.py" <<'PY'
import sys
import tempfile
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model
from transformers import CLIPConfig, CLIPModel

import mudpt_peft

repo = Path(sys.argv[1]).resolve()
location = Path(mudpt_peft.__file__).resolve()
assert repo not in location.parents, f"mudpt_peft was imported from the checkout ({location}), not from the wheel"
assert "site-packages" in location.parts, f"mudpt_peft is not an installed package: {location}"


def tiny_clip():
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=4, max_position_embeddings=16, bos_token_id=97, eos_token_id=98),
        vision_config=dict(hidden_size=48, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                           image_size=16, patch_size=8),
        projection_dim=24,
    )
    return CLIPModel(config).eval()


model = get_peft_model(tiny_clip(), mudpt_peft.MuDPTConfig(depth=3, n_ctx=2))
inputs = dict(
    input_ids=torch.tensor([[97, 10, 11, 98], [97, 12, 98, 98]]),
    attention_mask=torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
    pixel_values=torch.randn(2, 3, 16, 16),
)
with torch.no_grad():
    out = model(**inputs)
assert out.logits_per_image.shape == (2, 2), out.logits_per_image.shape
with tempfile.TemporaryDirectory() as out_dir:
    model.save_pretrained(out_dir)
    assert (Path(out_dir) / "adapter_model.safetensors").is_file(), sorted(p.name for p in Path(out_dir).iterdir())
    loaded = PeftModel.from_pretrained(tiny_clip(), out_dir)
    with torch.no_grad():
        reloaded = loaded(**inputs)
assert torch.equal(reloaded.logits_per_image, out.logits_per_image), "reloaded adapter gives other outputs"
assert torch.equal(reloaded.logits_per_text, out.logits_per_text), "reloaded adapter gives other outputs"
print(f"smoke test passed: mudpt_peft {mudpt_peft.__version__} from {location.parent}, torch {torch.__version__}")
PY
(cd "$work/run" && "$work/venv/bin/python" -I smoke.py "$repo")
