#!/usr/bin/env bash
# The label-count study (arXiv 2309.07537, METHODS.md §6): one architecture and recipe trained on
# the first 3, 5 and 10 labels of CIFAR-10 (`--num-classes-subset`), then its last two conv
# layers probed, their matrices computed and clustered. Prints per label count: test error, and
# of the last conv layer the mean cluster size, clusters per unit, labels per unit, noise per unit
# and SNR (units with clusters), so they can be read against the number of labels.
#
#   bash examples/benchmarks/label_count.sh RUN_DIR EPOCHS [PER_CLASS]
#
# PER_CLASS: training images per label (first in file order; default all = 5,000); the test
# images are always all 1,000 per label of cifar10_test.npz. ARCH (vgg6), ARCH_KWARGS
# (width_factor=0.25), LABELS ("3 5 10"), LR (0.05), PROBE_EPOCHS (30), THRESHOLD (0.3, the
# cluster threshold), CIFAR_DIR (../shared/data) and DEVICE (auto) come from the environment.
# Finished runs in RUN_DIR are reused. PER_CLASS=2000 with EPOCHS=15 took 25 minutes for all
# three label counts on one thread of the 2-core CPU (other jobs running beside it).
set -euo pipefail
OUT=${1:?usage: label_count.sh RUN_DIR EPOCHS [PER_CLASS]}
EPOCHS=${2:?usage: label_count.sh RUN_DIR EPOCHS [PER_CLASS]}
PER_CLASS=${3:-all}
HERE=$(cd "$(dirname "$0")" && pwd)
CIFAR_DIR=${CIFAR_DIR:-$HERE/../../../shared/data}
ARCH=${ARCH:-vgg6}
ARCH_KWARGS=${ARCH_KWARGS:-width_factor=0.25}
LABELS=${LABELS:-3 5 10}
LR=${LR:-0.05}
PROBE_EPOCHS=${PROBE_EPOCHS:-30}
THRESHOLD=${THRESHOLD:-0.3}
DEVICE=${DEVICE:-auto}
PYTHON=${PYTHON:-python3}
for split in train test; do
    [ -f "$CIFAR_DIR/cifar10_$split.npz" ] || {
        echo "error: no $CIFAR_DIR/cifar10_$split.npz; set CIFAR_DIR to the folder of both files" >&2
        exit 2
    }
done
mkdir -p "$OUT"

if [ "$PER_CLASS" = all ]; then
    DATA=npz:$CIFAR_DIR/cifar10_train.npz,$CIFAR_DIR/cifar10_test.npz
else
    SUBSET=$OUT/cifar10-$PER_CLASS-per-class.npz
    DATA=npz:$SUBSET
    [ -f "$SUBSET" ] || "$PYTHON" - "$CIFAR_DIR" "$PER_CLASS" "$SUBSET" <<'PY'
import sys
import numpy as np

root, per_class, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
train, test = np.load(f"{root}/cifar10_train.npz"), np.load(f"{root}/cifar10_test.npz")
keep = np.concatenate([np.flatnonzero(train["labels"] == c)[:per_class] for c in range(10)])
keep.sort()
images = np.concatenate([train["images"][keep], test["images"]])
labels = np.concatenate([train["labels"][keep], test["labels"]])
mask = np.concatenate([np.zeros(len(keep), bool), np.ones(len(test["labels"]), bool)])
np.savez(out + ".part.npz", images=images, labels=labels, test=mask, class_names=train["class_names"])
PY
    [ -f "$SUBSET" ] || mv "$SUBSET.part.npz" "$SUBSET"
fi

for k in $LABELS; do
    RUN=$OUT/labels-$k
    mkdir -p "$RUN"
    if [ ! -f "$RUN/train.json" ]; then
        snptool train --arch "$ARCH" --arch-kwargs "$ARCH_KWARGS" --data "$DATA" \
            --num-classes-subset "$k" --epochs "$EPOCHS" --lr "$LR" --lr-decay 0.5 \
            --lr-step $(( EPOCHS >= 4 ? EPOCHS / 4 : 1 )) --device "$DEVICE" \
            -o "$RUN/model.safetensors" --json > "$RUN/train.json.part"
        mv "$RUN/train.json.part" "$RUN/train.json"
    fi
    MODEL=$RUN/model.best.safetensors
    if [ ! -f "$RUN/clusters.json" ]; then
        TAPS=$(snptool layers "$MODEL" --taps-only --json | "$PYTHON" -c \
            'import json, sys; print(",".join(t["layer"] for t in json.load(sys.stdin)[-2:]))')
        snptool probe "$MODEL" --layer "$TAPS" --epochs "$PROBE_EPOCHS" --device "$DEVICE" \
            -o "$RUN/probes.safetensors" --json > "$RUN/probe.json"
        snptool matrix "$MODEL" "$RUN/probes.safetensors" --split train --device "$DEVICE" \
            -o "$RUN/matrices.h5" --json > /dev/null
        snptool clusters "$RUN/matrices.h5" --threshold "$THRESHOLD" --json > "$RUN/clusters.json.part"
        mv "$RUN/clusters.json.part" "$RUN/clusters.json"
    fi
done

"$PYTHON" - "$OUT" $LABELS <<'PY'
import json, sys

out, labels = sys.argv[1], sys.argv[2:]
print(f"{'labels':>6}  {'classes':<44}{'error':>7}{'last layer':>12}{'units':>6}{'cl. size':>9}"
      f"{'cl./unit':>9}{'labels/u':>9}{'noise/u':>8}{'SNR':>7}{'s/epoch':>8}")
fmt = lambda v, f: "-" if v is None else format(v, f)
for k in labels:
    train = json.load(open(f"{out}/labels-{k}/train.json"))
    probe = json.load(open(f"{out}/labels-{k}/probe.json"))
    last = json.load(open(f"{out}/labels-{k}/clusters.json"))[-1]
    with open(f"{out}/labels-{k}/model.best.safetensors", "rb") as handle:
        header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
    names = json.loads(header["__metadata__"]["snptool"])["class_names"]
    seconds = sum(r["seconds"] for r in train["history"]) / len(train["history"])
    print(f"{k:>6}  {','.join(names)[:43]:<44}{1 - probe['model_accuracy']:>7.4f}{last['layer']:>12}"
          f"{last['units']:>6}{fmt(last['mean_cluster_size'], '.2f'):>9}"
          f"{fmt(last['clusters_per_unit'], '.2f'):>9}{fmt(last['labels_per_unit'], '.2f'):>9}"
          f"{fmt(last['noise_per_unit'], '.2f'):>8}{fmt(last['snr'], '.2f'):>7}{seconds:>8.1f}")
PY
