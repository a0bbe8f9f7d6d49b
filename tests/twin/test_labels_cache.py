"""twin.labels memoises labels per table content: a change to the table is never answered from
the cache, and callers cannot change the cached answer."""

from __future__ import annotations

import math

import pandapower as pp
import pytest

from twin import labels as L


def _net():
    net = pp.create_empty_network()
    for k in range(4):
        pp.create_bus(net, vn_kv=20.0, name=f"B{k}")
    return net


def _fresh(net, table):
    """The rule computed without the cache."""
    return L._compute_labels(net[table], table)


def test_repeated_calls_agree_with_the_rule_and_hit_the_cache():
    net = _net()
    first = L.table_labels(net, "bus")
    n = len(L._CACHE)
    assert L.table_labels(net, "bus") == first == _fresh(net, "bus")
    assert len(L._CACHE) == n  # the second call was a hit
    assert L.label_index(net, "bus") == {v: k for k, v in first.items()}


@pytest.mark.parametrize(
    "change",
    ["rename", "rename_to_generated", "duplicate", "blank", "nan", "add", "drop", "reindex"],
)
def test_a_changed_table_is_relabelled(change):
    net = _net()
    before = L.table_labels(net, "bus")
    if change == "rename":
        net.bus.at[1, "name"] = "NEW"
    elif change == "rename_to_generated":
        net.bus.at[1, "name"] = "bus2"  # shadows element 2's generated label: not a label
    elif change == "duplicate":
        net.bus.at[1, "name"] = "B0"
    elif change == "blank":
        net.bus.at[1, "name"] = "  "
    elif change == "nan":
        net.bus.at[1, "name"] = math.nan
    elif change == "add":
        pp.create_bus(net, vn_kv=20.0, name="B9")
    elif change == "drop":
        net.bus.drop(index=[3], inplace=True)
    elif change == "reindex":
        net.bus.index = [10, 11, 12, 13]
    after = L.table_labels(net, "bus")
    assert after == _fresh(net, "bus")
    assert after != before
    assert L.label_index(net, "bus") == {v: k for k, v in after.items()}
    for i, lab in after.items():
        assert L.element_label(net, "bus", i) == lab
        assert L.resolve_label(net, "bus", lab) == i


def test_nan_names_hit_the_cache():
    net = _net()
    net.bus["name"] = math.nan  # NaN is never equal to itself: it must not defeat the key
    L.table_labels(net, "bus")
    n = len(L._CACHE)
    assert L.table_labels(net, "bus") == {i: f"bus{i}" for i in net.bus.index}
    assert len(L._CACHE) == n


def test_callers_cannot_change_the_cached_answer():
    net = _net()
    L.table_labels(net, "bus")[0] = "changed"
    L.label_index(net, "bus")["changed"] = 0
    assert L.table_labels(net, "bus")[0] == "B0"
    assert "changed" not in L.label_index(net, "bus")


def test_the_cache_is_bounded():
    net = _net()
    for k in range(L._CACHE_MAX + 20):
        net.bus.at[0, "name"] = f"X{k}"
        assert L.element_label(net, "bus", 0) == f"X{k}"
    assert len(L._CACHE) <= L._CACHE_MAX
