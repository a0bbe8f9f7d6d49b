"""Device behaviours of the emulated substation, each stepped on the substation's clock.

Every device reads and writes the :class:`hil.store.PointStore` by point name (writes carry
``source="device:<name>"``) and moves only in :meth:`Device.step`, called with ``now``: seconds
on the substation's clock (wall or simulated), monotonic, at irregular intervals. Behaviour
depends on elapsed time, never on the number of calls. An input change is seen at the first step
after it was written (that step is the device's "scan"); from there on every delay is measured
in elapsed time, and an action falls due at the first step with ``now >= due``.

Devices are discrete-event: :meth:`Device.next_due` tells when a device next changes state by
itself (a breaker operation completing, a relay's delay, an AVR's delay or tap mechanism, an
inverter's trip or reconnect timer, the watchdog). The substation steps devices at those times
and whenever something outside the devices writes the store, so timers resolve exactly however
coarse the caller's steps are (``hil.emulator.substation.EmulatedSubstation.advance``).

Devices:

- :class:`Breaker`: ``<sw>.cmd`` (1 close, 0 open, written by clients) and :meth:`Breaker.trip`
  (relays). Status ``<sw>.closed`` changes after the operate time; ``<sw>.operations`` counts
  completed operations (uint16, wraps). A command is any new write of the cmd point (also the same
  value again), so an operator can close a tripped breaker by writing 1 once more. A command for
  the state the breaker is already in is a no-op. A command opposite to a pending operation
  cancels it (the breaker stays where it is); the same command again keeps the first timer. A trip
  supersedes a pending close and cannot be superseded by a close command while it runs. After a
  trip the breaker is *locked out* (``locked_out``) until the next operator close; there is no
  auto-reclose, so the lockout only reports state.
- :class:`TapChangerAVR`: definite-time AVR on the trafo's LV bus voltage ``<bus>.vm_pu``:
  outside ``avr_vset_pu +- avr_band_pu`` (band is the half-width) continuously for
  ``avr_delay_s`` -> one tap step in the direction that brings the voltage back; the timer resets
  when the voltage is back in band, changes side, is not GOOD, or the AVR is in manual. The tap
  mechanism takes ``mechanism_s``: ``tap_pos`` changes when it completes, and the timer restarts
  then, from the first voltage measured after the step (a sample older than the new tap says
  nothing about it: with a plant that measures once a minute, the AVR must not hunt on stale
  values); no step can start while the mechanism runs. Limits ``tap_min``/``tap_max`` come from
  the net. The tap direction that raises the regulated voltage is computed from ``tap_side`` and the
  sign of ``tap_step_percent`` (:func:`tap_delta_raising_voltage`): an HV-side tap with a positive
  step LOWERS the LV voltage when ``tap_pos`` rises (pandapower's ratio model).
- :class:`OvercurrentRelay`: definite time. Picks up when ``i_ka > oc_pickup_ka``, drops out when
  ``i_ka < dropout_ratio * oc_pickup_ka`` (0.95); picked up continuously for ``oc_delay_s`` ->
  trips its breaker and records a :class:`TripEvent`. It then stays latched (no second trip) until
  the current drops out. A non-GOOD current resets the pickup (no trip on missing data).
- :class:`DERInverter`: P follows ``min(p_avail_mw, p_limit_pct% of sn_mva)`` with a ramp limit
  (``ramp_pct_per_s`` of sn_mva per second; a drop of the available power is followed at once,
  since the sun does not wait). Q follows the volt-var curve of the bus voltage when ``voltvar``
  is 1 (IEEE 1547 category B default), else 0, optionally through a first-order lag ``q_tau_s``.
  No apparent-power limit is applied. Protection: voltage outside ``[trip_low_pu, trip_high_pu]``
  (0.5, 1.1) continuously for ``trip_delay_s`` (0.1 s) -> P = Q = 0; it reconnects after the
  voltage has been within ``[reconnect_low_pu, reconnect_high_pu]`` (0.917, 1.05) continuously
  for ``reconnect_delay_s`` and ramps up again. A NaN voltage (what the twin writes for an
  isolated bus) counts as 0 pu, i.e. loss of mains (anti-islanding); any other non-GOOD voltage
  (e.g. no measurement yet) is "no information" and trips nothing. :meth:`DERInverter.force_trip`
  trips it on an outside order (held off until :meth:`DERInverter.release`, which reconnects it
  at once, ramping from zero).
- :class:`RTUMeasurements`: turns the plant's true measurement values into what clients read:
  ``reported = true + bias[point] + N(0, sigma)``, noise from a seeded ``numpy.random.Generator``.
  The plant calls :meth:`RTUMeasurements.inject` (name, true value, now); alternatively
  :meth:`RTUMeasurements.attach` installs the RTU as the store's transform, so that any write of
  a covered point by a source that is not a device (e.g. the twin writing over OPC UA as the
  plant) is taken as the true value and stored as the reported one: every store listener sees
  only the reported value. A point with no bias and no noise is passed
  through untouched (one write, one notification). Writes by devices (``source="device:..."``,
  e.g. the breaker's operation counter) are never transformed. The true values stay readable
  (:meth:`RTUMeasurements.true_value`). ``step`` does nothing: noise is drawn per value written.

Watchdog: :meth:`Device.comms_lost` starts a timer; after ``comms_timeout_s`` the device enters
its fallback (inverter: P limit ``fallback_p_limit_pct``, default 0, or hold with None; AVR: manual;
breaker, relay, RTU: hold). The fallback overrides the setpoint *behaviour* only; the points keep
the clients' values, so :meth:`Device.comms_restored` returns to them.

Heartbeat watchdog (issue 11): inverters, AVRs and breakers (``watches_master``) arm on the
first :meth:`Device.heartbeat` (the substation calls it on every client write of the map's
heartbeat point); ``heartbeat_s`` (default ``comms_timeout_s``) after the last one they enter
the fallback and latch the safe state into their setpoints (:meth:`Device._latch_safe_state`:
inverter ``p_limit_pct`` = fallback limit, reached at once; AVR ``avr_auto`` = 0); a breaker
refuses commands while no master beats. A returning heartbeat ends the fallback but keeps the
latched setpoints: nothing returns silently to the old ones. Each transition is logged at
WARNING and kept in ``watchdog_events``.

:func:`build_devices` creates the devices a net and point map call for and writes initial values.

Batched rounds (issue 15): the substation steps its devices with a :class:`DeviceRound`, which
steps every :class:`DERInverter` of the store as numpy arrays (:class:`InverterBatch`) with the
behaviour of :meth:`DERInverter.step` bit for bit (the scalar code stays the reference; tests
compare the two), writing the batch's outputs that changed with one ``PointStore.set_many`` per
round, source ``"device:inverters"`` (:data:`BATCH_SOURCE`) instead of ``"device:<name>"``. An
inverter with anything but the common case pending (a trip or reconnect timer, a forced trip, a
fallback, a watchdog falling due, a voltage outside the trip band) is stepped by
:meth:`DERInverter.step` in that round. No device draws random numbers while stepping (RTU
noise is drawn per value written), so batching changes no random stream.
"""

from __future__ import annotations

import logging
import math
import operator
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from hil.errors import HilError
from hil.store import QUALITY_CODE, PointStore
from twin.pointmap import PointMap
from twin.quality import Quality, Sample

_log = logging.getLogger(__name__)

__all__ = [
    "IEEE1547_CAT_B",
    "Breaker",
    "DERInverter",
    "Device",
    "DeviceClockError",
    "DeviceConfigError",
    "DeviceRound",
    "DeviceSettings",
    "InverterBatch",
    "OvercurrentRelay",
    "RTUMeasurements",
    "TapChangerAVR",
    "TripEvent",
    "VoltVarCurve",
    "build_devices",
    "tap_delta_raising_voltage",
]


_GOOD_CODE = QUALITY_CODE[Quality.GOOD]

#: Slack on time comparisons: a simulated clock built by adding floats (0.1 + ...) must not
#: miss a due time by one ulp.
TIME_EPS_S = 1e-9


def _elapsed(now: float, since: float, delay: float) -> bool:
    """Whether ``delay`` seconds have passed from ``since`` at ``now`` (within TIME_EPS_S)."""
    return now - since >= delay - TIME_EPS_S


class DeviceClockError(HilError, ValueError):
    """A device was stepped with a time earlier than its previous step."""


class DeviceConfigError(HilError, ValueError):
    """A device parameter or net row that cannot work (e.g. a tap changer without a step)."""


@dataclass(frozen=True, slots=True)
class TripEvent:
    """A protection trip: when, by whom, on what measured value."""

    time: float
    device: str
    cause: str
    value: float


@dataclass(frozen=True)
class VoltVarCurve:
    """Piecewise-linear Q(V): ``points`` are (V in pu, Q in pu of sn_mva), V strictly rising.

    Beyond the first and last point Q stays flat. Positive Q is injection (pandapower's sgen
    convention), which raises the voltage.
    """

    points: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        vs = [v for v, _ in self.points]
        if len(vs) < 2 or any(b <= a for a, b in zip(vs, vs[1:])):
            raise DeviceConfigError(
                f"volt-var curve: expected at least 2 points with strictly rising V, found {vs}"
            )

    def q_pu(self, v_pu: float) -> float:
        vs, qs = zip(*self.points)
        return float(np.interp(v_pu, vs, qs))


#: IEEE 1547-2018 category B default volt-var curve (V in pu, Q in pu of rated apparent power).
IEEE1547_CAT_B = VoltVarCurve(((0.92, 0.44), (0.98, 0.0), (1.02, 0.0), (1.08, -0.44)))


@dataclass(frozen=True)
class DeviceSettings:
    """Parameters and initial setpoints used by :func:`build_devices` (all keyword, all typed)."""

    comms_timeout_s: float = 10.0
    # breaker
    breaker_open_s: float = 0.06
    breaker_close_s: float = 0.10
    # on-load tap changer + AVR (initial setpoints)
    avr_mechanism_s: float = 5.0
    avr_vset_pu: float = 1.0
    avr_band_pu: float = 0.015
    avr_delay_s: float = 30.0
    avr_auto: bool = True
    # overcurrent relay (pickup = factor * max_i_ka * parallel of the line)
    oc_pickup_factor: float = 1.2
    oc_delay_s: float = 0.5
    oc_dropout_ratio: float = 0.95
    # DER inverter
    der_p_limit_pct: float = 100.0
    der_voltvar_on: bool = True
    der_voltvar: VoltVarCurve = field(default_factory=lambda: IEEE1547_CAT_B)
    der_ramp_pct_per_s: float | None = 10.0
    der_q_tau_s: float = 0.0
    der_trip_low_pu: float = 0.5
    der_trip_high_pu: float = 1.1
    der_trip_delay_s: float = 0.1
    der_reconnect_low_pu: float = 0.917
    der_reconnect_high_pu: float = 1.05
    der_reconnect_delay_s: float = 300.0
    der_fallback_p_limit_pct: float | None = 0.0
    # RTU
    rtu_noise_sigma: float = 0.0


# --- base ------------------------------------------------------------------------------------
class Device(ABC):
    """A device behaviour: reads and writes store points, moves only in :meth:`step`.

    Subclasses implement :meth:`_step`; :meth:`_enter_fallback` and :meth:`_leave_fallback` are
    the watchdog hooks.
    """

    kind: ClassVar[str] = "device"
    #: whether the device has a master whose heartbeat it watches (inverter, AVR, breaker)
    watches_master: ClassVar[bool] = False

    def __init__(self, name: str, store: PointStore, *, comms_timeout_s: float = 10.0) -> None:
        if comms_timeout_s < 0:
            raise DeviceConfigError(
                f"{name}: expected comms_timeout_s >= 0, found {comms_timeout_s!r}"
            )
        self.name = name
        self.store = store
        self.comms_timeout_s = float(comms_timeout_s)
        self.fallback_active = False
        self._comms_lost_at: float | None = None
        self._last_now: float | None = None
        #: heartbeat watchdog (armed by the first :meth:`heartbeat`): ``heartbeat_s`` without a
        #: beat -> safe state; None for a device kind that has no master to watch
        self.heartbeat_s: float | None = self.comms_timeout_s if self.watches_master else None
        self.heartbeat_lost = False
        self._beat_at: float | None = None
        #: (time, "safe_state" | "master_back", message) of the heartbeat watchdog, newest last
        self.watchdog_events: list[tuple[float, str, str]] = []

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    @property
    def source(self) -> str:
        """The ``source`` this device's store writes carry."""
        return f"device:{self.name}"

    def step(self, now: float) -> None:
        """Advance the behaviour to ``now`` (seconds on the substation clock, monotonic)."""
        now = float(now)
        if self._last_now is not None and now < self._last_now:
            raise DeviceClockError(
                f"{self.name}: expected now >= {self._last_now!r} (previous step), found {now!r}"
            )
        self._check_watchdog(now)
        self._step(now)
        self._last_now = now

    @abstractmethod
    def _step(self, now: float) -> None:
        """One step of the behaviour; runs after the watchdog check."""

    def next_due(self, now: float) -> float | None:
        """When this device next changes state by itself, seen from ``now``; None: never.

        The earliest of the watchdog expiry and the device's own timers (:meth:`_next_due`):
        a step at that time (or later) is where the change happens. Input changes (a command,
        a measurement crossing a pickup) are not timers: whoever writes the store steps the
        device then. A time at or before the last step means "due now". Continuous behaviour
        (ramps, lags) is computed from elapsed time and needs no due time.
        """
        due = self._next_due(float(now))
        lost = self._comms_lost_at
        if not self.fallback_active and lost is not None:
            w = lost + self.comms_timeout_s
            due = w if due is None else min(due, w)
        beat = self._beat_at
        if beat is not None and self.heartbeat_s is not None and not self.heartbeat_lost:
            w = beat + self.heartbeat_s
            due = w if due is None else min(due, w)
        return due

    def _next_due(self, now: float) -> float | None:
        """The device's own next timer expiry (None: no timer running). Default: none."""
        return None

    # -- watchdog -------------------------------------------------------------------------
    def comms_lost(self, now: float) -> None:
        """The link to this device's master is down since ``now``; fallback after the timeout."""
        if self._comms_lost_at is None:
            self._comms_lost_at = float(now)
            self._check_watchdog(float(now))

    def comms_restored(self, now: float) -> None:
        """The link is back: leave the fallback (points still hold the clients' values)."""
        self._comms_lost_at = None
        if self.fallback_active:
            self.fallback_active = False
            _log.info("%s: comms restored at %.3f s, leaving fallback", self.name, now)
            self._leave_fallback(float(now))

    def heartbeat(self, now: float) -> None:
        """The master's heartbeat point was written at ``now``: arm or feed the watchdog.

        After a heartbeat loss the device leaves the fallback *behaviour* but keeps the safe
        state it latched into its setpoints (:meth:`_latch_safe_state`): the master must write
        them again, nothing returns silently to the old setpoints.
        """
        if self.heartbeat_s is None:
            return
        now = float(now)
        self._beat_at = now
        if self.heartbeat_lost:
            self.heartbeat_lost = False
            msg = f"{self.name}: master heartbeat back at {now:.3f} s, safe state kept"
            _log.warning("%s", msg)
            self.watchdog_events.append((now, "master_back", msg))
            if self._comms_lost_at is None and self.fallback_active:
                self.fallback_active = False
                self._leave_fallback(now)

    def _check_heartbeat(self, now: float) -> None:
        beat, limit = self._beat_at, self.heartbeat_s
        if beat is None or limit is None or self.heartbeat_lost:
            return
        if not _elapsed(now, beat, limit):
            return
        self.heartbeat_lost = True
        msg = (
            f"{self.name}: no master heartbeat since {beat:.3f} s (watchdog {limit:g} s): "
            f"safe state at {now:.3f} s"
        )
        _log.warning("%s", msg)
        self.watchdog_events.append((now, "safe_state", msg))
        if not self.fallback_active:
            self.fallback_active = True
            self._enter_fallback(now)
        self._latch_safe_state(now)

    def _latch_safe_state(self, now: float) -> None:
        """Runs once when the heartbeat watchdog expires, after :meth:`_enter_fallback`:
        write the safe state into the device's own setpoints. Default: nothing (hold)."""
        return None

    def _check_watchdog(self, now: float) -> None:
        self._check_heartbeat(now)
        lost = self._comms_lost_at
        if (
            not self.fallback_active
            and lost is not None
            and _elapsed(now, lost, self.comms_timeout_s)
        ):
            self.fallback_active = True
            _log.warning("%s: comms lost since %.3f s, fallback at %.3f s", self.name, lost, now)
            self._enter_fallback(now)

    def _enter_fallback(self, now: float) -> None:
        """Runs once when the watchdog expires. Default: hold (nothing changes)."""
        return None

    def _leave_fallback(self, now: float) -> None:
        """Runs once on comms_restored after a fallback. Default: nothing."""
        return None

    # -- store helpers --------------------------------------------------------------------
    def _read(self, name: str | None, default: float) -> float:
        """The point's value when present and GOOD, else ``default``."""
        if name is None:
            return default
        s = self.store.device_get(name)
        return s.value if s.quality is Quality.GOOD else default

    def _write(self, name: str | None, value: float) -> None:
        """Set a point only when it changes (listeners fire once per real change)."""
        if name is None:
            return
        s = self.store.device_get(name)
        if s.quality is Quality.GOOD and s.value == float(value):
            return
        self.store.set(name, value, source=self.source)


# --- breaker ---------------------------------------------------------------------------------
@dataclass(slots=True)
class _Operation:
    close: bool
    due: float
    cause: str


class Breaker(Device):
    """A circuit breaker driven by a command point and by relay trips (see module docstring)."""

    kind = "breaker"
    watches_master = True

    def __init__(
        self,
        name: str,
        store: PointStore,
        *,
        closed_point: str,
        cmd_point: str,
        operations_point: str | None = None,
        open_time_s: float = 0.06,
        close_time_s: float = 0.10,
        closed: bool | None = None,
        comms_timeout_s: float = 10.0,
    ) -> None:
        super().__init__(name, store, comms_timeout_s=comms_timeout_s)
        if open_time_s < 0 or close_time_s < 0:
            raise DeviceConfigError(
                f"{name}: expected operate times >= 0, found open {open_time_s!r}, "
                f"close {close_time_s!r}"
            )
        self.closed_point = closed_point
        self.cmd_point = cmd_point
        self.operations_point = operations_point
        self.open_time_s = float(open_time_s)
        self.close_time_s = float(close_time_s)
        if closed is None:
            closed = self._read(closed_point, 0.0) >= 0.5
        self.closed = bool(closed)
        self.operations = int(self._read(operations_point, 0.0)) if operations_point else 0
        self.locked_out = False
        self.pending: _Operation | None = None
        self.events: list[TripEvent] = []  # completed operations: cause "command" or the trip's
        # The cmd sample present at construction is the initial state, not a command.
        self._seen_cmd: Sample = store.device_get(cmd_point)
        self._write(closed_point, 1.0 if self.closed else 0.0)

    def trip(self, now: float, cause: str) -> None:
        """Open on protection: supersedes a pending close, sets the lockout."""
        now = float(now)
        if self.pending is not None and not self.pending.close:
            self.pending.cause = cause  # already opening: keep the earlier timer
        elif self.pending is not None:
            _log.info("%s: trip by %s cancels the pending close", self.name, cause)
            self.pending = None
        if self.closed and self.pending is None:
            self.pending = _Operation(False, now + self.open_time_s, cause)
        self.locked_out = True
        _log.info("%s: trip by %s at %.3f s", self.name, cause, now)

    def _next_due(self, now: float) -> float | None:
        if self.store.device_get(self.cmd_point) is not self._seen_cmd:
            return now  # a command not scanned yet
        return self.pending.due if self.pending is not None else None

    def _step(self, now: float) -> None:
        sample = self.store.device_get(self.cmd_point)
        if sample is not self._seen_cmd:  # every store write is a new Sample object
            self._seen_cmd = sample
            if sample.quality is Quality.GOOD and self.heartbeat_lost:
                # no live master: a command now is nobody's (safe state: hold)
                msg = f"{self.name}: command {sample.value:g} refused, no master heartbeat"
                _log.warning("%s", msg)
                self.watchdog_events.append((now, "refused", msg))
            elif sample.quality is Quality.GOOD:
                self._command(now, sample.value >= 0.5)
        if self.pending is not None and _elapsed(now, self.pending.due, 0.0):
            self._complete(now)

    def _command(self, now: float, close: bool) -> None:
        pending = self.pending
        if pending is not None:
            if pending.close == close:
                return  # already on its way: the first timer stands
            if close and pending.cause != "command":
                _log.warning("%s: close command refused while a trip operates", self.name)
                return
            _log.info("%s: pending %s superseded", self.name, "close" if pending.close else "open")
            self.pending = None
            return
        if close == self.closed:
            _log.debug("%s: command %s ignored, already in that state", self.name, int(close))
            return
        if close:
            self.locked_out = False  # an operator close clears the lockout
        self.pending = _Operation(
            close, now + (self.close_time_s if close else self.open_time_s), "command"
        )

    def _complete(self, now: float) -> None:
        op = self.pending
        assert op is not None
        self.pending = None
        self.closed = op.close
        self.operations = (self.operations + 1) % 65536
        self._write(self.closed_point, 1.0 if op.close else 0.0)
        self._write(self.operations_point, self.operations)
        self.events.append(TripEvent(now, self.name, op.cause, 1.0 if op.close else 0.0))
        _log.info(
            "%s: %s at %.3f s (%s), operation %d",
            self.name,
            "closed" if op.close else "opened",
            now,
            op.cause,
            self.operations,
        )


# --- tap changer + AVR -----------------------------------------------------------------------
def tap_delta_raising_voltage(trafo_row: Any, regulated_bus: int | None = None) -> int:
    """+1 or -1: the tap_pos change that raises the voltage of the regulated bus.

    pandapower's ratio model: a tap on a side multiplies that side's rated voltage by
    ``1 + (tap_pos - tap_neutral) * tap_step_percent / 100``. A higher rated voltage on the HV side
    lowers the LV voltage; on the LV side it raises it. The regulated bus defaults to the LV bus;
    regulating the HV bus flips the sign.

    Raises:
        DeviceConfigError: no tap step, or a tap side other than hv/lv.
    """
    step = float(trafo_row["tap_step_percent"])
    side = str(trafo_row["tap_side"]).lower()
    if not math.isfinite(step) or step == 0.0:
        raise DeviceConfigError(
            f"trafo {trafo_row.name}: expected a finite non-zero tap_step_percent, found {step!r}"
        )
    if side not in ("hv", "lv"):
        raise DeviceConfigError(
            f"trafo {trafo_row.name}: expected tap_side hv or lv, found {side!r}"
        )
    sign = 1 if step > 0 else -1
    lv_delta = -sign if side == "hv" else sign
    if regulated_bus is not None and int(regulated_bus) == int(trafo_row["hv_bus"]):
        return -lv_delta
    return lv_delta


class TapChangerAVR(Device):
    """On-load tap changer with a definite-time AVR (see module docstring)."""

    kind = "avr"
    watches_master = True

    def __init__(
        self,
        name: str,
        store: PointStore,
        *,
        tap_point: str,
        voltage_point: str,
        tap_min: int,
        tap_max: int,
        raise_delta: int,
        vset_point: str | None = None,
        band_point: str | None = None,
        delay_point: str | None = None,
        auto_point: str | None = None,
        raise_point: str | None = None,
        lower_point: str | None = None,
        tap_pos: int | None = None,
        mechanism_s: float = 5.0,
        vset_pu: float = 1.0,
        band_pu: float = 0.015,
        delay_s: float = 30.0,
        auto: bool = True,
        comms_timeout_s: float = 10.0,
    ) -> None:
        super().__init__(name, store, comms_timeout_s=comms_timeout_s)
        if raise_delta not in (1, -1):
            raise DeviceConfigError(f"{name}: expected raise_delta +1 or -1, found {raise_delta!r}")
        if tap_min > tap_max:
            raise DeviceConfigError(
                f"{name}: expected tap_min <= tap_max, found {tap_min}, {tap_max}"
            )
        self.tap_point = tap_point
        self.voltage_point = voltage_point
        self.vset_point, self.band_point = vset_point, band_point
        self.delay_point, self.auto_point = delay_point, auto_point
        #: one-step raise/lower command points (a SCADA pulse: 1, reset to 0 by the device)
        self._pulses = {p: d for p, d in ((raise_point, 1), (lower_point, -1)) if p is not None}
        self._seen_pulse: dict[str, Sample] = {p: store.device_get(p) for p in self._pulses}
        self.tap_min, self.tap_max = int(tap_min), int(tap_max)
        self.raise_delta = int(raise_delta)
        self.mechanism_s = float(mechanism_s)
        # defaults when a setpoint point is absent or not GOOD
        self.vset_pu, self.band_pu, self.delay_s, self.auto = vset_pu, band_pu, delay_s, auto
        if tap_pos is None:
            tap_pos = int(round(self._read(tap_point, 0.0)))
        self.tap_pos = min(max(int(tap_pos), self.tap_min), self.tap_max)
        self.moving_to: int | None = None
        self._move_due = 0.0
        self._out_since: float | None = None
        self._out_sign = 0
        self._at_limit_logged = False
        self._v_at_move: Sample | None = None  # the voltage sample seen when a step completed
        self._write(tap_point, self.tap_pos)

    @property
    def auto_active(self) -> bool:
        """Auto mode as the AVR acts on it: the auto point, unless the watchdog forced manual."""
        return (not self.fallback_active) and self._read(self.auto_point, float(self.auto)) >= 0.5

    def operate(self, now: float, delta: int) -> bool:
        """A manual raise (+1) / lower (-1) of tap_pos, only in manual mode and within limits."""
        if self.auto_active or self.moving_to is not None or delta not in (1, -1):
            return False
        return self._start_move(float(now), self.tap_pos + delta)

    def _start_move(self, now: float, target: int) -> bool:
        if not self.tap_min <= target <= self.tap_max:
            if not self._at_limit_logged:
                _log.info("%s: tap limit reached at %d, no further step", self.name, self.tap_pos)
                self._at_limit_logged = True
            return False
        self._at_limit_logged = False
        self.moving_to = target
        self._move_due = now + self.mechanism_s
        _log.info("%s: tap %d -> %d started at %.3f s", self.name, self.tap_pos, target, now)
        if self.mechanism_s == 0.0:
            self._finish_move()
        return True

    def _finish_move(self) -> None:
        assert self.moving_to is not None
        self.tap_pos = self.moving_to
        self.moving_to = None
        # The definite-time timer restarts after each step, from the first voltage measured
        # after it: the sample in the store now predates the new tap.
        self._out_since = None
        self._v_at_move = self.store.device_get(self.voltage_point)
        self._write(self.tap_point, self.tap_pos)

    def _next_due(self, now: float) -> float | None:
        if self.moving_to is not None:
            return self._move_due
        if self._out_since is None or not self.auto_active:
            return None
        target = self.tap_pos + self._out_sign * self.raise_delta
        if not self.tap_min <= target <= self.tap_max:
            return None  # at the limit: the timer runs out with nothing to do
        return self._out_since + max(self._read(self.delay_point, self.delay_s), 0.0)

    def _take_pulses(self, now: float) -> None:
        """A raise/lower command written since the last step: one manual step (refused, as
        :meth:`operate`, in auto mode, at a limit or while the mechanism moves); reset to 0."""
        for point, delta in self._pulses.items():
            s = self.store.device_get(point)
            if s is self._seen_pulse[point]:
                continue
            if s.quality is Quality.GOOD and s.value >= 0.5:
                if not self.operate(now, delta):
                    _log.info("%s: %s refused at %.3f s", self.name, point, now)
                self._write(point, 0.0)
            self._seen_pulse[point] = self.store.device_get(point)

    def _step(self, now: float) -> None:
        if self._pulses:
            self._take_pulses(now)
        if self.moving_to is not None:
            if not _elapsed(now, self._move_due, 0.0):
                return
            self._finish_move()
        if not self.auto_active:
            self._out_since = None
            return
        s = self.store.device_get(self.voltage_point)
        if self._v_at_move is not None:
            if s is self._v_at_move:  # every store write is a new Sample object
                return  # no voltage measured since the last tap step yet
            self._v_at_move = None
        if s.quality is not Quality.GOOD:
            self._out_since = None
            return
        vset = self._read(self.vset_point, self.vset_pu)
        band = abs(self._read(self.band_point, self.band_pu))
        delay = max(self._read(self.delay_point, self.delay_s), 0.0)
        dev = s.value - vset
        if abs(dev) <= band:
            self._out_since = None
            return
        sign = 1 if dev < 0 else -1  # +1: the voltage must rise
        if self._out_since is None or sign != self._out_sign:
            self._out_since, self._out_sign = now, sign
        if _elapsed(now, self._out_since, delay):
            self._start_move(now, self.tap_pos + sign * self.raise_delta)

    def _enter_fallback(self, now: float) -> None:
        self._out_since = None  # auto_active is now False: the AVR holds the tap

    def _latch_safe_state(self, now: float) -> None:
        """Manual, in the auto point too: the master switches auto on again when it is back."""
        self._write(self.auto_point, 0.0)


# --- overcurrent relay -----------------------------------------------------------------------
class OvercurrentRelay(Device):
    """Definite-time overcurrent relay tripping one breaker (see module docstring)."""

    kind = "relay"

    def __init__(
        self,
        name: str,
        store: PointStore,
        *,
        current_point: str,
        breaker: Breaker,
        pickup_point: str | None = None,
        delay_point: str | None = None,
        pickup_ka: float = 1.0,
        delay_s: float = 0.5,
        dropout_ratio: float = 0.95,
        comms_timeout_s: float = 10.0,
    ) -> None:
        super().__init__(name, store, comms_timeout_s=comms_timeout_s)
        if not 0.0 < dropout_ratio <= 1.0:
            raise DeviceConfigError(
                f"{name}: expected 0 < dropout_ratio <= 1, found {dropout_ratio!r}"
            )
        self.current_point = current_point
        self.breaker = breaker
        self.pickup_point, self.delay_point = pickup_point, delay_point
        self.pickup_ka, self.delay_s = float(pickup_ka), float(delay_s)
        self.dropout_ratio = float(dropout_ratio)
        self.picked_up_since: float | None = None
        self.latched = False
        self.trips: list[TripEvent] = []

    def _next_due(self, now: float) -> float | None:
        if self.picked_up_since is None or self.latched:
            return None
        return self.picked_up_since + max(self._read(self.delay_point, self.delay_s), 0.0)

    def _step(self, now: float) -> None:
        s = self.store.device_get(self.current_point)
        if s.quality is not Quality.GOOD:
            self.picked_up_since = None
            return
        i = abs(s.value)
        pickup = self._read(self.pickup_point, self.pickup_ka)
        delay = max(self._read(self.delay_point, self.delay_s), 0.0)
        dropout = self.dropout_ratio * pickup
        if self.latched:
            if i < dropout:
                self.latched = False
            return
        if self.picked_up_since is None:
            if i > pickup:
                self.picked_up_since = now
        elif i < dropout:
            self.picked_up_since = None
        if self.picked_up_since is not None and _elapsed(now, self.picked_up_since, delay):
            self.picked_up_since = None
            self.latched = True
            event = TripEvent(now, self.name, f"overcurrent {i:.4g} kA > {pickup:.4g} kA", i)
            self.trips.append(event)
            _log.warning(
                "%s: %s, tripping %s at %.3f s", self.name, event.cause, self.breaker.name, now
            )
            self.breaker.trip(now, f"relay {self.name}")


# --- DER inverter ----------------------------------------------------------------------------
class DERInverter(Device):
    """A PV/DER inverter: P limit with ramp, volt-var Q, over/under-voltage trip."""

    kind = "inverter"
    watches_master = True

    def __init__(
        self,
        name: str,
        store: PointStore,
        *,
        p_point: str,
        q_point: str,
        sn_mva: float,
        p_avail_point: str | None = None,
        p_limit_point: str | None = None,
        voltvar_point: str | None = None,
        voltage_point: str | None = None,
        p_mw: float = 0.0,
        q_mvar: float = 0.0,
        p_avail_mw: float | None = None,
        p_limit_pct: float = 100.0,
        voltvar_on: bool = True,
        curve: VoltVarCurve = IEEE1547_CAT_B,
        ramp_pct_per_s: float | None = 10.0,
        q_tau_s: float = 0.0,
        trip_low_pu: float = 0.5,
        trip_high_pu: float = 1.1,
        trip_delay_s: float = 0.1,
        reconnect_low_pu: float = 0.917,
        reconnect_high_pu: float = 1.05,
        reconnect_delay_s: float = 300.0,
        fallback_p_limit_pct: float | None = 0.0,
        comms_timeout_s: float = 10.0,
    ) -> None:
        super().__init__(name, store, comms_timeout_s=comms_timeout_s)
        if not (math.isfinite(sn_mva) and sn_mva > 0):
            raise DeviceConfigError(f"{name}: expected a rated sn_mva > 0, found {sn_mva!r}")
        self.p_point, self.q_point = p_point, q_point
        self.p_avail_point, self.p_limit_point = p_avail_point, p_limit_point
        self.voltvar_point, self.voltage_point = voltvar_point, voltage_point
        self.sn_mva = float(sn_mva)
        self.p_mw, self.q_mvar = float(p_mw), float(q_mvar)
        self.p_avail_mw = self.sn_mva if p_avail_mw is None else float(p_avail_mw)
        self.p_limit_pct, self.voltvar_on, self.curve = float(p_limit_pct), voltvar_on, curve
        self.ramp_pct_per_s, self.q_tau_s = ramp_pct_per_s, float(q_tau_s)
        self.trip_low_pu, self.trip_high_pu = float(trip_low_pu), float(trip_high_pu)
        self.trip_delay_s = float(trip_delay_s)
        self.reconnect_low_pu, self.reconnect_high_pu = reconnect_low_pu, reconnect_high_pu
        self.reconnect_delay_s = float(reconnect_delay_s)
        self.fallback_p_limit_pct = fallback_p_limit_pct
        self.tripped = False
        self.forced: str | None = None  # cause of a forced trip, held until release()
        self.trips: list[TripEvent] = []
        self._abnormal_since: float | None = None
        self._normal_since: float | None = None
        self._prev: float | None = None
        self._write(p_point, self.p_mw)
        self._write(q_point, self.q_mvar)

    def _voltage(self) -> float | None:
        """Bus voltage in pu; None when unknown. NaN (isolated bus) counts as 0 pu."""
        if self.voltage_point is None:
            return None
        s = self.store.device_get(self.voltage_point)
        if math.isnan(s.value):
            return 0.0
        return s.value if s.quality is Quality.GOOD else None

    def p_limit_mw(self) -> float:
        """The active-power limit in force (the fallback's while the watchdog has expired)."""
        pct = self._read(self.p_limit_point, self.p_limit_pct)
        if self.fallback_active and self.fallback_p_limit_pct is not None:
            pct = self.fallback_p_limit_pct
        return max(pct, 0.0) / 100.0 * self.sn_mva

    def force_trip(self, now: float, cause: str) -> None:
        """Trip at ``now`` on an outside order (a DER trip, a transfer trip): P = Q = 0 at once.

        The inverter stays off until :meth:`release`; its voltage protection does not reconnect
        it meanwhile. A forced trip of a tripped inverter only takes over the hold.
        """
        now = float(now)
        if not self.tripped:
            self.trips.append(TripEvent(now, self.name, cause, math.nan))
            _log.info("%s: forced trip at %.3f s (%s)", self.name, now, cause)
        self.forced = cause
        self.tripped = True
        self._abnormal_since = self._normal_since = None
        self.p_mw = self.q_mvar = 0.0
        self._write(self.p_point, 0.0)
        self._write(self.q_point, 0.0)

    def release(self, now: float) -> None:
        """End a forced trip: the inverter reconnects at ``now`` and ramps up from zero.

        Its voltage protection applies again from then on. No-op without a forced trip.
        """
        if self.forced is None:
            return
        now = float(now)
        self.forced = None
        self.tripped = False
        self._abnormal_since = self._normal_since = None
        self._prev = now  # the ramp starts at the release, not at the previous step
        _log.info("%s: released at %.3f s", self.name, now)

    def _next_due(self, now: float) -> float | None:
        if self.forced is not None:
            return None
        if not self.tripped and self._abnormal_since is not None:
            return self._abnormal_since + self.trip_delay_s
        if self.tripped and self._normal_since is not None:
            return self._normal_since + self.reconnect_delay_s
        return None

    def _step(self, now: float) -> None:
        dt = 0.0 if self._prev is None else now - self._prev
        self._prev = now
        v = self._voltage()
        was_tripped = self.tripped
        self._protection(now, v)
        if was_tripped and not self.tripped:
            dt = 0.0  # the ramp starts at the reconnection, not at the previous step
        if self.tripped:
            self.p_mw = self.q_mvar = 0.0
            self._write(self.p_point, 0.0)
            self._write(self.q_point, 0.0)
            return
        avail = self._read(self.p_avail_point, self.p_avail_mw)
        self.p_avail_mw = max(avail, 0.0)
        target = min(self.p_avail_mw, self.p_limit_mw())
        if self.ramp_pct_per_s:
            max_dp = self.ramp_pct_per_s / 100.0 * self.sn_mva * dt
            p = self.p_mw + min(max(target - self.p_mw, -max_dp), max_dp)
        else:
            p = target
        if self.fallback_active and self.fallback_p_limit_pct is not None:
            p = min(p, target)  # a safe state is reached at once, not ramped down to
        self.p_mw = max(min(p, self.p_avail_mw), 0.0)  # never more than the sun gives
        on = self._read(self.voltvar_point, float(self.voltvar_on)) >= 0.5
        q_target = self.curve.q_pu(v) * self.sn_mva if (on and v is not None) else 0.0
        if self.q_tau_s > 0.0:
            self.q_mvar += (q_target - self.q_mvar) * (1.0 - math.exp(-dt / self.q_tau_s))
        else:
            self.q_mvar = q_target
        self._write(self.p_point, self.p_mw)
        self._write(self.q_point, self.q_mvar)

    def _latch_safe_state(self, now: float) -> None:
        """The fallback P limit into the p_limit point (None: hold, the point is kept)."""
        if self.fallback_p_limit_pct is not None:
            self._write(self.p_limit_point, self.fallback_p_limit_pct)

    def _protection(self, now: float, v: float | None) -> None:
        if self.forced is not None:
            return  # held off until release()
        if v is None:  # no information: neither trip nor reconnect timers run
            self._abnormal_since = self._normal_since = None
            return
        if not self.tripped:
            if self.trip_low_pu <= v <= self.trip_high_pu:
                self._abnormal_since = None
                return
            if self._abnormal_since is None:
                self._abnormal_since = now
            if _elapsed(now, self._abnormal_since, self.trip_delay_s):
                self.tripped, self._abnormal_since, self._normal_since = True, None, None
                self.trips.append(TripEvent(now, self.name, f"voltage {v:.4g} pu", v))
                _log.warning("%s: tripped at %.3f s on voltage %.4g pu", self.name, now, v)
            return
        if not self.reconnect_low_pu <= v <= self.reconnect_high_pu:
            self._normal_since = None
            return
        if self._normal_since is None:
            self._normal_since = now
        if _elapsed(now, self._normal_since, self.reconnect_delay_s):
            self.tripped, self._normal_since = False, None
            _log.info("%s: reconnected at %.3f s", self.name, now)


# --- RTU measurements ------------------------------------------------------------------------
class RTUMeasurements(Device):
    """Noise and bias between the plant's true measurements and what clients read."""

    kind = "rtu"

    def __init__(
        self,
        name: str,
        store: PointStore,
        *,
        points: Iterable[str] | None = None,
        rng: np.random.Generator | int | None = None,
        sigma: float = 0.0,
        comms_timeout_s: float = 10.0,
    ) -> None:
        super().__init__(name, store, comms_timeout_s=comms_timeout_s)
        if points is None:
            points = [p.name for p in store.pointmap if p.kind == "measurement"]
        self.points = frozenset(points)
        for p in self.points:
            store.point(p)  # raises UnknownPoint
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self._sigma_default = 0.0
        self._sigma_unit: dict[str, float] = {}
        self._sigma_point: dict[str, float] = {}
        self._bias: dict[str, float] = {}
        # The true values by store position (what ``true_value`` answers), with the substation
        # time each came at (NaN: none given) and whether one came at all.
        n = len(store)
        self._tv = np.full(n, math.nan)
        self._tt = np.full(n, math.nan)
        self._seen = np.zeros(n, dtype=bool)
        self._cover = np.zeros(n, dtype=bool)
        self._cover[store.positions(sorted(self.points))] = True
        #: sigma and bias by position (None: to be rebuilt from the settings)
        self._sig_bias: tuple[np.ndarray, np.ndarray] | None = None
        self._unsubscribe: Any = None
        self._pass_through = True  # no noise, no bias anywhere: the per-write fast path
        self.set_noise(sigma)

    # -- configuration --------------------------------------------------------------------
    def set_noise(self, sigma: float, *, unit: str | None = None, point: str | None = None) -> None:
        """Gaussian noise, sigma in the point's engineering unit.

        For every covered point (default), the points of one ``unit`` ("pu", "kA", "MW" ...) or
        one ``point``; the most specific setting wins. 0 switches it off.
        """
        sigma = float(sigma)
        if not (math.isfinite(sigma) and sigma >= 0):
            raise DeviceConfigError(f"{self.name}: expected a noise sigma >= 0, found {sigma!r}")
        if point is not None:
            self._check(point)
            self._sigma_point[point] = sigma
        elif unit is not None:
            self._sigma_unit[unit] = sigma
        else:
            self._sigma_default = sigma
        self._pass_through = self._exact
        self._sig_bias = None

    def set_bias(self, point: str, value: float) -> None:
        """An additive bias on one point (engineering unit); 0 removes it. Applies from the next
        injected value; :meth:`refresh` re-reports the current true value at once."""
        self._check(point)
        self._bias[point] = float(value)
        self._pass_through = self._exact
        self._sig_bias = None

    def sigma(self, point: str) -> float:
        if point in self._sigma_point:
            return self._sigma_point[point]
        return self._sigma_unit.get(self.store.point(point).unit, self._sigma_default)

    def bias(self, point: str) -> float:
        return self._bias.get(point, 0.0)

    def _check(self, point: str) -> None:
        self.store.point(point)  # UnknownPoint for a name not in the map
        if point not in self.points:
            raise DeviceConfigError(
                f"{self.name}: expected one of the RTU's measurement points, found {point!r}"
            )

    # -- data path ------------------------------------------------------------------------
    def inject(
        self,
        name: str,
        true_value: float,
        now: float | None = None,
        *,
        quality: Quality = Quality.GOOD,
        timestamp: float | None = None,
    ) -> float:
        """The plant's true value of a point in; the reported value (bias + noise) out.

        ``now`` is the substation time of the value, kept beside it (:meth:`true_value`).
        Returns the value now in the store.
        """
        self._check(name)
        v = float(true_value)
        self._keep_true(name, v, now)
        reported = self._report(name, v, quality)
        self.store.set(name, reported, quality=quality, timestamp=timestamp, source=self.source)
        return reported

    def _keep_true(self, name: str, value: float, now: float | None) -> None:
        i = self.store.position(name)
        self._tv[i] = value
        self._tt[i] = math.nan if now is None else now
        self._seen[i] = True

    def has_true_value(self, name: str) -> bool:
        """Whether a true value was injected or seen for ``name`` (False for a name not in
        the store)."""
        if name not in self.store:
            return False
        return bool(self._seen[self.store.position(name)])

    def true_value(self, name: str) -> float:
        """The last true value injected or seen for ``name`` (NaN if none)."""
        i = self.store.position(name)
        return float(self._tv[i]) if self._seen[i] else math.nan

    def refresh(self, name: str | None = None) -> None:
        """Re-report the current true value(s) with fresh noise and the current bias.

        Raises:
            KeyError: ``name`` has no true value yet (:meth:`has_true_value`).
        """
        names = self.store.names
        if name is not None:
            if not self.has_true_value(name):
                raise KeyError(name)
            todo = [name]
        else:
            todo = sorted(names[i] for i in np.flatnonzero(self._seen).tolist())
        for n in todo:
            value = self.true_value(n)
            q = self.store.get(n).quality
            self.store.set(n, self._report(n, value, q), quality=q, source=self.source)

    @property
    def _exact(self) -> bool:
        """Whether no point has noise or bias: reported values are the true ones."""
        return (
            self._sigma_default == 0.0
            and not any(self._sigma_unit.values())
            and not any(self._sigma_point.values())
            and not any(self._bias.values())
        )

    def _report(self, name: str, v: float, quality: Quality) -> float:
        if self._pass_through or quality is not Quality.GOOD or not math.isfinite(v):
            return v
        sigma = self.sigma(name)
        noise = float(self.rng.normal(0.0, sigma)) if sigma > 0 else 0.0
        return v + self.bias(name) + noise

    def attach(self) -> None:
        """Take every non-device write of a covered point as a true value (see module doc).

        Installed as the store's transform: the reported value (bias + noise) is what gets
        stored, so every store listener sees only the reported value.
        """
        self.store.set_transform(self._on_write, array=self._on_write_array)
        self._unsubscribe = lambda: self.store.set_transform(None)

    def detach(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def _on_write(self, point: Any, value: float, quality: Quality, source: str) -> float:
        name = point.name
        if name not in self.points:
            return value
        self._keep_true(name, value, self._last_now)
        return self._report(name, value, quality)

    def _sigmas_biases(self) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`sigma` and :meth:`bias` of every store position (0 where not covered)."""
        sb = self._sig_bias
        if sb is None:
            n = len(self.store)
            sig, bias = np.zeros(n), np.zeros(n)
            names = self.store.names
            for i in np.flatnonzero(self._cover).tolist():
                sig[i] = self.sigma(names[i])
                bias[i] = self.bias(names[i])
            sb = self._sig_bias = (sig, bias)
        return sb

    def _on_write_array(
        self, pos: np.ndarray, values: np.ndarray, qualities: np.ndarray, source: str
    ) -> np.ndarray:
        """:meth:`_on_write` for a whole bulk write (the store's array transform), entry by
        entry the same: true values kept, then ``v + bias + noise`` for every covered GOOD
        finite value, the noise drawn in write order (one ``normal`` call over the sigmas,
        the same stream as one call per value)."""
        cov = self._cover[pos]
        if not cov.any():
            return values
        sel = pos[cov]
        vals = values[cov]
        self._tv[sel] = vals
        self._tt[sel] = math.nan if self._last_now is None else self._last_now
        self._seen[sel] = True
        if self._pass_through:
            return values
        apply = cov & (qualities == _GOOD_CODE) & np.isfinite(values)
        if not apply.any():
            return values
        at = pos[apply]
        sig, bias = self._sigmas_biases()
        s = sig[at]
        noise = np.zeros(len(at))
        draw = s > 0
        if draw.any():
            noise[draw] = self.rng.normal(0.0, s[draw])
        out = values.copy()
        out[apply] = values[apply] + bias[at] + noise
        return out

    def _step(self, now: float) -> None:
        """Nothing moves with time: values change when the plant writes them."""


# --- batched stepping -------------------------------------------------------------------------
#: the source of the inverters' batched output writes (one ``set_many`` per round)
BATCH_SOURCE = "device:inverters"


def _pymax(a: Any, b: Any) -> Any:
    """Python's ``max(a, b)`` element-wise: ``a`` unless ``b > a`` (so -0.0 and ties keep
    the first argument, as the scalar code does)."""
    return np.where(b > a, b, a)


def _pymin(a: Any, b: Any) -> Any:
    """Python's ``min(a, b)`` element-wise: ``a`` unless ``b < a``."""
    return np.where(b < a, b, a)


class InverterBatch:
    """Every :class:`DERInverter` of one store stepped as numpy arrays, with the behaviour of
    :meth:`DERInverter.step` (the scalar reference), bit for bit.

    The batch covers the common case of a round: an inverter connected, not forced, with no
    protection timer running, no fallback and no watchdog falling due, and its voltage within
    the trip band (or unknown). The others are stepped one by one by :meth:`DERInverter.step`
    (returned by :meth:`step` to the caller, which isolates their failures). The batch's
    outputs are written with ONE :meth:`PointStore.set_many` per round (source
    :data:`BATCH_SOURCE`), only the values that changed, in device order (P then Q).

    Parameters (rated power, ramp, lag, trip band, curve, default setpoints, point names) are
    read when the batch is built; the substation rebuilds it when its device list changes.
    """

    def __init__(self, inverters: Iterable[DERInverter]) -> None:
        devs = list(inverters)
        if any(type(d) is not DERInverter for d in devs):
            raise DeviceConfigError("InverterBatch: expected DERInverter devices only")
        stores = {id(d.store) for d in devs}
        if len(stores) > 1:
            raise DeviceConfigError(
                f"InverterBatch: expected the inverters of one store, found {len(stores)}"
            )
        self.devices = devs
        self.store = devs[0].store if devs else None
        f = np.array
        self._sn = f([d.sn_mva for d in devs], dtype=float)
        self._ramp = f([float(d.ramp_pct_per_s or 0.0) for d in devs], dtype=float)
        self._has_ramp = f([bool(d.ramp_pct_per_s) for d in devs], dtype=bool)
        self._tau = f([d.q_tau_s for d in devs], dtype=float)
        self._lagged = [i for i, d in enumerate(devs) if d.q_tau_s > 0.0]
        self._trip_lo = f([d.trip_low_pu for d in devs], dtype=float)
        self._trip_hi = f([d.trip_high_pu for d in devs], dtype=float)
        self._points = [
            (
                d.voltage_point,
                d.p_avail_point,
                d.p_limit_point,
                d.voltvar_point,
                d.p_limit_pct,
                float(d.voltvar_on),
            )
            for d in devs
        ]
        if devs:
            store = devs[0].store
            cols = ("voltage_point", "p_avail_point", "p_limit_point", "voltvar_point")
            self._in = _Inputs(store, [[getattr(d, c) for d in devs] for c in cols])
            self._pq_pos = store.positions(
                [n for d in devs for n in (d.p_point, d.q_point)]
            ).reshape(-1, 2)
            # outputs written as one set_array when no two outputs share a point
            self._pq_distinct = len(set(self._pq_pos.ravel().tolist())) == 2 * len(devs)
        self._pct_default = f([d.p_limit_pct for d in devs], dtype=float)
        self._vv_default = f([float(d.voltvar_on) for d in devs], dtype=float)
        # one np.interp per distinct curve (the same C routine as the scalar q_pu)
        by_curve: dict[int, tuple[VoltVarCurve, list[int]]] = {}
        self._scalar_curve: set[int] = set()
        for i, d in enumerate(devs):
            if type(d.curve) is not VoltVarCurve:  # a subclass may compute Q differently
                self._scalar_curve.add(i)
                continue
            by_curve.setdefault(id(d.curve), (d.curve, []))[1].append(i)
        self._curves = [
            (f([v for v, _ in c.points]), f([q for _, q in c.points]), f(idx, dtype=np.intp))
            for c, idx in by_curve.values()
        ]
        self.rounds = 0  # rounds stepped as a batch
        self.batched = 0  # inverter steps done in the batch
        self.scalar = 0  # inverter steps left to DERInverter.step

    def step(self, now: float) -> list[DERInverter]:
        """One round at ``now``: the batch's inverters stepped and written; returns those
        that must be stepped one by one (``DERInverter.step``), in device order."""
        now = float(now)
        devs = self.devices
        if not devs:
            return []
        self.rounds += 1
        store = self.store
        assert store is not None
        idx: list[int] = []
        avail_dev: list[float] = []
        p_l: list[float] = []
        q_l: list[float] = []
        prev_l: list[float] = []
        scalar_curve = self._scalar_curve
        for i, d in enumerate(devs):
            if (
                d.forced is not None
                or d.tripped
                or d.fallback_active
                or d._comms_lost_at is not None
                or d._abnormal_since is not None
                or d._normal_since is not None
                or (d._last_now is not None and now < d._last_now)
                or i in scalar_curve
            ):
                continue
            beat = d._beat_at
            if (
                beat is not None
                and d.heartbeat_s is not None
                and not d.heartbeat_lost
                and _elapsed(now, beat, d.heartbeat_s)
            ):
                continue
            avail_dev.append(d.p_avail_mw)
            p_l.append(d.p_mw)
            q_l.append(d.q_mvar)
            prev = d._prev
            prev_l.append(now if prev is None else prev)
            idx.append(i)
        if not idx:
            return list(devs)
        ix = np.array(idx, dtype=np.intp)
        # the inputs as the devices see them (DERInverter._voltage and _read), as arrays
        inp = self._in
        all_v, all_q = inp.raw()
        raw_v, raw_q = all_v[:, ix], all_q[:, ix]
        has_v = inp.has[0, ix]
        sv = raw_v[0]
        nan_v = has_v & np.isnan(sv)  # an isolated bus: 0 pu, known (whatever the quality)
        good_v = has_v & ~nan_v & (raw_q[0] == _GOOD_CODE)
        known = nan_v | good_v
        v = np.where(good_v, sv, np.where(nan_v, 0.0, 1.0))
        ok_in = inp.has[1:, ix] & (raw_q[1:] == _GOOD_CODE)
        avail = np.where(ok_in[0], raw_v[1], np.array(avail_dev))
        pct = np.where(ok_in[1], raw_v[2], self._pct_default[ix])
        on = np.where(ok_in[2], raw_v[3], self._vv_default[ix]) >= 0.5
        # outside the trip band: the protection timer starts, left to the scalar step
        inband = ~known | ((self._trip_lo[ix] <= v) & (v <= self._trip_hi[ix]))
        sn = self._sn[ix]
        dt = now - np.array(prev_l)
        p_mw = np.array(p_l)
        p_avail = _pymax(avail, 0.0)
        p_limit = _pymax(pct, 0.0) / 100.0 * sn
        target = _pymin(p_avail, p_limit)
        max_dp = self._ramp[ix] / 100.0 * sn * dt
        step_p = _pymin(_pymax(target - p_mw, -max_dp), max_dp)
        p = np.where(self._has_ramp[ix], p_mw + step_p, target)
        p_new = _pymax(_pymin(p, p_avail), 0.0)
        q_target = np.zeros(len(ix))
        pos = np.full(len(devs), -1, dtype=np.intp)
        pos[ix] = np.arange(len(ix))
        for vs, qs, members in self._curves:
            sel = pos[members]
            sel = sel[sel >= 0]
            if len(sel):
                q_target[sel] = np.interp(v[sel], vs, qs)
        q_target = np.where(on & known, q_target * sn, 0.0)
        q_new = q_target
        if self._lagged:
            q_new = q_target.copy()
            exp = math.exp
            for i in self._lagged:
                j = int(pos[i])
                if j < 0:
                    continue
                q0 = q_l[j]
                q_new[j] = q0 + (float(q_target[j]) - q0) * (
                    1.0 - exp(-float(dt[j]) / float(self._tau[i]))
                )
        # what the devices have for their outputs now (device_get, as Device._write checks),
        # before any write
        taken_ix = ix[inband]
        out_pos = self._pq_pos[taken_ix]
        out_v = np.stack([p_new[inband], q_new[inband]], axis=1)
        cur, cur_q = store.device_arrays(out_pos.ravel())
        same = (cur_q == _GOOD_CODE) & (cur == out_v.ravel())
        p_out = p_new.tolist()
        q_out = q_new.tolist()
        avail_out = p_avail.tolist()
        ok = inband.tolist()
        taken: set[int] = set()
        for k, i in enumerate(idx):
            if not ok[k]:
                continue
            d = devs[i]
            taken.add(i)
            d._prev = now
            d._last_now = now
            d.p_avail_mw = avail_out[k]
            d.p_mw = p_out[k]
            d.q_mvar = q_out[k]
        write = ~same
        if write.any():
            wpos = out_pos.ravel()[write]
            wval = out_v.ravel()[write]
            if self._pq_distinct:
                store.set_array(wpos, wval, source=BATCH_SOURCE)
            else:
                names = store.names
                store.set_many(
                    [(names[j], x) for j, x in zip(wpos.tolist(), wval.tolist())],
                    source=BATCH_SOURCE,
                )
        rest = [d for i, d in enumerate(devs) if i not in taken]
        self.batched += len(taken)
        self.scalar += len(rest)
        return rest


# --- breakers, relays, AVRs: the quiet ones of a round found in one array pass ----------------
def _base_quiet(d: Device, now: float) -> bool:
    """Whether :meth:`Device.step` at ``now`` would pass the clock and watchdog checks
    without acting: time not going back, no comms loss or fallback, no heartbeat due."""
    last = d._last_now
    if (last is not None and now < last) or d._comms_lost_at is not None or d.fallback_active:
        return False
    beat = d._beat_at
    return (
        beat is None
        or d.heartbeat_s is None
        or d.heartbeat_lost
        or not _elapsed(now, beat, d.heartbeat_s)
    )


def _opt_positions(store: PointStore, names: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """Store positions of optional points (0 where absent) and whether each is present."""
    has = np.array([n is not None for n in names], dtype=bool)
    pos = np.array([store.position(n) if n is not None else 0 for n in names], dtype=np.intp)
    return pos, has


class _Inputs:
    """Optional input points of a list of devices, one row per input column, read in one
    gather as the devices read them (:meth:`PointStore.device_arrays`)."""

    def __init__(self, store: PointStore, columns: list[list[str | None]]) -> None:
        self.store = store
        rows = [_opt_positions(store, c) for c in columns]
        self.pos = np.stack([p for p, _ in rows])
        self.has = np.stack([h for _, h in rows])
        self._flat = self.pos.ravel()

    def raw(self) -> tuple[np.ndarray, np.ndarray]:
        """Values and quality codes, shape (columns, devices)."""
        v, q = self.store.device_arrays(self._flat)
        return v.reshape(self.pos.shape), q.reshape(self.pos.shape)


class _SeenPoints:
    """Whether points a device remembers the last Sample of (a breaker's command, an AVR's
    raise/lower pulses) are unchanged since: the store's per-point version has not moved
    since the device last looked, and the device still holds the Sample seen then.

    A version only moves on a write (or a fault applied), so "unchanged" here is exact; a
    moved version is only "maybe changed": the device's own step decides."""

    def __init__(self, store: PointStore, names: list[str]) -> None:
        self.store = store
        self.pos = store.positions(names)
        self.names = names
        self._ver = np.zeros(len(names), dtype=np.uint64)
        self._valid = np.zeros(len(names), dtype=bool)
        self._sample: list[Sample | None] = [None] * len(names)

    def unchanged(self, held: list[Sample | None]) -> np.ndarray:
        """Per point: unchanged since recorded, given the Samples the devices hold now."""
        if not len(self.pos):
            return np.zeros(0, dtype=bool)
        same = self._valid & (self.store.versions[self.pos] == self._ver)
        if all(map(operator.is_, held, self._sample)):
            return same
        return same & np.fromiter(map(operator.is_, held, self._sample), dtype=bool)

    def record(self, k: int, held: Sample | None) -> None:
        """The device of point ``k`` has just looked: it holds ``held``."""
        self._sample[k] = held
        ok = held is not None and self.store.device_get(self.names[k]) is held
        self._valid[k] = ok
        if ok:
            self._ver[k] = self.store.versions[self.pos[k]]


class _KindBatch:
    """Devices of one built-in kind stepped at one time (a :class:`DeviceRound` run of
    consecutive devices of that kind). One array pass finds the devices whose
    :meth:`Device.step` would change nothing but the time of their last step (quiet); they
    are given the time, and the others are returned to be stepped one by one by their own
    ``step`` (the reference behaviour, audit records and all). Parameters that are not
    points (defaults, limits) are read when the batch is built."""

    def __init__(self, devices: list[Any]) -> None:
        self.devices = devices
        self.store: PointStore = devices[0].store
        self.rounds = 0
        self.quiet = 0  # device steps found quiet
        self.scalar = 0  # device steps left to Device.step

    def _quiet(self, now: float) -> list[bool]:
        raise NotImplementedError

    def step(self, now: float) -> list[Any]:
        """Give the quiet devices the time ``now``; return the others, in device order."""
        self.rounds += 1
        quiet = self._quiet(now)
        rest = []
        for d, q in zip(self.devices, quiet, strict=True):
            if q:
                d._last_now = now
            else:
                rest.append(d)
        self.scalar += len(rest)
        self.quiet += len(self.devices) - len(rest)
        return rest

    def stepped(self, d: Any) -> None:
        """``d`` was stepped by its own ``step`` (or tried): note what it has seen."""


class _BreakerBatch(_KindBatch):
    """Quiet: no operation pending and no command written since the last scan."""

    def __init__(self, devices: list[Any]) -> None:
        super().__init__(devices)
        self._cmd = _SeenPoints(self.store, [d.cmd_point for d in devices])
        self._k = {id(d): k for k, d in enumerate(devices)}

    def cmd_unchanged(self) -> list[bool]:
        """Per breaker: no command written since its last scan (False: maybe one)."""
        return self._cmd.unchanged([d._seen_cmd for d in self.devices]).tolist()

    def _quiet(self, now: float) -> list[bool]:
        same = self.cmd_unchanged()
        return [
            s
            and d.pending is None
            and d._comms_lost_at is None
            and not d.fallback_active
            and (d._beat_at is None or _base_quiet(d, now))
            and (d._last_now is None or now >= d._last_now)
            for d, s in zip(self.devices, same, strict=True)
        ]

    def stepped(self, d: Any) -> None:
        self._cmd.record(self._k[id(d)], d._seen_cmd)


class _RelayBatch(_KindBatch):
    """Quiet: not picked up, and the current neither above the pickup (not latched) nor
    below the dropout (latched), or not GOOD."""

    def __init__(self, devices: list[Any]) -> None:
        super().__init__(devices)
        store = self.store
        self._in = _Inputs(
            store, [[d.current_point for d in devices], [d.pickup_point for d in devices]]
        )
        self._pick_default = np.array([d.pickup_ka for d in devices], dtype=float)
        self._ratio = np.array([d.dropout_ratio for d in devices], dtype=float)

    def _quiet(self, now: float) -> list[bool]:
        v, q = self._in.raw()
        i = np.abs(v[0])
        pickup = np.where(self._in.has[1] & (q[1] == _GOOD_CODE), v[1], self._pick_default)
        dropout = self._ratio * pickup
        latched = np.array([d.latched for d in self.devices], dtype=bool)
        calm = (q[0] != _GOOD_CODE) | np.where(latched, ~(i < dropout), ~(i > pickup))
        return [
            c
            and d.picked_up_since is None
            and d._comms_lost_at is None
            and not d.fallback_active
            and (d._beat_at is None or _base_quiet(d, now))
            and (d._last_now is None or now >= d._last_now)
            for d, c in zip(self.devices, calm.tolist(), strict=True)
        ]


class _AVRBatch(_KindBatch):
    """Quiet: no pulse written, the mechanism at rest, no step just completed, and the
    definite-time timer neither to start, reset nor act (in band or not GOOD or manual with
    no timer running; out of band on the same side with the delay not over, or over at a
    limit already reported)."""

    def __init__(self, devices: list[Any]) -> None:
        super().__init__(devices)
        store = self.store
        cols = ("voltage_point", "auto_point", "vset_point", "band_point", "delay_point")
        self._in = _Inputs(store, [[getattr(d, c) for d in devices] for c in cols])
        f = np.array
        #: defaults of the rows of _in (the voltage has none: its quality is looked at)
        self._defaults = f(
            [
                [math.nan for d in devices],
                [float(d.auto) for d in devices],
                [d.vset_pu for d in devices],
                [d.band_pu for d in devices],
                [d.delay_s for d in devices],
            ],
            dtype=float,
        )
        self._tmin = f([d.tap_min for d in devices], dtype=np.int64)
        self._tmax = f([d.tap_max for d in devices], dtype=np.int64)
        self._raise = f([d.raise_delta for d in devices], dtype=np.int64)
        #: (device index, pulse point) of every raise/lower point, in device order
        self._pulse_of = [(k, p) for k, d in enumerate(devices) for p in d._pulses]
        self._pulses = _SeenPoints(store, [p for _, p in self._pulse_of])
        self._pulse_k: dict[int, list[int]] = {}
        for j, (k, _) in enumerate(self._pulse_of):
            self._pulse_k.setdefault(id(devices[k]), []).append(j)

    def _quiet(self, now: float) -> list[bool]:
        devs = self.devices
        n = len(devs)
        calm_pulses: np.ndarray | None = None
        if self._pulse_of:
            held = [devs[k]._seen_pulse[p] for k, p in self._pulse_of]
            same = self._pulses.unchanged(held)
            if not same.all():
                calm_pulses = np.ones(n, dtype=bool)
                ks = np.array([k for k, _ in self._pulse_of], dtype=np.intp)
                calm_pulses[ks[~same]] = False
        raw_v, raw_q = self._in.raw()
        r = np.where(self._in.has & (raw_q == _GOOD_CODE), raw_v, self._defaults)
        dev = raw_v[0] - r[2]  # voltage - vset
        inband = np.abs(dev) <= np.abs(r[3])
        # manual, no GOOD voltage or in band: the scalar step resets the timer (keeps it off)
        timer_off = ~(r[1] >= 0.5) | (raw_q[0] != _GOOD_CODE) | inband
        since = [d._out_since for d in devs]
        if all(x is None for x in since):  # the common case: no timer running
            calm = timer_off
        else:
            out_since = np.array([math.nan if x is None else x for x in since], dtype=float)
            running = ~np.isnan(out_since)
            delay = _pymax(r[4], 0.0)
            sign = np.where(dev < 0, 1, -1)
            out_sign = np.array([d._out_sign for d in devs], dtype=np.int64)
            tap = np.array([d.tap_pos for d in devs], dtype=np.int64)
            logged = np.array([d._at_limit_logged for d in devs], dtype=bool)
            target = tap + sign * self._raise
            at_limit = (target < self._tmin) | (target > self._tmax)
            due = (now - out_since) >= (delay - TIME_EPS_S)
            waiting = running & (sign == out_sign) & (~due | (at_limit & logged))
            calm = np.where(timer_off, ~running, waiting)
        if calm_pulses is not None:
            calm = calm & calm_pulses
        return [
            c
            and d.moving_to is None
            and d._v_at_move is None
            and d._comms_lost_at is None
            and not d.fallback_active
            and (d._beat_at is None or _base_quiet(d, now))
            and (d._last_now is None or now >= d._last_now)
            for d, c in zip(devs, calm.tolist(), strict=True)
        ]

    def stepped(self, d: Any) -> None:
        for j in self._pulse_k.get(id(d), ()):
            self._pulses.record(j, d._seen_pulse[self._pulse_of[j][1]])


#: the device kinds a :class:`DeviceRound` knows the inputs and outputs of
_BUILTIN_KINDS: tuple[type, ...] = (
    Breaker,
    OvercurrentRelay,
    TapChangerAVR,
    DERInverter,
    RTUMeasurements,
)


#: exact device type -> the batch that steps a run of consecutive devices of it
_KIND_BATCHES: dict[type, type[_KindBatch]] = {
    Breaker: _BreakerBatch,
    OvercurrentRelay: _RelayBatch,
    TapChangerAVR: _AVRBatch,
}


class DeviceRound:
    """Steps a list of devices at one time, in their order: the inverters as one
    :class:`InverterBatch` (at the place of the first inverter), and each run of
    consecutive breakers, relays or AVRs as one :class:`_KindBatch` (the quiet ones given the
    time in one array pass, the others stepped one by one, in order).

    Batching is exact because within a round no built-in device reads what an inverter
    writes (P, Q), and inverters read only the twin's or a master's points; a kind batch
    changes nothing for a quiet device but its time, and steps the others in device order.
    With any other kind of device in the list, or a store with the bulk path off
    (``GRIDTWIN_BULK=0``, :attr:`hil.store.PointStore.bulk`), every device is stepped one
    by one (:meth:`Device.step`): the reference.
    """

    def __init__(self, devices: Iterable[Any]) -> None:
        self.devices = tuple(devices)
        invs = [d for d in self.devices if type(d) is DERInverter]
        known = all(type(d) in _BUILTIN_KINDS for d in self.devices)
        stores = {id(getattr(d, "store", None)) for d in self.devices}
        bulk = all(bool(getattr(getattr(d, "store", None), "bulk", False)) for d in self.devices)
        one_store = len({id(getattr(d, "store", None)) for d in invs}) <= 1
        batching = known and bulk
        self.batch: InverterBatch | None = None
        if invs and batching and one_store:
            self.batch = InverterBatch(invs)
        #: the kind batches (runs of consecutive breakers, relays, AVRs of one store)
        self.kind_batches: list[_KindBatch] = []
        #: (index in ``devices``, device) in step order; None marks the inverter batch, a
        #: _KindBatch a run of one kind
        self._plan: list[tuple[int, Any] | _KindBatch | None] = []
        kind_of: dict[int, tuple[_KindBatch, int]] = {}  # id(device) -> (its batch, place)
        placed = False
        i = 0
        devs = self.devices
        while i < len(devs):
            d = devs[i]
            if self.batch is not None and type(d) is DERInverter:
                if not placed:
                    self._plan.append(None)
                    placed = True
                i += 1
                continue
            cls = _KIND_BATCHES.get(type(d)) if batching and len(stores) == 1 else None
            if cls is None:
                self._plan.append((i, d))
                i += 1
                continue
            j = i
            while j < len(devs) and type(devs[j]) is type(d):
                j += 1
            kb = cls(list(devs[i:j]))
            self.kind_batches.append(kb)
            self._plan.append(kb)
            for k, x in enumerate(kb.devices):
                kind_of[id(x)] = (kb, k)
            i = j
        self._index = {id(d): i for i, d in enumerate(self.devices)}
        self._due = [d for d in self.devices if getattr(d, "next_due", None) is not None]
        #: per device of ``_due``: (its kind batch's index in kind_batches, place) or None
        kb_index = {id(kb): n for n, kb in enumerate(self.kind_batches)}
        self._due_kind: list[tuple[int, int] | None] = []
        for d in self._due:
            hit = kind_of.get(id(d))
            self._due_kind.append(None if hit is None else (kb_index[id(hit[0])], hit[1]))
        #: (name, watchdog_events list) of every device that keeps one (collected per round)
        self.event_lists: list[tuple[str, list[tuple[float, str, str]]]] = [
            (str(getattr(d, "name", d)), d.watchdog_events)
            for d in self.devices
            if isinstance(getattr(d, "watchdog_events", None), list)
        ]

    def next_dues(self, now: float) -> list[float]:
        """Every device's ``next_due(now)`` that is not None, in device order (a device whose
        ``next_due`` raises is left out: it is logged when it is stepped). A device with no
        timer of its own and no watchdog armed (and, for a breaker, no command written since
        its scan) is known to have none without asking it."""
        out: list[float] = []
        cmd_same: list[list[bool] | None] = [
            kb.cmd_unchanged() if isinstance(kb, _BreakerBatch) else None
            for kb in self.kind_batches
        ]
        for d, kind in zip(self._due, self._due_kind):
            t = type(d)
            if t is DERInverter:
                if (
                    d.forced is None
                    and not d.tripped
                    and d._abnormal_since is None
                    and d._comms_lost_at is None
                    and d._beat_at is None
                ):
                    continue
            elif kind is not None and d._comms_lost_at is None and d._beat_at is None:
                if t is OvercurrentRelay:
                    if d.picked_up_since is None or d.latched:
                        continue
                elif t is TapChangerAVR:
                    if d.moving_to is None and d._out_since is None:
                        continue
                elif t is Breaker:
                    same = cmd_same[kind[0]]
                    if d.pending is None and same is not None and same[kind[1]]:
                        continue
            try:
                due = d.next_due(now)
            except Exception:  # a broken device is logged when it is stepped
                continue
            if due is not None:
                out.append(due)
        return out

    def step(self, now: float, on_error: Any) -> None:
        """Step every device once at ``now``; ``on_error(index, device, exc)`` is called for
        a device whose step raised (the others go on)."""
        for entry in self._plan:
            if entry is None:
                assert self.batch is not None
                try:
                    rest = self.batch.step(now)
                except Exception:  # the batch failed: its inverters one by one (a second
                    # step at the same time is idempotent: dt = 0 ramps nothing)
                    _log.exception("inverter batch failed at t=%s, stepping one by one", now)
                    rest = list(self.batch.devices)
                for d in rest:
                    try:
                        d.step(now)
                    except Exception as exc:  # one broken device must not stop the others
                        on_error(self._index[id(d)], d, exc)
                continue
            if isinstance(entry, _KindBatch):
                try:
                    rest = entry.step(now)
                except Exception:  # the pass failed: every device of the run one by one
                    _log.exception("%s batch failed at t=%s", type(entry).__name__, now)
                    rest = list(entry.devices)
                for d in rest:
                    try:
                        d.step(now)
                    except Exception as exc:  # one broken device must not stop the others
                        on_error(self._index[id(d)], d, exc)
                    entry.stepped(d)
                continue
            i, dev = entry
            try:
                dev.step(now)
            except Exception as exc:  # one broken device must not stop the others
                on_error(i, dev, exc)


# --- build -----------------------------------------------------------------------------------
def _resolve_element(net: Any, table: str, element: int | str) -> int | None:
    """pandapower index of a point's element: an index, a unique name, or ``<table><index>``."""
    if table not in net or not hasattr(net[table], "index"):
        return None
    df = net[table]
    if isinstance(element, (int, np.integer)):
        return int(element) if int(element) in df.index else None
    from twin.labels import label_index

    hit = label_index(net, table).get(element)
    if hit is not None:
        return hit
    names = df["name"] if "name" in df else None  # a hand-written map binding a raw name
    if names is not None:
        hits = df.index[names == element]
        if len(hits) == 1:
            return int(hits[0])
    return None


def _num(value: Any, default: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return default
    return v if math.isfinite(v) else default


def build_devices(
    net: Any,
    pointmap: PointMap,
    store: PointStore,
    *,
    rng: np.random.Generator | int | None = None,
    settings: DeviceSettings | None = None,
) -> list[Device]:
    """Create the devices the point map calls for, and write initial values.

    - a :class:`Breaker` per switch with ``closed`` and ``cmd`` points;
    - a :class:`TapChangerAVR` per trafo with ``tap_pos``, an ``avr_*`` point, a tap changer in
      the net and a ``vm_pu`` point on its LV bus;
    - an :class:`OvercurrentRelay` per line with ``i_ka`` and an ``oc_*`` point whose line has a
      breaker (switch ``et="l"``, ``element`` = the line): the one at the line's from_bus, else
      the lowest switch index;
    - a :class:`DERInverter` per sgen with ``p_mw``, ``q_mvar`` and ``p_avail_mw`` or
      ``p_limit_pct`` points (rated power: ``sn_mva``, else ``|p_mw|``, else 1 MVA);
    - one :class:`RTUMeasurements` over every measurement point (noise
      ``settings.rtu_noise_sigma``), attached as the store's transform (module docstring).

    Statuses (``closed``, ``cmd``, ``operations``, ``tap_pos``, sgen ``p_mw``/``q_mvar``) are set
    from the net; setpoints and ``p_avail_mw`` get defaults only when they are not GOOD yet, so
    values set before are kept. Elements that lack what a device needs are skipped with a warning.
    Returned in step order: breakers, relays, AVRs, inverters, RTU.
    """
    cfg = settings or DeviceSettings()
    pts: dict[tuple[str, int, str], str] = {}
    for p in pointmap:
        idx = _resolve_element(net, p.table, p.element)
        if idx is None:
            _log.debug(
                "point %s: element %r not in net.%s, no device uses it", p.name, p.element, p.table
            )
            continue
        pts[(p.table, idx, p.column)] = p.name

    def pt(table: str, idx: int, column: str) -> str | None:
        return pts.get((table, int(idx), column))

    def label(name: str) -> str:
        return name.rsplit(".", 1)[0]

    def init(name: str | None, value: float, *, keep_good: bool) -> None:
        if name is None:
            return
        if keep_good and store.get(name).quality is Quality.GOOD:
            return
        store.set(name, value, source="device:build")

    kw: dict[str, Any] = {"comms_timeout_s": cfg.comms_timeout_s}
    breakers: dict[int, Breaker] = {}
    for idx, row in net.switch.iterrows():
        closed_pt, cmd_pt = pt("switch", idx, "closed"), pt("switch", idx, "cmd")
        if closed_pt is None or cmd_pt is None:
            continue
        ops_pt = pt("switch", idx, "operations")
        closed = bool(row["closed"])
        init(closed_pt, float(closed), keep_good=False)
        init(cmd_pt, float(closed), keep_good=False)
        init(ops_pt, 0.0, keep_good=False)
        breakers[int(idx)] = Breaker(
            label(closed_pt),
            store,
            closed_point=closed_pt,
            cmd_point=cmd_pt,
            operations_point=ops_pt,
            open_time_s=cfg.breaker_open_s,
            close_time_s=cfg.breaker_close_s,
            closed=closed,
            **kw,
        )

    relays: list[Device] = []
    for idx, row in net.line.iterrows():
        i_pt = pt("line", idx, "i_ka")
        pick_pt, delay_pt = pt("line", idx, "oc_pickup_ka"), pt("line", idx, "oc_delay_s")
        if i_pt is None or (pick_pt is None and delay_pt is None):
            continue
        sw = net.switch[(net.switch.et == "l") & (net.switch.element == idx)]
        candidates = [int(s) for s in sw.index if int(s) in breakers]
        if not candidates:
            _log.warning("line %s: relay points but no line breaker with closed+cmd points", idx)
            continue
        at_from = [s for s in candidates if int(net.switch.at[s, "bus"]) == int(row["from_bus"])]
        brk = breakers[(at_from or sorted(candidates))[0]]
        parallel = _num(row.get("parallel", 1), 1.0)
        pickup = cfg.oc_pickup_factor * _num(row["max_i_ka"], math.inf) * parallel
        if not math.isfinite(pickup):
            _log.warning("line %s: no finite max_i_ka, relay pickup left at its point value", idx)
            pickup = 1.0
        init(pick_pt, pickup, keep_good=True)
        init(delay_pt, cfg.oc_delay_s, keep_good=True)
        relays.append(
            OvercurrentRelay(
                label(i_pt),
                store,
                current_point=i_pt,
                breaker=brk,
                pickup_point=pick_pt,
                delay_point=delay_pt,
                pickup_ka=pickup,
                delay_s=cfg.oc_delay_s,
                dropout_ratio=cfg.oc_dropout_ratio,
                **kw,
            )
        )

    avrs: list[Device] = []
    avr_cols = ("avr_vset_pu", "avr_band_pu", "avr_delay_s", "avr_auto")
    for idx, row in net.trafo.iterrows():
        tap_pt = pt("trafo", idx, "tap_pos")
        cols = {c: pt("trafo", idx, c) for c in avr_cols}
        if tap_pt is None or not any(cols.values()):
            continue
        v_pt = pt("bus", row["lv_bus"], "vm_pu")
        if v_pt is None:
            _log.warning("trafo %s: AVR points but no vm_pu point on LV bus %s", idx, row["lv_bus"])
            continue
        try:
            delta = tap_delta_raising_voltage(row)
        except DeviceConfigError as exc:
            _log.warning("%s; no AVR", exc)
            continue
        neutral = _num(row["tap_neutral"], 0.0)
        tap = int(round(_num(row["tap_pos"], neutral)))
        tmin = int(round(_num(row["tap_min"], tap)))
        tmax = int(round(_num(row["tap_max"], tap)))
        init(tap_pt, tap, keep_good=False)
        init(cols["avr_vset_pu"], cfg.avr_vset_pu, keep_good=True)
        init(cols["avr_band_pu"], cfg.avr_band_pu, keep_good=True)
        init(cols["avr_delay_s"], cfg.avr_delay_s, keep_good=True)
        init(cols["avr_auto"], float(cfg.avr_auto), keep_good=True)
        for col in ("tap_raise", "tap_lower"):
            init(pt("trafo", idx, col), 0.0, keep_good=False)
        avrs.append(
            TapChangerAVR(
                label(tap_pt),
                store,
                tap_point=tap_pt,
                voltage_point=v_pt,
                tap_min=tmin,
                tap_max=tmax,
                raise_delta=delta,
                vset_point=cols["avr_vset_pu"],
                band_point=cols["avr_band_pu"],
                delay_point=cols["avr_delay_s"],
                auto_point=cols["avr_auto"],
                raise_point=pt("trafo", idx, "tap_raise"),
                lower_point=pt("trafo", idx, "tap_lower"),
                tap_pos=tap,
                mechanism_s=cfg.avr_mechanism_s,
                vset_pu=cfg.avr_vset_pu,
                band_pu=cfg.avr_band_pu,
                delay_s=cfg.avr_delay_s,
                auto=cfg.avr_auto,
                **kw,
            )
        )

    inverters: list[Device] = []
    for idx, row in net.sgen.iterrows():
        p_pt, q_pt = pt("sgen", idx, "p_mw"), pt("sgen", idx, "q_mvar")
        avail_pt, lim_pt = pt("sgen", idx, "p_avail_mw"), pt("sgen", idx, "p_limit_pct")
        if p_pt is None or q_pt is None or (avail_pt is None and lim_pt is None):
            continue
        in_service = bool(row.get("in_service", True))
        scaling = _num(row.get("scaling", 1.0), 1.0)
        p0 = _num(row["p_mw"], 0.0) * scaling if in_service else 0.0
        q0 = _num(row["q_mvar"], 0.0) * scaling if in_service else 0.0
        sn = _num(row.get("sn_mva", math.nan), 0.0)
        if sn <= 0:
            sn = abs(_num(row["p_mw"], 0.0)) or 1.0
        vv_pt = pt("sgen", idx, "voltvar")
        init(p_pt, p0, keep_good=False)
        init(q_pt, q0, keep_good=False)
        init(avail_pt, p0, keep_good=True)
        init(lim_pt, cfg.der_p_limit_pct, keep_good=True)
        init(vv_pt, float(cfg.der_voltvar_on), keep_good=True)
        inverters.append(
            DERInverter(
                label(p_pt),
                store,
                p_point=p_pt,
                q_point=q_pt,
                sn_mva=sn,
                p_avail_point=avail_pt,
                p_limit_point=lim_pt,
                voltvar_point=vv_pt,
                voltage_point=pt("bus", row["bus"], "vm_pu"),
                p_mw=p0,
                q_mvar=q0,
                p_avail_mw=p0,
                p_limit_pct=cfg.der_p_limit_pct,
                voltvar_on=cfg.der_voltvar_on,
                curve=cfg.der_voltvar,
                ramp_pct_per_s=cfg.der_ramp_pct_per_s,
                q_tau_s=cfg.der_q_tau_s,
                trip_low_pu=cfg.der_trip_low_pu,
                trip_high_pu=cfg.der_trip_high_pu,
                trip_delay_s=cfg.der_trip_delay_s,
                reconnect_low_pu=cfg.der_reconnect_low_pu,
                reconnect_high_pu=cfg.der_reconnect_high_pu,
                reconnect_delay_s=cfg.der_reconnect_delay_s,
                fallback_p_limit_pct=cfg.der_fallback_p_limit_pct,
                **kw,
            )
        )

    rtu = RTUMeasurements("rtu", store, rng=rng, sigma=cfg.rtu_noise_sigma, **kw)
    rtu.attach()
    devices: list[Device] = [*breakers.values(), *relays, *avrs, *inverters, rtu]
    _log.info(
        "built %d breakers, %d relays, %d AVRs, %d inverters, 1 RTU",
        len(breakers),
        len(relays),
        len(avrs),
        len(inverters),
    )
    return devices
