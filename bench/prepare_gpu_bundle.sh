#!/usr/bin/env bash
# Build bench/.gpu: what bench/gpu_check.py needs on a GPU machine that has torch (and transformers,
# safetensors, einops, sentencepiece, opencv, onnxruntime, timm, numpy, scipy) but no ComfyUI, no pip
# and no network. Git-ignored; nothing in it is ever committed.
#
#   COMFYUI_PATH=/path/to/ComfyUI [COMFY_PYTHON=python-with-ComfyUI's-requirements] \
#       bench/prepare_gpu_bundle.sh [--python-version 3.12] [--out bench/.gpu]
#
#   bench/.gpu/comfyui/   only the ComfyUI .py files an in-process import of the pack loads, plus what
#                         those files import (bench/gpu_bundle.py comfy-files)
#   bench/.gpu/wheels/    NAME==VERSION wheels for Python 3.12 x86_64 (bench/gpu_bundle.py requirements):
#                         what that import needs and the pack's lazy dependencies, less the machine's
#
# Then, there (the device tool carries ignored paths only when named: carry ["bench/.gpu"]):
#   python3 bench/gpu_check.py --bundle bench/.gpu --json "$OUT/gpu_check.json" --log-dir "$OUT/logs"
# gpu_check unzips the wheels itself into /tmp/ingredients-gpu-site (INGREDIENTS_BUNDLE_SITE) and
# appends that folder to sys.path after the machine's site-packages; with pip there, the same is
#   pip install --no-index --no-deps --target /tmp/ingredients-gpu-site bench/.gpu/wheels/*.whl
# The last line printed here is the total that travels (working tree + bundle), which must be <= 64 MiB
# (exit status 1 above it). ComfyUI 0.33.0 imports comfy_kitchen (a 56 MiB wheel) at start: its
# stand-in bench/comfy_kitchen_stand_in.py travels instead (kernels unavailable, ComfyUI falls back);
# comfy-aimdo (DynamicVRAM, 0.34 MB abi3 wheel) and torchaudio travel as wheels. Totals measured:
# 0.33.0 54.7 MiB, 0.3.64 49.8 MiB (with a 1.2 MiB working tree).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYVER=3.12
OUT="$REPO/bench/.gpu"
while [ $# -gt 0 ]; do
    case "$1" in
        --python-version) PYVER="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,/^set /{/^#/p}' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
: "${COMFYUI_PATH:?set COMFYUI_PATH to a ComfyUI checkout}"
COMFY_PYTHON="${COMFY_PYTHON:-python3}"          # has ComfyUI's and the pack's requirements
if [ -z "${PIP_PYTHON:-}" ]; then                   # any Python with pip (only downloads)
    PIP_PYTHON="$COMFY_PYTHON"
    [ -x "$REPO/.venv/bin/python" ] && PIP_PYTHON="$REPO/.venv/bin/python"
fi
export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-/tmp/numba-cache}" PYTHONDONTWRITEBYTECODE=1

mkdir -p "$OUT"
"$COMFY_PYTHON" "$REPO/bench/gpu_bundle.py" comfy-files --comfyui "$COMFYUI_PATH" --dest "$OUT/comfyui" 2>"$OUT/comfy-files.log" \
    || { tail -20 "$OUT/comfy-files.log" >&2; exit 1; }
"$COMFY_PYTHON" "$REPO/bench/gpu_bundle.py" requirements --comfyui-files "$OUT/comfyui" > "$OUT/wheels.txt"
echo "wheels for Python $PYVER: $(tr '\n' ' ' < "$OUT/wheels.txt")"

rm -rf "$OUT/wheels" && mkdir -p "$OUT/wheels"
# All platforms in one call: pip then ranks a binary wheel above a pure-Python one of the same
# version (one platform at a time, manylinux_2_28 alone, picks comfy-aimdo's py3-none-any wheel,
# which lacks its aimdo.so, over the abi3 manylinux_2_17 one; DynamicVRAM then stays off).
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64
           manylinux_2_12_x86_64 manylinux2010_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64)
download() {  # $1 = NAME==VERSION
    if "$PIP_PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" \
            "${PLATFORMS[@]/#/--platform=}" -d "$OUT/wheels" "$1" 2>>"$OUT/pip.log"; then
        return 0
    fi
    echo "no wheel of $1 for Python $PYVER on x86_64 Linux (see $OUT/pip.log)" >&2
    return 1
}
while read -r requirement; do
    [ -n "$requirement" ] && download "$requirement"
done < "$OUT/wheels.txt"
ls -1 "$OUT/wheels"
"$COMFY_PYTHON" "$REPO/bench/gpu_bundle.py" size --bundle "$OUT"
