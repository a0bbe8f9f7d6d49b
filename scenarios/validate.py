"""Checks of a parsed scenario against its grid: every named element must exist.

``check_against_grid`` returns one line per problem (empty when valid); ``assert_against_grid``
raises ``ConfigError`` listing them, each naming the key and what the grid has.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from scenarios.config import Scenario
from scenarios.profiles import element_labels, select_elements
from twin.errors import ConfigError

#: The table an event kind's ``element`` names.
EVENT_TABLE = {
    "switch_open": "switch",
    "switch_close": "switch",
    "load_step": "load",
    "gen_step": "sgen",
    "line_outage": "line",
    "line_return": "line",
    "trafo_outage": "trafo",
    "trafo_return": "trafo",
    "fault": "line",
    "der_trip": "sgen",
    "der_reconnect": "sgen",
    "tap_change": "trafo",
}
CHECK_TABLE = {"buses": "bus", "lines": "line", "trafos": "trafo"}
POINT_KINDS = ("setpoint", "meas_noise", "meas_bias")
#: Events that act on field devices: they need hardware (emulated or real).
FIELD_EVENTS = (
    "setpoint",
    "comms_loss",
    "comms_restore",
    "device_restart",
    "meas_noise",
    "meas_bias",
)
FIELD_CHECKS = ("field_value", "expect_stale", "expect_alarm")


def load_grid(scenario: Scenario) -> Any:
    """The scenario's pandapower net: a bundled grid by name, or a grid file."""
    import grids

    path = scenario.grid_path()
    where = str(scenario.path) if scenario.path else "<scenario>"
    if path is None:
        try:
            return grids.load(scenario.grid)
        except KeyError as exc:
            raise ConfigError(where, "grid", str(exc)) from None
    if not path.is_file():
        raise ConfigError(
            where,
            "grid",
            f"expected a bundled grid name or an existing grid file, found no file at {path}",
        )
    from grids import importers
    from twin.errors import GridDataError

    readers = {".m": importers.read_matpower, ".json": importers.read_pandapower_json}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise ConfigError(
            where,
            "grid",
            f"expected a MATPOWER .m or pandapower .json grid file, found {path.name}",
        )
    try:
        net = reader(path)
    except GridDataError as exc:
        raise ConfigError(where, "grid", str(exc)) from None
    problems = importers.validate(net, path)
    if problems:
        raise ConfigError(where, "grid", f"{path.name}: " + "; ".join(problems))
    return net


def _unknown(kind: str, name: str, labels: dict[str, int]) -> str:
    close = difflib.get_close_matches(name, list(labels), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; the grid has {len(labels)}"
    return f"no {kind} named {name!r}{hint}"


def check_against_grid(scenario: Scenario, net: Any, pointmap: Any = None) -> list[str]:
    """Problems of ``scenario`` on ``net``: unknown elements, empty profile selections, points.

    ``pointmap`` (optional) is used to check point names of setpoint and measurement events.
    """
    problems: list[str] = []
    labels = {
        t: element_labels(net, t)
        for t in ("bus", "line", "trafo", "switch", "load", "sgen")
        if t in net
    }

    def where(section: str, i: int, key: str, line: int | None) -> str:
        return f"{section}[{i}].{key}" + (f" (line {line})" if line else "")

    for i, p in enumerate(scenario.profiles):
        lab = labels.get(p.table, {})
        for e in p.elements:
            if e not in lab:
                problems.append(
                    f"{where('profile', i, 'elements', p.line)}: {_unknown(p.table, e, lab)}"
                )
        try:
            idx = select_elements(
                net,
                p.table,
                elements=[e for e in p.elements if e in lab],
                match=p.match,
                type_=p.type,
                category=p.category,
            )
        except KeyError:
            idx = []
        if not idx:
            what = " ".join(
                f"{k}={v!r}"
                for k, v in (("match", p.match), ("type", p.type), ("category", p.category))
                if v is not None
            )
            problems.append(
                f"{where('profile', i, 'match', p.line)}: expected at least one "
                f"{p.table} element, found none matching {what or 'the elements'}"
            )
    for ev in scenario.events:
        if scenario.hardware == "none" and ev.kind in FIELD_EVENTS:
            problems.append(
                f"{where('event', ev.index, 'kind', ev.line)}: a {ev.kind} event "
                'acts on field devices: expected hardware = "emulated" or a '
                'hardware file, found hardware = "none"'
            )
        table = EVENT_TABLE.get(ev.kind)
        if table is not None:
            lab = labels.get(table, {})
            names = list(ev.param("elements", ()) or ())
            if ev.param("element"):
                names.append(ev.param("element"))
            for e in names:
                if e not in lab:
                    problems.append(
                        f"{where('event', ev.index, 'element', ev.line)}: {_unknown(table, e, lab)}"
                    )
            if ev.param("match") and not select_elements(net, table, match=ev.param("match")):
                problems.append(
                    f"{where('event', ev.index, 'match', ev.line)}: expected at "
                    f"least one {table} matching {ev.param('match')!r}, found none"
                )
        if ev.when is not None:
            c = ev.when
            if c.table not in labels:
                problems.append(
                    f"{where('event', ev.index, 'when', ev.line)}: no table "
                    f"{c.table!r}; tables: {', '.join(labels)}"
                )
            elif c.element not in labels[c.table]:
                problems.append(
                    f"{where('event', ev.index, 'when', ev.line)}: "
                    f"{_unknown(c.table, c.element, labels[c.table])}"
                )
        if ev.kind in POINT_KINDS and pointmap is not None:
            name = ev.param("point")
            if name not in {p.name for p in pointmap.points}:
                close = difflib.get_close_matches(name, [p.name for p in pointmap.points], n=3)
                problems.append(
                    f"{where('event', ev.index, 'point', ev.line)}: no point named "
                    f"{name!r} in the point map"
                    + (f"; did you mean {', '.join(close)}?" if close else "")
                )
        if ev.kind == "process":
            from scenarios.events import load_function

            try:
                load_function(ev.param("function"))
            except (ImportError, AttributeError) as exc:
                problems.append(
                    f"{where('event', ev.index, 'function', ev.line)}: cannot import "
                    f"{ev.param('function')!r}: {exc}"
                )
    for ck in scenario.checks:
        if scenario.hardware == "none" and ck.kind in FIELD_CHECKS:
            problems.append(
                f"{where('check', ck.index, 'kind', ck.line)}: a {ck.kind} check "
                'reads the field: expected hardware = "emulated", found "none"'
            )
        for key, table in CHECK_TABLE.items():
            for e in ck.param(key, ()) or ():
                if e not in labels.get(table, {}):
                    problems.append(
                        f"{where('check', ck.index, key, ck.line)}: "
                        f"{_unknown(table, e, labels.get(table, {}))}"
                    )
        if ck.kind == "switch_state" and ck.param("element") not in labels.get("switch", {}):
            problems.append(
                f"{where('check', ck.index, 'element', ck.line)}: "
                f"{_unknown('switch', ck.param('element'), labels.get('switch', {}))}"
            )
        if ck.kind in ("expect_alarm", "expect_stale", "field_value") and pointmap is not None:
            if ck.param("point") not in {p.name for p in pointmap.points}:
                problems.append(
                    f"{where('check', ck.index, 'point', ck.line)}: no point named "
                    f"{ck.param('point')!r} in the point map"
                )
    return problems


def assert_against_grid(scenario: Scenario, net: Any, pointmap: Any = None) -> None:
    problems = check_against_grid(scenario, net, pointmap)
    if problems:
        where = str(scenario.path) if scenario.path else "<scenario>"
        first = problems[0].split(":", 1)[0]
        raise ConfigError(
            where,
            first,
            f"{len(problems)} problem(s) against grid "
            f"{scenario.grid!r}:\n  " + "\n  ".join(problems),
        )


def validate_file(path: Path | str) -> tuple[Scenario, list[str]]:
    """Parse and check a scenario file without running it: (scenario, problems)."""
    from scenarios.config import load_scenario

    sc = load_scenario(path)
    net = load_grid(sc)
    pm = None
    if sc.hardware != "none":
        from twin.pointmap import generate_pointmap

        pm = generate_pointmap(net, mode=sc.mode)
    return sc, check_against_grid(sc, net, pm)
