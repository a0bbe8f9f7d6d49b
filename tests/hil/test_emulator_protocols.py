"""EmulatedSubstation over real loopback sockets: OPC UA and Modbus TCP on one point store.

The checks are plain coroutines (``_name``) run by a few grouped tests at the end: every
substation start builds an asyncua standard address space (about 2 s of CPU), so one start per
group keeps the file near a minute on a loaded machine.
"""

from __future__ import annotations

import asyncio
import math
import struct
from datetime import UTC, datetime

import pandapower.networks as pn
import pytest
from asyncua import Client, ua
from asyncua.ua.uaerrors import (
    BadNodeIdUnknown,
    BadOutOfRange,
    BadTypeMismatch,
    BadUserAccessDenied,
)
from pymodbus.client import AsyncModbusTcpClient

from hil.emulator import EmulatedSubstation
from twin.pointmap import ModbusBinding, OpcuaBinding, Point, PointMap
from twin.quality import Quality

pytestmark = pytest.mark.usefixtures("no_task_leak")

USERS = {
    "op": ("op-pw", "operator"),
    "plant": ("plant-pw", "plant"),
    "view": ("view-pw", "viewer"),
}
TIMEOUT = 5.0


def _pt(name, table, column, element, kind, mb, *, unit="", low=None, high=None, direction=None):
    label, col = name.split(".")
    bay = f"BAY_{label}"
    return Point(
        name=name,
        table=table,
        column=column,
        element=element,
        direction=direction or ("to_field" if kind in ("command", "setpoint") else "to_twin"),
        kind=kind,
        unit=unit,
        low=low,
        high=high,
        modbus=mb,
        opcua=OpcuaBinding(f"ns=2;s=SS1/{bay}/{label}/{col}", ("SS1", bay, label, col)),
    )


def hand_pointmap() -> PointMap:
    """A small map of example_simple covering every kind, table, dtype, word order and scale."""
    mb = ModbusBinding
    return PointMap(
        points=(
            _pt(
                "switch0.cmd",
                "switch",
                "cmd",
                0,
                "command",
                mb(1, "coil", 0, "bool"),
                low=0,
                high=1,
            ),
            _pt(
                "switch0.closed",
                "switch",
                "closed",
                0,
                "status",
                mb(1, "discrete_input", 0, "bool"),
            ),
            _pt(
                "switch5.closed",
                "switch",
                "closed",
                5,
                "status",
                mb(1, "discrete_input", 1, "bool"),
            ),
            _pt(
                "bus1.vm_pu",
                "bus",
                "vm_pu",
                1,
                "measurement",
                mb(1, "input_register", 0),
                unit="pu",
                low=0.0,
                high=2.0,
            ),
            _pt(
                "line0.loading_percent",
                "line",
                "loading_percent",
                0,
                "measurement",
                mb(1, "input_register", 2),
                unit="%",
                low=0.0,
                high=1000.0,
            ),
            _pt(
                "switch0.operations",
                "switch",
                "operations",
                0,
                "measurement",
                mb(1, "input_register", 4, "uint16"),
                low=0,
                high=65535,
            ),
            _pt(
                "trafo0.tap_pos",
                "trafo",
                "tap_pos",
                0,
                "status",
                mb(1, "input_register", 5, "int16"),
                low=-20,
                high=20,
            ),
            _pt(
                "trafo0.avr_vset_pu",
                "trafo",
                "avr_vset_pu",
                0,
                "setpoint",
                mb(1, "holding_register", 0),
                unit="pu",
                low=0.9,
                high=1.1,
            ),
            _pt(
                "trafo0.avr_auto",
                "trafo",
                "avr_auto",
                0,
                "setpoint",
                mb(1, "holding_register", 2, "uint16"),
                low=0,
                high=1,
            ),
            _pt(
                "line0.oc_pickup_ka",
                "line",
                "oc_pickup_ka",
                0,
                "setpoint",
                mb(1, "holding_register", 4, "float32", "little"),
                unit="kA",
                low=0.0,
                high=10.0,
            ),
            _pt(
                "load0.p_mw",
                "load",
                "p_mw",
                0,
                "measurement",
                mb(2, "input_register", 0),
                unit="MW",
                low=-100,
                high=100,
            ),
            _pt(
                "load0.q_mvar",
                "load",
                "q_mvar",
                0,
                "measurement",
                mb(2, "input_register", 2, "int16", scale=0.01),
                unit="Mvar",
                low=-100,
                high=100,
            ),
        )
    )


@pytest.fixture(scope="module")
def net():
    return pn.example_simple()


@pytest.fixture
async def sub(net):
    async with EmulatedSubstation(net, hand_pointmap(), users=USERS, devices=False) as s:
        yield s


@pytest.fixture
async def mb_client(sub):
    client = AsyncModbusTcpClient("127.0.0.1", port=sub.modbus_port, timeout=TIMEOUT, retries=0)
    assert await client.connect()
    yield client
    client.close()


def _ua_client(sub, user: str | None = None) -> Client:
    client = Client(sub.opcua_endpoint, timeout=TIMEOUT)
    if user is not None:
        client.set_user(user)
        client.set_password(USERS[user][0])
    return client


def f32(words: list[int], order: str = "big") -> float:
    w = words if order == "big" else words[::-1]
    return struct.unpack(">f", struct.pack(">HH", *w))[0]


def f32_words(value: float, order: str = "big") -> list[int]:
    w = list(struct.unpack(">HH", struct.pack(">f", value)))
    return w if order == "big" else w[::-1]


# --- initial values and reads --------------------------------------------------------------
async def _initial_values_come_from_the_net(sub):
    s = sub.store
    assert s.get("switch0.closed").value == 1.0
    assert s.get("switch5.closed").value == 0.0  # open in example_simple
    assert s.get("bus1.vm_pu").quality is Quality.GOOD
    assert 0.9 < s.value("bus1.vm_pu") < 1.1
    assert s.get("trafo0.avr_vset_pu").quality is Quality.INVALID  # device-only column


async def _modbus_reads_every_table(sub, mb_client):
    s = sub.store
    s.set("trafo0.avr_vset_pu", 1.02)
    s.set("line0.oc_pickup_ka", 0.75)
    s.set("switch0.cmd", 1)
    s.set("switch0.operations", 7)
    s.set("trafo0.tap_pos", -3)
    s.set("load0.q_mvar", -1.25)

    rr = await mb_client.read_discrete_inputs(0, count=2, device_id=1)
    assert not rr.isError()
    assert rr.bits[:2] == [True, False]
    rr = await mb_client.read_coils(0, count=1, device_id=1)
    assert rr.bits[0] is True
    rr = await mb_client.read_input_registers(0, count=6, device_id=1)
    assert not rr.isError()
    assert f32(rr.registers[0:2]) == pytest.approx(s.value("bus1.vm_pu"), rel=1e-6)
    assert f32(rr.registers[2:4]) == pytest.approx(s.value("line0.loading_percent"), rel=1e-6)
    assert rr.registers[4] == 7
    assert struct.unpack(">h", struct.pack(">H", rr.registers[5]))[0] == -3
    rr = await mb_client.read_holding_registers(0, count=2, device_id=1)
    assert not rr.isError(), rr
    assert f32(rr.registers) == pytest.approx(1.02, rel=1e-6)
    rr = await mb_client.read_holding_registers(4, count=2, device_id=1)
    assert f32(rr.registers, "little") == pytest.approx(0.75, rel=1e-6)
    rr = await mb_client.read_input_registers(2, count=1, device_id=2)
    assert struct.unpack(">h", struct.pack(">H", rr.registers[0]))[0] == -125  # scale 0.01


async def _modbus_answers_04_for_an_invalid_float(sub, mb_client):
    # an INVALID point is never served as a value (it used to read NaN: issue 11)
    rr = await mb_client.read_holding_registers(0, count=2, device_id=1)
    assert sub.store.get("trafo0.avr_vset_pu").quality is Quality.INVALID
    assert await _exc(rr) == 4


async def _opcua_reads_types_units_and_tree(sub):
    s = sub.store
    s.set("trafo0.tap_pos", 4)
    async with _ua_client(sub) as client:
        ns = await client.get_namespace_index("urn:gridtwin:substation")
        node = client.get_node(f"ns={ns};s=SS1/BAY_bus1/bus1/vm_pu")
        dv = await node.read_data_value()
        assert dv.Value.VariantType == ua.VariantType.Float
        assert dv.Value.Value == pytest.approx(s.value("bus1.vm_pu"), rel=1e-6)
        eu = await node.get_child(f"{ns}:EngineeringUnits")
        assert (await eu.read_value()).DisplayName.Text == "pu"
        tap = client.get_node(f"ns={ns};s=SS1/BAY_trafo0/trafo0/tap_pos")
        dv = await tap.read_data_value()
        assert (dv.Value.VariantType, dv.Value.Value) == (ua.VariantType.Int16, 4)
        closed = client.get_node(f"ns={ns};s=SS1/BAY_switch0/switch0/closed")
        assert await closed.read_value() is True
        # browse path Objects/SS1/BAY_switch0/switch0/cmd
        cmd = await client.nodes.objects.get_child(
            [f"{ns}:SS1", f"{ns}:BAY_switch0", f"{ns}:switch0", f"{ns}:cmd"]
        )
        assert cmd.nodeid.to_string() == sub.node_id("switch0.cmd")
        # the advertised user access: operator-writable only for commands and setpoints
        ual = await cmd.read_attribute(ua.AttributeIds.UserAccessLevel)
        assert ual.Value.Value & (1 << ua.AccessLevel.CurrentWrite)
        ual = await node.read_attribute(ua.AttributeIds.UserAccessLevel)
        assert not ual.Value.Value & (1 << ua.AccessLevel.CurrentWrite)


async def _opcua_invalid_value_has_bad_status(sub):
    async with _ua_client(sub) as client:
        node = client.get_node(sub.node_id("trafo0.avr_vset_pu"))
        dv = await node.read_data_value(raise_on_bad_status=False)
        assert dv.StatusCode.is_bad()


# --- writes across protocols ----------------------------------------------------------------
async def _modbus_write_is_visible_over_opcua(sub, mb_client):
    rr = await mb_client.write_registers(0, f32_words(1.05), device_id=1)
    assert not rr.isError(), rr
    rr = await mb_client.write_registers(4, f32_words(1.5, "little"), device_id=1)
    assert not rr.isError(), rr
    rr = await mb_client.write_register(2, 1, device_id=1)
    assert not rr.isError(), rr
    rr = await mb_client.write_coil(0, True, device_id=1)
    assert not rr.isError(), rr
    assert sub.store.value("trafo0.avr_vset_pu") == pytest.approx(1.05, rel=1e-6)
    assert sub.store.value("line0.oc_pickup_ka") == pytest.approx(1.5)
    async with _ua_client(sub) as client:
        vset = await client.get_node(sub.node_id("trafo0.avr_vset_pu")).read_value()
        assert vset == pytest.approx(1.05, rel=1e-6)
        assert await client.get_node(sub.node_id("line0.oc_pickup_ka")).read_value() == 1.5
        assert await client.get_node(sub.node_id("trafo0.avr_auto")).read_value() == 1
        assert await client.get_node(sub.node_id("switch0.cmd")).read_value() is True


async def _opcua_write_is_visible_over_modbus(sub, mb_client):
    async with _ua_client(sub, "op") as client:
        await client.get_node(sub.node_id("trafo0.avr_vset_pu")).write_value(
            ua.Variant(0.97, ua.VariantType.Float)
        )
        await client.get_node(sub.node_id("switch0.cmd")).write_value(False)
        await client.get_node(sub.node_id("trafo0.avr_auto")).write_value(
            ua.Variant(0, ua.VariantType.UInt16)
        )
    rr = await mb_client.read_holding_registers(0, count=3, device_id=1)
    assert f32(rr.registers[0:2]) == pytest.approx(0.97, rel=1e-6)
    assert rr.registers[2] == 0
    rr = await mb_client.read_coils(0, count=1, device_id=1)
    assert rr.bits[0] is False


async def _plant_writes_measurements_in_one_request(sub, mb_client):
    async with _ua_client(sub, "plant") as client:
        nodes = [client.get_node(sub.node_id(n)) for n in ("bus1.vm_pu", "load0.p_mw")]
        await client.write_values(
            nodes, [ua.Variant(1.031, ua.VariantType.Float), ua.Variant(12.5, ua.VariantType.Float)]
        )
    assert sub.store.value("bus1.vm_pu") == pytest.approx(1.031, rel=1e-6)
    rr = await mb_client.read_input_registers(0, count=2, device_id=2)
    assert f32(rr.registers) == 12.5


async def test_opcua_subscription_sees_a_modbus_write(sub, mb_client):

    seen: asyncio.Queue = asyncio.Queue()

    class Handler:
        def datachange_notification(self, node, val, data):
            seen.put_nowait(val)

    async with _ua_client(sub) as client:
        subscription = await client.create_subscription(20, Handler())
        await subscription.subscribe_data_change(client.get_node(sub.node_id("trafo0.avr_auto")))
        rr = await mb_client.write_register(2, 1, device_id=1)
        assert not rr.isError()
        values = []
        for _ in range(5):  # the initial value, then the change
            values.append(await asyncio.wait_for(seen.get(), TIMEOUT))
            if values[-1] == 1:
                break
        assert values[-1] == 1
        await subscription.delete()


# --- roles over OPC UA -----------------------------------------------------------------------
async def _anonymous_cannot_write_a_command(sub):
    async with _ua_client(sub) as client:
        with pytest.raises(BadUserAccessDenied):
            await client.get_node(sub.node_id("switch0.cmd")).write_value(True)
    assert sub.store.get("switch0.cmd").quality is Quality.INVALID


async def _viewer_cannot_write_a_setpoint(sub):
    async with _ua_client(sub, "view") as client:
        with pytest.raises(BadUserAccessDenied):
            await client.get_node(sub.node_id("trafo0.avr_auto")).write_value(
                ua.Variant(1, ua.VariantType.UInt16)
            )


async def _operator_cannot_write_a_measurement_or_status(sub):
    before = sub.store.get("bus1.vm_pu")
    async with _ua_client(sub, "op") as client:
        with pytest.raises(BadUserAccessDenied):
            await client.get_node(sub.node_id("bus1.vm_pu")).write_value(
                ua.Variant(1.2, ua.VariantType.Float)
            )
        with pytest.raises(BadUserAccessDenied):
            await client.get_node(sub.node_id("switch0.closed")).write_value(False)
    assert sub.store.get("bus1.vm_pu") == before


async def _plant_can_write_a_status(sub):
    async with _ua_client(sub, "plant") as client:
        await client.get_node(sub.node_id("switch0.closed")).write_value(False)
    assert sub.store.value("switch0.closed") == 0.0


async def _wrong_password_is_refused(sub):
    client = Client(sub.opcua_endpoint, timeout=TIMEOUT)
    client.set_user("op")
    client.set_password("not-the-password")
    with pytest.raises(ua.UaError):
        async with client:
            pass


# --- OPC UA exception paths -------------------------------------------------------------------
async def _opcua_out_of_range_and_nan(sub):
    async with _ua_client(sub, "op") as client:
        node = client.get_node(sub.node_id("trafo0.avr_vset_pu"))
        for bad in (1.5, 0.1, math.nan, math.inf):
            with pytest.raises(BadOutOfRange):
                await node.write_value(ua.Variant(bad, ua.VariantType.Float))
    assert sub.store.get("trafo0.avr_vset_pu").quality is Quality.INVALID


async def _opcua_plant_is_also_limit_checked(sub):
    async with _ua_client(sub, "plant") as client:
        with pytest.raises(BadOutOfRange):
            await client.get_node(sub.node_id("bus1.vm_pu")).write_value(
                ua.Variant(5.0, ua.VariantType.Float)
            )
        with pytest.raises(BadOutOfRange):
            await client.get_node(sub.node_id("bus1.vm_pu")).write_value(
                ua.Variant(math.inf, ua.VariantType.Float)
            )


async def _plant_marks_a_measurement_not_available(sub, mb_client):
    """NaN (isolated bus) or a Bad status from the plant: INVALID, 04 on Modbus."""
    async with _ua_client(sub, "plant") as client:
        node = client.get_node(sub.node_id("bus1.vm_pu"))
        await node.write_value(ua.Variant(math.nan, ua.VariantType.Float))
        assert sub.store.get("bus1.vm_pu").quality is Quality.INVALID
        # no quality on Modbus and no sentinel in the map: 04, never a value
        rr = await mb_client.read_input_registers(0, count=2, device_id=1)
        assert await _exc(rr) == 4
        dv = await node.read_data_value(raise_on_bad_status=False)
        assert dv.StatusCode.is_bad()
        # back to a value, with the plant's own source timestamp
        ts = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
        await node.write_value(
            ua.DataValue(ua.Variant(1.01, ua.VariantType.Float), SourceTimestamp=ts)
        )
        assert sub.store.get("bus1.vm_pu").quality is Quality.GOOD
        assert sub.store.get("bus1.vm_pu").timestamp == ts.timestamp()
        await node.write_value(
            ua.DataValue(
                ua.Variant(1.0, ua.VariantType.Float),
                StatusCode=ua.StatusCode(ua.StatusCodes.BadNoCommunication),
            )
        )
        assert sub.store.get("bus1.vm_pu").quality is Quality.INVALID


async def _opcua_type_mismatch(sub):
    async with _ua_client(sub, "op") as client:
        with pytest.raises(BadTypeMismatch):
            await client.get_node(sub.node_id("trafo0.avr_auto")).write_value(
                ua.Variant(0.5, ua.VariantType.Double)
            )
        with pytest.raises(BadTypeMismatch):
            await client.get_node(sub.node_id("trafo0.avr_vset_pu")).write_value("1.0")
        # a Double into a Float node is fine: the store holds numbers
        await client.get_node(sub.node_id("trafo0.avr_vset_pu")).write_value(1.0)
    assert sub.store.value("trafo0.avr_vset_pu") == 1.0


async def _opcua_unknown_node(sub):
    async with _ua_client(sub, "op") as client:
        ns = await client.get_namespace_index("urn:gridtwin:substation")
        node = client.get_node(f"ns={ns};s=SS1/BAY_nowhere/nowhere/cmd")
        with pytest.raises(BadNodeIdUnknown):
            await node.write_value(True)
        with pytest.raises(BadNodeIdUnknown):
            await node.read_value()


# --- Modbus exception paths --------------------------------------------------------------------
async def _exc(resp) -> int:
    assert resp.isError(), f"expected an exception response, found {resp}"
    return resp.exception_code


async def _modbus_unmapped_address_is_02(sub, mb_client):
    assert await _exc(await mb_client.read_input_registers(100, count=2, device_id=1)) == 2
    assert await _exc(await mb_client.read_input_registers(4, count=4, device_id=1)) == 2
    assert await _exc(await mb_client.read_coils(1, count=1, device_id=1)) == 2
    assert await _exc(await mb_client.read_discrete_inputs(0, count=3, device_id=1)) == 2
    assert await _exc(await mb_client.write_register(3, 1, device_id=1)) == 2
    assert await _exc(await mb_client.write_coil(9, True, device_id=1)) == 2


async def _modbus_out_of_range_and_nan_is_03(sub, mb_client):
    for bad in (1.5, math.nan, math.inf):
        resp = await mb_client.write_registers(0, f32_words(bad), device_id=1)
        assert await _exc(resp) == 3
    assert await _exc(await mb_client.write_register(2, 5, device_id=1)) == 3  # avr_auto 0..1
    assert sub.store.get("trafo0.avr_vset_pu").quality is Quality.INVALID
    assert sub.store.get("trafo0.avr_auto").quality is Quality.INVALID


async def _modbus_split_float_is_refused_and_changes_nothing(sub, mb_client):
    sub.store.set("trafo0.avr_vset_pu", 1.0)
    sub.store.set("trafo0.avr_auto", 0)
    # a single register into half a float
    assert await _exc(await mb_client.write_register(0, 0x3F80, device_id=1)) == 2
    # starts in the middle of a float
    assert await _exc(await mb_client.write_registers(1, [0, 1], device_id=1)) == 2
    # whole avr_vset + avr_auto, then half of the little-endian float at 4 (3 is unmapped)
    words = f32_words(1.05) + [1]
    assert await _exc(await mb_client.write_registers(0, words + [0], device_id=1)) == 2
    assert sub.store.value("trafo0.avr_vset_pu") == 1.0
    assert sub.store.value("trafo0.avr_auto") == 0
    # the same points, whole: accepted at once
    assert not (await mb_client.write_registers(0, words, device_id=1)).isError()
    assert sub.store.value("trafo0.avr_auto") == 1


async def _modbus_multi_write_with_one_bad_value_changes_nothing(sub, mb_client):
    sub.store.set("trafo0.avr_vset_pu", 1.0)
    resp = await mb_client.write_registers(0, f32_words(1.01) + [7], device_id=1)
    assert await _exc(resp) == 3
    assert sub.store.value("trafo0.avr_vset_pu") == 1.0


async def _modbus_unknown_unit_is_0b(sub, mb_client):
    assert await _exc(await mb_client.read_input_registers(0, count=2, device_id=9)) == 0x0B
    assert await _exc(await mb_client.write_coil(0, True, device_id=9)) == 0x0B
    # and the connection still answers afterwards (a GOOD point: an INVALID one answers 04)
    sub.store.set("switch0.cmd", 0)
    assert not (await mb_client.read_coils(0, count=1, device_id=1)).isError()


async def test_modbus_roles(net):
    # a map that (wrongly) puts a measurement in a holding register: still not writable
    pm = hand_pointmap()
    odd = _pt(
        "bus1.vm_pu",
        "bus",
        "vm_pu",
        1,
        "measurement",
        ModbusBinding(1, "holding_register", 0),
        unit="pu",
        low=0,
        high=2,
    )
    pm = PointMap(points=(odd, pm["switch0.cmd"]))
    async with EmulatedSubstation(net, pm, devices=False) as s:
        client = AsyncModbusTcpClient("127.0.0.1", port=s.modbus_port, timeout=TIMEOUT, retries=0)
        await client.connect()
        try:
            before = s.store.value("bus1.vm_pu")
            assert await _exc(await client.write_registers(0, f32_words(1.1), device_id=1)) == 2
            assert s.store.value("bus1.vm_pu") == before
        finally:
            client.close()
    async with EmulatedSubstation(net, pm, devices=False, modbus_role="plant") as s:
        client = AsyncModbusTcpClient("127.0.0.1", port=s.modbus_port, timeout=TIMEOUT, retries=0)
        await client.connect()
        try:
            assert not (await client.write_registers(0, f32_words(1.1), device_id=1)).isError()
            assert s.store.value("bus1.vm_pu") == pytest.approx(1.1, rel=1e-6)
            # the plant's NaN is "not available", not a refused value
            rr = await client.write_registers(0, f32_words(math.nan), device_id=1)
            assert not rr.isError()
            assert s.store.get("bus1.vm_pu").quality is Quality.INVALID
            # out of limits is refused for the plant too
            assert await _exc(await client.write_registers(0, f32_words(3.0), device_id=1)) == 3
        finally:
            client.close()
    await _modbus_viewer_role_writes_nothing(net)


async def _modbus_viewer_role_writes_nothing(net):
    async with EmulatedSubstation(net, hand_pointmap(), devices=False, modbus_role="viewer") as s:
        client = AsyncModbusTcpClient("127.0.0.1", port=s.modbus_port, timeout=TIMEOUT, retries=0)
        await client.connect()
        try:
            assert await _exc(await client.write_coil(0, True, device_id=1)) == 2
        finally:
            client.close()


# --- the tests above, grouped: each substation start costs an asyncua address space ----------
async def test_reads_over_modbus(sub, mb_client):
    """Initial values from the net; every Modbus table read; 04 for an INVALID float."""
    await _initial_values_come_from_the_net(sub)
    await _modbus_answers_04_for_an_invalid_float(sub, mb_client)
    await _modbus_reads_every_table(sub, mb_client)


async def test_reads_over_opcua(sub):
    await _opcua_invalid_value_has_bad_status(sub)
    await _opcua_reads_types_units_and_tree(sub)


async def test_writes_across_protocols(sub, mb_client):
    await _modbus_write_is_visible_over_opcua(sub, mb_client)
    await _opcua_write_is_visible_over_modbus(sub, mb_client)


async def test_plant_role_over_opcua(sub, mb_client):
    await _plant_writes_measurements_in_one_request(sub, mb_client)
    await _plant_can_write_a_status(sub)
    await _opcua_plant_is_also_limit_checked(sub)
    await _plant_marks_a_measurement_not_available(sub, mb_client)


async def test_roles_over_opcua(sub):
    await _anonymous_cannot_write_a_command(sub)
    await _viewer_cannot_write_a_setpoint(sub)
    await _operator_cannot_write_a_measurement_or_status(sub)
    await _wrong_password_is_refused(sub)


async def test_opcua_exception_paths(sub):
    await _opcua_out_of_range_and_nan(sub)
    await _opcua_type_mismatch(sub)
    await _opcua_unknown_node(sub)


async def test_modbus_02_and_0b(sub, mb_client):
    await _modbus_unmapped_address_is_02(sub, mb_client)
    await _modbus_unknown_unit_is_0b(sub, mb_client)


async def test_modbus_03_and_atomic_writes(sub, mb_client):
    await _modbus_out_of_range_and_nan_is_03(sub, mb_client)
    await _modbus_split_float_is_refused_and_changes_nothing(sub, mb_client)
    await _modbus_multi_write_with_one_bad_value_changes_nothing(sub, mb_client)


async def test_anonymous_sessions_can_be_refused(net):
    pm = PointMap(points=(hand_pointmap()["switch0.cmd"],))
    users = {"op": USERS["op"]}
    async with EmulatedSubstation(net, pm, users=users, devices=False, anonymous_role=None) as s:
        with pytest.raises(ua.UaError):
            async with Client(s.opcua_endpoint, timeout=TIMEOUT):
                pass
        async with _ua_client(s, "op") as client:
            await client.get_node(s.node_id("switch0.cmd")).write_value(True)
    assert s.store.value("switch0.cmd") == 1.0


async def test_modbus_other_function_codes(sub, mb_client):
    """fc 15, 22, 23 go through the same checks; an unknown function code answers 01."""
    assert not (await mb_client.write_coils(0, [True], device_id=1)).isError()
    assert sub.store.value("switch0.cmd") == 1.0
    assert await _exc(await mb_client.write_coils(0, [False, True], device_id=1)) == 2
    assert sub.store.value("switch0.cmd") == 1.0
    # fc 23: write avr_auto, read avr_vset back in one request
    sub.store.set("trafo0.avr_vset_pu", 1.0)
    rr = await mb_client.readwrite_registers(
        read_address=0, read_count=2, write_address=2, values=[1], device_id=1
    )
    assert not rr.isError(), rr
    assert f32(rr.registers) == 1.0
    assert sub.store.value("trafo0.avr_auto") == 1
    # fc 22 on avr_auto (and_mask 0, or_mask 0: clears it); on half a float: 02
    assert not (
        await mb_client.mask_write_register(address=2, and_mask=0x0000, or_mask=0x0000, device_id=1)
    ).isError()
    assert sub.store.value("trafo0.avr_auto") == 0
    assert (
        await _exc(
            await mb_client.mask_write_register(address=0, and_mask=0xFFFF, or_mask=0, device_id=1)
        )
        == 2
    )
    # a raw request with a function code nobody implements: exception 01, connection kept
    reader, writer = await asyncio.open_connection("127.0.0.1", sub.modbus_port)
    try:
        writer.write(bytes([0x12, 0x34, 0, 0, 0, 2, 1, 0x41]))  # MBAP + unit 1 + fc 0x41
        await writer.drain()
        answer = await asyncio.wait_for(reader.readexactly(9), TIMEOUT)
        assert answer[:2] == b"\x12\x34" and answer[6] == 1
        assert answer[7:] == bytes([0xC1, 0x01])
    finally:
        writer.close()
        await writer.wait_closed()
    assert not (await mb_client.read_coils(0, count=1, device_id=1)).isError()
