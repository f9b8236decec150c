"""stitchnas: pooling-placement NAS and model stitching with FLOPs-vs-accuracy Pareto fronts."""

from __future__ import annotations

__version__ = "0.1.0"

from stitchnas.export import export_model, load_model, read_model_record

__all__ = ["__version__", "export_model", "load_model", "read_model_record"]
