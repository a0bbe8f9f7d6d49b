"""The scenario file format: parsing, and errors naming file, key, line and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from scenarios.config import load_scenario, loads_scenario, parse_condition
from scenarios.timeparse import format_clock, parse_duration, parse_start, parse_time
from twin.errors import ConfigError

BASE = """
grid = "urban_district"
start = "06:00"
duration = "2h"
step = "1min"
"""


def test_durations_and_times() -> None:
    assert parse_duration("1min") == 60
    assert parse_duration("1h30min") == 5400
    assert parse_duration("5s") == 5
    assert parse_duration(90) == 90
    assert parse_duration("250ms") == pytest.approx(0.25)
    with pytest.raises(ValueError, match="duration like"):
        parse_duration("soon")
    sod, dt = parse_start("06:00")
    assert sod == 6 * 3600 and dt is None
    sod, dt = parse_start("2026-06-21T18:30")
    assert sod == 18.5 * 3600 and dt is not None
    assert parse_time("07:30", 6 * 3600, None) == 5400
    assert parse_time("+90min", 6 * 3600, None) == 5400
    assert parse_time("05:00", 6 * 3600, None) == 23 * 3600  # before the start: next day
    assert format_clock(3600 * 25, 0) == "1+01:00:00"


def test_minimal_scenario_defaults() -> None:
    sc = loads_scenario(BASE)
    assert sc.grid == "urban_district"
    assert sc.steps == 120
    assert sc.mode == "hil" and sc.pace == "fast" and sc.hardware == "emulated"
    # the twin's measurements in-process, statuses and commands over Modbus TCP on loopback
    assert sc.links == ("direct", "modbus")
    assert sc.start_sod == 6 * 3600


def test_events_checks_profiles_parsed_into_frozen_dataclasses() -> None:
    sc = loads_scenario(
        BASE
        + """
[[profile]]
table = "sgen"
match = "PV_*"
shape = "pv_cloudy"
scale = 2

[[event]]
kind = "line_outage"
element = "L_N2_N3"
at = "07:00"
duration = "10min"

[[event]]
kind = "switch_close"
element = "Q45"
when = "bus.vm_pu[N4] < 0.5"
delay = "2min"

[[check]]
kind = "voltage_band"
buses = ["N1"]
max_pu = 1.05
window = ["06:30", "07:30"]
"""
    )
    p = sc.profiles[0]
    assert (p.table, p.match, p.shape, p.scale) == ("sgen", "PV_*", "pv_cloudy", 2.0)
    e0, e1 = sc.events
    assert e0.at == 3600 and e0.duration == 600 and e0.param("element") == "L_N2_N3"
    assert e1.when is not None and e1.when.holds(0.1) and not e1.when.holds(0.9)
    assert e1.delay == 120
    c = sc.checks[0]
    assert c.window == (1800, 5400) and c.param("buses") == ("N1",)
    with pytest.raises(AttributeError):
        c.kind = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("extra", "key", "allowed"),
    [
        ('mode = "twin"', "mode", "hil, mirror"),
        ('colour = "red"', "colour", "allowed keys"),
        ('pace = "slow"', "pace", "fast, realtime"),
        ('device_tick = "1s"', "device_tick", "allowed keys"),  # devices are event-driven
        ('[[event]]\nkind = "explode"\nat = 1', "event[0].kind", "switch_open"),
        (
            '[[event]]\nkind = "switch_open"\nelement = "Q1"\nat = "09:00"',
            "event[0].at",
            "within the run",
        ),
        (
            '[[event]]\nkind = "switch_open"\nelement = "Q1"\nat = 5\nwhat = 1',
            "event[0].what",
            "allowed keys",
        ),
        ('[[check]]\nkind = "voltage_band"\nmax_pu = "high"', "check[0].max_pu", "a number"),
        ('[[profile]]\ntable = "line"\nshape = "residential"', "profile[0].table", "load, sgen"),
        ('[[profile]]\nshape = "sunny"', "profile[0].shape", "pv_clear"),
        ('[[event]]\nkind = "load_step"\nmatch = "*"\nat = 5', "event[0].delta_mw", "factor"),
        ('links = ["modbus"]', "links", "opcua"),
        ('hardware = "nope.toml"', "hardware", "existing hardware.toml"),
    ],
)
def test_bad_values_name_key_and_allowed(extra: str, key: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        loads_scenario(BASE + extra + "\n", path=Path("bad.toml"))
    msg = str(info.value)
    assert info.value.key == key
    assert "bad.toml" in msg and allowed in msg


def test_error_carries_the_line_of_the_key() -> None:
    text = BASE + '\n[[event]]\nkind = "switch_open"\nelement = "Q12"\nat = "23:59"\n'
    with pytest.raises(ConfigError) as info:
        loads_scenario(text, path=Path("s.toml"))
    lines = text.splitlines()
    assert info.value.line is not None
    assert lines[info.value.line - 1].startswith("at =")
    assert f"s.toml:{info.value.line}" in str(info.value)


def test_missing_grid_and_bad_toml() -> None:
    with pytest.raises(ConfigError, match="grid: missing"):
        loads_scenario('duration = "1h"')
    with pytest.raises(ConfigError, match="not valid TOML"):
        loads_scenario("grid = ")


def test_condition_syntax() -> None:
    c = parse_condition("line.loading_percent[L_N1_N2] >= 80")
    assert (c.table, c.column, c.element, c.op, c.value) == (
        "line",
        "loading_percent",
        "L_N1_N2",
        ">=",
        80.0,
    )
    with pytest.raises(ValueError, match="condition"):
        parse_condition("voltage is high")


def test_every_bundled_scenario_parses() -> None:
    lib = Path(__file__).resolve().parents[2] / "scenarios" / "library"
    files = sorted(lib.glob("*.toml"))
    assert len(files) == 8
    for f in files:
        sc = load_scenario(f)
        assert sc.checks, f"{f.name} has no checks"


def test_every_problem_of_the_file_is_named_at_once(tmp_path: Path) -> None:
    """A file with several typos names all of them, in file order, with their lines: an engineer
    fixes the file in one pass, not one run per typo."""
    f = tmp_path / "typos.toml"
    f.write_text(
        'grid = "ieee14"\n'
        'duraton = "1h"\n'  # line 2: unknown top-level key
        'pace = "fastest"\n'  # line 3: bad choice
        "\n[[event]]\n"
        'at = "00:10"\n'
        'kind = "line_outage"\n'
        "elemnt = 3\n"  # line 8: unknown key in an event
        "\n[[check]]\n"
        'kind = "voltage_band"\n'
        "mn = 0.9\n",  # line 12: unknown key in a check
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as ei:
        load_scenario(f)
    msg = str(ei.value)
    assert msg.startswith(f"{f}: 4 problems:")
    lines = msg.splitlines()[1:]
    assert [ln.split(": ")[0].rsplit(":", 1)[-1] for ln in lines] == ["2", "3", "8", "12"]
    assert "duraton: unknown key" in lines[0] and "pace" in lines[1] and "fastest" in lines[1]
    assert "event[0].elemnt" in lines[2] and "check[0].mn" in lines[3]
    assert ei.value.key == "duraton" and ei.value.line == 2  # the first problem's


def test_a_wrong_time_axis_does_not_flood_events_with_derived_errors(tmp_path: Path) -> None:
    """With the duration wrong, events and checks are not judged against a made-up one."""
    f = tmp_path / "dur.toml"
    f.write_text(
        'grid = "ieee14"\nduration = "-1h"\n\n[[event]]\nat = "23:00"\nkind = "line_outage"\n'
        "element = 3\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as ei:
        load_scenario(f)
    assert ei.value.key == "duration" and "problems" not in str(ei.value)
