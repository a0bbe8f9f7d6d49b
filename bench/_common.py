"""Helpers shared by the benchmarks: the same workload and the same reference methods everywhere.

Import after the benchmark has made gridtwin importable (its ``try: import twin`` prelude)::

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import ...
"""

from __future__ import annotations

import copy
import os
import platform
import sys
import time
from typing import Any

import numpy as np

TOL = 1e-8  # per unit on sn_mva: pandapower's default tolerance_mva, gridtwin's default


def machine_line() -> str:
    """One header line: CPUs, load average (a shared machine's numbers are not final), versions."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"machine: {os.cpu_count()} CPUs, load average (1, 5, 15 min) {load}; "
        f"Python {sys.version.split()[0]} on {platform.machine()}"
    )


def in_service_branches(net: Any, limit: int | None = None) -> list[tuple[str, int]]:
    """(table, index) of the in-service lines, then trafos: the N-1 set of every method."""
    els = [("line", int(i)) for i in net.line.index[net.line.in_service]]
    els += [("trafo", int(i)) for i in net.trafo.index[net.trafo.in_service]]
    return els[:limit] if limit else els


def ls2g_v_start(net: Any) -> np.ndarray:
    """A converged pandapower state as lightsim2grid's start (a flat start fails on several
    grids); buses pandapower left unsolved start at 1 pu, 0 degrees."""
    import pandapower as pp

    ref = copy.deepcopy(net)
    ref["_ppc"] = None
    pp.runpp(ref, lightsim2grid=False, tolerance_mva=TOL)
    vm = np.nan_to_num(ref.res_bus.vm_pu.to_numpy(float), nan=1.0)
    va = np.deg2rad(np.nan_to_num(ref.res_bus.va_degree.to_numpy(float), nan=0.0))
    return (vm * np.exp(1j * va)).astype(complex)


def ls2g_branch_ids(net: Any, elements: list[tuple[str, int]]) -> list[int]:
    """lightsim2grid's branch ids of (table, index) elements: lines first, then trafos."""
    nline = len(net.line)
    return [
        int(net.line.index.get_loc(i)) if t == "line" else nline + int(net.trafo.index.get_loc(i))
        for t, i in elements
    ]


def run_n1_ls2g(
    net: Any, elements: list[tuple[str, int]], threads: int, gather: bool = True
) -> tuple[float, int]:
    """lightsim2grid ContingencyAnalysisCPP on ``threads``: (cases per second, converged).

    Timed: ``compute`` + ``compute_flows`` and, with ``gather``, reading the voltages and
    flows back into numpy (the results a sweep gathers)."""
    from lightsim2grid.contingencyAnalysis import ContingencyAnalysisCPP
    from lightsim2grid.network import init_from_pandapower

    net = copy.deepcopy(net)
    net["_ppc"] = None
    model = init_from_pandapower(net)
    tol = TOL * net.sn_mva  # lightsim2grid divides its tolerance by sn_mva
    v0 = model.ac_pf(ls2g_v_start(net), 10, tol)
    ca = ContingencyAnalysisCPP(model)
    ca.nb_thread = threads
    ca.add_multiple_n1(ls2g_branch_ids(net, elements))
    t0 = time.perf_counter()
    ca.compute(v0, 10, tol)
    ca.compute_flows()
    if gather:
        volts = np.asarray(ca.get_voltages())
        np.asarray(ca.get_flows())
    dt = time.perf_counter() - t0
    if not gather:
        volts = np.asarray(ca.get_voltages())
    conv = int(np.sum(np.abs(volts).sum(axis=1) > 0)) if volts.size else 0
    return len(elements) / dt, conv


def run_n1_pandapower(net: Any, elements: list[tuple[str, int]]) -> tuple[float, int, float]:
    """pandapower.contingency.run_contingency (lightsim2grid off, one runpp per case):
    (cases per second, cases, seconds)."""
    from pandapower.contingency import run_contingency

    net = copy.deepcopy(net)
    net["_ppc"] = None
    cases: dict[str, dict[str, list[int]]] = {}
    for t, i in elements:
        cases.setdefault(t, {"index": []})["index"].append(i)
    t0 = time.perf_counter()
    run_contingency(net, cases, lightsim2grid=False, tolerance_mva=TOL)
    dt = time.perf_counter() - t0
    return len(elements) / dt, len(elements), dt
