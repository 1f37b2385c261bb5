"""The data a checkpoint was trained on: its recorded spec, checked against its classes."""

from __future__ import annotations

from snptool.config import DataConfig
from snptool.core.checkpoint import Checkpoint
from snptool.data.datasets import DataSplit, load_data
from snptool.errors import DataError, UsageError


def check_classes(checkpoint: Checkpoint, data: DataSplit) -> None:
    """The data must have the checkpoint's classes: as many, and (unless
    `data.config.ignore_class_names`) the same names in the same order."""
    check_class_match(checkpoint.class_names, data, f"checkpoint {checkpoint.path}")


def check_class_match(model_names: list[str], data: DataSplit, model: str) -> None:
    """`data`'s classes against those a model (`model` names it) was trained on."""
    if data.num_classes != len(model_names):
        raise DataError(
            f"{data.spec} has {data.num_classes} classes but {model} has {len(model_names)}; "
            "use the data set the model was trained on."
        )
    if data.class_names == list(model_names):
        return
    if data.class_subset:
        raise DataError(
            f"--classes keeps {', '.join(data.class_names)} but {model} was trained on "
            f"{', '.join(model_names)}; drop --classes to use the checkpoint's subset."
        )
    if not data.config.ignore_class_names:
        raise DataError(
            f"{data.spec} names its classes {_first(data.class_names)} but {model} was trained "
            f"on {_first(model_names)}; give the data it was trained on, or pass "
            "--ignore-class-names to read label i as its class i."
        )


def _first(names: list[str], count: int = 3) -> str:
    return ", ".join(names[:count]) + (", …" if len(names) > count else "")


def load_checkpoint_data(
    checkpoint: Checkpoint, data_spec: str | None, split: str, data_config: DataConfig | None
) -> DataSplit:
    """A split of `data_spec`, else of the data the checkpoint was trained on, divided into
    train and test as in training; its classes must match the checkpoint's."""
    data_spec = data_spec or checkpoint.metadata.get("data")
    if not data_spec:
        raise UsageError(f"{checkpoint.path} does not name its data set; pass --data SPEC.")
    data = load_data(data_spec, split, (data_config or DataConfig()).inherit(checkpoint.metadata))
    check_classes(checkpoint, data)
    return data
