"""The live terminal view of a run (rich): a progress bar with simulated time, steps/s and ETA;
in realtime pace also a compact table (worst voltage, worst loading, alarms, link quality, lag).

Quiet when asked (``enabled=False``: ``--quiet``) or when the console is not a terminal (CI,
pipes): then nothing is drawn and the callbacks cost next to nothing.

Use::

    with LiveView(console, name=sc.name, total=sc.steps + 1, start_sod=sc.start_sod,
                  realtime=sc.pace == "realtime") as live:
        run_scenario(sc, progress=live.progress, on_step=live.on_step)
"""

from __future__ import annotations

import math
import time
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from scenarios.timeparse import format_clock

_STATS_EVERY_S = 1.0  # field link statistics are read at most this often (they cost a little)


class _RateColumn(ProgressColumn):
    """Steps per wall-clock second."""

    def render(self, task: Task) -> Text:
        sp = task.speed
        return Text("-- steps/s" if sp is None else f"{sp:,.1f} steps/s", style="cyan")


def link_quality(stats: dict[str, Any]) -> str:
    """One short line per field: links up, errors, reconnects (from ``field.stats()``)."""
    links = stats.get("links") or {}
    if not links:
        return "no field links"
    parts = []
    for name, s in links.items():
        err = int(s.get("errors", 0) or 0)
        rec = int(s.get("reconnects", 0) or 0)
        ok = "ok" if not err and not s.get("last_error") else f"{err} err"
        parts.append(f"{name.split(':', 1)[0]} {ok}" + (f", {rec} reconn" if rec else ""))
    return "; ".join(parts)


class LiveView:
    """Progress bar (always, when shown) and, in realtime pace, the live table.

    Args:
        console: where to draw; nothing is drawn unless it is a terminal.
        name: the scenario name (the bar's label).
        total: steps in all.
        start_sod: seconds of day at t = 0 (the simulated clock shown).
        realtime: also show the live table.
        enabled: False for ``--quiet``.
    """

    def __init__(
        self,
        console: Console,
        *,
        name: str,
        total: int,
        start_sod: float = 0.0,
        realtime: bool = False,
        enabled: bool = True,
    ) -> None:
        self.console = console
        self.shown = bool(enabled) and console.is_terminal
        self.realtime = realtime
        self.start_sod = start_sod
        self.state: dict[str, Any] = {}
        self._links = ""
        self._links_at = -math.inf
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} steps"),
            TextColumn("sim [bold]{task.fields[clock]}"),
            _RateColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TimeElapsedColumn(),
            console=console,
            auto_refresh=False,
        )
        self._task = self._progress.add_task(name, total=total, clock=format_clock(0, start_sod))
        self._live: Live | None = None

    # --- context --------------------------------------------------------------------------------
    def __enter__(self) -> LiveView:
        if self.shown:
            self._live = Live(self, console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.refresh()
            self._live.__exit__(None, None, None)
            self._live = None

    # --- callbacks ------------------------------------------------------------------------------
    def progress(self, done: int, total: int, t: float) -> None:
        """The engine's ``progress`` callback."""
        if not self.shown:
            return
        self._progress.update(
            self._task, completed=done, total=total, clock=format_clock(t, self.start_sod)
        )

    def on_step(self, snap: dict[str, Any]) -> None:
        """The engine's ``on_step`` callback (a snapshot of the step just done)."""
        if not self.shown:
            return
        self.state = snap
        now = time.monotonic()
        if self.realtime and now - self._links_at >= _STATS_EVERY_S:
            self._links_at = now
            fld = snap.get("field")
            try:
                self._links = link_quality(fld.stats()) if fld is not None else ""
            except Exception:  # a field that cannot report must not stop the run
                self._links = "?"

    # --- drawing --------------------------------------------------------------------------------
    def table(self) -> Table:
        s = self.state

        def num(key: str, fmt: str) -> str:
            v = s.get(key, math.nan)
            return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt % v

        tb = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
        for col in ("worst V (pu)", "worst loading", "alarms", "stale", "link quality", "lag"):
            tb.add_column(col)
        vmin, vmax = s.get("vm_min", math.nan), s.get("vm_max", math.nan)
        v = "-"
        if isinstance(vmin, float) and math.isfinite(vmin):
            v = f"{vmin:.4f} .. {vmax:.4f}"
        late = float(s.get("late_s", 0.0) or 0.0)
        misses = int(s.get("deadline_misses", 0) or 0)
        lag = f"{late * 1e3:.1f} ms" + (f" ({misses} misses)" if misses else "")
        alarms = int(s.get("alarms", 0) or 0)
        tb.add_row(
            v,
            num("loading_max", "%.1f %%"),
            f"[red]{alarms}[/red]" if alarms else "0",
            str(s.get("stale", 0)),
            self._links or "-",
            f"[red]{lag}[/red]" if misses else lag,
        )
        return tb

    def __rich__(self) -> RenderableType:
        if self.realtime:
            return Group(self._progress.get_renderable(), self.table())
        return self._progress.get_renderable()
