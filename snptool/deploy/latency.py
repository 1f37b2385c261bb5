"""Latency of ONNX models side by side on onnxruntime: interleaved timed runs, percentiles, ratios.

Models run interleaved (A B, B A, A B, …) so that drift of the machine (clock, heat, other jobs)
hits every model alike; each model's ratio is its p50 over the first model's at the same batch.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from snptool.config import LatencyConfig, config_to_dict
from snptool.core import console
from snptool.core.files import require_file, scratch_directory
from snptool.deploy.onnx_file import ORT_ERRORS, run_session
from snptool.errors import InputFileError, UsageError

MIN_BUDGET_RUNS = 3  # a time budget still times every model at least this often

_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
}


@dataclass(frozen=True)
class LatencyRow:
    """One model at one batch size; times in milliseconds per session.run."""

    path: str
    batch: int
    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    throughput: float  # images per second: batch / mean seconds
    ratio: float  # p50 / the first model's p50 at the same batch
    bytes: int = 0  # the file's size on disk
    operators: list[dict[str, Any]] = field(default_factory=list)  # slowest first (--profile)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "batch": self.batch,
            "runs": self.runs,
            "p50_ms": self.p50_ms,
            "p90_ms": self.p90_ms,
            "p99_ms": self.p99_ms,
            "mean_ms": self.mean_ms,
            "std_ms": self.std_ms,
            "throughput": self.throughput,
            "ratio": self.ratio,
            "bytes": self.bytes,
            **({"operators": self.operators} if self.operators else {}),
        }


@dataclass(frozen=True)
class LatencyResult:
    """Rows in (batch, model) order, the resolved config and the machine they were timed on.

    `round_orders` holds the model indices in the order they ran in the first two timed rounds
    of the first batch size ([[0, 1], [1, 0]] for two models).
    """

    rows: list[LatencyRow]
    config: dict[str, Any]
    environment: dict[str, Any]
    round_orders: list[list[int]] = field(default_factory=list)

    def to_json(self) -> list[dict[str, Any]]:
        return [row.to_json() for row in self.rows]


@dataclass(frozen=True)
class _Model:
    path: str
    session: ort.InferenceSession
    input_name: str
    dtype: type
    shape: tuple[int | str | None, ...]  # as onnxruntime reports it; dim 0 is the batch


def check_provider(provider: str) -> None:
    """Refuse an execution provider this onnxruntime build does not have."""
    available = ort.get_available_providers()
    if provider not in available:
        raise UsageError(
            f"unknown execution provider {provider!r}; this onnxruntime has {', '.join(available)}."
        )


def session_options(threads: int) -> ort.SessionOptions:
    """Sequential execution on `threads` intra-op threads, all graph optimisations."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return options


def open_model(path: str | Path, config: LatencyConfig) -> _Model:
    """One inference session on `path`; its single input's name, element type and shape."""
    path = require_file(path, "ONNX file")
    try:
        session = ort.InferenceSession(
            str(path), sess_options=session_options(config.threads), providers=[config.provider]
        )
    except ORT_ERRORS as error:
        reason = str(error).splitlines()[0].split("failed:")[-1].strip().rstrip(".")
        raise InputFileError(
            f"{path} is not a readable ONNX model ({reason}); give a complete .onnx file."
        ) from None
    if session.get_providers()[0] != config.provider:
        raise UsageError(
            f"onnxruntime could not run {path} on {config.provider} (it chose "
            f"{session.get_providers()[0]}); pick another --provider."
        )
    inputs = session.get_inputs()
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise UsageError(f"{path} has {len(inputs)} inputs ({names}); latency needs exactly one.")
    (model_input,) = inputs
    if model_input.type not in _DTYPES:
        raise UsageError(
            f"{path} takes {model_input.type}; latency feeds float inputs ({', '.join(_DTYPES)})."
        )
    return _Model(
        str(path), session, model_input.name, _DTYPES[model_input.type], tuple(model_input.shape)
    )


def input_shape(model: _Model, batch: int) -> tuple[int, ...]:
    """The model's input shape at `batch`; the batch dim may be symbolic, no other may."""
    if not model.shape:
        raise UsageError(f"{model.path} takes a scalar input; latency needs a batch dimension.")
    first, *rest = model.shape
    if isinstance(first, int) and first != batch:
        raise UsageError(
            f"{model.path} has a fixed batch size of {first}, not {batch}; use --batch {first} "
            "or export it with a dynamic batch axis."
        )
    if not all(isinstance(dim, int) for dim in rest):
        raise UsageError(
            f"{model.path} has symbolic dimensions besides the batch {list(model.shape)}; "
            "export it with a fixed input size."
        )
    return (batch, *rest)


def time_run(model: _Model, feed: dict[str, np.ndarray]) -> int:
    """Nanoseconds of one session.run."""
    start = time.perf_counter_ns()
    model.session.run(None, feed)
    return time.perf_counter_ns() - start


def round_order(models: int, round_index: int) -> list[int]:
    """A B C in even rounds, C B A in odd ones, so no model always goes first."""
    order = list(range(models))
    return order if round_index % 2 == 0 else order[::-1]


def time_interleaved(
    models: Sequence[_Model],
    feeds: Sequence[dict[str, np.ndarray]],
    config: LatencyConfig,
    *,
    description: str = "latency",
) -> tuple[list[list[int]], list[list[int]]]:
    """Warm-up rounds, then timed rounds of every model once each, in alternating order.

    Returns the nanoseconds of each model's timed runs and the model order of every timed round.
    Runs `config.runs` rounds, or with a time budget rounds until it is spent (at least
    MIN_BUDGET_RUNS).
    """
    for model, feed in zip(models, feeds, strict=True):  # a graph that fails: one line
        run_session(model.session, feed, model.path)
    for round_index in range(config.warmup):
        for index in round_order(len(models), round_index):
            models[index].session.run(None, feeds[index])
    times: list[list[int]] = [[] for _ in models]
    orders: list[list[int]] = []
    budget_ns = None if config.budget_seconds is None else int(config.budget_seconds * 1e9)
    total = config.runs if budget_ns is None else None
    start = time.perf_counter_ns()
    with console.progress(description, total) as task:
        while _more_rounds(len(orders), time.perf_counter_ns() - start, config.runs, budget_ns):
            order = round_order(len(models), len(orders))
            for index in order:
                times[index].append(time_run(models[index], feeds[index]))
            orders.append(order)
            task.advance()
    return times, orders


def _more_rounds(done: int, elapsed_ns: int, runs: int, budget_ns: int | None) -> bool:
    if budget_ns is None:
        return done < runs
    return done < MIN_BUDGET_RUNS or elapsed_ns < budget_ns


def check_memory(models: Sequence[_Model], batch: int) -> None:
    """Refuse a batch whose inputs and activations would not fit in the memory available
    (every session keeps its buffers, so the models' needs add up)."""
    needed = batch * sum(bytes_per_sample(model.path) for model in models)
    available = available_memory()
    if available is not None and needed > 0.8 * available:
        raise UsageError(
            f"--batch {batch} needs about {needed / 2**30:.1f} GiB for the inputs and "
            f"activations of {len(models)} model(s), more than the {available / 2**30:.1f} GiB "
            "this machine has free; use a smaller --batch."
        )


def bytes_per_sample(path: str | Path) -> int:
    """A rough peak of one sample's tensors in a graph: its three largest inferred tensors
    (input, activations, output), 4 bytes an element."""
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(path))).graph
    sizes = []
    for value in (*graph.input, *graph.value_info, *graph.output):
        dims = value.type.tensor_type.shape.dim[1:]
        if all(d.HasField("dim_value") for d in dims):
            sizes.append(4 * int(np.prod([d.dim_value for d in dims], dtype=np.float64)))
    return sum(sorted(sizes)[-3:])


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux's MemAvailable), if known."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def summarize(times_ns: Sequence[int], batch: int) -> dict[str, Any]:
    """Percentiles, mean and (population) standard deviation in ms; throughput in images/s."""
    ms = np.asarray(times_ns, dtype=np.float64) / 1e6
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    mean = float(ms.mean())
    return {
        "runs": len(ms),
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "mean_ms": mean,
        "std_ms": float(ms.std()),
        "throughput": batch / (mean / 1e3),
    }


def environment(config: LatencyConfig, models: Sequence[_Model]) -> dict[str, Any]:
    """What the timings depend on besides the models."""
    return {
        "onnxruntime": ort.__version__,
        "provider": config.provider,
        "session_providers": models[0].session.get_providers(),
        "threads": config.threads,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "platform": platform.platform(),
    }


def run_latency(paths: Sequence[str | Path], config: LatencyConfig | None = None) -> LatencyResult:
    """Time every ONNX model in `paths` side by side at each batch size of `config`.

    Inputs are seeded random values (float32, cast to the model's float type) of each model's
    input shape; only session.run is timed. A time budget applies to each batch size.
    """
    config = config or LatencyConfig()
    if not paths:
        raise UsageError("give at least one ONNX file.")
    check_provider(config.provider)
    models = [open_model(path, config) for path in paths]
    shapes = {b: [input_shape(m, b) for m in models] for b in config.batch_sizes}  # check first
    check_memory(models, max(config.batch_sizes))
    rng = np.random.default_rng(config.seed)
    rows: list[LatencyRow] = []
    first_orders: list[list[int]] = []
    for batch in config.batch_sizes:
        feeds = [
            {m.input_name: rng.standard_normal(shape, dtype=np.float32).astype(m.dtype)}
            for m, shape in zip(models, shapes[batch], strict=True)
        ]
        times, orders = time_interleaved(
            models, feeds, config, description=f"latency, batch {batch}"
        )
        first_orders = first_orders or orders[:2]
        stats = [summarize(t, batch) for t in times]
        reference = stats[0]["p50_ms"]
        operators = [
            profile_operators(m, feed, config) if config.profile else []
            for m, feed in zip(models, feeds, strict=True)
        ]
        rows += [
            LatencyRow(
                m.path,
                batch,
                ratio=s["p50_ms"] / reference,
                bytes=Path(m.path).stat().st_size,
                operators=ops,
                **s,
            )
            for m, s, ops in zip(models, stats, operators, strict=True)
        ]
    return LatencyResult(rows, config_to_dict(config), environment(config, models), first_orders)


def profile_operators(
    model: _Model, feed: dict[str, np.ndarray], config: LatencyConfig
) -> list[dict[str, Any]]:
    """The `config.profile_top` operator types that take the most kernel time per run, from
    onnxruntime's profiler over `config.runs` runs after `config.warmup` untimed ones:
    [{op, ms (per run), share (of the kernel time), nodes}], slowest first."""
    with scratch_directory("snptool-profile-") as directory:
        options = session_options(config.threads)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(directory) / "profile")
        session = ort.InferenceSession(model.path, options, providers=[config.provider])
        with console.progress(
            f"profile {Path(model.path).name}", config.warmup + config.runs
        ) as task:
            for _ in range(config.warmup + config.runs):
                session.run(None, feed)
                task.advance()
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    timed_from = runs[config.warmup] if len(runs) > config.warmup else 0
    kernel_us: dict[str, float] = {}
    nodes: dict[str, set[str]] = {}
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        if event["ts"] < timed_from:
            continue
        op = event.get("args", {}).get("op_name", "?")
        kernel_us[op] = kernel_us.get(op, 0.0) + event["dur"]
        nodes.setdefault(op, set()).add(event["name"].removesuffix("_kernel_time"))
    total = sum(kernel_us.values()) or 1.0
    ranked = sorted(kernel_us.items(), key=lambda item: -item[1])[: config.profile_top]
    return [
        {"op": op, "ms": us / config.runs / 1e3, "share": us / total, "nodes": len(nodes[op])}
        for op, us in ranked
    ]
