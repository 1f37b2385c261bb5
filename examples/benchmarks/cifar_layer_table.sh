#!/usr/bin/env bash
# Layer accuracy, cluster size, noise and SNR along the layers of a VGG trained on CIFAR-10
# (by default the file ../shared/data/cifar10_test.npz, split 8,000 train / 2,000 test).
#
#   bash examples/benchmarks/cifar_layer_table.sh [OUT] [EPOCHS] [PROBE_EPOCHS]
#
# Trains VGG-11 with half the widths (1 thread, ~25 min for 40 epochs on 8,000 images on a
# 2-core CPU), then probes every conv and FC tap of the best epoch's state
# (OUT/vgg11h-cifar.best.safetensors), computes the matrices on the train split and clusters
# them at threshold 0.3.
# Environment: DATA (the data spec to train and test on, e.g. the standard benchmark
# npz:../shared/data/cifar10_train.npz,../shared/data/cifar10_test.npz), ANALYSIS (the data
# spec of the probes and matrices; default DATA), TRAIN_FLAGS (the schedule; default
# "--lr 0.05 --lr-decay 0.5 --lr-step 10"). A step whose output exists is skipped, so an
# interrupted run resumes (delete OUT to start afresh).
set -euo pipefail
OUT=${1:-runs/cifar-layers}
EPOCHS=${2:-40}
PROBE_EPOCHS=${3:-50}
HERE=$(cd "$(dirname "$0")" && pwd)
DATA=${DATA:-npz:${CIFAR_NPZ:-$HERE/../../../shared/data/cifar10_test.npz}}
ANALYSIS=${ANALYSIS:-$DATA}
read -r -a TRAIN_FLAGS <<< "${TRAIN_FLAGS:---lr 0.05 --lr-decay 0.5 --lr-step 10}"
MODEL=$OUT/vgg11h-cifar.best.safetensors
mkdir -p "$OUT"

step() {  # JSON COMMAND...: run COMMAND --json > JSON unless JSON exists (written on success)
    local json=$1
    shift
    [[ -e $json ]] && return
    "$@" --json > "$json.tmp" && mv "$json.tmp" "$json"
}

step "$OUT/train.json" snptool train --arch vgg11 \
    --arch-kwargs 'widths=[32,64,128,128,256,256,256,256],fc_widths=[256,256]' \
    --data "$DATA" --epochs "$EPOCHS" "${TRAIN_FLAGS[@]}" -o "$OUT/vgg11h-cifar.safetensors"
step "$OUT/probe.json" snptool probe "$MODEL" --data "$ANALYSIS" --all \
    --epochs "$PROBE_EPOCHS" -o "$OUT/probes.safetensors"
step "$OUT/matrix.json" snptool matrix "$MODEL" "$OUT/probes.safetensors" \
    --data "$ANALYSIS" --split train -o "$OUT/matrices.h5"
step "$OUT/clusters.json" snptool clusters "$OUT/matrices.h5" --threshold 0.3

python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
probe = json.load(open(f"{out}/probe.json"))
rows = json.load(open(f"{out}/clusters.json"))
print(f"model test accuracy {probe['model_accuracy']:.4f}; probes: {probe['mode']} features")
print(f"{'layer':<14}{'units':>6}{'no cl.':>7}{'layer acc':>10}{'cl. size':>9}{'cl./unit':>9}"
      f"{'labels/u':>9}{'noise/u':>9}{'SNR':>7}")
fmt = lambda v, f: format(v, f) if v is not None else "-"
for r in rows:
    print(f"{r['layer']:<14}{r['units']:>6}{r['units_without_clusters']:>7}{fmt(r['accuracy'], '.4f'):>10}"
          f"{fmt(r['mean_cluster_size'], '.2f'):>9}{fmt(r['clusters_per_unit'], '.2f'):>9}"
          f"{fmt(r['labels_per_unit'], '.2f'):>9}{fmt(r['noise_per_unit'], '.2f'):>9}{fmt(r['snr'], '.2f'):>7}")
PY
