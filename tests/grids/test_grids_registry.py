"""grids.names/load/info: every bundled grid loads, matches its spec and converges."""

from __future__ import annotations

import dataclasses

import pandapower
import pytest

import grids
from grids.registry import SPECS
from twin.errors import GridDataError, UnknownGridError

BUNDLED = [
    "ieee9",
    "ieee14",
    "ieee30",
    "ieee57",
    "ieee118",
    "ieee300",
    "case1354pegase",
    "case2869pegase",
    "case9241pegase",
    "cigre_mv",
    "cigre_lv",
    "mv_oberrhein",
    "kerber_landnetz",
    "urban_district",
]


def test_names_are_exactly_the_bundled_grids_in_order() -> None:
    assert grids.names() == BUNDLED


@pytest.mark.parametrize("name", BUNDLED)
def test_grid_loads_matches_spec_counts_and_converges(name: str) -> None:
    net = grids.load(name)
    info = grids.info(name)
    counts = {t: len(net[t]) for t in grids.COUNT_TABLES}
    assert counts == info.counts, f"{name}: spec counts {info.counts} != loaded {counts}"
    assert net["_ppc"] is None  # no stale saved ppc (mv_oberrhein ships one)
    pandapower.runpp(net, lightsim2grid=False)
    assert net.converged
    vm = net.res_bus.vm_pu.dropna()
    assert len(vm) > 0
    assert vm.between(0.5, 1.5).all(), f"{name}: implausible voltages {vm.min()}..{vm.max()}"


@pytest.mark.parametrize("name", BUNDLED)
def test_info_cites_a_source(name: str) -> None:
    info = grids.info(name)
    assert info.name == name
    assert len(info.source) > 30 and info.short_source
    assert info.description
    assert info.bundled
    assert info.synthetic == (name == "urban_district")
    assert info.buses > 0


def test_synthetic_grid_says_so_and_cites_the_practice_it_follows() -> None:
    info = grids.info("urban_district")
    assert "synthetic" in info.source.lower()
    assert "vietnam" in info.source.lower()
    assert "not based on any real utility" in info.source


def test_load_returns_independent_nets() -> None:
    a = grids.load("ieee14")
    b = grids.load("ieee14")
    assert a is not b
    assert a.bus is not b.bus
    a.load.loc[a.load.index[0], "p_mw"] = 999.0
    a.bus.drop(a.bus.index[-1], inplace=True)
    assert b.load.p_mw.iloc[0] != 999.0
    c = grids.load("ieee14")  # the cache is not touched by mutating a returned net
    assert len(c.bus) == 14
    assert c.load.p_mw.iloc[0] == b.load.p_mw.iloc[0]


def test_unknown_name_lists_the_known_grids() -> None:
    with pytest.raises(UnknownGridError) as err:
        grids.load("ieee15")
    msg = str(err.value)
    assert "'ieee15'" in msg
    for name in BUNDLED:
        assert name in msg
    assert err.value.known == BUNDLED
    assert isinstance(err.value, KeyError) and isinstance(err.value, GridDataError)
    with pytest.raises(UnknownGridError):
        grids.info("nope")


def test_info_is_frozen_and_the_spec_table_read_only() -> None:
    info = grids.info("ieee9")
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.buses = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        SPECS["mine"] = SPECS["ieee9"]  # type: ignore[index]
    assert grids.info("ieee9").buses == 9


def test_mv_oberrhein_matches_pandapower_networks_inputs() -> None:
    """Our loader skips pandapower's final runpp; the input tables must stay identical."""
    import pandapower.networks
    from pandapower.toolbox import nets_equal

    ours = grids.load("mv_oberrhein")
    theirs = pandapower.networks.mv_oberrhein()
    skip = [k for k in theirs.keys() if k.startswith("res_")] + ["_options", "_ppc"]
    assert nets_equal(ours, theirs, check_only_results=False, exclude_elms=skip)
    assert list(ours.load.scaling.unique()) == [0.6]


def test_kerber_landnetz_is_the_same_grid_whatever_the_random_state() -> None:
    # pandapower draws its cable types from Python's global random: bundled means reproducible
    import random

    from grids.registry import _kerber_landnetz

    random.seed(1)
    a = _kerber_landnetz()
    random.seed(2)
    b = _kerber_landnetz()
    assert list(a.line.std_type) == list(b.line.std_type)
    assert a.line.r_ohm_per_km.tolist() == b.line.r_ohm_per_km.tolist()
    random.seed(3)
    expected = random.random()
    random.seed(3)
    _kerber_landnetz()
    assert random.random() == expected  # the caller's random state is left as it was
