"""Checks of a parsed scenario against its grid: every named element must exist.

``check_against_grid`` returns one line per problem (empty when valid); ``assert_against_grid``
raises ``ConfigError`` listing them, each naming the key and what the grid has.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

from scenarios.config import Scenario
from scenarios.profiles import check_profile_csv, element_labels, select_elements
from twin.errors import ConfigError
from twin.labels import unknown_label as _unknown

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
POINT_KINDS = ("setpoint", "meas_noise", "meas_bias", "meas_frozen")
#: Events that act on field devices: they need hardware (emulated or real).
FIELD_EVENTS = (
    "setpoint",
    "comms_loss",
    "comms_restore",
    "device_restart",
    "meas_noise",
    "meas_bias",
    "meas_frozen",
)
FIELD_CHECKS = ("field_value", "expect_stale", "expect_alarm")


#: Where each event kind works (docs/scenarios.md, "Events and checks by field"): with the
#: emulated substation, against real hardware (a hardware.toml) in hil mode, and in mirror mode
#: against hardware. "yes"; "points": when the running point map has the points named in the
#: reason (checked per event); "links": a comms target must be a link of the hardware file;
#: anything else is the reason it is refused.
_PLANT_IS_HW = (
    "in mirror mode against hardware the hardware is the plant: the twin follows what it reads "
    "and cannot change the plant's loads, lines or faults"
)
_EMULATOR_ONLY = (
    "acts inside the emulated substation (a device restart, a meter's noise or bias); the twin "
    "cannot do that to a real device"
)
EVENT_SUPPORT: dict[str, tuple[str, str, str]] = {
    # kind: (emulated, hardware hil, hardware mirror)
    "switch_open": ("yes", "points", "points"),
    "switch_close": ("yes", "points", "points"),
    "load_step": ("yes", "yes", _PLANT_IS_HW),
    "gen_step": ("yes", "yes", _PLANT_IS_HW),
    "line_outage": ("yes", "yes", _PLANT_IS_HW),
    "line_return": ("yes", "yes", _PLANT_IS_HW),
    "trafo_outage": ("yes", "yes", _PLANT_IS_HW),
    "trafo_return": ("yes", "yes", _PLANT_IS_HW),
    "fault": ("yes", "yes", _PLANT_IS_HW),
    "der_trip": ("yes", "points", "points"),
    "der_reconnect": ("yes", "points", "points"),
    "tap_change": ("yes", "points", "points"),
    "setpoint": ("yes", "points", "points"),
    "comms_loss": ("yes", "links", "links"),
    "comms_restore": ("yes", "links", "links"),
    "device_restart": ("yes", _EMULATOR_ONLY, _EMULATOR_ONLY),
    "meas_noise": ("yes", _EMULATOR_ONLY, _EMULATOR_ONLY),
    "meas_bias": ("yes", _EMULATOR_ONLY, _EMULATOR_ONLY),
    "meas_frozen": ("yes", _EMULATOR_ONLY, _EMULATOR_ONLY),
    "process": ("yes", "yes", "yes"),
}
#: The command points an event needs against hardware: (table, columns) per element.
EVENT_POINTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "switch_open": ("switch", ("cmd",)),
    "switch_close": ("switch", ("cmd",)),
    "der_trip": ("sgen", ("p_limit_pct",)),
    "der_reconnect": ("sgen", ("p_limit_pct",)),
    "tap_change": ("trafo", ("tap_raise", "tap_lower")),
}
#: Check kinds by field, as EVENT_SUPPORT (a check reads; "yes" unless a reason is given).
CHECK_SUPPORT: dict[str, tuple[str, str, str]] = {
    "field_value": (
        "yes",
        "reads the emulated substation's point store; against hardware use a when= condition "
        "or a check on the twin's values",
        "reads the emulated substation's point store; against hardware use a check on the "
        "twin's values",
    ),
    "no_divergence": ("yes", "divergence is flagged in mirror mode only", "yes"),
    "expect_alarm": ("yes", "divergence alarms are raised in mirror mode only", "yes"),
}


def field_kind(scenario: Scenario) -> str:
    """``"none"``, ``"emulated"``, ``"hardware"`` (hil) or ``"mirror"`` (mirror on hardware)."""
    if scenario.hardware == "none":
        return "none"
    if scenario.hardware_path() is None:
        return "emulated"
    return "mirror" if scenario.mode == "mirror" else "hardware"


def _support(table: dict[str, tuple[str, str, str]], kind: str, fk: str) -> str:
    row = table.get(kind, ("yes", "yes", "yes"))
    return {"emulated": row[0], "hardware": row[1], "mirror": row[2]}.get(fk, "yes")


def field_problems(scenario: Scenario, net: Any, pointmap: Any, hardware: Any = None) -> list[str]:
    """Events and checks the scenario's field cannot carry out (EVENT_SUPPORT/CHECK_SUPPORT),
    each naming the event or check, its line and why; setpoints that are not writable points."""
    fk = field_kind(scenario)
    if fk == "none" or pointmap is None:
        return []
    problems: list[str] = []
    names = {p.name: p for p in pointmap.points}
    against = (
        "against real hardware" if fk == "hardware" else "in mirror mode against real hardware"
    )

    def where(section: str, i: int, key: str, line: int | None) -> str:
        return f"{section}[{i}].{key}" + (f" (line {line})" if line else "")

    for ev in scenario.events:
        sup = _support(EVENT_SUPPORT, ev.kind, fk)
        at = where("event", ev.index, "kind", ev.line)
        if sup in ("yes",):
            pass
        elif sup == "points" and ev.kind in EVENT_POINTS:
            table, cols = EVENT_POINTS[ev.kind]
            elements = list(ev.param("elements", ()) or ())
            if ev.param("element"):
                elements.append(ev.param("element"))
            idx = select_elements(net, table, elements=elements, match=ev.param("match"))
            from twin.labels import table_labels

            labels = table_labels(net, table)
            missing = [
                f"{labels[i]}.{c}"
                for i in idx
                for c in cols
                if f"{labels[i]}.{c}" not in names
                or names[f"{labels[i]}.{c}"].direction != "to_field"
            ]
            if missing:
                problems.append(
                    f"{at}: a {ev.kind} {against} is sent as a command and needs to_field "
                    f"point(s) {', '.join(missing[:5])}"
                    + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
                    + f" in the point map {pointmap.source or '(generated)'}; found none"
                )
        elif sup == "points" and ev.kind == "setpoint":
            p = names.get(ev.param("point"))
            if p is not None and (
                p.direction != "to_field" or p.kind not in ("setpoint", "command")
            ):
                problems.append(
                    f"{where('event', ev.index, 'point', ev.line)}: expected a to_field setpoint "
                    f"or command point, found {p.name!r} ({p.kind}, {p.direction})"
                )
        elif sup == "links":
            target = ev.param("target")
            allowed = _link_targets(hardware)
            if target not in allowed:
                problems.append(
                    f"{where('event', ev.index, 'target', ev.line)}: a {ev.kind} {against} "
                    f"cuts a link; expected one of {', '.join(sorted(allowed)) or '(no links)'}, "
                    f"found {target!r} (cutting one device off is emulator-only)"
                )
        elif sup != "yes":
            problems.append(f"{at}: a {ev.kind} event is not supported {against}: {sup}")
    if hardware is not None:  # every output written by a link (hil.hardware.plan_links)
        from hil.hardware import plan_links

        try:
            plan_links(hardware, pointmap)
        except ConfigError as exc:
            problems.append(str(exc))
    for ck in scenario.checks:
        sup = _support(CHECK_SUPPORT, ck.kind, fk)
        if sup != "yes":
            problems.append(
                f"{where('check', ck.index, 'kind', ck.line)}: a {ck.kind} check is not "
                f"supported {against}: {sup}"
            )
    return problems


def _link_targets(hardware: Any) -> set[str]:
    """What a comms_loss may name against hardware: a protocol a device of the file uses."""
    out: set[str] = set()
    for d in getattr(hardware, "devices", ()):
        if d.opcua is not None:
            out.add("opcua")
        if d.modbus is not None:
            out.add("modbus")
    return out


def field_pointmap(scenario: Scenario, net: Any, hardware: Any = None) -> Any:
    """The point map the run will use: the hardware file's, else generated for the grid."""
    if scenario.hardware == "none":
        return None
    if hardware is not None and hardware.pointmap is not None:
        from twin.pointmap import load_pointmap

        return load_pointmap(hardware.pointmap)
    from twin.pointmap import generate_pointmap

    return generate_pointmap(net, mode=scenario.mode)


def load_hardware_of(scenario: Scenario) -> Any:
    """The parsed hardware.toml of the scenario (None without one).

    Raises:
        ConfigError: a wrong key or value in the file, with the key's line when it can be found.
    """
    path = scenario.hardware_path()
    if path is None:
        return None
    from hil.hardware import load_hardware

    try:
        return load_hardware(path)
    except ConfigError as exc:
        if exc.line is not None:
            raise
        line = toml_key_line(path, exc.key)
        if line is None:
            raise
        problem = str(exc).split(f": {exc.key}: ", 1)[-1]
        raise ConfigError(exc.path, exc.key, problem, line) from None


_KEY_PART = re.compile(r"([A-Za-z_][\w-]*)(?:\[(\d+)\])?")
_HEADER_LINE = re.compile(r"^\s*(\[\[?)\s*([A-Za-z_][\w.-]*)\s*\]\]?")
_KEY_LINE = re.compile(r"^\s*([A-Za-z_][\w-]*)\s*=")


def toml_key_line(path: Path | str, key: str) -> int | None:
    """The line of a dotted key such as ``device[0].opcua.timeout_s`` in a TOML file (the header
    line of its table when the key itself is not there), or None.

    Errors of files read without line information get their line from here.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    parts = [(m.group(1), int(m.group(2)) if m.group(2) else None) for m in _KEY_PART.finditer(key)]
    if not parts:
        return None
    *section, (last, _) = parts
    want = ".".join(n for n, _ in section)
    want_idx = next((i for _, i in reversed(section) if i is not None), None)
    counters: dict[str, int] = {}
    cur, cur_idx, header_line = "", None, None
    found_header: int | None = None
    for no, raw in enumerate(text.splitlines(), start=1):
        h = _HEADER_LINE.match(raw)
        if h:
            cur = h.group(2)
            top = cur.split(".")[0]
            if h.group(1) == "[[":
                counters[top] = counters.get(top, -1) + 1
            cur_idx = counters.get(top)
            header_line = no
            if cur == want and (want_idx is None or cur_idx == want_idx):
                found_header = found_header or no
            continue
        k = _KEY_LINE.match(raw)
        if k and k.group(1) == last and cur == want and (want_idx is None or cur_idx == want_idx):
            return no
        if header_line is None and not want and k and k.group(1) == last:
            return no
    if last and want == "" and found_header is None:
        return None
    return found_header


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


#: Element tables a record quantity or a condition may name (pandapower's, with results).
QUANTITY_TABLES = (
    "bus",
    "line",
    "trafo",
    "trafo3w",
    "switch",
    "load",
    "sgen",
    "gen",
    "ext_grid",
    "shunt",
    "storage",
    "impedance",
    "ward",
    "xward",
)


def quantity_columns(net: Any, table: str) -> list[str]:
    """The numeric columns of ``table`` a quantity may name: its load-flow results
    (``res_<table>``) first, then the model inputs (``in_service``, ``tap_pos``...)."""
    import pandas as pd

    cols: list[str] = []
    for name in ("res_" + table, table):
        if name in net and isinstance(net[name], pd.DataFrame):
            df = net[name]
            for col in df.columns:
                if col not in cols and (
                    pd.api.types.is_numeric_dtype(df[col]) or pd.api.types.is_bool_dtype(df[col])
                ):
                    cols.append(str(col))
    return cols


def quantity_problem(
    net: Any, table: str, column: str, label: str | None, *, condition: bool = False
) -> str:
    """Why ``<table>.<column>[<label>]`` names nothing the run can read ('' when it does).

    Unknown tables, columns and labels get the closest names. A table the grid has no element
    of is fine in ``[record]`` (it records nothing: the default list names every table) but not
    in a ``when`` condition, which needs one element to watch.
    """
    import pandas as pd

    tables = [t for t in QUANTITY_TABLES if t in net and isinstance(net[t], pd.DataFrame)]
    if table not in tables:
        close = difflib.get_close_matches(table, tables, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"tables: {', '.join(tables)}"
        return f"no table {table!r}; {hint}"
    cols = quantity_columns(net, table)
    if len(net[table]) == 0:
        if condition:
            return f"the grid has no {table} element to watch"
        return ""
    if column not in cols:
        close = difflib.get_close_matches(column, cols, n=3)
        hint = (
            f"did you mean {', '.join(close)}?"
            if close
            else f"columns: {', '.join(cols[:12])}" + (" ..." if len(cols) > 12 else "")
        )
        return f"no column {column!r} in {table} (results or inputs); {hint}"
    if label is not None:
        lab = element_labels(net, table)
        if label not in lab:
            return _unknown(net, table, label, lab)
    return ""


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
        problems += [str(e) for e in check_profile_csv(p.csv)] if p.csv is not None else []
        lab = labels.get(p.table, {})
        for e in p.elements:
            if e not in lab:
                problems.append(
                    f"{where('profile', i, 'elements', p.line)}: {_unknown(net, p.table, e, lab)}"
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
                        f"{where('event', ev.index, 'element', ev.line)}: "
                        f"{_unknown(net, table, e, lab)}"
                    )
            if ev.param("match") and not select_elements(net, table, match=ev.param("match")):
                problems.append(
                    f"{where('event', ev.index, 'match', ev.line)}: expected at "
                    f"least one {table} matching {ev.param('match')!r}, found none"
                )
        if ev.when is not None:
            c = ev.when
            what = quantity_problem(net, c.table, c.column, c.element, condition=True)
            if what:
                problems.append(f"{where('event', ev.index, 'when', ev.line)}: {c.text!r}: {what}")
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
    for q in scenario.record.quantities:
        table, _, rest = q.partition(".")
        column, _, label = rest.partition("[")
        what = quantity_problem(net, table, column, label.rstrip("]") or None)
        if what:
            line = f" (line {scenario.record.line})" if scenario.record.line else ""
            problems.append(f"record.quantities{line}: {q!r}: {what}")
    if scenario.mode == "mirror" and scenario.hardware == "none":
        problems.append(
            'mode: mode = "mirror" compares the twin with a field it follows: expected '
            'hardware = "emulated" or a hardware file, found hardware = "none"'
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
                        f"{_unknown(net, table, e, labels.get(table, {}))}"
                    )
        if ck.kind == "switch_state" and ck.param("element") not in labels.get("switch", {}):
            problems.append(
                f"{where('check', ck.index, 'element', ck.line)}: "
                f"{_unknown(net, 'switch', ck.param('element'), labels.get('switch', {}))}"
            )
        if ck.kind in ("expect_alarm", "expect_stale", "field_value") and pointmap is not None:
            if ck.param("point") not in {p.name for p in pointmap.points}:
                problems.append(
                    f"{where('check', ck.index, 'point', ck.line)}: no point named "
                    f"{ck.param('point')!r} in the point map"
                )
    return problems


def assert_against_grid(
    scenario: Scenario, net: Any, pointmap: Any = None, hardware: Any = None
) -> None:
    """Raise ``ConfigError`` listing every problem of :func:`check_against_grid` and, with a
    point map, of :func:`field_problems` (the field that will run)."""
    problems = check_against_grid(scenario, net, pointmap)
    if pointmap is not None:
        problems += field_problems(scenario, net, pointmap, hardware)
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
    hw = load_hardware_of(sc)
    pm = field_pointmap(sc, net, hw)
    problems: list[str] = []
    if hw is not None and hw.pointmap is not None:
        from twin.pointmap import check_pointmap

        # the hardware field refuses a point map that does not fit the grid when it starts
        problems += [f"{hw.pointmap}: {p}" for p in check_pointmap(pm, net)]
    return sc, problems + check_against_grid(sc, net, pm) + field_problems(sc, net, pm, hw)
