"""The emulated substation: protocol servers over one point store, plus device behaviours.

The package itself imports nothing heavy: ``hil.emulator.devices`` (say) loads without the
protocol servers, and :class:`EmulatedSubstation` (with the OPC UA stack behind it) loads on
first use of the name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hil.emulator.substation import EmulatedSubstation, is_loopback

__all__ = ["EmulatedSubstation", "is_loopback"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from hil.emulator import substation

        return getattr(substation, name)
    raise AttributeError(f"module 'hil.emulator' has no attribute {name!r}")
