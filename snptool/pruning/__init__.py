"""Pruning by the analysis or by weights.

Masks, channel and head removal, compaction, fine-tuning.
"""

from snptool.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "run_prune": "prune",
        "PruneResult": "prune",
        "compact_model": "compact",
        "prune_structured": "structured",
        "remove_channels": "structured",
        "StructuredPruning": "structured",
        "METHODS": "methods",
        "PruneMethod": "methods",
        "PrunePlan": "methods",
        "UnitsImportance": "importance",
    },
)
