"""gridtwin's model layer: grid model, load flow, point map, estimation, recorder.

Synchronous: no sockets and no asyncio here. Heavy modules (pandapower) load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twin.errors import (
    ConfigError,
    GridDataError,
    InvalidInput,
    LoadflowError,
    LoadflowNotConverged,
    PointMapError,
    SyncError,
    TwinError,
)

if TYPE_CHECKING:
    from twin.batch import BatchResult, n_minus_1, solve_batch
    from twin.loadflow import build_info
    from twin.model import GridModel, Solution

__all__ = [
    "BatchResult",
    "ConfigError",
    "GridDataError",
    "GridModel",
    "InvalidInput",
    "LoadflowError",
    "LoadflowNotConverged",
    "PointMapError",
    "Solution",
    "SyncError",
    "TwinError",
    "build_info",
    "n_minus_1",
    "solve_batch",
]


def __getattr__(name: str) -> Any:
    if name == "build_info":
        from twin.loadflow import build_info

        return build_info
    if name in ("BatchResult", "n_minus_1", "solve_batch"):
        from twin import batch

        return getattr(batch, name)
    if name in ("GridModel", "Solution"):
        from twin import model

        return getattr(model, name)
    raise AttributeError(f"module 'twin' has no attribute {name!r}")
