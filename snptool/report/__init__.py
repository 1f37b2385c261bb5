"""Reports and figures from matrix files (`figures` is the only matplotlib import)."""

from snptool.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "run_report": "report",
        "ReportResult": "report",
    },
)
