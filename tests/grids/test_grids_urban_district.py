"""The synthetic urban_district grid: stored file, naming, and the operating cases it promises."""

from __future__ import annotations

import pandapower
import pytest

import grids
from grids import urban_district

RING = [f"N{i}" for i in range(1, 9)]


@pytest.fixture(scope="module")
def stored():
    """The bundled net (loaded once; tests that change it take a copy via grids.load)."""
    return grids.load("urban_district")


def _solve(net) -> None:
    pandapower.runpp(net, lightsim2grid=False)
    assert net.converged


def _scaled(load: float, pv: float):
    net = grids.load("urban_district")
    net.load["p_mw"] *= load
    net.load["q_mvar"] *= load
    net.sgen["p_mw"] *= pv
    _solve(net)
    return net


def test_stored_json_equals_a_rebuild() -> None:
    text = urban_district.JSON_PATH.read_text(encoding="utf-8")
    assert urban_district.JSON_PATH.name == "urban_district_v1.json"
    assert urban_district.to_json(urban_district.build()) == text


def test_size_and_voltage_levels(stored) -> None:
    assert 80 <= len(stored.bus) <= 200
    assert sorted(stored.bus.vn_kv.unique()) == [0.4, 22.0, 110.0]
    assert len(stored.ext_grid) == 1


def test_substation_transformer_has_an_hv_side_oltc(stored) -> None:
    t1 = stored.trafo[stored.trafo.name == "T1"].iloc[0]
    assert (t1.vn_hv_kv, t1.vn_lv_kv) == (110.0, 22.0)
    assert t1.tap_side == "hv"
    assert (t1.tap_min, t1.tap_neutral, t1.tap_max) == (-9, 0, 9)
    assert t1.tap_step_percent == 1.25
    assert t1.tap_min <= t1.tap_pos <= t1.tap_max
    kiosks = stored.trafo[stored.trafo.name.str.startswith("TD_")]
    assert sorted(kiosks.name) == sorted(f"TD_{n}" for n in RING)
    assert (kiosks.vn_lv_kv == 0.4).all() and (kiosks.vn_hv_kv == 22.0).all()


def test_switch_names_and_the_normally_open_point(stored) -> None:
    sw = stored.switch.set_index("name")
    assert sw.index.is_unique
    assert sw.loc["CB_F1", "type"] == "CB" and sw.loc["CB_F2", "type"] == "CB"
    ring_names = ["Q1S", "Q8S"] + [f"Q{i}{i + 1}" for i in range(1, 8)]
    ring_names += [f"Q{i + 1}{i}" for i in range(1, 8)]
    for name in ring_names:
        assert sw.loc[name, "et"] == "l"
        assert bool(sw.loc[name, "closed"]) == (name != urban_district.OPEN_POINT), name
    assert urban_district.OPEN_POINT == "Q45"
    assert sw.index.str.startswith("LV_").sum() >= 8


def test_loads_sgens_and_categories(stored) -> None:
    load = stored.load
    assert load.name.is_unique and stored.sgen.name.is_unique
    assert set(load.category) == {"residential", "commercial", "ev", "aggregate"}
    prefix = load.name.str.split("_").str[0]
    assert (prefix[load.category == "ev"] == "EV").all()
    assert (prefix[load.category == "residential"] == "RES").all()
    assert (prefix[load.category == "commercial"] == "COM").all()
    assert (load.category == "ev").sum() >= 8
    assert (stored.sgen.type == "PV").all()
    assert stored.sgen.name.str.startswith("PV_").all()
    assert len(stored.sgen) >= 8
    # every ring node serves at least one LV feeder with load on it
    lv_zones = set(stored.bus.zone[stored.bus.vn_kv == 0.4])
    assert lv_zones == set(RING)


def test_base_case_is_within_limits() -> None:
    net = _scaled(load=1.0, pv=1.0)
    assert net.res_bus.vm_pu.between(0.95, 1.05).all()
    assert net.res_line.loading_percent.max() < 80.0
    assert net.res_trafo.loading_percent.max() < 80.0
    # and without PV too (an evening at nominal load)
    net = _scaled(load=1.0, pv=0.0)
    assert net.res_bus.vm_pu.between(0.95, 1.05).all()
    assert net.res_line.loading_percent.max() < 80.0


def test_ev_evening_peak_pushes_lv_towards_limits() -> None:
    base = _scaled(load=1.0, pv=0.0)
    peak = _scaled(load=1.3, pv=0.0)
    lv = peak.bus.vn_kv == 0.4
    assert peak.res_bus.vm_pu[lv].min() < base.res_bus.vm_pu[lv].min()
    assert 0.93 <= peak.res_bus.vm_pu[lv].min() <= 0.965
    assert 80.0 <= peak.res_line.loading_percent.max() <= 110.0


def test_pv_midday_pushes_lv_voltages_up() -> None:
    noon = _scaled(load=0.3, pv=1.0)
    lv = noon.bus.vn_kv == 0.4
    assert 1.05 <= noon.res_bus.vm_pu[lv].max() <= 1.08
    assert noon.res_line.loading_percent.max() < 80.0


def test_restoration_by_switching_supplies_every_bus() -> None:
    """Fault on cable N2-N3: open both its ends, close the open point; every bus is fed."""
    net = grids.load("urban_district")
    by_name = dict(zip(net.switch.name, net.switch.index, strict=True))
    net.switch.loc[by_name["Q23"], "closed"] = False
    net.switch.loc[by_name["Q32"], "closed"] = False
    net.switch.loc[by_name["Q45"], "closed"] = True
    _solve(net)
    assert net.res_bus.vm_pu.notna().all()
    assert net.res_bus.vm_pu.between(0.95, 1.05).all()
    assert net.res_line.loading_percent.max() < 80.0  # one feeder can carry the whole ring
    faulted = net.line.index[net.line.name == "L_N2_N3"][0]
    loading = net.res_line.loading_percent[faulted]
    assert not loading > 0.0, f"isolated cable still carries {loading} %"  # 0 or NaN
    # and opening a feeder breaker alone leaves its ring half unsupplied
    net = grids.load("urban_district")
    net.switch.loc[by_name["CB_F1"], "closed"] = False
    _solve(net)
    dead = net.bus.name[net.res_bus.vm_pu.isna()]
    assert {"N1", "N2", "N3", "N4"} <= set(dead)
    assert not {"N5", "N6", "N7", "N8"} & set(dead)


def test_tap_changer_moves_the_22kv_busbar_voltage() -> None:
    volts = []
    for tap in (-9, 0, 9):
        net = grids.load("urban_district")
        net.trafo.loc[net.trafo.name == "T1", "tap_pos"] = tap
        _solve(net)
        volts.append(float(net.res_bus.vm_pu[net.bus.name == "SS1_22"].iloc[0]))
    # tap changer on the HV side: raising the tap lowers the 22 kV voltage, ~1.25 %/step
    assert volts[0] > volts[1] > volts[2]
    assert 0.15 < volts[0] - volts[2] < 0.30
