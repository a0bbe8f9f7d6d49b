"""Branch and injection results straight from a solved voltage vector, for the per-step path.

``twin.GridModel``'s ``Solution.get`` builds pandapower's full result tables (tens of ms on a
small grid) for anything but bus voltages. A scenario step needs a handful of columns (line and
trafo loading, flows, load and sgen P/Q) every step, so :class:`FastModel` wraps the model and
returns solutions whose ``get`` computes those from ``V``, the model's compiled ``Yf``/``Yt`` and
pandapower's branch lookups, as pandapower's ``results_branch`` does. Anything else falls back to
the model's own ``get``.

Safety: the first solve, and every ``verify_every``-th after it, compares every fast column with
the model's own result; a column off by more than ``1e-6`` (relative) is switched to the model's
path for the rest of the run, with a warning. A model that does not expose what is needed
(``_yf``, ``_ppci``, ...) is used as it is.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

_log = logging.getLogger(__name__)

_SQRT3 = math.sqrt(3.0)
_F_BUS, _T_BUS, _BASE_KV = 0, 1, 9
LINE_COLS = (
    "p_from_mw",
    "q_from_mvar",
    "p_to_mw",
    "q_to_mvar",
    "i_from_ka",
    "i_to_ka",
    "i_ka",
    "loading_percent",
    "pl_mw",
    "ql_mvar",
)
TRAFO_COLS = (
    "p_hv_mw",
    "q_hv_mvar",
    "p_lv_mw",
    "q_lv_mvar",
    "i_hv_ka",
    "i_lv_ka",
    "loading_percent",
    "pl_mw",
    "ql_mvar",
)
INJ_COLS = {("load", "p_mw"), ("load", "q_mvar"), ("sgen", "p_mw"), ("sgen", "q_mvar")}


def _csr(m: Any) -> Any:
    import scipy.sparse as sp

    return sp.csr_matrix((m._y_re + 1j * m._y_im, m._y_indices, m._y_indptr), shape=(m._n, m._n))


class FastSolution:
    """A ``Solution`` look-alike; unknown attributes go to the wrapped solution."""

    def __init__(self, sol: Any, owner: FastModel) -> None:
        self._sol = sol
        self._owner = owner
        self._cache: dict[tuple[str, str], np.ndarray] = {}
        self._branch: dict[str, dict[str, np.ndarray]] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sol, name)

    def get(self, table: str, column: str) -> np.ndarray:
        key = (table, column)
        if key in self._cache:
            return self._cache[key].copy()
        own = self._owner
        arr = None
        if key not in own.disabled:
            try:
                arr = self._fast(table, column)
            except Exception as exc:  # any gap in the wrapped model's internals: use its path
                _log.debug("fast result %s.%s unavailable: %s", table, column, exc)
                own.disabled.add(key)
                arr = None
        if arr is None:
            arr = np.asarray(self._sol.get(table, column), dtype=float)
        self._cache[key] = arr
        return arr.copy()

    def _fast(self, table: str, column: str) -> np.ndarray | None:
        if table in ("line", "trafo") and column in (LINE_COLS if table == "line" else TRAFO_COLS):
            if self._branch is None:
                self._branch = self._owner.branch_results(self._sol)
            return self._branch.get(table, {}).get(column)
        if table == "ext_grid" and column in ("p_mw", "q_mvar"):
            return self._owner.ext_grid_results(self._sol)[column]
        if (table, column) in INJ_COLS:
            df = self._owner.net[table]
            v = df[column].to_numpy(dtype=float) * df["scaling"].to_numpy(dtype=float)
            return np.where(df["in_service"].to_numpy(dtype=bool), v, 0.0)
        return None


class FastModel:
    """Wraps a ``GridModel``; ``solve()`` returns :class:`FastSolution` (see module docstring)."""

    def __init__(self, model: Any, *, verify_every: int = 500) -> None:
        self._model = model
        self.verify_every = int(verify_every)
        self.disabled: set[tuple[str, str]] = set()
        self._solves = 0
        self._usable = all(hasattr(model, a) for a in ("_yf", "_yt", "_ppci", "_ppc", "_base_mva"))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    @property
    def net(self) -> Any:
        return self._model.net

    def update(self, *args: Any, **kwargs: Any) -> Any:
        return self._model.update(*args, **kwargs)

    def solve(self) -> Any:
        sol = self._model.solve()
        if not self._usable:
            return sol
        fast = FastSolution(sol, self)
        if self._solves % self.verify_every == 0:
            self._verify(fast, sol)
        self._solves += 1
        return fast

    def _verify(self, fast: FastSolution, sol: Any) -> None:
        checks = [("line", c) for c in LINE_COLS] + [("trafo", c) for c in TRAFO_COLS]
        checks += sorted(INJ_COLS) + [("ext_grid", "p_mw"), ("ext_grid", "q_mvar")]
        for table, col in checks:
            if (table, col) in self.disabled or len(self.net[table]) == 0:
                continue
            try:
                ref = np.asarray(sol.get(table, col), dtype=float)
                got = fast._fast(table, col)
            except Exception as exc:
                _log.info(
                    "fast results: %s.%s not checked (%s); using the model's path", table, col, exc
                )
                self.disabled.add((table, col))
                continue
            if got is None or got.shape != ref.shape:
                self.disabled.add((table, col))
                continue
            a, b = np.nan_to_num(got), np.nan_to_num(ref)
            err = np.max(np.abs(a - b) / np.maximum(1.0, np.abs(b))) if a.size else 0.0
            if err > 1e-6:
                _log.warning(
                    "fast results: %s.%s differs from the model by %.3g; using the "
                    "model's path for it",
                    table,
                    col,
                    err,
                )
                self.disabled.add((table, col))

    def ext_grid_results(self, sol: Any) -> dict[str, np.ndarray]:
        m = self._model
        net = m.net
        v = np.asarray(sol._vm_int) * np.exp(1j * np.asarray(sol._va_int))
        ybus = m._ybus_c if not hasattr(m, "_y_re") else _csr(m)
        s_inj = v * np.conj(ybus @ v) * float(m._base_mva)
        pos = net.bus.index.get_indexer(net.ext_grid["bus"].to_numpy())
        ib = np.asarray(m._bus_int)[pos]
        on = (ib >= 0) & net.ext_grid["in_service"].to_numpy(dtype=bool)
        p = np.zeros(len(net.ext_grid))
        q = np.zeros(len(net.ext_grid))
        p[on] = s_inj[ib[on]].real + np.asarray(m._bus_pd)[ib[on]]
        q[on] = s_inj[ib[on]].imag + np.asarray(m._bus_qd)[ib[on]]
        return {"p_mw": p, "q_mvar": q}

    def branch_results(self, sol: Any) -> dict[str, dict[str, np.ndarray]]:
        m = self._model
        net = m.net
        ppci = m._ppci
        v = np.asarray(sol._vm_int) * np.exp(1j * np.asarray(sol._va_int))
        base = float(m._base_mva)
        s_f = v[ppci["branch"][:, _F_BUS].real.astype(np.int64)] * np.conj(m._yf @ v) * base
        s_t = v[ppci["branch"][:, _T_BUS].real.astype(np.int64)] * np.conj(m._yt @ v) * base
        br_is = np.asarray(ppci["internal"]["branch_is"], dtype=bool)
        to_int = np.full(br_is.shape[0], -1, dtype=np.int64)
        to_int[br_is] = np.arange(int(br_is.sum()))
        bus = ppci["bus"]
        kv_f = bus[ppci["branch"][:, _F_BUS].real.astype(np.int64), _BASE_KV].real
        kv_t = bus[ppci["branch"][:, _T_BUS].real.astype(np.int64), _BASE_KV].real
        vm = np.abs(v)
        vm_f = vm[ppci["branch"][:, _F_BUS].real.astype(np.int64)]
        vm_t = vm[ppci["branch"][:, _T_BUS].real.astype(np.int64)]
        i_f = np.abs(s_f) / (vm_f * kv_f) / _SQRT3
        i_t = np.abs(s_t) / (vm_t * kv_t) / _SQRT3
        out: dict[str, dict[str, np.ndarray]] = {}
        lookups = net._pd2ppc_lookups["branch"]

        def take(arr: np.ndarray, f: int, t: int) -> np.ndarray:
            rows = to_int[f:t]
            res = np.zeros(t - f)  # out of service: pandapower reports zeros
            ok = rows >= 0
            res[ok] = arr[rows[ok]]
            return res

        if "line" in lookups and len(net.line):
            f, t = lookups["line"]
            pf, qf = take(s_f.real, f, t), take(s_f.imag, f, t)
            pt, qt = take(s_t.real, f, t), take(s_t.imag, f, t)
            ifk, itk = take(i_f, f, t), take(i_t, f, t)
            line = net.line
            i_max = (
                line["max_i_ka"].to_numpy(float)
                * line["df"].to_numpy(float)
                * line["parallel"].to_numpy(float)
            )
            i_ka = np.maximum(ifk, itk)
            out["line"] = {
                "p_from_mw": pf, "q_from_mvar": qf, "p_to_mw": pt, "q_to_mvar": qt,
                "i_from_ka": ifk, "i_to_ka": itk, "i_ka": i_ka,
                "loading_percent": i_ka / i_max * 100.0, "pl_mw": pf + pt, "ql_mvar": qf + qt,
            }  # fmt: skip
        if "trafo" in lookups and len(net.trafo):
            f, t = lookups["trafo"]
            pf, qf = take(s_f.real, f, t), take(s_f.imag, f, t)
            pt, qt = take(s_t.real, f, t), take(s_t.imag, f, t)
            ihv, ilv = take(i_f, f, t), take(i_t, f, t)
            tr = net.trafo
            ld = (
                np.maximum(
                    ihv * tr["vn_hv_kv"].to_numpy(float), ilv * tr["vn_lv_kv"].to_numpy(float)
                )
                * _SQRT3
                / tr["sn_mva"].to_numpy(float)
                * 100.0
            )
            ld = ld / tr["parallel"].to_numpy(float) / tr["df"].to_numpy(float)
            out["trafo"] = {
                "p_hv_mw": pf, "q_hv_mvar": qf, "p_lv_mw": pt, "q_lv_mvar": qt,
                "i_hv_ka": ihv, "i_lv_ka": ilv, "loading_percent": ld,
                "pl_mw": pf + pt, "ql_mvar": qf + qt,
            }  # fmt: skip
        return out
