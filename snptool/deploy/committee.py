"""`snptool committee`: a soft committee of classifiers, the mean of their softmax outputs.

METHODS.md §7 (arXiv 2501.12900): independently trained networks of about equal accuracy,
averaged, beat each member. Every member sees the same raw images, each through its own input
spec, in one pass over the data; the committee exports to one ONNX graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from snptool.config import CommitteeConfig, DataConfig, InputSpec, config_to_dict
from snptool.core import console
from snptool.core.checkpoint import Checkpoint, masks_of, read_checkpoint
from snptool.core.devices import resolve_device
from snptool.core.files import check_output_path, provenance
from snptool.data.checkpoint_data import load_checkpoint_data
from snptool.data.datasets import DataSplit, FileImages, prepare_batch
from snptool.deploy.checked_export import (
    FORMAT_VERSION,
    add_metadata,
    describe_input,
    export_and_check,
    model_for_export,
    parity_inputs,
    write_onnx,
)
from snptool.errors import CheckpointMismatchError, DataError, UsageError

OUTPUT_NAME = "probabilities"


class Renormalise(nn.Module):
    """x·scale + shift per channel: one input normalisation turned into another, exactly."""

    def __init__(self, source: InputSpec, target: InputSpec) -> None:
        super().__init__()
        # (p - m_s) / s_s → (p - m_t) / s_t  is  x · s_s/s_t + (m_s - m_t)/s_t
        source_mean, source_std, target_mean, target_std = (
            torch.tensor(v, dtype=torch.float64)  # rounded once, to float32, at the end
            for v in (source.mean, source.std, target.mean, target.std)
        )
        scale = source_std / target_std
        shift = (source_mean - target_mean) / target_std
        self.register_buffer("scale", scale.float().view(1, -1, 1, 1))
        self.register_buffer("shift", shift.float().view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class SoftCommittee(nn.Module):
    """Mean of the members' softmax; input in the first member's normalisation (B, C, H, W)."""

    def __init__(self, members: list[nn.Module], specs: list[InputSpec]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.inputs = nn.ModuleList(
            nn.Identity() if same_normalisation(specs[0], spec) else Renormalise(specs[0], spec)
            for spec in specs
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probabilities = [
            F.softmax(member(to_input(x)), dim=1)
            for member, to_input in zip(self.members, self.inputs, strict=True)
        ]
        return torch.stack(probabilities).mean(0)  # (B, L)


def same_normalisation(a: InputSpec, b: InputSpec) -> bool:
    return a.mean == b.mean and a.std == b.std


@dataclass(frozen=True)
class MemberResult:
    path: str
    arch: str
    sha256: str
    accuracy: float
    loss: float
    per_class: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass(frozen=True)
class CommitteeExport:
    """The ONNX committee: parity with torch on test images, and its size (MACs per sample;
    `dense_*` count the members before compaction, the same graph when none is pruned)."""

    output: str
    opset: int
    dynamo: bool
    samples: int
    max_abs_diff: float
    argmax_agreement: float
    parity_tolerance: float
    params: int
    macs: int
    dense_params: int
    dense_macs: int
    renormalised: list[str]  # members whose mean/std is converted inside the graph
    compacted: list[str]  # pruned members exported in their compacted form

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass(frozen=True)
class CommitteeResult:
    """`gain` = committee accuracy − best member's; `agreement` = share of samples on which
    every member predicts the same label."""

    data: str
    split: str
    samples: int
    committee_accuracy: float
    committee_loss: float
    per_class: dict[str, float]
    members: list[MemberResult]
    agreement: float
    warnings: list[str] = field(default_factory=list)
    export: CommitteeExport | None = None

    @property
    def best_member(self) -> MemberResult:
        return max(self.members, key=lambda m: m.accuracy)

    @property
    def gain(self) -> float:
        return self.committee_accuracy - self.best_member.accuracy

    def to_json(self) -> dict[str, Any]:
        accuracies = [m.accuracy for m in self.members]
        return {
            "committee_accuracy": self.committee_accuracy,
            "committee_loss": self.committee_loss,
            "members": [m.to_json() for m in self.members],
            "best_member": self.best_member.path,
            "best_member_accuracy": self.best_member.accuracy,
            "mean_member_accuracy": sum(accuracies) / len(accuracies),
            "gain": self.gain,
            "agreement": self.agreement,
            "per_class": self.per_class,
            "samples": self.samples,
            "data": self.data,
            "split": self.split,
            "warnings": self.warnings,
            "output": self.export.output if self.export else None,
            "export": self.export.to_json() if self.export else None,
        }


def read_members(paths: list[str | Path]) -> list[Checkpoint]:
    """Read two or more checkpoints (on the CPU) that agree on their classes."""
    if len(paths) < 2:
        raise UsageError(f"a committee needs at least two checkpoints; got {len(paths)}.")
    members = [read_checkpoint(path, "cpu") for path in paths]
    for member in members[1:]:
        check_same_classes(members[0], member)
    return members


def check_same_classes(first: Checkpoint, other: Checkpoint) -> None:
    """The same class names in the same order, else an error naming the first difference."""
    a, b = first.class_names, other.class_names
    if a == b:
        return
    if len(a) != len(b):
        difference = f"{len(a)} classes vs {len(b)}"
    else:
        label = next(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)
        difference = f"label {label} is {a[label]!r} vs {b[label]!r}"
    raise CheckpointMismatchError(
        f"{first.path} and {other.path} disagree on the classes ({difference}); committee "
        "members need the same classes in the same order."
    )


def _other_input(members: list[Checkpoint]) -> Checkpoint | None:
    """The first member whose input size, channels or resize differ from the first's."""
    first = members[0].input_spec
    return next(
        (
            m
            for m in members[1:]
            if (m.input_spec.shape, m.input_spec.resize) != (first.shape, first.resize)
        ),
        None,
    )


def check_exportable(members: list[Checkpoint]) -> None:
    """The ONNX committee takes the first member's input: sizes and channels must agree."""
    member = _other_input(members)
    if member is not None:
        raise UsageError(
            f"{member.path} takes {_shape(member.input_spec)} inputs but {members[0].path} takes "
            f"{_shape(members[0].input_spec)}; an ONNX committee needs members of one input size "
            "and channel count (leave out -o to score them anyway)."
        )


def check_shared_loading(members: list[Checkpoint], data: DataSplit) -> None:
    """Image files are decoded and resized once, to the first member's input: all must agree."""
    if not isinstance(data.images, FileImages):
        return  # in-memory images stay raw; each member resizes them itself
    member = _other_input(members)
    if member is not None:
        raise DataError(
            f"{data.spec} holds image files, read once at the first member's input "
            f"{_shape(members[0].input_spec)}, but {member.path} takes "
            f"{_shape(member.input_spec)}; use members of one input size or an npz data set."
        )


def _shape(spec: InputSpec) -> str:
    resize = f", resize {spec.resize}" if spec.resize else ""
    return f"{spec.channels}×{spec.height}×{spec.width}{resize}"


def split_warnings(members: list[Checkpoint], data: DataSplit) -> list[str]:
    """Members tested on another split than the committee's may have trained on its images."""
    if data.split != "test":
        return []
    ours = data.record()
    key = "sha256" if "sha256" in ours else "spec"  # a file's path may be spelt differently
    warnings = []
    for member in members:
        theirs = ((member.metadata.get("training") or {}).get("test_data")) or {}
        if not theirs:
            continue  # imported: no record of its split
        same_data = theirs.get(key) == ours[key]
        same_split = all(theirs.get(k) == ours[k] for k in ("test_fraction", "split_seed"))
        if not (same_data and same_split):
            warnings.append(
                f"{member.path} was tested on {theirs.get('spec')} (test fraction "
                f"{theirs.get('test_fraction')}, split seed {theirs.get('split_seed')}), not on "
                f"the committee's {ours['spec']} (test fraction {ours['test_fraction']}, split "
                f"seed {ours['split_seed']}); its training images may be in this split."
            )
    return warnings


@dataclass(frozen=True)
class CommitteeEvaluation:
    """Counts of one pass: row m < M is member m, row M the committee."""

    correct: torch.Tensor  # (M + 1, L) correct predictions per true label
    loss_sum: torch.Tensor  # (M + 1,) summed cross-entropy (committee: −log mean probability)
    total: torch.Tensor  # (L,) samples per true label
    agreeing: int  # samples on which all members predict the same label


@torch.no_grad()
def evaluate_committee(
    models: list[nn.Module],
    specs: list[InputSpec],
    data: DataSplit,
    *,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
) -> CommitteeEvaluation:
    """Every member and their mean softmax on the same raw images, in one pass over `data`."""
    rows, classes = len(models) + 1, data.num_classes
    correct = torch.zeros(rows, classes, dtype=torch.long)
    loss_sum = torch.zeros(rows, dtype=torch.float64)
    total = torch.zeros(classes, dtype=torch.long)
    agreeing = 0
    with console.progress("committee", data.num_batches(batch_size)) as task:
        for images, labels in data.batches(specs[0], batch_size):
            images = images.to(device)
            logits = [
                m(prepare_batch(images, s)).float().cpu()
                for m, s in zip(models, specs, strict=True)
            ]
            probabilities = torch.stack([F.softmax(x, dim=1) for x in logits])  # (M, B, L)
            committee = probabilities.mean(0)  # (B, L)
            predicted = torch.cat([probabilities, committee[None]]).argmax(2)  # (M + 1, B)
            for row, hits in enumerate((predicted == labels).long()):
                correct[row] += torch.bincount(labels, weights=hits, minlength=classes).long()
            for row, x in enumerate(logits):
                loss_sum[row] += F.cross_entropy(x, labels, reduction="sum").item()
            true = committee.gather(1, labels[:, None]).clamp_min(torch.finfo(torch.float32).tiny)
            loss_sum[-1] -= true.log().sum().item()
            agreeing += int((predicted[:-1] == predicted[0]).all(0).sum())
            total += torch.bincount(labels, minlength=classes)
            task.advance()
    return CommitteeEvaluation(correct, loss_sum, total, agreeing)


def _per_class(correct: torch.Tensor, total: torch.Tensor, names: list[str]) -> dict[str, float]:
    return {
        name: float(c) / float(t) if t else float("nan")
        for name, c, t in zip(names, correct, total, strict=True)
    }


def run_committee(
    checkpoint_paths: list[str | Path],
    data_spec: str | None = None,
    config: CommitteeConfig | None = None,
    *,
    output: str | Path | None = None,
    data_config: DataConfig | None = None,
) -> CommitteeResult:
    """Score the soft committee of `checkpoint_paths` and each member on one split.

    The data spec and its train/test split settings default to the first member's. With
    `output`, the committee is also written there as one ONNX graph (`export_committee`).
    """
    config = config or CommitteeConfig()
    members = read_members(checkpoint_paths)
    if output is not None:
        check_output_path(output, *checkpoint_paths)
        check_exportable(members)
    data = load_checkpoint_data(members[0], data_spec, config.split, data_config)
    check_shared_loading(members, data)
    device = resolve_device(config.device)
    models = [member.model.to(device) for member in members]
    specs = [member.input_spec for member in members]
    counts = evaluate_committee(models, specs, data, batch_size=config.batch_size, device=device)
    for model in models:
        model.cpu()
    samples, names = int(counts.total.sum()), members[0].class_names
    member_results = [
        MemberResult(
            path=str(member.path),
            arch=member.metadata["arch"]["spec"],
            sha256=str(member.sha256),
            accuracy=float(counts.correct[row].sum()) / samples,
            loss=float(counts.loss_sum[row]) / samples,
            per_class=_per_class(counts.correct[row], counts.total, names),
        )
        for row, member in enumerate(members)
    ]
    exported = None
    if output is not None:
        exported = export_committee(members, output, config, data_spec, data_config)
    return CommitteeResult(
        data=data.spec,
        split=config.split,
        samples=samples,
        committee_accuracy=float(counts.correct[-1].sum()) / samples,
        committee_loss=float(counts.loss_sum[-1]) / samples,
        per_class=_per_class(counts.correct[-1], counts.total, names),
        members=member_results,
        agreement=counts.agreeing / samples,
        warnings=split_warnings(members, data),
        export=exported,
    )


def export_committee(
    members: list[Checkpoint],
    output: str | Path,
    config: CommitteeConfig,
    data_spec: str | None = None,
    data_config: DataConfig | None = None,
) -> CommitteeExport:
    """Write the committee to `output` as one ONNX graph, input `input` in the first member's
    normalisation, output `probabilities` (B, L); pruned members go in compacted.

    Parity: onnxruntime against the torch committee of the members' own (masked) models on the
    first `parity_samples` test images; a failed export or parity check writes nothing.
    """
    check_exportable(members)
    export_config = config.export_config
    specs = [member.input_spec for member in members]
    source = "the committee of " + ", ".join(str(m.path) for m in members)
    data, inputs = parity_inputs(members[0], data_spec, export_config, data_config)
    reference = SoftCommittee([m.model for m in members], specs).eval()
    compacted = [m for m in members if masks_of(m)]
    exported = SoftCommittee([model_for_export(m) for m in members], specs).eval()
    # the dense size: the masked committee before compaction
    dense = reference if compacted else exported
    checked = export_and_check(
        exported, reference, dense, inputs, export_config, source=source, output_name=OUTPUT_NAME
    )
    result = CommitteeExport(
        output=str(output),
        opset=export_config.opset,
        parity_tolerance=export_config.parity_tolerance,
        **checked.summary(),
        renormalised=[
            str(m.path)
            for m, s in zip(members, specs, strict=True)
            if not same_normalisation(specs[0], s)
        ],
        compacted=[str(m.path) for m in compacted],
    )
    add_metadata(checked.graph, describe_committee(members, config, data, result))
    write_onnx(checked.graph, output)
    return result


def describe_committee(
    members: list[Checkpoint], config: CommitteeConfig, data: DataSplit, result: CommitteeExport
) -> dict[str, Any]:
    """The `snptool` metadata document of an ONNX committee."""
    first = members[0]
    return {
        "format_version": FORMAT_VERSION,
        "kind": "committee",
        "num_classes": first.num_classes,
        "class_names": first.class_names,
        "input": describe_input(first.metadata["input"]),
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["batch", first.num_classes],
            "meaning": "mean of the members' softmax outputs",
        },
        "members": [
            {
                "path": str(m.path),
                "sha256": m.sha256,
                "arch": m.metadata["arch"],
                "input": m.metadata["input"],
                "renormalised": str(m.path) in result.renormalised,
                "compacted": str(m.path) in result.compacted,
            }
            for m in members
        ],
        "config": config_to_dict(config),
        "parity": {
            "data": data.record(),
            "samples": result.samples,
            "max_abs_diff": result.max_abs_diff,
            "argmax_agreement": result.argmax_agreement,
        },
        "params": result.params,
        "macs": result.macs,
        "dense_params": result.dense_params,
        "dense_macs": result.dense_macs,
        "provenance": provenance({f"member{i}": m.path for i, m in enumerate(members, 1)}),
    }


__all__ = ["run_committee", "CommitteeResult", "SoftCommittee", "evaluate_committee"]
