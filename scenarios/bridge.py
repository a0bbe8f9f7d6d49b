"""The one place where SimPy (simulated time) meets asyncio (field I/O).

SimPy processes never touch the event loop; when one needs I/O it yields ``bridge.io(coro)``.
The driver, :meth:`Bridge.run`, is a coroutine: it steps the SimPy environment until a process is
waiting on I/O, awaits that coroutine on the asyncio loop, hands the result back to SimPy (as the
value of the yielded event, or its exception), and goes on. In realtime pace it waits, before each
simulated instant, until the wall clock reaches ``t / speed``; lateness is kept as lag statistics.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import simpy


@dataclass
class PaceStats:
    """How well a realtime run kept up with the wall clock."""

    pace: str
    speed: float
    steps: int = 0
    lag_s: list[float] = field(default_factory=list)  # wall lateness at each simulated instant
    io_s: list[float] = field(default_factory=list)  # wall time spent awaiting field I/O
    wall_s: float = 0.0

    def summary(self) -> dict[str, float | int | str]:
        lag = sorted(self.lag_s) or [0.0]
        io = sorted(self.io_s) or [0.0]

        def pct(xs: list[float], q: float) -> float:
            return xs[min(len(xs) - 1, int(math.ceil(q * len(xs))) - 1 if len(xs) > 1 else 0)]

        return {
            "pace": self.pace,
            "speed": self.speed,
            "io_calls": self.steps,
            "wall_s": round(self.wall_s, 6),
            "lag_mean_s": round(sum(lag) / len(lag), 6),
            "lag_p95_s": round(pct(lag, 0.95), 6),
            "lag_max_s": round(lag[-1], 6),
            "io_mean_s": round(sum(io) / len(io), 6),
            "io_max_s": round(io[-1], 6),
        }


class Bridge:
    """Runs a SimPy environment with asyncio I/O in between (see the module docstring).

    Args:
        env: the SimPy environment (simulated seconds).
        pace: "fast" (no waiting) or "realtime" (simulated time follows the wall clock).
        speed: realtime factor, 2.0 = two simulated seconds per wall second.
        clock: the wall clock (monotonic seconds).
    """

    def __init__(
        self,
        env: simpy.Environment,
        *,
        pace: str = "fast",
        speed: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if pace not in ("fast", "realtime"):
            raise ValueError(f"pace: expected fast or realtime, found {pace!r}")
        if speed <= 0:
            raise ValueError(f"speed: expected a factor > 0, found {speed!r}")
        self.env = env
        self.pace = pace
        self.speed = float(speed)
        self.clock = clock
        self.stats = PaceStats(pace, self.speed)
        self._pending: list[tuple[simpy.Event, Awaitable[Any]]] = []
        self._wall0: float | None = None
        self._stopped = False

    def stop(self) -> None:
        """End :meth:`run` after the current SimPy step (a process that cannot go on)."""
        self._stopped = True

    def io(self, awaitable: Awaitable[Any]) -> simpy.Event:
        """An event a SimPy process yields; it fires with the awaitable's result."""
        ev = self.env.event()
        self._pending.append((ev, awaitable))
        return ev

    def wall_target(self, t: float) -> float:
        """Wall-clock instant at which simulated time ``t`` is due (realtime pace)."""
        assert self._wall0 is not None
        return self._wall0 + t / self.speed

    async def run(self, until: float) -> None:
        """Drive the environment up to simulated time ``until`` (inclusive)."""
        env = self.env
        self._wall0 = self.clock()
        last_t = -1.0
        try:
            while True:
                while self._pending:
                    ev, aw = self._pending.pop(0)
                    t0 = self.clock()
                    try:
                        result = await aw
                    except Exception as exc:  # handed to the SimPy process that asked
                        ev.fail(exc)
                    else:
                        ev.succeed(result)
                    self.stats.io_s.append(self.clock() - t0)
                    self.stats.steps += 1
                if self._stopped:
                    break
                nxt = env.peek()
                if nxt == math.inf or nxt > until:
                    break
                if self.pace == "realtime" and nxt > last_t:
                    delay = self.wall_target(nxt) - self.clock()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    self.stats.lag_s.append(max(0.0, self.clock() - self.wall_target(nxt)))
                    last_t = nxt
                env.step()
        finally:
            # Never leave an un-awaited coroutine behind (it would warn at garbage collection).
            for _, aw in self._pending:
                close = getattr(aw, "close", None)
                if close is not None:
                    close()
            self._pending.clear()
            self.stats.wall_s = self.clock() - self._wall0


def run_blocking(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``main()`` on a fresh asyncio event loop until it returns (the run's one loop)."""
    asyncio.run(main())
