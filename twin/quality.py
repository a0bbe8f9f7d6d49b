"""Quality and source timestamp of a field value: no value is trusted without both."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass


class Quality(enum.Enum):
    GOOD = "good"
    STALE = "stale"  # not refreshed within stale_factor * expected interval
    INVALID = "invalid"  # NaN, "not available" sentinel, out of physical range, bad status code
    COMMS_LOST = "comms_lost"  # the link to the device is down

    @property
    def is_good(self) -> bool:
        return self is Quality.GOOD


@dataclass(frozen=True, slots=True)
class Sample:
    """A value as seen from the field: value, quality, source timestamp (POSIX seconds)."""

    value: float
    quality: Quality
    timestamp: float

    @classmethod
    def good(cls, value: float, timestamp: float) -> Sample:
        v = float(value)
        return cls(v, Quality.GOOD if math.isfinite(v) else Quality.INVALID, timestamp)

    def aged(self, now: float, max_age_s: float) -> Sample:
        """This sample, marked stale if older than ``max_age_s`` at ``now``."""
        if self.quality is Quality.GOOD and now - self.timestamp > max_age_s:
            return Sample(self.value, Quality.STALE, self.timestamp)
        return self
