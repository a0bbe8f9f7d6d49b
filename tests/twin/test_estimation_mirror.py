"""twin.estimation: WLS estimation from field samples, bad data, divergence per point."""

from __future__ import annotations

import copy
import math
import warnings

import pandapower as pp
import pandapower.networks as pn
import pytest

from twin.estimation import (
    StateEstimator,
    default_tolerance,
    divergences,
    measured_points,
)
from twin.pointmap import Point
from twin.quality import Quality, Sample

T = 1000.0


def _net():
    net = pn.example_simple()
    net.load["scaling"] = 1.0  # the field reports actual P/Q; keep set-point == consumption
    net.sgen["scaling"] = 1.0
    return net


def _solved(net):
    res = copy.deepcopy(net)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pp.runpp(res, lightsim2grid=False)
    return res


def _points(net) -> list[Point]:
    pts = []
    for b in net.bus.index:
        pts.append(Point(f"bus{b}.vm_pu", "bus", "vm_pu", int(b), "to_twin", "measurement", "pu"))
    for i in net.line.index:
        for col, unit in (("p_from_mw", "MW"), ("q_from_mvar", "Mvar"), ("loading_percent", "%")):
            pts.append(Point(f"line{i}.{col}", "line", col, int(i), "to_twin", "measurement", unit))
    for i in net.trafo.index:
        for col, unit in (("p_hv_mw", "MW"), ("q_hv_mvar", "Mvar")):
            pts.append(
                Point(f"trafo{i}.{col}", "trafo", col, int(i), "to_twin", "measurement", unit)
            )
    for i in net.load.index:
        for col, unit in (("p_mw", "MW"), ("q_mvar", "Mvar")):
            pts.append(Point(f"load{i}.{col}", "load", col, int(i), "to_twin", "measurement", unit))
    # a device column and a to_field point: never measured
    pts.append(Point("trafo0.avr_vset_pu", "trafo", "avr_vset_pu", 0, "to_field", "setpoint"))
    return pts


def _field(res, points) -> dict[str, Sample]:
    out = {}
    for p in points:
        if p.direction != "to_twin":
            continue
        out[p.name] = Sample.good(float(res["res_" + p.table].at[p.element, p.column]), T)
    return out


@pytest.fixture(scope="module")
def case():
    net = _net()
    pts = _points(net)
    return net, pts, _field(_solved(net), pts)


def test_measured_points_skip_device_and_to_field(case):
    net, pts, _ = case
    names = {p.name for p in measured_points(pts)}
    assert "trafo0.avr_vset_pu" not in names
    assert "bus1.vm_pu" in names and "line0.loading_percent" in names


def test_exact_measurements_give_no_divergence(case):
    net, pts, field = case
    est = StateEstimator(net, measured_points(pts))
    res = est.estimate(field)
    assert res.success, res.error
    assert res.bad_data == ()
    assert res.measurements > len(net.bus)
    divs = divergences(measured_points(pts), field, res.estimates, T)
    assert len(divs) >= len(net.bus) + 2 * len(net.line)
    worst = max(divs, key=lambda d: d.difference / d.tolerance)
    assert not worst.exceeded, worst.message
    assert abs(res.estimates["bus3.vm_pu"] - field["bus3.vm_pu"].value) < 1e-4
    # the load estimate comes from its bus's estimated injection
    assert res.estimates["load0.p_mw"] == pytest.approx(field["load0.p_mw"].value, abs=1e-3)


def test_biased_voltage_is_bad_data_and_diverges_alone(case):
    net, pts, field = case
    biased = dict(field)
    b = field["bus3.vm_pu"]
    biased["bus3.vm_pu"] = Sample(b.value + 0.05, Quality.GOOD, T)
    est = StateEstimator(net, measured_points(pts), bad_data="rn_max")
    res = est.estimate(biased)
    assert res.success, res.error
    assert "bus3.vm_pu" in res.bad_data
    divs = divergences(measured_points(pts), biased, res.estimates, T)
    exceeded = [d for d in divs if d.exceeded]
    assert [d.point for d in exceeded] == ["bus3.vm_pu"]
    d = exceeded[0]
    assert d.field_value == pytest.approx(b.value + 0.05)
    assert d.twin_value == pytest.approx(b.value, abs=2e-3)
    assert "bus3.vm_pu" in d.message and "t=1000.000" in d.message


@pytest.mark.parametrize("bad_data", ["chi2", "none"])
def test_other_bad_data_modes_run(case, bad_data):
    net, pts, field = case
    res = StateEstimator(net, measured_points(pts), bad_data=bad_data).estimate(field)
    assert res.success, res.error
    assert res.bad_data == ()


def test_non_good_samples_are_not_measurements(case):
    net, pts, field = case
    mp = measured_points(pts)
    est = StateEstimator(net, mp)
    full = est.estimate(field).measurements
    partial = dict(field)
    partial["line0.p_from_mw"] = Sample(123.0, Quality.STALE, T)
    partial["line0.q_from_mvar"] = Sample(math.nan, Quality.INVALID, T)
    res = est.estimate(partial)
    assert res.success and res.measurements == full - 2
    # a stale field value is never compared: no alarm from data we do not trust
    names = {d.point for d in divergences(mp, partial, res.estimates, T)}
    assert "line0.p_from_mw" not in names and "line0.q_from_mvar" not in names


def test_estimator_never_writes_the_model_net(case):
    net, pts, field = case
    before = copy.deepcopy(net)
    est = StateEstimator(net, measured_points(pts))
    est.estimate(field, net=net)
    assert "res_bus_est" not in net or net.res_bus_est.equals(before.get("res_bus_est"))
    assert net.measurement.equals(before.measurement)


def test_estimator_follows_topology_of_the_model_net(case):
    net, pts, _ = case
    opened = copy.deepcopy(net)
    # open the line breaker feeding the load's line: the estimate must see the new topology
    sw = opened.switch.index[(opened.switch.et == "l") & opened.switch.closed][0]
    opened.switch.at[sw, "closed"] = False
    field = _field(_solved(opened), pts)
    est = StateEstimator(net, measured_points(pts))
    res = est.estimate(field, net=opened)
    assert res.success, res.error
    assert bool(est.net.switch.at[sw, "closed"]) is False
    divs = divergences(measured_points(pts), field, res.estimates, T)
    assert not [d.message for d in divs if d.exceeded]


def test_no_good_measurement_is_a_failure_not_a_raise(case):
    net, pts, _ = case
    res = StateEstimator(net, measured_points(pts)).estimate({})
    assert not res.success and "no GOOD" in res.error


def test_default_tolerance():
    p = Point("b.vm_pu", "bus", "vm_pu", 0, "to_twin", "measurement", "pu")
    assert default_tolerance(p) == 0.01
    p2 = Point("b.vm_pu", "bus", "vm_pu", 0, "to_twin", "measurement", "pu", tolerance=0.002)
    assert default_tolerance(p2) == 0.002
    p3 = Point("l.p", "line", "p_from_mw", 0, "to_twin", "measurement", "")
    assert default_tolerance(p3) == 0.1


def test_bad_data_choice_is_checked(case):
    net, pts, _ = case
    with pytest.raises(ValueError, match="bad_data"):
        StateEstimator(net, pts, bad_data="magic")  # type: ignore[arg-type]
