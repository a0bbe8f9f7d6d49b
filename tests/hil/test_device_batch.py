"""Batched device rounds (``DeviceRound``, ``InverterBatch``) equal per-device stepping.

Two copies of the same store and devices get the same seeded sequence of writes, faults and
device actions; one copy is stepped device by device (``Device.step``, the reference), the
other by ``DeviceRound``. After every round every sample (value, quality, timestamp) and the
devices' state must be equal, bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
import pandapower as pp
import pytest

from hil.emulator.devices import (
    BATCH_SOURCE,
    DERInverter,
    DeviceRound,
    InverterBatch,
    VoltVarCurve,
    build_devices,
)
from hil.store import PointStore
from twin.pointmap import Point, PointMap
from twin.quality import Quality

KIND_DIR = {"status": "to_twin", "command": "to_field", "setpoint": "to_field"}
KIND_DIR["measurement"] = "to_field"

_INV_STATE = (
    "p_mw",
    "q_mvar",
    "p_avail_mw",
    "tripped",
    "forced",
    "_abnormal_since",
    "_normal_since",
    "_prev",
    "_last_now",
    "fallback_active",
    "heartbeat_lost",
)


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or (
        a == b and math.copysign(1, a) == math.copysign(1, b)
    )


def _assert_stores_equal(a: PointStore, b: PointStore, where: str) -> None:
    sa, sb = a.snapshot(), b.snapshot()
    for name in sa:
        x, y = sa[name], sb[name]
        assert _same(x.value, y.value), (where, name, x, y)
        assert x.quality is y.quality and x.timestamp == y.timestamp, (where, name, x, y)


def _assert_devices_equal(da: list, db: list, where: str) -> None:
    for x, y in zip(da, db, strict=True):
        attrs = _INV_STATE if isinstance(x, DERInverter) else ()
        for attr in attrs:
            vx, vy = getattr(x, attr), getattr(y, attr)
            if isinstance(vx, float) and isinstance(vy, float):
                assert _same(vx, vy), (where, x.name, attr, vx, vy)
            else:
                assert vx == vy, (where, x.name, attr, vx, vy)
        for attr in ("trips", "events", "watchdog_events"):
            if hasattr(x, attr):
                assert len(getattr(x, attr)) == len(getattr(y, attr)), (where, x.name, attr)
        for attr in ("closed", "operations", "locked_out", "tap_pos", "moving_to", "latched"):
            if hasattr(x, attr):
                assert getattr(x, attr) == getattr(y, attr), (where, x.name, attr)


def _fail(index: int, dev: object, exc: BaseException) -> None:
    raise AssertionError(f"device {dev} failed: {exc!r}")


def _assert_dues_equal(rnd: DeviceRound, reference: list, t: float, where: str) -> None:
    """The round's due times (the substation's next step) are the devices' own."""
    expected = [d for d in (dev.next_due(t) for dev in reference) if d is not None]
    assert rnd.next_dues(t) == expected, where


# --- inverters alone: every parameter variant, every input case --------------------------------
_N_INV = 9
_BUSES = ("B0.vm_pu", "B1.vm_pu", "B2.vm_pu")


def _inv_points() -> PointMap:
    def pt(name: str, kind: str) -> Point:
        return Point(name, "x", name.rsplit(".", 1)[1], 0, KIND_DIR[kind], kind, "")  # type: ignore[arg-type]

    pts = [pt(b, "measurement") for b in _BUSES]
    for i in range(_N_INV):
        pts += [
            pt(f"PV{i}.p_mw", "status"),
            pt(f"PV{i}.q_mvar", "status"),
            pt(f"PV{i}.p_avail_mw", "measurement"),
            pt(f"PV{i}.p_limit_pct", "setpoint"),
            pt(f"PV{i}.voltvar", "setpoint"),
        ]
    return PointMap(tuple(pts))


_STEEP = VoltVarCurve(((0.95, 0.3), (1.0, 0.0), (1.05, -0.3)))


def _inverters(store: PointStore) -> list[DERInverter]:
    variants = [
        {},
        {"ramp_pct_per_s": None},
        {"ramp_pct_per_s": 0.0},
        {"q_tau_s": 5.0},
        {"curve": _STEEP, "ramp_pct_per_s": 50.0},
        {"voltage_point": None},
        {"p_avail_point": None, "p_avail_mw": 0.7},
        {"p_limit_point": None, "voltvar_point": None, "voltvar_on": False},
        {"fallback_p_limit_pct": None, "reconnect_delay_s": 2.0, "comms_timeout_s": 1.0},
    ]
    out = []
    for i, kw in enumerate(variants):
        args = dict(
            p_point=f"PV{i}.p_mw",
            q_point=f"PV{i}.q_mvar",
            sn_mva=0.5 + 0.25 * i,
            p_avail_point=f"PV{i}.p_avail_mw",
            p_limit_point=f"PV{i}.p_limit_pct",
            voltvar_point=f"PV{i}.voltvar",
            voltage_point=_BUSES[i % len(_BUSES)],
            p_mw=0.1 * i,
            reconnect_delay_s=5.0,
            comms_timeout_s=3.0,
        )
        args.update(kw)
        out.append(DERInverter(f"PV{i}", store, **args))  # type: ignore[arg-type]
    return out


def _voltage(rng: np.random.Generator) -> tuple[float, Quality]:
    r = rng.random()
    if r < 0.06:
        return math.nan, Quality.INVALID  # isolated bus: loss of mains
    if r < 0.12:
        return 1.0, Quality.STALE  # no information
    if r < 0.2:
        return float(rng.choice([0.3, 1.15, 1.2])), Quality.GOOD  # outside the trip band
    return float(rng.uniform(0.9, 1.09)), Quality.GOOD


def _drive_inverters(seed: int, rounds: int) -> tuple[int, int]:
    worlds = []
    for _ in range(2):
        clock = _Clock()
        store = PointStore(_inv_points(), clock=clock)
        for b in _BUSES:
            store.set(b, 1.0)
        for i in range(_N_INV):
            store.set(f"PV{i}.p_avail_mw", 0.4)
            store.set(f"PV{i}.p_limit_pct", 100.0)
            store.set(f"PV{i}.voltvar", 1.0)
        worlds.append((clock, store, _inverters(store)))
    (ca, sa, da), (cb, sb, db) = worlds
    batch = DeviceRound(db)
    assert isinstance(batch.batch, InverterBatch)
    rng = np.random.default_rng(seed)
    t = 0.0
    for k in range(rounds):
        t += float(rng.choice([0.0, 0.05, 0.1, 0.5, 1.0, 7.0, 60.0]))
        ca.t = cb.t = t
        actions: list = []
        for b in _BUSES:
            if rng.random() < 0.5:
                actions.append(("set", b, *_voltage(rng)))
        for i in range(_N_INV):
            r = rng.random()
            if r < 0.3:
                actions.append(
                    ("set", f"PV{i}.p_avail_mw", float(rng.uniform(-0.1, 2.0)), Quality.GOOD)
                )
            elif r < 0.35:
                actions.append(("set", f"PV{i}.p_avail_mw", 0.5, Quality.INVALID))
            elif r < 0.42:
                actions.append(
                    (
                        "set",
                        f"PV{i}.p_limit_pct",
                        float(rng.choice([-5.0, 0.0, 30.0, 100.0])),
                        Quality.GOOD,
                    )
                )
            elif r < 0.46:
                actions.append(("set", f"PV{i}.voltvar", float(rng.integers(0, 2)), Quality.GOOD))
            elif r < 0.48:
                actions.append(("dev", i, "force_trip"))
            elif r < 0.51:
                actions.append(("dev", i, "release"))
            elif r < 0.53:
                actions.append(("dev", i, "comms_lost"))
            elif r < 0.56:
                actions.append(("dev", i, "comms_restored"))
            elif r < 0.6:
                actions.append(("dev", i, "heartbeat"))
            elif r < 0.62:
                actions.append(("fault", f"PV{i}.p_mw", "freeze", bool(rng.integers(0, 2))))
            elif r < 0.64:
                actions.append(("fault", f"PV{i}.q_mvar", "offline", bool(rng.integers(0, 2))))
        for store, devs in ((sa, da), (sb, db)):
            for act in actions:
                if act[0] == "set":
                    _, name, v, q = act
                    store.set(name, v, quality=q, source="plant")
                elif act[0] == "dev":
                    dev = devs[act[1]]
                    if act[2] == "force_trip":
                        dev.force_trip(t, "test")
                    else:
                        getattr(dev, act[2])(t)
                elif act[2] == "freeze":
                    store.freeze(act[1], act[3])
                else:
                    store.set_offline([act[1]], act[3])
        for dev in da:
            dev.step(t)
        batch.step(t, _fail)
        where = f"seed {seed} round {k} t={t}"
        _assert_stores_equal(sa, sb, where)
        _assert_devices_equal(da, db, where)
        _assert_dues_equal(batch, da, t, where)
    assert batch.batch is not None
    return batch.batch.batched, batch.batch.scalar


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_inverter_batch_equals_per_device_steps(seed):
    batched, scalar = _drive_inverters(seed, rounds=250)
    # both paths ran: the common case in the batch, trips/timers/fallbacks one by one
    assert batched > 200 and scalar > 100, (batched, scalar)


def test_batch_writes_once_per_round_and_only_changes():
    clock = _Clock()
    store = PointStore(_inv_points(), clock=clock)
    for b in _BUSES:
        store.set(b, 1.0)
    for i in range(_N_INV):
        store.set(f"PV{i}.p_avail_mw", 0.4)
        store.set(f"PV{i}.p_limit_pct", 100.0)
        store.set(f"PV{i}.voltvar", 1.0)
    devs = _inverters(store)
    rnd = DeviceRound(devs)
    seen: list[tuple[str, str]] = []
    store.subscribe(lambda p, s, src: seen.append((p.name, src)))
    for t in (0.0, 60.0, 120.0):
        rnd.step(t, lambda *a: pytest.fail(str(a)))
    assert seen and all(src == BATCH_SOURCE for _, src in seen)
    seen.clear()
    rnd.step(180.0, lambda *a: pytest.fail(str(a)))  # settled: nothing changes, nothing written
    assert seen == []


def test_round_with_an_unknown_device_kind_steps_one_by_one():
    store = PointStore(_inv_points())
    devs = _inverters(store)

    class Probe:
        def __init__(self) -> None:
            self.times: list[float] = []

        def step(self, now: float) -> None:
            self.times.append(now)

    probe = Probe()
    rnd = DeviceRound([*devs, probe])
    assert rnd.batch is None
    rnd.step(1.0, lambda *a: pytest.fail(str(a)))
    assert probe.times == [1.0] and all(d._last_now == 1.0 for d in devs)


def test_round_reports_a_failing_device_and_steps_the_others():
    store = PointStore(_inv_points())
    devs = _inverters(store)
    devs[0].step(5.0)
    failed: list = []
    rnd = DeviceRound(devs)
    rnd.step(4.0, lambda i, d, e: failed.append((i, d.name, type(e).__name__)))  # back in time
    assert failed == [(0, "PV0", "DeviceClockError")]
    assert all(d._last_now == 4.0 for d in devs[1:])


# --- every device kind, built from a net ----------------------------------------------------
def _net() -> pp.pandapowerNet:
    net = pp.create_empty_network()
    b0 = pp.create_bus(net, 20.0, name="HV")
    b1 = pp.create_bus(net, 0.4, name="LV")
    pp.create_ext_grid(net, b0)
    pp.create_transformer(net, b0, b1, "0.4 MVA 20/0.4 kV")
    for k in range(3):
        b = pp.create_bus(net, 0.4, name=f"F{k}")
        ln = pp.create_line(net, b1, b, 0.2, "NAYY 4x150 SE")
        pp.create_switch(net, b1, ln, et="l", closed=True, name=f"CB{k}")
        pp.create_load(net, b, 0.05, 0.01)
        pp.create_sgen(net, b, 0.04, sn_mva=0.08, name=f"PV_{k}")
    return net


def _net_map() -> PointMap:
    def p(name: str, table: str, element: str | int, kind: str) -> Point:
        return Point(name, table, name.split(".")[1], element, KIND_DIR[kind], kind, "")  # type: ignore[arg-type]

    pts = [
        p("trafo0.tap_pos", "trafo", 0, "status"),
        p("trafo0.avr_auto", "trafo", 0, "setpoint"),
        p("trafo0.avr_delay_s", "trafo", 0, "setpoint"),
        p("trafo0.tap_raise", "trafo", 0, "command"),
        p("trafo0.tap_lower", "trafo", 0, "command"),
        p("LV.vm_pu", "bus", "LV", "measurement"),
    ]
    for k in range(3):
        pts += [
            p(f"CB{k}.closed", "switch", f"CB{k}", "status"),
            p(f"CB{k}.cmd", "switch", f"CB{k}", "command"),
            p(f"CB{k}.operations", "switch", f"CB{k}", "measurement"),
            p(f"F{k}.vm_pu", "bus", f"F{k}", "measurement"),
            p(f"line{k}.i_ka", "line", k, "measurement"),
            p(f"line{k}.oc_delay_s", "line", k, "setpoint"),
            p(f"PV_{k}.p_mw", "sgen", f"PV_{k}", "status"),
            p(f"PV_{k}.q_mvar", "sgen", f"PV_{k}", "status"),
            p(f"PV_{k}.p_avail_mw", "sgen", f"PV_{k}", "measurement"),
            p(f"PV_{k}.p_limit_pct", "sgen", f"PV_{k}", "setpoint"),
        ]
    return PointMap(tuple(pts))


@pytest.mark.parametrize("seed", [0, 1])
def test_round_of_every_kind_equals_per_device_steps(seed):
    net, pm = _net(), _net_map()
    worlds = []
    for _ in range(2):
        clock = _Clock()
        store = PointStore(pm, clock=clock)
        devs = build_devices(net, pm, store, rng=seed)
        worlds.append((clock, store, devs))
    (ca, sa, da), (cb, sb, db) = worlds
    assert {type(d).__name__ for d in da} == {
        "Breaker",
        "OvercurrentRelay",
        "TapChangerAVR",
        "DERInverter",
        "RTUMeasurements",
    }
    rnd = DeviceRound(db)
    assert rnd.batch is not None and len(rnd.batch.devices) == 3
    rng = np.random.default_rng(seed)
    t = 0.0
    for k in range(300):
        t += float(rng.choice([0.0, 0.03, 0.06, 0.1, 0.5, 5.0, 30.0]))
        ca.t = cb.t = t
        writes: list[tuple[str, float, Quality]] = []
        if rng.random() < 0.6:
            writes.append(("LV.vm_pu", float(rng.uniform(0.95, 1.05)), Quality.GOOD))
        for j in range(3):
            r = rng.random()
            if r < 0.3:
                writes.append((f"F{j}.vm_pu", *_voltage(rng)))
            elif r < 0.45:
                writes.append((f"line{j}.i_ka", float(rng.choice([0.05, 0.2, 2.0])), Quality.GOOD))
            elif r < 0.55:
                writes.append((f"CB{j}.cmd", float(rng.integers(0, 2)), Quality.GOOD))
            elif r < 0.75:
                writes.append((f"PV_{j}.p_avail_mw", float(rng.uniform(0, 0.1)), Quality.GOOD))
            elif r < 0.8:
                writes.append(("trafo0.avr_auto", float(rng.integers(0, 2)), Quality.GOOD))
            elif r < 0.85:
                writes.append(
                    (rng.choice(["trafo0.tap_raise", "trafo0.tap_lower"]), 1.0, Quality.GOOD)
                )
        for store in (sa, sb):
            for name, v, q in writes:
                store.set(name, v, quality=q, source="plant")
        for dev in da:
            dev.step(t)
        rnd.step(t, lambda i, d, e: pytest.fail(f"{d}: {e}"))
        _assert_stores_equal(sa, sb, f"seed {seed} round {k}")
        _assert_devices_equal(da, db, f"seed {seed} round {k}")
        _assert_dues_equal(rnd, da, t, f"seed {seed} round {k}")
    # the scenario moved things: breakers operated, a relay tripped
    assert any(d.events for d in da if hasattr(d, "events"))


# --- breakers, relays and AVRs as kind batches: every state the quiet test must see ----------
_KIND_STATE = (
    "_last_now",
    "fallback_active",
    "heartbeat_lost",
    "_comms_lost_at",
    "_beat_at",
    "pending",
    "closed",
    "operations",
    "locked_out",
    "picked_up_since",
    "latched",
    "tap_pos",
    "moving_to",
    "_out_since",
    "_out_sign",
    "_at_limit_logged",
)


def _kind_map(n: int) -> PointMap:
    def pt(name: str, kind: str) -> Point:
        return Point(name, "x", name.rsplit(".", 1)[1], 0, KIND_DIR[kind], kind, "")  # type: ignore[arg-type]

    pts = []
    for k in range(n):
        pts += [
            pt(f"CB{k}.closed", "status"),
            pt(f"CB{k}.cmd", "command"),
            pt(f"CB{k}.operations", "measurement"),
            pt(f"L{k}.i_ka", "measurement"),
            pt(f"L{k}.oc_pickup_ka", "setpoint"),
            pt(f"L{k}.oc_delay_s", "setpoint"),
            pt(f"T{k}.tap_pos", "status"),
            pt(f"T{k}.avr_auto", "setpoint"),
            pt(f"T{k}.avr_vset_pu", "setpoint"),
            pt(f"T{k}.avr_band_pu", "setpoint"),
            pt(f"T{k}.avr_delay_s", "setpoint"),
            pt(f"T{k}.tap_raise", "command"),
            pt(f"T{k}.tap_lower", "command"),
            pt(f"B{k}.vm_pu", "measurement"),
        ]
    return PointMap(tuple(pts))


def _kind_devices(store: PointStore, n: int) -> list:
    from hil.emulator.devices import Breaker, OvercurrentRelay, TapChangerAVR

    brk = [
        Breaker(
            f"CB{k}",
            store,
            closed_point=f"CB{k}.closed",
            cmd_point=f"CB{k}.cmd",
            operations_point=f"CB{k}.operations" if k % 2 else None,
            open_time_s=0.0 if k == 0 else 0.06,
            close_time_s=0.1,
            closed=k % 3 != 2,
            comms_timeout_s=2.0,
        )
        for k in range(n)
    ]
    relays = [
        OvercurrentRelay(
            f"L{k}",
            store,
            current_point=f"L{k}.i_ka",
            breaker=brk[k],
            pickup_point=f"L{k}.oc_pickup_ka" if k % 2 else None,
            delay_point=f"L{k}.oc_delay_s" if k % 3 else None,
            pickup_ka=0.5,
            delay_s=0.3,
            dropout_ratio=0.9,
            comms_timeout_s=2.0,
        )
        for k in range(n)
    ]
    avrs = [
        TapChangerAVR(
            f"T{k}",
            store,
            tap_point=f"T{k}.tap_pos",
            voltage_point=f"B{k % 2}.vm_pu",
            tap_min=-2 + (k % 2),
            tap_max=2 - (k % 3),
            raise_delta=1 if k % 2 else -1,
            vset_point=f"T{k}.avr_vset_pu" if k % 2 else None,
            band_point=f"T{k}.avr_band_pu" if k % 3 else None,
            delay_point=f"T{k}.avr_delay_s" if k != 1 else None,
            auto_point=f"T{k}.avr_auto" if k != 2 else None,
            raise_point=f"T{k}.tap_raise" if k % 2 == 0 else None,
            lower_point=f"T{k}.tap_lower" if k % 2 == 0 else None,
            tap_pos=0,
            mechanism_s=0.0 if k == 3 else 2.0,
            delay_s=5.0,
            comms_timeout_s=2.0,
        )
        for k in range(n)
    ]
    return [*brk, *relays, *avrs]


def _assert_kind_state_equal(da: list, db: list, where: str) -> None:
    for x, y in zip(da, db, strict=True):
        for attr in _KIND_STATE:
            if hasattr(x, attr):
                assert getattr(x, attr) == getattr(y, attr), (where, x.name, attr)
        for attr in ("trips", "events", "watchdog_events"):
            if hasattr(x, attr):
                assert getattr(x, attr) == getattr(y, attr), (where, x.name, attr)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kind_batches_equal_per_device_steps(seed):
    """Breakers, relays and AVRs stepped as kind batches (quiet ones in one array pass) give
    the same samples, states, trips, events and due times as ``Device.step``, through
    commands, pulses, setpoint changes, faults, comms losses and heartbeats."""
    n = 6
    worlds = []
    for _ in range(2):
        clock = _Clock()
        store = PointStore(_kind_map(n), clock=clock)
        for k in range(n):
            store.set(f"L{k}.i_ka", 0.1)
            store.set(f"L{k}.oc_pickup_ka", 0.6)
            store.set(f"L{k}.oc_delay_s", 0.2)
            store.set(f"T{k}.avr_auto", 1.0)
            store.set(f"T{k}.avr_vset_pu", 1.0)
            store.set(f"T{k}.avr_band_pu", 0.02)
            store.set(f"T{k}.avr_delay_s", 3.0)
            store.set(f"B{k}.vm_pu", 1.0)
        worlds.append((clock, store, _kind_devices(store, n)))
    (ca, sa, da), (cb, sb, db) = worlds
    rnd = DeviceRound(db)
    assert [type(kb).__name__ for kb in rnd.kind_batches] == [
        "_BreakerBatch",
        "_RelayBatch",
        "_AVRBatch",
    ]
    rng = np.random.default_rng(seed)
    t = 0.0
    for k in range(400):
        t += float(rng.choice([0.0, 0.05, 0.1, 0.3, 1.0, 2.5, 6.0]))
        ca.t = cb.t = t
        acts: list = []
        for j in range(n):
            r = rng.random()
            if r < 0.12:
                acts.append(("set", f"L{j}.i_ka", float(rng.choice([0.1, 0.55, 0.58, 2.0]))))
            elif r < 0.16:
                acts.append(("setq", f"L{j}.i_ka", 1.0, Quality.STALE))
            elif r < 0.22:
                acts.append(("set", f"CB{j}.cmd", float(rng.integers(0, 2))))
            elif r < 0.26:
                acts.append(("set", f"B{j % 2}.vm_pu", float(rng.uniform(0.9, 1.1))))
            elif r < 0.28:
                acts.append(("setq", f"B{j % 2}.vm_pu", 1.0, Quality.INVALID))
            elif r < 0.31:
                acts.append(("set", f"T{j}.avr_auto", float(rng.integers(0, 2))))
            elif r < 0.33:
                acts.append(("set", f"T{j}.avr_band_pu", float(rng.choice([-0.05, 0.0, 0.02]))))
            elif r < 0.35:
                acts.append(("set", f"T{j}.avr_delay_s", float(rng.choice([-1.0, 0.0, 2.0]))))
            elif r < 0.37:
                acts.append(("set", f"L{j}.oc_pickup_ka", float(rng.choice([0.3, 0.6]))))
            elif r < 0.40:
                acts.append(("set", f"T{j}.tap_{rng.choice(['raise', 'lower'])}", 1.0))
            elif r < 0.41:
                acts.append(("dev", int(rng.integers(0, len(da))), "comms_lost"))
            elif r < 0.43:
                acts.append(("dev", int(rng.integers(0, len(da))), "comms_restored"))
            elif r < 0.45:
                acts.append(("dev", int(rng.integers(0, len(da))), "heartbeat"))
            elif r < 0.46:
                acts.append(("freeze", f"L{j}.i_ka", bool(rng.integers(0, 2))))
            elif r < 0.47:
                acts.append(("offline", f"CB{j}.cmd", bool(rng.integers(0, 2))))
            elif r < 0.48:
                acts.append(("freeze", f"B{j % 2}.vm_pu", bool(rng.integers(0, 2))))
            elif r < 0.49:
                acts.append(("operate", n + n + j, int(rng.choice([-1, 1]))))
        for store, devs in ((sa, da), (sb, db)):
            for act in acts:
                kind = act[0]
                if kind == "set":
                    if act[1] in store:
                        store.set(act[1], act[2], source="plant")
                elif kind == "setq":
                    store.set(act[1], act[2], quality=act[3], source="plant")
                elif kind == "dev":
                    getattr(devs[act[1]], act[2])(t)
                elif kind == "freeze":
                    store.freeze(act[1], act[2])
                elif kind == "offline":
                    store.set_offline([act[1]], act[2])
                else:
                    devs[act[1]].operate(t, act[2])
        for dev in da:
            dev.step(t)
        rnd.step(t, _fail)
        where = f"seed {seed} round {k} t={t}"
        _assert_stores_equal(sa, sb, where)
        _assert_kind_state_equal(da, db, where)
        _assert_dues_equal(rnd, da, t, where)
    quiet = [kb.quiet for kb in rnd.kind_batches]
    scalar = [kb.scalar for kb in rnd.kind_batches]
    assert all(q > 100 for q in quiet) and all(s > 50 for s in scalar), (quiet, scalar)
    assert any(d.events for d in da if hasattr(d, "events"))  # breakers did operate
    assert any(d.trips for d in da if hasattr(d, "trips"))  # relays did trip
    assert any(d.tap_pos != 0 for d in da if hasattr(d, "tap_pos"))  # taps did move


def test_round_without_bulk_steps_every_device_by_itself():
    """``GRIDTWIN_BULK=0`` (a store with ``bulk=False``): no batch at all, the reference."""
    store = PointStore(_kind_map(2), bulk=False)
    rnd = DeviceRound(_kind_devices(store, 2))
    assert rnd.batch is None and rnd.kind_batches == []


def test_kinds_interleaved_keep_their_order():
    """A relay between two breakers: the breakers are two runs, so a trip with no operate
    time completes in the same round, as when stepped one by one."""
    from hil.emulator.devices import Breaker, OvercurrentRelay

    worlds = []
    for _ in range(2):
        store = PointStore(_kind_map(2), clock=_Clock())
        b0 = Breaker("CB0", store, closed_point="CB0.closed", cmd_point="CB0.cmd", closed=True)
        b1 = Breaker(
            "CB1", store, closed_point="CB1.closed", cmd_point="CB1.cmd", open_time_s=0.0,
            closed=True,
        )  # fmt: skip
        rel = OvercurrentRelay("L0", store, current_point="L0.i_ka", breaker=b1, delay_s=0.0)
        worlds.append((store, [b0, rel, b1]))
    (sa, da), (sb, db) = worlds
    rnd = DeviceRound(db)
    assert len(rnd.kind_batches) == 3
    for store in (sa, sb):
        store.set("L0.i_ka", 5.0, source="plant")
    for dev in da:
        dev.step(1.0)
    rnd.step(1.0, _fail)
    assert da[2].closed is False and db[2].closed is False
    _assert_stores_equal(sa, sb, "interleaved")


@pytest.mark.parametrize("noise", [False, True])
def test_rtu_array_transform_equals_per_point(noise):
    """The RTU as the store's array transform: the same reported values (same seeded noise
    stream, bias), true values and times as the per-point transform (``bulk=False``)."""
    from hil.emulator.devices import RTUMeasurements

    def pt(name: str, kind: str, unit: str) -> Point:
        return Point(name, "x", name.rsplit(".", 1)[1], 0, KIND_DIR[kind], kind, unit)  # type: ignore[arg-type]

    pm = PointMap(
        tuple(
            [pt(f"B{k}.vm_pu", "measurement", "pu") for k in range(20)]
            + [pt(f"L{k}.i_ka", "measurement", "kA") for k in range(20)]
            + [pt(f"CB{k}.closed", "status", "") for k in range(5)]
        )
    )
    stores, rtus = [], []
    for bulk in (True, False):
        store = PointStore(pm, bulk=bulk, clock=_Clock())
        rtu = RTUMeasurements("rtu", store, rng=11)
        if noise:
            rtu.set_noise(0.01)
            rtu.set_noise(0.05, unit="kA")
            rtu.set_noise(0.0, point="B3.vm_pu")
            rtu.set_bias("B4.vm_pu", 0.02)
            rtu.set_bias("L7.i_ka", -0.1)
        rtu.attach()
        rtu.step(3.0)
        stores.append(store)
        rtus.append(rtu)
    rng = np.random.default_rng(5)
    for _ in range(30):
        pos = rng.permutation(len(pm))[: int(rng.integers(1, len(pm)))]
        vals = rng.uniform(0.0, 2.0, len(pos))
        vals[rng.random(len(pos)) < 0.1] = math.nan
        q = np.where(rng.random(len(pos)) < 0.1, 2, 0).astype(np.uint8)
        for store in stores:
            store.set_array(pos, vals, quality=q, source="plant")
        _assert_stores_equal(stores[0], stores[1], "rtu")
        for name in stores[0].names:
            a, b = rtus[0].true_value(name), rtus[1].true_value(name)
            assert _same(a, b), name
            assert rtus[0].has_true_value(name) == rtus[1].has_true_value(name)
    assert rtus[0].rng.random() == rtus[1].rng.random()  # the streams are at the same place
