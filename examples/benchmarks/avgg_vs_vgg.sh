#!/usr/bin/env bash
# A-VGG6 vs VGG-6 (and A-VGG8 vs VGG-8 with --with-8) on CIFAR-10, trained with one recipe, side
# by side: parameters, MACs per sample (of the exported ONNX graph), best and final test accuracy,
# training seconds per epoch, the published A-VGGm accuracy (arXiv 2303.05800, METHODS.md §11) and
# the gap to it.
#
#   bash examples/benchmarks/avgg_vs_vgg.sh RUN_DIR EPOCHS [TRAIN_SUBSET] [WIDTH_FACTOR] [--with-8]
#
# TRAIN_SUBSET: training images (class-balanced, first in file order; `all` = 50,000, the default);
# TEST_SUBSET (environment, default all = 10,000) does the same for the test images. A subset is
# written once to RUN_DIR/cifar10-<train>-<test>.npz (a `test` mask marks the test images); the
# full data set is read as `npz:cifar10_train.npz,cifar10_test.npz`. WIDTH_FACTOR (default 1)
# scales every conv and hidden FC width of all the models (`--arch-kwargs width_factor=…`).
#
# Recipe (the A-VGG16 notebook's, METHODS.md §11, with ONE lr group, since `snptool train` has
# no per-layer-group lr/momentum/decay): pixels (x - 0.5) / 0.5, flip + 4 px translation, batch
# 100, SGD Nesterov, lr 0.011, momentum 0.98, weight decay 0.00115 (the paper's conv-layer
# values), lr × 0.6 every EPOCHS/10 epochs (20 of 200 in the paper). LR, MOMENTUM, WEIGHT_DECAY,
# LR_DECAY, LR_STEP, SEED, DEVICE (auto), CIFAR_DIR (../shared/data) come from the environment.
# The paper trains 200 epochs on all 50,000 images at full width: a GPU job. On 2 CPU cores
# use subsets and width factors: at width 1/4 on 5,000 images one epoch took 42 s (A-VGG6) and
# 6 s (VGG-6) of training on one thread. Finished models in RUN_DIR are not trained again.
set -euo pipefail
PAIRS=(6)
ARGS=()
for arg in "$@"; do
    if [ "$arg" = "--with-8" ]; then PAIRS+=(8); else ARGS+=("$arg"); fi
done
OUT=${ARGS[0]:?usage: avgg_vs_vgg.sh RUN_DIR EPOCHS [TRAIN_SUBSET] [WIDTH_FACTOR] [--with-8]}
EPOCHS=${ARGS[1]:?usage: avgg_vs_vgg.sh RUN_DIR EPOCHS [TRAIN_SUBSET] [WIDTH_FACTOR] [--with-8]}
TRAIN_SUBSET=${ARGS[2]:-all}
WIDTH_FACTOR=${ARGS[3]:-1}
TEST_SUBSET=${TEST_SUBSET:-all}
HERE=$(cd "$(dirname "$0")" && pwd)
CIFAR_DIR=${CIFAR_DIR:-$HERE/../../../shared/data}
PYTHON=${PYTHON:-python3}
LR=${LR:-0.011}
MOMENTUM=${MOMENTUM:-0.98}
WEIGHT_DECAY=${WEIGHT_DECAY:-0.00115}
LR_DECAY=${LR_DECAY:-0.6}
LR_STEP=${LR_STEP:-$(( EPOCHS >= 10 ? EPOCHS / 10 : 1 ))}
SEED=${SEED:-0}
DEVICE=${DEVICE:-auto}
for split in train test; do
    [ -f "$CIFAR_DIR/cifar10_$split.npz" ] || {
        echo "error: no $CIFAR_DIR/cifar10_$split.npz; set CIFAR_DIR to the folder of both files" >&2
        exit 2
    }
done
mkdir -p "$OUT"

if [ "$TRAIN_SUBSET" = all ] && [ "$TEST_SUBSET" = all ]; then
    DATA=npz:$CIFAR_DIR/cifar10_train.npz,$CIFAR_DIR/cifar10_test.npz
else
    SUBSET=$OUT/cifar10-$TRAIN_SUBSET-$TEST_SUBSET.npz
    [ -f "$SUBSET" ] || "$PYTHON" - "$CIFAR_DIR" "$TRAIN_SUBSET" "$TEST_SUBSET" "$SUBSET" <<'PY'
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
import os; os.replace(tmp, out)
PY
    DATA=npz:$SUBSET
fi

MODELS=()
for m in "${PAIRS[@]}"; do MODELS+=("avgg$m" "vgg$m"); done
for arch in "${MODELS[@]}"; do
    model=$OUT/$arch.safetensors
    if [ ! -f "$OUT/$arch.train.json" ]; then
        snptool train --arch "$arch" --arch-kwargs "width_factor=$WIDTH_FACTOR" --data "$DATA" \
            --epochs "$EPOCHS" --batch-size 100 --lr "$LR" --momentum "$MOMENTUM" --nesterov \
            --weight-decay "$WEIGHT_DECAY" --lr-decay "$LR_DECAY" --lr-step "$LR_STEP" \
            --translate 4 --flip --seed "$SEED" --device "$DEVICE" -o "$model" \
            --json > "$OUT/$arch.train.json"
    fi
    [ -f "$OUT/$arch.export.json" ] || snptool export "$model" -o "$OUT/$arch.onnx" \
        --parity-samples 16 --json > "$OUT/$arch.export.json"
done

"$PYTHON" - "$OUT" "$DATA" "$EPOCHS" "$WIDTH_FACTOR" "${MODELS[@]}" <<'PY'
import json, sys
out, data, epochs, width_factor, *models = sys.argv[1:]
PUBLISHED = {"avgg6": 0.936, "avgg8": 0.940}  # arXiv 2303.05800, mean of 10 runs (METHODS §11)
files = data.removeprefix("npz:").split(",")
if len(files) == 1:
    import numpy as np
    with np.load(files[0]) as archive:
        test_images = int(archive["test"].sum())
        train_images = len(archive["test"]) - test_images
else:
    train_images, test_images = 50000, 10000
print(f"{data}: {train_images} train / {test_images} test images, {epochs} epochs, "
      f"width factor {width_factor}; s/epoch = training seconds per epoch (no test pass)")
print(f"{'model':<8}{'params':>12}{'MACs':>15}{'best (epoch)':>15}{'final':>8}{'s/epoch':>9}"
      f"{'published':>10}{'gap':>8}")
for name in models:
    train = json.load(open(f"{out}/{name}.train.json"))
    export = json.load(open(f"{out}/{name}.export.json"))
    seconds = sum(r["seconds"] for r in train["history"]) / len(train["history"])
    best = f"{train['best_accuracy']:.4f} ({train['best_epoch']})"
    published = PUBLISHED.get(name)
    gap = f"{train['best_accuracy'] - published:+.4f}" if published else "-"
    print(f"{name:<8}{export['params']:>12,}{export['macs']:>15,}{best:>15}"
          f"{train['final_accuracy']:>8.4f}{seconds:>9.1f}"
          f"{published or '-':>10}{gap:>8}")
PY
