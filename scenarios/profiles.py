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


def read_csv_profile(path: Path) -> tuple[np.ndarray, np.ndarray, bool]:
    """(times, values, periodic) from a two-column CSV (a header row is optional).

    Times are clock times "HH:MM[:SS]" (periodic over a day) or seconds from the start.
    """
    times: list[float] = []
    values: list[float] = []
    periodic: bool | None = None
    with open(path, newline="", encoding="utf-8") as fh:
        for lineno, row in enumerate(csv.reader(fh), start=1):
            if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            if len(row) < 2:
                raise ConfigError(
                    str(path), f"line {lineno}", "expected two columns: time, value", lineno
                )
            a, b = row[0].strip(), row[1].strip()
            try:
                v = float(b)
            except ValueError:
                if not times:  # header row
                    continue
                raise ConfigError(
                    str(path), f"line {lineno}", f"expected a number, found {b!r}", lineno
                ) from None
            if ":" in a:
                parts = [float(x) for x in a.split(":")]
                t = parts[0] * 3600 + parts[1] * 60 + (parts[2] if len(parts) > 2 else 0.0)
                is_clock = True
            else:
                try:
                    t = float(a)
                except ValueError:
                    raise ConfigError(
                        str(path),
                        f"line {lineno}",
                        f"expected a time HH:MM or seconds, found {a!r}",
                        lineno,
                    ) from None
                is_clock = False
            if periodic is None:
                periodic = is_clock
            elif periodic != is_clock:
                raise ConfigError(
                    str(path),
                    f"line {lineno}",
                    "expected one time format in the whole file (all HH:MM or all seconds)",
                    lineno,
                )
            if times and t <= times[-1]:
                raise ConfigError(
                    str(path),
                    f"line {lineno}",
                    f"expected increasing times, found {a!r} after {times[-1]:g} s",
                    lineno,
                )
            times.append(t)
            values.append(v)
    if not times:
        raise ConfigError(str(path), "csv", "expected at least one time,value row, found none")
    return np.asarray(times), np.asarray(values), bool(periodic)


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
