"""The one TOML reader: key lines, syntax errors with their line, every problem at once."""

from __future__ import annotations

import pytest

from hil.hardware import load_hardware
from twin.errors import ConfigError, PointMapError
from twin.pointmap import load_pointmap
from twin.tomlfile import KeyLines, Problems, TomlFileError, load_toml, parse_toml

TEXT = """\
top = 1
[[device]]
name = "a"
[device.modbus]
port = 5
[[device]]
name = "b"  # a comment
notes = \"\"\"
port = 9
\"\"\"
[device.opcua]
mode.sub = 2
"""


@pytest.mark.parametrize(
    ("path", "line"),
    [
        (("top",), 1),
        (("device", 0), 2),
        (("device", 0, "modbus", "port"), 5),
        (("device", 1, "name"), 7),
        (("device", 1, "opcua", "mode", "sub"), 12),
        # not written: the nearest enclosing table
        (("device", 1, "opcua", "endpoint"), 11),
        (("device", 1, "modbus"), 6),
    ],
)
def test_key_lines(path, line):
    assert KeyLines(TEXT).line(path) == line


def test_a_key_inside_a_multiline_string_is_no_key():
    assert KeyLines(TEXT).exact(("device", 1, "port")) is None


def test_syntax_error_names_file_and_line():
    with pytest.raises(TomlFileError) as info:
        parse_toml("a = 1\n\nb = = 2\n", source="bad.toml")
    assert info.value.line == 3 and str(info.value).startswith("bad.toml:3: (syntax): not valid")
    assert isinstance(info.value, ConfigError)


def test_unreadable_and_not_utf8(tmp_path):
    with pytest.raises(TomlFileError, match="cannot read the x file.*expected a readable file"):
        load_toml(tmp_path / "absent.toml", what="the x file")
    f = tmp_path / "latin.toml"
    f.write_bytes(b"a = 1\nb = '\xff'\n")
    with pytest.raises(TomlFileError, match=r"latin\.toml:2: file: expected UTF-8.*0xff"):
        load_toml(f)


def test_problems_collects_then_raises_all():
    doc = parse_toml(TEXT, source="hw.toml")
    problems = Problems(doc)
    problems.add(("device", 0, "modbus", "port"), "expected a TCP port, found 5")
    problems.add(("device", 1, "opcua", "endpoint"), "missing")
    with pytest.raises(TomlFileError) as info:
        problems.raise_if_any()
    assert [str(p) for p in info.value.problems] == [
        "hw.toml:5: device[0].modbus.port: expected a TCP port, found 5",
        "hw.toml:11: device[1].opcua.endpoint: missing",
    ]
    assert "2 problems" in str(info.value)


def test_hardware_file_reports_every_problem_with_its_line(tmp_path):
    f = tmp_path / "hardware.toml"
    f.write_text(
        "stale_policy = 'maybe'\n"  # 1
        "colour = 'red'\n"  # 2
        "[[device]]\n"  # 3
        "name = 'a'\n"  # 4
        "[device.modbus]\n"  # 5
        "host = 'h'\n"  # 6
        "port = 70000\n"  # 7
        "[device.opcua]\n"  # 8
        "endpoint = 'http://x'\n"  # 9
        "[[device]]\n"  # 10
        "name = 'b'\n"  # 11
        "[device.modbus]\n"  # 12
        "hots = 'h'\n",  # 13
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_hardware(f, env={})
    got = {(p.line, p.key) for p in info.value.problems}
    assert got == {
        (1, "stale_policy"),
        (2, "colour"),
        (7, "device[0].modbus.port"),
        (9, "device[0].opcua.endpoint"),
        (13, "device[1].modbus.hots"),
        (12, "device[1].modbus.host"),
    }, info.value.problems
    assert all(str(f) in str(p) for p in info.value.problems)


def test_pointmap_read_errors_go_through_the_reader(tmp_path):
    f = tmp_path / "pm.toml"
    f.write_bytes(b"substation = '\xff'\n")
    with pytest.raises(PointMapError, match="expected UTF-8"):
        load_pointmap(f)
