"""The audit log: one JSON line per write attempt, from any source over any protocol.

Every protocol server (Modbus, the emulator's OPC UA server, the twin's OPC UA server) calls
:meth:`AuditLog.record` for every write attempt it receives, accepted or refused, with the peer
address, the user or certificate, the point, the old and the new value and the result. One log
serves one point store: :func:`audit_log` returns it (created on first use), so a Modbus write
and an OPC UA write of the same substation land in the same file, in order.

Until a file is attached (:meth:`AuditLog.stream_to`) records are kept in memory (at most
``max_buffer``; beyond that the oldest *accepted* records are dropped first and counted in
``dropped``, refused ones are kept); attaching a file writes the buffer first, then every
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
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

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

    def to_json(self) -> str:
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


class AuditLog:
    """JSON-lines audit of write attempts; memory until :meth:`stream_to` attaches a file."""

    def __init__(self, path: str | Path | None = None, *, max_buffer: int = 100_000) -> None:
        self.max_buffer = int(max_buffer)
        self._buffer: list[AuditRecord] = []  # every record, in order, while no file is set
        self._file: IO[str] | None = None
        self.path: Path | None = None
        self.counts: dict[str, int] = {ACCEPTED: 0, REFUSED: 0}
        self.dropped = 0
        self._flushed = 0.0
        self._lock = threading.Lock()
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
                if len(self._buffer) > self.max_buffer:
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

    def _trim(self) -> None:
        keep = [r for r in self._buffer if r.result != ACCEPTED]
        accepted = [r for r in self._buffer if r.result == ACCEPTED]
        room = max(self.max_buffer - len(keep), 0)
        drop = len(accepted) - room
        if drop <= 0:
            return
        dropped = set(map(id, accepted[:drop]))
        self._buffer = [r for r in self._buffer if id(r) not in dropped]
        if self.dropped == 0:
            _log.warning("audit: no file attached, oldest accepted records dropped from memory")
        self.dropped += drop

    def _write(self, rec: AuditRecord) -> None:
        assert self._file is not None
        self._file.write(rec.to_json() + "\n")
        now = time.monotonic()
        if now - self._flushed >= FLUSH_S:
            self._flush(now)

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
            self._flush()
        _log.info("audit log: %s", p)
        return p

    def records(self) -> list[AuditRecord]:
        """Records still in memory (all of them while no file is attached)."""
        with self._lock:
            return list(self._buffer)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def read_audit(path: str | Path) -> list[dict[str, Any]]:
    """The records of an audit file as dicts (for tests and reports)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            out.append(json.loads(line))
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
