"""hil.plausibility.PlausibilityCheck on its own: the vectorised screen, statuses, staleness,
the alarm lifecycle (start once, end only on a plausible GOOD value)."""

from __future__ import annotations

import dataclasses
import math

import pandapower as pp
import pytest

from hil.plausibility import PlausibilityCheck
from twin.pointmap import generate_pointmap
from twin.quality import Quality, Sample


@pytest.fixture
def rig():
    net = pp.create_empty_network()
    b0, b1 = pp.create_bus(net, 20.0, name="MV"), pp.create_bus(net, 0.4, name="LV")
    pp.create_ext_grid(net, b0)
    pp.create_transformer(net, b0, b1, "0.63 MVA 20/0.4 kV", name="T1")
    pp.create_switch(net, b0, 0, "t", name="Q1")
    pp.create_sgen(net, b1, p_mw=0.02, sn_mva=0.03, name="PV")
    pm = generate_pointmap(net, mode="hil")
    inputs = [p for p in pm.points if p.direction == "to_twin"]
    return net, inputs


def good(v: float) -> Sample:
    return Sample(v, Quality.GOOD, 0.0)


def samples_of(inputs, **values):
    base = {"Q1.closed": 1.0, "Q1.operations": 0.0, "T1.tap_pos": 0.0, "PV.p_mw": 0.02,
            "PV.q_mvar": 0.0}  # fmt: skip
    base.update({k.replace("__", "."): v for k, v in values.items()})
    return {p.name: good(base[p.name]) for p in inputs}


def test_screen_marks_holds_and_clears(rig):
    net, inputs = rig
    chk = PlausibilityCheck(net, inputs)
    s = samples_of(inputs)
    assert chk.screen(s, 0.0) == ([], [])
    s = samples_of(inputs, PV__p_mw=1e30, Q1__closed=0.5, T1__tap_pos=99.0)
    started, ended = chk.screen(s, 1.0)
    assert sorted(i.point for i in started) == ["PV.p_mw", "Q1.closed", "T1.tap_pos"]
    assert ended == []
    for n in ("PV.p_mw", "Q1.closed", "T1.tap_pos"):
        assert s[n].quality is Quality.INVALID and math.isnan(chk.values[chk.position[n]])
    assert s["PV.q_mvar"].quality is Quality.GOOD
    msg = {i.point: i.message for i in started}
    assert "expected 0 or 1" in msg["Q1.closed"]
    assert "tap_min..tap_max" in msg["T1.tap_pos"]
    # still bad: no new start; stale meanwhile: not an end either
    started, ended = chk.screen(samples_of(inputs, PV__p_mw=1e30), 2.0)
    assert started == [] and sorted(i.point for i in ended) == ["Q1.closed", "T1.tap_pos"]
    stale = samples_of(inputs)
    stale["PV.p_mw"] = Sample(0.02, Quality.STALE, 0.0)
    started, ended = chk.screen(stale, 3.0)
    assert "PV.p_mw" not in [i.point for i in ended] and "PV.p_mw" in chk.implausible_now()
    started, ended = chk.screen(samples_of(inputs), 4.0)
    assert started == [] and [i.point for i in ended] == ["PV.p_mw"]
    assert chk.implausible_now() == []


def test_rate_limit_and_disabled_check(rig):
    net, inputs = rig
    edited = [dataclasses.replace(p, max_rate=0.001) if p.name == "PV.p_mw" else p for p in inputs]
    chk = PlausibilityCheck(net, edited)
    chk.screen(samples_of(inputs, PV__p_mw=0.02), 0.0)
    (im,) = chk.screen(samples_of(inputs, PV__p_mw=0.025), 1.0)[0]
    assert "max_rate 0.001" in im.message and im.held == pytest.approx(0.02)
    assert chk.screen(samples_of(inputs, PV__p_mw=0.025), 6.0)[1][0].point == "PV.p_mw"
    off = PlausibilityCheck(net, inputs, enabled=False)
    s = samples_of(inputs, PV__p_mw=1e30)
    assert off.screen(s, 0.0) == ([], []) and s["PV.p_mw"].quality is Quality.GOOD
