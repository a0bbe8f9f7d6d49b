"""The field facade a scenario drives: a local model only, the emulated substation, or real
hardware from a ``hardware.toml``. Every one is a :class:`Field` (see ``hil.field.base``)."""

from hil.field.base import Field, SimClock, StepOutcome, alarm_dict
from hil.field.emulated import EmulatedField
from hil.field.hardware import HardwareField
from hil.field.local import LocalField

__all__ = [
    "EmulatedField",
    "Field",
    "HardwareField",
    "LocalField",
    "SimClock",
    "StepOutcome",
    "alarm_dict",
]
