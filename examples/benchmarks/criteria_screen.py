"""Screening of channel-removal criteria (issue 24): the SNP rankings against Torch-Pruning's
weight criteria on one network, several MAC targets and fine-tuning seeds, every run through
`snptool prune` itself.

    python examples/benchmarks/criteria_screen.py OUT --network resnet20
    python examples/benchmarks/criteria_screen.py OUT --network vgg11h \\
        --checkpoint runs/vgg/vgg11h-cifar.best.safetensors --matrices runs/vgg/matrices.h5

`resnet20` (or `resnet56`, the confirmation) imports the third-party ResNet
(../shared/checkpoints), probes its stage outputs and every block's inner channels on the first
`--analysis-n` training images and clusters the matrices; `vgg11h` takes a checkpoint and
clustered matrices (cifar_layer_table.sh) and prunes the convs of `--layers`. Each run prunes to
a target, tests on the full test set right after pruning and after every fine-tuning epoch
(`--finetune-test-every-epoch`), and leaves its JSON in OUT/runs/ (a run whose JSON exists is
skipped, so an interrupted screen resumes; the pruned checkpoints are deleted). OUT keeps only
small files (JSON, the ResNet's matrices), so it can be committed and resumed on another day;
the data subsets, the model and the probes go to --cache. Targets run in the order given, so the
first finishes first.
The criteria include other allocations of the target among the layers (`magnitude-global`,
`lamp-global`, `margin-global`: one threshold over the model; `l1-margin-mass`, `margin-mass`:
every layer keeps the same share of its correct-label margin) and iterative pruning
(`magnitude-iter2`, `margin-iter2`: two prunes of √target each, half the epochs after each, the
margin re-analysed on the pruned model in between; the `pruned` column is then the accuracy
right after the last prune, `1 epoch` the first epoch after the first).
`group-norm-sparse` (`-weak`) is Torch-Pruning's group-norm after one epoch of its
sparsity-regularised training (`--sparsity-epochs 1 --sparsity-reg 0.01`, `0.002`; on the VGG
that epoch leaves 0.742 and 0.857 of the dense 0.884, and 0.1 collapsed both networks to
chance), which counts in the budget: it fine-tunes one epoch less.
`afcc-grouped2` prunes connections into grouped convolutions of two label groups (hypothesis
5): its size is set by the groups, not the target (the run's MACs come from its export), so
compare it at its own ratio (0.574 of the MACs on the VGG's seven taps: `--targets 0.574`).
On a ResNet it groups the inner conv of every block (one chain `relu1` → `bn2` per block, from
matrices of those taps made once: OUT/inner-matrices.h5).
`summary.json` and the printed tables give, per target and criterion, mean ± standard error
over the seeds and the paired difference to `--baseline` (default `magnitude`, Torch-Pruning's
L1) seed by seed. The confirmation on ResNet-56 pairs with the baseline that led on ResNet-20:

    python examples/benchmarks/criteria_screen.py OUT --network resnet56 --train-n 0 \\
        --epochs 8 --targets 0.5 --seeds 0,1 --baseline magnitude-global \\
        --criteria magnitude-global,l1-coverage2,l1-margin-mass \\
        --finetune-flags "--lr 0.01 --lr-decay 0.7 --augment --finetune-amp bf16"
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[2] / "shared"

# name → the criterion's `snptool prune` flags
CRITERIA = {
    "magnitude": ["--method", "magnitude-channels"],
    "taylor": ["--method", "taylor"],
    "lamp": ["--method", "lamp"],
    "group-norm": ["--method", "group-norm"],
    "random": ["--method", "random-channels"],
    # DepGraph's recipe: sparsity-regularised training first (its epoch counts in the budget)
    "group-norm-sparse": [
        "--method",
        "group-norm",
        "--sparsity-epochs",
        "1",
        "--sparsity-reg",
        "0.01",
    ],
    "group-norm-sparse-weak": [
        "--method",
        "group-norm",
        "--sparsity-epochs",
        "1",
        "--sparsity-reg",
        "0.002",
    ],
    "units": ["--method", "units", "--ranking", "labels,maximum,noise", "--coverage", "0"],
    "units-l1": ["--method", "units", "--ranking", "labels,magnitude", "--coverage", "0"],
    "margin": ["--method", "units", "--ranking", "margin", "--coverage", "0"],
    "l1-coverage2": ["--method", "units", "--ranking", "magnitude", "--coverage", "2"],
    "margin-coverage2": ["--method", "units", "--ranking", "margin", "--coverage", "2"],
    # where to prune (hypothesis 3): the groups' shares differ (snptool/pruning/allocation.py)
    "magnitude-global": ["--method", "magnitude-channels", "--allocation", "global"],
    "lamp-global": ["--method", "lamp", "--allocation", "global"],
    "margin-global": [
        *("--method", "units", "--ranking", "margin", "--coverage", "0"),
        *("--allocation", "global"),
    ],
    "l1-margin-mass": ["--method", "magnitude-channels", "--allocation", "margin-mass"],
    "margin-mass": [
        *("--method", "units", "--ranking", "margin", "--coverage", "0"),
        *("--allocation", "margin-mass"),
    ],
}
# iterative pruning (hypothesis 4): name → (criterion, steps). Each step prunes by the same
# ratio (target^(1/steps) of the MACs it starts from) and fine-tunes epochs/steps; the matrices'
# criteria re-analyse the pruned model before every later step (probe, matrix, clusters).
ITERATIVE = {
    "magnitude-iter2": ("magnitude", 2),
    "margin-iter2": ("margin", 2),
}
# label-grouped convolutions (hypothesis 5): name → flags; their size is set by --groups, not
# by the target, so the export measures their MACs (compare with a criterion at that ratio)
GROUPED = {
    "afcc-grouped2": ["--method", "afcc-grouped", "--groups", "2", "--train-layers", "all"],
}
SPENT_EPOCHS = {"group-norm-sparse": 1, "group-norm-sparse-weak": 1}  # trained before pruning
BASELINE = "magnitude"


# Commands that rebuild a checkpoint's model: the ResNets' is this repository's own
# examples/third_party/cifar_resnet.py, which the screen trusts (docs/file-formats.md#security).
READS_CHECKPOINTS = ("probe", "matrix", "prune", "export", "evaluate", "layers")


def snptool(*args: str, threads: int) -> dict:
    """Run `snptool ... --json` with `threads` intra-op threads; its JSON."""
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    trust = ["--trust-code"] if args[0] in READS_CHECKPOINTS else []
    done = subprocess.run(
        [sys.executable, "-m", "snptool", "--quiet", *args, *trust, "--json"],
        capture_output=True,
        text=True,
        env=environment,
    )
    if done.returncode != 0:
        raise SystemExit(f"snptool {' '.join(args[:2])} failed: {done.stderr.strip()}")
    return json.loads(done.stdout)


def step(output: Path, *args: str, threads: int = 2) -> dict:
    """`snptool` unless OUTPUT (its JSON) exists; written atomically once it succeeded."""
    if output.exists():
        return json.loads(output.read_text())
    result = snptool(*args, threads=threads)
    write_json(output, result)
    return result


def write_json(output: Path, result) -> None:
    """`result` as JSON in OUTPUT, written atomically."""
    temporary = output.with_suffix(".tmp")
    temporary.write_text(json.dumps(result, indent=1))
    temporary.replace(output)


def finetuning(args, epochs: int, seed: int) -> list[str]:
    """`snptool prune`'s fine-tuning flags of a run: every epoch tested on the test split."""
    return [
        "--finetune-epochs",
        str(epochs),
        "--finetune-test-every-epoch",
        "--seed",
        str(seed),
        "--data",
        args.data,
        *args.finetune_flags.split(),
    ]


def subset(source: Path, output: Path, count: int) -> Path:
    """The first `count` images of an npz file (0: all of them), written once."""
    if not output.exists():
        data = np.load(source)
        count = count or len(data["labels"])
        temporary = output.with_name(output.stem + ".tmp.npz")
        np.savez(
            temporary,
            images=data["images"][:count],
            labels=data["labels"][:count],
            class_names=data["class_names"],
        )
        temporary.replace(output)
    return output


THIRD_PARTY = {  # network → (akamaster's file, blocks per stage)
    "resnet20": ("akamaster_resnet20-12fca82f.th", 3),
    "resnet56": ("akamaster_resnet56-4bfd9763.th", 9),
}


def cifar_resnet(out: Path, cache: Path, args) -> tuple[Path, Path, list[str]]:
    """The imported third-party ResNet, its clustered matrices and the taps the criteria prune
    (the stage outputs and every block's inner channels). The matrices and the analysis JSON
    live in OUT (small: kept with the results, so a later screen ranks by the same matrices);
    the model and the probes in the cache."""
    weights, blocks = THIRD_PARTY[args.network]
    model = cache / f"{args.network}.safetensors"
    if not model.exists():
        snptool(
            "import",
            str(SHARED / "checkpoints" / weights),
            "--arch",
            f"{HERE.parent / 'third_party' / 'cifar_resnet.py'}:{args.network}",
            "--data",
            args.data,
            "--mean",
            "0.485,0.456,0.406",
            "--std",
            "0.229,0.224,0.225",
            "-o",
            str(model),
            threads=2,
        )
    inner = [f"layer{s}.{b}.relu1" for s in (1, 2, 3) for b in range(blocks)]
    taps = [f"layer{s}.{blocks - 1}" for s in (1, 2, 3)] + inner
    probes, matrices = cache / "probes.safetensors", out / "matrices.h5"
    if not (matrices.exists() and (out / "clusters.json").exists()):
        analysis = ["--data", args.analysis_data]
        for name in ("probe", "matrix", "clusters"):
            (out / f"{name}.json").unlink(missing_ok=True)
        step(
            out / "probe.json",
            "probe",
            str(model),
            *analysis,
            "--layer",
            ",".join(taps),
            "--epochs",
            str(args.probe_epochs),
            "-o",
            str(probes),
        )
        step(
            out / "matrix.json",
            "matrix",
            str(model),
            str(probes),
            *analysis,
            "--split",
            "train",
            "-o",
            str(matrices),
        )
        step(out / "clusters.json", "clusters", str(matrices), "--threshold", "0.3")
    return model, matrices, taps


def analyse(checkpoint: Path, taps, args, probes: Path, matrices: Path) -> list:
    """Probe (to PROBES), matrix (to MATRICES) and clusters of `checkpoint` at `taps` on the
    analysis data; the clusters' JSON."""
    analysis = ["--data", args.analysis_data]
    layers = ["--layer", ",".join(taps), "--epochs", str(args.probe_epochs)]
    snptool("probe", str(checkpoint), *analysis, *layers, "-o", str(probes), threads=args.threads)
    snptool(
        "matrix",
        str(checkpoint),
        str(probes),
        *analysis,
        "--split",
        "train",
        "-o",
        str(matrices),
        threads=args.threads,
    )
    return snptool("clusters", str(matrices), "--threshold", "0.3", threads=args.threads)


def run_iterative(
    out: Path,
    cache: Path,
    args,
    model: Path,
    matrices: Path,
    taps,
    name: str,
    target: float,
    seed: int,
) -> None:
    """`steps` prunes of ratio target^(1/steps), each fine-tuned epochs/steps, the matrices'
    criteria re-analysed in between; one JSON like a single run's (`steps` holds each step's)."""
    output = out / "runs" / f"{name}-t{target}-s{seed}.json"
    if output.exists():
        return
    criterion, count = ITERATIVE[name]
    by_matrices = "units" in CRITERIA[criterion]
    current, steps = model, []
    for number in range(1, count + 1):
        checkpoint = cache / f"{name}-t{target}-s{seed}-step{number}.safetensors"
        clusters = matrices
        if number > 1 and by_matrices:
            prefix = checkpoint.with_suffix("")
            probes = prefix.with_name(prefix.name + ".probes.safetensors")
            clusters = prefix.with_name(prefix.name + ".h5")
            analyse(current, taps, args, probes, clusters)
            probes.unlink(missing_ok=True)
        steps.append(
            snptool(
                "prune",
                str(current),
                *(["--clusters", str(clusters)] if by_matrices else []),
                *CRITERIA[criterion],
                "--layers",
                ",".join(taps),
                "--target-macs",
                f"{target ** (1 / count):.6f}",
                "--round-to",
                str(args.round_to),
                *finetuning(args, args.epochs // count, seed),
                "-o",
                str(checkpoint),
                threads=args.threads,
            )
        )
        if current != model:
            current.unlink(missing_ok=True)
            if by_matrices:
                clusters.unlink(missing_ok=True)
        current = checkpoint
    current.unlink(missing_ok=True)
    first, last = steps[0], steps[-1]
    size = {**last["size"], "dense_macs": first["size"]["dense_macs"]}
    size["mac_ratio"] = size["macs"] / size["dense_macs"]
    result = {
        **last,
        "dense_accuracy": first["dense_accuracy"],
        "size": size,
        "history": [row for step in steps for row in step["history"]],
        "seconds": sum(step["seconds"] for step in steps),
        "steps": steps,
    }
    write_json(output, result)


def inner_matrices(out: Path, cache: Path, args, model: Path, blocks: list[str]) -> Path:
    """The clustered matrices of every block's inner activation and the norm before its
    addition (OUT/inner-matrices.h5, made once): what groups the blocks' inner convs."""
    matrices = out / "inner-matrices.h5"
    if not (out / "inner-clusters.json").exists():
        taps = [f"{b}.{layer}" for b in blocks for layer in ("relu1", "bn2")]
        rows = analyse(model, taps, args, cache / "inner-probes.safetensors", matrices)
        write_json(out / "inner-clusters.json", rows)
    return matrices


def run_grouped(
    out: Path, cache: Path, args, model: Path, matrices: Path, taps, name, target, seed
) -> None:
    """A label-grouped prune (its size set by its groups) with its MACs measured on the export."""
    output = out / "runs" / f"{name}-t{target}-s{seed}.json"
    if output.exists():
        return
    checkpoint = cache / f"{name}-t{target}-s{seed}.safetensors"
    if args.network in THIRD_PARTY:  # the inner conv of every block: one chain relu1 → bn2
        blocks = [t.removesuffix(".relu1") for t in taps if t.endswith(".relu1")]
        chains = [f"{b}.relu1,{b}.bn2" for b in blocks]
        matrices = inner_matrices(out, cache, args, model, blocks)
    else:
        chains = [",".join(taps)]
    result = snptool(
        "prune",
        str(model),
        "--clusters",
        str(matrices),
        *GROUPED[name],
        *[flag for chain in chains for flag in ("--layers", chain)],
        *finetuning(args, args.epochs, seed),
        "-o",
        str(checkpoint),
        threads=args.threads,
    )
    onnx = checkpoint.with_suffix(".onnx")
    export = snptool("export", str(checkpoint), "-o", str(onnx), threads=args.threads)
    result["size"] = {key: export[key] for key in ("macs", "dense_macs", "params", "dense_params")}
    result["size"]["mac_ratio"] = export["macs"] / export["dense_macs"]
    checkpoint.unlink(missing_ok=True)
    onnx.unlink(missing_ok=True)
    write_json(output, result)


def run_one(
    out: Path,
    cache: Path,
    args,
    model: Path,
    matrices: Path,
    taps,
    criterion: str,
    target: float,
    seed: int,
) -> None:
    if criterion in GROUPED:
        return run_grouped(out, cache, args, model, matrices, taps, criterion, target, seed)
    if criterion in ITERATIVE:
        return run_iterative(out, cache, args, model, matrices, taps, criterion, target, seed)
    name = f"{criterion}-t{target}-s{seed}"
    checkpoint = cache / f"{name}.safetensors"
    step(
        out / "runs" / f"{name}.json",
        "prune",
        str(model),
        "--clusters",
        str(matrices),
        *CRITERIA[criterion],
        "--layers",
        ",".join(taps),
        "--target-macs",
        str(target),
        "--round-to",
        str(args.round_to),
        *finetuning(args, args.epochs - SPENT_EPOCHS.get(criterion, 0), seed),
        "-o",
        str(checkpoint),
        threads=args.threads,
    )
    checkpoint.unlink(missing_ok=True)


def mean_se(values: list[float]) -> tuple[float, float | None]:
    """Mean and standard error (None for one value)."""
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else None
    return mean, se


RUN_NAME = re.compile(r"^(?P<criterion>.+)-t(?P<target>[0-9.]+)-s(?P<seed>\d+)\.json$")


def summarise(out: Path, baseline: str = BASELINE) -> list[dict]:
    """Per target and criterion of every run in OUT/runs: accuracy right after pruning, after
    epoch 1 and the last, mean ± SE over seeds, and the paired difference to `baseline` at the
    last epoch."""
    found = {}
    for path in (out / "runs").glob("*.json"):
        match = RUN_NAME.match(path.name)
        if match:
            key = (float(match["target"]), match["criterion"], int(match["seed"]))
            found[key] = json.loads(path.read_text())
    rows = []
    for target in sorted({t for t, _, _ in found}, reverse=True):
        results = {(c, s): run for (t, c, s), run in found.items() if t == target}
        for criterion in sorted({c for c, _ in results}):
            runs = {s: run for (c, s), run in sorted(results.items()) if c == criterion}
            history = {s: r["history"] for s, r in runs.items()}
            last = {s: r["accuracy_after"] for s, r in runs.items()}
            paired = [
                last[s] - results[baseline, s]["accuracy_after"]
                for s in runs
                if (baseline, s) in results
            ]
            rows.append(
                {
                    "target": target,
                    "criterion": criterion,
                    "seeds": sorted(runs),
                    "mac_ratio": statistics.fmean(r["size"]["mac_ratio"] for r in runs.values()),
                    "pruned": mean_se([r["accuracy_before"] for r in runs.values()]),
                    "epoch1": mean_se([h[0]["test_accuracy"] for h in history.values()]),
                    "last": mean_se(list(last.values())),
                    "baseline": baseline,
                    "vs_baseline": mean_se(paired) if paired else None,
                    "dense": next(iter(runs.values()))["dense_accuracy"],
                }
            )
    return rows


def print_tables(rows: list[dict], epochs: int, baseline: str = BASELINE) -> None:
    cell = lambda pair: f"{pair[0]:.4f}" + (f" ± {pair[1]:.4f}" if pair[1] is not None else "")  # noqa: E731
    for target in sorted({r["target"] for r in rows}, reverse=True):
        subset_rows = [r for r in rows if r["target"] == target]
        print(f"\ntarget {target} of the MACs; dense {subset_rows[0]['dense']:.4f}")
        print(f"| criterion | seeds | MACs | pruned | 1 epoch | {epochs} epochs | vs {baseline} |")
        print("|---|---|---|---|---|---|---|")
        for r in sorted(subset_rows, key=lambda r: -r["last"][0]):
            paired = cell(r["vs_baseline"]) if r["vs_baseline"] else "-"
            print(
                f"| {r['criterion']} | {len(r['seeds'])} | {r['mac_ratio']:.3f} | "
                f"{cell(r['pruned'])} | {cell(r['epoch1'])} | {cell(r['last'])} | {paired} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--network", choices=(*THIRD_PARTY, "vgg11h"), default="resnet20")
    parser.add_argument("--checkpoint", type=Path, help="vgg11h: the trained checkpoint")
    parser.add_argument("--matrices", type=Path, help="vgg11h: its clustered matrices")
    parser.add_argument(
        "--layers",
        default="features.6,features.10,features.13,features.17,"
        "features.20,features.24,features.27",
        help="vgg11h: the pruned taps",
    )
    parser.add_argument("--targets", default="0.5,0.65,0.8")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--criteria", default=",".join([*CRITERIA, *ITERATIVE, *GROUPED]))
    parser.add_argument("--epochs", type=int, default=4, help="fine-tuning epochs")
    parser.add_argument("--baseline", default=BASELINE, help="the criterion runs pair with")
    parser.add_argument("--train-n", type=int, default=0, help="fine-tune on the first N (0: all)")
    parser.add_argument("--analysis-n", type=int, default=10000)
    parser.add_argument("--probe-epochs", type=int, default=5)
    parser.add_argument("--round-to", type=int, default=1)
    parser.add_argument("--finetune-flags", default="--lr 0.01 --lr-decay 0.7 --augment")
    parser.add_argument("--cache", type=Path, help="large intermediates (runs/criteria-cache/NET)")
    parser.add_argument(
        "--summary-only", action="store_true", help="tabulate the runs in OUT without running any"
    )
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (1 thread each if > 1)")
    parser.add_argument(
        "--threads", type=int, help="threads per run (default: 1 if --jobs > 1, else all cores)"
    )
    args = parser.parse_args()
    args.targets = [float(t) for t in args.targets.split(",")]
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.criteria = args.criteria.split(",")
    unknown = set(args.criteria) - set(CRITERIA) - set(ITERATIVE) - set(GROUPED)
    if unknown:
        known = ", ".join([*CRITERIA, *ITERATIVE, *GROUPED])
        parser.error(f"unknown criteria {sorted(unknown)}; known: {known}")
    if args.threads is None:
        args.threads = 1 if args.jobs > 1 else os.cpu_count() or 1
    out, cache = args.out, args.cache or Path("runs") / "criteria-cache" / args.network
    if args.summary_only:
        rows = summarise(out, args.baseline)
        (out / "summary.json").write_text(json.dumps(rows, indent=1))
        return print_tables(rows, args.epochs, args.baseline)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    data = SHARED / "data"
    train = subset(data / "cifar10_train.npz", cache / f"train{args.train_n}.npz", args.train_n)
    analysis = subset(
        data / "cifar10_train.npz", cache / f"analysis{args.analysis_n}.npz", args.analysis_n
    )
    test = data / "cifar10_test.npz"
    args.data, args.analysis_data = f"npz:{train},{test}", f"npz:{analysis},{test}"
    if args.network in THIRD_PARTY:
        model, matrices, taps = cifar_resnet(out, cache, args)
    else:
        if not (args.checkpoint and args.matrices):
            parser.error("vgg11h needs --checkpoint and --matrices (cifar_layer_table.sh)")
        model, matrices, taps = args.checkpoint, args.matrices, args.layers.split(",")
    cells = [(c, t, s) for t in args.targets for s in args.seeds for c in args.criteria]
    with ThreadPoolExecutor(args.jobs) as pool:
        for future in [
            pool.submit(run_one, out, cache, args, model, matrices, taps, *cell) for cell in cells
        ]:
            future.result()
    rows = summarise(out, args.baseline)
    (out / "summary.json").write_text(json.dumps(rows, indent=1))
    print_tables(rows, args.epochs, args.baseline)


if __name__ == "__main__":
    main()
