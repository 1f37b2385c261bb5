"""snptool checkpoints: safetensors weights + one JSON metadata document (key `snptool`).

Tensors whose key contains a "/" are extras that belong to snptool, not to the model
(`snptool/momentum/<param>` for resuming training; later masks). Model weights are keyed by
their state_dict names, which never contain "/".
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from snptool.config import InputSpec
from snptool.core.architectures import build_model_from_record
from snptool.core.files import atomic_path, read_header, require_file, sha256_file
from snptool.errors import CheckpointMismatchError, InputFileError, first_line

FORMAT_VERSION = 1
METADATA_KEY = "snptool"
EXTRA_SEPARATOR = "/"


@dataclass
class Checkpoint:
    """A model rebuilt from a checkpoint file, with the file's metadata and extra tensors."""

    model: nn.Module
    metadata: dict[str, Any]
    path: Path | None = None
    sha256: str | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def input_spec(self) -> InputSpec:
        spec = dict(self.metadata["input"])
        return InputSpec(**{**spec, "mean": tuple(spec["mean"]), "std": tuple(spec["std"])})

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
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise InputFileError(
            f"{path} has checkpoint format {version!r}, but this snptool reads up to "
            f"{FORMAT_VERSION}; upgrade snptool."
        )
    problem = metadata_problem(metadata)
    if problem:
        raise InputFileError(
            f"{path} has incomplete snptool metadata ({problem}); re-create the checkpoint."
        )
    return metadata


def metadata_problem(metadata: dict[str, Any]) -> str | None:
    """What is missing or inconsistent in a checkpoint's metadata document, else None."""
    arch, names, spec = metadata.get("arch"), metadata.get("class_names"), metadata.get("input")
    if not isinstance(arch, dict) or not isinstance(arch.get("spec"), str):
        return "no architecture record 'arch'"
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return "no list of 'class_names'"
    if metadata.get("num_classes") != len(names):
        return f"num_classes {metadata.get('num_classes')!r} but {len(names)} class names"
    keys = ("channels", "height", "width", "mean", "std")
    if not isinstance(spec, dict) or any(key not in spec for key in keys):
        return "no input record 'input' with channels, height, width, mean and std"
    return None


def read_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the model of a checkpoint and load its weights strictly."""
    path = require_file(path, "checkpoint")
    metadata = read_metadata(path)
    tensors = read_tensors(path)
    weights = {k: v for k, v in tensors.items() if EXTRA_SEPARATOR not in k}
    extras = {k: v for k, v in tensors.items() if EXTRA_SEPARATOR in k}
    model = build_model_from_record(
        metadata["arch"], search_dirs=(path.resolve().parent,), where=f"checkpoint {path}"
    )
    load_weights(model, weights, source=str(path), arch=metadata["arch"]["spec"])
    model.to(device).eval()
    return Checkpoint(model, metadata, path, sha256_file(path), extras)


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
    match = match_weights(model, weights)
    if not match.is_exact:
        raise CheckpointMismatchError(
            f"the weights in {source} do not match architecture {arch}: {match.describe()}; "
            "check --arch and --arch-kwargs."
        )
    check_weight_values(model, weights, source)
    load_state(model, weights)


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


MASK_PREFIX = "snptool/mask/"  # pruning masks ride in a checkpoint's extras under this prefix


def masks_of(checkpoint: Checkpoint) -> dict[str, torch.Tensor]:
    """The pruning masks a checkpoint carries, by parameter name (boolean)."""
    return {
        k[len(MASK_PREFIX) :]: v.bool()
        for k, v in checkpoint.extras.items()
        if k.startswith(MASK_PREFIX)
    }
