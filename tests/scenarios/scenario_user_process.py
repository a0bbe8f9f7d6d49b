"""A user's own SimPy process for test_scenario_events (imported as "module:function")."""

from __future__ import annotations


def ring_closer(env, twin):
    yield env.timeout(30)
    v = twin.value("bus", "vm_pu", "N4")
    twin.log("user", f"user process saw N4 at {v:.4f} pu")
    twin.command_switch("Q45", True, why="user process")
