"""Device watchdogs on the master's heartbeat and aging of client-written values (issue 11),
on a simulated clock with the watchdogs switched on: exact times, no sockets needed."""

from __future__ import annotations

import pandapower as pp
import pytest

from hil.emulator.devices import DeviceSettings
from hil.emulator.substation import EmulatedSubstation
from twin.pointmap import generate_pointmap
from twin.quality import Quality


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def now(self) -> float:
        return self.t


def _sub(feeder_net, **kw):
    net = feeder_net("wd")
    pp.create_sgen(net, int(net.bus.index[-1]), 2.0, sn_mva=2.5, name="PV")
    clock = Clock()
    sub = EmulatedSubstation(
        net,
        generate_pointmap(net, mode="hil"),
        clock=clock,
        heartbeat_watchdog=True,
        stale_aging=True,
        device_settings=DeviceSettings(comms_timeout_s=5.0, der_ramp_pct_per_s=None),
        **kw,
    )
    return sub, clock


def _at(sub, clock, t):
    clock.t = t
    sub.advance(t)


def test_the_heartbeat_stopping_brings_every_device_to_its_safe_state(feeder_net):
    sub, clock = _sub(feeder_net)
    st = sub.store
    pv = next(d for d in sub.devices if d.kind == "inverter")
    _at(sub, clock, 100.0)
    assert st.value("PV.p_mw") == pytest.approx(2.0) and not pv.heartbeat_lost
    # no heartbeat yet: the watchdog is not armed, nothing happens however long
    _at(sub, clock, 200.0)
    assert not pv.heartbeat_lost
    for k in range(5):  # the master beats every second
        _at(sub, clock, 200.0 + k)
        st.set("SS1.heartbeat", float(k), source="modbus")
    assert sub.next_due() == pytest.approx(204.0 + 5.0)
    _at(sub, clock, 208.9)
    assert not pv.heartbeat_lost and st.value("PV.p_mw") == pytest.approx(2.0)
    _at(sub, clock, 230.0)  # one coarse advance: the watchdog still fires at its own time
    assert pv.heartbeat_lost and pv.fallback_active
    assert [(t, k) for t, dev, k, _ in sub.watchdog_log if dev == "PV"] == [(209.0, "safe_state")]
    assert st.value("PV.p_mw") == 0.0 and st.value("PV.p_limit_pct") == 0.0
    assert st.value("T1.avr_auto") == 0.0  # AVR manual
    # a breaker command without a live master is refused (logged), the breaker holds
    st.set("Q1.cmd", 0.0, source="modbus")
    _at(sub, clock, 231.0)
    assert st.value("Q1.closed") == 1.0
    assert any(k == "refused" and dev == "Q1" for _, dev, k, _ in sub.watchdog_log)
    # the master is back: the safe state stays latched until it writes its setpoints again
    st.set("SS1.heartbeat", 9.0, source="modbus")
    _at(sub, clock, 232.0)
    assert not pv.heartbeat_lost and not pv.fallback_active
    assert st.value("PV.p_mw") == 0.0
    st.set("PV.p_limit_pct", 100.0, source="modbus")
    _at(sub, clock, 233.0)
    assert st.value("PV.p_mw") == pytest.approx(2.0)


def test_values_a_client_wrote_age_into_stale(feeder_net):
    sub, clock = _sub(feeder_net)
    st = sub.store
    _at(sub, clock, 100.0)
    st.set("MV.vm_pu", 1.01, source="opcua")  # the twin writing as the plant
    st.set("F1.vm_pu", 1.0, source="init")  # not a client: never aged here
    assert sub.age_values(102.9) == []
    assert sub.age_values(103.1) == ["MV.vm_pu"]
    s = st.get("MV.vm_pu")
    assert s.quality is Quality.STALE and s.value == 1.01 and s.timestamp == 100.0
    assert st.get("F1.vm_pu").quality is Quality.GOOD
    st.set("MV.vm_pu", 1.02, source="opcua")  # refreshed: GOOD again
    assert st.get("MV.vm_pu").quality is Quality.GOOD


def test_on_a_simulated_clock_the_watchdogs_are_off_by_default(feeder_net):
    net = feeder_net("wd")
    sub = EmulatedSubstation(net, generate_pointmap(net, mode="hil"), clock=Clock())
    assert not sub.heartbeat_watchdog and not sub.stale_aging
