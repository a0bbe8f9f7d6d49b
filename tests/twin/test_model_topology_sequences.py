"""Random switch, outage and tap sequences: every solve equals pandapower's, both backends.

Each step is applied through ``GridModel.update`` and, independently, to a deep copy of the net
that ``pandapower.runpp(lightsim2grid=False)`` solves. Islands are allowed (both sides report the
cut-off buses as NaN); a step pandapower cannot solve either is skipped.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pandapower as pp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import grids
from twin.errors import LoadflowNotConverged
from twin.loadflow import build_info
from twin.model import GridModel

BACKENDS = ["cython", "numpy"] if build_info()["cython_available"] else ["numpy"]
_NETS: dict[str, object] = {}


def _split_ieee14():
    """ieee14 with two bus couplers: bus 4 and PV bus 2 each split in two by a bus-bus switch."""
    net = grids.load("ieee14")
    for bus, moved, load in ((3, 2, True), (1, 1, False)):
        new = pp.create_bus(net, vn_kv=net.bus.at[bus, "vn_kv"], name=f"split {bus}")
        lines = net.line.index[(net.line.from_bus == bus) | (net.line.to_bus == bus)][:moved]
        for line in lines:
            for end in ("from_bus", "to_bus"):
                if net.line.at[line, end] == bus:
                    net.line.at[line, end] = new
        if load:
            pp.create_load(net, new, p_mw=5.0, q_mvar=2.0)
        pp.create_switch(net, bus, new, et="b", closed=True)
    return net


def _net(name: str):
    if name not in _NETS:
        net = _split_ieee14() if name == "ieee14_split" else grids.load(name)
        net["_ppc"] = None
        _NETS[name] = net
    return copy.deepcopy(_NETS[name])


def _step(draw, net) -> tuple[str, str, int, object]:
    options = ["line"]
    if len(net.switch):
        options.append("switch")
    if len(net.trafo):
        options.append("trafo")
        tapped = net.trafo.index[net.trafo.tap_pos.notna() & net.trafo.tap_max.notna()]
        if len(tapped):
            options.append("tap")
    kind = draw(st.sampled_from(options))
    if kind == "switch":
        idx = draw(st.sampled_from(list(net.switch.index)))
        return "switch", "closed", int(idx), not bool(net.switch.at[idx, "closed"])
    if kind == "tap":
        idx = draw(st.sampled_from(list(tapped)))
        lo, hi = int(net.trafo.at[idx, "tap_min"]), int(net.trafo.at[idx, "tap_max"])
        return "trafo", "tap_pos", int(idx), draw(st.integers(lo, hi))
    table = kind
    idx = draw(st.sampled_from(list(net[table].index)))
    return table, "in_service", int(idx), not bool(net[table].at[idx, "in_service"])


def _check_sequence(name: str, backend: str, data) -> None:
    net = _net(name)
    model = GridModel(net, backend=backend)
    model.solve()
    ref = copy.deepcopy(net)
    for _ in range(data.draw(st.integers(1, 5), label="steps")):
        table, column, idx, value = _step(data.draw, ref)
        ref[table].at[idx, column] = value
        model.update(table, column, [value], index=[idx])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pp.runpp(ref, lightsim2grid=False)
        except Exception:  # pandapower cannot solve it either: not a case for this test
            return
        expect = ref.res_bus.vm_pu.to_numpy()
        try:
            sol = model.solve()
        except LoadflowNotConverged as exc:
            pytest.fail(f"{table}.{column}[{idx}] = {value}: pandapower converges, model: {exc}")
        np.testing.assert_array_equal(np.isnan(sol.vm_pu), np.isnan(expect))
        assert np.nanmax(np.abs(sol.vm_pu - expect)) < 1e-6, (table, column, idx, value)
        va = ref.res_bus.va_degree.to_numpy()
        assert np.nanmax(np.abs(sol.va_degree - va)) < 1e-4
        loading = ref.res_line.loading_percent.to_numpy()
        np.testing.assert_allclose(sol.line_loading_percent, loading, atol=1e-4, rtol=0)
        cut = ref.bus.index[ref.res_bus.vm_pu.isna() & ref.bus.in_service].tolist()
        assert sorted(sol.unsupplied_buses.tolist()) == sorted(cut)
        for table, column in (("trafo", "loading_percent"), ("ext_grid", "p_mw"),
                              ("bus", "p_mw"), ("load", "p_mw")):  # fmt: skip
            want = ref[f"res_{table}"][column].to_numpy(dtype=float)
            np.testing.assert_allclose(sol.get(table, column), want, atol=1e-4, rtol=0)


_SETTINGS = settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "name", ["ieee14", "cigre_mv", "mv_oberrhein", "ieee14_split", "cigre_lv"]
)  # bus-bus switches: ieee14_split (meshed couplers), cigre_lv (each feeds a feeder)
@_SETTINGS
@given(data=st.data())
def test_random_topology_sequences_match_pandapower(name: str, backend: str, data) -> None:
    _check_sequence(name, backend, data)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ieee118", "ieee300"])
@_SETTINGS
@given(data=st.data())
def test_random_topology_sequences_match_pandapower_larger(name: str, data) -> None:
    _check_sequence(name, BACKENDS[0], data)


@pytest.mark.slow
@settings(max_examples=4, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
@given(data=st.data())
def test_random_topology_sequences_match_pandapower_pegase(data) -> None:
    _check_sequence("case1354pegase", BACKENDS[0], data)
