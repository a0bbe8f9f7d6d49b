"""A stand-in for ``twin.GridModel`` built on ``pandapower.runpp``.

The engine uses ``twin.GridModel`` (the compiled Newton kernel) whenever it can be imported; this
class only keeps scenarios running while that layer is missing or broken, with the same subset of
the contract the engine uses: ``update``, ``solve`` -> object with ``get``/``converged``/
``iterations``, ``value``, ``net``. It is slower (~10 ms per solve against well under 1 ms).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from twin.errors import LoadflowNotConverged

_log = logging.getLogger(__name__)


@dataclass
class LocalSolution:
    """The results of one solve, columns copied out of ``net.res_*``."""

    converged: bool
    iterations: int
    max_mismatch: float = 0.0
    _cols: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)

    def get(self, table: str, column: str) -> np.ndarray:
        try:
            return self._cols[(table, column)]
        except KeyError:
            raise KeyError(f"no result column {table}.{column}") from None

    @property
    def vm_pu(self) -> np.ndarray:
        return self.get("bus", "vm_pu")


_RESULT_TABLES = ("bus", "line", "trafo", "load", "sgen", "ext_grid", "gen", "trafo3w")


class LocalModel:
    """Minimal GridModel look-alike on pandapower (see the module docstring)."""

    backend = "pandapower"

    def __init__(self, net, backend: str = "auto") -> None:
        self.net = net
        self._warm = False

    def update(self, table: str, column: str, values, index: Sequence[int] | None = None) -> None:
        df = self.net[table]
        idx = df.index if index is None else list(index)
        arr = np.asarray(values)
        if df[column].dtype == bool:
            arr = arr.astype(bool)
        df.loc[idx, column] = arr if arr.ndim else arr.item()

    def value(self, table: str, column: str, element: int) -> float:
        return float(self.net[table].at[element, column])

    def solve(self) -> LocalSolution:
        import pandapower as pp

        try:
            pp.runpp(self.net, init="results" if self._warm else "auto", numba=False)
        except pp.LoadflowNotConverged:
            self._warm = False
            raise LoadflowNotConverged(
                self.net._ppc_iterations if hasattr(self.net, "_ppc_iterations") else 0,
                -1,
                float("nan"),
                "pandapower runpp",
            ) from None
        self._warm = True
        sol = LocalSolution(
            converged=True,
            iterations=int(self.net._ppc.get("iterations", 0) or 0) if self.net.get("_ppc") else 0,
        )
        for t in _RESULT_TABLES:
            res = self.net.get(f"res_{t}")
            if res is None or len(self.net[t]) == 0:
                continue
            res = res.reindex(self.net[t].index)
            for c in res.columns:
                sol._cols[(t, c)] = res[c].to_numpy(dtype=float)
        return sol

    def to_net(self) -> None:  # results are already in net.res_*
        return None
