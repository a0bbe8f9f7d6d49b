"""Every error of the loader and the checker names the file, the point and its line."""

from __future__ import annotations

import copy

import pandapower.networks as pn
import pytest

from twin.errors import PointMapError
from twin.pointmap import assert_pointmap, check_pointmap, load_pointmap, loads_pointmap

HEAD = 'substation = "SS1"\nstale_factor = 3.0\n'


def block(
    name: str,
    bind: str,
    kind: str = "measurement",
    direction: str = "to_field",
    mtable: str = "input_register",
    address: int = 0,
    dtype: str = "float32",
    extra: str = "",
    modbus_extra: str = "",
    node: str | None = None,
) -> str:
    node = node or f"ns=2;s=SS1/BAY/{name}"
    return (
        f'\n[[point]]\nname = "{name}"\nbind = \'{bind}\'\ndirection = "{direction}"\n'
        f'kind = "{kind}"\n{extra}'
        f'[point.modbus]\ntable = "{mtable}"\naddress = {address}\ntype = "{dtype}"\n'
        f"{modbus_extra}"
        f'[point.opcua]\nnode_id = "{node}"\n'
    )


def line_of(text: str, needle: str, after: str | None = None) -> int:
    """1-based line of the first line containing ``needle`` (after the line containing
    ``after``)."""
    lines = text.splitlines()
    start = 0
    if after is not None:
        start = next(i for i, ln in enumerate(lines) if after in ln)
    return next(i for i in range(start, len(lines)) if needle in lines[i]) + 1


def header_of(text: str, name: str) -> int:
    return line_of(text, f'name = "{name}"') - 1


@pytest.fixture(scope="module")
def cigre():
    return pn.create_cigre_network_mv(with_der="pv_wind")


def problems_of(text: str, source: str = "pm.toml") -> list[str]:
    with pytest.raises(PointMapError) as info:
        loads_pointmap(text, source=source)
    assert info.value.problems, str(info.value)
    return info.value.problems


# --- loader ----------------------------------------------------------------------------------
def test_valid_text_loads():
    text = (
        HEAD
        + block("A.vm", "bus.vm_pu[5]")
        + block(
            "B.closed",
            'switch.closed["S2"]',
            kind="status",
            direction="to_twin",
            mtable="discrete_input",
            dtype="bool",
        )
    )
    pm = loads_pointmap(text, source="pm.toml")
    assert [p.name for p in pm] == ["A.vm", "B.closed"]
    assert (pm["A.vm"].table, pm["A.vm"].column, pm["A.vm"].element) == ("bus", "vm_pu", 5)
    assert pm["B.closed"].element == "S2"
    assert pm["A.vm"].line == header_of(text, "A.vm")
    assert pm["A.vm"].opcua.browse_path == ("SS1", "BAY", "A.vm")


def test_bad_kind_names_file_line_point_and_allowed_values():
    text = (
        HEAD + block("A.vm", "bus.vm_pu[5]") + block("B.vm", "bus.vm_pu[6]", kind="meas", address=2)
    )
    (msg,) = problems_of(text)
    line = line_of(text, 'kind = "meas"')
    assert msg == (
        f"pm.toml:{line}: point 'B.vm': kind: expected one of status, measurement, "
        f"command, setpoint, found 'meas'"
    )


def test_every_problem_is_reported_with_its_line():
    text = (
        HEAD
        + "colour = 'red'\n"
        + (
            block("A", "bus.vm_pu[1]", direction="sideways", extra="lo = 0.9\n")
            + block("B", "bus.vm_pu", address=2)
            + block(
                "C",
                "bus.vm_pu[3]",
                mtable="input_regs",
                address=4,
                modbus_extra="unit = 300\nendian = 'big'\n",
            )
            + block("D", "bus.vm_pu[4]", address=-2, dtype="float16")
            + block("E", "bus.vm_pu[5]", address=8, extra="low = 2.0\nhigh = 1.0\n")
            + block("F", "bus.vm_pu[6]", address=10, node="SS1/BAY/F")
            + block("G", "bus.vm_pu[7]", address=12, modbus_extra="na = 'none'\n")
            + block(
                "H",
                'bus.vm_pu["Bus 1"]',
                mtable="input_register",
                address=14,
                dtype="int16",
                modbus_extra="na = 40000\n",
                extra="deadband = -1\ninterval_s = 0\n",
            )
        )
    )
    problems = problems_of(text)
    expected = [
        (line_of(text, "colour"), None, "colour: unknown key"),
        (
            line_of(text, 'direction = "sideways"'),
            "A",
            "direction: expected one of to_twin, to_field, found 'sideways'",
        ),
        (line_of(text, "lo = 0.9"), "A", "lo: unknown key"),
        (line_of(text, "bind = 'bus.vm_pu'"), "B", "bind: expected table.column[index]"),
        (
            line_of(text, 'table = "input_regs"'),
            "C",
            "modbus.table: expected one of coil, discrete_input, input_register, "
            "holding_register, found 'input_regs'",
        ),
        (line_of(text, "unit = 300"), "C", "modbus.unit: expected a value in [0, 255]"),
        (line_of(text, "endian"), "C", "modbus.endian: unknown key"),
        (line_of(text, "address = -2"), "D", "modbus.address: expected a value in [0, 65535]"),
        (line_of(text, 'type = "float16"'), "D", "modbus.type: expected one of bool, int16"),
        (line_of(text, "high = 1.0"), "E", "high: expected high >= low (2), found 1"),
        (line_of(text, 'node_id = "SS1/BAY/F"'), "F", "opcua.node_id: expected 'ns=<index>;s="),
        (line_of(text, "na = 'none'"), "G", "modbus.na: expected a number (or nan)"),
        (line_of(text, "na = 40000"), "H", "modbus.na: expected a raw int16 value"),
        (line_of(text, "deadband = -1"), "H", "deadband: expected a value >= 0"),
        (line_of(text, "interval_s = 0"), "H", "interval_s: expected a number > 0"),
    ]
    for line, point, what in expected:
        prefix = f"pm.toml:{line}: " + (f"point {point!r}: " if point else "")
        assert any(p.startswith(prefix) and what in p for p in problems), (
            f"missing {prefix}{what}\n" + "\n".join(problems)
        )
    assert len(problems) == len(expected), "\n".join(problems)


def test_missing_required_keys():
    text = HEAD + '\n[[point]]\nname = "A"\n[point.modbus]\ntable = "coil"\n'
    problems = problems_of(text)
    hdr = line_of(text, "[[point]]")
    assert f"pm.toml:{hdr}: point 'A': bind: missing (expected a string)" in problems
    assert any(
        p.startswith(f"pm.toml:{hdr}: point 'A': kind: missing (expected one of") for p in problems
    )
    assert any("modbus.address: missing" in p for p in problems)
    nameless = HEAD + "\n[[point]]\nbind = 'bus.vm_pu[1]'\n"
    assert any("point '#1': name: missing" in p for p in problems_of(nameless))


def test_toml_syntax_error_names_file_and_line():
    with pytest.raises(PointMapError, match=r"bad\.toml: not valid TOML: .*line 3"):
        loads_pointmap("a = 1\n\nb = = 2\n", source="bad.toml")


def test_point_must_be_an_array_of_tables():
    problems = problems_of("point = 3\n")
    assert problems == ["pm.toml:1: point: expected [[point]] tables (an array of tables)"]


def test_load_pointmap_errors_name_the_file(tmp_path):
    f = tmp_path / "map.toml"
    f.write_text(HEAD + block("A", "bus.vm_pu[1]", kind="meas"), encoding="utf-8")
    with pytest.raises(PointMapError, match=rf"{f}:\d+: point 'A': kind"):
        load_pointmap(f)
    with pytest.raises(PointMapError, match="cannot read point map"):
        load_pointmap(tmp_path / "missing.toml")


# --- checker ---------------------------------------------------------------------------------
CHECK_CASES = [
    # (point name, block kwargs, expected text)
    ("unknown_table", dict(bind="bsu.vm_pu[1]", address=20), "table: expected one of bus, line"),
    ("unknown_column", dict(bind="bus.v_pu[1]", address=22), "column: expected one of "),
    (
        "unknown_index",
        dict(bind="bus.vm_pu[99]", address=24),
        "element: expected an index of bus (15 rows), found 99",
    ),
    (
        "unknown_name",
        dict(bind='bus.vm_pu["Bus 99"]', address=26),
        "element: expected the name of a bus element, found 'Bus 99'",
    ),
    ("ambiguous", dict(bind='load.p_mw["Twin"]', address=28), "element: name 'Twin' is ambiguous"),
    (
        "odd_float",
        dict(bind="bus.vm_pu[1]", address=101),
        "modbus.address: a float32 spans 2 registers and must start at an even address, found 101",
    ),
    (
        "odd_float64",
        dict(bind="bus.vm_pu[1]", address=111, dtype="float64"),
        "a float64 spans 4 registers",
    ),
    (
        "bool_in_register",
        dict(bind="bus.vm_pu[2]", address=120, dtype="bool"),
        "modbus.type: a bool does not belong in an input_register",
    ),
    (
        "float_in_coil",
        dict(bind='switch.cmd["S2"]', kind="command", mtable="coil", address=5),
        "modbus.type: a coil holds one bit: expected 'bool'",
    ),
    (
        "meas_in_holding",
        # (to_field: the twin writes it to a device under test, see test_scenario_hardware_dut)
        dict(bind="bus.vm_pu[3]", direction="to_twin", mtable="holding_register", address=0),
        "modbus.table: a holding_register is writable by clients, only for commands and setpoints",
    ),
    (
        "status_in_coil",
        dict(
            bind='switch.closed["S2"]',
            kind="status",
            direction="to_twin",
            mtable="coil",
            dtype="bool",
            address=0,
        ),
        "a coil is writable by clients",
    ),
    (
        "setpoint_in_input",
        dict(bind="sgen.p_limit_pct[0]", kind="setpoint", address=130),
        "modbus.table: a setpoint must be writable by clients: expected a holding_register",
    ),
    (
        "status_to_field",
        dict(
            bind='switch.closed["S2"]',
            kind="status",
            direction="to_field",
            mtable="discrete_input",
            dtype="bool",
            address=0,
        ),
        "direction: a status is read from the field: expected 'to_twin', found 'to_field'",
    ),
    (
        "command_to_twin",
        dict(
            bind='switch.cmd["S2"]',
            kind="command",
            direction="to_twin",
            mtable="coil",
            dtype="bool",
            address=1,
        ),
        "direction: a command goes to the field: expected 'to_field', found 'to_twin'",
    ),
]


def test_checker_finds_every_error_class_with_its_line(cigre):
    net = copy.deepcopy(cigre)
    net.load.loc[[0, 1], "name"] = "Twin"
    text = HEAD
    for name, kw, _ in CHECK_CASES:
        text += block(name, **kw)
    pm = loads_pointmap(text, source="c.toml")
    problems = check_pointmap(pm, net)
    for name, _, what in CHECK_CASES:
        prefix = f"c.toml:{header_of(text, name)}: point {name!r}: "
        assert any(p.startswith(prefix) and what in p for p in problems), (
            f"missing {prefix}{what}\n" + "\n".join(problems)
        )
    assert len(problems) == len(CHECK_CASES), "\n".join(problems)
    with pytest.raises(PointMapError) as info:
        assert_pointmap(pm, net)
    assert info.value.problems == problems
    assert "c.toml" in str(info.value) and "odd_float" in str(info.value)


def test_checker_overlaps_duplicates_and_node_ids(cigre):
    text = HEAD + (
        block("A", "bus.vm_pu[1]", address=0)  # registers 0..1
        + block("B", "bus.vm_pu[2]", address=2, dtype="float64")  # 2..5
        + block("C", "bus.vm_pu[3]", address=5, dtype="uint16")  # 5: overlaps B
        + block("D", "bus.vm_pu[4]", address=6)  # 6..7: fine
        + block("A", "bus.vm_pu[5]", address=8, node="ns=2;s=other")  # duplicate name
        + block("E", "bus.vm_pu[6]", address=10, node="ns=2;s=SS1/BAY/D")  # duplicate node id
        + block("F", "bus.vm_pu[7]", address=6, modbus_extra="unit = 2\n")  # other unit: fine
        + block(
            "G",
            'switch.closed["S2"]',
            kind="status",
            direction="to_twin",
            mtable="discrete_input",
            dtype="bool",
            address=6,
        )  # other table: fine
    )
    pm = loads_pointmap(text, source="o.toml")
    problems = check_pointmap(pm, cigre)
    lines = [
        ln
        for ln in range(1, len(text.splitlines()) + 1)
        if text.splitlines()[ln - 1] == "[[point]]"
    ]
    a1, b, c, _d, a2, e, _f, _g = lines
    assert problems == [
        f"o.toml:{c}: point 'C': modbus.address: input_register 5..5 on unit 1 overlaps point "
        f"'B' (2..5, line {b})",
        f"o.toml:{a2}: point 'A': duplicate point name (also at line {a1})",
        f"o.toml:{e}: point 'E': opcua.node_id: duplicate node id 'ns=2;s=SS1/BAY/D' (also "
        f"point 'D' at line {_d})",
    ]


def test_checker_on_code_built_map_without_lines(cigre):
    from twin.pointmap import ModbusBinding, Point, PointMap

    p = Point(
        name="X",
        table="bus",
        column="vm_pu",
        element=1,
        direction="to_field",
        kind="measurement",
        modbus=ModbusBinding(unit=1, table="input_register", address=1),
    )
    (msg,) = check_pointmap(PointMap(points=(p,)), cigre)
    assert msg.startswith("<point map>: point 'X': modbus.address: a float32 spans 2")
