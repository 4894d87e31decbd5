#!/usr/bin/env bash
# Each paper recipe for a fixed number of steps at its real batch size on this machine's GPU:
# steps/s, peak memory, data-loader wait share and the projected time of the full run.
#
#   benchmarks/paper_recipes_gpu.sh                       # 50 steps each, built-in shapes
#   STEPS=200 STORE=/data/store IMAGE_WEIGHTS=/w/resnet18.pth benchmarks/paper_recipes_gpu.sh
#
# STORE: a prepared store with meshes (default: the built-in shapes at 2048 points, 24 views of
# 224 px, prepared once into OUT/store). IMAGE_WEIGHTS: a torchvision ResNet-18 file for
# Pic@Point's frozen encoder (without it, its random-encoder variant runs: the same cost).
# The table is also written to OUT/paper_recipes_gpu.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-/tmp/paper_recipes_gpu}
args=(--steps "${STEPS:-50}" --out "$OUT" --json "$OUT/paper_recipes_gpu.json")
[ -n "${STORE:-}" ] && args+=(--store "$STORE")
[ -n "${IMAGE_WEIGHTS:-}" ] && args+=(--image-weights "$IMAGE_WEIGHTS")
[ -n "${DEVICE:-}" ] && args+=(--device "$DEVICE")
mkdir -p "$OUT"
"$PY" -c 'import torch; print("device:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (no GPU: not the measurement this script is for)")'
exec "$PY" benchmarks/paper_recipes_gpu.py "${args[@]}" "$@"
