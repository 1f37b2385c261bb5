"""Data specs to data sets: loading, preprocessing, augmentation."""

from snptool.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "load_data": "datasets",
        "DataSplit": "datasets",
        "prepare_batch": "datasets",
        "augment_batch": "datasets",
        "load_checkpoint_data": "checkpoint_data",
    },
)
