#!/usr/bin/env bash
# The generalised-LeNet power law (arXiv 2211.11106; METHODS.md §9) on CIFAR-10: `snptool sweep`
# trains lenet with d1 first-layer filters and d2 = round(16/6·d1) second-layer filters for every
# d1 × seed, fits error = c·d1^(−ρ) and prints the per-d1 errors, ρ with its bootstrap interval,
# and the training seconds per run.
#
#   bash examples/benchmarks/lenet_power_law.sh [RUN_DIR] [EPOCHS]
#
# DATA (default: the official 50,000 / 10,000 split, npz:TRAIN,TEST of ../shared/data), D1
# (default 2,4,8,16), SEEDS (default 0,1,2) and FLAGS (more `sweep` flags, e.g.
# FLAGS="--accuracy best --fit means") come from the environment. Runs already complete in
# RUN_DIR are reused, so a cut-short benchmark continues where it stopped. On the 8,000-image
# train split of the test file (DATA=npz:../shared/data/cifar10_test.npz) one epoch takes
# ~2 s at d1 = 2 and ~5 s at d1 = 16 on one CPU thread; on the 50,000 images about six times that.
set -euo pipefail
RUN_DIR=${1:-runs/lenet-power-law}
EPOCHS=${2:-20}
HERE=$(cd "$(dirname "$0")" && pwd)
SHARED=$HERE/../../../shared/data
DATA=${DATA:-npz:$SHARED/cifar10_train.npz,$SHARED/cifar10_test.npz}
read -r -a FLAGS <<< "${FLAGS:-}"

snptool sweep --data "$DATA" --d1 "${D1:-2,4,8,16}" --seeds "${SEEDS:-0,1,2}" \
    --epochs "$EPOCHS" --lr 0.05 --lr-decay 0.5 --lr-step $(( (EPOCHS + 3) / 4 )) \
    "${FLAGS[@]}" -o "$RUN_DIR"

python3 - "$RUN_DIR" <<'PY'
import json, statistics, sys
result = json.load(open(f"{sys.argv[1]}/sweep.json"))
by_d1 = {}
for point in result["points"]:
    by_d1.setdefault((point["d1"], point["d2"]), []).append(point)
print(f"{'d1':>4}{'d2':>5}{'runs':>6}{'mean error':>12}{'std':>9}{'train s/run':>13}")
for (d1, d2), points in sorted(by_d1.items()):
    errors = [p["error"] for p in points]
    std = statistics.stdev(errors) if len(errors) > 1 else float("nan")
    seconds = []
    for point in points:  # training seconds from the run's own history
        with open(point["checkpoint"], "rb") as handle:
            header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
        history = json.loads(header["__metadata__"]["snptool"])["training"]["history"]
        seconds.append(sum(epoch["seconds"] for epoch in history))
    print(f"{d1:>4}{d2:>5}{len(points):>6}{statistics.mean(errors):>12.4f}{std:>9.4f}"
          f"{statistics.mean(seconds):>13.1f}")
fit = result["fit"]
interval = fit["rho_ci"] or [float("nan")] * 2
print(f"rho = {fit['rho']:.4f}  ({fit['confidence']:.0%} bootstrap interval "
      f"[{interval[0]:.4f}, {interval[1]:.4f}], {fit['bootstrap']} resamples)  "
      f"prefactor {fit['prefactor']:.4f}  R^2 {fit['r2']:.4f}  "
      f"fit over {fit['method']}, {result['config']['accuracy']} epoch, "
      f"{result['config']['train']['epochs']} epochs")
PY
