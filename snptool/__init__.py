"""snptool: explain and prune trained image classifiers by single-unit performance.

The step functions are the Python API; the CLI is a thin layer over them:

    from snptool import run_train, TrainConfig
    run_train("vgg11", "digits", "vgg11.safetensors", TrainConfig(epochs=10))
"""

__version__ = "0.1.0"

_EXPORTS = {
    "run_train": "snptool.training.train",
    "TrainResult": "snptool.training.train",
    "InputOverrides": "snptool.training.train",
    "run_evaluate": "snptool.training.evaluate",
    "EvaluateResult": "snptool.training.evaluate",
    "run_import": "snptool.training.importer",
    "ImportResult": "snptool.training.importer",
    "run_probe": "snptool.analysis.probe",
    "ProbeResult": "snptool.analysis.probe",
    "ProbeFile": "snptool.core.probe_file",
    "run_matrix": "snptool.analysis.matrix",
    "MatrixResult": "snptool.analysis.matrix",
    "unit_matrices": "snptool.analysis.matrix",
    "run_clusters": "snptool.analysis.clusters",
    "ClustersResult": "snptool.analysis.clusters",
    "unit_clusters": "snptool.analysis.clusters",
    "run_heads": "snptool.analysis.heads",
    "HeadsResult": "snptool.analysis.heads",
    "TapRecorder": "snptool.core.taps",
    "run_prune": "snptool.pruning.prune",
    "PruneResult": "snptool.pruning.prune",
    "compact_model": "snptool.pruning.compact",
    "prune_structured": "snptool.pruning.structured",
    "remove_channels": "snptool.pruning.structured",
    "StructuredPruning": "snptool.pruning.structured",
    "run_export": "snptool.deploy.export",
    "ExportResult": "snptool.deploy.export",
    "run_committee": "snptool.deploy.committee",
    "CommitteeResult": "snptool.deploy.committee",
    "SoftCommittee": "snptool.deploy.committee",
    "run_latency": "snptool.deploy.latency",
    "run_quantize": "snptool.deploy.quantize",
    "QuantizeResult": "snptool.deploy.quantize",
    "run_evaluate_onnx": "snptool.deploy.onnx_evaluate",
    "LatencyResult": "snptool.deploy.latency",
    "run_sweep": "snptool.training.sweep",
    "run_report": "snptool.report.report",
    "ReportResult": "snptool.report.report",
    "SweepResult": "snptool.training.sweep",
    "fit_power_law": "snptool.training.power_law",
    "PowerLawFit": "snptool.training.power_law",
    "run_layers": "snptool.analysis.layers",
    "LayersResult": "snptool.analysis.layers",
    "read_checkpoint": "snptool.core.checkpoint",
    "write_checkpoint": "snptool.core.checkpoint",
    "Checkpoint": "snptool.core.checkpoint",
    "load_data": "snptool.data.datasets",
    "build_model": "snptool.core.architectures",
    "trust_code": "snptool.core.trust",
    "TrainConfig": "snptool.config",
    "EvaluateConfig": "snptool.config",
    "ImportConfig": "snptool.config",
    "ProbeConfig": "snptool.config",
    "MatrixConfig": "snptool.config",
    "ClustersConfig": "snptool.config",
    "HeadsConfig": "snptool.config",
    "PruneConfig": "snptool.config",
    "ConnectionConfig": "snptool.config",
    "RemovalConfig": "snptool.config",
    "FinetuneConfig": "snptool.config",
    "ExportConfig": "snptool.config",
    "CommitteeConfig": "snptool.config",
    "LatencyConfig": "snptool.config",
    "QuantizeConfig": "snptool.config",
    "SweepConfig": "snptool.config",
    "DataConfig": "snptool.config",
    "InputSpec": "snptool.config",
    "SnpError": "snptool.errors",
    "DistributedError": "snptool.core.distributed",
    "run_sharded_split": "snptool.analysis.features",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    """Import the API lazily, so `snptool --help` does not load torch."""
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'snptool' has no attribute {name!r}")
