"""snptool: explain and prune trained image classifiers by single-unit performance.

The step functions are the Python API; the CLI is a thin layer over them:

    from snptool import run_train, TrainConfig
    run_train("vgg11", "digits", "vgg11.safetensors", TrainConfig(epochs=10))
"""

__version__ = "0.1.0"

_EXPORTS = {
    "run_train": "snptool.train",
    "TrainResult": "snptool.train",
    "InputOverrides": "snptool.train",
    "run_evaluate": "snptool.evaluate",
    "EvaluateResult": "snptool.evaluate",
    "run_import": "snptool.importer",
    "ImportResult": "snptool.importer",
    "run_probe": "snptool.probe",
    "ProbeResult": "snptool.probe",
    "ProbeFile": "snptool.probe",
    "run_matrix": "snptool.matrix",
    "MatrixResult": "snptool.matrix",
    "unit_matrices": "snptool.matrix",
    "run_clusters": "snptool.clusters",
    "ClustersResult": "snptool.clusters",
    "unit_clusters": "snptool.clusters",
    "run_heads": "snptool.heads",
    "HeadsResult": "snptool.heads",
    "TapRecorder": "snptool.taps",
    "run_prune": "snptool.prune",
    "PruneResult": "snptool.prune",
    "compact_model": "snptool.compact",
    "prune_structured": "snptool.structured",
    "remove_channels": "snptool.structured",
    "StructuredPruning": "snptool.structured",
    "run_export": "snptool.export",
    "ExportResult": "snptool.export",
    "run_committee": "snptool.committee",
    "CommitteeResult": "snptool.committee",
    "SoftCommittee": "snptool.committee",
    "run_latency": "snptool.latency",
    "LatencyResult": "snptool.latency",
    "run_sweep": "snptool.sweep",
    "SweepResult": "snptool.sweep",
    "fit_power_law": "snptool.power_law",
    "PowerLawFit": "snptool.power_law",
    "run_layers": "snptool.taps",
    "LayersResult": "snptool.taps",
    "read_checkpoint": "snptool.checkpoint",
    "write_checkpoint": "snptool.checkpoint",
    "Checkpoint": "snptool.checkpoint",
    "load_data": "snptool.data",
    "build_model": "snptool.architectures",
    "TrainConfig": "snptool.config",
    "EvaluateConfig": "snptool.config",
    "ImportConfig": "snptool.config",
    "ProbeConfig": "snptool.config",
    "MatrixConfig": "snptool.config",
    "ClustersConfig": "snptool.config",
    "HeadsConfig": "snptool.config",
    "PruneConfig": "snptool.config",
    "ExportConfig": "snptool.config",
    "CommitteeConfig": "snptool.config",
    "LatencyConfig": "snptool.config",
    "SweepConfig": "snptool.config",
    "DataConfig": "snptool.config",
    "InputSpec": "snptool.config",
    "SnpError": "snptool.errors",
    "DistributedError": "snptool.distributed",
    "run_sharded_split": "snptool.probe",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    """Import the API lazily, so `snptool --help` does not load torch."""
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'snptool' has no attribute {name!r}")
