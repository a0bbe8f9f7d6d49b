"""One name per element: every module that names elements agrees with ``twin.labels``.

Every bundled grid goes through the point map (generated names and resolution), profiles and
events (``element_labels``), the emulated devices, the sync loop's record columns, the twin's
OPC UA server and scenario validation; each must call an element by the same label.
"""

from __future__ import annotations

import pandapower as pp
import pytest

import grids
from hil.emulator.devices import build_devices
from hil.store import PointStore
from hil.sync import _label as sync_label
from hil.twin_server import _labels as server_labels
from scenarios.config import loads_scenario
from scenarios.profiles import element_labels
from scenarios.validate import check_against_grid
from twin.labels import element_label, label_index, resolve_label, table_labels
from twin.pointmap import Point, generate_pointmap, is_heartbeat, resolve_element

TABLES = ("bus", "line", "trafo", "switch", "load", "sgen", "gen", "ext_grid")


def _event_table(table: str) -> str | None:
    return {"switch": "switch_open", "line": "line_outage", "trafo": "trafo_outage"}.get(table)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", grids.names())
def test_every_module_names_an_element_the_same(name: str) -> None:
    net = grids.load(name)
    pm = generate_pointmap(net, mode="hil")
    for table in TABLES:
        if table not in net or len(net[table]) == 0:
            continue
        labels = table_labels(net, table)
        assert len(set(labels.values())) == len(labels), f"{table}: duplicate labels"
        assert element_labels(net, table) == label_index(net, table)
        assert server_labels(net[table], table, net) == [labels[int(i)] for i in net[table].index]
        first = int(net[table].index[0])
        assert element_label(net, table, first) == labels[first]
        assert resolve_label(net, table, labels[first]) == first
        # a point bound by label resolves to its element (the point map's resolution)
        probe = Point(
            name="probe.x",
            table=table,
            column="x",
            element=labels[first],
            direction="to_twin",
            kind="status",
        )
        assert resolve_element(net, probe) == first
    by_table = {t: table_labels(net, t) for t in TABLES if t in net}
    inverse = {t: {lab: i for i, lab in labs.items()} for t, labs in by_table.items()}
    for k, p in enumerate(pm.points):
        if p.table not in TABLES or is_heartbeat(p):  # SS1.heartbeat names the substation
            continue
        idx = p.element if isinstance(p.element, int) else inverse[p.table][p.element]
        if k < 200:  # the point map's own resolution (linear per call): a sample
            assert resolve_element(net, p) == idx
        label = by_table[p.table][idx]
        assert p.name == f"{label}.{p.column}", p.name
        assert sync_label(p) == label
    store = PointStore(pm)
    all_labels = {lab for t in TABLES if t in net for lab in table_labels(net, t).values()}
    for dev in build_devices(net, pm, store, rng=0):
        assert dev.name in all_labels | {"rtu"}, dev.name
    # scenario validation accepts every label it is given, for each table an event names
    for table in ("switch", "line", "trafo"):
        kind = _event_table(table)
        if table not in net or len(net[table]) == 0 or kind is None:
            continue
        lab = table_labels(net, table)[int(net[table].index[-1])]
        sc = loads_scenario(
            f'grid = "{name}"\nduration = "2min"\nstep = "1min"\n'
            f'[[event]]\nkind = "{kind}"\nelement = "{lab}"\nat = 60\n'
        )
        assert check_against_grid(sc, net) == []


def _odd_names_net() -> pp.pandapowerNet:
    net = pp.create_empty_network()
    b0 = pp.create_bus(net, 110.0, name="HV")
    b1 = pp.create_bus(net, 20.0, name="MV")
    b2 = pp.create_bus(net, 20.0, name="bus0")  # shadows bus 0's generated label
    pp.create_ext_grid(net, b0)
    pp.create_transformer(net, b0, b1, "25 MVA 110/20 kV", name="T/1")
    pp.create_line(net, b1, b2, 1.0, "NA2XS2Y 1x240 RM/25 12/20 kV", name="L1")
    pp.create_load(net, b2, 1.0, name="LD")
    pp.create_load(net, b2, 1.0, name="LD")  # duplicate: both by index
    pp.create_load(net, b2, 1.0, name=" ")  # blank: by index
    return net


def test_odd_names_get_the_point_maps_labels_everywhere() -> None:
    net = _odd_names_net()
    assert table_labels(net, "load") == {0: "load0", 1: "load1", 2: "load2"}
    assert element_labels(net, "load") == {"load0": 0, "load1": 1, "load2": 2}
    assert table_labels(net, "trafo") == {0: "trafo0"}
    assert table_labels(net, "bus")[2] == "bus2"
    pm = generate_pointmap(net, mode="hil")
    names = {p.name for p in pm.points}
    assert "load2.p_mw" in names and "trafo0.tap_pos" in names


def test_a_name_that_is_no_label_is_refused_saying_which_label_to_use() -> None:
    net = _odd_names_net()
    with pytest.raises(Exception, match=r"contains '/'.*'trafo0'"):
        resolve_label(net, "trafo", "T/1")
    sc = loads_scenario(
        'grid = "ieee9"\nduration = "2min"\nstep = "1min"\n'
        '[[event]]\nkind = "tap_change"\nelement = "T/1"\ndelta = 1\nat = 60\n'
    )
    problems = check_against_grid(sc, net)
    assert len(problems) == 1 and "'trafo0'" in problems[0], problems
