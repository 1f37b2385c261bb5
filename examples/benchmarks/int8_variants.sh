#!/usr/bin/env bash
# The deployment variants of one network: the dense export and one or more pruned exports, each
# in float32 and int8. Every export is quantized with onnxruntime's static QDQ (CALIBRATION
# training images of the data it was checked on), which also measures the float and the int8
# graph on the full test split; then all variants are timed side by side at batch 1 and 32 in
# ONE `snptool latency` run per thread count (1 and 2). Speed-ups are over the dense float
# export at the same batch and thread count.
#
#   bash examples/benchmarks/int8_variants.sh OUT DENSE.onnx PRUNED.onnx [PRUNED2.onnx ...]
#
# Environment: DATA (the data spec to calibrate and measure on; default: the one the exports
# recorded), CALIBRATION (256), RUNS (200). A step whose output exists is skipped, so an
# interrupted run resumes.
set -euo pipefail
OUT=$1
shift
CALIBRATION=${CALIBRATION:-256}
RUNS=${RUNS:-200}
mkdir -p "$OUT"
data_flag=()
[[ -n ${DATA:-} ]] && data_flag=(--data "$DATA")

step() {  # OUTPUT COMMAND...: run COMMAND --json > OUTPUT.json unless that exists
    local output=$1
    shift
    [[ -e $output.json ]] && return
    "$@" --json > "$output.json.tmp" && mv "$output.json.tmp" "$output.json"
}

NAMES=()
for model in "$@"; do
    name=$(basename "$model" .onnx)
    NAMES+=("$name")
    cp -n "$model" "$OUT/$name.onnx"
    step "$OUT/$name.int8.onnx" snptool quantize "$OUT/$name.onnx" --calibration "$CALIBRATION" \
        "${data_flag[@]}" -o "$OUT/$name.int8.onnx"
done
MODELS=()
for name in "${NAMES[@]}"; do MODELS+=("$OUT/$name.onnx"); done
for name in "${NAMES[@]}"; do MODELS+=("$OUT/$name.int8.onnx"); done
for threads in 1 2; do
    step "$OUT/latency-t$threads" snptool latency "${MODELS[@]}" --batch 1,32 --threads "$threads" \
        --warmup 20 --runs "$RUNS"
done

python3 - "$OUT" "${NAMES[@]}" <<'PY'
import json, sys
out, names = sys.argv[1], sys.argv[2:]
load = lambda name: json.load(open(f"{out}/{name}.json"))
stem = lambda path: path.rsplit("/", 1)[-1][: -len(".onnx")]
p50, size = {}, {}
for threads in (1, 2):
    for row in load(f"latency-t{threads}"):
        p50[stem(row["path"]), row["batch"], threads] = row["p50_ms"]
        size[stem(row["path"])] = row["bytes"]
quantized = {name: load(f"{name}.int8.onnx") for name in names}
dense = names[0]
columns = [(b, t) for t in (1, 2) for b in (1, 32)]
print(f"{'variant':<24}{'accuracy':>9}{'MB':>7}" + "".join(f"{f'b{b} t{t} ms':>11}{'':>7}" for b, t in columns))
for name in names:
    for precision, variant in (("float", name), ("int8", f"{name}.int8")):
        accuracy = quantized[name][f"{precision}_accuracy"]
        cells = "".join(
            f"{p50[variant, b, t]:>11.3f}{p50[dense, b, t] / p50[variant, b, t]:>6.2f}x" for b, t in columns
        )
        print(f"{variant:<24}{accuracy:>9.4f}{size[variant] / 1e6:>7.2f}{cells}")
for name, q in quantized.items():
    print(f"{name}.int8: argmax agreement with float {q['argmax_agreement']:.4f} on "
          f"{q['samples']} test images; {q['calibration']} calibration images")
PY
