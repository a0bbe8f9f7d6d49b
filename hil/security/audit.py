"""The audit log: one JSON line per write attempt, from any source over any protocol.

Every protocol server (Modbus, the emulator's OPC UA server, the twin's OPC UA server) calls
:meth:`AuditLog.record` for every write attempt it receives, accepted or refused, with the peer
address, the user or certificate, the point, the old and the new value and the result. One log
serves one point store: :func:`audit_log` returns it (created on first use), so a Modbus write
and an OPC UA write of the same substation land in the same file, in order.

One request of many values (an OPC UA Write of the plant's whole step) is one *group* record
(:meth:`AuditLog.record_many`): ``point`` is ``"(N points)"``, ``count`` N, ``points`` the
point names and ``old``/``new`` the values, in request order, all with one result and reason.
Servers group only accepted values; a refused value is always a record of its own (and a
WARNING line). :meth:`AuditLog.records` and :func:`read_audit` give one record per value
(``expand=False``: as stored).

Until a file is attached (:meth:`AuditLog.stream_to`) records are kept in memory (at most
``max_buffer`` values, a group counting its values; beyond that the oldest *accepted* records
are dropped first, down to 90 % of the bound, and their values counted in ``dropped``; refused
ones are kept); attaching a file writes the buffer first, then every
record as it happens (line-buffered, flushed per record). A run puts the audit of its
substation into its results folder with ``audit_log(sub.store).stream_to(out / "audit.jsonl")``.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

#: When the memory buffer is over ``max_buffer`` it is cut to this share of it (one pass per
#: tenth of the buffer, not one per record).
TRIM_TO = 0.9

_log = logging.getLogger(__name__)
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode
#: Accepted records are flushed to the file at least this often (s); refused ones at once.
FLUSH_S = 0.2

#: Results a record can have: "accepted", or "refused" with a reason.
ACCEPTED = "accepted"
REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One write attempt."""

    time: float  # POSIX seconds (wall clock) when the server received it
    protocol: str  # "modbus", "opcua", "opcua-twin"
    peer: str  # "host:port" of the client, "" when the transport does not say
    user: str  # OPC UA user name, certificate subject, "anonymous", or "" (Modbus)
    point: str  # point name, or the raw address / node id when it is no point
    old: float | None
    new: float | None
    result: str  # ACCEPTED or REFUSED
    reason: str = ""  # why refused (or a note, e.g. "not available")
    role: str = ""
    #: a group record: the points of one request (``point`` is "(N points)") and their values
    points: tuple[str, ...] = ()
    olds: tuple[float | None, ...] = ()
    news: tuple[float | None, ...] = ()

    @property
    def count(self) -> int:
        """How many write attempts the record stands for."""
        return len(self.points) if self.points else 1

    def expand(self) -> list[AuditRecord]:
        """One record per value (a plain record is its own)."""
        if not self.points:
            return [self]
        t, pr, pe, u, res, why, role = (self.time, self.protocol, self.peer, self.user,
                                        self.result, self.reason, self.role)  # fmt: skip
        return [
            AuditRecord(t, pr, pe, u, point, old, new, res, why, role)
            for point, old, new in zip(self.points, self.olds, self.news)
        ]

    def to_json(self) -> str:
        if self.points:
            d = {
                "time": self.time,
                "protocol": self.protocol,
                "peer": self.peer,
                "user": self.user,
                "point": self.point,
                "count": len(self.points),
                "points": self.points,
                "old": _OLD,
                "new": _NEW,
                "result": self.result,
                "reason": self.reason,
                "role": self.role,
            }
            if "\x00" in "".join(self.points):  # a name cannot look like a placeholder
                d["old"] = [_json_number(v) for v in self.olds]
                d["new"] = [_json_number(v) for v in self.news]
                return _ENCODE(d)
            line = _ENCODE(d)
            line = line.replace(_OLD_JSON, _json_numbers(self.olds), 1)
            return line.replace(_NEW_JSON, _json_numbers(self.news), 1)
        old, new = self.old, self.new
        # JSON has no NaN / inf: keep them readable and the line valid
        if isinstance(old, float) and not math.isfinite(old):
            old = repr(old)  # type: ignore[assignment]
        if isinstance(new, float) and not math.isfinite(new):
            new = repr(new)  # type: ignore[assignment]
        return _ENCODE(
            {
                "time": self.time,
                "protocol": self.protocol,
                "peer": self.peer,
                "user": self.user,
                "point": self.point,
                "old": old,
                "new": new,
                "result": self.result,
                "reason": self.reason,
                "role": self.role,
            }
        )


#: placeholders of a group record's value lists, replaced by :func:`_json_numbers`
_OLD, _NEW = "\x00old\x00", "\x00new\x00"
_OLD_JSON, _NEW_JSON = _ENCODE(_OLD), _ENCODE(_NEW)
_PTS = "\x00points\x00"
_PTS_JSON = _ENCODE(_PTS)
#: distinct points tuples whose JSON an AuditLog keeps (a run has a few request layouts)
_GROUP_CACHE = 64


def _json_numbers(values: Sequence[float | None]) -> str:
    """A JSON array of numbers (None -> null, NaN/inf -> "nan"/"inf" strings), as
    ``json.dumps`` writes them but about twice as fast for the hundreds of a group record."""
    try:
        return (
            "[" + ",".join(map(float.__repr__, values)) + "]"
            if all(map(math.isfinite, values))  # type: ignore[arg-type]
            else _ENCODE([_json_number(v) for v in values])
        )
    except TypeError:  # None or an int among them
        return _ENCODE([_json_number(v) for v in values])


def _json_number(v: float | None) -> float | str | None:
    # JSON has no NaN / inf: keep them readable and the line valid
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)
    return v


def group_label(n: int) -> str:
    """The ``point`` of a group record of ``n`` values."""
    return f"({n} points)"


class AuditLog:
    """JSON-lines audit of write attempts; memory until :meth:`stream_to` attaches a file."""

    def __init__(self, path: str | Path | None = None, *, max_buffer: int = 100_000) -> None:
        self.max_buffer = int(max_buffer)
        self._buffer: list[AuditRecord] = []  # every record, in order, while no file is set
        self._held = 0  # values (write attempts) in the buffer
        self._file: IO[str] | None = None
        self.path: Path | None = None
        self.counts: dict[str, int] = {ACCEPTED: 0, REFUSED: 0}
        self.dropped = 0
        self._flushed = 0.0
        self._lock = threading.Lock()
        #: group records written: the JSON of a points tuple, and its last new values + JSON
        self._names_json: dict[tuple[str, ...], str] = {}
        self._last_news: dict[tuple[str, ...], tuple[tuple[float | None, ...], str]] = {}
        if path is not None:
            self.stream_to(path)

    def record(
        self,
        *,
        protocol: str,
        peer: str,
        user: str,
        point: str,
        old: float | None,
        new: float | None,
        result: str,
        reason: str = "",
        role: str = "",
    ) -> AuditRecord:
        rec = AuditRecord(time.time(), protocol, peer, user, point, old, new, result, reason, role)
        with self._lock:
            self.counts[result] = self.counts.get(result, 0) + 1
            if self._file is not None:
                self._write(rec)
            else:
                self._buffer.append(rec)
                self._held += rec.count
                if self._held > self.max_buffer:
                    self._trim()
        if result != ACCEPTED:
            if self._file is not None:
                self._flush()
            _log.warning(
                "write refused: %s %s user %r point %s value %r: %s",
                protocol,
                peer or "?",
                user,
                point,
                new,
                reason,
            )
        elif _log.isEnabledFor(logging.INFO):
            _log.info("write accepted: %s %s user %r point %s %r -> %r", protocol, peer or "?",
                      user, point, old, new)  # fmt: skip
        return rec

    def record_many(
        self,
        *,
        protocol: str,
        peer: str,
        user: str,
        points: Sequence[str],
        olds: Sequence[float | None],
        news: Sequence[float | None],
        result: str,
        reason: str = "",
        role: str = "",
    ) -> AuditRecord:
        """One record for the values of one request that share a result and reason.

        Counted per value in :attr:`counts`; logged as one line. Servers pass accepted values
        here and record each refused one with :meth:`record`.
        """
        pts = tuple(points)
        if not pts:
            raise ValueError("record_many: expected at least one point, found none")
        if len(olds) != len(pts) or len(news) != len(pts):
            raise ValueError(
                f"record_many: expected {len(pts)} old and new values, found {len(olds)} and "
                f"{len(news)}"
            )
        rec = AuditRecord(time.time(), protocol, peer, user, group_label(len(pts)), None, None,
                          result, reason, role, pts, tuple(olds), tuple(news))  # fmt: skip
        with self._lock:
            self.counts[result] = self.counts.get(result, 0) + len(pts)
            if self._file is not None:
                self._write(rec)
            else:
                self._buffer.append(rec)
                self._held += rec.count
                if self._held > self.max_buffer:
                    self._trim()
        if result != ACCEPTED:
            if self._file is not None:
                self._flush()
            _log.warning("write refused: %s %s user %r %d points (%s ...): %s", protocol,
                         peer or "?", user, len(pts), pts[0], reason)  # fmt: skip
        elif _log.isEnabledFor(logging.INFO):
            _log.info("write accepted: %s %s user %r %d points (%s ...)", protocol, peer or "?",
                      user, len(pts), pts[0])  # fmt: skip
        return rec

    def _trim(self) -> None:
        # cut to TRIM_TO of the bound at once: trimming by one record per record made every
        # write past the bound scan the whole buffer (seconds per 1,155-value request). The
        # bound is in values (a group record holds many), so memory stays bounded.
        target = int(self.max_buffer * TRIM_TO)
        room = target - sum(r.count for r in self._buffer if r.result != ACCEPTED)
        keep: set[int] = set()
        for r in reversed(self._buffer):  # the newest accepted records that fit
            if r.result == ACCEPTED:
                if r.count > room:
                    break
                room -= r.count
                keep.add(id(r))
        out = [r for r in self._buffer if r.result != ACCEPTED or id(r) in keep]
        drop = self._held - sum(r.count for r in out)
        if drop <= 0:
            return
        self._buffer = out
        self._held -= drop
        if self.dropped == 0:
            _log.warning("audit: no file attached, oldest accepted records dropped from memory")
        self.dropped += drop

    def _write(self, rec: AuditRecord) -> None:
        assert self._file is not None
        self._file.write((self._group_json(rec) if rec.points else rec.to_json()) + "\n")
        now = time.monotonic()
        if now - self._flushed >= FLUSH_S:
            self._flush(now)

    def _group_json(self, rec: AuditRecord) -> str:
        """``rec.to_json()`` of a group record, with what repeats from the last record of the
        same points taken from it: the names' JSON, and the old values when they are that
        record's new ones (a plant's step after step: the float formatting is the cost)."""
        pts = rec.points
        names = self._names_json.get(pts)
        if names is None:
            if "\x00" in "".join(pts):  # a name cannot look like a placeholder
                return rec.to_json()
            if len(self._names_json) >= _GROUP_CACHE:
                self._names_json.clear()
                self._last_news.clear()
            names = self._names_json[pts] = _ENCODE(pts)
        last = self._last_news.get(pts)
        olds = last[1] if last is not None and last[0] == rec.olds else _json_numbers(rec.olds)
        news = olds if rec.news == rec.olds else _json_numbers(rec.news)
        self._last_news[pts] = (rec.news, news)
        line = _ENCODE(
            {
                "time": rec.time,
                "protocol": rec.protocol,
                "peer": rec.peer,
                "user": rec.user,
                "point": rec.point,
                "count": len(pts),
                "points": _PTS,
                "old": _OLD,
                "new": _NEW,
                "result": rec.result,
                "reason": rec.reason,
                "role": rec.role,
            }
        )
        line = line.replace(_PTS_JSON, names, 1).replace(_OLD_JSON, olds, 1)
        return line.replace(_NEW_JSON, news, 1)

    def _flush(self, now: float | None = None) -> None:
        assert self._file is not None
        self._file.flush()
        self._flushed = time.monotonic() if now is None else now

    def flush(self) -> None:
        """Write what is buffered to the file now."""
        with self._lock:
            if self._file is not None:
                self._flush()

    def stream_to(self, path: str | Path) -> Path:
        """Write the buffered records to ``path`` (appending) and every later one as it comes."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            if self._file is not None:
                self._file.close()
            self._file = p.open("a", encoding="utf-8")
            self.path = p
            for rec in self._buffer:
                self._write(rec)
            self._buffer = []
            self._held = 0
            self._flush()
        _log.info("audit log: %s", p)
        return p

    def records(self, *, expand: bool = True) -> list[AuditRecord]:
        """Records still in memory (all of them while no file is attached), one per value
        (``expand=False``: group records as they are stored)."""
        with self._lock:
            buf = list(self._buffer)
        if not expand:
            return buf
        return [r for rec in buf for r in rec.expand()]

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def read_audit(path: str | Path, *, expand: bool = True) -> list[dict[str, Any]]:
    """The records of an audit file as dicts (for tests and reports), one per value: a group
    line becomes one dict per point with its ``old`` and ``new`` (``expand=False``: the lines
    as written)."""
    out: list[dict[str, Any]] = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        d = json.loads(line)
        points = d.get("points")
        if not expand or not isinstance(points, list):
            out.append(d)
            continue
        head = {k: v for k, v in d.items() if k not in ("points", "count", "old", "new")}
        for point, old, new in zip(points, d.get("old") or (), d.get("new") or ()):
            out.append({**head, "point": point, "old": old, "new": new})
    return out


_LOGS: weakref.WeakKeyDictionary[Any, AuditLog] = weakref.WeakKeyDictionary()


def audit_log(store: Any) -> AuditLog:
    """The one audit log of a point store (created on first use, lives as long as the store)."""
    log = _LOGS.get(store)
    if log is None:
        log = _LOGS[store] = AuditLog()
    return log


def set_audit_log(store: Any, log: AuditLog) -> AuditLog:
    """Make ``log`` the audit log of ``store`` (before its servers start); returns it."""
    _LOGS[store] = log
    return log
