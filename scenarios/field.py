"""The field side of a scenario run: nothing, the emulated substation, or real hardware.

:class:`LocalField` runs the model alone (no hardware, no sockets). :class:`HilField` starts the
emulated substation on the simulated clock (or opens links to real hardware) and drives
``hil.sync.SyncLoop``: in ``hil`` mode the twin is the plant and the devices answer; in
``mirror`` mode a second model plays the plant (writing true measurements that the emulated RTU
turns into reported ones, with bias and noise) and the twin follows it, flagging divergence.

Everything here is asyncio; SimPy code reaches it only through ``scenarios.bridge``. Actions that
SimPy events take between steps (a command, a comms loss) are queued with :meth:`defer` and run
at the start of the next step.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from hil.links.base import FieldLink
from twin.errors import LoadflowNotConverged
from twin.pointmap import Point
from twin.quality import Quality, Sample

_log = logging.getLogger(__name__)

LINK_KINDS = ("direct", "opcua", "modbus")


class SimClock:
    """Simulated seconds from the scenario start, shared by the substation, links and loops."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = float(t)

    def now(self) -> float:
        return self.t

    def __call__(self) -> float:
        return self.t


class StoreLink(FieldLink):
    """A link straight into the emulated substation's point store (in-process, no socket).

    It behaves like a polled protocol link (quality, staleness, write checks, role) at memory
    speed, so a simulated day of 1-min steps runs in seconds. Points can be cut off one device
    at a time (:meth:`cut`) to emulate a lost device: their inputs turn COMMS_LOST and writes to
    them are dropped.
    """

    protocol = "direct"
    polled = True

    def __init__(
        self,
        store: Any,
        points: Iterable[Point],
        *,
        role: str = "plant",
        clock: Callable[[], float],
        name: str = "direct",
        stale_factor: float = 3.0,
    ) -> None:
        super().__init__(name, points, stale_factor=stale_factor, clock=clock)
        self.store = store
        self.role = role
        self.cut_points: set[str] = set()
        from hil.store import ROLE_WRITES

        self._allowed = ROLE_WRITES.get(role, frozenset())

    async def connect(self) -> None:
        self.connected = True

    async def close(self) -> None:
        self.connected = False

    async def poll(self) -> None:
        now = self.clock()
        for p in self.inputs:
            if p.name in self.cut_points:
                continue
            s = self.store.get(p.name)
            # A direct read is a fresh read of the device's current value, as a Modbus poll is.
            self._cache[p.name] = Sample(s.value, s.quality, now) if s.quality.is_good else s
        self.stats["reads"] += 1
        self._notify()

    def read_inputs(self, now: float | None = None) -> dict[str, Sample]:
        out = super().read_inputs(now)
        for n in self.cut_points:
            if n in out:
                s = out[n]
                out[n] = Sample(s.value, Quality.COMMS_LOST, s.timestamp)
        return out

    async def _send(self, items: list[tuple[Point, float]]) -> None:
        # write_outputs() has checked direction, limits and finiteness against these very
        # points; the role is checked here once per kind, then values go in with set() (the
        # store's write() would repeat every check, ~10 % of a fast day).
        cut = self.cut_points
        for p, v in items:
            if p.name in cut:
                continue
            if p.kind not in self._allowed:
                self.store.check_write(p.name, v, role=self.role)  # raises WriteRejected
            self.store.set(p.name, v, source=self.name)
        self.stats["writes"] += 1

    def cut(self, names: Iterable[str]) -> None:
        self.cut_points.update(names)

    def restore(self, names: Iterable[str]) -> None:
        self.cut_points.difference_update(names)


@dataclass
class StepOutcome:
    """What one field step gives the engine."""

    converged: bool
    solution: Any
    stale: tuple[str, ...] = ()
    alarms: tuple[dict[str, Any], ...] = ()
    error: str = ""
    durations: dict[str, float] = field(default_factory=dict)


class LocalField:
    """No hardware: the engine's model is solved in-process and nothing else runs."""

    has_hardware = False
    emulated = False
    description = "none (model only)"

    def __init__(self, model: Any, recorder: Any = None) -> None:
        self.model = model
        self.recorder = recorder
        self._deferred: list[Callable[[], Awaitable[None]]] = []
        self.alarms: list[dict[str, Any]] = []

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def defer(self, fn: Callable[[], Awaitable[None]]) -> None:
        self._deferred.append(fn)

    async def _run_deferred(self) -> None:
        todo, self._deferred = self._deferred, []
        for fn in todo:
            await fn()

    async def step(self, t: float, plant_t: float | None = None) -> StepOutcome:
        await self._run_deferred()
        try:
            sol = self.model.solve()
        except LoadflowNotConverged as exc:
            if self.recorder is not None:
                self.recorder.event(t, "not_converged", str(exc))
            return StepOutcome(False, None, error=str(exc))
        return StepOutcome(bool(getattr(sol, "converged", True)), sol)

    def stats(self) -> dict[str, Any]:
        return {}

    # Field-only actions: the engine checks ``has_hardware`` before calling them.
    def unsupported(self, what: str) -> None:
        raise RuntimeError(f"{what} needs field hardware (the emulated substation or real)")


def alarm_dict(a: Any) -> dict[str, Any]:
    return {
        "time_s": float(a.time_s),
        "kind": a.kind,
        "point": a.point,
        "field_value": float(a.field_value),
        "twin_value": float(a.twin_value),
        "tolerance": float(a.tolerance) if a.tolerance is not None else math.nan,
        "message": a.message,
    }


def _needs_hardware(name: str) -> Callable[..., None]:
    def method(self: LocalField, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError(
            f'{name} acts on field devices: expected hardware = "emulated" or a hardware file, '
            'found hardware = "none"'
        )

    method.__name__ = name
    return method


for _name in (
    "command",
    "read_point",
    "write_setpoint",
    "comms_loss",
    "comms_restore",
    "device_restart",
    "meas_error",
    "der_trip",
    "tap_operate",
    "start_fault",
    "clear_fault",
):
    setattr(LocalField, _name, _needs_hardware(_name))
