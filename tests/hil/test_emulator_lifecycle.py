"""EmulatedSubstation lifecycle over loopback: restart, clocks, generated maps, mbpoll, the CLI."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import struct
import subprocess
import sys

import pytest
from asyncua import Client, ua
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

import grids
from hil.emulator import EmulatedSubstation, is_loopback
from twin.pointmap import generate_pointmap
from twin.quality import Quality

pytestmark = pytest.mark.usefixtures("no_task_leak")

TIMEOUT = 5.0


class SimClock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def now(self) -> float:
        return self.t


class Recorder:
    """A device that records the times it is stepped at."""

    def __init__(self) -> None:
        self.steps: list[float] = []
        self.stepped = asyncio.Event()

    def step(self, now: float) -> None:
        self.steps.append(now)
        self.stepped.set()


class Timers(Recorder):
    """A device with timers that fall due at given times (each one is done once stepped)."""

    def __init__(self, *due: float) -> None:
        super().__init__()
        self.due = sorted(due)

    def next_due(self, now: float) -> float | None:
        return self.due[0] if self.due else None

    def step(self, now: float) -> None:
        super().step(now)
        self.due = [d for d in self.due if d > now]


@pytest.fixture(scope="module")
def ieee14():
    net = grids.load("ieee14")
    return net, generate_pointmap(net)


@pytest.fixture(scope="module")
def cigre_mv():
    net = grids.load("cigre_mv")
    return net, generate_pointmap(net)


def f32(words, order="big") -> float:
    w = list(words) if order == "big" else list(words)[::-1]
    return struct.unpack(">f", struct.pack(">HH", *w))[0]


async def _modbus(port: int) -> AsyncModbusTcpClient:
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=TIMEOUT, retries=0)
    assert await client.connect(), f"expected a Modbus server on 127.0.0.1:{port}"
    return client


# --- restart ----------------------------------------------------------------------------------
async def test_stop_and_restart_on_the_same_ports(ieee14):
    net, pm = ieee14
    setpoint = next(p for p in pm.points if p.kind == "setpoint" and p.modbus.dtype == "float32")
    sub = EmulatedSubstation(net, pm, devices=False)
    await sub.start()
    try:
        ports = (sub.opcua_port, sub.modbus_port)
        endpoint = sub.opcua_endpoint
        sub.store.set(setpoint.name, 1.01)
        await sub.stop()
        # both ports are closed now
        for port in ports:
            with pytest.raises(OSError):
                await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)
        # the store keeps living: a write while down is served after the restart
        sub.store.set(setpoint.name, 1.02)
        await sub.start()
        assert (sub.opcua_port, sub.modbus_port) == ports
        assert sub.opcua_endpoint == endpoint
        client = await _modbus(sub.modbus_port)
        try:
            rr = await client.read_holding_registers(setpoint.modbus.address, count=2, device_id=1)
            assert f32(rr.registers) == pytest.approx(1.02, rel=1e-6)
        finally:
            client.close()
        async with Client(sub.opcua_endpoint, timeout=TIMEOUT) as ua_client:
            value = await ua_client.get_node(sub.node_id(setpoint.name)).read_value()
            assert value == pytest.approx(1.02, rel=1e-6)
        # a store change after the restart still reaches OPC UA (listener re-subscribed once)
        sub.store.set(setpoint.name, 1.03)
        async with Client(sub.opcua_endpoint, timeout=TIMEOUT) as ua_client:
            value = await ua_client.get_node(sub.node_id(setpoint.name)).read_value()
            assert value == pytest.approx(1.03, rel=1e-6)
        # one OPC UA listener, a batch one (the substation's own watchdog listener is not the
        # server's)
        assert [
            lis for lis in sub.store._listeners if getattr(lis, "__self__", None) is not sub
        ] == []
        assert [
            lis for lis in sub.store._batch_listeners if getattr(lis, "__self__", None) is sub.opcua
        ] == [sub.opcua._on_batch]
    finally:
        await sub.stop()
    # the servers unsubscribed on stop (the substation's own watchdog listener stays)
    assert [lis for lis in sub.store._listeners if getattr(lis, "__self__", None) is not sub] == []
    assert not [
        lis for lis in sub.store._batch_listeners if getattr(lis, "__self__", None) is sub.opcua
    ]


async def test_connected_clients_see_the_server_go(ieee14):
    net, pm = ieee14
    async with EmulatedSubstation(net, pm, devices=False) as sub:
        client = await _modbus(sub.modbus_port)
        try:
            rr = await client.read_input_registers(0, count=2, device_id=1)
            assert not rr.isError()
            await sub.stop()
            try:
                rr = await client.read_input_registers(0, count=2, device_id=1)
            except ModbusException:
                pass  # the connection is gone: what a master should see
            else:
                pytest.fail(f"expected no answer from a stopped server, found {rr}")
        finally:
            client.close()


# --- clocks -------------------------------------------------------------------------------------
async def test_simulated_clock_moves_devices_only_on_advance(ieee14):
    net, pm = ieee14
    clock = SimClock(100.0)
    rec = Recorder()
    async with EmulatedSubstation(net, pm, clock=clock, devices=[rec]) as sub:
        await asyncio.sleep(0.2)  # a wall-clock tick would have stepped it by now
        assert rec.steps == []
        clock.t = 101.0
        sub.advance(101.0)
        assert rec.steps == [101.0]  # nothing due in between: one step at the time asked for
        sub.advance(100.5)  # the past: nothing
        assert rec.steps == [101.0]
        # store timestamps come from the simulated clock
        name = pm.points[0].name
        sub.store.set(name, 1.0)
        assert sub.store.get(name).timestamp == 101.0


async def test_advance_steps_at_writes_and_due_times_only(ieee14):
    """Discrete-event device time: steps at outside writes and timers, not on a fixed tick."""
    net, pm = ieee14
    clock = SimClock(0.0)
    dev = Timers(0.3, 59.95)
    sub = EmulatedSubstation(net, pm, clock=clock, devices=[dev], initial_loadflow=False)
    assert sub.next_due() == 0.3
    clock.t = 20.0
    sub.store.set(pm.points[0].name, 1.0, source="plant")  # an outside write at 20 s
    assert sub.next_due() == 0.3  # the earliest first
    clock.t = 60.0
    sub.advance(60.0)
    assert dev.steps == [0.3, 20.0, 59.95, 60.0]
    assert sub.device_steps == 4
    # a device's own writes do not wake the devices again
    sub.store.set(pm.points[0].name, 2.0, source="device:x")
    assert sub.next_due() is None
    clock.t = 3600.0
    sub.advance(3600.0)  # an hour in one call: one step, not 72,000 ticks
    assert dev.steps[-1] == 3600.0 and sub.device_steps == 5


async def test_wall_clock_ticks_devices(ieee14):
    net, pm = ieee14
    rec = Recorder()
    async with EmulatedSubstation(net, pm, devices=[rec]):
        await asyncio.wait_for(rec.stepped.wait(), TIMEOUT)
        rec.stepped.clear()
        await asyncio.wait_for(rec.stepped.wait(), TIMEOUT)
    assert len(rec.steps) >= 2
    n = len(rec.steps)
    await asyncio.sleep(0.15)
    assert len(rec.steps) == n  # the tick stopped with the substation


# --- generated maps -------------------------------------------------------------------------------
async def test_ieee14_every_measurement_readable_over_both_protocols(ieee14):
    net, pm = ieee14
    meas = [p for p in pm.points if p.kind == "measurement"]
    assert len(meas) > 50
    async with EmulatedSubstation(net, pm, devices=False) as sub:
        good = [p for p in meas if sub.store.get(p.name).quality is Quality.GOOD]
        assert len(good) == len(meas), "initial load flow should give every measurement"
        client = await _modbus(sub.modbus_port)
        try:
            for p in meas:
                rr = await client.read_input_registers(
                    p.modbus.address, count=p.modbus.count, device_id=p.modbus.unit
                )
                assert not rr.isError(), f"{p.name}: {rr}"
                expected = sub.store.value(p.name)
                if p.modbus.dtype == "float32":
                    assert f32(rr.registers, p.modbus.word_order) == pytest.approx(
                        expected, rel=1e-6, abs=1e-6
                    ), p.name
                else:
                    assert rr.registers[0] == int(round(expected)), p.name
        finally:
            client.close()
        async with Client(sub.opcua_endpoint, timeout=TIMEOUT) as ua_client:
            nodes = [ua_client.get_node(sub.node_id(p.name)) for p in meas]
            values = await ua_client.read_values(nodes)
            for p, v in zip(meas, values):
                assert v == pytest.approx(sub.store.value(p.name), rel=1e-6, abs=1e-6), p.name


async def test_cigre_mv_every_breaker_operable_from_outside(cigre_mv):
    net, pm = cigre_mv
    clock = SimClock(0.0)
    cmds = [p for p in pm.points if p.table == "switch" and p.column == "cmd"]
    assert len(cmds) == len(net.switch) > 0
    async with EmulatedSubstation(net, pm, clock=clock, rng=1) as sub:
        client = await _modbus(sub.modbus_port)
        try:
            expected = {}
            for cmd in cmds:
                label = cmd.name.rsplit(".", 1)[0]
                closed = pm[f"{label}.closed"]
                rr = await client.read_discrete_inputs(
                    closed.modbus.address, count=1, device_id=closed.modbus.unit
                )
                assert not rr.isError(), rr
                target = not rr.bits[0]
                wr = await client.write_coil(cmd.modbus.address, target, device_id=cmd.modbus.unit)
                assert not wr.isError(), f"{cmd.name}: {wr}"
                expected[closed.name] = target
            clock.t = 2.0
            sub.advance(2.0)  # breaker operate times are well below 2 s
            for name, target in expected.items():
                closed = pm[name]
                rr = await client.read_discrete_inputs(
                    closed.modbus.address, count=1, device_id=closed.modbus.unit
                )
                assert rr.bits[0] is target, name
        finally:
            client.close()
        async with Client(sub.opcua_endpoint, timeout=TIMEOUT) as ua_client:
            names = list(expected)
            values = await ua_client.read_values(
                [ua_client.get_node(sub.node_id(n)) for n in names]
            )
            assert values == [expected[n] for n in names]
        # and back again over OPC UA as an operator... anonymous (viewer) may not
        async with Client(sub.opcua_endpoint, timeout=TIMEOUT) as ua_client:
            node = ua_client.get_node(sub.node_id(cmds[0].name))
            with pytest.raises(ua.uaerrors.BadUserAccessDenied):
                await node.write_value(True)


# --- mbpoll (libmodbus) interoperability ----------------------------------------------------------
async def _run(*argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 20)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode, out.decode(), err.decode()


async def test_mbpoll_reads_a_float_measurement_and_writes_a_float_setpoint(ieee14, mbpoll_path):
    net, pm = ieee14
    meas = next(
        p
        for p in pm.points
        if p.kind == "measurement" and p.column == "vm_pu" and p.modbus.dtype == "float32"
    )
    setp = next(
        p for p in pm.points if p.column == "avr_vset_pu" and p.modbus.table == "holding_register"
    )
    assert meas.modbus.word_order == "big" and setp.modbus.word_order == "big"
    async with EmulatedSubstation(net, pm, devices=False) as sub:
        sub.store.set(meas.name, 1.0375)
        common = ["-m", "tcp", "-p", str(sub.modbus_port), "-a", str(meas.modbus.unit), "-0"]
        rc, out, err = await _run(
            mbpoll_path, *common, "-t", "3:float", "-B", "-r", str(meas.modbus.address),
            "-c", "1", "-1", "127.0.0.1",
        )  # fmt: skip
        assert rc == 0, err + out
        line = next(ln for ln in out.splitlines() if ln.startswith(f"[{meas.modbus.address}]:"))
        assert float(line.split(":", 1)[1]) == pytest.approx(1.0375, rel=1e-6)

        rc, out, err = await _run(
            mbpoll_path, *common, "-t", "4:float", "-B", "-r", str(setp.modbus.address),
            "127.0.0.1", "1.025",
        )  # fmt: skip
        assert rc == 0, err + out
        assert sub.store.value(setp.name) == pytest.approx(1.025, rel=1e-6)
        assert sub.store.get(setp.name).quality is Quality.GOOD

        # out of limits: mbpoll reports the exception, the store is unchanged
        rc, out, err = await _run(
            mbpoll_path, *common, "-t", "4:float", "-B", "-r", str(setp.modbus.address),
            "127.0.0.1", "7.5",
        )  # fmt: skip
        assert rc != 0
        assert "Illegal data value" in (out + err)
        assert sub.store.value(setp.name) == pytest.approx(1.025, rel=1e-6)


# --- CLI ------------------------------------------------------------------------------------------
def test_is_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.10")


async def test_cli_serves_until_sigint(free_port):
    mb_port = free_port
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "scenarios.cli", "emulate", "--grid", "ieee9",
        "--opcua-port", "0", "--modbus-port", str(mb_port),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    lines: list[str] = []
    try:
        async with asyncio.timeout(90):
            while True:
                raw = await proc.stdout.readline()
                assert raw, "emulate exited early: " + "".join(lines)
                lines.append(raw.decode())
                if raw.startswith(b"serving"):
                    break
        text = "".join(lines)
        assert f"Modbus  127.0.0.1:{mb_port}" in text
        # 57 measurements + the heartbeat point of issue 11
        assert "58 points" in text and "57 measurements" in text
        client = await _modbus(mb_port)
        try:
            rr = await client.read_input_registers(0, count=2, device_id=1)
            assert not rr.isError()
        finally:
            client.close()
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
        assert b"stopped" in out
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_cli_warns_for_a_non_loopback_host():
    # 192.0.2.1 (TEST-NET-1) is not on this machine: the warning comes first, then a clean
    # error instead of a traceback, and nothing is ever exposed beyond loopback
    proc = subprocess.run(
        [sys.executable, "-m", "scenarios.cli", "emulate", "--grid", "ieee9", "--host",
         "192.0.2.1", "--opcua-port", "0", "--modbus-port", "0", "--duration", "0"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "NOT a loopback address" in proc.stderr
    assert proc.returncode == 1, proc.stderr
    assert "cannot serve on 192.0.2.1" in proc.stderr
    assert "Traceback" not in proc.stderr


async def test_a_taken_port_is_an_error_and_leaves_nothing_running(ieee14):
    net, pm = ieee14
    blocker = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    try:
        port = blocker.sockets[0].getsockname()[1]
        sub = EmulatedSubstation(net, pm, devices=False, modbus_port=port)
        with pytest.raises(OSError):
            await sub.start()
        assert not sub.running
        await sub.stop()  # harmless after a failed start
    finally:
        blocker.close()
        await blocker.wait_closed()


async def test_encrypted_endpoint_only(ieee14, tmp_path):
    from asyncua.crypto.cert_gen import setup_self_signed_certificate
    from cryptography.x509.oid import ExtendedKeyUsageOID

    net, pm = ieee14
    files = {}
    for who, use in (
        ("server", ExtendedKeyUsageOID.SERVER_AUTH),
        ("client", ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        key, cert = tmp_path / f"{who}_key.pem", tmp_path / f"{who}_cert.der"
        await setup_self_signed_certificate(
            key, cert, f"urn:gridtwin:test:{who}", "localhost", [use], {"commonName": who}
        )
        files[who] = (str(cert), str(key))
    setpoint = next(p for p in pm.points if p.kind == "setpoint" and p.modbus.dtype == "float32")
    policy = ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt
    async with EmulatedSubstation(
        net,
        pm,
        devices=False,
        users={"op": ("pw", "operator")},
        security_policies=[policy],
        certificate=files["server"][0],
        private_key=files["server"][1],
    ) as sub:
        # no NoSecurity endpoint: a plain client is refused
        with pytest.raises(Exception):  # noqa: B017 - asyncua raises several kinds here
            async with Client(sub.opcua_endpoint, timeout=TIMEOUT):
                pass
        client = Client(sub.opcua_endpoint, timeout=TIMEOUT)
        client.set_user("op")
        client.set_password("pw")
        await client.set_security_string(
            f"Basic256Sha256,SignAndEncrypt,{files['client'][0]},{files['client'][1]}"
        )
        async with client:
            await client.get_node(sub.node_id(setpoint.name)).write_value(
                ua.Variant(1.0, ua.VariantType.Float)
            )
    assert sub.store.value(setpoint.name) == 1.0


# --- exact device timers on the simulated clock -------------------------------------------------
@pytest.fixture
def urban_sub():
    """urban_district's substation on a simulated clock, servers not started (no sockets)."""
    net = grids.load("urban_district")
    clock = SimClock(0.0)
    sub = EmulatedSubstation(net, generate_pointmap(net), clock=clock, initial_loadflow=False)
    devices = {d.name: d for d in sub.devices}

    def at(t: float) -> None:
        """The caller's step: devices brought to ``t`` first (as a plant does before writing)."""
        clock.t = t
        sub.advance(t)

    return sub, devices, at


def test_relay_trips_at_fault_plus_delay_with_one_minute_steps(urban_sub):
    sub, dev, at = urban_sub
    relay = dev["L_N1_N2"]
    brk = relay.breaker
    assert brk.name == "Q12" and brk.closed
    at(60.0)
    at(90.0)
    sub.store.set("L_N1_N2.i_ka", 4.0, source="plant")  # the fault, at 90 s
    at(120.0)  # the next step, a minute after the last
    assert [e.time for e in relay.trips] == [pytest.approx(90.5)]  # oc_delay_s 0.5
    assert brk.events[-1].time == pytest.approx(90.56)  # + the 60 ms open time
    closed = sub.store.get("Q12.closed")
    assert closed.value == 0.0 and closed.timestamp == pytest.approx(90.56)
    assert sub.device_steps <= 6  # 60, 90 (write), 90.5, 90.56, 120 and no 50 ms ticks


def test_breaker_command_completes_at_its_operate_time(urban_sub):
    sub, dev, at = urban_sub
    at(30.0)
    sub.store.write("Q12.cmd", 0, role="operator")  # open, at 30 s
    at(90.0)
    assert sub.store.get("Q12.closed").value == 0.0
    assert sub.store.get("Q12.closed").timestamp == pytest.approx(30.06)
    assert dev["Q12"].events[-1].cause == "command"


def test_avr_taps_after_its_delay_not_at_the_next_step(urban_sub):
    sub, dev, at = urban_sub
    avr = dev["T1"]
    tap0 = avr.tap_pos
    at(60.0)
    sub.store.set("SS1_22.vm_pu", 0.95, source="plant")  # low from 60 s (band 1.0 +- 0.015)
    at(120.0)
    tap = sub.store.get("T1.tap_pos")
    assert tap.value == tap0 + avr.raise_delta  # one step towards a higher voltage
    assert tap.timestamp == pytest.approx(60.0 + 30.0 + 5.0)  # delay 30 s + mechanism 5 s
    # no second step on the old voltage: it predates the new tap
    at(600.0)
    assert avr.tap_pos == tap0 + avr.raise_delta


def test_inverter_trips_and_reconnects_on_its_timers(urban_sub):
    sub, dev, at = urban_sub
    inv = dev["PV_N1_F1_B2"]
    at(10.0)
    sub.store.set("N1_F1_B2.vm_pu", 1.0, source="plant")
    at(60.0)
    sub.store.set("N1_F1_B2.vm_pu", math.nan, source="plant")  # isolated: loss of mains
    at(120.0)
    assert [e.time for e in inv.trips] == [pytest.approx(60.1)]
    assert sub.store.get("PV_N1_F1_B2.p_mw").value == 0.0
    sub.store.set("N1_F1_B2.vm_pu", 1.0, source="plant")  # back at 120 s
    at(1200.0)
    assert not inv.tripped
    # reconnected after 300 s of normal voltage: P written again from 420 s on
    assert sub.store.get("PV_N1_F1_B2.p_mw").timestamp >= 420.0


def test_forced_der_trip_holds_until_release(urban_sub):
    sub, dev, at = urban_sub
    inv = dev["PV_N1_F1_B2"]
    sub.store.set("N1_F1_B2.vm_pu", 1.0, source="plant")
    at(60.0)
    assert sub.store.get("PV_N1_F1_B2.p_mw").value > 0.0
    inv.force_trip(60.0, "test")
    assert inv.tripped and sub.store.get("PV_N1_F1_B2.p_mw").value == 0.0
    at(3600.0)  # normal voltage for an hour: a forced trip does not reconnect by itself
    assert inv.tripped and sub.store.get("PV_N1_F1_B2.p_mw").value == 0.0
    inv.release(3600.0)
    at(3700.0)
    assert not inv.tripped and sub.store.get("PV_N1_F1_B2.p_mw").value > 0.0
