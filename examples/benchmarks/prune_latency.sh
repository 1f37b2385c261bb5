#!/usr/bin/env bash
# Dilution, accuracy, parameters, MACs and onnxruntime latency of afcc, afcc-grouped (G = 2, 4),
# random and magnitude pruning of the VGG that cifar_layer_table.sh trained and analysed, all
# exported models timed side by side in ONE `snptool latency` run; then channel removal to
# TARGET of the MACs (widths a multiple of 16) by the SNP ranking (`units`) and by L1
# magnitude (`magnitude-channels`), and the deployment variants, dense and channel-pruned in
# float32 and int8, at batch 1 and 32 (int8_variants.sh).
#
#   bash examples/benchmarks/prune_latency.sh [DIR] [FINETUNE_EPOCHS] [OUT]
#
# DIR holds vgg11h-cifar.best.safetensors, its probes.safetensors and its matrices.h5 with
# clusters (cifar_layer_table.sh). Environment: LAYERS (the listed layers), FLAGS (more
# fine-tuning flags, e.g. FLAGS="--distill 0.9 --lr-decay 0.8"), MASKS (the connection-mask
# variants; default "afcc afcc-probe grouped2 grouped4 random magnitude", "" skips them),
# CHANNELS (the channel-removal methods; default "units magnitude-channels"), TARGET (0.5),
# DATA (the data spec of fine-tuning and quantization; default the checkpoint's). A step whose
# output exists is skipped, so an interrupted run resumes (delete OUT to start afresh).
set -euo pipefail
DIR=${1:-runs/cifar-layers}
FT=${2:-3}
OUT=${3:-$DIR/prune}
MODEL=$DIR/vgg11h-cifar.best.safetensors
LAYERS=${LAYERS:-features.6,features.10,features.13,features.17,features.20,features.24,features.27}
read -r -a FLAGS <<< "${FLAGS:-}"
read -r -a MASKS <<< "${MASKS-afcc afcc-probe grouped2 grouped4 random magnitude}"
read -r -a CHANNELS <<< "${CHANNELS:-units magnitude-channels}"
data_flag=()
[[ -n ${DATA:-} ]] && data_flag=(--data "$DATA")
mkdir -p "$OUT"

step() {  # JSON COMMAND...: run COMMAND --json > JSON unless JSON exists (written on success)
    local json=$1
    shift
    [[ -e $json ]] && return
    "$@" --json > "$json.tmp" && mv "$json.tmp" "$json"
}
prune() {  # NAME METHOD [extra flags]
    local name=$1 method=$2; shift 2
    step "$OUT/$name.prune.json" snptool prune "$MODEL" --clusters "$DIR/matrices.h5" \
        --method "$method" --layers "$LAYERS" --finetune-epochs "$FT" --lr 0.01 "${data_flag[@]}" \
        "${FLAGS[@]}" "$@" -o "$OUT/$name.safetensors"
    step "$OUT/$name.export.json" snptool export "$OUT/$name.safetensors" -o "$OUT/$name.onnx"
}
step "$OUT/dense.export.json" snptool export "$MODEL" -o "$OUT/dense.onnx"
for name in "${MASKS[@]}"; do
    case $name in
        afcc-probe) prune "$name" afcc --classifier probe --probes "$DIR/probes.safetensors" ;;
        grouped*) prune "$name" afcc-grouped --groups "${name#grouped}" ;;
        *) prune "$name" "$name" ;;
    esac
done
for method in "${CHANNELS[@]}"; do
    prune "$method" "$method" --target-macs "${TARGET:-0.5}" --round-to 16
done
if (( ${#MASKS[@]} )); then
    MODELS=("$OUT/dense.onnx")
    for name in "${MASKS[@]}"; do MODELS+=("$OUT/$name.onnx"); done
    step "$OUT/latency.json" snptool latency "${MODELS[@]}" --batch 1 --threads 1 --warmup 20 \
        --runs 300

    python3 - "$OUT" "${MASKS[@]}" <<'PY'
import json, sys
out, names = sys.argv[1], sys.argv[2:]
dense = json.load(open(f"{out}/dense.export.json"))
latency = {row["path"].rsplit("/", 1)[-1][:-5]: row for row in json.load(open(f"{out}/latency.json"))}
print(f"dense: params {dense['params']}, MACs {dense['macs']}, p50 {latency['dense']['p50_ms']:.3f} ms")
print(f"{'method':<11}{'dilution':>9}{'acc dense':>10}{'before':>8}{'after':>8}{'params':>8}{'MACs':>7}"
      f"{'latency':>8}{'of ideal':>9}")
for name in names:
    prune = json.load(open(f"{out}/{name}.prune.json"))
    export = json.load(open(f"{out}/{name}.export.json"))
    weights = sum(l["weights"] for l in prune["layers"])
    dilution = sum(l["dilution"] * l["weights"] for l in prune["layers"]) / weights
    mac_ratio = export["macs"] / dense["macs"]
    latency_ratio = latency[name]["ratio"]
    print(f"{name:<11}{dilution:>9.3f}{prune['dense_accuracy']:>10.4f}{prune['accuracy_before']:>8.4f}"
          f"{prune['accuracy_after']:>8.4f}{export['params'] / dense['params']:>8.3f}{mac_ratio:>7.3f}"
          f"{latency_ratio:>8.3f}{(1 / latency_ratio) / (1 / mac_ratio):>9.2f}")
PY
fi

PRUNED=()
for method in "${CHANNELS[@]}"; do PRUNED+=("$OUT/$method.onnx"); done
DATA=${DATA:-} bash "$(dirname "$0")/int8_variants.sh" "$OUT/int8" "$OUT/dense.onnx" "${PRUNED[@]}"
