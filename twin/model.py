"""The compiled grid model: a pandapower net compiled once, then updated and solved repeatedly.

pandapower's own conversion (``_pd2ppc``, ``makeYbus``) builds the admittance model; this module
keeps the index maps between pandapower elements and internal buses, the injection arrays and the
kernel's symbolic analysis. Injection updates touch only the injection arrays: load / sgen inputs
are written in place into arrays the kernel's ``Stepper`` reads, and the bus injections are
assembled inside the kernel call at the next solve. Line / trafo outages, tap changes, line /
trafo switches and bus-bus switches (compiled as links and fused on the compiled pattern) patch
the compiled Ybus values, also when they cut buses off (solved as dead buses, NaN). The compile is
widened: pandapower converts the net with every line / trafo in service and every line / trafo
switch closed, and the real state is applied as patches, so branches out of service or behind an
open switch at compile are in the pattern and toggle as patches too; the few
changes that cannot be patched recompile and keep the symbolic analysis whenever the new
pattern fits into the old one (docs/architecture.md). Results go to ``net.res_*`` only on
:meth:`GridModel.to_net`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from types import SimpleNamespace
from typing import Any

import numpy as np

from twin.errors import InvalidInput, LoadflowError, LoadflowNotConverged, TopologyError
from twin.loadflow import kernel, resolve_backend

_log = logging.getLogger(__name__)

# (table, column) -> how an update is applied
_INJECTION = {
    ("load", "p_mw"),
    ("load", "q_mvar"),
    ("sgen", "p_mw"),
    ("sgen", "q_mvar"),
    ("gen", "p_mw"),
}
_SETPOINT = {("gen", "vm_pu"), ("ext_grid", "vm_pu")}
_TOPOLOGY = {
    ("switch", "closed"),
    ("line", "in_service"),
    ("trafo", "tap_pos"),
    ("trafo", "in_service"),
}
UPDATABLE: tuple[tuple[str, str], ...] = tuple(sorted(_INJECTION | _SETPOINT | _TOPOLOGY))
_UPDATABLE_SET = frozenset(UPDATABLE)
_NO_LIMITS = np.zeros(0, dtype=np.int64)
_F64 = np.dtype(np.float64)
_ALL = slice(None)
# the element inputs the kernel assembles into the bus injections at every solve, in the
# order of its four element groups (load P, sgen P, load Q, sgen Q)
_GROUPS = (("load", "p_mw"), ("sgen", "p_mw"), ("load", "q_mvar"), ("sgen", "q_mvar"))
# result columns computed here from V and the compiled ppc, with pandapower's formulas
# (results_branch.py, results_gen.py, results_bus.py, pypower's pfsoln); anything else goes
# through pandapower's own result extraction
_NATIVE_BRANCH = {
    "line": frozenset(
        ("p_from_mw", "q_from_mvar", "p_to_mw", "q_to_mvar", "pl_mw", "ql_mvar", "i_from_ka",
         "i_to_ka", "i_ka", "loading_percent", "vm_from_pu", "va_from_degree", "vm_to_pu",
         "va_to_degree")
    ),
    "trafo": frozenset(
        ("p_hv_mw", "q_hv_mvar", "p_lv_mw", "q_lv_mvar", "pl_mw", "ql_mvar", "i_hv_ka", "i_lv_ka",
         "loading_percent", "vm_hv_pu", "va_hv_degree", "vm_lv_pu", "va_lv_degree")
    ),
}  # fmt: skip
_NATIVE_ELEMENT = {
    "ext_grid": frozenset(("p_mw", "q_mvar")),
    "gen": frozenset(("p_mw", "q_mvar", "vm_pu", "va_degree")),
    "load": frozenset(("p_mw", "q_mvar")),
    "sgen": frozenset(("p_mw", "q_mvar")),
}
_NATIVE: dict[str, frozenset[str]] = {**_NATIVE_BRANCH, **_NATIVE_ELEMENT}
# the rows of the kernel's branch result matrix (_reference.BRANCH_ROWS) as result columns
_LINE_NAMES = (
    "p_from_mw", "q_from_mvar", "p_to_mw", "q_to_mvar", "pl_mw", "ql_mvar", "i_from_ka",
    "i_to_ka", "i_ka", "loading_percent", "vm_from_pu", "va_from_degree", "vm_to_pu",
    "va_to_degree",
)  # fmt: skip
_TRAFO_NAMES = (
    "p_hv_mw", "q_hv_mvar", "p_lv_mw", "q_lv_mvar", "pl_mw", "ql_mvar", "i_hv_ka", "i_lv_ka",
    "", "loading_percent", "vm_hv_pu", "va_hv_degree", "vm_lv_pu", "va_lv_degree",
)  # fmt: skip
_EPS = float(np.finfo(float).eps)  # pypower's guard in the reactive-power split
_SL_FAC = 25  # pypower gen column: slack contribution factor
_BOOL_COLUMNS = {("switch", "closed"), ("line", "in_service"), ("trafo", "in_service")}

# inputs the compile reads that update() does not carry in its own arrays: the model compares
# them with what it compiled before every solve (edits made to the net behind its back)
_GUARDED = (
    ("bus", "in_service"), ("switch", "closed"), ("line", "in_service"), ("trafo", "in_service"),
    ("trafo", "tap_pos"), ("trafo3w", "in_service"), ("trafo3w", "tap_pos"),
    ("ext_grid", "in_service"), ("gen", "in_service"), ("sgen", "in_service"),
    ("load", "in_service"), ("shunt", "in_service"), ("impedance", "in_service"),
    ("ward", "in_service"), ("xward", "in_service"), ("storage", "in_service"),
)  # fmt: skip

_RES_TABLES = (
    "bus", "line", "trafo", "trafo3w", "impedance", "ext_grid", "load", "sgen", "gen", "shunt",
    "ward", "xward", "storage", "switch", "motor", "asymmetric_load", "asymmetric_sgen", "dcline",
)  # fmt: skip


_UNSET = object()
# the impedance a bus-bus switch is compiled with (a link branch: its admittance is never used,
# only its pattern and pandapower's connectivity through it)
_LINK_OHM = 1e-3

Span = tuple[int, int]  # (start, stop) of a result column in a solution's result buffer
_NO_COLUMNS: dict[str, Span] = {}
_NO_BUSES = np.zeros(0, dtype=np.int64)
_NO_VALUES = np.zeros(0)
_NO_BUSES.setflags(write=False)  # shared: nobody may write into it
_NO_VALUES.setflags(write=False)
# the element input arrays Results.compute takes, in its argument order
_LP, _SP, _LQ, _SQ = _GROUPS


def _pp():
    """pandapower internals used to compile (imported lazily: importing pandapower takes ~2 s)."""
    from pandapower.auxiliary import _add_auxiliary_elements, _init_runpp_options
    from pandapower.pd2ppc import _pd2ppc
    from pandapower.pf.ppci_variables import (
        _get_pf_variables_from_ppci,
        _store_results_from_pf_in_ppci,
    )
    from pandapower.pf.run_dc_pf import _run_dc_pf
    from pandapower.pf.run_newton_raphson_pf import ppci_to_pfsoln
    from pandapower.pypower.makeYbus import makeYbus
    from pandapower.results import _copy_results_ppci_to_ppc, _extract_results, init_results

    return {
        "aux": _add_auxiliary_elements,
        "options": _init_runpp_options,
        "pd2ppc": _pd2ppc,
        "pfvars": _get_pf_variables_from_ppci,
        "store": _store_results_from_pf_in_ppci,
        "dc": _run_dc_pf,
        "pfsoln": ppci_to_pfsoln,
        "makeYbus": makeYbus,
        "copy_results": _copy_results_ppci_to_ppc,
        "extract": _extract_results,
        "init_results": init_results,
    }


def _copy_ppc(ppc: dict) -> dict:
    """Copy of a ppc dict deep enough for pandapower's result functions to write into."""
    out: dict[str, Any] = {}
    for key, val in ppc.items():
        if isinstance(val, np.ndarray):
            out[key] = val.copy()
        elif isinstance(val, dict):
            out[key] = _copy_ppc(val)
        else:
            out[key] = val
    return out


class Solution:
    """One load-flow result. Bus voltages and the native result tables on first access.

    Arrays are ordered like the pandapower tables; ``get(table, column)`` returns what
    ``net.res_<table>[column]`` would hold after ``pandapower.runpp``. The natively computed
    tables (line, trafo, ext_grid, gen, load, sgen) are filled by one kernel call on the first
    ``get`` of any of them; other tables go through pandapower's extraction.
    """

    def __init__(
        self,
        *,
        vm: np.ndarray,
        va: np.ndarray,
        bus_int: np.ndarray,
        iterations: int,
        converged: bool,
        max_mismatch: float,
        backend: str,
        results: Callable[[], dict[str, Any]],
        native: Callable[[], tuple[np.ndarray, dict[str, dict[str, Span]], Any] | None]
        | None = None,
        unsupplied_buses: np.ndarray | None = None,
    ) -> None:
        self._vm_int = vm
        #: pandapower indices of in-service buses with no path to a slack (NaN in the results)
        self.unsupplied_buses = _NO_BUSES if unsupplied_buses is None else unsupplied_buses
        self._va_int = va
        self._bus_int = bus_int
        self._vm_pu: np.ndarray | None = None
        self._va_degree: np.ndarray | None = None
        self.iterations = iterations
        self.converged = converged
        self.max_mismatch = max_mismatch
        self.backend = backend
        self._results_fn = results
        # native() -> (buffer, {table: {column: (start, stop) in the buffer}}, take) or None;
        # take(buffer, span) is the kernel's copy of a span
        self._native_fn = native
        self._buf: np.ndarray | None = None
        self._layout: dict[str, dict[str, Span]] | None = None  # None: not computed yet
        self._take: Any = None
        self._tables: dict[str, Any] | None = None

    def _bus(self) -> None:
        ib = self._bus_int
        ok = ib >= 0
        vm = np.full(ib.shape[0], np.nan)
        va = np.full(ib.shape[0], np.nan)
        vm[ok] = self._vm_int[ib[ok]]
        # pandapower reports angle(V): wrapped to (-180, 180]
        va[ok] = np.rad2deg(np.angle(np.exp(1j * self._va_int[ib[ok]])))
        self._vm_pu, self._va_degree = vm, va

    @property
    def vm_pu(self) -> np.ndarray:
        """Voltage magnitudes in per unit, ordered like net.bus (NaN when not energized)."""
        if self._vm_pu is None:
            self._bus()
        return self._vm_pu  # type: ignore[return-value]

    @property
    def va_degree(self) -> np.ndarray:
        """Voltage angles in degrees, ordered like net.bus (NaN when not energized)."""
        if self._va_degree is None:
            self._bus()
        return self._va_degree  # type: ignore[return-value]

    def _res(self) -> dict[str, Any]:
        if self._tables is None:
            self._tables = self._results_fn()
        return self._tables

    def get(self, table: str, column: str) -> np.ndarray:
        """``net.res_<table>[column]`` as a float array (a copy).

        Raises:
            InvalidInput: unknown table or column (the message lists what exists).
        """
        layout = self._layout
        if layout is None and table in _NATIVE:  # bus voltages alone compute no flows
            layout = self._load_native()
        if layout is not None:
            at = layout.get(table, _NO_COLUMNS).get(column)
            if at is not None:
                return self._take(self._buf, at)
        if table == "bus" and column == "vm_pu":
            return self.vm_pu.copy()
        if table == "bus" and column == "va_degree":
            return self.va_degree.copy()
        tables = self._res()
        if table not in tables:
            raise InvalidInput(table, column, None, table, "a result table: " + ", ".join(tables))
        df = tables[table]
        if column not in df.columns:
            raise InvalidInput(
                table, column, None, column, "a result column: " + ", ".join(map(str, df.columns))
            )
        return df[column].to_numpy(dtype=float, copy=True)

    def _load_native(self) -> dict[str, dict[str, Span]]:
        """Every natively computed table, in one kernel call (once)."""
        got = self._native_fn() if self._native_fn is not None else None
        if got is None:
            self._layout = {}
        else:
            self._buf, self._layout, self._take = got
        return self._layout

    def native(self, table: str, column: str) -> bool:
        """Whether ``get(table, column)`` is computed here, without pandapower's extraction."""
        if table == "bus" and column in ("vm_pu", "va_degree"):
            return True
        if table not in _NATIVE:
            return False
        layout = self._layout
        if layout is None:
            layout = self._load_native()
        return column in layout.get(table, _NO_COLUMNS)

    def __getattr__(self, name: str) -> np.ndarray:
        # sol.line_loading_percent -> get("line", "loading_percent"); longest table name first
        if name.startswith("_"):
            raise AttributeError(name)
        for table in sorted(_RES_TABLES, key=len, reverse=True):
            if name.startswith(table + "_"):
                return self.get(table, name[len(table) + 1 :])
        raise AttributeError(f"Solution has no attribute {name!r}")


class GridModel:
    """A pandapower net compiled for repeated Newton-Raphson solves.

    The model keeps the caller's net (no copy) and detects topology edits made to it directly:
    before every solve the topology columns and table lengths it compiled are compared with the
    net, and a difference recompiles (see docs/architecture.md "Topology and the net"). Injections
    go through :meth:`update`; parameter edits need a new model. Outages, taps, element and
    bus-bus switches are patched onto the compiled Ybus (cut-off buses included, and branches
    out of service or switched open at compile: the widened compile); the rest recompiles (see
    docs/architecture.md "Topology and the net").

    Args:
        net: the pandapower net; kept (not copied) as ``model.net`` and kept in sync by updates.
        backend: "auto" | "cython" | "numpy" (``GRIDTWIN_BACKEND`` overrides).
        enforce_q_lims: generator Q limits (PV -> PQ outer loop, as pandapower).
        tolerance_mva: mismatch tolerance in per unit of ``net.sn_mva`` (pandapower's meaning).
        max_iteration: Newton iterations per solve.

    Raises:
        TopologyError: the net has no slack or uses elements the kernel does not model.
        BackendUnavailable: "cython" requested without the compiled kernel.
    """

    def __init__(
        self,
        net: Any,
        backend: str = "auto",
        *,
        enforce_q_lims: bool = False,
        tolerance_mva: float = 1e-8,
        max_iteration: int = 10,
    ) -> None:
        self._net = net
        self._inp: dict[tuple[str, str], np.ndarray] = {}  # inputs not yet written to net
        self._pos_cache: dict[str, tuple[Any, dict[int, int] | None]] = {}
        self._dirty: set[tuple[str, str]] = set()
        self.backend = resolve_backend(backend)
        self._kernel = kernel(self.backend)
        self._copy_if_finite = self._kernel.copy_if_finite
        self.enforce_q_lims = bool(enforce_q_lims)
        self.tolerance_mva = float(tolerance_mva)
        self.max_iteration = int(max_iteration)
        self._pp = _pp()
        self._plan: Any = None
        self._ybus_key: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self.analyses = 0  # how many symbolic analyses ran (tests check reuse)
        self._last_vm_pp: np.ndarray | None = None
        self._last_va_pp: np.ndarray | None = None
        self._last_snap: dict[str, Any] | None = None
        self._compile()

    # ------------------------------------------------------------------ compile
    def _compile(self, use_links: bool = True, widen: bool = True) -> None:
        pp = self._pp
        net = self.net  # flushes pending inputs
        self._inp.clear()
        self._last_snap = None  # to_net() after a recompile solves the new structure first
        net["_ppc"] = None  # a stale _ppc from a saved net would carry old options
        pp["options"](
            net, algorithm="nr", calculate_voltage_angles=True, init="auto",
            max_iteration="auto", tolerance_mva=self.tolerance_mva, trafo_model="t",
            trafo_loading="current", enforce_p_lims=False, enforce_q_lims=self.enforce_q_lims,
            check_connectivity=True, voltage_depend_loads=True,
            consider_line_temperature=False, tdpf=False, tdpf_delay_s=None,
            distributed_slack=False, passed_parameters={},
        )  # fmt: skip
        pp["aux"](net)
        empty = np.array([], dtype=np.int64)
        net._pd2ppc_lookups = {
            "bus": empty, "bus_dc": empty, "ext_grid": empty, "gen": empty,
            "branch": empty, "branch_dc": empty,
        }  # fmt: skip
        links = self._link_switches(net) if use_links else None
        # the widened compile: every line and trafo in service and every line / trafo switch
        # closed, so that each branch is in the ppc and the Ybus pattern; the real state is
        # then applied as patches (below), as a later toggle is
        widened = self._widening(net) if widen else []
        saved_cols = [(t, c, net[t][c].copy()) for t, c, _pos in widened]
        for table, column, pos in widened:
            net[table].iloc[pos, net[table].columns.get_loc(column)] = True
        try:
            if links is not None:
                # every bus-bus switch compiled as a branch between its two buses (pandapower
                # models a switch with z_ohm > 0 so): no bus fused by pandapower, the fusion
                # is done here
                sw = net.switch
                saved = (sw["closed"].copy(), sw["z_ohm"].copy())
                sw.loc[sw.index[links], "closed"] = True
                sw.loc[sw.index[links], "z_ohm"] = _LINK_OHM
                try:
                    ppc, ppci = pp["pd2ppc"](net)
                finally:
                    sw["closed"], sw["z_ohm"] = saved
                    net._impedance_bb_switches = np.zeros(len(sw), dtype=bool)
                links_at = net._pd2ppc_lookups["branch"].pop("switch", None)
            else:
                ppc, ppci = pp["pd2ppc"](net)
        except Exception:
            if not widened:
                raise
            ppc = None  # pandapower refuses the widened net: compile the real state instead
        finally:
            for table, column, values in saved_cols:
                net[table][column] = values
        if ppc is None:
            return self._compile(use_links=use_links, widen=False)
        self._widened = bool(widened)
        self._refused = False  # set when the patch path refuses a state (see _recompile)
        net["_ppc"] = ppc
        for key in ("svc", "tcsc", "ssc", "vsc"):
            if key in ppci and len(ppci[key]):
                raise TopologyError(
                    f"expected no {key} elements in the grid, found {len(ppci[key])}"
                )
        if len(net.get("dcline", [])):
            raise TopologyError(f"expected no dcline elements, found {len(net.dcline)}")
        load = net.load
        for col in ("const_z_p_percent", "const_z_q_percent", "const_i_p_percent",
                    "const_i_q_percent"):  # fmt: skip
            if col in load and np.any(load[col].to_numpy(dtype=float) != 0):
                _log.warning("load.%s is not zero: loads are solved as constant power", col)
        base_mva, bus, gen, branch, *_rest = pp["pfvars"](ppci, True)
        ref, pv, pq, on, gbus, v0, ref_gens = _rest[4:]
        if len(ref) == 0:
            raise TopologyError("expected at least one slack (ext_grid or slack gen), found none")
        n = bus.shape[0]
        link = None
        if links is not None:
            link = self._link_rows(net, ppci, links, links_at, n)
        if link is not None:
            # the link branches carry no admittance: only the pattern of every fusion
            branch_y = branch.copy()
            branch_y[link.rows[link.rows >= 0], 10] = 0  # BR_STATUS
            ybus, yf, yt = pp["makeYbus"](base_mva, bus, branch_y)
        else:
            ybus, yf, yt = pp["makeYbus"](base_mva, bus, branch)
        ybus = ybus.tocsr()
        # the kernel needs every diagonal stored (assembly writes the diagonal block)
        ybus = _with_diagonal(ybus, n)
        if link is not None:
            ybus = self._link_pattern(ybus, link, n)
            if ybus is None:  # the fusions would fill too much: pandapower fuses instead
                return self._compile(use_links=False, widen=widen)
        self._link = link
        kind = np.full(n, 2, dtype=np.int8)
        kind[pv] = 1
        kind[ref] = 0
        self._base_mva = float(base_mva)
        self._ppc = ppc
        self._ppci = ppci
        self._n = n
        self._ybus_c = ybus
        self._yf, self._yt = yf, yt
        # Yf / Yt of the compile plus the tap-patched rows not yet written into copies of them
        self._y_pending: tuple[Any, Any, dict[int, tuple[complex, ...]]] = (yf, yt, {})
        self._ref, self._pv, self._pq, self._ref_gens = ref, pv, pq, ref_gens
        self._kind0 = kind
        self._kind_run = kind  # kind0 with dead auxiliary buses of a patch set to 3
        self._dead_aux = np.zeros(0, dtype=np.int64)
        bus_pd = bus[:, 2].astype(float).copy()  # PD, QD columns (pypower idx 2, 3)
        bus_qd = bus[:, 3].astype(float).copy()
        self._gen_bus = gen[:, 0].real.astype(np.int64)
        self._gen_on = gen[:, 7] > 0  # GEN_STATUS
        self._gen_pg = gen[:, 1].astype(float).copy()  # PG
        self._gen_qg = gen[:, 2].astype(float).copy()  # QG
        self._vset = np.abs(v0).astype(float)
        # pandapower bus -> internal bus (-1 when isolated / out of service)
        lookup = np.asarray(net._pd2ppc_lookups["bus"], dtype=np.int64)
        pp_bus = net.bus.index.to_numpy()
        ib = np.where(pp_bus < lookup.shape[0], lookup[np.minimum(pp_bus, lookup.shape[0] - 1)], -1)
        ib = np.where((ib >= 0) & (ib < n), ib, -1)
        self._bus_lookup = lookup
        self._bus_int = ib
        rep = np.full(n, -1, dtype=np.int64)  # one pandapower bus per internal bus
        valid = ib >= 0
        rep[ib[valid][::-1]] = pp_bus[valid][::-1]
        self._bus_rep = rep
        self._gen_rows = self._gen_row_map()
        self._elem_bus = {t: self._element_bus(t) for t in ("load", "sgen", "gen", "ext_grid")}
        self._scale = {
            t: net[t]["scaling"].to_numpy(float) * net[t]["in_service"].to_numpy(bool)
            for t in ("load", "sgen")
        }
        # sgens are booked as negative load, like pandapower does
        self._signed_scale = {"load": self._scale["load"], "sgen": -self._scale["sgen"]}
        # the demand that is not a load / sgen input ("rest") and the element groups the kernel
        # adds back at every solve from the input arrays (update() writes those in place)
        groups = []
        rest = {"p_mw": bus_pd, "q_mvar": bus_qd}
        for table, column in _GROUPS:
            val = self._input(table, column)
            b = np.ascontiguousarray(self._elem_bus[table], dtype=np.int64)
            w = np.ascontiguousarray(self._signed_scale[table], dtype=float)
            ok = b >= 0
            rest[column] = rest[column] - np.bincount(b[ok], weights=(w * val)[ok], minlength=n)
            groups.append((b, w, val))
        self._rest_p, self._rest_q = rest["p_mw"], rest["q_mvar"]
        self._groups_now = groups
        self._fast = {key: self._inp[key] for key in _GROUPS}
        self._changed: set[tuple[str, str]] = set()
        self._snap_inputs = {key: self._inp[key].copy() for key in _GROUPS}
        self._gen_scale = net.gen["scaling"].to_numpy(float) if len(net.gen) else np.zeros(0)
        self._all_pos: dict[str, np.ndarray] = {}
        self._views: dict[tuple[str, str], tuple[Any, ...]] = {}
        # ybus pattern: reuse the symbolic analysis when the new pattern fits the old one
        self._install_ybus(ybus)
        # initial state: warm start from the last converged state, else flat / DC like pandapower
        vm, va = self._cold_start(ppci, v0, kind)
        self._start = (vm.copy(), va.copy())  # the retry start of a failed warm solve
        if self._last_vm_pp is not None and self._last_va_pp is not None:
            have_pp = valid & np.isfinite(self._last_vm_pp)
            have = np.zeros(n, dtype=bool)
            have[ib[have_pp]] = True
            vm[ib[have_pp]] = self._last_vm_pp[have_pp]
            va[ib[have_pp]] = self._last_va_pp[have_pp]
            # buses without a warm value (re-energised, auxiliary buses of open switches) start
            # from their warm neighbours, not from a cold start beside a warm one
            _fill_from_neighbours(vm, va, have, ybus.indptr, ybus.indices)
        vm[kind != 2] = self._vset[kind != 2]
        self._unsupplied = self._unsupplied_buses(net, ib)
        if self._unsupplied.size:
            _log.warning(
                "%d in-service buses have no connection to a slack and are not solved (NaN): %s",
                self._unsupplied.size, _short_list(self._unsupplied),
            )  # fmt: skip
        self._bus_int0, self._unsupplied0 = ib, self._unsupplied
        self._held_v = (np.full(n, np.nan), np.full(n, np.nan))  # last live V of dead buses
        self._warned: set[bytes] = set()  # cut-off bus sets already named in a warning
        self._vm = vm
        self._va = va
        self._va_ref = np.angle(v0)[ref]
        self._fixed = kind != 2
        self._qzero = np.zeros(n)
        self._inv_base = 1.0 / self._base_mva
        self._gen_sums: tuple[np.ndarray, np.ndarray] | None = None
        zeros = np.zeros(n)
        self._stepper = self._kernel.Stepper(
            self._plan, self._y_indptr, self._y_indices, self._y_re, self._y_im, kind,
            self._vset, zeros, zeros, groups, self._inv_base,
        )  # fmt: skip
        # what a solution needs to build its results later, even after a recompile
        self._groups = groups
        self._c = _Structure(
            branch=self._branch_maps(ppc, ppci, n, yf, yt),
            element=self._element_maps(ppci, ybus, n),
            ppci=ppci, ppc=ppc, ref_gens=ref_gens, gen_bus=self._gen_bus, gen_on=self._gen_on,
            y_indptr=self._y_indptr, y_indices=self._y_indices, y_re=self._y_re,
            y_im=self._y_im, n=n, base_mva=self._base_mva, yf=yf, yt=yt, ref=ref, pv=pv, pq=pq,
            rest_p=self._rest_p, rest_q=self._rest_q, groups=[(b, w) for b, w, _ in groups],
        )  # fmt: skip
        self._guard = self._make_guard(net)
        # branch outages patched onto this compile (compiled branch rows) and what patching needs
        self._c_base = self._c
        self._c_fields: tuple[Any, dict[str, Any]] | None = None
        self._y_base = (self._y_re, self._y_im)
        self._out: frozenset[int] = frozenset()
        # compiled branch rows with one end opened by a line / trafo switch: row -> 1 (from
        # end open) or 2 (to end open); rows with both ends open are in _out
        self._half: dict[int, int] = {}
        self._svc_out: frozenset[int] = frozenset()  # rows out by in_service
        self._sw_open: dict[int, int] = {}  # row -> open ends by switches (bit 1 f, bit 2 t)
        self._sw_info: SimpleNamespace | None = None
        # (trafo position, tap position) -> pandapower's branch values, for this compile
        self._tap_memo: dict[tuple[int, float], tuple[float, ...]] = {}
        # (trafo position, tap) -> its branch's ytt, yff, yft, ytf on this compile
        self._tap_stamps: dict[tuple[int, float], tuple[complex, ...]] = {}
        # every trafo tap vector patched on this compile -> its patched admittances (bounded)
        self._tap_states: dict[bytes, tuple[Any, ...]] = {}
        self._patch_info: SimpleNamespace | None = None
        self._cut_memo: dict[frozenset[int], np.ndarray] = {}  # removed rows -> cut-off buses
        # [the compile's removed rows, their bridges' cut-off sets or None], when nothing is
        # cut off under them (see _cut_off)
        self._cut_ref: list[Any] | None = [frozenset(), None]
        self.patches = getattr(self, "patches", 0)
        self._kind_fused = kind  # kind0 with the fused-away buses of closed bus-bus switches at 3
        self._fuse: SimpleNamespace | None = None
        if link is not None:
            link.base = SimpleNamespace(
                gen_bus=self._gen_bus, rest_p=self._rest_p, rest_q=self._rest_q,
                groups=groups, elem_bus=dict(self._elem_bus),
            )  # fmt: skip
            link.stepper0 = self._stepper
        if link is not None or self._widened:
            # the real state as patches: out-of-service branches out, open element switches
            # opened at their ends, closed links fused and open ones out
            info = self._patch_data()
            svc_out, sw_open = self._real_state(info)
            patches = self.patches
            applied = self._apply_state(svc_out, sw_open, info, force=True)
            self.patches = patches  # the compile's own state is no patch
            if not applied:
                # a generator cut off (pandapower turns it off) or two slacks fused: the real
                # state compiled by pandapower, without widening, then without links
                if self._widened:
                    self._compile(use_links=use_links, widen=False)
                else:
                    self._compile(use_links=False, widen=widen)
                return
            if self._widened:
                self._real_start(ppci, v0, kind, info, warm=self._last_vm_pp is not None)
            removed = self._out | frozenset(self._half)
            self._cut_ref = None if self._dead_aux.size else [removed, None]
        self._refused = False

    # ------------------------------------------------------------------ bus-bus switches
    @staticmethod
    def _link_switches(net: Any) -> np.ndarray | None:
        """Positions of the bus-bus switches compiled as links (None: pandapower fuses)."""
        df = net.switch
        if len(df) == 0 or "z_ohm" not in df.columns:
            return None
        et = df["et"].to_numpy().astype(str)
        bb = et == "b"
        if not bb.any():
            return None
        z = df["z_ohm"].to_numpy(dtype=float)
        if np.any(bb & (z > 0)):
            return None  # impedance switches keep pandapower's own switch branches
        on = net.bus.index.to_numpy()[net.bus["in_service"].to_numpy(dtype=bool)]
        bus = df["bus"].to_numpy(dtype=np.int64)
        elem = df["element"].to_numpy(dtype=np.int64)
        ok = bb & (bus != elem) & np.isin(bus, on) & np.isin(elem, on)
        pos = np.flatnonzero(ok)
        return pos if pos.size else None

    @staticmethod
    def _widening(net: Any) -> list[tuple[str, str, np.ndarray]]:
        """(table, column, positions) a widened compile sets True: out-of-service lines and
        trafos, open line / trafo switches (empty: the net is compiled as it is)."""
        out = []
        for table in ("line", "trafo"):
            df = net[table] if table in net else None
            if df is not None and len(df) and "in_service" in df.columns:
                pos = np.flatnonzero(~df["in_service"].to_numpy(dtype=bool))
                if pos.size:
                    out.append((table, "in_service", pos))
        sw = net.switch if "switch" in net else None
        if sw is not None and len(sw):
            et = sw["et"].to_numpy().astype(str)
            pos = np.flatnonzero(~sw["closed"].to_numpy(dtype=bool) & ((et == "l") | (et == "t")))
            if pos.size:
                out.append(("switch", "closed", pos))
        return out

    def _real_state(self, info: SimpleNamespace) -> tuple[frozenset[int], dict[int, int]]:
        """The compiled rows out of service and the switch-opened ends of the net's state."""
        svc: set[int] = set()
        for table in ("line", "trafo"):
            rows_of = info.rows.get(table)
            on = self._guard_values(table, "in_service")
            if rows_of is None or on is None or on.shape != rows_of.shape:
                continue
            off = rows_of[~on.astype(bool)]
            svc.update(int(r) for r in off[off >= 0].tolist())
        sw_open: dict[int, int] = {}
        sw = self._switch_data()
        if sw is not None:
            for r, mine in sw.switches_of_row.items():
                ends = 0
                for k, end in mine:
                    if sw.row_of_switch[k] >= 0 and not sw.closed[k]:
                        ends |= end
                if ends:
                    sw_open[r] = ends
        return frozenset(svc), sw_open

    def _real_start(
        self, ppci: dict, v0: np.ndarray, kind: np.ndarray, info: SimpleNamespace, warm: bool
    ) -> None:
        """The cold (DC) start of a widened compile, for the real state: the branches patched
        out carry no DC flow (those to cut-off buses stay: they keep the DC system regular)."""
        off_rows = sorted(self._out | frozenset(self._half))
        if not off_rows or self._net._options.get("init_va_degree") != "dc":
            return
        is_dead = np.zeros(self._n + 1, dtype=bool)
        is_dead[self._dead_aux] = True
        rows = np.asarray(off_rows, dtype=np.int64)
        rows = rows[~(is_dead[info.f[rows]] | is_dead[info.t[rows]])]
        vm, va = self._cold_start(ppci, v0, kind, off=rows)
        self._start = (vm.copy(), va.copy())
        if not warm:
            self._vm, self._va = vm, va

    def _link_rows(
        self, net: Any, ppci: dict, links: np.ndarray, links_at: Any, n: int
    ) -> SimpleNamespace | None:
        """Per linked switch: its compiled branch row (-1: not compiled) and end buses."""
        if links_at is None:
            return None
        start, end = int(links_at[0]), int(links_at[1])
        if end - start != links.shape[0]:
            return None
        branch_is = np.asarray(ppci["internal"]["branch_is"], dtype=bool)
        to_int = np.where(branch_is, np.cumsum(branch_is) - 1, -1)
        rows = to_int[start:end].astype(np.int64)
        br = ppci["branch"]
        if br.shape[0] == 0:  # nothing compiled (every branch out or cut off): no link either
            rows = np.full(rows.shape, -1, dtype=np.int64)
            a = b = rows.copy()
        else:
            a = np.where(rows >= 0, br[np.maximum(rows, 0), 0].real, -1).astype(np.int64)
            b = np.where(rows >= 0, br[np.maximum(rows, 0), 1].real, -1).astype(np.int64)
        closed = net.switch["closed"].to_numpy(dtype=bool)[links].copy()
        ok = rows >= 0
        nodes = np.unique(np.concatenate([a[ok], b[ok]]))
        return SimpleNamespace(sw=links, rows=rows, a=a, b=b, closed=closed, nodes=nodes)

    def _link_pattern(self, ybus: Any, link: SimpleNamespace, n: int) -> Any:
        """Ybus on the pattern of every fusion the links allow (None: too much fill)."""
        import scipy.sparse as sp
        from scipy.sparse.csgraph import connected_components

        ok = link.rows >= 0
        a, b = link.a[ok], link.b[ok]
        g = sp.coo_matrix((np.ones(a.shape[0]), (a, b)), shape=(n, n))
        ncomp, lab = connected_components(g, directed=False)
        cnt = np.bincount(lab, minlength=ncomp)
        grouped = cnt[lab] > 1
        idx = np.flatnonzero(grouped)
        c = sp.csr_matrix((np.ones(idx.shape[0]), (idx, lab[idx])), shape=(n, ncomp))
        m = (c @ c.T + sp.diags((~grouped).astype(float))).tocsr()
        pat = sp.csr_matrix((np.ones(ybus.nnz), ybus.indices, ybus.indptr), shape=(n, n))
        s = (m @ pat @ m).tocoo()
        if s.nnz > 3 * ybus.nnz + 64:
            _log.debug("bus-bus switch fusions would fill %d entries: pandapower fuses", s.nnz)
            return None
        coo = ybus.tocoo()
        rows = np.concatenate([coo.row, s.row])
        cols = np.concatenate([coo.col, s.col])
        data = np.concatenate([coo.data, np.zeros(s.nnz, dtype=complex)])
        out = sp.csr_matrix((data, (rows, cols)), shape=(n, n))
        out.sum_duplicates()
        out.sort_indices()
        rows_p = np.repeat(np.arange(n, dtype=np.int64), np.diff(out.indptr))
        cols_p = out.indices.astype(np.int64)
        touch = grouped[rows_p] | grouped[cols_p]
        link.keys = rows_p * n + cols_p
        link.entries = np.flatnonzero(touch)
        link.rows_e, link.cols_e = rows_p[touch], cols_p[touch]
        return out

    def _fusion_rep(self, out: frozenset[int]) -> np.ndarray | None:
        """Internal bus -> the bus it is fused into with links ``out`` open (None: two slacks).

        Each group of buses joined by closed links is solved at one member: a slack if it has
        one, else a PV bus, else the first bus (pandapower keeps the same kind of bus).
        Memoised per set of closed links (a breaker toggled back and forth).
        """
        link = self._link
        assert link is not None
        closed = tuple(k for k, r in enumerate(link.rows.tolist()) if r >= 0 and r not in out)
        cache = link.__dict__.setdefault("rep_cache", {})
        if closed in cache:
            return cache[closed]
        nodes = link.nodes
        if "prio" not in link.__dict__:
            # local node ids of the link ends, and each node's rank in (kind, bus) order
            link.la = np.searchsorted(nodes, link.a).tolist()
            link.lb = np.searchsorted(nodes, link.b).tolist()
            prio = np.empty(nodes.shape[0], dtype=np.int64)
            prio[np.lexsort((nodes, self._kind0[nodes]))] = np.arange(nodes.shape[0])
            link.prio = prio.tolist()
            link.slack = (self._kind0[nodes] == 0).tolist()
        parent = list(range(nodes.shape[0]))

        def find(x: int) -> int:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        prio, slack = link.prio, list(link.slack)
        for k in closed:
            x, y = find(link.la[k]), find(link.lb[k])
            if x == y:
                continue
            if slack[x] and slack[y]:
                cache[closed] = None  # two slacks fused into one: the slack set changes
                return None
            # the root is the member first in (kind, bus) order; it carries the group's slack
            if prio[y] < prio[x]:
                x, y = y, x
            parent[y] = x
            slack[x] = slack[x] or slack[y]
        rep = np.arange(self._n, dtype=np.int64)
        rep[nodes] = nodes[[find(x) for x in range(nodes.shape[0])]]
        if len(cache) >= 64:
            cache.clear()
        cache[closed] = rep
        return rep

    def _set_fusion(self, rep: np.ndarray) -> None:
        """Solve with the buses of closed bus-bus switches fused as ``rep`` maps them."""
        link = self._link
        assert link is not None
        nodes = link.nodes
        old = self._fuse
        if old is not None and np.array_equal(old.rep[nodes], rep[nodes]):
            return
        if old is None and np.array_equal(rep[nodes], nodes):
            return
        states = link.__dict__.setdefault("states", {})
        key = rep[nodes].tobytes()
        state = states.get(key)
        if state is not None:
            # a fusion seen before on this compile (its stepper too): nothing to build
            (self._fuse, self._gen_bus, self._rest_p, self._rest_q, self._groups_now,
             self._elem_bus, self._kind_fused, self._stepper) = state  # fmt: skip
            self._groups = self._groups_now
            self._gen_sums = None
            return
        base = link.base
        n = self._n
        if np.array_equal(rep[nodes], nodes):
            fz = None
            gen_bus, rest_p, rest_q = base.gen_bus, base.rest_p, base.rest_q
            groups, elem_bus, kind = base.groups, base.elem_bus, self._kind0
        else:
            members = nodes[rep[nodes] != nodes]

            def move(b: np.ndarray) -> np.ndarray:
                return np.ascontiguousarray(np.where(b >= 0, rep[np.maximum(b, 0)], -1))

            gen_bus = rep[base.gen_bus]
            rest_p = np.bincount(rep, weights=base.rest_p, minlength=n)
            rest_q = np.bincount(rep, weights=base.rest_q, minlength=n)
            groups = [(move(b), w, val) for b, w, val in base.groups]
            elem_bus = {t: move(b) for t, b in base.elem_bus.items()}
            kind = self._kind0.copy()
            kind[members] = 3
            # the Ybus entries of fused buses, moved onto the bus they are solved at
            tgt = np.searchsorted(link.keys, rep[link.rows_e] * n + rep[link.cols_e])
            fz = SimpleNamespace(
                rep=rep, members=members, of=rep[members], tgt=tgt, gen_bus=gen_bus,
                rest_p=rest_p, rest_q=rest_q, groups=groups,
            )  # fmt: skip
        self._fuse = fz
        self._gen_bus, self._rest_p, self._rest_q = gen_bus, rest_p, rest_q
        self._groups_now = self._groups = groups
        self._elem_bus = dict(elem_bus)
        self._kind_fused = kind
        if fz is None and "stepper0" in link.__dict__:
            self._stepper = link.stepper0  # the compile's own (unfused) stepper
        else:
            zeros = np.zeros(n)
            self._stepper = self._kernel.Stepper(
                self._plan, self._y_indptr, self._y_indices, self._y_re, self._y_im, kind,
                self._vset, zeros, zeros, groups, self._inv_base,
            )  # fmt: skip
        self._gen_sums = None
        if len(states) >= 16:
            states.clear()
        states[key] = (fz, gen_bus, rest_p, rest_q, groups, self._elem_bus, kind, self._stepper)

    def _fold(self, y: np.ndarray) -> None:
        """Ybus values of the unfused buses moved (in place) onto the buses they fuse into."""
        fz, link = self._fuse, self._link
        assert fz is not None and link is not None
        vals = y[link.entries]
        y[link.entries] = 0.0
        np.add.at(y, fz.tgt, vals)

    def _fused_ppci(self, ppci: dict) -> dict:
        """``ppci`` with gen and branch buses moved onto the buses they fuse into."""
        fz = self._fuse
        assert fz is not None
        out = dict(ppci)
        gen = out["gen"] = ppci["gen"].copy()
        gen[:, 0] = fz.rep[gen[:, 0].real.astype(np.int64)]
        br = out["branch"] = ppci["branch"].copy()
        for col in (0, 1):
            br[:, col] = fz.rep[br[:, col].real.astype(np.int64)]
        return out

    def _fused_elements(self, fz: SimpleNamespace, ppci: dict) -> dict[str, Any]:
        """The element result maps of a fused state (the compile's maps read these inputs)."""
        saved = (self._groups_now, self._rest_p, self._rest_q)
        self._groups_now, self._rest_p, self._rest_q = fz.groups, fz.rest_p, fz.rest_q
        try:
            return self._element_maps(ppci, None, self._n)
        finally:
            self._groups_now, self._rest_p, self._rest_q = saved

    # ------------------------------------------------------------------ topology patches
    def _patch_data(self) -> SimpleNamespace:
        """Per compiled branch: Ybus positions and admittances; per line / trafo: its row."""
        if self._patch_info is not None:
            return self._patch_info
        from pandapower.pypower.makeYbus import branch_vectors

        from twin import batch

        c = self._c_base
        br = c.ppci["branch"]
        f = br[:, 0].real.astype(np.int64)
        t = br[:, 1].real.astype(np.int64)
        ytt, yff, yft, ytf = branch_vectors(br, br.shape[0])
        pos = batch._ybus_positions(c, f, t)  # (4, rows)
        stamps = np.vstack([yff, yft, ytf, ytt])
        if self._link is not None:
            stamps[:, self._link.rows[self._link.rows >= 0]] = 0.0  # links carry no admittance
        branch_is = np.asarray(c.ppci["internal"]["branch_is"], dtype=bool)
        to_int = np.where(branch_is, np.cumsum(branch_is) - 1, -1)
        rows: dict[str, np.ndarray] = {}
        for table in ("line", "trafo"):
            rng = self._net._pd2ppc_lookups["branch"].get(table)
            if rng is not None and int(rng[1]) - int(rng[0]) == len(self._net[table]):
                rows[table] = to_int[int(rng[0]) : int(rng[1])]
        dead = batch._dead_sets(c, f, t, self._kind0)
        self._patch_info = SimpleNamespace(
            f=f, t=t, pos=pos, stamps=stamps, rows=rows, bridge_dead=dead
        )
        return self._patch_info

    def _cut_off(self, out: frozenset[int], info: SimpleNamespace) -> np.ndarray:
        """Compiled buses without a path to a slack once branches ``out`` are removed.

        Memoised per set. Against the compile's own removed set (its real state, when that
        cuts nothing off): a subset of it cuts nothing off either (fewer branches removed), and
        one branch more is a lookup in the bridges of the graph without that set.
        """
        if not out:
            return _NO_BUSES
        memo = self._cut_memo
        hit = memo.get(out)
        if hit is not None:
            return hit
        ref = self._cut_ref
        if ref is not None:
            base = ref[0]
            if out <= base:
                return _NO_BUSES
            if len(out) == len(base) + 1 and base < out:
                if ref[1] is None:
                    ref[1] = self._base_bridges(base, info)
                dead = ref[1].get(next(iter(out - base)))
                return _NO_BUSES if dead is None else np.asarray(dead, dtype=np.int64)
        dead = self._cut_off_all(out, info)
        dead.setflags(write=False)
        if len(memo) >= 256:
            memo.clear()
        memo[out] = dead
        return dead

    def _base_bridges(self, base: frozenset[int], info: SimpleNamespace) -> dict[int, Any]:
        """Per compiled branch row: the buses cut off when it is out besides rows ``base``."""
        from twin import batch

        if not base:
            return info.bridge_dead
        live = np.ones(info.f.shape[0], dtype=bool)
        live[list(base)] = False
        rows = np.flatnonzero(live)
        dead = batch._dead_sets(self._c_base, info.f[live], info.t[live], self._kind0)
        out = {}
        for e, d in dead.items():
            arr = np.asarray(d, dtype=np.int64)
            arr.setflags(write=False)
            out[int(rows[e])] = arr
        return out

    def _cut_off_all(self, out: frozenset[int], info: SimpleNamespace) -> np.ndarray:
        if len(out) == 1:
            dead = info.bridge_dead.get(next(iter(out)))
            return np.zeros(0, dtype=np.int64) if dead is None else np.array(dead, np.int64)
        import scipy.sparse as sp
        from scipy.sparse.csgraph import connected_components

        keep = np.ones(info.f.shape[0], dtype=bool)
        keep[list(out)] = False
        n = self._n
        g = sp.coo_matrix((np.ones(int(keep.sum())), (info.f[keep], info.t[keep])), shape=(n, n))
        _, comp = connected_components(g, directed=False)
        has_slack = np.zeros(int(comp.max()) + 1, dtype=bool)
        has_slack[comp[self._kind0 == 0]] = True
        return np.flatnonzero(~has_slack[comp])

    def _try_patch(self, table: str, pos: np.ndarray, new: np.ndarray) -> bool:
        """Branch in_service changes as Ybus patches on this compile (False: recompile instead).

        Branches of the compile (all of them when it was widened; a cut-off generator is not
        patched): no pandapower conversion, same pattern, same symbolic analysis.
        """
        info = self._patch_data()
        rows_of = info.rows.get(table)
        if rows_of is None:
            return False
        rows = rows_of[pos]
        if (rows < 0).any():
            return False
        out = set(self._svc_out)
        for r, on in zip(rows.tolist(), np.asarray(new, dtype=bool).tolist()):
            if on:
                out.discard(r)
            else:
                out.add(r)
        return self._apply_state(frozenset(out), self._sw_open, info)

    def _apply_state(
        self,
        svc_out: frozenset[int],
        sw_open: dict[int, int],
        info: SimpleNamespace,
        force: bool = False,
    ) -> bool:
        """Install the patch for rows out of service and switch-opened ends (False: not fit)."""
        out = set(svc_out)
        half: dict[int, int] = {}
        for r, ends in sw_open.items():
            if r in svc_out or not ends:
                continue
            if ends == 3:
                out.add(r)
            else:
                half[r] = ends
        new_out = frozenset(out)
        isolated = {r: e for r, e in sw_open.items() if e and r in new_out}
        old_isolated = {r: e for r, e in self._sw_open.items() if e and r in self._out}
        same = new_out == self._out and half == self._half and isolated == old_isolated
        if same and not force:
            self._svc_out, self._sw_open = svc_out, dict(sw_open)
            return True
        rep = None
        if self._link is not None:
            # closed bus-bus switches fuse their buses; open ones are links out of service
            rep = self._fusion_rep(new_out)
            if rep is None:
                self._refused = True
                return False
        cut = new_out | frozenset(half)
        dead = self._cut_off(cut, info)
        if dead.size and half:
            # an element opened at one end whose closed end is cut off is dead as a whole
            at_dead = np.zeros(self._n, dtype=bool)
            at_dead[dead] = True
            lost = [r for r, e in half.items() if at_dead[info.t[r] if e == 1 else info.f[r]]]
            if lost:
                half = {r: e for r, e in half.items() if r not in lost}
                new_out = new_out | frozenset(lost)
        # buses left without supply (auxiliary buses of open element switches, cut-off parts of
        # the grid) are solved as dead buses (kind 3): NaN, their loads at zero, as pandapower
        # drops them; a cut-off generator recompiles (pandapower turns it off)
        if dead.size:
            gen_bus = self._gen_bus if rep is None else rep[self._link.base.gen_bus]  # type: ignore[union-attr]
            is_dead = np.zeros(self._n + 1, dtype=bool)
            is_dead[dead] = True
            if is_dead[gen_bus[self._gen_on]].any():
                self._refused = True
                return False
        if rep is not None:
            self._set_fusion(rep)
        self._svc_out, self._sw_open = svc_out, dict(sw_open)
        self._half = half
        self._set_unsupplied(dead)
        if dead.size:
            kind = self._kind_fused.copy()
            kind[dead] = 3
            self._kind_run = kind
        else:
            self._kind_run = self._kind_fused
        old_dead = self._dead_aux
        same_dead = old_dead.shape == dead.shape and bool(np.all(old_dead == dead))
        back = dead[:0] if same_dead or not old_dead.size else np.setdiff1d(old_dead, dead)
        if dead.size and not same_dead:
            gone = np.setdiff1d(dead, old_dead) if old_dead.size else dead
            # their last live voltage, for when they are supplied again
            self._held_v[0][gone], self._held_v[1][gone] = self._vm[gone], self._va[gone]
        if back.size:
            # buses supplied again start from their last live voltage, else (dead since the
            # compile) from their live neighbours, not from zero
            vm, va = self._vm.copy(), self._va.copy()
            vm[back], va[back] = self._held_v[0][back], self._held_v[1][back]
            # a held voltage that is not a live one (dead since the compile, or zero from a
            # compile that had them cut off) starts cold: from V = 0 Newton can converge to the
            # spurious answer where a bus at 0 V takes any current (S = V I* = 0)
            held = vm[back]
            cold = back[~(np.isfinite(held) & (held > _LIVE_VM))]
            if cold.size:
                have = np.ones(self._n, dtype=bool)
                have[cold] = False
                if dead.size:
                    have[dead] = False
                vm[cold], va[cold] = 1.0, 0.0
                _fill_from_neighbours(vm, va, have, self._y_indptr, self._y_indices)
            self._vm, self._va = vm, va
        self._dead_aux = dead
        self._install_patch(new_out, info)
        return True

    def _set_unsupplied(self, dead: np.ndarray) -> None:
        """pandapower buses at dead compiled buses: NaN in results, named in the solution."""
        ib0, un0 = self._bus_int0, self._unsupplied0
        cut = None
        if dead.size and (self._bus_rep[dead] >= 0).any():  # not only auxiliary buses
            is_dead = np.zeros(self._n + 1, dtype=bool)
            is_dead[dead] = True
            cut = is_dead[ib0]  # ib0 == -1 reads the last entry: False
        if cut is None or not cut.any():
            if self._bus_int is not ib0:
                self._bus_int, self._unsupplied = ib0, un0
            return
        ib = ib0.copy()
        ib[cut] = -1
        new = self._net.bus.index.to_numpy()[cut]
        if new.tobytes() not in self._warned and len(self._warned) < 1024:
            self._warned.add(new.tobytes())  # once per set of cut-off buses and compile
            _log.warning(
                "%d in-service buses have no connection to a slack and are not solved (NaN): %s",
                new.size, _short_list(new),
            )  # fmt: skip
        self._bus_int = ib
        self._unsupplied = np.union1d(un0, new)

    @contextmanager
    def _dead_elements(self, c: Any) -> Iterator[None]:
        """pandapower's extraction sees the elements at dead buses of ``c`` as out of service."""
        dead = c.__dict__.get("dead")
        if dead is None or not dead.size:
            yield
            return
        net = self._net
        saved = net._is_elements
        iso = dict(saved)
        lk = self._bus_lookup
        for table in ("load", "sgen", "shunt", "ward", "xward", "storage", "motor"):
            arr = saved.get(table)
            if arr is None or table not in net or len(net[table]) != len(arr):
                continue
            b = net[table]["bus"].to_numpy(dtype=np.int64)
            ib = np.where(b < lk.shape[0], lk[np.minimum(b, lk.shape[0] - 1)], -1)
            iso[table] = np.asarray(arr, dtype=bool) & ~np.isin(ib, dead)
        net._is_elements = iso
        try:
            with np.errstate(invalid="ignore", divide="ignore"):  # currents at zero voltage
                yield
        finally:
            net._is_elements = saved

    def _try_switch(self, pos: np.ndarray, new: np.ndarray) -> bool:
        """Line / trafo switch changes as Ybus patches (False: recompile instead).

        An open element switch leaves the element connected at its other end only: pandapower
        puts an auxiliary bus at the open end; eliminating that bus gives the closed end the
        admittance ``y_cc - y_co y_oc / y_oo`` (none at all with both ends open). Patched for
        every element of a widened compile; otherwise only for elements all of whose switches
        were closed when the model was compiled (pandapower compiled the others' aux buses).
        """
        sw = self._switch_data()
        if sw is None:
            return False
        cand = sw.row_of_switch[pos]
        if np.any(cand < 0):
            return False  # a bus-bus switch, or an element not in the compile as closed
        state = sw.closed.copy()
        state[pos] = new
        sw_open = dict(self._sw_open)
        for r in set(cand.tolist()):
            mine = sw.switches_of_row[r]
            ends = 0
            for k, end in mine:
                if not state[k]:
                    ends |= end
            sw_open[r] = ends
        info = self._patch_data()
        if not self._apply_state(self._svc_out, sw_open, info):
            return False
        sw.closed = state
        return True

    def _switch_data(self) -> SimpleNamespace | None:
        """Per switch: the compiled branch row it can patch (-1: bus-bus or not patchable)."""
        if self._sw_info is not None:
            return self._sw_info
        net = self._net
        df = net.switch
        if len(df) == 0:
            return None
        info = self._patch_data()
        et = df["et"].to_numpy().astype(str)
        elem = df["element"].to_numpy(dtype=np.int64)
        bus = df["bus"].to_numpy(dtype=np.int64)
        # the states the model solves (the guard), not the net's (it may be edited behind its back)
        held = self._guard_values("switch", "closed")
        closed = (held if held is not None else df["closed"].to_numpy()).astype(bool)
        row_of_switch = np.full(len(df), -1, dtype=np.int64)
        switches_of_row: dict[int, list[tuple[int, int]]] = {}
        for code, table, ends in (("l", "line", ("from_bus", "to_bus")),
                                  ("t", "trafo", ("hv_bus", "lv_bus"))):  # fmt: skip
            rows_of = info.rows.get(table)
            ks = np.flatnonzero(et == code)
            if rows_of is None or not ks.size:
                continue
            tdf = net[table]
            p = tdf.index.get_indexer(elem[ks])
            for k, q in zip(ks.tolist(), p.tolist()):
                if q < 0 or rows_of[q] < 0:
                    continue
                at_bus = int(bus[k])
                f_bus, t_bus = tdf[ends[0]].iat[q], tdf[ends[1]].iat[q]
                side = 1 if at_bus == f_bus else 2 if at_bus == t_bus else 0
                if side == 0:
                    continue
                row_of_switch[k] = rows_of[q]
                switches_of_row.setdefault(int(rows_of[q]), []).append((k, side))
        # only elements whose switches were all closed at compile (no auxiliary bus compiled);
        # a widened compile closed every one of them
        for mine in switches_of_row.values() if not self._widened else ():
            if not all(closed[k] for k, _ in mine):
                for k, _ in mine:
                    row_of_switch[k] = -1
        link = self._link
        if link is not None:
            # a bus-bus switch is its link row: open = the row out (both ends), closed = fused
            for k, r in zip(link.sw.tolist(), link.rows.tolist()):
                if r >= 0:
                    row_of_switch[k] = r
                    switches_of_row[r] = [(k, 3)]
        self._sw_info = SimpleNamespace(
            row_of_switch=row_of_switch, switches_of_row=switches_of_row, closed=closed
        )
        return self._sw_info

    def _patched_values(
        self, out: frozenset[int], half: dict[int, int], info: SimpleNamespace
    ) -> tuple[np.ndarray, ...]:
        """Ybus values with rows ``out`` removed and the ``half`` rows opened at one end, plus
        per half-open row (sorted) the stamps it keeps (yff', 0, 0, 0 or 0, 0, 0, ytt') and the
        open end's voltage as a multiple of the closed end's. Memoised per state on ``info``
        (a breaker toggled back and forth; a tap change makes a new ``info``)."""
        fz = self._fuse
        key = (out, frozenset(half.items()), None if fz is None else fz.rep.tobytes())
        memo = info.__dict__.setdefault("y_memo", {})
        hit = memo.get(key)
        if hit is not None:
            return hit
        y_re0, y_im0 = self._y_base
        yre = y_re0.copy()
        yim = y_im0.copy()
        rows = np.asarray(sorted(out), dtype=np.int64)
        if rows.size:
            pos = info.pos[:, rows].reshape(-1)
            d = info.stamps[:, rows].reshape(-1)
            np.subtract.at(yre, pos, d.real)
            np.subtract.at(yim, pos, d.imag)
        hrows = np.asarray(sorted(half), dtype=np.int64)
        kept = np.zeros((4, hrows.shape[0]), dtype=complex)
        aux = np.zeros(hrows.shape[0], dtype=complex)
        if hrows.size:
            yff, yft, ytf, ytt = info.stamps[:, hrows]
            t_open = np.array([half[r] == 2 for r in hrows.tolist()])
            with np.errstate(divide="ignore", invalid="ignore"):
                kept[0] = np.where(t_open, yff - yft * ytf / ytt, 0)
                kept[3] = np.where(t_open, 0, ytt - ytf * yft / yff)
                aux = np.where(t_open, -ytf / ytt, -yft / yff)
            d = (kept - info.stamps[:, hrows]).reshape(-1)
            pos = info.pos[:, hrows].reshape(-1)
            np.add.at(yre, pos, d.real)
            np.add.at(yim, pos, d.imag)
        if fz is not None:
            self._fold(yre)
            self._fold(yim)
        got = (rows, yre, yim, hrows, kept, aux)  # shared by every install of this state
        if len(memo) >= 16 or yre.nbytes > (4 << 20):
            memo.clear()
        memo[key] = got
        return got

    def _install_patch(self, out: frozenset[int], info: SimpleNamespace) -> None:
        half = dict(self._half)
        rows, yre, yim, hrows, kept, aux = self._patched_values(out, half, info)
        # half-open row -> the stamps it keeps
        self._kept_half: dict[int, np.ndarray] = dict(zip(hrows.tolist(), kept.T))
        # rows out with switch-opened ends: those ends are isolated auxiliary buses (NaN)
        dead_ends = {r: e for r, e in self._sw_open.items() if e and r in out}
        dead_buses = self._dead_aux
        fz = self._fuse
        elem_bus = self._elem_bus
        self._y_re: np.ndarray = yre
        self._y_im: np.ndarray = yim
        self._stepper.set_y(yre, yim)  # same pattern, plan and injections: new values only
        c0 = self._c_base
        # ppci keeps BR_STATUS 1 (pypower's pfsoln refuses status 0): the zeroed Yf / Yt rows
        # give the patched-out branches zero flows, as pandapower reports for them
        ppci = c0.ppci
        n = self._n
        base = self._c_fields
        if base is None or base[0] is not c0:
            # the compile's fields once per compile, not on every toggle
            kept_fields = {
                k: v
                for k, v in vars(c0).items()
                if k not in ("branch", "element", "yf", "yt", "lazy")
            }
            base = self._c_fields = (c0, kept_fields)
        fields = dict(base[1])
        fields.update(ppci=ppci, y_re=yre, y_im=yim, dead=dead_buses)
        if hrows.size or dead_ends:
            # pandapower's auxiliary buses at switch-opened ends, for its own extraction
            t_open_h = np.array([half[r] == 2 for r in hrows.tolist()], dtype=bool)
            fields["open_ends"] = (hrows, t_open_h, aux, dict(dead_ends))
        if fz is not None:
            # solved on fused buses: gens, branches and injections at the buses they fuse into;
            # the unfused buses get their fused bus's voltage (_newton), so Yf / Yt flows hold
            ppci = self._fused_ppci(ppci)
            fields.update(
                ppci=ppci, gen_bus=fz.gen_bus, rest_p=fz.rest_p, rest_q=fz.rest_q,
                groups=[(b, w) for b, w, _ in fz.groups],
            )  # fmt: skip

        def lazy(name: str) -> Any:
            # built when a solution's results are first read, not on every toggle
            if name in ("yf", "yt"):
                y = (c0.yf if name == "yf" else c0.yt).tocsr(copy=True)
                for r in rows:
                    y.data[y.indptr[r] : y.indptr[r + 1]] = 0.0
                for k, r in enumerate(hrows.tolist()):
                    lo, hi = y.indptr[r], y.indptr[r + 1]
                    cols = y.indices[lo:hi]
                    a, b = (kept[0, k], kept[1, k]) if name == "yf" else (kept[2, k], kept[3, k])
                    y.data[lo:hi] = np.where(cols == info.f[r], a, b)
                return y
            if name == "branch":
                # the compile's maps with the patched-out branches' stamps zeroed (zero flows)
                maps = {}
                for table, m in c0.branch.items():
                    gone = np.isin(m.rows, rows)
                    part = np.flatnonzero(np.isin(m.rows, hrows))
                    stamps = m.stamps
                    fields = dict(vars(m))
                    if gone.any() or part.size:
                        stamps = stamps.copy()
                        stamps[:, gone] = 0.0
                    if part.size:
                        k = np.searchsorted(hrows, m.rows[part])
                        for j in range(4):
                            stamps[2 * j, part] = kept[j, k].real
                            stamps[2 * j + 1, part] = kept[j, k].imag
                        t_open = np.array([half[int(r)] == 2 for r in m.rows[part]])
                        fields["aux"] = (part, t_open, aux[k])
                    fields["stamps"] = stamps
                    iso = [
                        (j, dead_ends[int(r)]) for j, r in enumerate(m.rows) if int(r) in dead_ends
                    ]
                    at_dead_f = np.isin(m.fb, dead_buses)
                    at_dead_t = np.isin(m.tb, dead_buses)
                    if iso or at_dead_f.any() or at_dead_t.any():
                        fb, tb = m.fb.copy(), m.tb.copy()
                        for j, ends in iso:
                            if ends & 1:
                                fb[j] = n
                            if ends & 2:
                                tb[j] = n
                        fb[at_dead_f] = n  # a dead auxiliary bus: NaN voltage, like pandapower
                        tb[at_dead_t] = n
                        if part.size:
                            # a switch-opened end at a dead bus: the element still hangs from
                            # its live closed end (zero flow at the open end, its aux voltage)
                            t_open = np.array([half[int(r)] == 2 for r in m.rows[part]])
                            fo, to_ = part[~t_open], part[t_open]
                            fb[fo] = m.tb[fo]
                            tb[to_] = m.fb[to_]
                        fields["fb"], fields["tb"] = fb, tb
                    maps[table] = SimpleNamespace(**fields)
                return maps
            el = self._fused_elements(fz, ppci) if fz is not None else c0.element
            if dead_buses.size:
                # loads / sgens at dead buses: zero, as pandapower reports them
                el = dict(el)
                for table in ("load", "sgen"):
                    m = el.get(table)
                    if m is not None:
                        at = np.isin(elem_bus[table], dead_buses)
                        el[table] = SimpleNamespace(**{**vars(m), "factor": m.factor * ~at})
            return el  # gen results read the patched Ybus values (c.y_re / c.y_im)

        c = _Structure(lazy=lazy, **fields)
        self._c = c
        self._out = out
        self._last_snap = None
        self.patches += 1

    def _reinstall(self) -> None:
        """The current outage / switch patch again on new base values (a tap change): part of
        that change, not a patch of its own."""
        patches = self.patches
        self._install_patch(self._out, self._patch_data())
        self.patches = patches

    def _try_tap(self, pos: np.ndarray, new: np.ndarray) -> bool:
        """Trafo tap changes as new branch admittances on this compile (False: recompile).

        pandapower's own trafo parameter calculation gives the changed rows; their Ybus,
        Yf / Yt entries and ppci rows are replaced in copies (earlier solutions keep theirs).
        A trafo outside the compile (out of service) does not change the solve at all.
        """
        from pandapower.build_branch import _calc_branch_values_from_trafo_df
        from pandapower.pypower import idx_brch as ib
        from pandapower.pypower.makeYbus import branch_vectors

        net = self._net
        info = self._patch_data()
        rows_of = info.rows.get("trafo")
        compiled = self._guard_values("trafo", "tap_pos")
        if rows_of is None or compiled is None:
            return False
        df = net.trafo
        col = df.columns.get_loc("tap_pos")
        key_before = compiled.tobytes()
        old = compiled[pos].copy()  # as solved (restored into the net if this fails)
        if not self._write_guarded("trafo", "tap_pos", pos, new):
            df.iloc[pos, col] = new
        rows = rows_of[pos]
        sel = np.flatnonzero(rows >= 0)
        memo = self._tap_memo
        keys = [(int(q), float(v)) for q, v in zip(pos[sel].tolist(), new[sel].tolist())]
        try:
            if sel.size:
                if all(k in memo for k in keys):
                    vals = tuple(np.array([memo[k][j] for k in keys]) for j in range(8))
                else:
                    # a copy: pandapower writes into the frame it is given
                    sub = df.iloc[pos[sel]].copy()
                    vals = tuple(
                        np.asarray(v, dtype=float).reshape(-1)
                        for v in _calc_branch_values_from_trafo_df(net, self._ppc, sub)
                    )
                    for j, k in enumerate(keys):
                        memo[k] = tuple(float(v[j]) for v in vals)
                r, x, g, b, g_asym, b_asym, ratio, shift = vals
        except Exception as exc:  # anything pandapower's own conversion would rather do
            _log.debug("tap change not patched (%s): recompiling", exc)
            if not self._write_guarded("trafo", "tap_pos", pos, old):
                df.iloc[pos, col] = old
            return False
        if compiled.dtype == new.dtype:
            compiled[pos] = new  # the guard's record of what the model now solves
        else:
            self._guard_refresh("trafo", "tap_pos", keep_except=pos, compiled=compiled)
        if not sel.size:
            return True
        # every tap position of the compile seen before: its patched admittances as they were
        # (a controller stepping up and down costs a lookup, not a new patch)
        states = self._tap_states
        held = self._guard_values("trafo", "tap_pos")
        key = held.tobytes() if held is not None else None
        if key_before not in states and len(states) < 8:
            states[key_before] = (
                self._y_base, self._patch_info, self._ppci, self._c_base, self._y_pending
            )  # fmt: skip
        hit = states.get(key) if key is not None else None
        if hit is not None:
            self._y_base, self._patch_info, self._ppci, self._c_base, self._y_pending = hit
            self._c = self._c_base
            self._y_re, self._y_im = self._y_base
            if self._out or self._half or self._sw_open or self._fuse is not None:
                self._reinstall()
            else:
                self._stepper.set_y(self._y_re, self._y_im)
                self._last_snap = None
            self.patches += 1
            return True
        br_rows = rows[sel]
        c0 = self._c_base
        ppci = dict(c0.ppci)
        branch = ppci["branch"] = c0.ppci["branch"].copy()
        for column, v in ((ib.BR_R, r), (ib.BR_X, x), (ib.BR_G, g), (ib.BR_B, b),
                          (ib.BR_G_ASYM, g_asym), (ib.BR_B_ASYM, b_asym), (ib.TAP, ratio),
                          (ib.SHIFT, shift)):  # fmt: skip
            branch[br_rows, column] = v
        smemo = self._tap_stamps
        if all(k in smemo for k in keys):
            # the same taps again (a controller stepping up and down): the stamps as before
            ytt, yff, yft, ytf = (np.array([smemo[k][j] for k in keys]) for j in range(4))
        else:
            ytt, yff, yft, ytf = branch_vectors(branch[br_rows], br_rows.shape[0])
            for j, k in enumerate(keys):
                smemo[k] = (complex(ytt[j]), complex(yff[j]), complex(yft[j]), complex(ytf[j]))
        stamps_new = np.vstack([yff, yft, ytf, ytt])
        delta = stamps_new - info.stamps[:, br_rows]
        y_re0, y_im0 = self._y_base
        y_re0, y_im0 = y_re0.copy(), y_im0.copy()
        at = info.pos[:, br_rows].reshape(-1)
        np.add.at(y_re0, at, delta.real.reshape(-1))
        np.add.at(y_im0, at, delta.imag.reshape(-1))
        stamps = info.stamps.copy()
        stamps[:, br_rows] = stamps_new
        # Yf / Yt copies only when results are read: the compile's matrices plus every tap row
        # patched since (bounded by the trafo rows), never a chain of earlier patches
        yf0, yt0, pending = self._y_pending
        pending = dict(pending)
        for j, row in enumerate(br_rows.tolist()):
            pending[row] = (yff[j], yft[j], ytf[j], ytt[j])
        self._y_pending = (yf0, yt0, pending)
        f_bus = info.f
        built: dict[str, Any] = {}

        def matrices() -> tuple[Any, Any]:
            if not built:
                yf, yt = yf0.tocsr(copy=True), yt0.tocsr(copy=True)
                for row, (a_f, b_f, a_t, b_t) in pending.items():
                    for y, a, bb in ((yf, a_f, b_f), (yt, a_t, b_t)):
                        lo, hi = y.indptr[row], y.indptr[row + 1]
                        cols = y.indices[lo:hi]
                        y.data[lo:hi] = np.where(cols == f_bus[row], a, bb)
                built["yf"], built["yt"] = yf, yt
            return built["yf"], built["yt"]

        # new stamps: Ybus values memoised on the old ones do not carry over
        self._patch_info = SimpleNamespace(**{**vars(info), "stamps": stamps, "y_memo": {}})
        self._y_base = (y_re0, y_im0)
        self._ppci = ppci
        fields = {k: v for k, v in vars(c0).items() if k not in ("branch", "yf", "yt", "lazy")}
        fields.update(ppci=ppci, y_re=y_re0, y_im=y_im0)
        ppc, n = c0.ppc, self._n

        def lazy(name: str) -> Any:
            if name == "element":
                return c0.element  # not read yet on the structure patched before
            yf, yt = matrices()
            if name == "yf":
                return yf
            if name == "yt":
                return yt
            return self._branch_maps(ppc, ppci, n, yf, yt)  # "branch": on first result read

        self._c_base = _Structure(lazy=lazy, **fields)
        self._c = self._c_base
        self._y_re, self._y_im = y_re0, y_im0
        if self._out or self._half or self._sw_open or self._fuse is not None:
            self._reinstall()
        else:
            self._stepper.set_y(y_re0, y_im0)
            self._last_snap = None
        self.patches += 1
        if key is not None and len(states) < 8 and branch.nbytes < (16 << 20):
            states[key] = (y_re0, y_im0), self._patch_info, ppci, self._c_base, self._y_pending
        return True

    def _guard_refresh(
        self,
        table: str,
        column: str,
        keep_except: np.ndarray | None = None,
        compiled: np.ndarray | None = None,
    ) -> None:
        """Record the net's current column as compiled (after a change patched onto it).

        With ``keep_except``, only those positions are taken from the net (the column's dtype
        changed); the others keep ``compiled``, so an edit made behind the model's back there
        still differs and is found by the next full check.
        """
        for g in self._guard:
            if g[0] == table and g[1] == column:
                now = self._net[table][column].to_numpy().copy()
                if keep_except is not None and compiled is not None:
                    keep = np.ones(now.shape[0], dtype=bool)
                    keep[keep_except] = False
                    try:
                        if now.shape != compiled.shape:
                            raise ValueError("shape")
                        now[keep] = compiled[keep]
                    except (ValueError, TypeError):
                        return  # left as compiled: the next full check recompiles
                g[5] = now
                g[2] = g[3] = g[4] = None
                del g[6:]

    def _make_guard(self, net: Any) -> list[list[Any]]:
        """Per guarded column: [table, column, frame, blocks, view or None, compiled values]."""
        guard = []
        for table, column in _GUARDED:
            df = net.get(table) if table in net else None
            if df is None or column not in df.columns or len(df) == 0:
                continue  # an empty table: its length is guarded below (rows added: stale)
            values = df[column].to_numpy().copy()
            guard.append([table, column, None, None, None, values])
        # lengths of the other tables (a guarded column covers its own table's length)
        covered = {g[0] for g in guard}
        # [table, length, frame, index]: the same frame with the same (immutable) index object
        # has the same length, so the check is two identity tests
        self._guard_sizes = [
            [t, len(net[t]), net[t], net[t].index]
            for t in _RES_TABLES
            if t in net and t not in covered
        ]
        return guard

    def _guard_stale(self) -> bool:
        """Whether a guarded net column (or a table's length) differs from what was compiled.

        A cached read-only view of the column's block makes the check a few microseconds
        while pandas keeps the frame's blocks; otherwise the column is read again.
        """
        net = self._net
        for g in self._guard:
            df = net[g[0]]
            view = g[4]
            blocks = df._mgr.blocks
            if view is None or g[2] is not df or g[3] is not blocks:
                try:
                    view = df[g[1]].to_numpy()
                except KeyError:
                    return True
                g[2], g[3], g[4] = df, blocks, view
            compiled = g[5]
            # bytes, not values: NaN tap positions compare equal, any dtype change is stale
            if view.dtype != compiled.dtype or view.tobytes() != compiled.tobytes():
                return True
        for entry in self._guard_sizes:
            df = net[entry[0]]
            if df is entry[2] and df.index is entry[3]:
                continue
            if len(df.index) != entry[1]:
                return True
            entry[2], entry[3] = df, df.index
        return False

    def _guard_view(self, table: str, column: str) -> np.ndarray | None:
        """The net's current ``table.column`` as the guard caches it (refreshed when pandas
        replaced the frame or its blocks); None when the column is gone."""
        for g in self._guard:
            if g[0] != table or g[1] != column:
                continue
            df = self._net[table]
            blocks = df._mgr.blocks
            if g[4] is None or g[2] is not df or g[3] is not blocks:
                try:
                    g[4] = df[column].to_numpy()
                except KeyError:
                    return None
                g[2], g[3] = df, blocks
            return g[4]
        return None

    def _write_guarded(self, table: str, column: str, pos: np.ndarray, new: np.ndarray) -> bool:
        """Write a bool / float column through the guard's view of the frame's block (no pandas).

        False when pandas gives no writable view of its own block (the caller uses iloc).
        """
        for g in self._guard:
            if g[0] != table or g[1] != column:
                continue
            view = g[4]
            if view is None or not view.flags.writeable:
                return False
            if not (view.dtype == new.dtype and view.dtype.kind in "bf"):
                return False  # booleans and float tap positions only: nothing to convert
            if len(g) < 7 or g[6] is not g[3]:
                # once per block layout: is the view the block's memory (not a copy)?
                shares = any(np.shares_memory(view, b.values) for b in (g[3] or ()))
                g[6:] = [g[3], shares]
            if not g[7]:
                return False
            view[pos] = new
            return True
        return False

    def _guard_values(self, table: str, column: str) -> np.ndarray | None:
        for g in self._guard:
            if g[0] == table and g[1] == column:
                return g[5]
        return None

    def _cold_start(
        self, ppci: dict, v0: np.ndarray, kind: np.ndarray, off: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """pandapower's start for this compile: set-point magnitudes, DC angles when asked.

        ``off``: compiled branch rows left out of the DC run (patched out of a widened compile).
        """
        vm, va = np.abs(v0).astype(float), np.angle(v0).astype(float)
        if self._net._options.get("init_va_degree") == "dc":
            dc = _copy_ppc(ppci)
            link = self._link
            if link is not None:
                dc["branch"][link.rows[(link.rows >= 0) & ~link.closed], 10] = 0  # BR_STATUS
            if off is not None and off.size:
                dc["branch"][off, 10] = 0
            try:
                dc = self._pp["dc"](dc)
                va = np.deg2rad(dc["bus"][:, 8].astype(float))  # VA column
            except Exception as exc:  # a DC start is an optimisation, flat start still works
                _log.warning("DC initialisation failed (%s); using a flat start", exc)
        vm[kind != 2] = self._vset[kind != 2]
        return vm, va

    @staticmethod
    def _unsupplied_buses(net: Any, ib: np.ndarray) -> np.ndarray:
        """pandapower indices of in-service buses left out of the solve (no path to a slack)."""
        on = net.bus["in_service"].to_numpy(dtype=bool)
        return net.bus.index.to_numpy()[on & (ib < 0)]

    # (compiled structure, its result plan): the last structure results were read on
    _rplan: tuple[Any, tuple[Any, dict, dict, list]] | None = None

    def _branch_maps(self, ppc: dict, ppci: dict, n: int, yf: Any, yt: Any) -> dict[str, Any]:
        """Per line / trafo: the Yf / Yt rows of its solved branches, end buses, ratings."""
        net = self._net
        if net._options.get("trafo_loading", "current") != "current":
            return {}
        branch_is = np.asarray(ppci["internal"]["branch_is"], dtype=bool)
        to_int = np.where(branch_is, np.cumsum(branch_is) - 1, -1)
        base_kv = ppc["bus"][:, 9].real  # BASE_KV
        yf, yt = yf.tocsr(), yt.tocsr()
        maps: dict[str, Any] = {}
        for table in ("line", "trafo"):
            rng = net._pd2ppc_lookups["branch"].get(table)
            if rng is None or len(net[table]) == 0:
                continue
            f, t = int(rng[0]), int(rng[1])
            if t - f != len(net[table]):
                continue  # unexpected layout: pandapower's own extraction is used instead
            fb = ppc["branch"][f:t, 0].real.astype(np.int64)
            tb = ppc["branch"][f:t, 1].real.astype(np.int64)
            df = net[table]
            if table == "line":
                rating = df["max_i_ka"].to_numpy(float) * df["df"].to_numpy(float)
                rating = rating * df["parallel"].to_numpy(float)
                extra: tuple[np.ndarray, ...] = (rating,)
            else:
                extra = (
                    df["vn_hv_kv"].to_numpy(float),
                    df["vn_lv_kv"].to_numpy(float),
                    df["sn_mva"].to_numpy(float),
                    df["parallel"].to_numpy(float) * df["df"].to_numpy(float),
                )
            rows = to_int[f:t]
            ok = np.flatnonzero(rows >= 0)
            nb = t - f
            # per branch: yff, yft, ytf, ytt (the entries of its Yf / Yt rows), zero when the
            # branch is not solved; the kernel's branch_results reads them
            stamps = np.zeros((8, nb))
            for k, y in enumerate((yf, yt)):
                if not ok.size:
                    break
                sub = y[rows[ok]].tocoo()
                at = ok[sub.row]
                first = sub.col == fb[at]  # the entry at the from bus, else at the to bus
                for j, sel in enumerate((first, ~first)):
                    np.add.at(stamps[4 * k + 2 * j], at[sel], sub.data[sel].real)
                    np.add.at(stamps[4 * k + 2 * j + 1], at[sel], sub.data[sel].imag)
            scale = np.empty((5, nb))
            scale[0], scale[1] = base_kv[fb], base_kv[tb]
            with np.errstate(divide="ignore"):
                if table == "line":
                    scale[2] = scale[3] = 1.0
                    scale[4] = np.where(extra[0] != 0, 100.0 / extra[0], np.inf)
                else:
                    vn_hv, vn_lv, sn, par_df = extra
                    scale[2], scale[3] = vn_hv, vn_lv
                    scale[4] = np.sqrt(3) / sn * 100.0 / par_df
            maps[table] = SimpleNamespace(
                rows=rows, fb=np.ascontiguousarray(fb), tb=np.ascontiguousarray(tb),
                stamps=stamps, scale=scale,
            )  # fmt: skip
        return maps

    def _element_maps(self, ppci: dict, ybus: Any, n: int) -> dict[str, Any]:
        """What ext_grid, gen, load and sgen results need, resolved once per compile.

        A table left out here (or a column left out of its entry) goes through pandapower's
        own extraction: voltage-dependent loads, controllable (OPF) elements, clipped sgen Q,
        an in-service gen without an internal row.
        """
        net = self._net
        is_el = net._is_elements
        opts = net._options
        out: dict[str, Any] = {}
        for table in ("load", "sgen"):
            df = net[table]
            if len(df) == 0 or f"{table}_controllable" in is_el:
                continue
            if table == "load" and any(
                col in df and np.any(df[col].to_numpy(dtype=float) != 0)
                for col in ("const_z_p_percent", "const_z_q_percent", "const_i_p_percent",
                            "const_i_q_percent")
            ):  # fmt: skip
                continue  # pandapower reports these with the voltage-dependent share
            cols = ["p_mw", "q_mvar"]
            if table == "sgen" and (opts.get("enforce_q_lims") or opts.get("enforce_p_lims")):
                cols = [] if opts.get("enforce_p_lims") else ["p_mw"]
            if not cols:
                continue
            out[table] = SimpleNamespace(
                scaling=df["scaling"].to_numpy(dtype=float),
                on=np.asarray(is_el[table], dtype=bool),
                factor=df["scaling"].to_numpy(dtype=float) * np.asarray(is_el[table], dtype=bool),
                base={col: df[col].to_numpy(dtype=float).copy() for col in cols},
            )
        gen = ppci["gen"]
        eg_on = np.asarray(is_el.get("ext_grid", np.zeros(0, dtype=bool)), dtype=bool)
        g_on = np.asarray(is_el.get("gen", np.zeros(0, dtype=bool)), dtype=bool)
        eg_rows = self._gen_rows["ext_grid"]
        g_rows = self._gen_rows["gen"]
        g_bus = self._elem_bus["gen"]
        usable = (
            not opts.get("distributed_slack")
            and eg_on.shape[0] == len(net.ext_grid)
            and g_on.shape[0] == len(net.gen)
            and not np.any(eg_rows[eg_on] < 0)
            and not np.any(g_rows[g_on] < 0)
            and not np.any(g_bus[g_on] < 0)
        )
        if usable and gen.shape[0]:
            on = np.flatnonzero(gen[:, 7].real > 0)  # GEN_STATUS
            gbus = gen[on, 0].real.astype(np.int64)  # GEN_BUS
            qmax = gen[on, 3].real.astype(float)
            qmin = gen[on, 4].real.astype(float)
            split = None
            if on.size > 1:
                ngg = np.bincount(gbus, minlength=n)[gbus].astype(float)
                qgmin = np.bincount(gbus, weights=qmin, minlength=n)
                qgmax = np.bincount(gbus, weights=qmax, minlength=n)
                same = qgmin[gbus] == qgmax[gbus]  # no reactive range: the equal split stays
                split = (ngg, qgmin[gbus], qgmax[gbus] - qgmin[gbus] + _EPS, qmax - qmin, same)
            rows = np.unique(np.concatenate([gbus, np.asarray(self._ref, dtype=np.int64)]))
            slack: list[tuple[int, int, np.ndarray, Any, Any, Any]] = []
            for ref_bus in np.asarray(self._ref, dtype=np.int64):
                # pypower's _update_p uses positions in `on` as gen rows; so do we
                at = np.flatnonzero(gbus == ref_bus)
                if at.size == 0:
                    continue  # a ref bus without a gen (xward): only res_bus changes
                pos = int(np.searchsorted(rows, ref_bus))
                if at.size == 1:
                    slack.append((int(ref_bus), pos, at, None, None, None))
                    continue
                ext = np.intersect1d(at, self._ref_gens)
                pvg = np.setdiff1d(at, ext)
                w = gen[ext, _SL_FAC].real.astype(float)
                slack.append((int(ref_bus), pos, at, ext, pvg, w))
            demand = []
            for key, (b, w, _val) in zip(_GROUPS, self._groups_now):
                idx = np.flatnonzero((b >= 0) & np.isin(b, rows))
                if idx.size:  # only the groups with an element at a gen / ref bus
                    # as CSR over the gen-bus rows: the kernel's rows_add sums each row
                    at = np.searchsorted(rows, b[idx])
                    order = np.argsort(at, kind="stable")
                    ptr = np.zeros(rows.size + 1, dtype=np.int64)
                    np.cumsum(np.bincount(at, minlength=rows.size), out=ptr[1:])
                    demand.append((
                        key, key[1] == "p_mw", ptr, idx[order].astype(np.int64),
                        np.ascontiguousarray(w[idx][order], dtype=float),
                    ))  # fmt: skip
            # the reactive split as one affine map of the bus total: pypower's
            # qmin + (qtot - qgmin) / qrange * qspan, qtot the bus Q (each of the ngg gens there
            # carries q / ngg); equal split where the bus has no reactive range
            q_a, q_b = np.ones(on.size), np.zeros(on.size)
            if split is not None:
                ngg, qgmin_b, qrange, qspan, same = split
                q_a = qspan / qrange
                q_b = qmin - qgmin_b * q_a
                q_a[same] = 1.0 / ngg[same]
                q_b[same] = 0.0
            # the slack list as CSR arrays for the kernel (Results): per ref bus its position
            # in rows, whether one gen takes the bus P, its slack gens (weights), other gens
            s_pos: list[int] = []
            s_single: list[bool] = []
            e_idx: list[int] = []
            e_w: list[float] = []
            p_idx: list[int] = []
            e_ptr, p_ptr = [0], [0]
            for _ref_bus, pos, at, ext, pvg, w in slack:
                s_pos.append(pos)
                s_single.append(ext is None)
                if ext is None:
                    e_idx.append(int(at[0]))
                    e_w.append(1.0)
                else:
                    e_idx.extend(int(x) for x in ext)
                    e_w.extend(float(x) for x in w)
                    p_idx.extend(int(x) for x in pvg)
                e_ptr.append(len(e_idx))
                p_ptr.append(len(p_idx))
            by_key = {key: (ptr, idx, w) for key, _is_p, ptr, idx, w in demand}
            empty = (np.zeros(rows.size + 1, dtype=np.int64), _NO_BUSES, _NO_VALUES)
            i64 = partial(np.asarray, dtype=np.int64)
            out["gen_rows"] = SimpleNamespace(
                q_a=q_a, q_b=q_b, rest_p=self._rest_p[rows], rest_q=self._rest_q[rows],
                ng=gen.shape[0], on=i64(on),
                rows=np.ascontiguousarray(rows, dtype=np.int64),
                gpos=np.searchsorted(rows, gbus).astype(np.int64),
                demand=[by_key.get(key, empty) for key in _GROUPS],
                slack=(i64(s_pos), np.asarray(s_single, dtype=np.int8), i64(e_ptr), i64(e_idx),
                       np.asarray(e_w, dtype=float), i64(p_ptr), i64(p_idx)),
                eg_src=i64(np.where(eg_on, eg_rows, -1)), g_src=i64(np.where(g_on, g_rows, -1)),
                g_bus=i64(np.where(g_on, g_bus, -1)),
            )  # fmt: skip
        return out

    def _result_plan(self, c: Any, n_load: int, n_sgen: int) -> tuple[Any, dict, dict, list]:
        """The kernel's Results for compiled structure ``c`` with its buffer layouts: all
        native tables, and those a Q-limited solution keeps native (load, sgen); plus the
        switch-opened branch ends whose voltages are fixed after the kernel call."""
        element = c.element
        branch = c.branch
        gen = element.get("gen_rows")
        load, sgen = element.get("load"), element.get("sgen")
        line, trafo = branch.get("line"), branch.get("trafo")
        plan = self._kernel.Results(
            c.n, c.base_mva, c.y_indptr, c.y_indices, c.y_re, c.y_im,
            None if line is None else (line.fb, line.tb, line.stamps, line.scale),
            None if trafo is None else (trafo.fb, trafo.tb, trafo.stamps, trafo.scale),
            gen, None if load is None else load.factor, None if sgen is None else sgen.factor,
            n_load, n_sgen,
        )  # fmt: skip
        offsets = plan.offsets

        def columns(section: str, names: Sequence[str], keep: Any = None) -> dict[str, Span]:
            start, _rows, length = offsets[section]
            return {
                name: (start + k * length, start + (k + 1) * length)
                for k, name in enumerate(names)
                if name and (keep is None or name in keep)
            }

        limited: dict[str, dict[str, Span]] = {}
        for table, m in (("load", load), ("sgen", sgen)):
            if m is not None:
                limited[table] = columns(table, ("p_mw", "q_mvar"), m.base)
        full = dict(limited)
        if line is not None:
            full["line"] = columns("line", _LINE_NAMES)
        if trafo is not None:
            full["trafo"] = columns("trafo", _TRAFO_NAMES)
        if gen is not None:
            full["ext_grid"] = columns("ext_grid", ("p_mw", "q_mvar"))
            full["gen"] = columns("gen", ("p_mw", "q_mvar", "vm_pu", "va_degree"))
        aux = []
        for table, m in (("line", line), ("trafo", trafo)):
            if m is not None and getattr(m, "aux", None) is not None:
                aux.append((offsets[table][0], m.fb.shape[0], m, m.aux))
        return plan, full, limited, aux

    def _native_results(self, snap: dict[str, Any]) -> tuple[np.ndarray, dict, Any] | None:
        """Every natively computed result table of a snapshot: (buffer, column layout)."""
        c = snap["c"]
        inp = snap["inputs"]
        rp = self._rplan
        if rp is None or rp[0] is not c:
            rp = self._rplan = (c, self._result_plan(c, len(inp[_LP]), len(inp[_SP])))
        plan, full, limited, aux = rp[1]
        buf = plan.compute(
            snap["vm"], snap["va"], snap["gen_pg"], inp[_LP], inp[_SP], inp[_LQ], inp[_SQ]
        )
        if aux:
            start, _rows, n = plan.offsets["polar"]
            vre, vim = buf[start : start + n], buf[start + n : start + 2 * n]
            for off, rows, m, (part, t_open, coef) in aux:
                # an end opened by a switch reports pandapower's auxiliary bus voltage there
                out = buf[off : off + 14 * rows].reshape(14, rows)
                closed = np.where(t_open, m.fb[part], m.tb[part])
                v = coef * (vre[closed] + 1j * vim[closed])
                vm_row = np.where(t_open, 12, 10)
                out[vm_row, part] = np.abs(v)
                out[vm_row + 1, part] = np.rad2deg(np.angle(v))
        return buf, (limited if snap["limited"].size else full), self._kernel.take

    def _gen_row_map(self) -> dict[str, np.ndarray]:
        """pandapower gen / ext_grid index order -> internal gen row (-1 when not in service)."""
        gen_is = self._ppci["internal"]["gen_is"]
        ppc_to_ppci = np.where(gen_is, np.cumsum(gen_is) - 1, -1)
        out = {}
        for table in ("gen", "ext_grid"):
            df = self.net[table]
            lk = np.asarray(self.net._pd2ppc_lookups.get(table, []), dtype=np.int64)
            if len(df) == 0 or lk.size == 0:
                out[table] = np.full(len(df), -1, dtype=np.int64)
                continue
            idx = df.index.to_numpy()
            rows = np.where(idx < lk.shape[0], lk[np.minimum(idx, lk.shape[0] - 1)], -1)
            ok = (rows >= 0) & (rows < gen_is.shape[0])
            out[table] = np.where(ok, ppc_to_ppci[np.where(ok, rows, 0)], -1)
        return out

    def _element_bus(self, table: str) -> np.ndarray:
        df = self.net[table]
        if len(df) == 0:
            return np.zeros(0, dtype=np.int64)
        b = df["bus"].to_numpy(dtype=np.int64)
        lk = self._bus_lookup
        ib = np.where(b < lk.shape[0], lk[np.minimum(b, lk.shape[0] - 1)], -1)
        return np.where((ib >= 0) & (ib < self._n), ib, -1)

    def _install_ybus(self, ybus) -> None:
        kind = self._kind0
        old = self._ybus_key
        if (
            self._plan is not None
            and old is not None
            and old[2].shape == kind.shape
            and np.array_equal(old[2] == 0, kind == 0)
        ):
            indptr_o, indices_o = old[0], old[1]
            if np.array_equal(indptr_o, ybus.indptr) and np.array_equal(indices_o, ybus.indices):
                self._set_y(indptr_o, indices_o, ybus.data)
                return
            n = self._n
            rows_n = np.repeat(np.arange(n), np.diff(ybus.indptr))
            rows_o = np.repeat(np.arange(n), np.diff(indptr_o))
            keys_o = rows_o * n + indices_o
            keys_n = rows_n * n + ybus.indices
            pos = np.searchsorted(keys_o, keys_n)
            pos = np.minimum(pos, keys_o.shape[0] - 1)
            if np.array_equal(keys_o[pos], keys_n):
                data = np.zeros(indices_o.shape[0], dtype=complex)
                data[pos] = ybus.data
                self._set_y(indptr_o, indices_o, data)
                _log.debug("topology change fits the compiled pattern: symbolic analysis kept")
                return
        indptr = ybus.indptr.astype(np.int32)
        indices = ybus.indices.astype(np.int32)
        self._plan = self._kernel.analyse(indptr, indices, kind)
        self.analyses += 1
        self._ybus_key = (indptr, indices, kind.copy())
        self._set_y(indptr, indices, ybus.data)

    def _set_y(self, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray) -> None:
        self._y_indptr = np.ascontiguousarray(indptr, dtype=np.int32)
        self._y_indices = np.ascontiguousarray(indices, dtype=np.int32)
        self._y_re = np.ascontiguousarray(data.real, dtype=float)
        self._y_im = np.ascontiguousarray(data.imag, dtype=float)

    # ------------------------------------------------------------------ inputs
    @property
    def net(self) -> Any:
        """The pandapower net, with every input given to :meth:`update` written into it."""
        if self._dirty:
            for table, column in self._dirty:
                self._net[table][column] = self._inp[(table, column)].copy()
            self._dirty.clear()
        return self._net

    def _write_through(
        self, table: str, column: str, pos: np.ndarray | slice, new: np.ndarray
    ) -> None:
        """Write into the DataFrame's own float block when pandas gives a writable view."""
        key = (table, column)
        if key not in self._dirty:
            df = self._net[table]
            cached = self._views.get(key)
            try:
                # a cached view stays valid while the frame keeps the same blocks
                if cached is not None and cached[1] is df and cached[2] is df._mgr.blocks:
                    cached[0][pos] = new
                    return
                view = df[column].to_numpy()
                if view.dtype == np.float64 and view.flags.writeable:
                    view[pos] = new
                    self._views[key] = (view, df, df._mgr.blocks)
                    return
            except AttributeError:  # pandas without block managers: no cached view
                view = df[column].to_numpy()
                if view.dtype == np.float64 and view.flags.writeable:
                    view[pos] = new
                    return
        # copy-on-write pandas or a non-float column: written when model.net is next read
        self._dirty.add(key)

    def _input(self, table: str, column: str) -> np.ndarray:
        arr = self._inp.get((table, column))
        if arr is None:
            arr = self._net[table][column].to_numpy(dtype=float).copy()
            self._inp[(table, column)] = arr
        return arr

    def _check_table(self, table: str, column: str) -> None:
        if (table, column) not in _UPDATABLE_SET:
            allowed = ", ".join(f"{t}.{c}" for t, c in UPDATABLE)
            raise InvalidInput(table, column, None, f"{table}.{column}", f"one of {allowed}")

    def _positions(self, table: str, column: str, index: Sequence[int] | None) -> np.ndarray:
        if index is None:
            pos = self._all_pos.get(table)
            if pos is None:
                pos = self._all_pos[table] = np.arange(len(self._net[table]))
            return pos
        df = self._net[table]
        idx = np.atleast_1d(np.asarray(index))
        if idx.dtype.kind not in "iu":
            pos = np.full(idx.shape, -1)
        elif idx.shape[0] <= 8:
            # a few elements (a breaker, an outage): a dict per pandas Index object, which
            # pandas replaces (never changes in place) when rows are added or relabelled
            cached = self._pos_cache.get(table)
            if cached is None or cached[0] is not df.index:
                labels = df.index
                lookup = (
                    {int(k): i for i, k in enumerate(labels.tolist())}
                    if labels.is_unique and labels.dtype.kind in "iu"
                    else None
                )
                cached = self._pos_cache[table] = (labels, lookup)
            lookup = cached[1]
            if lookup is None:
                pos = df.index.get_indexer(idx)
            else:
                pos = np.array([lookup.get(k, -1) for k in idx.tolist()], dtype=np.int64)
        else:
            pos = df.index.get_indexer(idx)
        if (pos < 0).any():
            bad = idx[pos < 0][0]
            known = list(df.index[:20])
            raise InvalidInput(table, column, bad, bad, f"an index of net.{table} such as {known}")
        return pos

    def update(
        self,
        table: str,
        column: str,
        values: Any,
        index: Sequence[int] | None = None,
    ) -> None:
        """Set input ``net.<table>.<column>`` for elements ``index`` (None = all, table order).

        Raises:
            InvalidInput: unknown table/column/element, wrong length, NaN or inf; nothing changes.
        """
        if index is None:
            fast = self._fast.get((table, column))
            if (
                fast is not None
                and type(values) is np.ndarray
                and values.dtype is _F64
                and values.shape == fast.shape
                # copied only when every value is finite; otherwise nothing is written and the
                # checked path below names the offending element
                and self._copy_if_finite(values, fast)
            ):
                # the hot path: a full float vector of a load / sgen input
                key = (table, column)
                self._changed.add(key)
                df = self._net[table]
                view = self._views.get(key)
                # the frame's own float block, while the frame keeps its blocks (_write_through)
                if view is not None and view[1] is df and view[2] is df._mgr.blocks:
                    if key not in self._dirty:
                        view[0][:] = fast
                    return
                self._write_through(table, column, _ALL, fast)
                return
        self._check_table(table, column)
        pos = self._positions(table, column, index)
        df = self._net[table]
        vals = np.asarray(values)
        if vals.ndim == 0:
            vals = vals.reshape(1)
        if vals.shape[0] == 1 and pos.shape[0] != 1:
            vals = np.repeat(vals, pos.shape[0])
        if vals.ndim != 1 or vals.shape[0] != pos.shape[0]:
            raise InvalidInput(
                table, column, None, f"{vals.shape[0]} values", f"{pos.shape[0]} values"
            )
        if (table, column) in _BOOL_COLUMNS and vals.dtype == np.bool_:
            newv: np.ndarray = vals  # already True/False: nothing to check
        elif (table, column) in _BOOL_COLUMNS:
            if vals.dtype.kind not in "biuf":
                raise InvalidInput(table, column, None, vals.dtype, "booleans")
            fv = vals.astype(float)
            bad = ~np.isfinite(fv) | ((fv != 0) & (fv != 1))
            if np.any(bad):
                raise InvalidInput(table, column, df.index[pos[bad][0]], vals[bad][0], "True/False")
            newv = fv.astype(bool)
        else:
            try:
                fv = vals.astype(float)
            except (TypeError, ValueError):
                raise InvalidInput(table, column, None, vals, "numbers") from None
            bad = ~np.isfinite(fv)
            if np.any(bad):
                raise InvalidInput(
                    table, column, df.index[pos[bad][0]], fv[bad][0], "a finite number"
                )
            if column == "tap_pos":
                if np.any(fv != np.round(fv)):
                    raise InvalidInput(table, column, df.index[pos[0]], fv, "integer tap positions")
            if column == "vm_pu" and np.any(fv <= 0):
                raise InvalidInput(table, column, df.index[pos[fv <= 0][0]], fv, "vm_pu > 0")
            newv = fv
        if (table, column) in _TOPOLOGY:
            df = self.net[table]  # flushed: the recompile reads every input from the net
            compiled = self._guard_values(table, column)
            # the guard holds what the model solves. The change is made on it (and written into
            # the net) when this column still has the compiled shape; any other edit made to
            # the net behind the model's back is found by solve()'s full check, which compares
            # the net with the guard after this change (one full check per toggle, not two)
            gview = self._guard_view(table, column) if compiled is not None else None
            fresh = (
                gview is not None
                and compiled is not None
                and gview.shape == compiled.shape
                and gview.dtype == compiled.dtype
            )
            if fresh and compiled is not None and _same_values(compiled[pos], newv):
                assert gview is not None
                if _same_values(gview[pos], newv):
                    return  # unchanged: a sync loop may resend the same status every step
                if self._write_guarded(table, column, pos, newv):
                    return  # the net was edited behind the model's back: now as asked
                fresh = False
            if fresh and column == "tap_pos" and self._try_tap(pos, newv):
                return
            # the switch states as compiled are read before the net is written below
            if (
                fresh
                and table == "switch"
                and self._switch_data() is not None
                and (self._write_guarded(table, column, pos, newv))
            ):
                assert compiled is not None
                old_values = compiled[pos].copy()
                compiled[pos] = newv
                if self._try_switch(pos, newv):
                    return
                compiled[pos] = old_values
            if fresh and column == "in_service" and self._write_guarded(table, column, pos, newv):
                assert compiled is not None
                old_values = compiled[pos].copy()
                compiled[pos] = newv  # the guard's record of what the model now solves
                if self._try_patch(table, pos, newv):
                    return
                compiled[pos] = old_values  # the recompile below refreshes the guard
            col = df.columns.get_loc(column)
            old = df.iloc[pos, col].copy()
            df.iloc[pos, col] = newv.astype(df[column].dtype) if column != "tap_pos" else newv
            try:
                self._recompile()
            except Exception:
                df.iloc[pos, col] = old.to_numpy()
                self._recompile()
                raise
            return
        # the hot path: numpy only; pandas sees the values when model.net is next read
        arr = self._input(table, column)
        old = arr[pos]
        arr[pos] = newv
        self._write_through(table, column, pos, newv)
        self._apply_injection(table, column, pos, old, newv)

    def _apply_injection(
        self, table: str, column: str, pos: np.ndarray, old: np.ndarray, new: np.ndarray
    ) -> None:
        if table in ("load", "sgen"):
            # the input array is the kernel's: the bus injections are assembled at the next solve
            self._changed.add((table, column))
            return
        rows = self._gen_rows[table][pos]
        ok = rows >= 0
        if column == "p_mw":  # gen
            scale = self._gen_scale[pos]
            self._gen_pg = self._gen_pg.copy()
            self._gen_pg[rows[ok]] = (new * scale)[ok]
            self._gen_sums = None
        else:  # vm_pu set points of gen / ext_grid
            ib = self._elem_bus[table][pos]
            okb = ok & (ib >= 0)
            self._vset[ib[okb]] = new[okb]
            self._ppci["gen"][rows[ok], 5] = new[ok]  # VG

    def _recompile(self) -> None:
        if self._last_vm_pp is None:
            self._last_vm_pp, self._last_va_pp = self._state_pp()
        # a state the patch path refused (a cut-off generator, two slacks fused) is refused by
        # a widened compile too: pandapower converts it as it is (one conversion, not two)
        widen = not self._refused
        self._refused = False
        self._compile(widen=widen)

    def value(self, table: str, column: str, element: int) -> float:
        """The current input ``net.<table>.<column>`` of one element."""
        if (table, column) in self._inp:
            pos = self._positions(table, column, [element])
            return float(self._inp[(table, column)][pos[0]])
        df = self._net.get(table) if hasattr(self._net, "get") else None
        if df is None or column not in getattr(df, "columns", []):
            raise InvalidInput(table, column, element, f"{table}.{column}", "an existing input")
        if element not in df.index:
            raise InvalidInput(table, column, element, element, f"an index of net.{table}")
        return df.at[element, column]

    # ------------------------------------------------------------------ solve
    def _refresh_base(self) -> None:
        """Per-bus generation minus the non-element demand, after a generator change."""
        if self._gen_sums is None:
            on = self._gen_on
            pg = np.bincount(self._gen_bus[on], weights=self._gen_pg[on], minlength=self._n)
            qg = np.bincount(self._gen_bus[on], weights=self._gen_qg[on], minlength=self._n)
            self._gen_sums = (pg, qg)
            self._stepper.set_base(pg - self._rest_p, qg - self._rest_q)

    def _sbus(self, qfix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(p, q) bus injection specification in per unit, as the kernel assembles it."""
        self._refresh_base()
        return self._stepper.spec(qfix)

    def _state_pp(self) -> tuple[np.ndarray, np.ndarray]:
        ib = self._bus_int
        vm = np.full(ib.shape[0], np.nan)
        va = np.full(ib.shape[0], np.nan)
        ok = ib >= 0
        vm[ok] = self._vm[ib[ok]]
        va[ok] = self._va[ib[ok]]
        return vm, va

    def _newton(self, vm0: np.ndarray, va0: np.ndarray) -> tuple[Any, ...]:
        """Newton (plus the Q-limit outer loop) from a start; copies, the model is not changed."""
        kind = self._kind_run
        qfix = self._qzero
        limited: list[int] = []
        total_it = 0
        nrm = 0.0
        vm = vm0.copy()  # the kernel sets slack and PV magnitudes from vset
        va = va0.copy()
        dead = self._dead_aux
        if dead.size:
            vm[dead], va[dead] = 1.0, 0.0  # held as zero between solves (below)
        for _round in range(20):
            try:
                it, nrm = self._stepper.run(
                    vm, va, None if kind is self._kind0 else kind,
                    None if qfix is self._qzero else qfix, self.tolerance_mva, self.max_iteration,
                )  # fmt: skip
            except LoadflowNotConverged as exc:
                worst = int(self._bus_rep[exc.worst_bus]) if exc.worst_bus >= 0 else -1
                detail = "singular Jacobian (zero pivot)" if "pivot" in str(exc) else ""
                raise LoadflowNotConverged(
                    total_it + exc.iterations, worst, exc.mismatch, detail
                ) from None
            total_it += it
            if not self.enforce_q_lims:
                break
            if kind is self._kind_run:
                kind, qfix = kind.copy(), qfix.copy()
            newly = self._q_limit_violations(kind, vm, va, qfix)
            if not newly:
                break
            limited.extend(newly)
        live = kind < 3
        if live.any():
            low = int(np.argmin(np.where(live, vm, np.inf)))
            if vm[low] < _COLLAPSED_VM:
                # Newton's spurious answer: a bus at ~0 V takes any current (S = V I* = 0).
                # Seen from a warm start whose angles ignore a phase-shifting transformer of
                # buses just supplied again; solve() retries from the DC start
                raise LoadflowNotConverged(
                    total_it, int(self._bus_rep[low]), float(nrm),
                    f"converged to a collapsed voltage ({vm[low]:.3g} pu): not a solution",
                )  # fmt: skip
        fz = self._fuse
        if fz is not None:  # fused buses: one voltage, as pandapower reports them
            vm[fz.members] = vm[fz.of]
            va[fz.members] = va[fz.of]
        if dead.size:  # dead buses carry no voltage: zero flows at them in every result
            vm[dead], va[dead] = 0.0, 0.0
        return vm, va, kind, qfix, limited, total_it, nrm

    def solve(self) -> Solution:
        """Newton-Raphson from the last converged state; structure and ordering reused.

        Raises:
            LoadflowNotConverged: ``worst_bus`` is a pandapower bus index; the model keeps the
                last converged state for the next solve.
        """
        if self._guard_stale():
            _log.info("topology inputs of the net changed outside update(): recompiled")
            self._recompile()
        if self._gen_sums is None:
            self._refresh_base()
        try:
            vm, va, kind, qfix, limited, total_it, nrm = self._newton(self._vm, self._va)
        except LoadflowNotConverged as first:
            # a warm start can sit in the wrong basin after a topology change: retry once from
            # pandapower's cold start (DC angles) before giving up; the model state is unchanged
            _log.debug("warm start did not converge (%s); retrying from a DC start", first)
            try:
                vm, va, kind, qfix, limited, total_it, nrm = self._newton(*self._start)
            except LoadflowNotConverged as exc:
                raise LoadflowNotConverged(
                    first.iterations + exc.iterations,
                    exc.worst_bus,
                    exc.mismatch,
                    "also from a DC start" + (f"; {exc.detail}" if exc.detail else ""),
                ) from None
        self._vm, self._va = vm, va
        self._last_vm_pp = None
        if self._changed:
            # load / sgen inputs as solved: copies of the arrays update() writes in place
            inputs = dict(self._snap_inputs)
            for key in self._changed:
                inputs[key] = self._inp[key].copy()
            self._changed.clear()
            self._snap_inputs = inputs
        snap = {
            "vm": vm,  # never written again: the next solve works on copies
            "va": va,
            "gen_pg": self._gen_pg,  # replaced, never changed in place, by update()
            "limited": np.asarray(limited, dtype=np.int64) if limited else _NO_LIMITS,
            "qfix": qfix,
            "iterations": total_it,
            "c": self._c,
            "inputs": self._snap_inputs,  # never changed in place: the demand derives from it
        }
        self._last_snap = snap
        return Solution(
            vm=vm,
            va=va,
            bus_int=self._bus_int,
            iterations=total_it,
            converged=True,
            max_mismatch=float(nrm),
            backend=self.backend,
            results=lambda: self._results(snap),
            native=lambda: self._native_results(snap),
            unsupplied_buses=self._unsupplied,
        )

    def _q_limit_violations(
        self, kind: np.ndarray, vm: np.ndarray, va: np.ndarray, qfix: np.ndarray
    ) -> list[int]:
        """Turn PV buses past their summed gen Q limits into PQ at the limit (pandapower-like)."""
        gen = self._ppci["gen"]
        on = self._gen_on & ~np.isin(np.arange(gen.shape[0]), self._ref_gens)
        pv_buses = np.flatnonzero(kind == 1)
        if pv_buses.size == 0:
            return []
        v = vm * np.exp(1j * va)
        ybus = _csr(self._y_indptr, self._y_indices, self._y_re + 1j * self._y_im, self._n)
        s = v * np.conj(ybus @ v) * self._base_mva
        qgen = (
            s.imag
            + _demand(self._c, self._inp)[1]
            - np.bincount(
                self._gen_bus[self._gen_on], weights=self._gen_qg[self._gen_on], minlength=self._n
            )
        )
        qmax = np.bincount(self._gen_bus[on], weights=gen[on, 3].real, minlength=self._n)
        qmin = np.bincount(self._gen_bus[on], weights=gen[on, 4].real, minlength=self._n)
        changed = []
        for b in pv_buses:
            if qgen[b] > qmax[b] + 1e-9:
                kind[b] = 2
                qfix[b] = qmax[b]
                changed.append(int(b) + 1)  # +1: at Q max
            elif qgen[b] < qmin[b] - 1e-9:
                kind[b] = 2
                qfix[b] = qmin[b]
                changed.append(-int(b) - 1)  # negative: at Q min
        return changed

    # ------------------------------------------------------------------ results
    def _result_ppci(self, snap: dict[str, Any]) -> tuple[dict, dict]:
        pp = self._pp
        c = snap["c"]  # the compiled structure the snapshot was solved on
        ppci = _copy_ppc(c.ppci)
        bus, gen = ppci["bus"], ppci["gen"]
        bus[:, 2], bus[:, 3] = _snap_demand(snap)
        gen[:, 1] = snap["gen_pg"]
        limited_gens = None
        if snap["limited"].size:
            code = snap["limited"]
            lim_bus = np.abs(code) - 1
            not_ref = ~np.isin(np.arange(gen.shape[0]), c.ref_gens)
            limited_gens = np.flatnonzero(np.isin(c.gen_bus, lim_bus) & c.gen_on & not_ref)
            # each limited gen sits at its own limit, like pandapower's fixedQg
            for side, b in zip(code, lim_bus):
                rows = limited_gens[c.gen_bus[limited_gens] == b]
                gen[rows, 2] = gen[rows, 3 if side > 0 else 4]
        v = snap["vm"] * np.exp(1j * snap["va"])
        ybus = _csr(c.y_indptr, c.y_indices, c.y_re + 1j * c.y_im, c.n)
        internal = ppci["internal"]
        internal.update(
            {
                "bus": bus, "gen": gen, "branch": ppci["branch"], "baseMVA": c.base_mva,
                "V": v, "Ybus": ybus, "Yf": c.yf, "Yt": c.yt, "ref": c.ref,
                "pv": c.pv, "pq": c.pq, "ref_gens": c.ref_gens,
                "svc": ppci["svc"], "tcsc": ppci["tcsc"], "ssc": ppci["ssc"], "vsc": ppci["vsc"],
                "J": None, "Vm_it": None, "Va_it": None, "Sbus": None,
                "r_theta_kelvin_per_mw": None, "T": None,
            }
        )  # fmt: skip
        options = dict(self.net._options)
        options["only_v_results"] = False
        if limited_gens is not None:
            # pfsoln skips "off" gens for Q: limited gens keep their fixed Q (pandapower does so)
            saved = gen[limited_gens, 7].copy()
            fixed_q = gen[limited_gens, 2].copy()
            gen[limited_gens, 7] = 0
            bus_r, gen_r, branch_r = pp["pfsoln"](ppci, options, limited_gens)
            gen_r[limited_gens, 7] = saved
            gen_r[limited_gens, 2] = fixed_q  # pfsoln zeroes every Qg first
        else:
            bus_r, gen_r, branch_r = pp["pfsoln"](ppci, options)
        result = pp["store"](ppci, bus_r, gen_r, branch_r, True, snap["iterations"], 0.0)
        ppc = _copy_ppc(c.ppc)
        return result, ppc

    def _results(self, snap: dict[str, Any]) -> dict[str, Any]:
        """pandapower's own result tables for a snapshot, without touching ``net.res_*``."""
        net = self.net
        keys = [k for k in list(net.keys()) if isinstance(k, str) and k.startswith("res_")]
        saved = {k: net[k] for k in keys}
        saved_ppc = net["_ppc"]
        saved_conv = net.get("converged", False)
        try:
            for k in keys:
                net[k] = saved[k].iloc[0:0].copy()
            self._write_results(snap)
            return {k[4:]: net[k] for k in keys if k[4:] in _RES_TABLES and k in net}
        finally:
            for k in keys:
                net[k] = saved[k]
            net["_ppc"] = saved_ppc
            net["converged"] = saved_conv

    def _write_results(self, snap: dict[str, Any]) -> None:
        pp = self._pp
        net = self.net
        result, ppc = self._result_ppci(snap)
        pp["init_results"](net)
        ppc = pp["copy_results"](result, ppc, "pf")
        _pandapower_buses(snap["c"], ppc)
        net["_ppc"] = ppc
        net["converged"] = True
        with self._dead_elements(snap["c"]):
            pp["extract"](net, ppc)

    def to_net(self) -> None:
        """Write the last solution into ``net.res_*`` with pandapower's semantics.

        Solves first when the model has not been solved since it was built.
        """
        if self._last_snap is None:
            self.solve()
        assert self._last_snap is not None  # solve() sets it or raises
        self._write_results(self._last_snap)

    def compiled(self) -> SimpleNamespace:
        """The compiled system and base state the batch API (:mod:`twin.batch`) solves from.

        Solves first when the model has no converged state for its topology. Arrays are the
        model's own: read them, do not write them.

        Raises:
            LoadflowError: ``enforce_q_lims`` is on (batches solve without Q limits).
        """
        if self.enforce_q_lims:
            raise LoadflowError(
                "batch solves: expected a model with enforce_q_lims=False, found True"
            )
        if self._last_snap is None or self._guard_stale():
            self.solve()
        self._refresh_base()
        spec = self._stepper.spec(None)
        inputs = {key: self._inp[key] for key in _GROUPS}
        groups = {key: (b, w, inputs[key].copy()) for key, (b, w) in zip(_GROUPS, self._c.groups)}
        c = self._c
        return SimpleNamespace(
            plan=self._plan, y_indptr=self._y_indptr, y_indices=self._y_indices,
            y_re=self._y_re, y_im=self._y_im, kind=self._kind_run, vset=self._vset,
            vm=self._vm, va=self._va, retry=self._start, spec=spec, n=self._n,
            bus_int=self._bus_int, ppci=c.ppci, base_mva=self._base_mva, groups=groups,
            out_rows=self._out | frozenset(self._half), half=getattr(self, "_kept_half", {}),
        )  # fmt: skip

    def memory_bytes(self) -> int:
        """Approximate bytes of the compiled arrays (Ybus, plan, state; not the pandapower net)."""
        arrays = [self._y_indptr, self._y_indices, self._y_re, self._y_im, self._vm, self._va,
                  self._rest_p, self._rest_q, self._vset]  # fmt: skip
        return int(sum(a.nbytes for a in arrays) + self._plan.memory_bytes())


class _Structure(SimpleNamespace):
    """The compiled structure a solution keeps; ``branch`` / ``element`` maps may be lazy."""

    def __getattr__(self, name: str) -> Any:
        lazy = self.__dict__.get("lazy")
        if lazy is not None and name in ("branch", "element", "yf", "yt"):
            value = lazy(name)
            setattr(self, name, value)
            return value
        raise AttributeError(name)


def _pandapower_buses(c: Any, ppc: dict) -> None:
    """A patched structure's solved ``ppc`` as pandapower's conversion would lay it out.

    Cut-off buses carry no voltage (NaN, not the zero they are solved at); an end opened by a
    line / trafo switch is an auxiliary bus: the voltage the open end floats at, or NaN when
    the element is out as a whole.
    """
    bus = ppc["bus"]
    dead = c.__dict__.get("dead")
    if dead is not None and dead.size:
        bus[dead, 7] = np.nan  # VM
        bus[dead, 8] = np.nan  # VA
    ends = c.__dict__.get("open_ends")
    if ends is None:
        return
    hrows, t_open, coef, dead_ends = ends
    ppc_row = np.flatnonzero(np.asarray(c.ppci["internal"]["branch_is"], dtype=bool))
    br = ppc["branch"]
    new_rows = []
    at = bus.shape[0]
    for k, r in enumerate(hrows.tolist()):
        row = ppc_row[r]
        side, other = (1, 0) if t_open[k] else (0, 1)  # T_BUS open, else F_BUS open
        closed = int(br[row, other].real)
        v = coef[k] * bus[closed, 7] * np.exp(1j * np.deg2rad(bus[closed, 8]))
        aux = bus[int(br[row, side].real)].copy()
        aux[7], aux[8] = np.abs(v), np.rad2deg(np.angle(v))
        new_rows.append(aux)
        br[row, side] = at
        at += 1
    for r, e in dead_ends.items():
        row = ppc_row[r]
        for side, bit in ((0, 1), (1, 2)):
            if e & bit:
                aux = bus[int(br[row, side].real)].copy()
                aux[7] = aux[8] = np.nan
                new_rows.append(aux)
                br[row, side] = at
                at += 1
    if new_rows:
        ppc["bus"] = np.vstack([bus, np.asarray(new_rows)])


def _demand(c: Any, inputs: dict[tuple[str, str], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Bus PD / QD (MW / Mvar) of compiled structure ``c`` for load / sgen ``inputs``."""
    out = {"p_mw": c.rest_p.copy(), "q_mvar": c.rest_q.copy()}
    for (table, column), (b, w) in zip(_GROUPS, c.groups):
        ok = b >= 0
        out[column] += np.bincount(b[ok], weights=(w * inputs[(table, column)])[ok], minlength=c.n)
    return out["p_mw"], out["q_mvar"]


def _snap_demand(snap: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Bus PD / QD of a snapshot (computed once, kept in it)."""
    d = snap.get("demand")
    if d is None:
        d = snap["demand"] = _demand(snap["c"], snap["inputs"])
    return d


#: below this (pu), a held bus voltage is no warm start for a bus that is supplied again
_LIVE_VM = 0.5
#: a solved bus below this (pu) is Newton's spurious low-voltage answer, never a load flow's
_COLLAPSED_VM = 0.05


def _fill_from_neighbours(
    vm: np.ndarray, va: np.ndarray, have: np.ndarray, indptr: np.ndarray, indices: np.ndarray
) -> None:
    """Give buses without a value (``~have``) the mean voltage of their valued neighbours.

    Layer by layer over the Ybus graph (bounded); buses no valued bus reaches keep their value.
    """
    import scipy.sparse as sp

    if have.all() or not have.any():
        return
    n = have.shape[0]
    rows = np.repeat(np.arange(n), np.diff(indptr))
    off = rows != indices
    adj = sp.csr_matrix((np.ones(int(off.sum())), (rows[off], indices[off])), shape=(n, n))
    have = have.copy()
    for _layer in range(64):
        h = have.astype(float)
        cnt = adj @ h
        new = ~have & (cnt > 0)
        if not new.any():
            break
        vm[new] = (adj @ (vm * h))[new] / cnt[new]
        va[new] = (adj @ (va * h))[new] / cnt[new]
        have |= new


def _same_values(a: np.ndarray, b: np.ndarray) -> bool:
    """Element-wise equal (NaN equal to NaN): a bool compare where both are booleans."""
    if a.dtype == np.bool_ and b.dtype == np.bool_:
        return bool((a == b).all())
    return bool(np.array_equal(a.astype(float), b.astype(float), equal_nan=True))


def _short_list(values: np.ndarray, limit: int = 10) -> str:
    head = ", ".join(str(v) for v in values[:limit])
    return head + (f", ... ({values.size} in all)" if values.size > limit else "")


def _with_diagonal(ybus, n: int):
    """Ybus in sorted CSR with every diagonal entry stored (explicit zeros kept)."""
    import scipy.sparse as sp

    coo = ybus.tocoo()
    rows = np.concatenate([coo.row, np.arange(n)])
    cols = np.concatenate([coo.col, np.arange(n)])
    data = np.concatenate([coo.data, np.zeros(n, dtype=complex)])
    # COO -> CSR sums duplicates without dropping zeros
    out = sp.csr_matrix((data, (rows, cols)), shape=(n, n))
    out.sum_duplicates()
    out.sort_indices()
    return out


def _csr(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, n: int):
    import scipy.sparse as sp

    return sp.csr_matrix((data, indices, indptr), shape=(n, n))


__all__ = ["GridModel", "Solution", "UPDATABLE"]
