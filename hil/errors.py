"""Errors of the hardware layer: every error raised on purpose by ``hil`` roots at HilError."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from twin.errors import TwinError

if TYPE_CHECKING:
    from twin.pointmap import Point


class HilError(TwinError):
    """Root of field-link, emulator and sync-loop I/O errors."""


class HilTimeout(HilError, TimeoutError):
    """A device did not answer in time."""

    def __init__(self, what: str, timeout_s: float) -> None:
        self.what = what
        self.timeout_s = timeout_s
        super().__init__(f"{what}: no answer within {timeout_s:g} s")


class CommsLost(HilError, ConnectionError):
    """A field link is down (refused, reset, or closed by the peer)."""


class ProtocolError(HilError):
    """A device answered with a protocol error.

    Attributes:
        protocol: "modbus" or "opcua".
        code: Modbus exception code (int) or OPC UA status code name (str).
        point: the point-map name concerned, when known.
    """

    def __init__(self, protocol: str, code: int | str, message: str, point: str | None = None):
        self.protocol = protocol
        self.code = code
        self.point = point
        where = f"point {point!r}: " if point else ""
        code_txt = f"0x{code:02X}" if isinstance(code, int) else str(code)
        super().__init__(f"{where}{protocol} error {code_txt}: {message}")


class WriteRejected(HilError, PermissionError):
    """A write the point map (or the role) does not allow; nothing was sent."""


class OutOfRange(HilError, ValueError):
    """A written value outside the point's limits, or NaN/inf; nothing was changed."""

    def __init__(self, point: str, value: object, low: float | None, high: float | None) -> None:
        self.point = point
        self.value = value
        super().__init__(
            f"point {point!r}: expected a finite value in [{low}, {high}], found {value!r}"
        )


class UnknownPoint(HilError, KeyError):
    """A point name, node id or address that the point map does not define."""

    def __str__(self) -> str:
        return str(self.args[0])


def value_within_limits(point: Point, value: object) -> float:
    """``value`` as a float when it is finite and inside the point's write limits.

    Raises:
        OutOfRange: not a number, NaN/inf, or outside ``[point.low, point.high]``.
    """
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise OutOfRange(point.name, value, point.low, point.high) from None
    if (
        not math.isfinite(v)
        or (point.low is not None and v < point.low)
        or (point.high is not None and v > point.high)
    ):
        raise OutOfRange(point.name, value, point.low, point.high)
    return v
