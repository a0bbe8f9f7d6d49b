"""The one TOML reader of scenario, point-map and hardware files: text, syntax, key lines, problems.

``tomllib`` gives values without line numbers and stops at the first syntax error. Readers here
get the file's text and its parsed document together with :class:`KeyLines` (the line of every
table and key, found by scanning the text), and collect their problems in :class:`Problems`
so that a file with five mistakes is reported once, with all five, each as ``file:line: key:
what was expected, found what``.

Example::

    doc = load_toml("hardware.toml", what="the hardware file")
    problems = Problems(doc)
    if "device" not in doc.data:
        problems.add(("device",), "missing; expected at least one [[device]] table")
    problems.raise_if_any()
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twin.errors import ConfigError

__all__ = [
    "KeyLines",
    "Problem",
    "Problems",
    "TomlDoc",
    "TomlFileError",
    "key_name",
    "load_toml",
    "parse_toml",
    "read_text",
]

#: a key's path in the document: table names, array-of-tables indices, the key
KeyPath = tuple[str | int, ...]

_HEADER_RE = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY_RE = re.compile(
    r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*="""
)
_PART_RE = re.compile(r"""\s*([A-Za-z0-9_-]+|"[^"]*"|'[^']*')\s*(?:\.|$)""")
_SYNTAX_LINE_RE = re.compile(r"at line (\d+)")


def _parts(dotted: str) -> tuple[str, ...]:
    return tuple(m.group(1).strip("\"'") for m in _PART_RE.finditer(dotted) if m.group(1))


class KeyLines:
    """Line (1-based) of every table header and key of a TOML text.

    Paths index arrays of tables: the ``port`` key of the second ``[[device]]``'s
    ``[device.modbus]`` table is ``("device", 1, "modbus", "port")``.
    """

    def __init__(self, text: str) -> None:
        self._lines: dict[KeyPath, int] = {}
        arrays: dict[tuple[str, ...], int] = {}  # array-of-tables name -> tables seen
        table: KeyPath = ()
        in_multiline = False
        for n, raw in enumerate(text.splitlines(), start=1):
            quotes = raw.count('"""') + raw.count("'''")
            if in_multiline:
                in_multiline = quotes % 2 == 0
                continue
            first = raw.lstrip()[:1]
            if not first or first == "#":
                continue
            if first == "[" and (h := _HEADER_RE.match(raw)):
                names = _parts(h.group(2))
                if h.group(1) == "[[":
                    arrays[names] = arrays.get(names, 0) + 1
                path: list[str | int] = []
                for i, name in enumerate(names):
                    path.append(name)
                    count = arrays.get(names[: i + 1])
                    if count is not None:
                        path.append(count - 1)
                table = tuple(path)
                self._lines.setdefault(table, n)
                continue
            m = _KEY_RE.match(raw)
            if m:
                key = table + _parts(m.group(1))
                for i in range(len(table) + 1, len(key) + 1):
                    self._lines.setdefault(key[:i], n)
                in_multiline = quotes % 2 == 1

    def line(self, path: KeyPath) -> int | None:
        """The line of ``path``, else of its nearest enclosing table or key found; None at top."""
        path = tuple(path)
        while path:
            n = self._lines.get(path)
            if n is not None:
                return n
            path = path[:-1]
        return None

    def exact(self, path: KeyPath) -> int | None:
        """The line of ``path`` itself (None: not written in the file)."""
        return self._lines.get(tuple(path))


@dataclass(frozen=True)
class TomlDoc:
    """A parsed TOML file: its values, its text, where each key is."""

    data: dict[str, Any]
    source: str
    text: str
    lines: KeyLines
    base: Path  # relative paths in the file are taken from here


@dataclass(frozen=True)
class Problem:
    """One problem of a file: where (file, line, key) and what was expected, found what."""

    source: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        return f"{where}: {self.key}: {self.message}"


class TomlFileError(ConfigError):
    """A TOML file with problems; ``problems`` holds every one, the message lists them all.

    ``path``, ``key`` and ``line`` are the first problem's (as a single :class:`ConfigError`).
    """

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = list(problems)
        first = self.problems[0]
        super().__init__(first.source, first.key, first.message, first.line)
        if len(self.problems) > 1:
            self.args = (
                f"{len(self.problems)} problems:\n" + "\n".join(str(p) for p in self.problems),
            )


def key_name(path: KeyPath) -> str:
    """``("device", 0, "modbus", "port")`` -> ``"device[0].modbus.port"``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "(file)"


class Problems:
    """Collects a file's problems; :meth:`raise_if_any` raises them all at once."""

    def __init__(self, doc: TomlDoc | None = None, *, source: str | None = None) -> None:
        self.doc = doc
        self.source = source or (doc.source if doc is not None else "<string>")
        self.items: list[Problem] = []

    def add(self, path: KeyPath, message: str, *, line: int | None = None) -> None:
        """A problem at key ``path`` (its line looked up unless given)."""
        if line is None and self.doc is not None:
            line = self.doc.lines.line(path)
        self.items.append(Problem(self.source, line, key_name(path), message))

    def __bool__(self) -> bool:
        return bool(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def raise_if_any(self, error: Callable[[list[Problem]], Exception] = TomlFileError) -> None:
        if self.items:  # in file order
            raise error(sorted(self.items, key=lambda p: p.line or 0))


def read_text(path: str | os.PathLike[str], *, what: str = "the file") -> str:
    """The UTF-8 text of ``path``.

    Raises:
        TomlFileError: the file cannot be read or is not UTF-8 (naming the file and why).
    """
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8")
    except OSError as exc:
        why = f"cannot read {what}: {exc.strerror or exc} (expected a readable file)"
    except UnicodeDecodeError as exc:
        why = f"expected UTF-8 text in {what}, found the byte 0x{exc.object[exc.start]:02x}"
        line = exc.object[: exc.start].count(b"\n") + 1
        raise TomlFileError([Problem(str(p), line, "file", why)]) from None
    raise TomlFileError([Problem(str(p), None, "file", why)])


def parse_toml(text: str, *, source: str = "<string>", base: Path | None = None) -> TomlDoc:
    """Parse TOML text.

    Raises:
        TomlFileError: a syntax error, with its line.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = _SYNTAX_LINE_RE.search(str(exc))
        line = int(m.group(1)) if m else None
        raise TomlFileError([Problem(source, line, "(syntax)", f"not valid TOML: {exc}")]) from None
    return TomlDoc(data, source, text, KeyLines(text), base or Path.cwd())


def load_toml(path: str | os.PathLike[str], *, what: str = "the file") -> TomlDoc:
    """Read and parse a TOML file; relative paths in it are taken from its folder.

    Raises:
        TomlFileError: unreadable, not UTF-8, or not valid TOML (file and line named).
    """
    p = Path(path)
    return parse_toml(read_text(p, what=what), source=str(p), base=p.resolve().parent)
