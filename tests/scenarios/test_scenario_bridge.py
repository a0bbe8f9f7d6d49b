"""The SimPy/asyncio bridge: I/O awaited between SimPy events, realtime pacing, errors."""

from __future__ import annotations

import asyncio

import pytest
import simpy

from scenarios.bridge import Bridge


async def test_processes_await_io_in_simulated_order() -> None:
    env = simpy.Environment()
    bridge = Bridge(env)
    log: list[tuple[str, float]] = []

    async def io(tag: str) -> str:
        await asyncio.sleep(0)
        return tag.upper()

    def proc(name: str, period: float):
        for _ in range(3):
            got = yield bridge.io(io(name))
            log.append((got, env.now))
            yield env.timeout(period)

    env.process(proc("a", 2))
    env.process(proc("b", 3))
    await bridge.run(until=10)
    assert log == [("A", 0), ("B", 0), ("A", 2), ("B", 3), ("A", 4), ("B", 6)]
    assert bridge.stats.steps == 6


async def test_io_error_is_raised_in_the_process() -> None:
    env = simpy.Environment()
    bridge = Bridge(env)
    seen: list[str] = []

    async def boom() -> None:
        raise OSError("link down")

    def proc():
        try:
            yield bridge.io(boom())
        except OSError as exc:
            seen.append(str(exc))

    env.process(proc())
    await bridge.run(until=1)
    assert seen == ["link down"]


async def test_uncaught_io_error_stops_the_run() -> None:
    env = simpy.Environment()
    bridge = Bridge(env)

    async def boom() -> None:
        raise OSError("gone")

    def proc():
        yield bridge.io(boom())

    env.process(proc())
    with pytest.raises(OSError, match="gone"):
        await bridge.run(until=1)


async def test_realtime_pace_follows_a_fake_wall_clock() -> None:
    # A fake wall clock: no real waiting, no timing assertions.
    now = [100.0]
    env = simpy.Environment()
    bridge = Bridge(env, pace="realtime", speed=10.0, clock=lambda: now[0])

    async def io() -> None:
        now[0] += 0.25  # each I/O takes 0.25 wall seconds

    def proc():
        for _ in range(4):
            yield bridge.io(io())
            yield env.timeout(1.0)  # 0.1 wall seconds at speed 10: the I/O overruns it

    env.process(proc())
    await bridge.run(until=3.0)
    s = bridge.stats.summary()
    assert s["pace"] == "realtime" and s["io_calls"] == 4
    # it fell behind: 0.25 s of I/O per 0.1 s of wall budget, 0.15 s more at every step
    assert s["lag_max_s"] == pytest.approx(0.45)
    assert s["wall_s"] == pytest.approx(1.0)


def test_bad_arguments() -> None:
    env = simpy.Environment()
    with pytest.raises(ValueError, match="pace"):
        Bridge(env, pace="slow")
    with pytest.raises(ValueError, match="speed"):
        Bridge(env, speed=0)
