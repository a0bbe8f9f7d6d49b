"""Plausibility of the values the sync loop reads: no garbage taken as good.

Every to_twin point the loop reads has a plausibility range (the point map's ``plausible_min``
/ ``plausible_max``, else defaults from the element's ratings: ``twin.pointmap.plausibility``)
and optionally a rate-of-change limit (``max_rate``, per second). A GOOD sample outside them is
taken as INVALID: the loop does not apply it (the model keeps the point's last good value, so
one bad meter never stops the load flow), an alarm names the point once when it starts, and a
cleared event follows when a plausible value comes back.

The check is one vectorised pass per step over every input (the limit arrays are built once);
the per-point work (messages, alarms) runs only for points whose state changes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from twin.pointmap import Plausibility, Point, plausibilities
from twin.quality import Quality, Sample

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Implausible:
    """A point that started (or stopped) being implausible at a step."""

    point: str
    value: float  # what the field reported
    held: float  # the last good value the twin keeps using (NaN: none yet)
    limit: float  # the limit it broke (the range bound, or max_rate)
    message: str


class PlausibilityCheck:
    """Screens a step's samples against the inputs' plausibility limits.

    Args:
        net: the model's pandapower net (ratings for the defaults).
        inputs: the to_twin points the loop reads, in a fixed order.
        enabled: False: no limit is checked (values are still gathered for the loop).
    """

    def __init__(self, net: Any, inputs: Sequence[Point], *, enabled: bool = True) -> None:
        self.points = tuple(inputs)
        self.names = [p.name for p in self.points]
        self.position = {n: i for i, n in enumerate(self.names)}
        n = len(self.points)
        self.limits: list[Plausibility] = (
            plausibilities(net, self.points) if enabled else [Plausibility(-np.inf, np.inf)] * n
        )
        self.low = np.array([pl.low for pl in self.limits], dtype=float)
        self.high = np.array([pl.high for pl in self.limits], dtype=float)
        rate = [pl.max_rate for pl in self.limits]
        self.max_rate = np.array([np.inf if r is None else r for r in rate], dtype=float)
        self.binary = np.array([pl.binary for pl in self.limits], dtype=bool)
        self._any_rate = bool(np.isfinite(self.max_rate).any())
        self._any_binary = bool(self.binary.any())
        self.last_good = np.full(n, np.nan)  # the last plausible GOOD value per point
        self.last_good_t = np.full(n, np.nan)
        self.active = np.zeros(n, dtype=bool)  # implausible now (alarm standing)
        #: the values of the last :meth:`screen` (NaN: not GOOD or implausible), input order
        self.values = np.full(n, np.nan)
        self._good = Quality.GOOD

    def screen(
        self, samples: MutableMapping[str, Sample], t: float
    ) -> tuple[list[Implausible], list[Implausible]]:
        """Check this step's samples; returns (started, ended) implausible points.

        The sample of every implausible point is replaced in ``samples`` by an INVALID one
        (same value and timestamp), so everything downstream (apply, estimation, recording,
        publishing) sees it as not good. :attr:`values` holds the usable value per input.
        """
        nan = math.nan
        good = self._good
        raw = np.fromiter(
            (
                s.value if (s := samples.get(n)) is not None and s.quality is good else nan
                for n in self.names
            ),
            dtype=float,
            count=len(self.names),
        )
        started, ended, bad = self.screen_values(raw, t)
        for i in bad.tolist():
            name = self.names[i]
            s = samples[name]
            samples[name] = Sample(s.value, Quality.INVALID, s.timestamp)
        return started, ended

    def screen_values(
        self, raw: np.ndarray, t: float
    ) -> tuple[list[Implausible], list[Implausible], np.ndarray]:
        """:meth:`screen` on an array: ``raw`` holds each input's GOOD value (NaN where the
        sample is not GOOD), in input order, and becomes :attr:`values` (implausible ones
        NaN). Returns (started, ended, the indices of the implausible inputs): the caller
        marks those INVALID."""
        nan = math.nan
        have = np.isfinite(raw)
        ok = (raw >= self.low) & (raw <= self.high)
        if self._any_binary:
            ok &= ~self.binary | (raw == 0.0) | (raw == 1.0)
        rate_bad = np.zeros(len(raw), dtype=bool)
        if self._any_rate:
            dt = t - self.last_good_t
            with np.errstate(invalid="ignore", divide="ignore"):
                rate = np.abs(raw - self.last_good) / dt
            rate_bad = (dt > 0) & (rate > self.max_rate)
            ok &= ~rate_bad
        bad = have & ~ok
        fine = have & ok
        self.last_good[fine] = raw[fine]
        self.last_good_t[fine] = t
        started: list[Implausible] = []
        ended: list[Implausible] = []
        bad_idx = np.flatnonzero(bad)
        for i in bad_idx.tolist():
            if not self.active[i]:
                started.append(self._describe(i, float(raw[i]), bool(rate_bad[i]), t))
        raw[bad] = nan
        self.values = raw
        newly_fine = self.active & fine
        if newly_fine.any():
            for j in np.flatnonzero(newly_fine).tolist():
                name = self.names[j]
                v = float(self.last_good[j])
                ended.append(
                    Implausible(
                        name, v, v, nan, f"{name} = {v:.6g} plausible again (within its limits)"
                    )
                )
        self.active = (self.active | bad) & ~fine
        return started, ended, bad_idx

    def column(self, names: Sequence[str]) -> np.ndarray:
        """Positions in :attr:`values` of ``names`` (for one input group of the loop)."""
        return np.array([self.position[n] for n in names], dtype=np.int64)

    def implausible_now(self) -> list[str]:
        """The points standing implausible now."""
        return [self.names[int(i)] for i in np.flatnonzero(self.active)]

    def _describe(self, i: int, value: float, by_rate: bool, t: float) -> Implausible:
        p, pl = self.points[i], self.limits[i]
        unit = f" {p.unit}" if p.unit else ""
        held = float(self.last_good[i])
        held_txt = f"held at {held:.6g}{unit}" if math.isfinite(held) else "not applied"
        if by_rate:
            dt = t - float(self.last_good_t[i])
            rate = abs(value - held) / dt
            msg = (
                f"{p.name} implausible: changed {held:.6g} -> {value:.6g}{unit} in {dt:.3g} s "
                f"({rate:.3g}{unit}/s), expected at most max_rate {pl.max_rate:g}{unit}/s; "
                f"{held_txt}"
            )
            limit = float(pl.max_rate or math.inf)
        else:
            if pl.binary:
                expected = "0 or 1"
            else:
                expected = f"a value in [{pl.low:.6g}, {pl.high:.6g}]{unit}"
            msg = (
                f"{p.name} = {value:.6g}{unit} implausible: expected {expected} ({pl.why}); "
                f"{held_txt}"
            )
            limit = pl.high if value > pl.high else pl.low
        return Implausible(p.name, float(value), held, float(limit), msg)
