"""What every field of a run shares: the simulated clock, one step's outcome, the protocol.

A :class:`Field` is what a scenario drives: a local model only (:class:`hil.field.LocalField`),
the emulated substation (:class:`hil.field.EmulatedField`) or real hardware from a hardware.toml
(:class:`hil.field.HardwareField`). Every method is public and synchronous except ``start``,
``stop`` and ``step``: actions between steps are queued and run at the start of the next step, so
SimPy code never touches the event loop (``scenarios.bridge`` awaits the three coroutines).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


class SimClock:
    """Simulated seconds from the scenario start, shared by the substation, links and loops."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = float(t)

    def now(self) -> float:
        return self.t

    def __call__(self) -> float:
        return self.t


@dataclass
class StepOutcome:
    """What one field step gives the engine."""

    converged: bool
    solution: Any
    stale: tuple[str, ...] = ()
    alarms: tuple[dict[str, Any], ...] = ()
    error: str = ""
    durations: dict[str, float] = field(default_factory=dict)


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


@runtime_checkable
class Field(Protocol):
    """The field side of a run, as the scenario engine uses it.

    Attributes:
        has_hardware: whether there are field devices (emulated or real) behind it.
        emulated: whether they are the in-process emulated substation (device-level actions:
            a bias on a meter, a device restart, one device dropping off).
        description: one line for the run's first event and the summary.
        pointmap: the point map the field runs (None without hardware).
        plant_model: the model the physical world acts on when it is not the twin's (the
            emulated plant in mirror mode), else None.
        clock: the simulated clock (None where devices keep their own time).
        audit: the audit log of write attempts from outside (None: no protocol server).
    """

    @property
    def has_hardware(self) -> bool: ...
    @property
    def emulated(self) -> bool: ...
    @property
    def pointmap(self) -> Any: ...
    @property
    def plant_model(self) -> Any: ...
    @property
    def clock(self) -> SimClock | None: ...

    @property
    def description(self) -> str: ...

    @property
    def audit(self) -> Any:
        """The run's audit log (:class:`hil.security.audit.AuditLog`) of write attempts over
        the field's protocol servers (the emulator's, the twin's), or None without any; the
        engine streams it to the results folder's ``audit.jsonl``."""

    async def start(self) -> None:
        """Open links, start servers and loops (before the first step)."""

    async def stop(self) -> None:
        """Close everything :meth:`start` opened (idempotent, never raises for one link)."""

    async def step(self, t: float) -> StepOutcome:
        """Run queued actions, read the field, solve, write outputs: one step at ``t``."""

    def stats(self) -> dict[str, Any]: ...

    def links_used(self) -> list[str]:
        """Names of the links this field really talks over (``"opcua:..."``, ``"direct"``)."""

    def endpoints(self) -> dict[str, str]:
        """Where the field serves for outside clients (``--serve``, ``--twin-server``)."""

    def link_quality(self) -> dict[str, float]:
        """Record columns ``link.up[<link>]`` and ``link.good[<link>]`` (share of GOOD inputs)."""

    def active_alarms(self) -> int:
        """Number of divergence alarms active now (mirror mode)."""

    def setpoint_values(self) -> dict[str, float]:
        """Current value of every setpoint point in the field (for the record)."""

    def offer_output(self, name: str, value: float) -> None:
        """A value for a field device the next step writes (e.g. a PV's available power)."""

    def command(self, name: str, value: float) -> None: ...
    def read_point(self, name: str) -> float | None: ...
    def write_setpoint(self, name: str, value: float) -> None: ...
    def comms_loss(self, target: str) -> None: ...
    def comms_restore(self, target: str) -> None: ...
    def device_restart(self, name: str) -> None: ...
    def meas_error(
        self,
        point: str,
        *,
        sigma: float | None = None,
        offset: float | None = None,
    ) -> None: ...
    def freeze_point(self, point: str, frozen: bool) -> None:
        """A frozen report of ``point`` in the emulated substation (value and timestamp stop)."""

    def der_trip(self, label: str, tripped: bool) -> None: ...
    def tap_operate(self, label: str, delta: int) -> bool: ...
    def start_fault(self, line_label: str, current_ka: float, t: float) -> None: ...
    def clear_fault(self, line_label: str) -> None: ...
