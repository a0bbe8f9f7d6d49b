"""Device behaviours of the emulated substation on a simulated clock (plain floats, no sockets)."""

from __future__ import annotations

import math

import numpy as np
import pandapower as pp
import pytest

from hil.emulator.devices import (
    IEEE1547_CAT_B,
    Breaker,
    DERInverter,
    DeviceClockError,
    DeviceConfigError,
    DeviceSettings,
    OvercurrentRelay,
    RTUMeasurements,
    TapChangerAVR,
    VoltVarCurve,
    build_devices,
    tap_delta_raising_voltage,
)
from hil.store import PointStore
from twin.pointmap import Point, PointMap
from twin.quality import Quality

KIND_DIR = {
    "status": "to_twin",
    "command": "to_field",
    "setpoint": "to_field",
    "measurement": "to_field",
}


def _pt(name: str, kind: str, unit: str = "", *, table: str = "x", element: int | str = 0):
    column = name.rsplit(".", 1)[1]
    return Point(name, table, column, element, KIND_DIR[kind], kind, unit)  # type: ignore[arg-type]


def _store(*points: Point) -> PointStore:
    return PointStore(PointMap(tuple(points)))


def _run(device, times) -> None:
    for t in times:
        device.step(t)


# --- breaker ---------------------------------------------------------------------------------
@pytest.fixture
def brk_store() -> PointStore:
    return _store(
        _pt("CB.closed", "status"), _pt("CB.cmd", "command"), _pt("CB.operations", "measurement")
    )


def _breaker(store: PointStore, closed: bool) -> Breaker:
    store.set("CB.closed", float(closed))
    store.set("CB.cmd", float(closed))
    return Breaker(
        "CB",
        store,
        closed_point="CB.closed",
        cmd_point="CB.cmd",
        operations_point="CB.operations",
        open_time_s=0.06,
        close_time_s=0.10,
    )


def test_breaker_closes_after_operate_time_and_counts(brk_store):
    brk = _breaker(brk_store, closed=False)
    brk.step(0.0)
    assert brk_store.value("CB.closed") == 0.0  # the initial cmd is not a command
    brk_store.write("CB.cmd", 1, role="operator")
    _run(brk, [1.0, 1.05, 1.099])
    assert brk_store.value("CB.closed") == 0.0 and brk.pending is not None
    brk.step(1.1)
    assert brk_store.value("CB.closed") == 1.0
    assert brk_store.value("CB.operations") == 1.0
    brk_store.write("CB.cmd", 0, role="operator")
    _run(brk, [2.0, 2.059])
    assert brk_store.value("CB.closed") == 1.0
    brk.step(2.06)
    assert brk_store.value("CB.closed") == 0.0
    assert brk_store.value("CB.operations") == 2.0
    assert [e.value for e in brk.events] == [1.0, 0.0]


def test_breaker_next_due_is_the_unscanned_command_then_the_operation(brk_store):
    brk = _breaker(brk_store, closed=False)
    brk.step(0.0)
    assert brk.next_due(0.0) is None
    brk_store.write("CB.cmd", 1, role="operator")
    assert brk.next_due(0.5) == 0.5  # a command to scan: due now
    brk.step(0.5)
    assert brk.next_due(0.5) == pytest.approx(0.6)  # close time 0.1 s
    brk.step(brk.next_due(0.5))
    assert brk.closed and brk.next_due(0.6) is None
    brk.trip(1.0, "test")
    assert brk.next_due(1.0) == pytest.approx(1.06)


def test_breaker_elapsed_time_not_call_count(brk_store):
    brk = _breaker(brk_store, closed=False)
    brk_store.write("CB.cmd", 1, role="operator")
    brk.step(0.0)
    brk.step(5.0)  # one coarse step well past the operate time
    assert brk_store.value("CB.closed") == 1.0 and brk.operations == 1


def test_breaker_command_in_same_state_is_noop(brk_store):
    brk = _breaker(brk_store, closed=True)
    brk_store.write("CB.cmd", 1, role="operator")
    _run(brk, [0.0, 1.0])
    assert brk.pending is None and brk.operations == 0
    assert brk_store.value("CB.closed") == 1.0


def test_breaker_pending_command_superseded(brk_store):
    brk = _breaker(brk_store, closed=False)
    brk_store.write("CB.cmd", 1, role="operator")
    brk.step(0.0)
    brk_store.write("CB.cmd", 1, role="operator")  # same command again keeps the first timer
    brk.step(0.05)
    brk.step(0.1)
    assert brk.closed and brk.operations == 1
    brk_store.write("CB.cmd", 0, role="operator")
    brk.step(1.0)
    brk_store.write("CB.cmd", 1, role="operator")  # back to the current state: cancels the open
    _run(brk, [1.03, 1.5, 3.0])
    assert brk.closed and brk.pending is None and brk.operations == 1
    assert brk_store.value("CB.closed") == 1.0


def test_breaker_trip_lockout_and_operator_close(brk_store):
    brk = _breaker(brk_store, closed=True)
    brk.step(0.0)
    brk.trip(1.0, "relay L1")
    brk.step(1.0)
    assert brk.closed  # operate time not elapsed
    brk_store.write("CB.cmd", 1, role="operator")  # a close during the trip is refused
    brk.step(1.06)
    assert not brk.closed and brk.locked_out
    assert brk.events[-1].cause == "relay L1"
    brk.step(2.0)
    assert not brk.closed  # cmd still reads 1 but no new write: no reclose
    brk_store.write("CB.cmd", 1, role="operator")  # the operator closes again
    brk.step(3.0)
    brk.step(3.1)
    assert brk.closed and not brk.locked_out and brk.operations == 2


def test_breaker_trip_supersedes_pending_close(brk_store):
    brk = _breaker(brk_store, closed=False)
    brk_store.write("CB.cmd", 1, role="operator")
    brk.step(0.0)
    brk.trip(0.05, "relay")
    _run(brk, [0.2, 1.0])
    assert not brk.closed and brk.operations == 0 and brk.locked_out


def test_step_backwards_in_time_raises(brk_store):
    brk = _breaker(brk_store, closed=True)
    brk.step(2.0)
    with pytest.raises(DeviceClockError, match="expected now >= 2.0"):
        brk.step(1.0)


# --- tap changer + AVR -----------------------------------------------------------------------
def _two_bus_net(tap_side: str = "hv", step: float = 2.5) -> pp.pandapowerNet:
    net = pp.create_empty_network()
    b0 = pp.create_bus(net, 20.0)
    b1 = pp.create_bus(net, 0.4)
    pp.create_ext_grid(net, b0)
    pp.create_transformer(net, b0, b1, "0.4 MVA 20/0.4 kV")
    net.trafo["tap_side"] = tap_side
    net.trafo["tap_step_percent"] = step
    pp.create_load(net, b1, 0.2, 0.05)
    return net


@pytest.mark.parametrize(("side", "step"), [("hv", 2.5), ("lv", 2.5), ("hv", -2.5), ("lv", -1.5)])
def test_tap_direction_matches_pandapower(side, step):
    net = _two_bus_net(side, step)
    vm = {}
    for tap in (0, 1):
        net.trafo.at[0, "tap_pos"] = tap
        pp.runpp(net, lightsim2grid=False)
        vm[tap] = float(net.res_bus.vm_pu.at[1])
    measured = 1 if vm[1] > vm[0] else -1
    assert abs(vm[1] - vm[0]) > 1e-3
    assert tap_delta_raising_voltage(net.trafo.loc[0]) == measured
    # regulating the HV bus flips it
    assert tap_delta_raising_voltage(net.trafo.loc[0], regulated_bus=0) == -measured


def test_tap_direction_rejects_missing_step():
    net = _two_bus_net("hv", 0.0)
    with pytest.raises(DeviceConfigError, match="tap_step_percent"):
        tap_delta_raising_voltage(net.trafo.loc[0])


def _avr_points() -> list:
    return [
        _pt("T.tap_pos", "status"),
        _pt("B.vm_pu", "measurement", "pu"),
        _pt("T.avr_vset_pu", "setpoint", "pu"),
        _pt("T.avr_band_pu", "setpoint", "pu"),
        _pt("T.avr_delay_s", "setpoint", "s"),
        _pt("T.avr_auto", "setpoint"),
    ]


@pytest.fixture
def avr_store() -> PointStore:
    return _store(*_avr_points())


def _avr(store: PointStore, *, tap: int = 0, tap_max: int = 2, raise_delta: int = -1):
    store.set("T.avr_vset_pu", 1.0)
    store.set("T.avr_band_pu", 0.015)
    store.set("T.avr_delay_s", 30.0)
    store.set("T.avr_auto", 1)
    return TapChangerAVR(
        "T",
        store,
        tap_point="T.tap_pos",
        voltage_point="B.vm_pu",
        tap_min=-2,
        tap_max=tap_max,
        raise_delta=raise_delta,
        vset_point="T.avr_vset_pu",
        band_point="T.avr_band_pu",
        delay_point="T.avr_delay_s",
        auto_point="T.avr_auto",
        tap_pos=tap,
        mechanism_s=5.0,
    )


def test_avr_steps_after_delay_and_mechanism(avr_store):
    avr = _avr(avr_store)
    avr_store.set("B.vm_pu", 0.95)  # low: must raise the voltage -> tap -1 on an HV tap
    _run(avr, [0.0, 10.0, 29.9])
    assert avr.moving_to is None and avr_store.value("T.tap_pos") == 0
    avr.step(30.0)
    assert avr.moving_to == -1 and avr_store.value("T.tap_pos") == 0
    avr.step(34.9)
    assert avr_store.value("T.tap_pos") == 0
    avr.step(35.0)
    assert avr_store.value("T.tap_pos") == -1 and avr.moving_to is None
    # the voltage in the store predates the new tap: no timer until a new one is measured
    _run(avr, [40.0, 100.0])
    assert avr.moving_to is None and avr.next_due(100.0) is None
    # still low, measured at 100 s: the timer runs from there, next step after another 30 s
    avr_store.set("B.vm_pu", 0.95)
    _run(avr, [100.0, 129.9])
    assert avr.moving_to is None and avr.next_due(129.9) == pytest.approx(130.0)
    avr.step(130.0)
    assert avr.moving_to == -2 and avr.next_due(130.0) == pytest.approx(135.0)
    # high voltage, measured after the move completed at 135 s, steps the other way
    avr.step(135.0)
    avr_store.set("B.vm_pu", 1.03)
    _run(avr, [135.0, 136.0, 164.9])
    assert avr.tap_pos == -2 and avr.moving_to is None
    avr.step(165.0)
    assert avr.moving_to == -1


def test_avr_timer_resets_in_band(avr_store):
    avr = _avr(avr_store)
    avr_store.set("B.vm_pu", 0.95)
    _run(avr, [0.0, 20.0])
    avr_store.set("B.vm_pu", 0.99)  # back in band (1.0 +- 0.015)
    avr.step(21.0)
    avr_store.set("B.vm_pu", 0.95)
    _run(avr, [25.0, 54.9])
    assert avr.moving_to is None
    avr.step(55.0)
    assert avr.moving_to == -1


def test_avr_timer_restarts_when_side_changes(avr_store):
    avr = _avr(avr_store)
    avr_store.set("B.vm_pu", 0.95)
    _run(avr, [0.0, 20.0])
    avr_store.set("B.vm_pu", 1.05)
    _run(avr, [21.0, 40.0])
    assert avr.moving_to is None
    avr.step(51.0)
    assert avr.moving_to == 1


def test_avr_respects_tap_limits(avr_store):
    avr = _avr(avr_store, tap=2, tap_max=2, raise_delta=-1)
    avr_store.set("B.vm_pu", 1.05)  # high: wants tap +1, but 2 is the maximum
    _run(avr, [0.0, 30.0, 60.0, 1000.0])
    assert avr.tap_pos == 2 and avr.moving_to is None
    assert avr_store.value("T.tap_pos") == 2


def test_avr_manual_mode_and_manual_operate(avr_store):
    avr = _avr(avr_store)
    avr_store.write("T.avr_auto", 0, role="operator")
    avr_store.set("B.vm_pu", 0.9)
    _run(avr, [0.0, 100.0])
    assert avr.moving_to is None and avr.tap_pos == 0
    assert avr.operate(100.0, +1)
    avr.step(105.0)
    assert avr.tap_pos == 1
    avr_store.write("T.avr_auto", 1, role="operator")
    assert not avr.operate(106.0, +1)  # no manual steps in auto


def test_avr_takes_scada_raise_and_lower_pulses():
    """``tap_raise``/``tap_lower`` = 1: one manual step, the command resets to 0; refused in
    auto mode (reset all the same, so the next pulse is a new command)."""
    store = _store(*_avr_points(), _pt("T.tap_raise", "command"), _pt("T.tap_lower", "command"))
    store.set("T.avr_auto", 0)
    store.set("B.vm_pu", 1.0)
    avr = TapChangerAVR(
        "T",
        store,
        tap_point="T.tap_pos",
        voltage_point="B.vm_pu",
        tap_min=-2,
        tap_max=2,
        raise_delta=-1,
        auto_point="T.avr_auto",
        raise_point="T.tap_raise",
        lower_point="T.tap_lower",
        tap_pos=0,
        mechanism_s=5.0,
    )
    avr.step(0.0)
    store.write("T.tap_raise", 1, role="operator")
    avr.step(1.0)
    assert avr.moving_to == 1 and store.value("T.tap_raise") == 0.0
    avr.step(6.0)
    assert store.value("T.tap_pos") == 1
    store.write("T.tap_lower", 1, role="operator")
    _run(avr, [7.0, 12.0])
    assert store.value("T.tap_pos") == 0 and store.value("T.tap_lower") == 0.0
    store.write("T.avr_auto", 1, role="operator")
    store.write("T.tap_lower", 1, role="operator")
    _run(avr, [13.0, 20.0])
    assert store.value("T.tap_pos") == 0 and store.value("T.tap_lower") == 0.0


def test_avr_bad_voltage_resets_timer(avr_store):
    avr = _avr(avr_store)
    avr_store.set("B.vm_pu", 0.95)
    avr.step(0.0)
    avr_store.set("B.vm_pu", 0.95, quality=Quality.INVALID)
    avr.step(10.0)
    avr_store.set("B.vm_pu", 0.95)
    _run(avr, [11.0, 40.0])
    assert avr.moving_to is None
    avr.step(41.0)
    assert avr.moving_to == -1


def test_avr_watchdog_goes_manual_and_back(avr_store):
    avr = _avr(avr_store)
    avr.comms_timeout_s = 10.0
    avr_store.set("B.vm_pu", 0.95)
    avr.step(0.0)
    avr.comms_lost(5.0)
    _run(avr, [14.9])
    assert not avr.fallback_active
    _run(avr, [15.0, 100.0])
    assert avr.fallback_active and avr.moving_to is None
    assert avr_store.value("T.avr_auto") == 1  # the point keeps the client's value
    avr.comms_restored(100.0)
    _run(avr, [101.0, 131.0])
    assert avr.moving_to == -1


def test_avr_closed_loop_with_pandapower():
    """The AVR on a real 2-bus net brings a low LV voltage into band, then stops."""
    net = _two_bus_net("hv", 2.5)
    net.load.at[0, "p_mw"] = 0.35
    store = _store(
        _pt("trafo0.tap_pos", "status", table="trafo"),
        _pt("bus1.vm_pu", "measurement", "pu", table="bus", element=1),
        _pt("trafo0.avr_auto", "setpoint", table="trafo"),
    )
    avr = TapChangerAVR(
        "trafo0",
        store,
        tap_point="trafo0.tap_pos",
        voltage_point="bus1.vm_pu",
        tap_min=int(net.trafo.tap_min.at[0]),
        tap_max=int(net.trafo.tap_max.at[0]),
        raise_delta=tap_delta_raising_voltage(net.trafo.loc[0]),
        auto_point="trafo0.avr_auto",
        tap_pos=0,
        vset_pu=1.0,
        band_pu=0.015,
        delay_s=30.0,
        mechanism_s=5.0,
    )
    first = None
    for k in range(41):  # 400 s in 10 s steps
        net.trafo.at[0, "tap_pos"] = store.value("trafo0.tap_pos")
        pp.runpp(net, lightsim2grid=False)
        vm = float(net.res_bus.vm_pu.at[1])
        first = vm if first is None else first
        store.set("bus1.vm_pu", vm)
        avr.step(10.0 * k)
    assert first < 0.985
    assert abs(vm - 1.0) <= 0.015
    assert avr.tap_pos < 0


# --- overcurrent relay -----------------------------------------------------------------------
@pytest.fixture
def relay_setup():
    store = _store(
        _pt("CB.closed", "status"),
        _pt("CB.cmd", "command"),
        _pt("L.i_ka", "measurement", "kA"),
        _pt("L.oc_pickup_ka", "setpoint", "kA"),
        _pt("L.oc_delay_s", "setpoint", "s"),
    )
    brk = _breaker_plain(store)
    store.set("L.oc_pickup_ka", 1.0)
    store.set("L.oc_delay_s", 0.5)
    relay = OvercurrentRelay(
        "L",
        store,
        current_point="L.i_ka",
        breaker=brk,
        pickup_point="L.oc_pickup_ka",
        delay_point="L.oc_delay_s",
    )
    return store, brk, relay


def _breaker_plain(store: PointStore) -> Breaker:
    store.set("CB.closed", 1)
    store.set("CB.cmd", 1)
    return Breaker("CB", store, closed_point="CB.closed", cmd_point="CB.cmd")


def _step_both(relay, brk, times) -> None:
    for t in times:
        relay.step(t)
        brk.step(t)


def test_relay_trips_after_delay_not_before(relay_setup):
    store, brk, relay = relay_setup
    store.set("L.i_ka", 0.5)
    _step_both(relay, brk, [0.0, 1.0])
    store.set("L.i_ka", 1.3)
    _step_both(relay, brk, [2.0, 2.2, 2.499])
    assert relay.trips == [] and brk.closed
    _step_both(relay, brk, [2.5])
    assert len(relay.trips) == 1
    assert relay.trips[0].time == 2.5 and relay.trips[0].value == pytest.approx(1.3)
    _step_both(relay, brk, [2.56])
    assert not brk.closed and store.value("CB.closed") == 0.0 and brk.locked_out
    _step_both(relay, brk, [3.0, 4.0])  # current still high (no plant update): no second trip
    assert len(relay.trips) == 1


def test_relay_next_due_is_pickup_plus_delay(relay_setup):
    store, brk, relay = relay_setup
    store.set("L.i_ka", 0.5)
    _step_both(relay, brk, [0.0])
    assert relay.next_due(0.0) is None
    store.set("L.i_ka", 1.3)
    _step_both(relay, brk, [10.0])
    assert relay.next_due(10.0) == pytest.approx(10.5)
    _step_both(relay, brk, [relay.next_due(10.0)])
    assert len(relay.trips) == 1 and relay.next_due(10.5) is None  # latched
    assert brk.next_due(10.5) == pytest.approx(10.56)


def test_relay_resets_below_pickup_with_dropout(relay_setup):
    store, brk, relay = relay_setup
    store.set("L.i_ka", 1.2)
    _step_both(relay, brk, [0.0, 0.3])
    store.set("L.i_ka", 0.96)  # above the dropout (0.95): stays picked up
    _step_both(relay, brk, [0.4])
    assert relay.picked_up_since == 0.0
    store.set("L.i_ka", 0.9)  # below the dropout: resets
    _step_both(relay, brk, [0.45])
    assert relay.picked_up_since is None
    store.set("L.i_ka", 1.2)
    _step_both(relay, brk, [0.6, 1.0, 1.099])
    assert relay.trips == [] and brk.closed
    _step_both(relay, brk, [1.1, 1.2])
    assert len(relay.trips) == 1 and not brk.closed


def test_relay_settings_follow_setpoints(relay_setup):
    store, brk, relay = relay_setup
    store.write("L.oc_pickup_ka", 2.0, role="operator")
    store.set("L.i_ka", 1.5)
    _step_both(relay, brk, [0.0, 10.0])
    assert relay.trips == []
    store.write("L.oc_delay_s", 0.1, role="operator")
    store.set("L.i_ka", 2.5)
    _step_both(relay, brk, [11.0, 11.1, 11.2])
    assert relay.trips[0].time == 11.1 and not brk.closed


def test_relay_ignores_invalid_current(relay_setup):
    store, brk, relay = relay_setup
    store.set("L.i_ka", 5.0, quality=Quality.INVALID)
    _step_both(relay, brk, [0.0, 10.0])
    assert relay.trips == [] and brk.closed


# --- DER inverter ----------------------------------------------------------------------------
@pytest.fixture
def der_store() -> PointStore:
    return _store(
        _pt("PV.p_mw", "status", "MW"),
        _pt("PV.q_mvar", "status", "Mvar"),
        _pt("PV.p_avail_mw", "measurement", "MW"),
        _pt("PV.p_limit_pct", "setpoint", "%"),
        _pt("PV.voltvar", "setpoint"),
        _pt("B.vm_pu", "measurement", "pu"),
    )


def _inverter(store: PointStore, **kw) -> DERInverter:
    store.set("PV.p_avail_mw", 1.0)
    store.set("PV.p_limit_pct", 100)
    store.set("PV.voltvar", 1)
    store.set("B.vm_pu", 1.0)
    args = dict(
        p_point="PV.p_mw",
        q_point="PV.q_mvar",
        sn_mva=1.0,
        p_avail_point="PV.p_avail_mw",
        p_limit_point="PV.p_limit_pct",
        voltvar_point="PV.voltvar",
        voltage_point="B.vm_pu",
        ramp_pct_per_s=10.0,
        reconnect_delay_s=60.0,
    )
    args.update(kw)
    return DERInverter("PV", store, **args)


def test_inverter_ramp_depends_on_elapsed_time(der_store):
    fine = _inverter(der_store)
    _run(fine, np.arange(0.0, 2.0001, 0.05))
    p_fine = der_store.value("PV.p_mw")
    assert p_fine == pytest.approx(0.2)  # 10 %/s of 1 MVA for 2 s
    coarse = _inverter(_store(*der_store.pointmap.points))
    _run(coarse, [0.0, 0.7, 2.0])
    assert coarse.p_mw == pytest.approx(p_fine)


def test_inverter_limit_and_availability(der_store):
    inv = _inverter(der_store, p_mw=0.8)
    der_store.write("PV.p_limit_pct", 50, role="operator")
    inv.step(0.0)
    inv.step(1.0)
    assert inv.p_mw == pytest.approx(0.7)  # ramps down at 0.1 MW/s
    _run(inv, [2.0, 3.0, 10.0])
    assert der_store.value("PV.p_mw") == pytest.approx(0.5)
    der_store.set("PV.p_avail_mw", 0.2)  # a cloud: followed at once, no ramp
    inv.step(10.1)
    assert der_store.value("PV.p_mw") == pytest.approx(0.2)
    der_store.set("PV.p_avail_mw", 1.0)
    inv.step(11.1)
    assert inv.p_mw == pytest.approx(0.3)


@pytest.mark.parametrize(
    ("v", "q"),
    [(0.90, 0.44), (0.92, 0.44), (0.95, 0.22), (0.98, 0.0), (1.0, 0.0), (1.02, 0.0),
     (1.05, -0.22), (1.08, -0.44), (1.09, -0.44)],
)  # fmt: skip
def test_voltvar_curve_points(der_store, v, q):
    assert IEEE1547_CAT_B.q_pu(v) == pytest.approx(q)
    inv = _inverter(der_store, sn_mva=2.0)
    der_store.set("B.vm_pu", v)
    inv.step(0.0)
    assert der_store.value("PV.q_mvar") == pytest.approx(2.0 * q)


def test_voltvar_off_gives_unity_power_factor(der_store):
    inv = _inverter(der_store)
    der_store.set("B.vm_pu", 0.95)
    inv.step(0.0)
    assert inv.q_mvar > 0.1
    der_store.write("PV.voltvar", 0, role="operator")
    inv.step(1.0)
    assert der_store.value("PV.q_mvar") == 0.0


def test_voltvar_curve_validation():
    with pytest.raises(DeviceConfigError, match="strictly rising"):
        VoltVarCurve(((1.0, 0.0), (0.9, 0.4)))


def test_inverter_q_first_order_lag(der_store):
    inv = _inverter(der_store, q_tau_s=5.0)
    der_store.set("B.vm_pu", 0.92)
    _run(inv, np.arange(0.0, 5.0001, 0.1))
    assert inv.q_mvar == pytest.approx(0.44 * (1 - math.exp(-1.0)), rel=1e-6)


def test_inverter_overvoltage_trip_and_reconnect(der_store):
    inv = _inverter(der_store, p_mw=1.0)
    der_store.set("B.vm_pu", 1.12)
    _run(inv, [0.0, 0.05, 0.099])
    assert not inv.tripped and der_store.value("PV.p_mw") == pytest.approx(1.0)
    inv.step(0.1)
    assert inv.tripped and der_store.value("PV.p_mw") == 0.0
    assert der_store.value("PV.q_mvar") == 0.0 and inv.trips[0].value == pytest.approx(1.12)
    der_store.set("B.vm_pu", 1.0)
    _run(inv, [1.0, 30.0, 60.99])
    assert inv.tripped
    inv.step(61.0)
    assert not inv.tripped
    inv.step(62.0)
    assert inv.p_mw == pytest.approx(0.1)  # ramps up again from 0


def test_inverter_next_due_follows_trip_and_reconnect_timers(der_store):
    inv = _inverter(der_store, p_mw=1.0)
    inv.step(0.0)
    assert inv.next_due(0.0) is None
    der_store.set("B.vm_pu", 1.12)
    inv.step(5.0)
    assert inv.next_due(5.0) == pytest.approx(5.1)
    inv.step(5.1)
    assert inv.tripped and inv.next_due(5.1) is None  # waits for a normal voltage
    der_store.set("B.vm_pu", 1.0)
    inv.step(10.0)
    assert inv.next_due(10.0) == pytest.approx(70.0)  # reconnect_delay_s 60
    inv.comms_lost(20.0)
    assert inv.next_due(20.0) == pytest.approx(30.0)  # the watchdog comes first


def test_inverter_force_trip_holds_until_release(der_store):
    inv = _inverter(der_store, p_mw=1.0)
    inv.step(0.0)
    inv.force_trip(1.0, "DER trip order")
    assert inv.tripped and inv.forced == "DER trip order"
    assert der_store.value("PV.p_mw") == 0.0 and der_store.value("PV.q_mvar") == 0.0
    assert inv.trips[-1].time == 1.0 and inv.trips[-1].cause == "DER trip order"
    _run(inv, [2.0, 500.0])  # normal voltage far past reconnect_delay_s: still held
    assert inv.tripped and inv.next_due(500.0) is None and der_store.value("PV.p_mw") == 0.0
    inv.release(500.0)
    assert not inv.tripped and inv.forced is None
    _run(inv, [500.0, 501.0])
    assert inv.p_mw == pytest.approx(0.1)  # ramps up from the release (10 %/s)
    inv.release(502.0)  # no forced trip: nothing
    assert not inv.tripped


def test_inverter_nan_voltage_is_loss_of_mains(der_store):
    inv = _inverter(der_store, p_mw=1.0)
    der_store.set("B.vm_pu", 0.0, quality=Quality.INVALID)  # no measurement yet: no trip
    _run(inv, [0.0, 1.0])
    assert not inv.tripped
    der_store.set("B.vm_pu", math.nan)  # isolated bus
    _run(inv, [2.0, 2.1])
    assert inv.tripped and der_store.value("PV.p_mw") == 0.0


def test_inverter_watchdog_fallback(der_store):
    inv = _inverter(der_store, p_mw=1.0, ramp_pct_per_s=None, comms_timeout_s=5.0)
    inv.step(0.0)
    inv.comms_lost(1.0)
    inv.step(5.9)
    assert inv.p_mw == pytest.approx(1.0)
    inv.step(6.0)
    assert inv.fallback_active and der_store.value("PV.p_mw") == 0.0
    assert der_store.value("PV.p_limit_pct") == 100.0
    inv.comms_restored(7.0)
    inv.step(7.0)
    assert der_store.value("PV.p_mw") == pytest.approx(1.0)
    hold = _inverter(
        _store(*der_store.pointmap.points), p_mw=1.0, comms_timeout_s=5.0, fallback_p_limit_pct=None
    )
    hold.comms_lost(0.0)
    _run(hold, [0.0, 10.0])
    assert hold.fallback_active and hold.p_mw == pytest.approx(1.0)


# --- RTU -------------------------------------------------------------------------------------
@pytest.fixture
def rtu_points() -> tuple[Point, ...]:
    return (
        _pt("B.vm_pu", "measurement", "pu"),
        _pt("L.i_ka", "measurement", "kA"),
        _pt("CB.closed", "status"),
    )


def test_rtu_noise_is_deterministic_with_seed(rtu_points):
    values = []
    for _ in range(2):
        store = PointStore(PointMap(rtu_points))
        rtu = RTUMeasurements("rtu", store, rng=np.random.default_rng(42))
        rtu.set_noise(0.01)
        values.append([rtu.inject("B.vm_pu", 1.0, float(k)) for k in range(200)])
    assert values[0] == values[1]
    arr = np.array(values[0])
    assert arr.std() == pytest.approx(0.01, rel=0.2)
    assert abs(arr.mean() - 1.0) < 0.003
    other = RTUMeasurements("rtu", PointStore(PointMap(rtu_points)), rng=7, sigma=0.01)
    assert other.inject("B.vm_pu", 1.0) != values[0][0]


def test_rtu_bias_and_noise_per_unit(rtu_points):
    store = PointStore(PointMap(rtu_points))
    rtu = RTUMeasurements("rtu", store, rng=1)
    assert rtu.points == {"B.vm_pu", "L.i_ka"}  # measurements only
    rtu.set_bias("B.vm_pu", 0.02)
    assert rtu.inject("B.vm_pu", 1.0, 0.0) == pytest.approx(1.02)
    assert store.value("B.vm_pu") == pytest.approx(1.02)
    assert rtu.true_value("B.vm_pu") == 1.0
    rtu.set_noise(0.1, unit="kA")
    assert rtu.sigma("L.i_ka") == 0.1 and rtu.sigma("B.vm_pu") == 0.0
    assert rtu.inject("L.i_ka", 0.5) != 0.5
    assert rtu.inject("B.vm_pu", 1.0) == pytest.approx(1.02)  # no noise on pu
    rtu.set_noise(0.0, point="L.i_ka")
    assert rtu.inject("L.i_ka", 0.5) == 0.5
    with pytest.raises(DeviceConfigError, match="measurement points"):
        rtu.set_bias("CB.closed", 1.0)


def test_rtu_attached_transforms_plant_writes(rtu_points):
    store = PointStore(PointMap(rtu_points))
    seen: list[tuple[float, str]] = []
    store.subscribe(lambda p, s, src: seen.append((s.value, src)))  # e.g. a protocol server
    rtu = RTUMeasurements("rtu", store, rng=3)
    rtu.attach()
    store.write("L.i_ka", 0.4, role="plant", source="opcua:plant")
    assert store.value("L.i_ka") == 0.4 and len(seen) == 1  # pass-through: one notification
    rtu.set_bias("L.i_ka", -0.1)
    store.write("L.i_ka", 0.4, role="plant", source="opcua:plant")
    assert store.value("L.i_ka") == pytest.approx(0.3)
    assert rtu.true_value("L.i_ka") == 0.4
    # listeners see only the reported value, once, with the writer as source
    assert seen[-1] == (pytest.approx(0.3), "opcua:plant") and len(seen) == 2
    store.set("L.i_ka", math.nan, source="plant")  # non-finite: passed as is, INVALID
    assert store.get("L.i_ka").quality is Quality.INVALID
    rtu.detach()
    store.write("L.i_ka", 0.4, role="plant", source="opcua:plant")
    assert store.value("L.i_ka") == 0.4


def test_rtu_transform_reaches_listeners_subscribed_later(rtu_points):
    store = PointStore(PointMap(rtu_points))
    rtu = RTUMeasurements("rtu", store, rng=3)
    rtu.attach()
    rtu.set_bias("B.vm_pu", 0.01)
    last: list[float] = []
    store.subscribe(lambda p, s, src: last.append(s.value))  # subscribed after the RTU
    store.write("B.vm_pu", 1.0, role="plant", source="opcua:plant")
    assert last == [pytest.approx(1.01)] and store.value("B.vm_pu") == pytest.approx(1.01)
    assert rtu.true_value("B.vm_pu") == 1.0


# --- build_devices ---------------------------------------------------------------------------
def _small_net() -> pp.pandapowerNet:
    net = pp.create_empty_network()
    b0 = pp.create_bus(net, 20.0, name="HV")
    b1 = pp.create_bus(net, 0.4, name="LV")
    b2 = pp.create_bus(net, 0.4, name="F1")
    pp.create_ext_grid(net, b0)
    pp.create_transformer(net, b0, b1, "0.4 MVA 20/0.4 kV")
    ln = pp.create_line(net, b1, b2, 0.2, "NAYY 4x150 SE")
    pp.create_switch(net, b2, ln, et="l", closed=True, name="CB_TO")  # at to_bus
    pp.create_switch(net, b1, ln, et="l", closed=True, name="CB_F1")  # at from_bus
    pp.create_load(net, b2, 0.1, 0.02)
    pp.create_sgen(net, b2, 0.05, sn_mva=0.1, name="PV_1")
    return net


def _hil_map() -> PointMap:
    def p(name, table, element, kind, unit=""):
        return Point(name, table, name.split(".")[1], element, KIND_DIR[kind], kind, unit)

    return PointMap(
        (
            p("CB_F1.closed", "switch", "CB_F1", "status"),
            p("CB_F1.cmd", "switch", "CB_F1", "command"),
            p("CB_F1.operations", "switch", "CB_F1", "measurement"),
            p("CB_TO.closed", "switch", 0, "status"),  # no cmd point: no breaker
            p("trafo0.tap_pos", "trafo", "trafo0", "status"),
            p("trafo0.avr_vset_pu", "trafo", 0, "setpoint", "pu"),
            p("trafo0.avr_band_pu", "trafo", 0, "setpoint", "pu"),
            p("trafo0.avr_delay_s", "trafo", 0, "setpoint", "s"),
            p("trafo0.avr_auto", "trafo", 0, "setpoint"),
            p("LV.vm_pu", "bus", "LV", "measurement", "pu"),
            p("F1.vm_pu", "bus", "F1", "measurement", "pu"),
            p("line0.i_ka", "line", 0, "measurement", "kA"),
            p("line0.oc_pickup_ka", "line", 0, "setpoint", "kA"),
            p("line0.oc_delay_s", "line", 0, "setpoint", "s"),
            p("PV_1.p_mw", "sgen", "PV_1", "status", "MW"),
            p("PV_1.q_mvar", "sgen", "PV_1", "status", "Mvar"),
            p("PV_1.p_avail_mw", "sgen", "PV_1", "measurement", "MW"),
            p("PV_1.p_limit_pct", "sgen", "PV_1", "setpoint", "%"),
            p("PV_1.voltvar", "sgen", "PV_1", "setpoint"),
        )
    )


def test_build_devices_on_hand_made_map():
    net = _small_net()
    net.trafo.at[0, "tap_pos"] = 1
    pm = _hil_map()
    store = PointStore(pm)
    devices = build_devices(net, pm, store, rng=0)
    kinds = {(type(d).__name__, d.name) for d in devices}
    assert kinds == {
        ("Breaker", "CB_F1"),
        ("OvercurrentRelay", "line0"),
        ("TapChangerAVR", "trafo0"),
        ("DERInverter", "PV_1"),
        ("RTUMeasurements", "rtu"),
    }
    by_name = {d.name: d for d in devices}
    assert by_name["line0"].breaker is by_name["CB_F1"]  # the from_bus breaker
    assert by_name["trafo0"].raise_delta == -1  # HV tap, positive step
    assert by_name["PV_1"].sn_mva == pytest.approx(0.1)
    expected = {
        "CB_F1.closed": 1.0,
        "CB_F1.cmd": 1.0,
        "CB_F1.operations": 0.0,
        "trafo0.tap_pos": 1.0,
        "trafo0.avr_vset_pu": 1.0,
        "trafo0.avr_band_pu": 0.015,
        "trafo0.avr_delay_s": 30.0,
        "trafo0.avr_auto": 1.0,
        "line0.oc_pickup_ka": 1.2 * float(net.line.max_i_ka.at[0]),
        "line0.oc_delay_s": 0.5,
        "PV_1.p_mw": 0.05,
        "PV_1.q_mvar": 0.0,
        "PV_1.p_avail_mw": 0.05,
        "PV_1.p_limit_pct": 100.0,
        "PV_1.voltvar": 1.0,
    }
    for name, value in expected.items():
        sample = store.get(name)
        assert sample.quality is Quality.GOOD, name
        assert sample.value == pytest.approx(value), name
    assert store.get("CB_TO.closed").quality is Quality.INVALID  # no device owns it
    assert store.get("LV.vm_pu").quality is Quality.INVALID  # measurements wait for the plant


def test_build_devices_end_to_end_fault_clears(caplog):
    """Plant writes a fault current; the relay trips the from_bus breaker after its delay."""
    net = _small_net()
    pm = _hil_map()
    store = PointStore(pm)
    store.set("line0.oc_delay_s", 0.2)  # a value set before is kept
    devices = build_devices(net, pm, store, settings=DeviceSettings(breaker_open_s=0.05))
    assert store.value("line0.oc_delay_s") == 0.2
    for name in ("LV.vm_pu", "F1.vm_pu"):
        store.write(name, 1.0, role="plant", source="opcua:plant")
    store.write("line0.i_ka", 5.0, role="plant", source="opcua:plant")
    t, opened_at = 0.0, None
    for _ in range(100):
        for d in devices:
            d.step(t)
        if store.value("CB_F1.closed") == 0.0:
            opened_at = t
            break
        t = round(t + 0.01, 10)
    assert opened_at == pytest.approx(0.25)
    assert store.value("CB_F1.operations") == 1.0
    relay = next(d for d in devices if isinstance(d, OvercurrentRelay))
    assert relay.trips[0].value == pytest.approx(5.0)


def test_build_devices_rtu_biases_plant_writes():
    net = _small_net()
    pm = _hil_map()
    store = PointStore(pm)
    devices = build_devices(net, pm, store, rng=np.random.default_rng(5))
    rtu = next(d for d in devices if isinstance(d, RTUMeasurements))  # attached by the build
    rtu.set_bias("LV.vm_pu", -0.05)
    store.write("LV.vm_pu", 1.0, role="plant", source="opcua:plant")
    assert store.value("LV.vm_pu") == pytest.approx(0.95)
    assert "CB_F1.operations" in rtu.points
    # device-written measurements are never transformed
    rtu.set_bias("CB_F1.operations", 10.0)
    store.write("CB_F1.cmd", 0, role="operator")
    for t in (0.0, 1.0):
        for d in devices:
            d.step(t)
    assert store.value("CB_F1.operations") == 1.0
