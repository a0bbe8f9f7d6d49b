"""Generated point maps: names, kinds and layout per docs/architecture.md; round trips; lookups."""

from __future__ import annotations

import math

import pandapower.networks as pn
import pytest

from twin.errors import PointMapError
from twin.pointmap import (
    REGISTER_COUNT,
    Point,
    PointMap,
    assert_pointmap,
    check_pointmap,
    dumps_pointmap,
    element_label,
    generate_pointmap,
    is_device_column,
    load_pointmap,
    loads_pointmap,
    resolve_element,
)


@pytest.fixture(scope="module")
def case14():
    return pn.case14()


@pytest.fixture(scope="module")
def cigre():
    return pn.create_cigre_network_mv(with_der="pv_wind")


@pytest.fixture(scope="module")
def nets(case14, cigre):
    return {"case14": case14, "cigre_mv": cigre}


@pytest.mark.parametrize("mode", ["hil", "mirror"])
@pytest.mark.parametrize("grid", ["case14", "cigre_mv"])
def test_generated_map_passes_check(nets, grid, mode):
    net = nets[grid]
    pm = generate_pointmap(net, mode=mode)
    assert check_pointmap(pm, net) == []
    assert_pointmap(pm, net)  # does not raise
    assert pm.mode == mode
    # every bus, line, load ... has its points
    assert sum(p.column == "vm_pu" for p in pm) == len(net.bus)
    assert sum(p.table == "line" and p.column == "loading_percent" for p in pm) == len(net.line)
    assert sum(p.table == "load" for p in pm) == 2 * len(net.load)
    assert sum(p.table == "switch" for p in pm) == 3 * len(net.switch)


def test_cigre_points_follow_the_contract_table(cigre):
    pm = generate_pointmap(cigre, mode="hil")
    # switch 1 is named S2: a status, a command and a counter
    closed, cmd, ops = pm["S2.closed"], pm["S2.cmd"], pm["S2.operations"]
    assert (closed.kind, closed.direction, closed.modbus.table, closed.modbus.dtype) == (
        "status",
        "to_twin",
        "discrete_input",
        "bool",
    )
    assert (cmd.kind, cmd.direction, cmd.modbus.table) == ("command", "to_field", "coil")
    assert (ops.kind, ops.modbus.table, ops.modbus.dtype) == (
        "measurement",
        "input_register",
        "uint16",
    )
    assert closed.element == "S2" and resolve_element(cigre, closed) == 1
    # unnamed switch: label switch0, bound by index
    assert pm["switch0.closed"].element == 0
    # relay settings exist for lines with a line switch (et="l") and only for them
    relay_lines = {int(e) for e, et in zip(cigre.switch.element, cigre.switch.et) if et == "l"}
    with_relay = {resolve_element(cigre, p) for p in pm if p.column == "oc_pickup_ka"}
    assert with_relay == relay_lines
    line = element_label(cigre, "line", 12)
    pickup = pm[f"{line}.oc_pickup_ka"]
    assert (pickup.kind, pickup.direction, pickup.modbus.table, pickup.modbus.dtype) == (
        "setpoint",
        "to_field",
        "holding_register",
        "float32",
    )
    assert pickup.low == 0.0 and pickup.high > 0
    # sgen: inverter output is a status read from the field; setpoints with sensible limits
    pv = pm["PV 3.p_mw"]
    assert (pv.kind, pv.direction) == ("status", "to_twin")
    assert pm["PV 3.p_avail_mw"].direction == "to_field"
    lim = pm["PV 3.p_limit_pct"]
    assert (lim.low, lim.high, lim.modbus.dtype) == (0.0, 100.0, "float32")
    assert pm["PV 3.voltvar"].modbus.dtype == "uint16"
    # OPC UA: ns=2;s=<SS>/<BAY>/<label>/<column>
    vm = pm["Bus 1.vm_pu"]
    assert vm.opcua.node_id == "ns=2;s=SS1/BAY_Bus 1/Bus 1/vm_pu"
    assert vm.opcua.browse_path == ("SS1", "BAY_Bus 1", "Bus 1", "vm_pu")
    assert (vm.unit, vm.kind, vm.direction) == ("pu", "measurement", "to_field")


def test_trafo_tap_and_avr_points(case14):
    pm = generate_pointmap(case14, mode="mirror")
    tap = pm["trafo0.tap_pos"]
    assert (tap.kind, tap.direction, tap.modbus.table, tap.modbus.dtype) == (
        "status",
        "to_twin",
        "input_register",
        "int16",
    )
    assert pm["trafo0.avr_vset_pu"].low == 0.9 and pm["trafo0.avr_vset_pu"].high == 1.1
    assert (pm["trafo0.avr_band_pu"].low, pm["trafo0.avr_band_pu"].high) == (0.005, 0.05)
    assert pm["trafo0.avr_auto"].modbus.dtype == "uint16"
    # trafos 3 and 4 of case14 have no tap changer (tap_pos NaN): no tap/AVR points
    assert "trafo3.tap_pos" not in {p.name for p in pm}
    # mirror: measurements come from the field
    assert pm["bus0.vm_pu"].direction == "to_twin"
    assert pm["trafo0.loading_percent"].direction == "to_twin"


@pytest.mark.parametrize("grid", ["case14", "cigre_mv"])
def test_register_layout_is_rtu_like(nets, grid):
    pm = generate_pointmap(nets[grid])
    by_table: dict[tuple[int, str], list[Point]] = {}
    for p in pm:
        by_table.setdefault((p.modbus.unit, p.modbus.table), []).append(p)
        if p.modbus.count > 1:
            assert p.modbus.address % 2 == 0, p.name
        assert p.modbus.word_order == "big"
    for (_, table), pts in by_table.items():
        pts.sort(key=lambda p: p.modbus.address)
        assert pts[0].modbus.address == 0, table  # each block starts at 0
        for a, b in zip(pts, pts[1:]):
            assert a.modbus.address + a.modbus.count <= b.modbus.address
        # packed: at most one register of padding between neighbours
        for a, b in zip(pts, pts[1:]):
            assert b.modbus.address - (a.modbus.address + a.modbus.count) <= 1
    ir = by_table[(1, "input_register")]
    widths = [REGISTER_COUNT[p.modbus.dtype] for p in ir]
    assert widths == sorted(widths, reverse=True)  # float32 block first, then 16-bit values


def test_large_grid_spreads_over_unit_ids():
    net = pn.case14()
    pm = generate_pointmap(net, unit=7)
    assert {p.modbus.unit for p in pm} == {7}
    # 36,000 buses -> 72,000 input registers of vm_pu alone: more than one unit
    import pandapower as pp

    big = pp.create_empty_network()
    pp.create_buses(big, 36_000, vn_kv=0.4)
    pm = generate_pointmap(big, unit=3)
    units = sorted({p.modbus.unit for p in pm})
    assert units == [3, 4]
    assert max(p.modbus.address + p.modbus.count for p in pm) <= 65536
    assert check_pointmap(pm, big) == []


@pytest.mark.parametrize("grid", ["case14", "cigre_mv"])
def test_dumps_loads_round_trip(nets, grid, tmp_path):
    pm = generate_pointmap(nets[grid], mode="mirror", substation="HN01")
    text = dumps_pointmap(pm)
    back = loads_pointmap(text, source="rt.toml")
    assert back.points == pm.points
    assert (back.substation, back.namespace, back.stale_factor, back.mode) == (
        "HN01",
        pm.namespace,
        pm.stale_factor,
        "mirror",
    )
    assert back.source == "rt.toml"
    # the line of each point is the line of its [[point]] header
    lines = text.splitlines()
    for p in back.points[:20]:
        assert lines[p.line - 1] == "[[point]]"
        assert lines[p.line] == f'name = "{p.name}"'
    f = tmp_path / "pm.toml"
    f.write_text(text, encoding="utf-8")
    again = load_pointmap(f)
    assert again.points == pm.points and again.source == str(f)
    assert dumps_pointmap(again) == text


def test_round_trip_of_every_optional_field():
    pm = PointMap(
        points=(
            Point(
                name='odd "name"',
                table="load",
                column="p_mw",
                element="it's a load",
                direction="to_twin",
                kind="measurement",
                unit="MW",
                low=-1.5,
                high=2.0,
                deadband=0.01,
                tolerance=0.2,
                interval_s=0.5,
                modbus=None,
                opcua=None,
            ),
            Point(
                name="T.tap",
                table="trafo",
                column="tap_pos",
                element=0,
                direction="to_twin",
                kind="status",
                modbus=__import__("twin.pointmap").pointmap.ModbusBinding(
                    unit=0,
                    table="input_register",
                    address=65535,
                    dtype="int16",
                    word_order="little",
                    scale=0.5,
                    offset=-3.0,
                    na_sentinel=-32768,
                ),
            ),
        ),
        substation="SS9",
        namespace="urn:x",
        stale_factor=2.5,
    )
    back = loads_pointmap(dumps_pointmap(pm))
    assert back.points == pm.points
    assert back.points[0].element == "it's a load"
    assert (back.substation, back.namespace, back.stale_factor) == ("SS9", "urn:x", 2.5)


def test_element_by_name_and_by_index(cigre, case14):
    by_name = Point(
        name="a",
        table="load",
        column="p_mw",
        element="Load R3",
        direction="to_twin",
        kind="measurement",
    )
    by_index = Point(
        name="b", table="load", column="p_mw", element=1, direction="to_twin", kind="measurement"
    )
    assert resolve_element(cigre, by_name) == 1 == resolve_element(cigre, by_index)
    assert element_label(cigre, "load", 1) == "Load R3"
    assert element_label(cigre, "switch", 0) == "switch0"  # no name
    assert element_label(case14, "bus", 3) == "bus3"  # numeric names are not labels
    with pytest.raises(PointMapError, match="no load has that name"):
        resolve_element(
            cigre,
            Point(
                name="c",
                table="load",
                column="p_mw",
                element="nope",
                direction="to_twin",
                kind="measurement",
            ),
        )
    with pytest.raises(PointMapError, match="expected an index of load"):
        resolve_element(
            cigre,
            Point(
                name="d",
                table="load",
                column="p_mw",
                element=999,
                direction="to_twin",
                kind="measurement",
            ),
        )


def test_duplicate_names_fall_back_to_the_index():
    net = pn.create_cigre_network_mv()
    net.load.loc[2, "name"] = "Load R1"  # now loads 0 and 2 share a name
    net.sgen.loc[0, "name"] = "Load R3"  # and an sgen takes a load's name
    assert element_label(net, "load", 0) == "load0"
    assert element_label(net, "load", 2) == "load2"
    pm = generate_pointmap(net)
    names = [p.name for p in pm]
    assert len(names) == len(set(names))
    assert "load1.p_mw" in names and "sgen0.p_mw" in names  # cross-table clash: both fall back
    assert check_pointmap(pm, net) == []


def test_device_columns():
    assert is_device_column("switch", "cmd")
    assert is_device_column("trafo", "avr_vset_pu")
    assert is_device_column("line", "oc_pickup_ka")
    assert is_device_column("sgen", "p_limit_pct")
    assert not is_device_column("switch", "closed")
    assert not is_device_column("sgen", "p_mw")


def test_generate_rejects_bad_arguments(case14):
    with pytest.raises(PointMapError, match="mode: expected one of hil, mirror, found 'live'"):
        generate_pointmap(case14, mode="live")
    with pytest.raises(PointMapError, match="unit"):
        generate_pointmap(case14, unit=300)


def test_generated_limits_are_finite(cigre):
    for p in generate_pointmap(cigre):
        for v in (p.low, p.high, p.tolerance):
            assert v is None or math.isfinite(v), p.name


def test_numeric_names_resolve_by_their_text_and_padded_names_by_themselves(case14):
    # case14's buses are named 1..14 (ints): "3" is bus index 2, 3 is bus index 3
    p = Point(
        name="a", table="bus", column="vm_pu", element="3", direction="to_twin", kind="measurement"
    )
    assert resolve_element(case14, p) == 2
    import copy

    net = copy.deepcopy(case14)
    net.load["name"] = None
    net.load.loc[net.load.index[0], "name"] = " feeder A "
    label = element_label(net, "load", int(net.load.index[0]))
    assert label == " feeder A "
    pm = generate_pointmap(net)
    assert resolve_element(net, pm[f"{label}.p_mw"]) == int(net.load.index[0])
    assert check_pointmap(pm, net) == []
