#!/usr/bin/env bash
# The main job on the embedded digits data set (no download): train a model of the research,
# evaluate it, list its analysable layers, fit a probe on every layer, compute every unit's
# labels × labels matrix and its clusters, remove the channels and nodes with the weakest
# weights while every label keeps two channels per layer, until half the MACs are left
# (`prune --method units`, its default ranking; every layer keeping a multiple of
# ROUND_TO channels: onnxruntime's convolutions work in blocks of 16 channels on AVX-512, 8 on
# AVX2), fine-tune, export the dense and the pruned model to ONNX, quantize both to int8
# (onnxruntime's static QDQ, CALIBRATION training images), time the four side by side in
# onnxruntime and draw it all into $OUT/report.html.
# Every step reads and writes files, and every --json result lands beside them in $OUT.
#
#   bash examples/pipeline.sh [OUT]   (ARCH, EPOCHS, PROBE_EPOCHS, FINETUNE_EPOCHS, TARGET_MACS,
#   ROUND_TO, MIN_CHANNELS, CALIBRATION, DATA can be set in the environment)
set -euo pipefail
OUT=${1:-runs/digits}
ARCH=${ARCH:-vgg6}
EPOCHS=${EPOCHS:-10}
PROBE_EPOCHS=${PROBE_EPOCHS:-50}
FINETUNE_EPOCHS=${FINETUNE_EPOCHS:-3}
TARGET_MACS=${TARGET_MACS:-0.5}
ROUND_TO=${ROUND_TO:-16}
MIN_CHANNELS=${MIN_CHANNELS:-8}
CALIBRATION=${CALIBRATION:-256}
DATA=${DATA:-digits}
mkdir -p "$OUT"

snptool train --arch "$ARCH" --data "$DATA" --epochs "$EPOCHS" --lr-step 4 --no-flip \
    -o "$OUT/model.safetensors" --json > "$OUT/train.json"
snptool evaluate "$OUT/model.best.safetensors" --json > "$OUT/evaluate.json"
snptool layers "$OUT/model.best.safetensors" --taps-only --json > "$OUT/layers.json"
snptool probe "$OUT/model.best.safetensors" --all --epochs "$PROBE_EPOCHS" \
    -o "$OUT/probes.safetensors" --json > "$OUT/probe.json"
snptool matrix "$OUT/model.best.safetensors" "$OUT/probes.safetensors" --split train \
    -o "$OUT/matrices.h5" --json > "$OUT/matrix.json"
snptool clusters "$OUT/matrices.h5" --threshold 0.3 --json > "$OUT/clusters.json"
snptool prune "$OUT/model.best.safetensors" --clusters "$OUT/matrices.h5" --method units \
    --target-macs "$TARGET_MACS" --round-to "$ROUND_TO" --min-channels "$MIN_CHANNELS" \
    --finetune-epochs "$FINETUNE_EPOCHS" --lr 0.01 -o "$OUT/pruned.safetensors" --json > "$OUT/prune.json"
snptool export "$OUT/model.best.safetensors" -o "$OUT/dense.onnx" --json > "$OUT/export-dense.json"
snptool export "$OUT/pruned.safetensors" -o "$OUT/pruned.onnx" --json > "$OUT/export-pruned.json"
for kind in dense pruned; do
    snptool quantize "$OUT/$kind.onnx" --calibration "$CALIBRATION" -o "$OUT/$kind.int8.onnx" \
        --json > "$OUT/quantize-$kind.json"
done
snptool latency "$OUT/dense.onnx" "$OUT/pruned.onnx" "$OUT/dense.int8.onnx" "$OUT/pruned.int8.onnx" \
    --batch 1 --threads 1 --json > "$OUT/latency.json"
snptool report "$OUT/matrices.h5" "$OUT/probes.safetensors" "$OUT/prune.json" \
    "$OUT/export-dense.json" "$OUT/export-pruned.json" "$OUT/latency.json" \
    -o "$OUT/report.html" --json > "$OUT/report-result.json"

python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
train = json.load(open(f"{out}/train.json"))
evaluation = json.load(open(f"{out}/evaluate.json"))
clusters = json.load(open(f"{out}/clusters.json"))
print(f"best test accuracy {train['best_accuracy']:.4f} (epoch {train['best_epoch']}), "
      f"evaluated {evaluation['accuracy']:.4f} on {evaluation['samples']} test images")
prune = json.load(open(f"{out}/prune.json"))
exports = [json.load(open(f"{out}/export-{kind}.json")) for kind in ("dense", "pruned")]
latency = json.load(open(f"{out}/latency.json"))
fmt = lambda v: "-" if v is None else f"{v:.3f}"
print(f"{'layer':<14}{'layer acc':>10}{'cluster size':>13}{'labels/unit':>12}{'noise/unit':>11}{'SNR':>7}")
for r in clusters:
    print(f"{r['layer']:<14}{fmt(r['accuracy']):>10}{fmt(r['mean_cluster_size']):>13}"
          f"{fmt(r['labels_per_unit']):>12}{fmt(r['noise_per_unit']):>11}{fmt(r['snr']):>7}")
print(f"units: accuracy {prune['dense_accuracy']:.4f} dense, {prune['accuracy_before']:.4f} pruned, "
      f"{prune['accuracy_after']:.4f} fine-tuned; channels removed "
      + ", ".join(f"{l['module']} {l['dilution']:.2f}" for l in prune["layers"]))
mac_ratio = exports[1]["macs"] / exports[0]["macs"]
speedup = 1 / latency[1]["ratio"]
print(f"onnx: params {exports[1]['params']}/{exports[0]['params']}, MACs {exports[1]['macs']}/"
      f"{exports[0]['macs']} ({mac_ratio:.3f}), max |diff| {exports[1]['max_abs_diff']:.1e}; "
      f"latency p50 {latency[0]['p50_ms']:.3f} ms dense, {latency[1]['p50_ms']:.3f} ms pruned")
print(f"pruning buys a {speedup:.2f}x faster export ({speedup * mac_ratio:.2f} of the ideal "
      f"{1 / mac_ratio:.2f}x) for {100 * (prune['dense_accuracy'] - prune['accuracy_after']):.2f} "
      f"points of test accuracy ({prune['dense_accuracy']:.4f} -> {prune['accuracy_after']:.4f})")
quantized = [json.load(open(f"{out}/quantize-{kind}.json")) for kind in ("dense", "pruned")]
variants = [  # (name, accuracy, export, size in bytes, latency row)
    ("dense fp32", quantized[0]["float_accuracy"], exports[0], latency[0]),
    ("pruned fp32", quantized[1]["float_accuracy"], exports[1], latency[1]),
    ("dense int8", quantized[0]["int8_accuracy"], exports[0], latency[2]),
    ("pruned int8", quantized[1]["int8_accuracy"], exports[1], latency[3]),
]
print(f"{'variant':<13}{'accuracy':>9}{'params':>10}{'MACs':>11}{'MB':>7}{'p50 ms':>8}{'speed-up':>9}")
for name, accuracy, export, row in variants:
    print(f"{name:<13}{accuracy:>9.4f}{export['params']:>10}{export['macs']:>11}"
          f"{row['bytes'] / 1e6:>7.2f}{row['p50_ms']:>8.3f}{latency[0]['p50_ms'] / row['p50_ms']:>8.2f}x")
print(f"report: open {out}/report.html in a browser")
PY
