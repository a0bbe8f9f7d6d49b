"""The domain error tree of the twin: every error gridtwin raises on purpose roots at TwinError.

Messages say what was expected and what was found.
"""

from __future__ import annotations

from typing import Any


class TwinError(Exception):
    """Root of every error raised by the twin and the layers above it.

    Every subclass pickles whatever its ``__init__`` takes: a case of a sweep that raises on a
    Dask worker (or any other process) arrives at the client as the same error, message and
    attributes (``line``, ``worst_bus``, ...), not as a TypeError from unpickling.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(cls: type[TwinError], args: tuple[Any, ...], state: dict[str, Any]) -> TwinError:
    base = next(c for c in cls.__mro__ if c.__module__ == "builtins")  # e.g. OSError's errno
    err = base.__new__(cls, *args)
    base.__init__(err, *args)  # type: ignore[misc]
    err.__dict__.update(state)
    return err


# --- grid data -------------------------------------------------------------------------------
class GridDataError(TwinError):
    """A grid could not be found, read or converted."""


class UnknownGridError(GridDataError, KeyError):
    """A grid name that is not in the registry."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = list(known)
        super().__init__(f"unknown grid {name!r}; known grids: {', '.join(self.known)}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class GridFileError(GridDataError):
    """A grid file (pandapower JSON, MATPOWER .m) that is corrupt or not a grid."""

    def __init__(self, path: str, problem: str, line: int | None = None) -> None:
        self.path = str(path)
        self.problem = problem
        self.line = line
        super().__init__(f"{self.path}" + (f":{line}" if line else "") + f": {problem}")


# --- load flow -------------------------------------------------------------------------------
class LoadflowError(TwinError):
    """Base of load-flow errors."""


class LoadflowNotConverged(LoadflowError):
    """Newton-Raphson did not reach the tolerance.

    Attributes:
        iterations: iterations run before giving up.
        worst_bus: pandapower bus index with the largest mismatch (-1 if unknown).
        mismatch: that largest mismatch, in per unit.
    """

    def __init__(self, iterations: int, worst_bus: int, mismatch: float, detail: str = "") -> None:
        self.iterations = int(iterations)
        self.worst_bus = int(worst_bus)
        self.mismatch = float(mismatch)
        self.detail = detail
        msg = (
            f"load flow did not converge after {self.iterations} iterations: "
            f"worst bus {self.worst_bus} with mismatch {self.mismatch:.3g} pu"
        )
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)


class InvalidInput(TwinError, ValueError):
    """An input value that cannot be applied (NaN, inf, out of range, unknown element)."""

    def __init__(self, table: str, column: str, element: object, found: object, expected: str):
        self.table = table
        self.column = column
        self.element = element
        self.found = found
        super().__init__(
            f"{table}.{column}[{element!r}]: expected {expected}, found {found!r}; nothing changed"
        )


class TopologyError(LoadflowError):
    """The grid cannot be compiled (no slack, every bus isolated, ...)."""


# --- point map -------------------------------------------------------------------------------
class PointMapError(TwinError):
    """A point map that cannot be read or does not fit its grid.

    Attributes:
        problems: one line per problem, each naming the point and the line of the file.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = list(problems or [])
        if self.problems:
            message = message + ":\n  " + "\n  ".join(self.problems)
        super().__init__(message)


# --- sync ------------------------------------------------------------------------------------
class SyncError(TwinError):
    """The sync loop cannot go on (stale inputs under the refuse policy, deadline policy stop)."""


class StaleInputError(SyncError):
    """An input was stale or invalid and the policy is to refuse the step."""


class DeadlineMissed(SyncError):
    """A step overran its period and the deadline policy is ``stop``."""


# --- configuration ---------------------------------------------------------------------------
class ConfigError(TwinError):
    """A TOML configuration file (scenario, hardware, bench) with a wrong key or value.

    The message names the file, the key (and line where known) and what is allowed.
    """

    def __init__(self, path: str, key: str, problem: str, line: int | None = None) -> None:
        self.path = str(path)
        self.key = key
        self.line = line
        where = f"{self.path}" + (f":{line}" if line else "")
        super().__init__(f"{where}: {key}: {problem}")
