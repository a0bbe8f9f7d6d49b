"""Sweeps: many cases of one scenario (N-1, seeds, parameter grids) on Dask distributed.

A sweep is a scenario file with a ``[sweep]`` section (docs/sweep.md)::

    [sweep]
    run = "steady"          # "scenario": a whole scenario per case (fast pace); "steady": one
                            # load flow per case in the kernel's batch (twin.n_minus_1/solve_batch)
    n-1 = "all"             # "all" | "lines" | "trafos" | ["L12", "trafo0", ...]
    seeds = 20              # seed, seed+1, ... (steady: Monte Carlo draws of the loads)
    sigma = 0.1             # steady: relative standard deviation of each load per draw
    chunk = 0               # cases per Dask task (0: automatic)
    retries = 2             # Dask retries of a task (a lost worker's tasks are rerun anyway)
    [sweep.grid]            # parameter grid: the cases are the product of every list
    pv_share = [0.5, 1.0]   # see PARAM_HELP for the keys

Cases are the product outages x grid points x seeds. They are split into chunks, one Dask task
each; a worker process builds the compiled model once per grid and keeps it (``_GRIDS``) for all
its chunks. The client writes one Parquet file per finished chunk under ``<out>/chunks/``: a
sweep started again on the same folder skips those cases (resume), and at the end gathers them
into ``<out>/results.parquet`` and ranks the worst cases into ``<out>/summary.json``.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from scenarios.config import EventSpec, Scenario, _Parser, load_scenario
from twin.errors import ConfigError
from twin.tomlfile import parse_toml, read_text

_log = logging.getLogger(__name__)

RUNS = ("scenario", "steady")
N1_SETS = ("all", "lines", "trafos")
#: parameter-grid keys: key (or key prefix ending in ".") -> (runs it applies to, what it does)
PARAM_HELP: dict[str, tuple[tuple[str, ...], str]] = {
    "pv_share": (RUNS, "factor on every PV/sgen output (scenario: the scale of sgen profiles)"),
    "ev_share": (RUNS, 'factor on EV loads (category "ev"; scenario: their profiles)'),
    "load_scale": (RUNS, "factor on every load (scenario: the scale of load profiles)"),
    "profile.": (("scenario",), '"profile.<name>.scale" or "profile.<name>.offset" of a profile'),
    "setpoint.": (("scenario",), '"setpoint.<point>": a setpoint event at t=0 with this value'),
}
_SWEEP_KEYS = {
    "run": " | ".join(RUNS),
    "n-1": '"all", "lines", "trafos" or a list of line/trafo labels',
    "seeds": "a positive integer",
    "sigma": "a number >= 0 (steady Monte Carlo: relative std of each load)",
    "chunk": "an integer >= 0 (cases per task; 0: automatic)",
    "retries": "an integer >= 0",
    "grid": "a table [sweep.grid] of parameter lists",
}
CHUNKS_DIR = "chunks"
RUNS_DIR = "runs"
RESULTS_FILE = "results.parquet"
SUMMARY_FILE = "summary.json"
PLAN_FILE = "sweep.json"


# --- the [sweep] section --------------------------------------------------------------------
@dataclass(frozen=True)
class SweepSpec:
    """A parsed ``[sweep]`` section (and CLI overrides)."""

    run: str = "scenario"
    n_1: str | tuple[str, ...] | None = None
    seeds: int | None = None
    sigma: float = 0.1
    grid: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    chunk: int = 0
    retries: int = 2


def _fail(where: Any, key: str, problem: str) -> NoReturn:
    """Raise the ConfigError of ``sweep.<key>``: with the file's line where ``where`` is the
    scenario parser of the file's text (scenarios.config), else without one."""
    if isinstance(where, _Parser):
        where.fail(key, problem, "sweep", 0, key.split(".")[-1])
    raise ConfigError(str(where), key, problem)


def parse_sweep(table: Mapping[str, Any], where: str, text: str | None = None) -> SweepSpec:
    """Validate a ``[sweep]`` table; errors name the file, ``sweep.<key>`` (its line when the
    file's ``text`` is given) and what is allowed."""
    ps: Any = where if text is None else _Parser(Path(where), text)
    if isinstance(ps, _Parser):
        ps.unknown_keys(table, _SWEEP_KEYS, "sweep.", "sweep", 0)
    else:
        for k in table:
            if k not in _SWEEP_KEYS:
                _fail(ps, f"sweep.{k}", f"unknown key; allowed keys: {', '.join(_SWEEP_KEYS)}")
    where = ps
    run = table.get("run", "scenario")
    if run not in RUNS:
        _fail(where, "sweep.run", f"expected one of {', '.join(RUNS)}, found {run!r}")
    n1 = table.get("n-1")
    if n1 is not None:
        ok = (isinstance(n1, str) and n1 in N1_SETS) or (
            isinstance(n1, list) and n1 and all(isinstance(x, str) and x for x in n1)
        )
        if not ok:
            _fail(where, "sweep.n-1", f"expected {_SWEEP_KEYS['n-1']}, found {n1!r}")
        n1 = n1 if isinstance(n1, str) else tuple(n1)
    seeds = table.get("seeds")
    if seeds is not None and (isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1):
        _fail(where, "sweep.seeds", f"expected {_SWEEP_KEYS['seeds']}, found {seeds!r}")

    def number(key: str, default: float, integer: bool) -> Any:
        v = table.get(key, default)
        kinds = (int,) if integer else (int, float)
        if isinstance(v, bool) or not isinstance(v, kinds) or v < 0:
            _fail(where, f"sweep.{key}", f"expected {_SWEEP_KEYS[key]}, found {v!r}")
        return v

    sigma = float(number("sigma", 0.1, False))
    chunk = int(number("chunk", 0, True))
    retries = int(number("retries", 2, True))
    grid_t = table.get("grid", {})
    if not isinstance(grid_t, dict):
        _fail(where, "sweep.grid", f"expected {_SWEEP_KEYS['grid']}, found {grid_t!r}")
    grid = tuple(_grid_entry(k, v, run, where) for k, v in grid_t.items())
    return SweepSpec(run, n1, seeds, sigma, grid, chunk, retries)


def _grid_entry(key: str, values: Any, run: str, where: Any) -> tuple[str, tuple[Any, ...]]:
    name = f"sweep.grid.{key}"
    allowed = [k + ("<...>" if k.endswith(".") else "") for k in PARAM_HELP]
    spec = None if key.endswith(".") else PARAM_HELP.get(key)
    if spec is None and not key.endswith("."):
        spec = next(
            (v for k, v in PARAM_HELP.items() if k.endswith(".") and key.startswith(k)), None
        )
        if spec is not None and key.startswith("profile."):
            parts = key.split(".")
            if len(parts) != 3 or parts[2] not in ("scale", "offset") or not parts[1]:
                _fail(where, name, 'expected "profile.<name>.scale" or "profile.<name>.offset"')
    if spec is None:
        close = difflib.get_close_matches(key, [k.rstrip(".") for k in PARAM_HELP], n=2)
        _fail(
            where,
            name,
            f"unknown parameter; allowed: {', '.join(allowed)}" + _did_you_mean(close),
        )
    assert spec is not None
    if run not in spec[0]:
        _fail(
            where,
            name,
            f"not available with run = {run!r} ({spec[1]}); allowed with "
            f"{run!r}: {', '.join(k for k, v in PARAM_HELP.items() if run in v[0])}",
        )
    if not isinstance(values, list) or not values:
        _fail(where, name, f"expected a non-empty list of numbers, found {values!r}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            _fail(where, name, f"expected a non-empty list of numbers, found {v!r} in the list")
    if key in ("pv_share", "ev_share", "load_scale") and any(v < 0 for v in values):
        _fail(where, name, f"expected factors >= 0, found {values!r}")
    return key, tuple(float(v) for v in values)


def load_sweep(path: Path | str) -> tuple[Scenario, SweepSpec]:
    """Read a scenario file with its ``[sweep]`` section (an empty section when it has none).

    The scenario reader (scenarios.config) reads and checks the file and accepts ``[sweep]``;
    the section itself is checked here, its errors with the file's line.
    """
    p = Path(path)
    sc = load_scenario(p)  # a missing file, bad TOML, a bad scenario: its own errors
    text = read_text(p, what="the scenario file")
    table = parse_toml(text, source=str(p)).data.get("sweep", {})
    if not isinstance(table, dict):
        _fail(_Parser(p, text), "sweep", f"expected a table [sweep], found {table!r}")
    return sc, parse_sweep(table, str(p), text)


# --- the cases ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One case: an outage (table, label) or None, a seed or None, parameter values."""

    id: str
    outage: tuple[str, str] | None = None
    seed: int | None = None
    params: tuple[tuple[str, float], ...] = ()

    def param(self, key: str, default: float = 1.0) -> float:
        return next((v for k, v in self.params if k == key), default)


def _outages(sc: Scenario, spec: SweepSpec, net: Any) -> list[tuple[str, str] | None]:
    from scenarios.profiles import element_labels

    if spec.n_1 is None:
        return [None]
    labels = {t: element_labels(net, t) for t in ("line", "trafo")}
    if isinstance(spec.n_1, str):
        tables = {"all": ("line", "trafo"), "lines": ("line",), "trafos": ("trafo",)}[spec.n_1]
        out: list[tuple[str, str] | None] = []
        for t in tables:
            on = net[t]["in_service"]
            out += [(t, lab) for lab, i in labels[t].items() if bool(on.loc[i])]
        return out
    picked: list[tuple[str, str] | None] = []
    for lab in spec.n_1:
        tab = next((t for t in ("line", "trafo") if lab in labels[t]), None)
        if tab is None:
            where = str(sc.path) if sc.path else "<scenario>"
            some = ", ".join(list(labels["line"])[:5] + list(labels["trafo"])[:3])
            _fail(
                where,
                "sweep.n-1",
                f"no line or trafo labelled {lab!r} in grid {sc.grid} (labels such as {some})",
            )
        picked.append((tab, lab))
    return picked


def plan_cases(sc: Scenario, spec: SweepSpec, net: Any | None = None) -> list[Case]:
    """Every case of the sweep, in a fixed order (outage varies fastest)."""
    if net is None:
        from scenarios.validate import load_grid

        net = load_grid(sc)
    _check_params(sc, spec, net)
    outages = _outages(sc, spec, net)
    seeds: list[int | None] = (
        [sc.seed + k for k in range(spec.seeds)] if spec.seeds is not None else [None]
    )
    keys = [k for k, _ in spec.grid]
    points = list(itertools.product(*(v for _, v in spec.grid)))
    cases = []
    for n, (seed, point, out) in enumerate(itertools.product(seeds, points, outages)):
        cases.append(Case(f"c{n:06d}", out, seed, tuple(zip(keys, point))))
    if spec.run == "scenario":
        _check_first_case(sc, cases, net)
    return cases


def _did_you_mean(close: Sequence[str]) -> str:
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def _check_params(sc: Scenario, spec: SweepSpec, net: Any) -> None:
    """Every parameter name against the scenario and grid, before any case runs."""
    where = str(sc.path) if sc.path else "<scenario>"
    names = {p.name for p in sc.profiles}
    writable: list[str] | None = None
    for key, _ in spec.grid:
        if spec.run == "scenario":
            tables = {"pv_share": "sgen", "load_scale": "load"}
            if key in tables and not any(p.table == tables[key] for p in sc.profiles):
                _fail(
                    where,
                    f"sweep.grid.{key}",
                    f'the scenario has no [[profile]] with table = "{tables[key]}" to scale',
                )
            if key == "ev_share" and not any(_is_ev(p) for p in sc.profiles):
                _fail(
                    where,
                    "sweep.grid.ev_share",
                    "the scenario has no EV [[profile]] "
                    '(category = "ev" or shape = "ev_evening") to scale',
                )
            if key.startswith("profile.") and key.split(".")[1] not in names:
                name = key.split(".")[1]
                _fail(
                    where,
                    f"sweep.grid.{key}",
                    f"no [[profile]] named {name!r}; "
                    f"profiles: {', '.join(sorted(names)) or 'none'}"
                    + _did_you_mean(difflib.get_close_matches(name, names, n=2)),
                )
            if key.startswith("setpoint."):
                if writable is None:
                    writable = _writable_points(sc, net, f"sweep.grid.{key}")
                point = key[len("setpoint.") :]
                if point not in writable:
                    close = difflib.get_close_matches(point, writable, n=3)
                    some = "" if close else f" (points such as {', '.join(writable[:4])})"
                    _fail(
                        where,
                        f"sweep.grid.{key}",
                        f"no writable setpoint or command point named {point!r} in the point "
                        f"map of grid {sc.grid}{some}" + _did_you_mean(close),
                    )
        elif key == "ev_share" and not len(_ev_loads(net)):
            _fail(where, "sweep.grid.ev_share", f'grid {sc.grid} has no load with category "ev"')


def _writable_points(sc: Scenario, net: Any, key: str) -> list[str]:
    """Names of the to_field setpoint / command points of the field the scenario runs."""
    from scenarios.validate import field_pointmap, load_hardware_of

    if sc.hardware == "none":
        _fail(
            str(sc.path) if sc.path else "<scenario>",
            key,
            'a setpoint acts on the field: expected hardware = "emulated" or a hardware file, '
            'found hardware = "none"',
        )
    pm = field_pointmap(sc, net, load_hardware_of(sc))
    return [
        p.name for p in pm.points if p.direction == "to_field" and p.kind in ("setpoint", "command")
    ]


def _check_first_case(sc: Scenario, cases: Sequence[Case], net: Any) -> None:
    """The engine's own checks on the first case (outage and setpoint events included), so a
    scenario that cannot run is refused before the sweep starts, not once per case."""
    from scenarios.validate import assert_against_grid, field_pointmap, load_hardware_of

    if not cases:
        return
    hw = load_hardware_of(sc)
    pm = field_pointmap(sc, net, hw)
    assert_against_grid(case_scenario(sc, cases[0]), net, pm, hw)


def _is_ev(p: Any) -> bool:
    return p.table == "load" and (p.category == "ev" or p.shape == "ev_evening")


def _ev_loads(net: Any) -> np.ndarray:
    """Positions (table order) of the loads with category "ev"."""
    if "category" not in net.load.columns:
        return np.zeros(0, dtype=int)
    return np.flatnonzero(net.load["category"].to_numpy() == "ev")


def case_scenario(sc: Scenario, case: Case) -> Scenario:
    """The scenario of one case: its seed, outage (at t=0) and parameter values applied."""
    profiles = list(sc.profiles)
    events = list(sc.events)
    for key, v in case.params:
        if key in ("pv_share", "ev_share", "load_scale"):
            for i, p in enumerate(profiles):
                hit = {
                    "pv_share": p.table == "sgen",
                    "load_scale": p.table == "load",
                    "ev_share": _is_ev(p),
                }[key]
                if hit:
                    profiles[i] = dataclasses.replace(p, scale=p.scale * v)
        elif key.startswith("profile."):
            _, name, attr = key.split(".")
            change: dict[str, Any] = {attr: v}
            profiles = [dataclasses.replace(p, **change) if p.name == name else p for p in profiles]
        elif key.startswith("setpoint."):
            point = key[len("setpoint.") :]
            events.append(
                EventSpec(
                    kind="setpoint",
                    index=len(events),
                    at=0.0,
                    label=f"sweep {key}",
                    params=(("point", point), ("value", v)),
                )
            )
    if case.outage is not None:
        table, label = case.outage
        events.append(
            EventSpec(
                kind=f"{table}_outage",
                index=len(events),
                at=0.0,
                label=f"sweep outage {label}",
                params=(("element", label),),
            )
        )
    return dataclasses.replace(
        sc,
        seed=case.seed if case.seed is not None else sc.seed,
        profiles=tuple(profiles),
        events=tuple(events),
        pace="fast",
    )


# --- worker side: one chunk -----------------------------------------------------------------
@dataclass
class _Grid:
    """A worker's compiled model of one grid and its base inputs (reused by every chunk)."""

    model: Any
    base: dict[tuple[str, str], np.ndarray]
    labels: dict[str, list[str]]
    ev: np.ndarray
    lock: threading.Lock = field(default_factory=threading.Lock)


_GRIDS: dict[tuple[str, str, str], _Grid] = {}
_GRIDS_LOCK = threading.Lock()
#: how many models this process built (tests: once per grid and worker, never per case)
MODEL_BUILDS = 0
_INJ = (("load", "p_mw"), ("load", "q_mvar"), ("sgen", "p_mw"), ("sgen", "q_mvar"))


def _grid(sc: Scenario) -> tuple[_Grid, bool]:
    """The process's cached model for the scenario's grid (built on first use)."""
    global MODEL_BUILDS
    key = (sc.grid, str(sc.grid_path() or ""), sc.backend)
    with _GRIDS_LOCK:
        g = _GRIDS.get(key)
        if g is not None:
            return g, False
        from scenarios.profiles import element_labels
        from scenarios.validate import load_grid
        from twin.model import GridModel

        net = load_grid(sc)
        model = GridModel(net, backend=sc.backend)
        model.solve()
        base = {k: net[k[0]][k[1]].to_numpy(dtype=float).copy() for k in _INJ}
        labels = {t: list(element_labels(net, t)) for t in ("bus", "line", "trafo", "switch")}
        g = _GRIDS[key] = _Grid(model, base, labels, _ev_loads(net))
        MODEL_BUILDS += 1
        return g, True


def _injections(g: _Grid, case: Case, sigma: float) -> dict[tuple[str, str], np.ndarray]:
    """Load / sgen inputs of a steady case (parameters, then the seed's Monte Carlo draw)."""
    lp, lq = g.base[("load", "p_mw")].copy(), g.base[("load", "q_mvar")].copy()
    sp, sq = g.base[("sgen", "p_mw")].copy(), g.base[("sgen", "q_mvar")].copy()
    f = case.param("load_scale")
    lp *= f
    lq *= f
    if g.ev.size:
        e = case.param("ev_share")
        lp[g.ev] *= e
        lq[g.ev] *= e
    s = case.param("pv_share")
    sp *= s
    sq *= s
    if case.seed is not None and sigma > 0 and lp.size:
        draw = 1.0 + sigma * np.random.default_rng(case.seed).standard_normal(lp.size)
        lp *= draw
        lq *= draw
    return {
        ("load", "p_mw"): lp,
        ("load", "q_mvar"): lq,
        ("sgen", "p_mw"): sp,
        ("sgen", "q_mvar"): sq,
    }


def _steady_checks(sc: Scenario, labels: dict[str, list[str]]) -> tuple[list[Any], list[str]]:
    from scenarios.checks import build_check

    kinds = ("converged", "voltage_band", "line_loading", "trafo_loading")
    specs = [c for c in sc.checks if c.kind in kinds]
    skipped = [c.name for c in sc.checks if c.kind not in kinds]
    return [build_check(c, labels) for c in specs], skipped


def _row_from_batch(sc: Scenario, g: _Grid, case: Case, res: Any, r: int, wall: float) -> dict:
    from scenarios.checks import StepState

    nl = len(g.labels["line"])
    vm = res.vm_pu[r]
    lp = res.loading_percent[r]
    conv = bool(res.converged[r])
    checks, _ = _steady_checks(sc, g.labels)
    for c in checks:
        c.observe(
            StepState(
                t=c.spec.window[0],
                converged=conv,
                vm_pu=vm,
                line_loading=lp[:nl],
                trafo_loading=lp[nl:],
            )
        )
    row = _base_row(case)
    row.update({f"check.{c.spec.name}": c.result().passed for c in checks})
    row["converged"] = conv
    row["islanded"] = bool(res.islanded[r])
    row["unsupplied"] = int(res.unsupplied[r])
    row["iterations"] = int(res.iterations[r])
    if conv and np.isfinite(vm).any():
        j = int(np.nanargmin(vm))
        row["worst_vm_pu"], row["worst_vm_bus"] = float(vm[j]), g.labels["bus"][j]
        row["max_vm_pu"] = float(np.nanmax(vm))
    if conv and lp.size and np.isfinite(lp).any():
        j = int(np.nanargmax(lp))
        branch = g.labels["line"] + g.labels["trafo"]
        row["worst_loading_percent"], row["worst_loading_element"] = float(lp[j]), branch[j]
    row["worst_vm_time_s"] = row["worst_loading_time_s"] = 0.0
    row["wall_s"] = wall
    return row


def _base_row(case: Case) -> dict[str, Any]:
    row: dict[str, Any] = {
        "case": case.id,
        "outage": f"{case.outage[0]}:{case.outage[1]}" if case.outage else "",
        "seed": -1 if case.seed is None else case.seed,
        "error": "",
        "worker": os.getpid(),
    }
    for k, v in case.params:
        row[f"param.{k}"] = v
    return row


def _error_row(case: Case, exc: BaseException | str) -> dict[str, Any]:
    row = _base_row(case)
    row["error"] = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    row["converged"] = False
    return row


def _steady_chunk(sc: Scenario, spec: SweepSpec, cases: Sequence[Case], threads: int) -> dict:
    import twin

    g, built = _grid(sc)
    rows: list[dict] = []
    with g.lock:  # one chunk at a time on a process's model (threads_per_worker > 1)
        model = g.model
        groups: dict[tuple, list[Case]] = {}
        for c in cases:
            groups.setdefault((c.seed, c.params), []).append(c)
        plain = [c for grp in groups.values() for c in grp if c.outage is None]
        if plain:
            t0 = time.perf_counter()
            inj = [_injections(g, c, spec.sigma) for c in plain]
            arrays = {
                f"{'sgen_' if t == 'sgen' else ''}{col}": np.stack([i[(t, col)] for i in inj])
                for t, col in _INJ
                if g.base[(t, col)].size
            }
            try:
                res = twin.solve_batch(model, **arrays, threads=threads)
                wall = (time.perf_counter() - t0) / len(plain)
                rows += [_row_from_batch(sc, g, c, res, r, wall) for r, c in enumerate(plain)]
            except Exception as exc:  # noqa: BLE001 - recorded per case
                rows += [_error_row(c, exc) for c in plain]
        for grp in groups.values():
            outs = [c for c in grp if c.outage is not None]
            if outs:
                rows += _steady_outages(sc, spec, g, outs, threads)
    return {"table": _columns(rows), "built": built, "pid": os.getpid()}


def _steady_outages(sc: Scenario, spec: SweepSpec, g: _Grid, cases: list[Case], threads: int):
    import twin

    model = g.model
    lab = {t: {x: i for i, x in zip(model.net[t].index, g.labels[t])} for t in ("line", "trafo")}
    t0 = time.perf_counter()
    inj = _injections(g, cases[0], spec.sigma)
    changed = False
    try:
        changed = any(not np.array_equal(inj[k], g.base[k]) for k in _INJ)
        if changed:
            for (t, col), v in inj.items():
                if v.size:
                    model.update(t, col, v)
            model.solve()
        elements = [(c.outage[0], lab[c.outage[0]][c.outage[1]]) for c in cases if c.outage]
        try:
            res = twin.n_minus_1(model, elements, threads=threads)
            wall = (time.perf_counter() - t0) / len(cases)
            return [_row_from_batch(sc, g, c, res, r, wall) for r, c in enumerate(cases)]
        except Exception:  # noqa: BLE001 - isolate the case that raises
            if len(cases) == 1:
                raise
        rows = []
        for c, el in zip(cases, elements):
            t1 = time.perf_counter()
            try:
                res = twin.n_minus_1(model, [el], threads=threads)
                rows.append(_row_from_batch(sc, g, c, res, 0, time.perf_counter() - t1))
            except Exception as exc:  # noqa: BLE001 - recorded per case
                rows.append(_error_row(c, exc))
        return rows
    except Exception as exc:  # noqa: BLE001 - recorded per case
        return [_error_row(c, exc) for c in cases]
    finally:
        if changed:
            for k, v in g.base.items():
                if v.size:
                    model.update(k[0], k[1], v)
            try:
                model.solve()
            except Exception:  # noqa: BLE001 - the base case solved when the model was built
                _log.warning("the base case did not solve again after a sweep group")


def _scenario_case(sc: Scenario, case: Case, root: Path | None, keep: bool) -> dict[str, Any]:
    from scenarios.engine import run_scenario

    t0, c0 = time.perf_counter(), time.process_time()
    scx = case_scenario(sc, case)
    out = (root / RUNS_DIR / case.id) if keep and root is not None else None
    res = run_scenario(scx, out_dir=out, write_files=out is not None, pace="fast")
    row = _base_row(case)
    row["error"] = res.error
    row.update({f"check.{c.name}": bool(c.passed) for c in res.checks})
    row["converged"] = not res.error and int(res.summary.get("not_converged_steps", 0) or 0) == 0
    row["steps"] = res.steps
    if res.recorder is not None and res.recorder.rows:
        df = res.recorder.to_frame()
        tt = df["time_s"].to_numpy(float)
        _worst(df, tt, "bus.vm_pu[", np.nanargmin, row, "worst_vm")
        _worst(df, tt, "bus.vm_pu[", np.nanargmax, row, "max_vm")
        lo = [
            c
            for c in df.columns
            if c.startswith(("line.loading_percent[", "trafo.loading_percent["))
        ]
        _worst(df[lo + ["time_s"]], tt, "", np.nanargmax, row, "worst_loading", skip="time_s")
    if out is not None:
        row["run_dir"] = str(out)
    row["wall_s"] = time.perf_counter() - t0
    # CPU seconds of this process (all its threads): wall >> cpu means the case waited for a
    # core (a busy machine), cpu >> wall would mean more than one busy thread per worker
    row["cpu_s"] = time.process_time() - c0
    return row


def _worst(
    df: Any, tt: np.ndarray, prefix: str, pick: Callable, row: dict, name: str, skip: str = ""
) -> None:
    cols = [c for c in df.columns if c.startswith(prefix) and c != skip and c != "time_s"]
    if not cols:
        return
    a = df[cols].to_numpy(float)
    if not np.isfinite(a).any():
        return
    k = int(pick(np.where(np.isfinite(a), a, np.nan).reshape(-1)))
    i, j = divmod(k, a.shape[1])
    unit = "pu" if "vm" in name else "percent"
    row[f"{name}_{unit}"] = float(a[i, j])
    row[f"{name}_time_s"] = float(tt[i])
    label = cols[j]
    if name == "worst_vm":
        row["worst_vm_bus"] = label[label.index("[") + 1 : -1]
    elif name == "worst_loading":
        row["worst_loading_element"] = label[label.index("[") + 1 : -1]


def run_chunk(job: dict[str, Any]) -> dict[str, Any]:
    """Run one chunk of cases on a worker (a Dask task). Never raises for a case's error.

    ``job``: scenario, spec, cases, root (output root the worker writes run folders into, or
    None), keep_runs, threads.
    """
    sc, spec, cases = job["scenario"], job["spec"], job["cases"]
    _prepare_process(sc)  # a worker Dask started (or restarted) after the sweep's warm-up
    if spec.run == "steady":
        return _steady_chunk(sc, spec, cases, job.get("threads", 1))
    root = Path(job["root"]) if job.get("root") else None
    rows = []
    for c in cases:
        try:
            rows.append(_scenario_case(sc, c, root, bool(job.get("keep_runs"))))
        except Exception as exc:  # noqa: BLE001 - recorded, the sweep goes on
            rows.append(_error_row(c, exc))
    return {"table": _columns(rows), "built": False, "pid": os.getpid()}


def _columns(rows: list[dict]) -> Any:
    """A chunk's rows as one DataFrame: numpy columns, compact to ship back to the client."""
    import pandas as pd

    return pd.DataFrame(rows)


# --- client side ----------------------------------------------------------------------------
@dataclass
class SweepResult:
    out_dir: Path
    table: Any  # pandas DataFrame, one row per case
    summary: dict[str, Any]
    skipped: int = 0  # cases found done in the folder (resume)

    @property
    def failed(self) -> int:
        return int(self.summary["failed"])


def _fingerprint(sc: Scenario, spec: SweepSpec, cases: list[Case]) -> str:
    h = hashlib.sha256()
    text = sc.path.read_text(encoding="utf-8") if sc.path and sc.path.is_file() else repr(sc)
    h.update(text.encode())
    h.update(repr(spec).encode())
    h.update(repr(cases).encode())
    return h.hexdigest()[:16]


def _done_cases(chunks: Path) -> tuple[set[str], int]:
    import pandas as pd

    done: set[str] = set()
    n = 0
    for f in sorted(chunks.glob("chunk-*.parquet")):
        done.update(pd.read_parquet(f, columns=["case"])["case"].tolist())
        n = max(n, int(f.stem.split("-")[1]) + 1)
    return done, n


def _write_chunk(chunks: Path, n: int, table: Any) -> None:

    tmp = chunks / f".chunk-{n:06d}.parquet.tmp"
    table.to_parquet(tmp, index=False)
    tmp.replace(chunks / f"chunk-{n:06d}.parquet")


def make_client(scheduler: str | None = None, workers: int | None = None) -> Any:
    """A Dask client: to ``scheduler`` (tcp://HOST:PORT) or to a new LocalCluster on 127.0.0.1
    (worker processes, one thread each, one per CPU unless ``workers``; no dashboard)."""
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as exc:
            raise ConfigError(
                "--scheduler", "scheduler", f"cannot reach the Dask scheduler at {scheduler}: {exc}"
            ) from None
    import dask.config

    n = workers or max(1, os.cpu_count() or 1)
    cluster = LocalCluster(
        n_workers=n,
        threads_per_worker=1,
        processes=True,
        # the scheduler always serves HTTP (health, metrics): on a free loopback port, never
        # the fixed 8787 two sweeps would fight over; no dashboard
        dashboard_address="127.0.0.1:0",
        scheduler_kwargs={"dashboard": False},
        host="127.0.0.1",
        scheduler_port=0,
        silence_logs=logging.ERROR,
        # each nanny hands its worker process this config whole (a shallow merge): ours
        # deep-merged into the user's, never a change of this process's global config
        config=dask.config.merge(dask.config.config, _WORKER_CONFIG),
    )
    return Client(cluster)


#: Dask settings of our own LocalCluster's workers, by what an idle 2-worker cluster cost
#: here: 0.069 CPU s per wall second with Dask's defaults, 0.018 with these. Dask's statistical
#: profiler walks every thread's stack each 10 ms (~7 % of a scenario case's CPU, more when
#: cases wait for a core: it ticks by wall time) and nobody reads it (no dashboard); the
#: event-loop tick, system and memory monitors run 5-10x less often. A remote cluster keeps
#: its own settings (docs/sweep.md says how to set these there).
_WORKER_CONFIG: dict[str, Any] = {
    "distributed": {
        "worker": {"profile": {"enabled": False}, "memory": {"monitor-interval": "1s"}},
        "admin": {
            "tick": {"interval": "200ms"},
            "system-monitor": {"interval": "2s", "gil": {"enabled": False}},
        },
    }
}


def run_sweep(
    sc: Scenario,
    spec: SweepSpec,
    out_dir: Path | str,
    *,
    client: Any = None,
    scheduler: str | None = None,
    workers: int | None = None,
    keep_runs: bool = False,
    progress: Callable[[int, int], None] | None = None,
    cases: list[Case] | None = None,
    worker_setup: Callable[[], None] | None = None,
) -> SweepResult:
    """Run every case of a sweep on Dask; write chunks, results.parquet and summary.json.

    Args:
        client: an existing ``distributed.Client`` (else one is made: ``scheduler`` or a
            LocalCluster of ``workers`` processes, closed at the end).
        progress: called with (cases done, cases in all) as chunks finish.
        cases: the cases (default :func:`plan_cases`).
        worker_setup: run once on every worker before the cases (the CLI quiets notices).

    Raises:
        ConfigError: a bad sweep, or ``out_dir`` holds the results of a different sweep.
    """
    out = Path(out_dir)
    cases = plan_cases(sc, spec) if cases is None else cases
    fp = _fingerprint(sc, spec, cases)
    chunks = out / CHUNKS_DIR
    plan = out / PLAN_FILE
    if plan.is_file():
        old = json.loads(plan.read_text(encoding="utf-8")).get("fingerprint")
        if old != fp:
            raise ConfigError(
                str(out),
                "--out",
                "the folder holds the results of a different "
                "sweep (scenario, [sweep] or cases changed): use another --out",
            )
    chunks.mkdir(parents=True, exist_ok=True)
    plan.write_text(
        json.dumps(
            {"fingerprint": fp, "scenario": sc.name, "run": spec.run, "cases": len(cases)}, indent=2
        ),
        encoding="utf-8",
    )
    done, next_chunk = _done_cases(chunks)
    todo = [c for c in cases if c.id not in done]
    skipped = len(cases) - len(todo)
    if not todo:
        if progress:
            progress(skipped, len(cases))
        return gather(out, sc, spec, cases, skipped=skipped, wall_s=None)
    own = client is None
    if own:
        client = make_client(scheduler, workers)
    t0 = time.perf_counter()
    try:
        # each worker imports the packages and loads the grid once, in parallel, before cases
        client.run(warm_worker, sc, worker_setup)
        nworkers = max(1, len(client.scheduler_info().get("workers", {})) or 1)
        size = spec.chunk or _auto_chunk(spec, len(todo), nworkers)
        parts = [todo[i : i + size] for i in range(0, len(todo), size)]
        if progress:
            progress(skipped, len(cases))
        _submit_all(
            client,
            sc,
            spec,
            parts,
            out,
            keep_runs,
            chunks,
            next_chunk,
            fp,
            lambda k: progress(skipped + k, len(cases)) if progress else None,
        )
    finally:
        if own:
            cluster = getattr(client, "cluster", None)
            client.close()
            if cluster is not None:
                cluster.close()
    wall = time.perf_counter() - t0
    return gather(out, sc, spec, cases, skipped=skipped, wall_s=wall)


def warm_worker(sc: Scenario, setup: Callable[[], None] | None = None) -> int:
    """On a worker: import the engine (and the emulator), load (and so cache) the scenario's
    grid, freeze what is left in the heap; its pid."""
    if setup is not None:
        setup()
    _prepare_process(sc)
    return os.getpid()


_PREPARED: set[str] = set()
_PREPARED_LOCK = threading.Lock()


def _in_dask_worker() -> bool:
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return False
    return True


def _prepare_process(sc: Scenario) -> None:
    """Once per process and grid, before its first case: the imports a case needs (pandapower,
    the engine; asyncua and pymodbus when a field is emulated: ~1 s, else paid by the first
    case) and the grid. In a Dask worker the heap is then collected and frozen (gc.freeze):
    the ~250,000 objects of the imported packages leave the collector's generations, so the
    full collections a case's garbage triggers do not walk them again in every case (~0.35 s
    each, a case in three or four). A worker that Dask restarts prepares itself again."""
    key = f"{sc.grid}|{sc.grid_path()}|{sc.hardware}"
    with _PREPARED_LOCK:
        if key in _PREPARED:
            return
        import scenarios.engine  # noqa: F401 - pandapower and the engine: ~2 s once per process
        from scenarios.validate import load_grid

        if sc.hardware != "none":
            import hil.emulator  # noqa: F401 - the emulated substation's protocol stacks

        load_grid(sc)
        if _in_dask_worker():
            import gc

            gc.collect()
            gc.freeze()
        _PREPARED.add(key)


def _auto_chunk(spec: SweepSpec, n: int, workers: int) -> int:
    if spec.run == "scenario":
        return 1  # a scenario case is long: one case per task balances and resumes finely
    # a steady chunk costs a fixed ~30 ms (twin.n_minus_1's set-up on case2869pegase, the
    # transfer, a chunk file) next to ~2 ms a case: four chunks per worker, at most 1024 cases
    return max(1, min(1024, math.ceil(n / (workers * 4))))


def _submit_all(client, sc, spec, parts, out, keep_runs, chunks, next_chunk, fp, tick) -> None:
    from distributed import as_completed

    root = str(out.resolve())
    token = os.urandom(4).hex()  # a fresh key per run: never a result cached from another run
    futures = {}
    for k, part in enumerate(parts):
        job = {
            "scenario": sc,
            "spec": spec,
            "cases": part,
            "root": root,
            "keep_runs": keep_runs,
            "threads": 1,
        }
        f = client.submit(
            run_chunk,
            job,
            key=f"gridtwin-sweep-{fp}-{token}-{k}",
            retries=spec.retries,
            pure=False,
        )
        futures[f] = part
    finished = 0
    n = next_chunk
    for f in as_completed(list(futures)):
        part = futures.pop(f)
        try:
            table = f.result()["table"]
        except Exception as exc:  # noqa: BLE001 - the task failed after its retries
            table = _columns(
                [
                    _error_row(c, f"task failed after retries: {type(exc).__name__}: {exc}")
                    for c in part
                ]
            )
        _write_chunk(chunks, n, table)
        n += 1
        finished += len(part)
        f.release()
        tick(finished)


def gather(
    out_dir: Path | str,
    sc: Scenario,
    spec: SweepSpec,
    cases: list[Case],
    *,
    skipped: int = 0,
    wall_s: float | None = None,
) -> SweepResult:
    """Join the chunk files into results.parquet (case order) and write summary.json."""
    import pandas as pd

    out = Path(out_dir)
    files = sorted((out / CHUNKS_DIR).glob("chunk-*.parquet"))
    df = (
        pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
        if files
        else pd.DataFrame({"case": []})
    )
    df = df.drop_duplicates("case", keep="last")
    order = {c.id: i for i, c in enumerate(cases)}
    df = df[df["case"].isin(order)]
    df = df.sort_values("case", key=lambda s: s.map(order)).reset_index(drop=True)
    checks = [c for c in df.columns if c.startswith("check.")]
    for col in ("error", "worst_vm_pu", "max_vm_pu", "worst_loading_percent"):
        if col not in df.columns:
            df[col] = "" if col == "error" else np.nan
    df["error"] = df["error"].fillna("")
    fails = (df[checks].astype("boolean").fillna(False) == False).sum(axis=1) if checks else 0  # noqa: E712
    df["failed_checks"] = np.where(df["error"] != "", len(checks), fails).astype(int)
    df["passed"] = (df["error"] == "") & (df["failed_checks"] == 0)
    df.to_parquet(out / RESULTS_FILE, index=False)
    summary = summarize(df, sc, spec, len(cases), skipped, wall_s)
    from scenarios.results import write_summary

    write_summary(out / SUMMARY_FILE, summary)
    return SweepResult(out, df, summary, skipped)


def _ranked(df: Any, top: int = 10) -> Any:
    key = df.assign(
        _l=df["worst_loading_percent"].fillna(-np.inf),
        _v=df["worst_vm_pu"].fillna(np.inf),
        _e=df["error"] != "",
    )
    key = key.sort_values(
        ["_e", "failed_checks", "_l", "_v"], ascending=[False, False, False, True]
    )
    return key.drop(columns=["_l", "_v", "_e"]).head(top)


def summarize(
    df: Any, sc: Scenario, spec: SweepSpec, planned: int, skipped: int, wall_s: float | None
) -> dict[str, Any]:
    cols = [
        c
        for c in (
            "case",
            "outage",
            "seed",
            "worst_vm_pu",
            "worst_vm_bus",
            "worst_vm_time_s",
            "worst_loading_percent",
            "worst_loading_element",
            "worst_loading_time_s",
            "failed_checks",
            "error",
        )
        if c in df.columns
    ]
    cols += [c for c in df.columns if c.startswith("param.")]

    def records(d: Any) -> list[dict]:
        return [{k: _plain(v) for k, v in r.items()} for r in d[cols].to_dict("records")]

    vm = df["worst_vm_pu"].astype(float)
    ld = df["worst_loading_percent"].astype(float)

    def spread(x: Any) -> dict[str, float | None]:
        x = x[np.isfinite(x)]
        if not len(x):
            return {"min": None, "p50": None, "p95": None, "max": None}
        return {
            "min": float(x.min()),
            "p5": float(np.percentile(x, 5)),
            "p50": float(np.percentile(x, 50)),
            "p95": float(np.percentile(x, 95)),
            "max": float(x.max()),
        }

    return {
        "scenario": sc.name,
        "file": str(sc.path) if sc.path else None,
        "run": spec.run,
        "cases": planned,
        "finished": int(len(df)),
        "resumed_skipped": skipped,
        "passed": int(df["passed"].sum()),
        "failed": int((~df["passed"]).sum()),
        "errors": int((df["error"] != "").sum()),
        "wall_s": None if wall_s is None else round(wall_s, 3),
        "cases_per_s": round((planned - skipped) / wall_s, 2) if wall_s else None,
        "worst_vm_pu": spread(vm.to_numpy()),
        "worst_loading_percent": spread(ld.to_numpy()),
        "ranking": records(_ranked(df)),
        "lowest_voltage": records(df.loc[vm.sort_values().index[:10]]) if len(df) else [],
        "highest_loading": records(df.loc[ld.sort_values(ascending=False).index[:10]])
        if len(df)
        else [],
        "failed_cases": records(df[~df["passed"]].head(50)),
    }


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def run_cases_locally(sc: Scenario, spec: SweepSpec, cases: list[Case]) -> list[dict]:
    """The same cases one by one in this process, no Dask (the reference the tests compare)."""
    rows: list[dict] = []
    for c in cases:
        job = {"scenario": sc, "spec": spec, "cases": [c], "root": None}
        rows += run_chunk(job)["table"].to_dict("records")
    return rows


__all__ = [
    "Case",
    "PARAM_HELP",
    "SweepResult",
    "SweepSpec",
    "case_scenario",
    "gather",
    "load_sweep",
    "make_client",
    "parse_sweep",
    "plan_cases",
    "run_cases_locally",
    "run_chunk",
    "run_sweep",
]
