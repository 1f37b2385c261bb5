"""The data a checkpoint was trained on: its recorded spec, checked against its classes."""

from __future__ import annotations

from snptool.config import DataConfig
from snptool.core.checkpoint import Checkpoint
from snptool.data.datasets import DataSplit, load_data
from snptool.errors import DataError, UsageError


def check_classes(checkpoint: Checkpoint, data: DataSplit) -> None:
    """The data must have as many classes as the checkpoint's output (and its subset's names)."""
    if data.num_classes != checkpoint.num_classes:
        raise DataError(
            f"{data.spec} has {data.num_classes} classes but the checkpoint has "
            f"{checkpoint.num_classes}; use the data set the model was trained on."
        )
    if data.class_subset and data.class_names != checkpoint.class_names:
        raise DataError(
            f"--classes keeps {', '.join(data.class_names)} but the checkpoint was trained on "
            f"{', '.join(checkpoint.class_names)}; drop --classes to use the checkpoint's subset."
        )


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
