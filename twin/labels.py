"""Element labels and their resolution: the one rule every layer uses.

An element's *label* is its ``name`` when that is usable, else ``<table><index>`` (``line3``).
A name is usable when it is a non-blank string, unique in its table, free of ``/`` (it would
break an OPC UA browse path) and not of the ``<table><digits>`` form of another element (it
would shadow that element's label). Names are used as they are, not stripped, so that binding
by the label finds the element. Numeric names (MATPOWER buses 1..n) are not names: they would be
confused with indices.

The point map (generated names ``<label>.<column>``), profiles and events (``element``,
``match``), the emulated devices (one device per labelled element), the sync loop's record
columns, checks and the twin's OPC UA server all call these functions, so an element has one
name everywhere (``tests/twin/test_labels.py`` runs every bundled grid through all of them).
"""

from __future__ import annotations

import difflib
import re
import threading
from collections import OrderedDict
from typing import Any

from twin.errors import ConfigError

__all__ = [
    "element_label",
    "label_index",
    "resolve_label",
    "table_labels",
    "unknown_label",
    "usable_name",
]


def usable_name(name: Any) -> str | None:
    """``name`` when it can be a label by itself (see the module docstring), else None.

    Uniqueness is a property of the table: :func:`table_labels` checks it.
    """
    if not isinstance(name, str) or not name.strip() or "/" in name:
        return None
    return name


# (table, index, raw names) -> (labels, inverse): keyed by the table's content, so a renamed,
# added or removed element is a new key (never a stale answer); bounded, shared by the threads
# of a process. A sweep worker asks for the same tables ~1000 times a case (emulated devices,
# the point map, profiles, checks): the rule's Python loop ran each time.
_CACHE: OrderedDict[tuple[Any, ...], tuple[dict[int, str], dict[str, int]]] = OrderedDict()
_CACHE_MAX = 256
_CACHE_LOCK = threading.Lock()


def _labels_of(net: Any, table: str) -> tuple[dict[int, str], dict[str, int]]:
    """The cached ``({index: label}, {label: index})`` of ``table``: callers copy them."""
    df = net[table]
    # a name that is not a string is never a label (usable_name): it keys as None, so NaN
    # (never equal to itself) and unhashable values cannot defeat the cache
    names = (
        tuple(n if isinstance(n, str) else None for n in df["name"].tolist())
        if "name" in df.columns
        else None
    )
    key = (table, tuple(df.index.tolist()), names)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            return hit
    labels = _compute_labels(df, table)
    entry = (labels, {lab: i for i, lab in labels.items()})
    with _CACHE_LOCK:
        _CACHE[key] = entry
        while len(_CACHE) > _CACHE_MAX:
            _CACHE.popitem(last=False)
    return entry


def _compute_labels(df: Any, table: str) -> dict[int, str]:
    idx = [int(i) for i in df.index]
    if "name" not in df.columns:
        return {i: f"{table}{i}" for i in idx}
    names = [usable_name(n) for n in df["name"].tolist()]
    generated = re.compile(rf"{re.escape(table)}(\d+)")
    counts: dict[str, int] = {}
    for n in names:
        if n is not None:
            counts[n] = counts.get(n, 0) + 1
    out: dict[int, str] = {}
    for i, n in zip(idx, names):
        ok = n is not None and counts[n] == 1
        if ok and n is not None:
            m = generated.fullmatch(n)
            ok = m is None or int(m.group(1)) == i
        out[i] = n if ok and n is not None else f"{table}{i}"
    return out


def table_labels(net: Any, table: str) -> dict[int, str]:
    """Label of every element of ``table``, in table order: ``{index: label}`` (a new dict)."""
    return dict(_labels_of(net, table)[0])


def label_index(net: Any, table: str) -> dict[str, int]:
    """``{label: index}`` of ``table`` (the inverse of :func:`table_labels`; a new dict)."""
    return dict(_labels_of(net, table)[1])


def element_label(net: Any, table: str, idx: int) -> str:
    """The label of element ``idx`` of ``table``."""
    return _labels_of(net, table)[0][int(idx)]


def unknown_label(net: Any, table: str, label: str, labels: dict[str, int] | None = None) -> str:
    """Why ``label`` names no element of ``table``, with the closest labels or the name rule."""
    labels = label_index(net, table) if labels is None else labels
    if "name" in net[table].columns:
        raw = [int(i) for i in net[table].index[net[table]["name"] == label]]
        if len(raw) == 1:
            lab = element_label(net, table, raw[0])
            why = (
                "contains '/'"
                if "/" in label
                else "is blank"
                if not label.strip()
                else "is shared by several elements or shadows a generated label"
            )
            return (
                f"no {table} labelled {label!r}: that name {why}, so the element's label is {lab!r}"
            )
    close = difflib.get_close_matches(label, list(labels), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; the grid has {len(labels)}"
    return f"no {table} named {label!r}{hint}"


def resolve_label(net: Any, table: str, label: str, *, where: str = "<grid>") -> int:
    """The index of the element of ``table`` labelled ``label``.

    Raises:
        ConfigError: no such table or label (the message suggests close labels or says why a
            name is not a label).
    """
    if table not in net:
        raise ConfigError(where, "element", f"unknown table {table!r}")
    labels = _labels_of(net, table)[1]
    try:
        return labels[label]
    except KeyError:
        raise ConfigError(
            where, "element", unknown_label(net, table, label, dict(labels))
        ) from None
