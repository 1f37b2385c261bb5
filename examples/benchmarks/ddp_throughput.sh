#!/usr/bin/env bash
# `snptool train` throughput, one process vs torchrun's DistributedDataParallel, side by side.
#
#   bash examples/benchmarks/ddp_throughput.sh RUN_DIR [IMAGES] [EPOCHS]
#
# CPU rows (gloo, same machine): 1 process × 1 thread, 1 process × 2 threads, 2 processes ×
# 1 thread, each training ARCH (default vgg6, WIDTH_FACTOR 0.25) for EPOCHS (default 1) on the
# first IMAGES (default 2000) CIFAR-10 test images (90/10 split). Columns: images/s as snptool
# records it (training steps only: the global images over the mean rank's busy seconds) and
# the command's wall seconds. GPU rows, when CUDA is available: 1 process at fp32 and with
# --amp bf16 (channels_last on), then, with FULL=1, the full VGG-6 CIFAR-10 recipe (50,000
# training images, EPOCHS_FULL default 30) and its wall time. CIFAR_DIR (../shared/data),
# PYTHON (python3), NPROC_GPU (GPUs for a torchrun GPU row, default 1) come from the environment.
set -euo pipefail
USAGE="usage: ddp_throughput.sh RUN_DIR [IMAGES] [EPOCHS]"
OUT=${1:?$USAGE}
IMAGES=${2:-2000}
EPOCHS=${3:-1}
HERE=$(cd "$(dirname "$0")" && pwd)
CIFAR_DIR=${CIFAR_DIR:-$HERE/../../../shared/data}
PYTHON=${PYTHON:-python3}
ARCH=${ARCH:-vgg6}
WIDTH=${WIDTH_FACTOR:-0.25}
mkdir -p "$OUT"
SUBSET="$OUT/cifar10-test-$IMAGES.npz"
[ -f "$SUBSET" ] || "$PYTHON" - "$CIFAR_DIR/cifar10_test.npz" "$SUBSET" "$IMAGES" <<'EOF'
import sys
import numpy as np
with np.load(sys.argv[1]) as archive:
    arrays = {key: archive[key] for key in archive.files}
count = int(sys.argv[3])
np.savez(sys.argv[2], images=arrays["images"][:count], labels=arrays["labels"][:count],
         **({"class_names": arrays["class_names"]} if "class_names" in arrays else {}))
EOF
snptool() { "$PYTHON" -m snptool "$@"; }
torchrun() { "$PYTHON" -m torch.distributed.run --standalone "$@"; }
row() {  # name, then the command; prints name, images/s, wall s
    local name=$1; shift
    rm -f "$OUT"/*.safetensors  # train does not replace its outputs
    local started=$(date +%s.%N)
    "$@" --json > "$OUT/$name.json" 2> "$OUT/$name.log"
    local ended=$(date +%s.%N)
    "$PYTHON" - "$OUT/$name.json" "$name" "$started" "$ended" <<'EOF'
import json, sys
summary = json.load(open(sys.argv[1]))
rate = sum(r["images_per_second"] for r in summary["history"]) / len(summary["history"])
print(f"{sys.argv[2]:<24} {rate:10.0f} {float(sys.argv[4]) - float(sys.argv[3]):10.1f}")
EOF
}
COMMON=(train --arch "$ARCH" --arch-kwargs "width_factor=$WIDTH" --data "npz:$SUBSET"
        --epochs "$EPOCHS" --test-fraction 0.1)
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $ARCH width $WIDTH," \
     "$IMAGES images, $EPOCHS epoch(s)"
printf "%-24s %10s %10s\n" run "images/s" "wall s"
OMP_NUM_THREADS=1 row cpu-1proc-1thread snptool "${COMMON[@]}" --device cpu -o "$OUT/c11.safetensors"
OMP_NUM_THREADS=2 row cpu-1proc-2threads snptool "${COMMON[@]}" --device cpu -o "$OUT/c12.safetensors"
OMP_NUM_THREADS=1 row cpu-2proc-1thread-gloo torchrun --nproc-per-node 2 -m snptool \
    "${COMMON[@]}" --device cpu -o "$OUT/c21.safetensors"
echo "machine load after: $(cut -d' ' -f1-3 /proc/loadavg)"
if "$PYTHON" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    echo "gpu: $("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name())')"
    row gpu-fp32 snptool "${COMMON[@]}" --device cuda -o "$OUT/g32.safetensors"
    row gpu-bf16 snptool "${COMMON[@]}" --device cuda --amp bf16 -o "$OUT/g16.safetensors"
    if [ "${NPROC_GPU:-1}" -gt 1 ]; then
        row "gpu-${NPROC_GPU}proc-nccl-bf16" torchrun --nproc-per-node "$NPROC_GPU" -m snptool \
            "${COMMON[@]}" --device cuda --amp bf16 -o "$OUT/gn.safetensors"
    fi
    if [ "${FULL:-0}" = 1 ]; then  # the full VGG-6 CIFAR-10 recipe: 50,000 training images
        FULL_DATA="npz:$CIFAR_DIR/cifar10_train.npz,$CIFAR_DIR/cifar10_test.npz"
        row "gpu-vgg6-cifar10-full-bf16" snptool train --arch vgg6 --data "$FULL_DATA" \
            --epochs "${EPOCHS_FULL:-30}" --device cuda --amp bf16 \
            -o "$OUT/vgg6-full.safetensors"
    fi
fi
