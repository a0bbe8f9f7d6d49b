"""The emulated substation: protocol servers over one point store, plus device behaviours."""

from __future__ import annotations

from hil.emulator.substation import EmulatedSubstation, is_loopback

__all__ = ["EmulatedSubstation", "is_loopback"]
