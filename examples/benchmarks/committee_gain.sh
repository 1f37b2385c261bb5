#!/usr/bin/env bash
# Soft committee of three independently trained VGGs on the CIFAR-10 file
# (../shared/data/cifar10_test.npz, split 8,000 train / 2,000 test): each member's test accuracy,
# the committee's (mean softmax) and the gain over the best member.
#
#   bash examples/benchmarks/committee_gain.sh [OUT] [EPOCHS]
#
# Trains VGG-6 with widths 32-64-128-256-256 three times (seeds 0, 1, 2; 820 s of CPU for the
# whole run with 20 epochs on one thread, ~14 s per epoch) unless the members exist in OUT, then
# scores the committee of their last states (no epoch picked on the test split) and exports it
# to ONNX.
set -euo pipefail
OUT=${1:-runs/committee}
EPOCHS=${2:-20}
HERE=$(cd "$(dirname "$0")" && pwd)
DATA=npz:${CIFAR_NPZ:-$HERE/../../../shared/data/cifar10_test.npz}
ARCH=${ARCH:-vgg6}
ARCH_KWARGS=${ARCH_KWARGS:-widths=[32,64,128,256,256]}
mkdir -p "$OUT"

MEMBERS=()
for seed in 0 1 2; do
    member=$OUT/$ARCH-seed$seed.safetensors
    if [ ! -f "$member" ]; then
        snptool train --arch "$ARCH" --arch-kwargs "$ARCH_KWARGS" --data "$DATA" --epochs "$EPOCHS" \
            --lr 0.05 --lr-decay 0.5 --lr-step $(( (EPOCHS + 3) / 4 )) --seed "$seed" \
            -o "$member" --json > "$OUT/train-seed$seed.json"
    fi
    MEMBERS+=("$member")
done
snptool committee "${MEMBERS[@]}" -o "$OUT/committee.onnx" --json > "$OUT/committee.json"

python3 - "$OUT" <<'PY'
import json, sys
result = json.load(open(f"{sys.argv[1]}/committee.json"))
for member in result["members"]:
    print(f"{member['path']:<44}{member['accuracy']:>8.4f}")
print(f"{'committee (mean softmax)':<44}{result['committee_accuracy']:>8.4f}")
print(f"gain over the best member {result['gain']:+.4f}, over the mean member "
      f"{result['committee_accuracy'] - result['mean_member_accuracy']:+.4f}; all members agree on "
      f"{result['agreement']:.1%} of {result['samples']} test images")
export = result["export"]
print(f"ONNX committee: {export['params']} params, {export['macs']} MACs per sample, "
      f"max |torch - onnxruntime| {export['max_abs_diff']:.2g}")
PY
