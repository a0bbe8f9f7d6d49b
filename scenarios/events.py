"""The event library: what each ``[[event]]`` kind does to the running twin.

Each handler takes the runtime (``scenarios.engine.TwinRuntime``), the event spec and returns an
optional *undo* callable; the engine calls it after the event's ``duration`` (an outage returns,
a bias is removed, a loss of communication is restored). Handlers act through the runtime's
methods, which go through the field (the emulated or real hardware) when there is one and straight
to the model when there is not.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from scenarios.config import EventSpec

if TYPE_CHECKING:
    from scenarios.engine import TwinRuntime

_log = logging.getLogger(__name__)

Undo = Callable[[], None] | None
Handler = Callable[["TwinRuntime", EventSpec], Undo]


def _targets(rt: TwinRuntime, spec: EventSpec, table: str) -> list[int]:
    from scenarios.profiles import select_elements

    elements = list(spec.param("elements", ()) or ())
    if spec.param("element"):
        elements.append(spec.param("element"))
    return select_elements(rt.net, table, elements=elements, match=spec.param("match"))


def switch_open(rt: TwinRuntime, spec: EventSpec) -> Undo:
    label = spec.param("element")
    rt.command_switch(label, False, why=spec.title)
    return lambda: rt.command_switch(label, True, why=f"{spec.title} ends")


def switch_close(rt: TwinRuntime, spec: EventSpec) -> Undo:
    label = spec.param("element")
    rt.command_switch(label, True, why=spec.title)
    return lambda: rt.command_switch(label, False, why=f"{spec.title} ends")


def _power_step(rt: TwinRuntime, spec: EventSpec, table: str) -> Undo:
    idx = _targets(rt, spec, table)
    before = rt.net[table].loc[idx, "p_mw"].to_numpy(dtype=float).copy()
    factor = spec.param("factor")
    delta = spec.param("delta_mw")
    # Steps stack on top of the profile: kept as a separate multiplier/offset the engine applies.
    for i in idx:
        if factor is not None:
            rt.power_factor[(table, i)] = rt.power_factor.get((table, i), 1.0) * float(factor)
        if delta is not None:
            rt.power_offset[(table, i)] = rt.power_offset.get((table, i), 0.0) + float(delta) / len(
                idx
            )
    rt.apply_profiles()
    after = rt.net[table].loc[idx, "p_mw"].to_numpy(dtype=float)
    rt.log(
        spec.kind,
        f"{spec.title}: {table} P {before.sum():.3f} -> {after.sum():.3f} MW",
        elements=len(idx),
    )

    def undo() -> None:
        for i in idx:
            if factor is not None:
                rt.power_factor[(table, i)] /= float(factor)
            if delta is not None:
                rt.power_offset[(table, i)] -= float(delta) / len(idx)
        rt.apply_profiles()
        rt.log(spec.kind, f"{spec.title} ends", elements=len(idx))

    return undo


def load_step(rt: TwinRuntime, spec: EventSpec) -> Undo:
    return _power_step(rt, spec, "load")


def gen_step(rt: TwinRuntime, spec: EventSpec) -> Undo:
    return _power_step(rt, spec, "sgen")


def _outage(rt: TwinRuntime, spec: EventSpec, table: str, in_service: bool) -> Undo:
    label = spec.param("element")
    rt.set_in_service(table, label, in_service, why=spec.title)
    return lambda: rt.set_in_service(table, label, not in_service, why=f"{spec.title} ends")


def line_outage(rt: TwinRuntime, spec: EventSpec) -> Undo:
    return _outage(rt, spec, "line", False)


def line_return(rt: TwinRuntime, spec: EventSpec) -> Undo:
    return _outage(rt, spec, "line", True)


def trafo_outage(rt: TwinRuntime, spec: EventSpec) -> Undo:
    return _outage(rt, spec, "trafo", False)


def trafo_return(rt: TwinRuntime, spec: EventSpec) -> Undo:
    return _outage(rt, spec, "trafo", True)


def fault(rt: TwinRuntime, spec: EventSpec) -> Undo:
    rt.start_fault(
        spec.param("element"),
        float(spec.param("current_ka", 5.0)),
        pickup_ka=spec.param("relay_pickup_ka"),
        delay_s=spec.param("relay_delay_s"),
        why=spec.title,
    )
    return lambda: rt.clear_fault(spec.param("element"), why=f"{spec.title} ends")


def der_trip(rt: TwinRuntime, spec: EventSpec) -> Undo:
    idx = _targets(rt, spec, "sgen")
    rt.set_in_service_idx("sgen", idx, False, why=spec.title)
    return lambda: rt.set_in_service_idx("sgen", idx, True, why=f"{spec.title} ends")


def der_reconnect(rt: TwinRuntime, spec: EventSpec) -> Undo:
    idx = _targets(rt, spec, "sgen")
    rt.set_in_service_idx("sgen", idx, True, why=spec.title)
    return lambda: rt.set_in_service_idx("sgen", idx, False, why=f"{spec.title} ends")


def tap_change(rt: TwinRuntime, spec: EventSpec) -> Undo:
    label = spec.param("element")
    i = rt.index("trafo", label)
    before = int(rt.net.trafo.at[i, "tap_pos"])
    pos = spec.param("tap_pos")
    new = int(pos) if pos is not None else before + int(spec.param("delta"))
    rt.set_tap(label, new, why=spec.title)
    return lambda: rt.set_tap(label, before, why=f"{spec.title} ends")


def setpoint(rt: TwinRuntime, spec: EventSpec) -> Undo:
    point = spec.param("point")
    before = rt.field.read_point(point)
    rt.field.write_setpoint(point, float(spec.param("value")))
    rt.log("setpoint", f"{spec.title}: {point} = {spec.param('value')}", point=point)
    if before is None:
        return None
    return lambda: rt.field.write_setpoint(point, before)


def comms_loss(rt: TwinRuntime, spec: EventSpec) -> Undo:
    target = spec.param("target")
    rt.field.comms_loss(target)
    rt.log("comms_loss", f"{spec.title}: communication to {target} lost", target=target)

    def undo() -> None:
        rt.field.comms_restore(target)
        rt.log(
            "comms_restore", f"{spec.title} ends: communication to {target} restored", target=target
        )

    return undo


def comms_restore(rt: TwinRuntime, spec: EventSpec) -> Undo:
    target = spec.param("target")
    rt.field.comms_restore(target)
    rt.log("comms_restore", f"{spec.title}: communication to {target} restored", target=target)
    return None


def device_restart(rt: TwinRuntime, spec: EventSpec) -> Undo:
    device = spec.param("device")
    rt.field.device_restart(device)
    rt.log("device_restart", f"{spec.title}: {device} restarted", device=device)
    return None


def meas_noise(rt: TwinRuntime, spec: EventSpec) -> Undo:
    point = spec.param("point")
    rt.field.meas_error(point, sigma=float(spec.param("sigma")))
    rt.log("meas_noise", f"{spec.title}: noise sigma {spec.param('sigma')} on {point}", point=point)
    return lambda: rt.field.meas_error(point, sigma=0.0)


def meas_bias(rt: TwinRuntime, spec: EventSpec) -> Undo:
    point = spec.param("point")
    offset = float(spec.param("offset", 0.0))
    rt.field.meas_error(point, offset=offset)
    rt.log("meas_bias", f"{spec.title}: bias {offset:+g} on {point}", point=point)
    return lambda: rt.field.meas_error(point, offset=0.0)


def meas_frozen(rt: TwinRuntime, spec: EventSpec) -> Undo:
    point = spec.param("point")
    rt.field.freeze_point(point, True)
    rt.log("meas_frozen", f"{spec.title}: {point} frozen (value and timestamp)", point=point)
    return lambda: rt.field.freeze_point(point, False)


def load_function(ref: str) -> Callable[..., Generator[Any, Any, Any]]:
    """Import ``"package.module:function"``."""
    modname, _, fname = ref.partition(":")
    mod = importlib.import_module(modname)
    return getattr(mod, fname)


def process(rt: TwinRuntime, spec: EventSpec) -> Undo:
    fn = load_function(spec.param("function"))
    gen = fn(rt.env, rt)
    rt.log("process", f"{spec.title}: started {spec.param('function')}")
    if gen is not None and hasattr(gen, "send"):
        rt.env.process(_guarded_process(rt, spec, gen))
    return None


def _guarded_process(rt: TwinRuntime, spec: EventSpec, gen: Generator[Any, Any, Any]) -> Any:
    """A user process whose failure is logged as an ``event_error``; the run goes on (SimPy
    would otherwise end the whole run, and re-raise our attributed errors as a TypeError)."""
    try:
        return (yield from gen)
    except Exception as exc:  # the user's code: any failure is that process's
        rt.log(
            "event_error",
            f"{spec.title}: process {spec.param('function')} failed: {type(exc).__name__}: {exc}",
            event=spec.kind,
            error=type(exc).__name__,
        )
        return None


HANDLERS: dict[str, Handler] = {
    "switch_open": switch_open,
    "switch_close": switch_close,
    "load_step": load_step,
    "gen_step": gen_step,
    "line_outage": line_outage,
    "line_return": line_return,
    "trafo_outage": trafo_outage,
    "trafo_return": trafo_return,
    "fault": fault,
    "der_trip": der_trip,
    "der_reconnect": der_reconnect,
    "tap_change": tap_change,
    "setpoint": setpoint,
    "comms_loss": comms_loss,
    "comms_restore": comms_restore,
    "device_restart": device_restart,
    "meas_noise": meas_noise,
    "meas_bias": meas_bias,
    "meas_frozen": meas_frozen,
    "process": process,
}
