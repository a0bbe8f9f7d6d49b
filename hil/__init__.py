"""gridtwin's hardware layer: field links, the emulated substation, the sync loop (all asyncio)."""

from hil.errors import (
    CommsLost,
    HilError,
    HilTimeout,
    OutOfRange,
    ProtocolError,
    UnknownPoint,
    WriteRejected,
)

__all__ = [
    "CommsLost",
    "HilError",
    "HilTimeout",
    "OutOfRange",
    "ProtocolError",
    "UnknownPoint",
    "WriteRejected",
]
