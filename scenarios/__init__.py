"""gridtwin scenarios: SimPy scenario files, the engine, events, profiles, checks and results.

    >>> from scenarios import load_scenario, run_scenario
    >>> res = run_scenario("scenarios/library/city_day.toml", out_dir="results/city")
    >>> res.passed, [c.name for c in res.checks if not c.passed]

Heavy modules (pandapower, the hil layer) load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scenarios.config import Scenario, load_scenario, loads_scenario
    from scenarios.engine import RunResult, TwinRuntime, run_scenario

__all__ = [
    "RunResult",
    "Scenario",
    "TwinRuntime",
    "load_scenario",
    "loads_scenario",
    "run_scenario",
]

_WHERE = {
    "Scenario": "scenarios.config",
    "load_scenario": "scenarios.config",
    "loads_scenario": "scenarios.config",
    "RunResult": "scenarios.engine",
    "TwinRuntime": "scenarios.engine",
    "run_scenario": "scenarios.engine",
}


def __getattr__(name: str) -> Any:
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module 'scenarios' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(mod), name)
