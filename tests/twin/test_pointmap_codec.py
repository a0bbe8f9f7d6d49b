"""Register codec: every data type x word order, scale/offset, NaN <-> sentinel, range errors."""

from __future__ import annotations

import math
import struct

import pytest

from twin.errors import InvalidInput, TwinError
from twin.pointmap import (
    DATA_TYPES,
    ModbusBinding,
    Point,
    RegisterValueError,
    decode_registers,
    encode_registers,
)


def _pt(dtype: str, word_order: str = "big", *, table: str | None = None, **kw) -> Point:
    if table is None:
        table = "discrete_input" if dtype == "bool" else "input_register"
    return Point(
        name=f"X.{dtype}",
        table="bus",
        column="vm_pu",
        element=0,
        direction="to_field",
        kind="measurement",
        modbus=ModbusBinding(
            unit=1, table=table, address=0, dtype=dtype, word_order=word_order, **kw
        ),
    )


# (dtype, value, big-word-order registers): known vectors worked out by hand
KNOWN = [
    ("int16", -1, [0xFFFF]),
    ("int16", 300, [0x012C]),
    ("uint16", 65535, [0xFFFF]),
    ("int32", -2, [0xFFFF, 0xFFFE]),
    ("int32", 0x12345678, [0x1234, 0x5678]),
    ("uint32", 0x89ABCDEF, [0x89AB, 0xCDEF]),
    ("float32", 1.0, [0x3F80, 0x0000]),
    ("float32", -2.5, [0xC020, 0x0000]),
    ("float64", 1.0, [0x3FF0, 0, 0, 0]),
    ("float64", -0.5, [0xBFE0, 0, 0, 0]),
]


@pytest.mark.parametrize("word_order", ["big", "little"])
@pytest.mark.parametrize(("dtype", "value", "big_regs"), KNOWN)
def test_encode_decode_known_vectors(dtype, value, big_regs, word_order):
    p = _pt(dtype, word_order)
    expected = big_regs if word_order == "big" else big_regs[::-1]
    assert encode_registers(p, value) == expected
    assert decode_registers(p, expected) == pytest.approx(value)


@pytest.mark.parametrize("word_order", ["big", "little"])
@pytest.mark.parametrize("dtype", [t for t in DATA_TYPES if t != "bool"])
def test_matches_pymodbus_convert_to_registers(dtype, word_order):
    """An independent implementation agrees on every register dtype and word order."""
    from pymodbus.client import ModbusTcpClient

    value = {
        "int16": -1234,
        "uint16": 54321,
        "int32": -123456,
        "uint32": 3_000_000_000,
        "float32": -12.375,
        "float64": 1234.5678,
    }[dtype]
    theirs = ModbusTcpClient.convert_to_registers(
        value, getattr(ModbusTcpClient.DATATYPE, dtype.upper()), word_order=word_order
    )
    p = _pt(dtype, word_order)
    assert encode_registers(p, value) == list(theirs)
    assert decode_registers(p, theirs) == pytest.approx(value)


def test_bool_points_encode_one_bit():
    p = _pt("bool")
    assert encode_registers(p, True) == [1]
    assert encode_registers(p, 0.0) == [0]
    assert decode_registers(p, [1]) == 1.0
    assert decode_registers(p, [0]) == 0.0


@pytest.mark.parametrize("word_order", ["big", "little"])
@pytest.mark.parametrize(
    ("dtype", "sentinel"),
    [
        ("int16", 32767),
        ("int16", -32768),
        ("uint16", 65535),
        ("int32", -(2**31)),
        ("uint32", 2**32 - 1),
        ("float32", -9999.0),
        ("float64", -1e300),
    ],
)
def test_nan_round_trips_through_the_sentinel(dtype, sentinel, word_order):
    p = _pt(dtype, word_order, na_sentinel=sentinel, scale=0.1, offset=5.0)
    regs = encode_registers(p, math.nan)
    # the sentinel is a raw value: no scale/offset applied to it
    assert regs == encode_registers(_pt(dtype, word_order), sentinel)
    assert math.isnan(decode_registers(p, regs))
    # an ordinary value still decodes as itself
    assert decode_registers(p, encode_registers(p, 7.0)) == pytest.approx(7.0, abs=0.06)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_float_nan_without_sentinel_is_ieee_nan(dtype):
    p = _pt(dtype)
    regs = encode_registers(p, float("nan"))
    raw = b"".join(r.to_bytes(2, "big") for r in regs)
    assert math.isnan(struct.unpack(">f" if dtype == "float32" else ">d", raw)[0])
    assert math.isnan(decode_registers(p, regs))


@pytest.mark.parametrize("dtype", ["int16", "uint16", "int32", "uint32"])
def test_integer_nan_without_sentinel_is_an_error(dtype):
    with pytest.raises(RegisterValueError, match=r"point 'X\.\w+'.*sentinel"):
        encode_registers(_pt(dtype), math.nan)


@pytest.mark.parametrize(
    ("dtype", "value", "scale", "offset", "raw"),
    [
        ("int16", -12.3, 0.1, 0.0, -123),  # negative scaled value
        ("uint16", 25.0, 0.1, -40.0, 650),  # temperature-style offset
        ("int32", -1000.5, 0.5, 0.0, -2001),
        ("uint16", 1.0, 0.001, 0.0, 1000),
        ("float32", 230.0, 10.0, 0.0, 23.0),
    ],
)
def test_scale_and_offset(dtype, value, scale, offset, raw):
    p = _pt(dtype, scale=scale, offset=offset)
    regs = encode_registers(p, value)
    assert regs == encode_registers(_pt(dtype), raw)
    assert decode_registers(p, regs) == pytest.approx(value)


@pytest.mark.parametrize(
    ("dtype", "value"),
    [
        ("uint16", 70000),
        ("uint16", -1),
        ("int16", 40000),
        ("int16", -32769),
        ("uint32", 2**32),
        ("int32", -(2**31) - 1),
        ("float32", 1e39),
    ],
)
def test_out_of_range_raw_value_names_the_point(dtype, value):
    with pytest.raises(RegisterValueError) as info:
        encode_registers(_pt(dtype), value)
    assert f"'X.{dtype}'" in str(info.value)
    assert isinstance(info.value, InvalidInput) and isinstance(info.value, TwinError)


def test_scaled_value_out_of_range():
    # 700 with scale 0.01 is raw 70000: too big for uint16
    with pytest.raises(RegisterValueError, match="70000"):
        encode_registers(_pt("uint16", scale=0.01), 700.0)


def test_infinity_and_non_numbers_are_rejected():
    with pytest.raises(RegisterValueError, match="finite"):
        encode_registers(_pt("float32"), math.inf)
    with pytest.raises(RegisterValueError, match="a number"):
        encode_registers(_pt("float32"), "high")


def test_decode_rejects_wrong_count_and_bad_registers():
    with pytest.raises(RegisterValueError, match="2 register"):
        decode_registers(_pt("float32"), [1])
    with pytest.raises(RegisterValueError, match="0..65535"):
        decode_registers(_pt("uint16"), [70000])
    with pytest.raises(RegisterValueError, match="0..65535"):
        decode_registers(_pt("int16"), [-1])


def test_point_without_modbus_binding():
    p = Point(
        name="A.b", table="bus", column="vm_pu", element=0, direction="to_field", kind="measurement"
    )
    with pytest.raises(RegisterValueError, match="Modbus binding"):
        encode_registers(p, 1.0)
