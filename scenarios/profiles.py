"""Profiles: time series that drive groups of loads and generators through a scenario.

Built-in day shapes are normalised (peak 1.0) and periodic over 24 h of clock time; CSV profiles
carry either clock times ("HH:MM[:SS]", periodic over a day) or seconds from the scenario start
(held at the ends). Values between samples are interpolated linearly or held (``step``).
"""

from __future__ import annotations

import csv
import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scenarios.config import ProfileSpec
from twin.errors import ConfigError

DAY = 86400.0

# Hourly shapes (value at hh:00, 0..23); built from typical published day curves, rounded.
_RESIDENTIAL = [
    0.42,
    0.36,
    0.33,
    0.32,
    0.33,
    0.38,
    0.52,
    0.66,
    0.62,
    0.52,
    0.48,
    0.47,
    0.50,
    0.47,
    0.45,
    0.47,
    0.55,
    0.70,
    0.88,
    1.00,
    0.97,
    0.86,
    0.70,
    0.54,
]
_COMMERCIAL = [
    0.30,
    0.28,
    0.27,
    0.27,
    0.28,
    0.32,
    0.42,
    0.60,
    0.82,
    0.94,
    0.98,
    1.00,
    0.97,
    0.99,
    1.00,
    0.97,
    0.92,
    0.82,
    0.66,
    0.52,
    0.44,
    0.38,
    0.34,
    0.31,
]
_INDUSTRIAL = [
    0.62,
    0.60,
    0.60,
    0.60,
    0.61,
    0.66,
    0.82,
    0.94,
    0.98,
    1.00,
    1.00,
    0.97,
    0.90,
    0.97,
    1.00,
    0.99,
    0.96,
    0.86,
    0.76,
    0.72,
    0.70,
    0.68,
    0.66,
    0.64,
]
_EV_EVENING = [
    0.30,
    0.24,
    0.18,
    0.12,
    0.08,
    0.06,
    0.06,
    0.08,
    0.10,
    0.10,
    0.10,
    0.10,
    0.12,
    0.12,
    0.14,
    0.18,
    0.30,
    0.55,
    0.85,
    1.00,
    0.95,
    0.80,
    0.60,
    0.42,
]


def _hourly(values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    t = np.arange(25, dtype=float) * 3600.0
    v = np.asarray(list(values) + [values[0]], dtype=float)
    return t, v


def _pv_clear() -> tuple[np.ndarray, np.ndarray]:
    # Sunrise 06:00, sunset 18:00, a sine bell sharpened a little (air mass at low sun).
    t = np.arange(0, DAY + 1, 300.0)
    h = t / 3600.0
    v = np.where((h > 6) & (h < 18), np.sin(np.pi * (h - 6) / 12).clip(0) ** 1.3, 0.0)
    return t, v


def _pv_cloudy(seed: int) -> tuple[np.ndarray, np.ndarray]:
    # Clear-sky bell times a cloud factor: passing clouds as a smoothed random walk (seeded).
    t, clear = _pv_clear()
    rng = np.random.default_rng(seed)
    steps = rng.normal(0.0, 0.18, size=t.size)
    walk = np.empty_like(steps)
    acc = 0.0
    for i, s in enumerate(steps):
        acc = 0.85 * acc + s
        walk[i] = acc
    cloud = np.clip(0.55 + 0.35 * np.tanh(walk), 0.15, 1.0)
    return t, clear * cloud


def builtin_shape(name: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(clock seconds, normalised values) of a built-in day shape."""
    if name == "residential":
        return _hourly(_RESIDENTIAL)
    if name == "commercial":
        return _hourly(_COMMERCIAL)
    if name == "industrial":
        return _hourly(_INDUSTRIAL)
    if name == "ev_evening":
        return _hourly(_EV_EVENING)
    if name == "pv_clear":
        return _pv_clear()
    if name == "pv_cloudy":
        return _pv_cloudy(seed)
    raise KeyError(f"unknown built-in profile shape {name!r}")


#: What a profile CSV holds, for messages.
CSV_FORMAT = (
    "two columns, time and value (a header row is optional, '#' starts a comment line); "
    'times are clock times "HH:MM[:SS]" or seconds from the start, increasing; values are '
    "finite numbers"
)
_COLUMNS = ("time", "value")
_MAX_PROBLEMS = 20


def _clock_seconds(text: str) -> float | None:
    """Seconds of day of "HH:MM[:SS[.fff]]" (00:00 to 24:00), else None."""
    parts = text.split(":")
    if len(parts) not in (2, 3):
        return None
    try:
        h, m = int(parts[0]), int(parts[1])
        sec = float(parts[2]) if len(parts) == 3 else 0.0
    except ValueError:
        return None
    if not (0 <= h <= 24 and 0 <= m < 60 and 0.0 <= sec < 60.0):
        return None
    t = h * 3600.0 + m * 60.0 + sec
    return t if t <= DAY else None


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _parse_profile_csv(
    path: Path,
) -> tuple[list[float], list[float], bool, list[ConfigError]]:
    """(times, values, periodic, problems) of a profile CSV; reads the whole file."""
    where = str(path)
    problems: list[ConfigError] = []

    def bad(line: int | None, column: int | None, expected: str, found: str) -> None:
        key = "file" if line is None else f"line {line}"
        if column is not None:
            key += f", column {column + 1} ({_COLUMNS[column] if column < 2 else 'extra'})"
        problems.append(ConfigError(where, key, f"expected {expected}, found {found}", line))

    try:
        raw = path.read_bytes()
    except OSError as exc:
        bad(None, None, "a readable CSV file", exc.strerror or type(exc).__name__)
        return [], [], False, problems
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        bad(line, None, "UTF-8 text", f"the byte 0x{raw[exc.start]:02x} (a binary file?)")
        return [], [], False, problems
    times: list[float] = []
    values: list[float] = []
    periodic: bool | None = None
    last: tuple[int, str] | None = None  # (line, text) of the last good time
    rows = 0
    for lineno, row in enumerate(csv.reader(text.splitlines()), start=1):
        if len(problems) >= _MAX_PROBLEMS:
            break
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        cells = [c.strip() for c in row]
        while len(cells) > 2 and not cells[-1]:
            cells.pop()  # trailing empty cells ("0,1,,") carry nothing
        first_row = rows == 0
        rows += 1
        if len(cells) < 2:
            hint = " (values separated by ';'? use ',')" if ";" in cells[0] else ""
            bad(lineno, None, "two columns: time, value", f"one column {cells[0]!r}{hint}")
            continue
        if len(cells) > 2:
            bad(
                lineno,
                2,
                "two columns: time, value",
                f"{len(cells)} columns (third: {cells[2]!r})",
            )
            continue
        a, b = cells
        semi = " (values separated by ';'? use ',')" if ";" in a + b else ""
        clock = _clock_seconds(a) if ":" in a else None
        secs = _number(a) if ":" not in a else None
        v = _number(b)
        if first_row and clock is None and secs is None and v is None:
            continue  # the header row
        if ":" in a:
            if clock is None:
                bad(lineno, 0, 'a clock time "HH:MM[:SS]" from 00:00 to 24:00', repr(a))
                continue
            t, is_clock = clock, True
        else:
            if secs is None or not math.isfinite(secs):
                bad(lineno, 0, 'a time "HH:MM[:SS]" or a finite number of seconds', repr(a) + semi)
                continue
            t, is_clock = secs, False
        if v is None or not math.isfinite(v):
            bad(lineno, 1, "a finite number", (repr(b) if b else "an empty cell") + semi)
            continue
        if periodic is None:
            periodic = is_clock
        elif periodic != is_clock:
            kind = "clock times (HH:MM)" if periodic else "seconds"
            bad(
                lineno,
                0,
                f"one time format in the whole file ({kind}, as on the first row)",
                repr(a),
            )
            continue
        if last is not None and t <= times[-1]:
            bad(
                lineno,
                0,
                "increasing times",
                f"{a!r} after {last[1]!r} (line {last[0]}) = {times[-1]:g} s",
            )
            continue
        times.append(t)
        values.append(v)
        last = (lineno, a)
    if not times and not problems:
        found = "an empty file" if not text.strip() else "no time,value row"
        bad(None, None, "at least one time,value row", found)
    return times, values, bool(periodic), problems


def check_profile_csv(path: Path | str) -> list[ConfigError]:
    """Every problem of a profile CSV (at most 20), without running; empty when it is valid.

    Each is a :class:`~twin.errors.ConfigError` with ``path``, ``line`` and ``key`` (line and
    column) set, its message saying what was expected and what was found.
    """
    return _parse_profile_csv(Path(path))[3]


def assert_profile_csv(path: Path | str) -> None:
    """Raise the first problem of :func:`check_profile_csv` (naming how many more there are)."""
    problems = check_profile_csv(path)
    if problems:
        raise _first(problems)


def _first(problems: list[ConfigError]) -> ConfigError:
    e = problems[0]
    if len(problems) == 1:
        return e
    more = len(problems) - 1
    msg = str(e).split(f"{e.key}: ", 1)[-1]
    tail = f" (and {more}{'+' if len(problems) >= _MAX_PROBLEMS else ''} more problem(s))"
    return ConfigError(e.path, e.key, msg + tail, e.line)


def read_csv_profile(path: Path) -> tuple[np.ndarray, np.ndarray, bool]:
    """(times, values, periodic) from a two-column CSV (a header row is optional).

    Times are clock times "HH:MM[:SS]" (periodic over a day) or seconds from the start.

    Raises:
        ConfigError: the first problem :func:`check_profile_csv` finds.
    """
    times, values, periodic, problems = _parse_profile_csv(Path(path))
    if problems:
        raise _first(problems)
    return np.asarray(times), np.asarray(values), periodic


@dataclass(frozen=True)
class Profile:
    """A resolved profile: the sample table and the elements (pandapower indices) it drives."""

    spec: ProfileSpec
    times: np.ndarray
    values: np.ndarray
    periodic: bool
    index: np.ndarray  # pandapower indices of the driven elements
    base_p: np.ndarray  # the elements' p_mw (or q_mvar) at the start, for mode "scale"
    base_q: np.ndarray
    start_sod: float

    def factor(self, t_s: float) -> float:
        """The profile's value at ``t_s`` seconds from the start, scaled and offset."""
        if self.periodic:
            x = (self.start_sod + t_s) % DAY
            times, values = self.times, self.values
            if times[0] > 0 or times[-1] < DAY:  # wrap around midnight
                times = np.concatenate(([times[-1] - DAY], times, [times[0] + DAY]))
                values = np.concatenate(([values[-1]], values, [values[0]]))
        else:
            x, times, values = t_s, self.times, self.values
        if self.spec.interpolation == "step":
            i = int(np.searchsorted(times, x, side="right")) - 1
            v = float(values[max(i, 0)])
        else:
            v = float(np.interp(x, times, values))
        return v * self.spec.scale + self.spec.offset

    def targets(self, t_s: float) -> tuple[np.ndarray, np.ndarray | None]:
        """(new values of the profiled column, new q_mvar or None) at ``t_s``."""
        f = self.factor(t_s)
        if self.spec.mode == "absolute":
            col = np.full(self.index.size, f)
            q = None
            if self.spec.column == "p_mw" and self.spec.q_follows and self.spec.table == "load":
                with np.errstate(divide="ignore", invalid="ignore"):
                    ratio = np.where(self.base_p != 0, self.base_q / self.base_p, 0.0)
                q = col * ratio
            return col, q
        col = self.base_p * f
        q = None
        if self.spec.column == "p_mw" and self.spec.q_follows and self.spec.table == "load":
            q = self.base_q * f
        return col, q


def element_labels(net, table: str) -> dict[str, int]:
    """Label -> pandapower index (``twin.labels.label_index``: the point map's labels)."""
    from twin.labels import label_index

    return label_index(net, table)


def select_elements(
    net,
    table: str,
    *,
    elements: Sequence[str] = (),
    match: str | None = None,
    type_: str | None = None,
    category: str | None = None,
) -> list[int]:
    """Indices of ``table`` elements by label list, fnmatch pattern on labels, ``type`` or
    ``category`` column value (a union of all given)."""
    labels = element_labels(net, table)
    chosen: list[int] = []
    for e in elements:
        if e not in labels:
            raise KeyError(e)
        chosen.append(labels[e])
    if match is not None:
        chosen += [i for lab, i in labels.items() if fnmatch.fnmatchcase(lab, match)]
    if type_ is not None and "type" in net[table].columns:
        chosen += [int(i) for i in net[table].index[net[table]["type"] == type_]]
    if category is not None and "category" in net[table].columns:
        chosen += [int(i) for i in net[table].index[net[table]["category"] == category]]
    return sorted(dict.fromkeys(chosen))


def resolve_profile(spec: ProfileSpec, net, *, start_sod: float, seed: int) -> Profile:
    """Bind a profile spec to the grid's elements and load its samples."""
    idx = select_elements(
        net,
        spec.table,
        elements=spec.elements,
        match=spec.match,
        type_=spec.type,
        category=spec.category,
    )
    if spec.shape is not None:
        times, values = builtin_shape(spec.shape, seed)
        periodic = True
    else:
        assert spec.csv is not None
        times, values, periodic = read_csv_profile(spec.csv)
    df = net[spec.table]
    base_p = df.loc[idx, spec.column].to_numpy(dtype=float) if idx else np.zeros(0)
    base_q = df.loc[idx, "q_mvar"].to_numpy(dtype=float) if idx else np.zeros(0)
    base_p = np.where(np.isfinite(base_p), base_p, 0.0)
    base_q = np.where(np.isfinite(base_q), base_q, 0.0)
    return Profile(
        spec, times, values, periodic, np.asarray(idx, dtype=int), base_p, base_q, start_sod
    )


def finite(x: float) -> bool:
    return math.isfinite(x)
