"""The field of a run without hardware: the engine's model is solved in-process, nothing else."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

from hil.field.base import SimClock, StepOutcome
from twin.errors import LoadflowNotConverged


class LocalField:
    """No hardware: the engine's model is solved in-process and nothing else runs.

    Actions on field devices raise ``RuntimeError`` (``scenarios.validate`` refuses them before
    a run; the engine logs one that slips through as an event error).
    """

    has_hardware = False
    emulated = False
    description = "none (model only)"
    pointmap: Any = None
    plant_model: Any = None
    #: no protocol server, no write from outside: nothing to audit
    audit: Any = None

    def __init__(self, model: Any, recorder: Any = None, clock: SimClock | None = None) -> None:
        self.model = model
        self.recorder = recorder
        self.clock = clock
        self._deferred: list[Callable[[], Awaitable[None]]] = []

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def defer(self, fn: Callable[[], Awaitable[None]]) -> None:
        self._deferred.append(fn)

    async def step(self, t: float) -> StepOutcome:
        todo, self._deferred = self._deferred, []
        for fn in todo:
            await fn()
        try:
            sol = self.model.solve()
        except LoadflowNotConverged as exc:
            if self.recorder is not None:
                self.recorder.event(t, "not_converged", str(exc))
            return StepOutcome(False, None, error=str(exc))
        return StepOutcome(bool(getattr(sol, "converged", True)), sol)

    def stats(self) -> dict[str, Any]:
        return {}

    def links_used(self) -> list[str]:
        return []

    def link_quality(self) -> dict[str, float]:
        return {}

    def endpoints(self) -> dict[str, str]:
        return {}

    def active_alarms(self) -> int:
        return 0

    def setpoint_values(self) -> dict[str, float]:
        return {}

    def offer_output(self, name: str, value: float) -> None:
        return None  # no device to tell

    # --- field-only actions ---------------------------------------------------------------------
    @staticmethod
    def _needs_hardware(name: str) -> NoReturn:
        raise RuntimeError(
            f'{name} acts on field devices: expected hardware = "emulated" or a hardware file, '
            'found hardware = "none"'
        )

    def command(self, name: str, value: float) -> None:
        self._needs_hardware("command")

    def read_point(self, name: str) -> float | None:
        self._needs_hardware("read_point")

    def write_setpoint(self, name: str, value: float) -> None:
        self._needs_hardware("setpoint")

    def comms_loss(self, target: str) -> None:
        self._needs_hardware("comms_loss")

    def comms_restore(self, target: str) -> None:
        self._needs_hardware("comms_restore")

    def device_restart(self, name: str) -> None:
        self._needs_hardware("device_restart")

    def meas_error(self, point: str, **error: float | None) -> None:
        self._needs_hardware("meas_noise/meas_bias")

    def freeze_point(self, point: str, frozen: bool) -> None:
        self._needs_hardware("meas_frozen")

    def der_trip(self, label: str, tripped: bool) -> None:
        self._needs_hardware("der_trip at the inverter")

    def tap_operate(self, label: str, delta: int) -> bool:
        self._needs_hardware("tap_change at the tap changer")

    def start_fault(self, line_label: str, current_ka: float, t: float) -> None:
        self._needs_hardware("fault at a field relay")

    def clear_fault(self, line_label: str) -> None:
        self._needs_hardware("fault at a field relay")
