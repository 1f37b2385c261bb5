#!/usr/bin/env bash
# The main job on the embedded digits data set (no download): train a model of the research,
# evaluate it and list the layers whose units can be analysed. Every step reads and writes
# files, and every --json result lands beside them in $OUT.
#
#   bash examples/pipeline.sh [OUT]          (ARCH, EPOCHS and DATA can be set in the environment)
set -euo pipefail
OUT=${1:-runs/digits}
ARCH=${ARCH:-vgg6}
EPOCHS=${EPOCHS:-10}
DATA=${DATA:-digits}
mkdir -p "$OUT"

snptool train --arch "$ARCH" --data "$DATA" --epochs "$EPOCHS" --lr-step 4 --no-flip \
    -o "$OUT/model.safetensors" --json > "$OUT/train.json"
snptool evaluate "$OUT/model.best.safetensors" --json > "$OUT/evaluate.json"
snptool layers "$OUT/model.best.safetensors" --taps-only --json > "$OUT/layers.json"

python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
train = json.load(open(f"{out}/train.json"))
evaluation = json.load(open(f"{out}/evaluate.json"))
layers = json.load(open(f"{out}/layers.json"))
print(f"best test accuracy {train['best_accuracy']:.4f} (epoch {train['best_epoch']}), "
      f"evaluated {evaluation['accuracy']:.4f} on {evaluation['samples']} test images; "
      f"{len(layers)} probe taps: {', '.join(l['layer'] for l in layers)}")
PY
