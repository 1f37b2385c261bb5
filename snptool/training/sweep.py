"""`snptool sweep`: the generalised-LeNet power law (arXiv 2211.11106; METHODS.md §9).

Trains `lenet` with filters (d1, d2 = round(ratio·d1)) for every d1 × seed through `run_train`,
one checkpoint per run in the output folder, and fits error ∝ d1^(−ρ) (`power_law.py`). A run
already complete there with the same settings is reused and a run cut short is resumed, so an
interrupted sweep continues; a file trained with other settings is refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from snptool.config import DataConfig, InputSpec, SweepConfig, TrainConfig, config_to_dict
from snptool.core import console
from snptool.core.architectures import default_input_size
from snptool.core.checkpoint import read_metadata
from snptool.core.files import provenance, strict_json, write_bytes_atomic
from snptool.data.datasets import load_data
from snptool.errors import UsageError
from snptool.training.power_law import PowerLawFit, fit_power_law
from snptool.training.train import InputOverrides, best_output_path, run_train

ARCH = "lenet"
RESULT_NAME = "sweep.json"
# Training settings that do not change what a run learns: a run done with other values is reused.
UNCOMPARED_TRAIN_FIELDS = ("epochs", "device", "eval_batch_size")


@dataclass(frozen=True)
class SweepPoint:
    """One trained run; `status` is trained, resumed or reused; error = 1 − accuracy."""

    d1: int
    d2: int
    seed: int
    accuracy: float
    error: float
    checkpoint: str
    status: str

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass(frozen=True)
class SweepResult:
    points: list[SweepPoint]
    fit: PowerLawFit
    config: dict[str, Any]
    data: str
    output: str

    def to_json(self) -> dict[str, Any]:
        return {
            "points": [p.to_json() for p in self.points],
            "fit": self.fit.to_json(),
            "config": self.config,
            "data": self.data,
            "output": self.output,
        }

    def per_d1(self) -> list[dict[str, Any]]:
        """Mean and standard deviation (n − 1; NaN for one seed) of the error at each d1."""
        rows = []
        for d1 in sorted({p.d1 for p in self.points}):
            runs = [p for p in self.points if p.d1 == d1]
            errors = np.array([p.error for p in runs])
            std = float(errors.std(ddof=1)) if len(errors) > 1 else float("nan")
            rows.append(
                {"d1": d1, "d2": runs[0].d2, "runs": len(runs), "mean": errors.mean(), "std": std}
            )
        return rows


def run_sweep(
    data_spec: str | None,
    output_dir: str | Path,
    config: SweepConfig | None = None,
    *,
    data_config: DataConfig | None = None,
) -> SweepResult:
    """Train every d1 × seed run into `output_dir`, fit the power law, write DIR/sweep.json."""
    config = config or SweepConfig()
    data_config = data_config or DataConfig()
    data_spec = data_spec or "digits"
    records = _DataRecords(data_spec, data_config)  # a bad data spec fails before any folder
    folder = prepare_folder(output_dir)
    runs = plan_runs(folder, data_spec, config, records)  # every file checked before training
    points = []
    with console.progress("sweep", len(runs)) as task:
        for run in runs:
            points.append(_sweep_point(run, data_spec, data_config, config.accuracy))
            task.advance()
    fit = fit_power_law(
        np.array([p.d1 for p in points]),
        np.array([p.error for p in points]),
        np.array([p.seed for p in points]),
        method=config.fit,
        bootstrap=config.bootstrap,
        confidence=config.confidence,
        bootstrap_seed=config.bootstrap_seed,
    )
    result = SweepResult(points, fit, config_to_dict(config), data_spec, str(folder / RESULT_NAME))
    write_result(result, data_config)
    return result


def run_name(d1: int, d2: int, seed: int) -> str:
    return f"lenet-{d1}-{d2}-seed{seed}.safetensors"


def prepare_folder(output_dir: str | Path) -> Path:
    """The output folder, created (with its parents) if absent."""
    folder = Path(output_dir)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"-o {folder} is a file; give a folder for the sweep's runs.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot create the folder -o {folder} ({error.strerror}).") from None
    return folder


@dataclass(frozen=True)
class PlannedRun:
    """One run of the sweep and what its folder already holds (see `existing_run_state`)."""

    d1: int
    d2: int
    seed: int
    last: Path
    train_config: TrainConfig
    arch_kwargs: dict[str, Any]
    state: str


def plan_runs(
    folder: Path, data_spec: str, config: SweepConfig, records: _DataRecords
) -> list[PlannedRun]:
    """Every d1 × seed run with the state of its checkpoint in `folder`."""
    runs = []
    for d1, d2 in zip(config.d1, config.d2, strict=True):
        kwargs = {"filters": [d1, d2], "fc_widths": list(config.fc_widths)}
        for seed in config.seeds:
            last = folder / run_name(d1, d2, seed)
            train_config = dataclasses.replace(config.train, seed=seed)
            state = existing_run_state(last, data_spec, train_config, kwargs, records)
            runs.append(PlannedRun(d1, d2, seed, last, train_config, kwargs, state))
    return runs


def _sweep_point(
    run: PlannedRun, data_spec: str, data_config: DataConfig, accuracy: str
) -> SweepPoint:
    """Train, resume or reuse one run, and score it by its final or best epoch."""
    last, best = run.last, best_output_path(run.last)
    partial = last.with_name(f".{last.stem}.resuming{last.suffix}")
    partial.unlink(missing_ok=True)
    if run.state == "partial":  # continue the cut-short run, then put it in place
        run_train(
            ARCH,
            data_spec,
            partial,
            run.train_config,
            data_config=data_config,
            resume=last,
            best_output=best,
        )
        os.replace(partial, last)
    elif run.state != "complete":
        run_train(
            ARCH,
            data_spec,
            last,
            run.train_config,
            arch_kwargs=run.arch_kwargs,
            data_config=data_config,
        )
    status = {"complete": "reused", "partial": "resumed"}.get(run.state, "trained")
    score = float(read_metadata(last)["training"][f"{accuracy}_accuracy"])
    console.log(
        f"d1 {run.d1}, d2 {run.d2}, seed {run.seed}: {status}, {accuracy} accuracy {score:.4f}"
    )
    checkpoint = best if accuracy == "best" else last
    return SweepPoint(run.d1, run.d2, run.seed, score, 1.0 - score, str(checkpoint), status)


def existing_run_state(
    last: Path,
    data_spec: str,
    train_config: TrainConfig,
    arch_kwargs: dict[str, Any],
    records: _DataRecords,
) -> str:
    """absent, complete, partial (fewer epochs than asked) or stale (its best file disagrees).

    Raises UsageError when the file was trained with other settings or for more epochs.
    """
    if not last.exists():
        return "absent"
    metadata = read_metadata(last)
    difference = run_difference(metadata, data_spec, train_config, arch_kwargs, records)
    if difference:
        raise UsageError(
            f"{last} was trained with other settings ({difference}); "
            "delete it or give another -o folder."
        )
    done = metadata["training"]["epochs_done"]
    if done > train_config.epochs:
        raise UsageError(
            f"{last} has trained {done} epochs, more than --epochs {train_config.epochs}; "
            f"raise --epochs to {done} or give another -o folder."
        )
    if not best_matches_last(best_output_path(last), metadata["training"]):
        console.log(f"{last}: its best-epoch file does not match; training the run again.")
        return "stale"
    return "complete" if done == train_config.epochs else "partial"


def run_difference(
    metadata: dict[str, Any],
    data_spec: str,
    train_config: TrainConfig,
    arch_kwargs: dict[str, Any],
    records: _DataRecords,
) -> str | None:
    """What differs between a checkpoint and the run the sweep asks for, or None."""
    arch = metadata.get("arch") or {}
    kwargs = {k: v for k, v in (arch.get("kwargs") or {}).items() if k != "num_classes"}
    training = metadata.get("training") or {}
    if arch.get("spec") != ARCH or kwargs != arch_kwargs:
        return f"architecture {arch.get('spec')} {kwargs}, not {ARCH} {arch_kwargs}"
    if training.get("saved") != "last":
        return "it is not the last state of a `snptool train` run"
    if metadata.get("data") != data_spec:
        return f"data {metadata.get('data')}, not {data_spec}"
    if _input_spec(metadata) != expected_input_spec():
        return "another input spec"
    # A setting added after the file was written counts as its default.
    stored = config_to_dict(TrainConfig()) | (training.get("config") or {})
    for name, value in config_to_dict(train_config).items():
        if name not in UNCOMPARED_TRAIN_FIELDS and stored.get(name) != value:
            return f"{name} {stored.get(name)}, not {value}"
    for split, record in zip(("train", "test"), records.value, strict=True):
        if training.get(f"{split}_data") != record:
            return f"another {split} split of {data_spec}"
    return None


def best_matches_last(best: Path, training: dict[str, Any]) -> bool:
    """Whether the best-epoch file is the best epoch of the last state's history."""
    if not best.exists():
        return False
    best_training = read_metadata(best).get("training") or {}
    epoch = training["best_epoch"]
    return (
        best_training.get("saved") == "best"
        and best_training.get("saved_epoch") == epoch
        and best_training.get("history") == training["history"][:epoch]
    )


def expected_input_spec() -> InputSpec:
    """The input spec `run_train` gives `lenet` (no overrides)."""
    return InputOverrides().resolve(default_input_size(ARCH) or (3, 32, 32))


def _input_spec(metadata: dict[str, Any]) -> InputSpec | None:
    spec = metadata.get("input") or {}
    try:
        return InputSpec(**{**spec, "mean": tuple(spec["mean"]), "std": tuple(spec["std"])})
    except (KeyError, TypeError):
        return None


class _DataRecords:
    """The train and test records a run on this data stores (`value`), loaded on creation."""

    def __init__(self, data_spec: str, data_config: DataConfig) -> None:
        splits = (load_data(data_spec, s, data_config) for s in ("train", "test"))
        self.value = tuple(json.loads(json.dumps(split.record())) for split in splits)


def write_result(result: SweepResult, data_config: DataConfig) -> None:
    """DIR/sweep.json (atomically): the --json document plus data records and provenance."""
    training = read_metadata(result.points[0].checkpoint)["training"]
    document = {
        **result.to_json(),
        "data_config": config_to_dict(data_config),
        "train_data": training["train_data"],
        "test_data": training["test_data"],
        "provenance": provenance({Path(p.checkpoint).name: p.checkpoint for p in result.points}),
    }
    text = json.dumps(strict_json(document), indent=2, allow_nan=False)
    write_bytes_atomic(result.output, (text + "\n").encode())


__all__ = ["run_sweep", "SweepResult", "SweepPoint", "run_name"]
