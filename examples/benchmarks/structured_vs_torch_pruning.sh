#!/usr/bin/env bash
# Channel removal on the third-party ResNet-56 (akamaster, published 93.39 % on CIFAR-10):
# the SNP ranking (`prune --method units`: fewest labels served, weakest maximum, most noise;
# `units-l1`: fewest labels served, then the smallest L1 norm) against Torch-Pruning's
# magnitude (L1) and Taylor criteria, all to the same MAC target on the same channel groups,
# fine-tuned identically, exported, and timed in ONE `snptool latency` run. Then the dense, the
# units-l1 and the magnitude-channels exports are quantized to int8 and all six variants timed
# at batch 1 and 32, one and two threads (int8_variants.sh).
#
#   bash examples/benchmarks/structured_vs_torch_pruning.sh [OUT] [FINETUNE_EPOCHS]
#
# Environment: TARGET (MAC ratio, 0.5), ROUND_TO (every group keeps a multiple of it, 16),
# TRAIN_N / TEST_N (use the first N images of ../shared/data/cifar10_{train,test}.npz; default
# all), ANALYSIS_N (probes and matrices read the first N training images; default TRAIN_N),
# PROBE_EPOCHS (20), FLAGS (the fine-tuning flags). A step whose output exists is skipped, so
# an interrupted run resumes where it stopped (delete OUT to start afresh).
# Every criterion removes the same number of channels from every group, so the exports have
# the same shapes: their latencies differ only by noise, and the accuracies compare the
# criteria. Probes read the residual stage outputs (layer{1,2,3}.8) and every block's inner
# channels (layerS.B.relu1); both are removed (the option-A zero-padding shortcut is pruned as
# a channel map, snptool/channel_maps.py). Widths of 16: onnxruntime's NCHWc convolutions work
# in blocks of 16 channels on AVX-512 (8 on AVX2), so 8 of 16 kept channels cost as much as 16.
# At that rounding a uniform share reaches 0.509 of the MACs (widths 16/16/32) or next 0.448;
# the deepest-first allocation narrows the deepest groups further until the MACs meet TARGET.
# Measured (README): ANALYSIS_N=10000 PROBE_EPOCHS=5 ... OUT 8 took 101 min on 2 cores.
# Anchors: DepGraph ResNet-56 93.53 → 93.77 % at 2.13× fewer MACs,
# HRank 93.26 → 93.17 % at 2.00× (both after long fine-tuning).
set -euo pipefail
OUT=${1:-runs/structured}
FT=${2:-30}
TARGET=${TARGET:-0.5}
PROBE_EPOCHS=${PROBE_EPOCHS:-20}
HERE=$(cd "$(dirname "$0")" && pwd)
SHARED=${SHARED:-$HERE/../../../shared}
read -r -a FLAGS <<< "${FLAGS:---lr 0.01 --lr-decay 0.9 --augment}"
ROUND_TO=${ROUND_TO:-16}
mkdir -p "$OUT"

# step NAME COMMAND...: run COMMAND --json unless NAME.json exists (written when it succeeded).
step() {
    local output=$1
    shift
    [[ -e $output.json ]] && return
    "$@" --json > "$output.json.tmp" && mv "$output.json.tmp" "$output.json"
}

python3 - "$SHARED/data" "$OUT" "${TRAIN_N:-0}" "${TEST_N:-0}" "${ANALYSIS_N:-${TRAIN_N:-0}}" <<'PY'
import os, sys, numpy as np
data, out = sys.argv[1], sys.argv[2]
sizes = {"train": int(sys.argv[3]), "test": int(sys.argv[4]), "analysis": int(sys.argv[5])}
for name, n in sizes.items():
    if os.path.exists(f"{out}/{name}.npz"):
        continue
    d = np.load(f"{data}/cifar10_{'test' if name == 'test' else 'train'}.npz")
    n = n or len(d["labels"])
    np.savez(f"{out}/{name}.tmp.npz", images=d["images"][:n], labels=d["labels"][:n],
             class_names=d["class_names"])
    os.replace(f"{out}/{name}.tmp.npz", f"{out}/{name}.npz")
PY
DATA=npz:$OUT/train.npz,$OUT/test.npz
ANALYSIS=npz:$OUT/analysis.npz,$OUT/test.npz
MODEL=$OUT/resnet56.safetensors
ARCH=$HERE/../third_party/cifar_resnet.py:resnet56  # later steps trust it by naming it again
step "$MODEL" snptool import "$SHARED/checkpoints/akamaster_resnet56-4bfd9763.th" \
    --arch "$ARCH" --data "$DATA" \
    --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 -o "$MODEL"

INNER=$(python3 -c 'print(",".join(f"layer{s}.{b}.relu1" for s in (1, 2, 3) for b in range(9)))')
step "$OUT/probes.safetensors" snptool probe "$MODEL" --arch "$ARCH" --data "$ANALYSIS" \
    --layer "layer1.8,layer2.8,layer3.8,$INNER" --epochs "$PROBE_EPOCHS" -o "$OUT/probes.safetensors"
step "$OUT/matrices.h5" snptool matrix "$MODEL" "$OUT/probes.safetensors" --arch "$ARCH" --data "$ANALYSIS" \
    --split train -o "$OUT/matrices.h5"
step "$OUT/clusters" snptool clusters "$OUT/matrices.h5" --threshold 0.3

step "$OUT/dense.onnx" snptool export "$MODEL" --arch "$ARCH" -o "$OUT/dense.onnx"
for method in units units-l1 magnitude-channels taylor; do
    case $method in
        units-l1) criterion=(--method units --ranking labels,magnitude) ;;
        *) criterion=(--method "$method") ;;
    esac
    step "$OUT/$method.safetensors" snptool prune "$MODEL" --arch "$ARCH" --clusters "$OUT/matrices.h5" \
        "${criterion[@]}" --layers "layer1.8,layer2.8,layer3.8,$INNER" \
        --target-macs "$TARGET" --round-to "$ROUND_TO" --finetune-epochs "$FT" "${FLAGS[@]}" \
        -o "$OUT/$method.safetensors"
    step "$OUT/$method.onnx" snptool export "$OUT/$method.safetensors" --arch "$ARCH" -o "$OUT/$method.onnx"
done
step "$OUT/latency" snptool latency "$OUT/dense.onnx" "$OUT/units.onnx" "$OUT/units-l1.onnx" \
    "$OUT/magnitude-channels.onnx" "$OUT/taylor.onnx" --batch 1 --threads 1 --warmup 20 \
    --runs 300

python3 - "$OUT" "$FT" <<'PY'
import json, sys
out, epochs = sys.argv[1], sys.argv[2]
load = lambda name: json.load(open(f"{out}/{name}"))
dense = load("dense.onnx.json")
latency = {row["path"].rsplit("/", 1)[-1][:-5]: row for row in load("latency.json")}
print(f"ResNet-56 dense: params {dense['params']:,}, MACs {dense['macs']:,}, "
      f"p50 {latency['dense']['p50_ms']:.3f} ms; fine-tuning {epochs} epochs each")
print(f"{'method':<20}{'acc dense':>10}{'pruned':>8}{'tuned':>8}{'params':>9}{'MACs':>7}"
      f"{'p50 ratio':>10}{'of ideal':>9}")
for name in ("units", "units-l1", "magnitude-channels", "taylor"):
    prune, export = load(f"{name}.safetensors.json"), load(f"{name}.onnx.json")
    macs = export["macs"] / dense["macs"]
    ratio = latency[name]["ratio"]
    print(f"{name:<20}{prune['dense_accuracy']:>10.4f}{prune['accuracy_before']:>8.4f}"
          f"{prune['accuracy_after']:>8.4f}{export['params'] / dense['params']:>9.3f}{macs:>7.3f}"
          f"{ratio:>10.3f}{(1 / ratio) / (1 / macs):>9.2f}")
print("anchors: DepGraph 93.53 -> 93.77 % at 2.13x fewer MACs; HRank 93.26 -> 93.17 % at 2.00x")
PY

DATA=$DATA bash "$HERE/int8_variants.sh" "$OUT/int8" "$OUT/dense.onnx" "$OUT/units-l1.onnx" \
    "$OUT/magnitude-channels.onnx"
