"""Durations and times in scenario files: "1min", "5s", "1h30min", 90, "18:30", "+2h"."""

from __future__ import annotations

import datetime as _dt
import re

_UNITS = {
    "ms": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_PART = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|sec|min|s|m|h|d)\s*")
DURATION_HELP = 'a number of seconds or a duration like "5s", "1min", "1h30min", "2d"'
TIME_HELP = (
    'seconds from the start (number), an offset like "+2h", a time of day "HH:MM[:SS]" '
    'or an ISO date-time "2026-06-21T18:30"'
)


def parse_duration(value: object) -> float:
    """Seconds in ``value``; raise ValueError naming what is allowed."""
    if isinstance(value, bool):
        raise ValueError(f"expected {DURATION_HELP}, found {value!r}")
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected {DURATION_HELP}, found {value!r}")
    text = value.strip().lower()
    try:
        return float(text)
    except ValueError:
        pass
    pos, total = 0, 0.0
    while pos < len(text):
        m = _PART.match(text, pos)
        if not m:
            raise ValueError(f"expected {DURATION_HELP}, found {value!r}")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return total


def parse_start(value: object) -> tuple[float, _dt.datetime | None]:
    """``start`` -> (seconds of day, full date-time or None)."""
    if isinstance(value, _dt.datetime):
        return _seconds_of_day(value.time()), value
    if isinstance(value, _dt.time):
        return _seconds_of_day(value), None
    if isinstance(value, str):
        text = value.strip()
        try:
            if "T" in text or " " in text or len(text) == 10:
                dt = _dt.datetime.fromisoformat(text)
                return _seconds_of_day(dt.time()), dt
            return _seconds_of_day(_dt.time.fromisoformat(text)), None
        except ValueError:
            pass
    raise ValueError(
        f'expected a time of day "HH:MM[:SS]" or an ISO date-time "2026-06-21T00:00", '
        f"found {value!r}"
    )


def parse_time(value: object, start_sod: float, start_dt: _dt.datetime | None) -> float:
    """A point in simulated time as seconds from the scenario start."""
    if isinstance(value, bool):
        raise ValueError(f"expected {TIME_HELP}, found {value!r}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, _dt.datetime):
        if start_dt is None:
            return _from_tod(_seconds_of_day(value.time()), start_sod)
        return (value - start_dt).total_seconds()
    if isinstance(value, _dt.time):
        return _from_tod(_seconds_of_day(value), start_sod)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("+"):
            return parse_duration(text[1:])
        if ":" in text:
            try:
                if "T" in text or " " in text:
                    return parse_time(_dt.datetime.fromisoformat(text), start_sod, start_dt)
                return _from_tod(_seconds_of_day(_dt.time.fromisoformat(text)), start_sod)
            except ValueError:
                raise ValueError(f"expected {TIME_HELP}, found {value!r}") from None
        try:
            return parse_duration(text)
        except ValueError:
            pass
    raise ValueError(f"expected {TIME_HELP}, found {value!r}")


def _seconds_of_day(t: _dt.time) -> float:
    return t.hour * 3600.0 + t.minute * 60.0 + t.second + t.microsecond / 1e6


def _from_tod(tod: float, start_sod: float) -> float:
    # A time of day before the start's means the next day.
    d = tod - start_sod
    return d if d >= 0 else d + 86400.0


def format_clock(t_s: float, start_sod: float) -> str:
    """Simulated time as "d+HH:MM:SS" clock time (day shown only after the first)."""
    total = start_sod + t_s
    day, rem = divmod(int(round(total)), 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    return (f"{day}+" if day else "") + f"{h:02d}:{m:02d}:{s:02d}"
