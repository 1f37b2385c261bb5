#!/usr/bin/env bash
# Tree-3 (K = 6, M = 16) vs LeNet-5 on CIFAR-10, trained with one recipe, side by side:
# parameters, MACs per sample (of the exported ONNX graph), best and final test accuracy,
# training seconds per epoch, the published accuracy (arXiv 2211.11378, METHODS.md §11) and the
# gap to it.
#
#   bash examples/benchmarks/tree_vs_lenet.sh RUN_DIR EPOCHS [TRAIN_SUBSET]
#
# TRAIN_SUBSET: training images (class-balanced, first in file order; default all = 50,000),
# written once to RUN_DIR/cifar10_train-<n>.npz; the test set is always the 10,000 images of
# cifar10_test.npz. DATA (a data spec) replaces both; CIFAR_DIR (default ../shared/data) is the
# folder of the two files.
#
# Recipe (the Tree-3 paper's, METHODS.md §11, for both models): pixels on [0, 1] with no
# normalisation, flip + 4 px (1/8) translation, batch 100, SGD Nesterov, lr 0.075, momentum
# 0.965, weight decay 5e-5, lr × 0.8 every EPOCHS/10 epochs (20 of 200 in the paper). The paper
# trains LeNet-5 with its own schedule (lr 0.01 / 0.005 / 0.001); this script does not. LR,
# MOMENTUM, WEIGHT_DECAY, LR_DECAY, LR_STEP, SEED, DEVICE (auto), MODELS ("tree3 lenet5") and
# PYTHON come from the environment (the paper decays K = 15, M = 80 by 0.6: MODELS=tree3_k15_m80
# LR_DECAY=0.6). Finished models in RUN_DIR are not trained again.
set -euo pipefail
USAGE="usage: tree_vs_lenet.sh RUN_DIR EPOCHS [TRAIN_SUBSET]"
OUT=${1:?$USAGE}
EPOCHS=${2:?$USAGE}
TRAIN_SUBSET=${3:-all}
HERE=$(cd "$(dirname "$0")" && pwd)
CIFAR_DIR=${CIFAR_DIR:-$HERE/../../../shared/data}
PYTHON=${PYTHON:-python3}
LR=${LR:-0.075}
MOMENTUM=${MOMENTUM:-0.965}
WEIGHT_DECAY=${WEIGHT_DECAY:-5e-5}
LR_DECAY=${LR_DECAY:-0.8}
LR_STEP=${LR_STEP:-$(( EPOCHS >= 10 ? EPOCHS / 10 : 1 ))}
SEED=${SEED:-0}
DEVICE=${DEVICE:-auto}
read -r -a MODELS <<< "${MODELS:-tree3 lenet5}"
mkdir -p "$OUT"

if [ -z "${DATA:-}" ]; then
    for split in train test; do
        [ -f "$CIFAR_DIR/cifar10_$split.npz" ] || {
            echo "error: no $CIFAR_DIR/cifar10_$split.npz; set CIFAR_DIR to their folder" >&2
            exit 2
        }
    done
    TRAIN=$CIFAR_DIR/cifar10_train.npz
    if [ "$TRAIN_SUBSET" != all ]; then
        SUBSET=$OUT/cifar10_train-$TRAIN_SUBSET.npz
        [ -f "$SUBSET" ] || "$PYTHON" - "$TRAIN" "$TRAIN_SUBSET" "$SUBSET" <<'PY'
import os
import sys

import numpy as np

source, count, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with np.load(source) as archive:
    labels = archive["labels"]
    per_class = -(-count // 10)  # the first count/10 images of each class, in file order
    keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)]))
    content = {"images": archive["images"][keep], "labels": labels[keep],
               "class_names": archive["class_names"]}
tmp = out + ".tmp.npz"
np.savez(tmp, **content)
os.replace(tmp, out)
PY
        TRAIN=$SUBSET
    fi
    DATA=npz:$TRAIN,$CIFAR_DIR/cifar10_test.npz
fi

for arch in "${MODELS[@]}"; do
    model=$OUT/$arch.safetensors
    if [ ! -f "$OUT/$arch.train.json" ]; then
        snptool train --arch "$arch" --data "$DATA" --epochs "$EPOCHS" --batch-size 100 \
            --lr "$LR" --momentum "$MOMENTUM" --nesterov --weight-decay "$WEIGHT_DECAY" \
            --lr-decay "$LR_DECAY" --lr-step "$LR_STEP" --translate 4 --flip \
            --mean 0,0,0 --std 1,1,1 --seed "$SEED" --device "$DEVICE" -o "$model" \
            --json > "$OUT/$arch.train.json.tmp"
        mv "$OUT/$arch.train.json.tmp" "$OUT/$arch.train.json"
    fi
    [ -f "$OUT/$arch.export.json" ] || snptool export "$model" -o "$OUT/$arch.onnx" \
        --parity-samples 16 --json > "$OUT/$arch.export.json"
done

"$PYTHON" - "$OUT" "$DATA" "$EPOCHS" "${MODELS[@]}" <<'PY'
import json
import sys

out, data, epochs, *models = sys.argv[1:]
# arXiv 2211.11378, offline CIFAR-10 success rates, mean of runs (METHODS.md §11)
PUBLISHED = {"lenet5": 0.7535, "tree3": 0.7502, "tree3_k15_m80": 0.7913}
print(f"{data}: {epochs} epochs; s/epoch = training seconds per epoch (no test pass)")
print(f"{'model':<15}{'params':>10}{'MACs':>12}{'best (epoch)':>15}{'final':>8}{'s/epoch':>9}"
      f"{'published':>10}{'gap':>8}")
for name in models:
    train = json.load(open(f"{out}/{name}.train.json"))
    export = json.load(open(f"{out}/{name}.export.json"))
    seconds = sum(r["seconds"] for r in train["history"]) / len(train["history"])
    best = f"{train['best_accuracy']:.4f} ({train['best_epoch']})"
    published = PUBLISHED.get(name)
    gap = f"{train['best_accuracy'] - published:+.4f}" if published else "-"
    print(f"{name:<15}{export['params']:>10,}{export['macs']:>12,}{best:>15}"
          f"{train['final_accuracy']:>8.4f}{seconds:>9.1f}{published or '-':>10}{gap:>8}")
PY
