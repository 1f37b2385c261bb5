"""What `snptool report` reads, recognised by content and validated as typed records: matrix
files, probe files, pruned checkpoints and the `--json` outputs of prune, latency, export,
committee, heads and sweep. A JSON of the right kind with wrong types is one line naming the
field."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from snptool.core.files import read_header, require_file
from snptool.core.matrix_file import open_matrix_file
from snptool.core.schema import (
    LenientRecord,
    Name,
    validate_record,
)
from snptool.errors import InputFileError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
KINDS = "matrix files (with clusters), probe files, pruned checkpoints, or the --json output of "
KINDS += "prune, latency, export, committee, heads or sweep"

Number = float | None  # JSON's null where a value was not measured (NaN written as null)
NonNegative = Annotated[float, Field(ge=0)]


class LatencyRow(LenientRecord):
    path: Name
    batch: Annotated[int, Field(ge=1)]
    p50_ms: NonNegative
    p90_ms: NonNegative
    p99_ms: NonNegative
    ratio: NonNegative


class HeadRow(LenientRecord):
    head: Name
    labels: list[str]


class HeadsLayer(LenientRecord):
    layer: Name
    label_heads: dict[str, Any]
    heads: list[HeadRow]
    labels_per_head: float
    heads_per_label: float


class PrunedLayer(LenientRecord):
    module: Name
    dilution: float


class PruneOutput(LenientRecord):
    method: Name
    output: str
    layers: list[PrunedLayer]
    dense_accuracy: Number
    accuracy_before: Number
    accuracy_after: Number


class PruningRecord(LenientRecord):
    """A pruned checkpoint's `pruning` record, as the report reads it."""

    method: Name
    dilution: dict[str, float]
    connections: list[dict[str, Any]] = []
    dense_accuracy: Number
    accuracy_before: Number
    accuracy_after: Number


class PrunedCheckpoint(LenientRecord):
    pruning: PruningRecord


class ProbeTap(LenientRecord):
    name: Name
    test_accuracy: Number = None
    train_accuracy: Number = None


class ProbeMetadata(LenientRecord):
    taps: list[ProbeTap]


class ExportOutput(LenientRecord):
    output: str | None = None
    params: Annotated[int, Field(ge=0)]
    macs: Annotated[int, Field(ge=0)]
    max_abs_diff: float
    argmax_agreement: Number = None


class CommitteeMember(LenientRecord):
    path: Name
    accuracy: float


class CommitteeOutput(LenientRecord):
    committee_accuracy: float
    members: Annotated[list[CommitteeMember], Field(min_length=1)]
    data: str
    split: str


class Fit(LenientRecord):
    rho: float
    prefactor: float
    rho_ci: Annotated[list[float], Field(min_length=2, max_length=2)] | None = None
    confidence: float | None = None
    method: str | None = None


class SweepPoint(LenientRecord):
    d1: float
    error: float


class SweepOutput(LenientRecord):
    fit: Fit
    points: list[SweepPoint]


# kind → the record its content must be (a list kind: one record per row)
SCHEMAS: dict[str, Any] = {
    "latency": list[LatencyRow],
    "heads": list[HeadsLayer],
    "prune": PruneOutput,
    "pruned": PrunedCheckpoint,
    "probes": ProbeMetadata,
    "export": ExportOutput,
    "committee": CommitteeOutput,
    "sweep": SweepOutput,
}


@dataclass(frozen=True)
class ReportInput:
    path: Path
    kind: str
    content: Any  # parsed JSON or safetensors metadata (validated); None for matrix files


def read_input(path: str | Path) -> ReportInput:
    """Recognise one input by its content; one clear line for anything else."""
    path = require_file(path, "report input")
    with open(path, "rb") as handle:
        start = handle.read(9)
    if start[:8] == HDF5_SIGNATURE:
        with open_matrix_file(path):
            pass
        return ReportInput(path, "matrices", None)
    if path.suffix == ".safetensors" or _looks_like_safetensors(start, path.stat().st_size):
        return _read_safetensors(path)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InputFileError(
            f"{path} is neither HDF5, safetensors nor JSON; give {KINDS}."
        ) from None
    kind = json_kind(content)
    if kind is None:
        raise InputFileError(f"{path} is JSON of a kind the report does not draw; give {KINDS}.")
    return checked(path, kind, content)


def checked(path: Path, kind: str, content: Any) -> ReportInput:
    """The input, once its content is a valid record of its kind."""
    where, fix = f"{kind} output {path}", f"give what `snptool {kind} --json` printed"
    if kind in ("pruned", "probes"):
        where, fix = f"{path}", "make it again with snptool"
    schema = SCHEMAS[kind]
    if isinstance(schema, type):
        validate_record(schema, content, where=where, fix=fix)
    else:
        (row,) = schema.__args__
        for index, item in enumerate(content):
            validate_record(row, item, where=f"{where}, row {index}", fix=fix)
    return ReportInput(path, kind, content)


def _looks_like_safetensors(start: bytes, size: int) -> bool:
    """safetensors: an 8-byte little-endian header length, then the JSON header."""
    return len(start) == 9 and start[8:] == b"{" and int.from_bytes(start[:8], "little") < size


def _read_safetensors(path: Path) -> ReportInput:
    try:
        metadata = json.loads(read_header(path)["snptool"])
    except (KeyError, json.JSONDecodeError):
        raise InputFileError(f"{path} holds no snptool metadata; give {KINDS}.") from None
    if not isinstance(metadata, dict):
        raise InputFileError(f"{path} holds corrupt snptool metadata; give {KINDS}.")
    if metadata.get("kind") == "probes":
        return checked(path, "probes", metadata)
    if metadata.get("pruning"):
        return checked(path, "pruned", metadata)
    raise InputFileError(
        f"{path} is a checkpoint without pruning; the report draws pruned checkpoints "
        "(snptool prune) and the files the analysis writes."
    )


def json_kind(content: Any) -> str | None:
    """Which command's --json output `content` is, or None."""
    if isinstance(content, dict):
        if "committee_accuracy" in content:
            return "committee"
        if {"method", "layers", "accuracy_after"} <= set(content):
            return "prune"
        if {"max_abs_diff", "macs", "params"} <= set(content):
            return "export"
        if {"points", "fit"} <= set(content):
            return "sweep"
    elif isinstance(content, list) and content and all(isinstance(r, dict) for r in content):
        if all("p50_ms" in row for row in content):
            return "latency"
        if all("label_heads" in row for row in content):
            return "heads"
    return None
