"""snptool checkpoints: safetensors weights + one JSON metadata document (key `snptool`).

Tensors whose key contains a "/" are extras that belong to snptool, not to the model
(`snptool/momentum/<param>` for resuming training; later masks). Model weights are keyed by
their state_dict names, which never contain "/".
"""

from __future__ import annotations

import functools
import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, JsonValue, ValidationInfo, field_validator, model_validator
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from snptool.config import InputSpec
from snptool.core.architectures import (
    DUMMY_BATCH,
    build_model_from_record,
    is_file_spec,
    run_dummy_input,
)
from snptool.core.files import atomic_path, read_header, require_file, sha256_file
from snptool.core.schema import (
    MAX_WIDTH,
    Count,
    DataRecord,
    Index,
    InputRecord,
    LenientRecord,
    Name,
    Record,
    Sha256,
    check_class_names,
    validate_record,
)
from snptool.errors import CheckpointMismatchError, InputFileError, SnpError, first_line

FORMAT_VERSION = 1
METADATA_KEY = "snptool"
EXTRA_SEPARATOR = "/"


# --- the metadata document, as a typed record (docs/file-formats.md#checkpoint) -------------


class SourceRecord(Record):
    path: Name
    sha256: Sha256


class HeadRecord(Record):
    """A probe head replacing the classifier (`prune --classifier probe`)."""

    tap: Name
    in_features: Count
    num_classes: Count


class ChannelMapRecord(Record):
    in_width: Count
    out_width: Count
    kept_in: list[Index]
    kept_out: list[Index]

    @field_validator("kept_in", "kept_out")
    @classmethod
    def _kept_inside(cls, kept: list[int], info: ValidationInfo) -> list[int]:
        width = info.data.get("in_width" if info.field_name == "kept_in" else "out_width", 0)
        if len(set(kept)) != len(kept) or any(c >= width for c in kept):
            raise ValueError(f"must be distinct channels below {width}")
        return kept


class ResizedRecord(Record):
    modules: dict[str, dict[str, JsonValue]] = {}
    tensors: dict[str, list[Annotated[int, Field(ge=0, le=MAX_WIDTH)]]] = {}


class ArchRecord(LenientRecord):
    """How to rebuild the model (core/architectures.py), and what pruning changed in it."""

    spec: Name
    kwargs: dict[str, JsonValue] = {}
    source: SourceRecord | None = None
    head: HeadRecord | None = None
    shapes: dict[str, dict[str, Count]] | None = None
    channel_maps: dict[str, ChannelMapRecord] | None = None
    resized: ResizedRecord | None = None

    @model_validator(mode="after")
    def _file_factories_have_a_hash(self) -> ArchRecord:
        if is_file_spec(self.spec) and self.source is None:
            raise ValueError(f"file factory {self.spec} has no source record with its sha256")
        return self


class EpochRow(LenientRecord):
    """One epoch of a training history; a diverged epoch's NaN loss is kept as it was."""

    epoch: Count
    learning_rate: float | None = None
    loss: float | None = None
    train_accuracy: float | None = None
    test_loss: float | None = None
    test_accuracy: float | None = None
    seconds: float | None = None
    images_per_second: float | None = None


class TrainingRecord(LenientRecord):
    config: dict[str, JsonValue] | None = None
    history: list[EpochRow] = []
    saved: Literal["last", "best"] | None = None
    epochs_done: Index | None = None
    best_epoch: Index | None = None
    best_accuracy: float | None = None
    final_accuracy: float | None = None
    train_data: DataRecord | None = None
    test_data: DataRecord | None = None


class ConnectionRecord(Record):
    """A weight layer whose inputs are an analysed layer's units (pruning/connections.py)."""

    module: Name
    source: Name
    target: Name | None
    inputs_per_unit: Count


class HeadRemovalRecord(Record):
    layer: Name
    kind: Literal["head", "node"]
    module: Name
    kept: list[Index]


class GroupsRecord(Record):
    """afcc-grouped's label groups: every listed layer's units, each given a group."""

    count: Annotated[int, Field(ge=2, le=MAX_WIDTH)]
    units: dict[str, list[Index]]

    @field_validator("units")
    @classmethod
    def _groups_exist(cls, units: dict[str, list[int]], info: ValidationInfo):
        count = info.data.get("count", 0)
        for tap, groups in units.items():
            if any(g >= count for g in groups):
                raise ValueError(f"{tap} names a group beyond its {count} groups")
        return units


class PruningRecord(LenientRecord):
    """What `snptool prune` did; the parts later steps rebuild from are typed."""

    connections: list[ConnectionRecord] | None = None
    heads: list[HeadRemovalRecord] | None = None
    groups: GroupsRecord | None = None


class CheckpointRecord(LenientRecord):
    """The `snptool` metadata document of a checkpoint."""

    format_version: Annotated[int, Field(ge=1, le=FORMAT_VERSION)]
    arch: ArchRecord
    num_classes: Count
    class_names: list[Name]
    input: InputRecord
    data: str | None = None
    training: TrainingRecord | None = None
    provenance: dict[str, JsonValue] | None = None
    pruning: PruningRecord | None = None

    @field_validator("class_names")
    @classmethod
    def _one_name_per_class(cls, names: list[str], info: ValidationInfo) -> list[str]:
        return check_class_names(names, info.data.get("num_classes"))


@dataclass
class Checkpoint:
    """A model rebuilt from a checkpoint file, with the file's metadata and extra tensors."""

    model: nn.Module
    metadata: dict[str, Any]
    path: Path | None = None
    sha256: str | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    @functools.cached_property
    def record(self) -> CheckpointRecord:
        """The metadata as a typed record (validated when the file was read)."""
        return CheckpointRecord.model_validate(self.metadata)

    @property
    def input_spec(self) -> InputSpec:
        return self.record.input.to_spec()

    @property
    def class_names(self) -> list[str]:
        return list(self.metadata["class_names"])

    @property
    def num_classes(self) -> int:
        return int(self.metadata["num_classes"])


def make_metadata(
    *,
    arch: dict[str, Any],
    class_names: list[str],
    input_spec: InputSpec,
    data: str | None,
    provenance: dict[str, Any],
    training: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The metadata document of a checkpoint (see docs/file-formats.md)."""
    return {
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "input": {
            "channels": input_spec.channels,
            "height": input_spec.height,
            "width": input_spec.width,
            "mean": list(input_spec.mean),
            "std": list(input_spec.std),
            "resize": input_spec.resize,
        },
        "data": data,
        "training": training,
        "provenance": provenance,
        **extra,
    }


def write_checkpoint(
    path: str | Path,
    model: nn.Module,
    metadata: dict[str, Any],
    extras: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write weights, extras and metadata atomically to a safetensors file."""
    tensors = {
        name: value.detach().to("cpu").contiguous().clone()
        for name, value in model.state_dict().items()
    }
    for name, value in (extras or {}).items():
        assert EXTRA_SEPARATOR in name, f"extra tensor {name} needs a namespace"
        tensors[name] = value.detach().to("cpu").contiguous().clone()
    header = {METADATA_KEY: json.dumps(metadata, sort_keys=True), "format": "pt"}
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata=header)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The snptool metadata of a checkpoint, without loading its tensors."""
    path = require_file(path, "checkpoint")
    header = read_header(path)
    if METADATA_KEY not in header:
        raise InputFileError(
            f"{path} is a safetensors file but not an snptool checkpoint; convert it with "
            f"`snptool import {path} --arch SPEC -o OUT.safetensors`."
        )
    try:
        metadata = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError:
        raise InputFileError(
            f"{path} has corrupt snptool metadata; re-create the checkpoint."
        ) from None
    if not isinstance(metadata, dict):
        raise InputFileError(f"{path} has corrupt snptool metadata; re-create the checkpoint.")
    if metadata.get("kind") == "probes":
        raise InputFileError(
            f"{path} is a probe file, not a checkpoint; give the checkpoint it was made from."
        )
    version = metadata.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise InputFileError(
            f"{path} has checkpoint format {version!r}, but this snptool reads up to "
            f"{FORMAT_VERSION}; upgrade snptool."
        )
    validate_record(
        CheckpointRecord, metadata, where=f"checkpoint {path}", fix="re-create the checkpoint"
    )
    return metadata


def read_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the model of a checkpoint and load its weights strictly."""
    path = require_file(path, "checkpoint")
    metadata = read_metadata(path)
    tensors = read_tensors(path)
    weights = {k: v for k, v in tensors.items() if EXTRA_SEPARATOR not in k}
    extras = {k: v for k, v in tensors.items() if EXTRA_SEPARATOR in k}
    rebuild = functools.partial(
        build_model_from_record,
        metadata["arch"],
        search_dirs=(path.resolve().parent,),
        where=f"checkpoint {path}",
    )
    check_shapes_before_building(rebuild, weights, path, metadata["arch"]["spec"])
    model = rebuild()
    load_weights(model, weights, source=str(path), arch=metadata["arch"]["spec"])
    model.to(device).eval()
    checkpoint = Checkpoint(model, metadata, path, sha256_file(path), extras)
    check_input_fits(checkpoint)
    return checkpoint


def check_shapes_before_building(
    rebuild: Callable[..., nn.Module], weights: dict[str, torch.Tensor], path: Path, arch: str
) -> None:
    """Build the model on the meta device (no memory) and compare its tensors with the file's,
    so a record of absurd widths is refused before its model is allocated. A builder that
    needs real tensors (`.item()` while building) is left to the real build's checks."""
    try:
        model = rebuild(device="meta")
    except SnpError:
        raise
    except Exception:  # any builder error: the real build reports it
        return
    require_match(model, weights, source=str(path), arch=arch)


def check_input_fits(checkpoint: Checkpoint) -> None:
    """The model must take its recorded input and give one logit per class name."""
    spec, where = checkpoint.input_spec, f"checkpoint {checkpoint.path}"
    fix = "its input record does not fit its network; re-create the checkpoint"
    logits = run_dummy_input(checkpoint.model, spec.shape, where, fix=fix, fill="normal")
    expected = (DUMMY_BATCH, checkpoint.num_classes)
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != expected:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise CheckpointMismatchError(
            f"{where}: its model gives {got} outputs for a batch of {DUMMY_BATCH}, but it names "
            f"{checkpoint.num_classes} classes; re-create the checkpoint."
        )
    if not bool(torch.isfinite(logits).all()):
        raise InputFileError(
            f"{where}: its model gives NaN or infinite logits for normal inputs; its weights "
            "are out of range (corrupt, or training diverged), so use another checkpoint."
        )


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, with a one-line error for a corrupt file."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise InputFileError(
            f"{path} is not a readable safetensors file ({first_line(error)}); "
            "it may be truncated or of another format."
        ) from None


@dataclass(frozen=True)
class WeightsMatch:
    """How a set of named tensors lines up with a model's state_dict."""

    missing: list[str]
    unexpected: list[str]
    mismatched: list[tuple[str, list[int], list[int]]]

    @property
    def is_exact(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 4) -> str:
        parts = []
        for label, names in (("missing", self.missing), ("unexpected", self.unexpected)):
            if names:
                shown = ", ".join(names[:limit]) + (", …" if len(names) > limit else "")
                parts.append(f"{len(names)} {label} ({shown})")
        if self.mismatched:
            shown = ", ".join(
                f"{name}: file {file_shape} vs model {model_shape}"
                for name, file_shape, model_shape in self.mismatched[:limit]
            )
            parts.append(f"{len(self.mismatched)} wrongly shaped ({shown})")
        return "; ".join(parts)


def match_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> WeightsMatch:
    """Compare named tensors with a model's state_dict (BatchNorm counters may be absent)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in weights if k not in expected]
    mismatched = [
        (k, list(weights[k].shape), list(expected[k].shape))
        for k in weights
        if k in expected and weights[k].shape != expected[k].shape
    ]
    return WeightsMatch(missing, unexpected, mismatched)


def load_weights(
    model: nn.Module, weights: dict[str, torch.Tensor], *, source: str, arch: str
) -> None:
    """Load weights strictly, naming every missing, unexpected or wrongly shaped tensor."""
    require_match(model, weights, source=source, arch=arch)
    check_weight_values(model, weights, source)
    load_state(model, weights)


def require_match(
    model: nn.Module, weights: dict[str, torch.Tensor], *, source: str, arch: str
) -> None:
    """Refuse weights whose names or shapes differ from the model's state_dict."""
    match = match_weights(model, weights)
    if not match.is_exact:
        raise CheckpointMismatchError(
            f"the weights in {source} do not match architecture {arch}: {match.describe()}; "
            "check --arch and --arch-kwargs."
        )


def load_state(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """`model.load_state_dict(weights, strict=False)` with the modules' state-dict versions of
    the model itself: safetensors keeps none, and a module that checks its version (MNASNet)
    refuses a state without one."""
    state = OrderedDict(weights)
    state._metadata = model.state_dict()._metadata  # type: ignore[attr-defined]
    model.load_state_dict(state, strict=False)


def check_weight_values(model: nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """Refuse a float tensor stored as integers (or the reverse) and NaN or infinite weights
    (parameters must be finite; buffers must not be NaN)."""
    expected = model.state_dict()
    parameters = {name for name, _ in model.named_parameters()}
    for name, value in weights.items():
        if name not in expected:
            continue
        if value.is_floating_point() != expected[name].is_floating_point():
            raise CheckpointMismatchError(
                f"tensor {name} in {source} is {str(value.dtype).removeprefix('torch.')} but the "
                f"model's is {str(expected[name].dtype).removeprefix('torch.')}; "
                "re-create the weights file."
            )
        if not value.is_floating_point():
            continue
        bad = ~torch.isfinite(value) if name in parameters else torch.isnan(value)
        if bool(bad.any()):
            raise InputFileError(
                f"tensor {name} in {source} holds {int(bad.sum())} NaN or infinite values; "
                "the weights are corrupt or training diverged, so use an earlier checkpoint."
            )
        if name.endswith("running_var") and not bool((torch.isfinite(value) & (value >= 0)).all()):
            raise InputFileError(
                f"tensor {name} in {source} holds negative or infinite variances; a BatchNorm "
                "variance is never either, so the weights are corrupt: use another checkpoint."
            )


MASK_PREFIX = "snptool/mask/"  # pruning masks ride in a checkpoint's extras under this prefix


def masks_of(checkpoint: Checkpoint) -> dict[str, torch.Tensor]:
    """The pruning masks a checkpoint carries, by parameter name (boolean)."""
    return {
        k[len(MASK_PREFIX) :]: v.bool()
        for k, v in checkpoint.extras.items()
        if k.startswith(MASK_PREFIX)
    }
