"""Deployment: ONNX export with a parity check, committees and onnxruntime latency.

The only onnxruntime imports live here.
"""

from snptool.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "run_export": "export",
        "ExportResult": "export",
        "run_committee": "committee",
        "CommitteeResult": "committee",
        "SoftCommittee": "committee",
        "run_latency": "latency",
        "LatencyResult": "latency",
        "run_quantize": "quantize",
        "QuantizeResult": "quantize",
        "run_evaluate_onnx": "onnx_evaluate",
        "read_onnx": "onnx_file",
    },
)
