"""`snptool layers`: every analysable module output, the unit kinds that read it, the probe taps.

A model that declares no probe taps (torchvision, timm, imported) gets inferred ones: its
stage outputs and penultimate features.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from snptool.config import InputSpec
from snptool.core.checkpoint import read_checkpoint
from snptool.core.taps import resolve_layer, tap_name, trace_tensors, unit_readings


@dataclass(frozen=True)
class LayerInfo:
    """One analysable reading of a module's output."""

    layer: str
    module: str
    shape: tuple[int, ...]
    unit: str
    units: int
    positions: int
    calls: int = 1
    probe_tap: bool = False
    default_unit: bool = True
    not_probeable: str | None = None  # why its units cannot be probed

    @property
    def tap(self) -> str:
        """The exact string to pass as `--layer` to read these units."""
        return tap_name(self.layer, self.unit, default_unit=self.default_unit)

    def to_json(self) -> dict[str, Any]:
        return {
            "tap": self.tap,
            "layer": self.layer,
            "module": self.module,
            "shape": list(self.shape),
            "unit": self.unit,
            "units": self.units,
            "positions": self.positions,
            "calls": self.calls,
            "probe_tap": self.probe_tap,
            "probeable": self.not_probeable is None,
            "not_probeable": self.not_probeable,
        }


@dataclass(frozen=True)
class LayersResult:
    """`inferred_taps`: the model declares no probe taps, so `probe_tap` marks inferred ones."""

    checkpoint: str
    layers: list[LayerInfo] = field(default_factory=list)
    inferred_taps: bool = False

    def to_json(self) -> list[dict[str, Any]]:
        return [layer.to_json() for layer in self.layers]


def discover_layers(model: nn.Module, spec: InputSpec) -> list[LayerInfo]:
    """Every module output (in forward order) with each unit kind that applies to it."""
    probe_taps = set(getattr(model, "probe_taps", []) or [])
    layers = []
    for name, traced in trace_tensors(model, spec).items():
        module = model.get_submodule(name)
        if traced.folded:
            shape, kind = traced.shape[1:], type(module).__name__
            layers.append(
                LayerInfo(name, kind, shape, "-", 0, 0, traced.calls, not_probeable=traced.folded)
            )
            continue
        readings = unit_readings(module, traced.shape, channels_last=traced.channels_last)
        for index, reading in enumerate(readings):
            layers.append(
                LayerInfo(
                    layer=name,
                    module=type(module).__name__,
                    shape=traced.shape[1:],
                    unit=reading.unit,
                    units=reading.units,
                    positions=reading.positions,
                    calls=traced.calls,
                    probe_tap=name in probe_taps,
                    default_unit=index == 0,
                )
            )
    return layers


def run_layers(
    checkpoint_path: str | Path, *, names: list[str] | None = None, probe_taps_only: bool = False
) -> LayersResult:
    """The analysable layers of a checkpoint's model (all, the probe taps, or those named).

    A model without declared probe taps (torchvision, timm, imported) gets inferred ones.
    """
    checkpoint = read_checkpoint(checkpoint_path)
    for name in names or []:
        resolve_layer(checkpoint.model, name)
    layers = discover_layers(checkpoint.model, checkpoint.input_spec)
    inferred = not getattr(checkpoint.model, "probe_taps", None)
    if inferred:
        taps = set(infer_probe_taps(checkpoint.model, layers))
        layers = [replace(layer, probe_tap=layer.layer in taps) for layer in layers]
    if probe_taps_only:
        layers = [layer for layer in layers if layer.probe_tap]
    if names:
        layers = [layer for layer in layers if layer.layer in names]
    return LayersResult(str(checkpoint_path), layers, inferred)


_PASS_THROUGH = (nn.Identity, nn.Flatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


def infer_probe_taps(model: nn.Module, layers: list[LayerInfo]) -> list[str]:
    """Probe taps for a model that declares none: the outputs of its stages, then the
    penultimate features (the last leaf output before the classifier), in forward order.

    Stages are timm's `feature_info` modules where the model has them; otherwise its top-level
    containers (torchvision ResNet's `layer1` … `layer4`), or the children of a lone container
    (`features.0` … of VGG, ConvNeXt, Swin, EfficientNet), and of children that are all leaves
    the last before each pooling. Only outputs that run once and that a unit kind reads count.
    `layers`: `discover_layers(model, spec)`.
    """
    order = list(dict.fromkeys(layer.layer for layer in layers))
    usable = {layer.layer for layer in layers if layer.calls == 1 and not layer.not_probeable}
    leaves = [name for name in order if not list(model.get_submodule(name).children())]
    if not leaves:
        return []
    classifier = leaves[-1]
    stages = [name for name in _stage_names(model, classifier) if name in usable]
    before = leaves[: leaves.index(classifier)]
    penultimate = next(
        (
            name
            for name in reversed(before)
            if name in usable and not isinstance(model.get_submodule(name), _PASS_THROUGH)
        ),
        None,
    )
    if penultimate and not any(_is_within(penultimate, stage) for stage in stages):
        stages.append(penultimate)
    return sorted(dict.fromkeys(stages), key=order.index)


def _stage_names(model: nn.Module, classifier: str) -> list[str]:
    """The modules whose outputs end the stages of `model` (see `infer_probe_taps`)."""
    info = getattr(model, "feature_info", None)
    if isinstance(info, list) and info and all(isinstance(i, dict) for i in info):
        return [i["module"] for i in info if "module" in i]
    top = [name for name, _ in model.named_children() if not _is_within(classifier, name)]
    containers = [name for name in top if list(model.get_submodule(name).children())]
    if len(containers) == 1:
        parent = containers[0]
        stages = [f"{parent}.{name}" for name, _ in model.get_submodule(parent).named_children()]
    else:
        stages = containers or top
    if any(list(model.get_submodule(name).children()) for name in stages):
        return stages
    pools = [
        i for i, name in enumerate(stages) if "Pool" in type(model.get_submodule(name)).__name__
    ]
    return [stages[i - 1] for i in pools if i > 0] + stages[-1:]


def _is_within(name: str, ancestor: str) -> bool:
    return name == ancestor or name.startswith(ancestor + ".")


def analysable_layers(model: nn.Module, spec: InputSpec) -> list[str]:
    """What `--all` taps: the model's declared probe taps, else every leaf module that runs
    once per forward pass and whose output a unit kind reads."""
    declared = list(getattr(model, "probe_taps", []) or [])
    if declared:
        return declared
    leaves = {
        name for name, module in model.named_modules() if name and not list(module.children())
    }
    found = [
        info.layer
        for info in discover_layers(model, spec)
        if info.layer in leaves and info.calls == 1 and not info.not_probeable
    ]
    return list(dict.fromkeys(found))
