"""Single-unit analysis: `layers`, `probe`, `matrix`, `clusters` and `heads` (METHODS.md §3–§6)."""

from snptool.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "run_probe": "probe",
        "ProbeResult": "probe",
        "run_matrix": "matrix",
        "MatrixResult": "matrix",
        "unit_matrices": "matrix",
        "run_clusters": "clusters",
        "ClustersResult": "clusters",
        "unit_clusters": "clusters",
        "run_heads": "heads",
        "HeadsResult": "heads",
        "run_layers": "layers",
        "run_sharded_split": "features",
        "LayersResult": "layers",
    },
)
