#!/usr/bin/env bash
# Transformers on the CIFAR-10 file (../shared/data/cifar10_test.npz, 8,000 train / 2,000 test):
# block accuracy, cluster size and SNR along the blocks of a small CCT, what its heads serve,
# head / node pruning and ANDC, and the latency of the CCT, its pruned exports and its
# conv-replaced variant, all timed side by side in ONE `snptool latency` run.
#
#   bash examples/benchmarks/cct_analysis.sh [OUT] [EPOCHS] [PROBE_EPOCHS] [FINETUNE_EPOCHS]
#
# Trains (1 thread, ~40 + ~25 min for 40 epochs on a 2-core CPU) a CCT with 4 blocks,
# embedding 128, 4 heads, MLP ratio 2 and two tokenizer convs (64 tokens), and the same CCT
# whose first 2 blocks are conv blocks, unless OUT holds them; then analyses the best epochs.
# The probes cache about 8.2 GB of features (22 taps × 10,000 images).
set -euo pipefail
OUT=${1:-runs/cct}
EPOCHS=${2:-40}
PROBE_EPOCHS=${3:-50}
FT=${4:-5}
HERE=$(cd "$(dirname "$0")" && pwd)
DATA=npz:${CIFAR_NPZ:-$HERE/../../../shared/data/cifar10_test.npz}
ARCH=${CCT_ARCH:-num_blocks=4,embed_dim=128,num_heads=4,mlp_ratio=2,conv_layers=2}
mkdir -p "$OUT"

train() {  # NAME EXTRA-KWARGS
    if [ ! -f "$OUT/$1.safetensors" ]; then
        snptool train --arch cct --arch-kwargs "$ARCH$2" --data "$DATA" --epochs "$EPOCHS" \
            --lr 0.05 --lr-decay 0.5 --lr-step 10 -o "$OUT/$1.safetensors" --json > "$OUT/$1.train.json"
    fi
}
train cct4 ""
train cct4c2 ",conv_blocks=2"
MODEL=$OUT/cct4.best.safetensors
CONV=$OUT/cct4c2.best.safetensors

B=classifier.blocks
TAPS=tokenizer
HEADS=""
NODES=""
for i in 0 1 2 3; do
    TAPS+=",$B.$i.mha_output,$B.$i.self_attn.heads:head,$B.$i.activation,$B.$i.linear2,$B.$i"
    HEADS+="${HEADS:+,}$B.$i.self_attn.heads:head"
    NODES+="${NODES:+,}$B.$i.activation"
done
TAPS+=",classifier.pooled"
snptool probe "$MODEL" --layer "$TAPS" --epochs "$PROBE_EPOCHS" --memory-budget 12GiB \
    -o "$OUT/probes.safetensors" --json > "$OUT/probe.json"
snptool matrix "$MODEL" "$OUT/probes.safetensors" --split train -o "$OUT/matrices.h5" --json > "$OUT/matrix.json"
snptool clusters "$OUT/matrices.h5" --threshold 0.3 --json > "$OUT/clusters.json"
snptool heads "$OUT/matrices.h5" --json > "$OUT/heads.json"

prune() {  # NAME METHOD [flags]
    local name=$1 method=$2; shift 2
    snptool prune "$MODEL" --clusters "$OUT/matrices.h5" --method "$method" "$@" \
        --finetune-epochs "$FT" --lr 0.01 --lr-decay 0.8 --distill 0.9 --train-layers all \
        -o "$OUT/$name.safetensors" --json > "$OUT/$name.prune.json"
    snptool export "$OUT/$name.safetensors" -o "$OUT/$name.onnx" --json > "$OUT/$name.export.json"
}
prune heads25 heads --layers "$HEADS,$NODES" --remove-fraction 0.25
prune heads50 heads --layers "$HEADS,$NODES" --remove-fraction 0.5
ANDC=()
for i in 0 1 2 3; do ANDC+=(--layers "$B.$i.activation,$B.$i.linear2"); done
prune andc andc "${ANDC[@]}" --layers classifier.pooled
snptool export "$MODEL" -o "$OUT/dense.onnx" --json > "$OUT/dense.export.json"
snptool export "$CONV" -o "$OUT/conv.onnx" --json > "$OUT/conv.export.json"
snptool evaluate "$CONV" --json > "$OUT/conv.evaluate.json"
MODELS=()
for name in dense conv heads25 heads50 andc; do MODELS+=("$OUT/$name.onnx"); done
snptool latency "${MODELS[@]}" --batch 1 --threads 1 --warmup 20 --runs 200 --json > "$OUT/latency.json"

python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
load = lambda name: json.load(open(f"{out}/{name}"))
probe, rows = load("probe.json"), load("clusters.json")
print(f"CCT test accuracy {probe['model_accuracy']:.4f}; probes: {probe['mode']} features")
fmt = lambda v, f: format(v, f) if v is not None else "-"
print(f"{'layer':<42}{'units':>6}{'no cl.':>7}{'layer acc':>10}{'cl. size':>9}{'labels/u':>9}"
      f"{'noise/u':>9}{'SNR':>7}")
for r in rows:
    print(f"{r['layer']:<42}{r['units']:>6}{r['units_without_clusters']:>7}"
          f"{fmt(r['accuracy'], '.4f'):>10}{fmt(r['mean_cluster_size'], '.2f'):>9}"
          f"{fmt(r['labels_per_unit'], '.2f'):>9}{fmt(r['noise_per_unit'], '.2f'):>9}"
          f"{fmt(r['snr'], '.2f'):>7}")
for layer in load("heads.json"):
    served = ", ".join(f"h{i}: {len(h['labels'])}" for i, h in enumerate(layer["heads"]))
    print(f"{layer['layer']}: labels per head {served}; heads per label "
          f"{layer['heads_per_label']:.2f}; unserved {layer['labels_without_heads']}; "
          f"mean overlap {fmt(layer['mean_overlap'], '.3f')}")
latency = {row["path"].rsplit("/", 1)[-1][:-5]: row for row in load("latency.json")}
dense = load("dense.export.json")
accuracy = {"dense": probe["model_accuracy"], "conv": load("conv.evaluate.json")["accuracy"]}
for name in ("heads25", "heads50", "andc"):
    accuracy[name] = load(f"{name}.prune.json")["accuracy_after"]
print(f"dense p50 {latency['dense']['p50_ms']:.3f} ms")
print(f"{'model':<9}{'accuracy':>9}{'params':>8}{'MACs':>7}{'latency':>8}")
for name in ("dense", "conv", "heads25", "heads50", "andc"):
    export = load(f"{name}.export.json")
    print(f"{name:<9}{accuracy[name]:>9.4f}{export['params'] / dense['params']:>8.3f}"
          f"{export['macs'] / dense['macs']:>7.3f}{latency[name]['ratio']:>8.3f}")
PY
