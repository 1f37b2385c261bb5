"""The probe file `snptool probe` writes, opened lazily by the steps that read it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, field_validator
from safetensors import safe_open

from snptool.core.files import read_header, require_file
from snptool.core.schema import (
    Count,
    FileReference,
    LenientRecord,
    Name,
    Record,
    Share,
    check_class_names,
    validate_record,
)
from snptool.errors import InputFileError

FORMAT_VERSION = 1


class ProbeTapRecord(Record):
    name: Name
    layer: Name
    unit: Name
    units: Count
    positions: Count
    test_accuracy: Share
    train_accuracy: Share | None = None
    tap_input: bool = False


class SplitRecord(Record):
    spec: Name


class ProbeDataRecord(Record):
    train: SplitRecord
    test: SplitRecord | None = None


class ProbeFileRecord(LenientRecord):
    """The `snptool` metadata document of a probe file."""

    kind: Literal["probes"]
    format_version: Annotated[int, Field(ge=1, le=FORMAT_VERSION)] = 1
    checkpoint: FileReference
    class_names: list[Name]
    taps: Annotated[list[ProbeTapRecord], Field(min_length=1)]
    data: ProbeDataRecord

    @field_validator("class_names")
    @classmethod
    def _distinct(cls, names: list[str]) -> list[str]:
        return check_class_names(names, None)

    @field_validator("taps")
    @classmethod
    def _distinct_taps(cls, taps: list[ProbeTapRecord]) -> list[ProbeTapRecord]:
        names = [tap.name for tap in taps]
        if len(set(names)) != len(names):
            raise ValueError("names a tap twice")
        return taps


class ProbeFile:
    """A probe file opened lazily: metadata, weights and means by tap name."""

    def __init__(self, path: str | Path) -> None:
        self.path = require_file(path, "probe file")
        header = read_header(self.path)
        with safe_open(str(self.path), framework="pt") as handle:
            self.keys = set(handle.keys())  # noqa: SIM118
            slices = {key: handle.get_slice(key) for key in self.keys}
            layout = {key: (part.get_dtype(), part.get_shape()) for key, part in slices.items()}
        try:
            self.metadata = json.loads(header["snptool"])
        except (KeyError, json.JSONDecodeError):
            raise InputFileError(
                f"{self.path} is not an snptool probe file; make one with `snptool probe`."
            ) from None
        if not isinstance(self.metadata, dict) or self.metadata.get("kind") != "probes":
            kind = (
                self.metadata.get("kind", "checkpoint") if isinstance(self.metadata, dict) else ""
            )
            raise InputFileError(
                f"{self.path} is not a probe file but a {kind or 'corrupt file'}; "
                "make one with `snptool probe`."
            )
        validate_record(
            ProbeFileRecord,
            self.metadata,
            where=f"probe file {self.path}",
            fix="probe the checkpoint again",
        )
        problem = probe_file_problem(self.metadata, layout)
        if problem:
            raise InputFileError(
                f"{self.path} is an incomplete probe file ({problem}); probe the checkpoint again."
            )

    @property
    def tap_names(self) -> list[str]:
        return [tap["name"] for tap in self.metadata["taps"]]

    def tap(self, name: str) -> dict[str, Any]:
        return next(tap for tap in self.metadata["taps"] if tap["name"] == name)

    def has_means(self, split: str) -> bool:
        return all(f"mean/{split}/{name}" in self.keys for name in self.tap_names)

    def tensor(self, key: str, units: slice | None = None) -> torch.Tensor:
        """A whole tensor, or the unit range `units` of a [C, U, P] tensor (read lazily)."""
        with safe_open(str(self.path), framework="pt") as handle:
            value = handle.get_tensor(key) if units is None else handle.get_slice(key)[:, units, :]
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise InputFileError(
                f"tensor {key} in {self.path} holds NaN or infinite values; "
                "probe the checkpoint again (with a lower --lr if training diverged)."
            )
        return value


def probe_file_problem(metadata: dict[str, Any], layout: dict[str, tuple[str, list[int]]]):
    """What is missing or wrongly shaped in the tensors of a probe file whose metadata is valid
    ({key: (dtype, shape)}), else None."""
    names, taps = metadata["class_names"], metadata["taps"]
    splits = list(dict.fromkeys(k.split("/")[1] for k in layout if k.startswith("mean/")))
    for tap in taps:
        shape = [len(names), tap["units"], tap["positions"]]
        for key in [f"probe/{tap['name']}", *(f"mean/{s}/{tap['name']}" for s in splits)]:
            if key not in layout:
                return f"no tensor {key}"
            dtype, found = layout[key]
            if not dtype.startswith(("F", "BF")) or list(found) != shape:
                return f"tensor {key} is {dtype} {list(found)}, not a float {shape}"
    for split in splits:
        if layout.get(f"count/{split}", (None, None))[1] != [len(names)]:
            return f"no tensor count/{split} of {len(names)} class counts"
    return None
