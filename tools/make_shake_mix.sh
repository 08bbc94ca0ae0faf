#!/usr/bin/env bash
# Builds data/shake-mix.h5, the training file of configs/cpu-pairs-small-shake.yaml:
# pairs-small's 540 train pairs three times each, plus camera-shake pairs made by
# dgf-make-pairs from the same sharp train halves at three kernel sizes (paths up to
# 9, 22 and 34 px), with sensor noise 2 and JPEG re-compression at 85-95. The test
# split is pairs-small's 64 test pairs. No test image is used for training.
#
#   tools/make_shake_mix.sh [PAIRS_DIR] [WORK_DIR]
set -euo pipefail
PAIRS=${1:-../shared/data/pairs-small}
WORK=${2:-data/shake-mix}
PY=${PY:-python}
mkdir -p "$WORK/sharp" "$WORK/mixed/train" "$WORK/mixed/test"
# The sharp (left) halves of the train pairs.
"$PY" - "$PAIRS/train" "$WORK/sharp" <<'PYEOF'
import sys
from pathlib import Path
from PIL import Image
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
for path in sorted(src.glob("*.jpg")):
    with Image.open(path) as im:
        w, h = im.size
        im.crop((0, 0, w // 2, h)).save(dst / (path.stem + ".png"))
PYEOF
for k in 9 21 31; do
  dgf-make-pairs "$WORK/sharp" "$WORK/k$k" --per-image 1 --size 256 --test-fraction 0 \
    --kernel-size "$k" --strength 0.75 --noise 2 --jpeg-quality-range 85 95 --seed "$k" \
    --overwrite --no-progress
done
for f in "$PAIRS"/train/*.jpg; do
  b=$(basename "$f" .jpg)
  for r in a b c; do ln -sf "$(realpath "$f")" "$WORK/mixed/train/ps_${b}_$r.jpg"; done
done
for k in 9 21 31; do
  for f in "$WORK/k$k"/train/*.jpg; do
    ln -sf "$(realpath "$f")" "$WORK/mixed/train/k${k}_$(basename "$f")"
  done
done
for f in "$PAIRS"/test/*.jpg; do ln -sf "$(realpath "$f")" "$WORK/mixed/test/"; done
build-hdf5 "$WORK/mixed" -o data/shake-mix.h5 --overwrite --no-progress
