#!/usr/bin/env bash
# RoDiB vs the ordinary VGG-6 on CIFAR-10 (arXiv 2410.11384, METHODS.md §9), one recipe, side by
# side: the VGG-6 with 10 outputs, RoDiB (one output unit read at 10 time steps) with the FC
# delayed (`delay_layers=1`, the same function as the VGG-6) and with the last conv delayed too
# (`delay_layers=2`), each at the full FC input (the last conv's width) and at a narrow one,
# FC_INPUT = 8 < 10 labels, where the VGG-6's FC has rank 8 but RoDiB's FC reads 8 × T inputs.
# Table: model, delayed layers, FC input, parameters and MACs per sample (of the exported ONNX
# graph), best and final test accuracy, training seconds per epoch.
#
#   bash examples/benchmarks/rodib_vs_vgg6.sh RUN_DIR EPOCHS [TRAIN_SUBSET]
#
# TRAIN_SUBSET: training images (class-balanced, first in file order; `all` = 50,000, the default);
# TEST_SUBSET (environment, default all = 10,000) does the same for the test images. A subset is
# written once to RUN_DIR/cifar10-<train>-<test>.npz (a `test` mask marks the test images).
# DATA (environment) replaces the whole data spec, default
# npz:$CIFAR_DIR/cifar10_train.npz,$CIFAR_DIR/cifar10_test.npz; it cannot be combined with a
# subset. WIDTH_FACTOR (default 0.25: convs 16-32-64-128-128) scales every conv width.
#
# Recipe: pixels (x - 0.5) / 0.5, flip + 4 px translation, batch 100, SGD Nesterov, lr 0.01
# (a full-width model with two delayed layers diverged at 0.05), momentum 0.9, weight decay
# 0.0005, lr × 0.6 every EPOCHS/10 epochs. LR, MOMENTUM, WEIGHT_DECAY, LR_DECAY, LR_STEP, SEED,
# DEVICE (auto), FC_INPUT (8), CIFAR_DIR (../shared/data), PYTHON (python3) come from the
# environment. Finished models in RUN_DIR are not trained again.
set -euo pipefail
USAGE="usage: rodib_vs_vgg6.sh RUN_DIR EPOCHS [TRAIN_SUBSET]"
OUT=${1:?$USAGE}
EPOCHS=${2:?$USAGE}
TRAIN_SUBSET=${3:-all}
TEST_SUBSET=${TEST_SUBSET:-all}
HERE=$(cd "$(dirname "$0")" && pwd)
CIFAR_DIR=${CIFAR_DIR:-$HERE/../../../shared/data}
PYTHON=${PYTHON:-python3}
WIDTH_FACTOR=${WIDTH_FACTOR:-0.25}
FC_INPUT=${FC_INPUT:-8}
LR=${LR:-0.01}
MOMENTUM=${MOMENTUM:-0.9}
WEIGHT_DECAY=${WEIGHT_DECAY:-0.0005}
LR_DECAY=${LR_DECAY:-0.6}
LR_STEP=${LR_STEP:-$(( EPOCHS >= 10 ? EPOCHS / 10 : 1 ))}
SEED=${SEED:-0}
DEVICE=${DEVICE:-auto}
mkdir -p "$OUT"

if [ -n "${DATA:-}" ]; then
    if [ "$TRAIN_SUBSET" != all ] || [ "$TEST_SUBSET" != all ]; then
        echo "error: DATA replaces the data spec; leave out TRAIN_SUBSET and TEST_SUBSET" >&2
        exit 2
    fi
else
    for split in train test; do
        [ -f "$CIFAR_DIR/cifar10_$split.npz" ] || {
            echo "error: no $CIFAR_DIR/cifar10_$split.npz; set CIFAR_DIR to the folder of both" \
                "files, or DATA to a data spec" >&2
            exit 2
        }
    done
    DATA=npz:$CIFAR_DIR/cifar10_train.npz,$CIFAR_DIR/cifar10_test.npz
fi

if [ "$TRAIN_SUBSET" != all ] || [ "$TEST_SUBSET" != all ]; then
    SUBSET=$OUT/cifar10-$TRAIN_SUBSET-$TEST_SUBSET.npz
    [ -f "$SUBSET" ] || "$PYTHON" - "$CIFAR_DIR" "$TRAIN_SUBSET" "$TEST_SUBSET" "$SUBSET" <<'PY'
import os
import sys

import numpy as np

root, train_n, test_n, out = sys.argv[1:]


def first_per_class(labels, count):
    """Indices of the first count/10 images of each class, in file order."""
    if count == "all":
        return np.arange(len(labels))
    per_class = -(-int(count) // 10)
    return np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)]))


parts = []
for name, count in (("train", train_n), ("test", test_n)):
    with np.load(f"{root}/cifar10_{name}.npz") as archive:
        keep = first_per_class(archive["labels"], count)
        parts.append((archive["images"][keep], archive["labels"][keep], archive["class_names"]))
(train_x, train_y, names), (test_x, test_y, _) = parts
test = np.r_[np.zeros(len(train_y), bool), np.ones(len(test_y), bool)]
tmp = out + ".tmp.npz"
np.savez(tmp, images=np.concatenate([train_x, test_x]), labels=np.r_[train_y, test_y],
         class_names=names, test=test)
os.replace(tmp, out)
PY
    DATA=npz:$SUBSET
fi

# The VGG-6 with a narrow FC: the scaled widths, the last one FC_INPUT (1×1 after 5 pools).
NARROW=$("$PYTHON" -c "import sys; f = float(sys.argv[1]); print([max(1, round(w * f)) for w in \
(64, 128, 256, 512)] + [int(sys.argv[2])])" "$WIDTH_FACTOR" "$FC_INPUT" | tr -d ' ')
# name | arch | --arch-kwargs | delayed layers
MODELS=(
    "vgg6|vgg6|width_factor=$WIDTH_FACTOR|0"
    "rodib1|rodib_vgg6|width_factor=$WIDTH_FACTOR,delay_layers=1|1"
    "rodib2|rodib_vgg6|width_factor=$WIDTH_FACTOR,delay_layers=2|2"
    "vgg6-fc$FC_INPUT|vgg6|widths=$NARROW|0"
    "rodib1-fc$FC_INPUT|rodib_vgg6|width_factor=$WIDTH_FACTOR,fc_input=$FC_INPUT,delay_layers=1|1"
    "rodib2-fc$FC_INPUT|rodib_vgg6|width_factor=$WIDTH_FACTOR,fc_input=$FC_INPUT,delay_layers=2|2"
)
ROWS=()
for row in "${MODELS[@]}"; do
    IFS='|' read -r name arch kwargs delayed <<< "$row"
    model=$OUT/$name.safetensors
    if [ ! -f "$OUT/$name.train.json" ]; then
        snptool train --arch "$arch" --arch-kwargs "$kwargs" --data "$DATA" \
            --epochs "$EPOCHS" --batch-size 100 --lr "$LR" --momentum "$MOMENTUM" --nesterov \
            --weight-decay "$WEIGHT_DECAY" --lr-decay "$LR_DECAY" --lr-step "$LR_STEP" \
            --translate 4 --flip --seed "$SEED" --device "$DEVICE" -o "$model" \
            --json > "$OUT/$name.train.json.tmp"
        mv "$OUT/$name.train.json.tmp" "$OUT/$name.train.json"
    fi
    [ -f "$OUT/$name.export.json" ] || snptool export "$model" -o "$OUT/$name.onnx" \
        --parity-samples 16 --json > "$OUT/$name.export.json"
    ROWS+=("$name|$delayed")
done

"$PYTHON" - "$OUT" "$DATA" "$EPOCHS" "$WIDTH_FACTOR" "${ROWS[@]}" <<'PY'
import json
import sys

from safetensors import safe_open

out, data, epochs, width_factor, *rows = sys.argv[1:]
files = data.removeprefix("npz:").split(",")
if len(files) == 1 and files[0].endswith(".npz"):
    import numpy as np

    with np.load(files[0]) as archive:
        test_images = int(archive["test"].sum())
        train_images = len(archive["test"]) - test_images
    sizes = f"{train_images} train / {test_images} test images"
else:
    sizes = "train / test images as the spec gives them"
print(f"{data}: {sizes}, {epochs} epochs, width factor {width_factor}; "
      "s/epoch = training seconds per epoch (no test pass)")
print(f"{'model':<11}{'delayed':>8}{'FC input':>9}{'params':>11}{'MACs':>13}"
      f"{'best (epoch)':>15}{'final':>8}{'s/epoch':>9}")
for row in rows:
    name, delayed = row.split("|")
    train = json.load(open(f"{out}/{name}.train.json"))
    export = json.load(open(f"{out}/{name}.export.json"))
    with safe_open(f"{out}/{name}.safetensors", "pt") as tensors:
        fc = next(k for k in tensors.keys() if k.startswith("classifier.") and "weight" in k)
        fc_input = tensors.get_slice(fc).get_shape()[1]  # Linear (N, F); delayed FC (1, F, D)
    seconds = sum(r["seconds"] for r in train["history"]) / len(train["history"])
    best = f"{train['best_accuracy']:.4f} ({train['best_epoch']})"
    print(f"{name:<11}{delayed:>8}{fc_input:>9}{export['params']:>11,}{export['macs']:>13,}"
          f"{best:>15}{train['final_accuracy']:>8.4f}{seconds:>9.1f}")
PY
