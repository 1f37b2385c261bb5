"""Training and evaluating networks: `train`, `evaluate`, `import`, `sweep` and its power law."""

from snptool.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "run_train": "train",
        "TrainResult": "train",
        "InputOverrides": "train",
        "run_evaluate": "evaluate",
        "EvaluateResult": "evaluate",
        "run_import": "importer",
        "ImportResult": "importer",
        "run_sweep": "sweep",
        "SweepResult": "sweep",
        "fit_power_law": "power_law",
        "PowerLawFit": "power_law",
    },
)
