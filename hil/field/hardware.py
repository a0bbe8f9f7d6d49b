"""The field of a run against real hardware described by a ``hardware.toml``."""

from __future__ import annotations

import logging
from typing import Any

from hil.field.emulated import EmulatedField, _send
from twin.labels import label_index

_log = logging.getLogger(__name__)


class HardwareField(EmulatedField):
    """Real hardware from a ``hardware.toml``: links opened by ``hil.hardware``, wall clock.

    The devices run on their own (wall) clock, so the simulated clock only stamps the steps;
    use ``pace = "realtime"``. Actions on emulated devices (comms loss of one device, measurement
    bias, device restart, field_value checks) are not available here.
    """

    emulated = False

    def __init__(self, *, hardware: Any, pointmap: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hardware = hardware
        if pointmap is not None:  # the map the scenario was validated against
            self.pointmap = pointmap
        elif hardware.pointmap is not None:
            from twin.pointmap import load_pointmap

            self.pointmap = load_pointmap(hardware.pointmap)
        from twin.pointmap import assert_pointmap

        assert_pointmap(self.pointmap, self.net)
        self._scanned = []

    @property
    def description(self) -> str:
        return f"hardware {self.hardware.source}"

    async def start(self) -> None:
        from hil.hardware import open_links
        from hil.security.audit import AuditLog

        # no protocol server of ours but the twin's: its (refused) write attempts
        self._audit = AuditLog()
        self.links = await open_links(self.hardware, self.pointmap)
        self.sync = self._make_sync(stale_policy=self.hardware.stale_policy)
        await self._start_twin_server()

    async def stop(self) -> None:
        if self.twin_server is not None:
            try:
                await self.twin_server.stop()
            except Exception:  # stopping must go on
                _log.exception("stopping the twin's OPC UA server failed")
        for link in self.links:
            try:
                await link.close()
            except Exception:  # closing must go on for the others
                _log.exception("closing link %s failed", link)
        self._one_time.close()

    def _link_key(self, link: Any) -> str:
        return str(link.name)  # configured endpoints: stable across runs

    def advance_devices(self, t: float) -> None:
        return None  # real devices keep their own time

    async def _write_outputs(
        self, values: dict[str, float], *, plant: bool, force: bool = False
    ) -> None:
        for link in self.links:
            ok = {n: v for n, v in values.items() if link.can_write(n)}
            if ok and link.connected:
                await _send(link, ok, force)

    def command(self, name: str, value: float) -> None:
        self._commanded[name.rsplit(".", 1)[0]] = self.clock.t
        link = self._link_for(name)
        if link is None:
            raise RuntimeError(f"no link of {self.hardware.source} writes {name!r}")

        async def send() -> None:
            await link.write_point(name, value)

        self.defer(send)

    def read_point(self, name: str) -> float | None:
        s = self.sync.samples.get(name) if self.sync is not None else None
        return s.value if s is not None and s.quality.is_good else None

    def _emulator_only(self, what: str) -> None:
        raise RuntimeError(
            f"{what} acts on the emulated substation; not available against "
            f"real hardware ({self.hardware.source})"
        )

    def comms_loss(self, target: str) -> None:
        link = next((lk for lk in self.links if target in (lk.name, lk.protocol)), None)
        if link is None:
            self._emulator_only(f"comms_loss of device {target!r}")
        super().comms_loss(target)

    def comms_restore(self, target: str) -> None:
        link = next((lk for lk in self.links if target in (lk.name, lk.protocol)), None)
        if link is None:
            self._emulator_only(f"comms_restore of device {target!r}")
        super().comms_restore(target)

    def device_restart(self, name: str) -> None:
        self._emulator_only("device_restart")

    def meas_error(self, point: str, **kwargs: Any) -> None:
        self._emulator_only("meas_noise/meas_bias")

    def freeze_point(self, point: str, frozen: bool) -> None:
        self._emulator_only("meas_frozen")

    def der_trip(self, label: str, tripped: bool) -> None:
        self.command(f"{label}.p_limit_pct", 0.0 if tripped else 100.0)

    def tap_operate(self, label: str, delta: int) -> bool:
        """A SCADA raise/lower: one pulse (1) on ``<label>.tap_raise`` or ``<label>.tap_lower``
        per step of ``delta``. False: the point map has no such command point."""
        name = f"{label}.tap_raise" if delta > 0 else f"{label}.tap_lower"
        if self._link_for(name) is None:
            return False
        for _ in range(abs(int(delta))):
            self.command(name, 1.0)
        return True

    def start_fault(self, line_label: str, current_ka: float, t: float) -> None:
        self.faults[line_label] = {
            "current_ka": float(current_ka),
            "t": t,
            "relay": None,
            "trips": 0,
        }

        async def inject() -> None:
            await self._write_outputs({f"{line_label}.i_ka": float(current_ka)}, plant=True)

        self.defer(inject)

    def _note_faults(self, t: float) -> None:
        # No relay object to ask: the fault is over when the twin sees the line's breaker open.
        for name, f in self.faults.items():
            if f.get("cleared"):
                continue
            net = self.model.net
            i = label_index(net, "line").get(name)
            if i is None:
                continue
            sw = net.switch[(net.switch.et == "l") & (net.switch.element == i)]
            if len(sw) and not bool(sw["closed"].all()):
                f["cleared"] = True
                if self.recorder is not None:
                    self.recorder.event(
                        t,
                        "fault_cleared",
                        f"fault on {name} cleared: the line's breaker is open",
                        line=name,
                    )
