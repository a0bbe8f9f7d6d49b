"""Mirror mode: state estimation from field samples and divergence per measured point.

Synchronous and socket-free: the sync loop (``hil/sync.py``) hands in the samples it read and the
model's net; this module builds pandapower measurements, runs the WLS estimation with bad-data
detection and compares every measured point with the twin's estimate.

The estimator works on its own copy of the net: pandapower's estimation writes ``measurement``,
``res_*_est`` and the internal ``_ppc`` of the net it runs on, and the load-flow model must not see
any of that. Before every run the inputs that shape the network (switch states, taps, in-service
flags, load and sgen set-points) are copied over from the model's net.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from twin.pointmap import Point
from twin.quality import Sample

_log = logging.getLogger(__name__)

BadData = Literal["rn_max", "chi2", "none"]

#: Divergence band used when a point has no ``tolerance``, by engineering unit.
DEFAULT_TOLERANCE_BY_UNIT: dict[str, float] = {
    "pu": 0.01,
    "kV": 0.5,
    "kA": 0.01,
    "A": 10.0,
    "MW": 0.1,
    "Mvar": 0.1,
    "MVAr": 0.1,
    "MVA": 0.1,
    "%": 2.0,
    "deg": 1.0,
    "degree": 1.0,
}
#: Same, by column suffix, for points without a unit.
DEFAULT_TOLERANCE_BY_SUFFIX: dict[str, float] = {
    "_pu": 0.01,
    "_mw": 0.1,
    "_mvar": 0.1,
    "_ka": 0.01,
    "_percent": 2.0,
    "_degree": 1.0,
}

#: (table, column) -> (pandapower measurement type, element type, side) for estimator inputs.
#: Current and loading are not fed to the estimator (current measurements make a flat start
#: fragile); they are still compared against the estimate.
SE_MEASUREMENTS: dict[tuple[str, str], tuple[str, str, str | None]] = {
    ("bus", "vm_pu"): ("v", "bus", None),
    ("line", "p_from_mw"): ("p", "line", "from"),
    ("line", "q_from_mvar"): ("q", "line", "from"),
    ("trafo", "p_hv_mw"): ("p", "trafo", "hv"),
    ("trafo", "q_hv_mvar"): ("q", "trafo", "hv"),
    ("load", "p_mw"): ("p", "load", None),
    ("load", "q_mvar"): ("q", "load", None),
    ("sgen", "p_mw"): ("p", "sgen", None),
    ("sgen", "q_mvar"): ("q", "sgen", None),
}

#: (table, column) -> (result table, result column) holding the estimate of a measured point.
ESTIMATE_COLUMNS: dict[tuple[str, str], tuple[str, str]] = {
    ("bus", "vm_pu"): ("res_bus_est", "vm_pu"),
    ("bus", "va_degree"): ("res_bus_est", "va_degree"),
    ("line", "p_from_mw"): ("res_line_est", "p_from_mw"),
    ("line", "q_from_mvar"): ("res_line_est", "q_from_mvar"),
    ("line", "i_ka"): ("res_line_est", "i_ka"),
    ("line", "loading_percent"): ("res_line_est", "loading_percent"),
    ("trafo", "p_hv_mw"): ("res_trafo_est", "p_hv_mw"),
    ("trafo", "q_hv_mvar"): ("res_trafo_est", "q_hv_mvar"),
    ("trafo", "loading_percent"): ("res_trafo_est", "loading_percent"),
}

#: Network-shaping inputs copied from the model's net before each estimation.
SYNCED_COLUMNS: tuple[tuple[str, str], ...] = (
    ("switch", "closed"),
    ("trafo", "tap_pos"),
    ("trafo", "in_service"),
    ("line", "in_service"),
    ("load", "p_mw"),
    ("load", "q_mvar"),
    ("load", "in_service"),
    ("sgen", "p_mw"),
    ("sgen", "q_mvar"),
    ("sgen", "in_service"),
)

#: Elements whose injection at a bus is not a measured set-point: a bus with any of these cannot
#: give a load/sgen estimate from its estimated injection.
_UNKNOWN_INJECTORS: tuple[str, ...] = ("ext_grid", "gen", "shunt", "ward", "xward", "storage")


def default_tolerance(point: Point, field_value: float | None = None) -> float:
    """The divergence band of ``point``: its own ``tolerance``, else a default per unit."""
    if point.tolerance is not None:
        return float(point.tolerance)
    if point.unit in DEFAULT_TOLERANCE_BY_UNIT:
        return DEFAULT_TOLERANCE_BY_UNIT[point.unit]
    for suffix, tol in DEFAULT_TOLERANCE_BY_SUFFIX.items():
        if point.column.endswith(suffix):
            return tol
    # Unknown quantity: 2 % of the value with a small floor, so zero never alarms on noise.
    return 1e-3 + 0.02 * abs(field_value or 0.0)


@dataclass(frozen=True, slots=True)
class Divergence:
    """One measured point compared with the twin.

    Attributes:
        point: point name.
        time_s: time of the step.
        field_value, twin_value: what the field reported and what the twin estimates.
        tolerance: the band; ``exceeded`` when ``|field - twin| > tolerance``.
    """

    point: str
    time_s: float
    field_value: float
    twin_value: float
    tolerance: float
    unit: str = ""

    @property
    def difference(self) -> float:
        return abs(self.field_value - self.twin_value)

    @property
    def exceeded(self) -> bool:
        return self.difference > self.tolerance

    @property
    def message(self) -> str:
        return (
            f"divergence on {self.point} at t={self.time_s:.3f} s: field {self.field_value:.6g} "
            f"{self.unit}, twin {self.twin_value:.6g} {self.unit}, |difference| "
            f"{self.difference:.4g} exceeds the tolerance {self.tolerance:.4g}"
        )


def divergences(
    points: Iterable[Point],
    field_values: Mapping[str, Sample | float],
    twin_values: Mapping[str, float],
    time_s: float,
) -> list[Divergence]:
    """Compare every point that has a GOOD field value and a finite twin value.

    Points without either are left out: no alarm without a real, comparable difference.
    """
    out: list[Divergence] = []
    for p in points:
        fv = field_values.get(p.name)
        if fv is None:
            continue
        if isinstance(fv, Sample):
            if not fv.quality.is_good:
                continue
            fv = fv.value
        tv = twin_values.get(p.name)
        if tv is None or not math.isfinite(fv) or not math.isfinite(tv):
            continue
        out.append(
            Divergence(p.name, time_s, float(fv), float(tv), default_tolerance(p, fv), p.unit)
        )
    return out


@dataclass(frozen=True)
class EstimationResult:
    """The outcome of one estimation.

    Attributes:
        success: pandapower's estimation converged (after bad-data removal, if any).
        estimates: point name -> estimated value, for every point the estimate covers.
        measurements: number of measurements fed to the estimator.
        bad_data: names of the points removed as bad data (``rn_max``) or, for ``chi2``, all
            measured points when the chi-square test flagged bad data somewhere.
        iterations: estimator iterations (-1 when not reported).
        error: why the estimation failed (empty on success).
    """

    success: bool
    estimates: dict[str, float] = field(default_factory=dict)
    measurements: int = 0
    bad_data: tuple[str, ...] = ()
    iterations: int = -1
    error: str = ""


class StateEstimator:
    """WLS state estimation of a net from field samples (pandapower.estimation).

    Args:
        net: the model's pandapower net; copied, never written.
        points: the measured ``to_twin`` points (others are ignored).
        bad_data: ``"rn_max"`` (largest normalised residual test, removes bad measurements),
            ``"chi2"`` (chi-square test only flags) or ``"none"``.
        rn_max_threshold: normalised residual above which a measurement is bad.
        resolve: ``(net, point) -> pandapower index`` of the point's element; default resolves
            an int element as an index and a str as a unique ``name`` or ``<table><index>`` label.
        std_dev: standard deviation per point name; default ``tolerance / 3`` so the tolerance
            band is about three standard deviations.
    """

    def __init__(
        self,
        net: Any,
        points: Iterable[Point],
        *,
        bad_data: BadData = "rn_max",
        rn_max_threshold: float = 3.0,
        resolve: Any = None,
        std_dev: Mapping[str, float] | None = None,
        max_iterations: int = 50,
        tolerance: float = 1e-6,
        max_bad_data: int = 5,
    ) -> None:
        if bad_data not in ("rn_max", "chi2", "none"):
            raise ValueError(f"bad_data: expected 'rn_max', 'chi2' or 'none', found {bad_data!r}")
        import pandas as pd

        self.bad_data = bad_data
        self.rn_max_threshold = float(rn_max_threshold)
        self.max_iterations = int(max_iterations)
        self.max_bad_data = int(max_bad_data)
        self.tolerance = float(tolerance)
        #: in-service loads and sgens per bus, for one _estimates() call
        self._at_bus: dict[int, list[tuple[str, int, dict[str, float]]]] | None = None
        self._resolve = resolve or resolve_element
        self.net = copy.deepcopy(net)
        self.net["_ppc"] = None  # stale options from a saved net must not leak into the run
        for key in [k for k in self.net.keys() if isinstance(k, str) and k.endswith("_est")]:
            del self.net[key]
        self.points: tuple[Point, ...] = tuple(
            p
            for p in points
            if p.direction == "to_twin"
            and ((p.table, p.column) in ESTIMATE_COLUMNS or (p.table, p.column) in SE_MEASUREMENTS)
        )
        std_dev = dict(std_dev or {})
        self._injection_ok = self._buses_with_known_injection()
        rows: list[dict[str, Any]] = []
        #: per measurement row: the points it is made of, with their sign
        self._sources: list[list[tuple[str, float]]] = []
        self._element: dict[str, int] = {}
        injections: dict[tuple[int, str], list[tuple[Point, float]]] = {}
        for p in self.points:
            idx = int(self._resolve(self.net, p))
            self._element[p.name] = idx
            spec = SE_MEASUREMENTS.get((p.table, p.column))
            if spec is None:
                continue
            mtype, etype, side = spec
            sd = float(std_dev.get(p.name, default_tolerance(p) / 3.0))
            if etype in ("load", "sgen"):
                # pandapower's per-element measurements lose their index in the bad-data test
                # (KeyError in remove_bad_data): feed a bus injection measurement instead
                bus = int(self.net[etype].at[idx, "bus"])
                sign = 1.0 if etype == "load" else -1.0  # bus injection: consumer convention
                injections.setdefault((bus, mtype), []).append((p, sign))
                continue
            rows.append(_row(p.name, mtype, etype, idx, sd, side))
            self._sources.append([(p.name, 1.0)])
        for (bus, mtype), members in sorted(injections.items()):
            if bus not in self._injection_ok or not self._all_measured(bus, mtype, members):
                continue
            sd = math.sqrt(sum((default_tolerance(p) / 3.0) ** 2 for p, _ in members))
            col = "p_mw" if mtype == "p" else "q_mvar"
            rows.append(_row(f"bus{bus}.{col}_injection", mtype, "bus", bus, sd, None))
            self._sources.append([(p.name, sign) for p, sign in members])
        template = pd.DataFrame(rows)
        if len(template):
            template.index = pd.RangeIndex(len(template))
        self._template = template

    # --- public -------------------------------------------------------------------------------
    def sync_from(self, net: Any) -> None:
        """Copy the network-shaping inputs (topology, taps, set-points) from the model's net."""
        for table, column in SYNCED_COLUMNS:
            src = net.get(table) if hasattr(net, "get") else None
            dst = self.net.get(table)
            if src is None or dst is None or column not in src or len(src) != len(dst):
                continue
            dst[column] = src[column].to_numpy(copy=True)

    def estimate(self, samples: Mapping[str, Sample], *, net: Any = None) -> EstimationResult:
        """Run the estimation on the GOOD samples among ``samples``.

        Args:
            samples: point name -> Sample (others ignored; non-GOOD ones are left out).
            net: the model's net to copy topology and set-points from first (optional).
        """
        from pandapower.estimation import chi2_analysis, estimate

        if net is not None:
            self.sync_from(net)
        values = np.full(len(self._sources), np.nan)
        for i, sources in enumerate(self._sources):
            total = 0.0
            for name, sign in sources:
                s = samples.get(name)
                if s is None or not s.quality.is_good or not math.isfinite(s.value):
                    total = math.nan
                    break
                total += sign * s.value
            values[i] = total
        good = np.isfinite(values)
        meas = self._template.loc[good].copy()
        meas["value"] = values[good]
        self.net["measurement"] = meas
        n = int(good.sum())
        if n == 0:
            return EstimationResult(False, error="no GOOD measurement to estimate from")
        kwargs = {"init": "flat", "tolerance": self.tolerance}
        bad: tuple[str, ...] = ()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if self.bad_data == "rn_max":
                    ok, iterations, removed = self._rn_max_test()
                    bad = tuple(n for row in removed for n, _ in self._sources[row])
                elif self.bad_data == "chi2":
                    flagged = chi2_analysis(
                        self.net, maximum_iterations=self.max_iterations, **kwargs
                    )
                    if flagged:
                        bad = tuple(n for row in meas.index for n, _ in self._sources[row])
                    res = estimate(self.net, maximum_iterations=self.max_iterations, **kwargs)
                    ok, iterations = _success(res)
                else:
                    res = estimate(self.net, maximum_iterations=self.max_iterations, **kwargs)
                    ok, iterations = _success(res)
        except Exception as exc:  # pandapower raises assorted errors on unobservable sets
            _log.warning("state estimation failed with %d measurements: %s", n, exc)
            return EstimationResult(False, measurements=n, error=f"{type(exc).__name__}: {exc}")
        if not ok:
            return EstimationResult(
                False, measurements=n, bad_data=bad, error="estimation did not converge"
            )
        return EstimationResult(
            True, self._estimates(), measurements=n, bad_data=bad, iterations=iterations
        )

    # --- helpers ------------------------------------------------------------------------------
    def _rn_max_test(self) -> tuple[bool, int, list[int]]:
        """Largest normalised residual test; returns (success, iterations, removed rows).

        pandapower's own ``remove_bad_data`` divides by ``sqrt(Omega_ii)`` also for critical
        measurements (Omega_ii ~ 0, residual not testable) and then tries to drop pseudo
        measurements that have no row (KeyError). Here critical measurements are not tested
        and only rows of our own measurement table can be removed.
        """
        from pandapower.estimation.state_estimation import StateEstimation, _initialize_voltage

        removed: list[int] = []
        iterations = -1
        for _ in range(self.max_bad_data + 1):
            se = StateEstimation(self.net, self.tolerance, self.max_iterations, algorithm="wls")
            v0, d0 = _initialize_voltage(self.net, "flat")
            se.estimate(v_start=v0, delta_start=d0, zero_injection="aux_bus")
            sv = se.solver
            iterations = int(getattr(sv, "iterations", -1) or -1)
            if not getattr(sv, "successful", False):
                return False, iterations, removed
            r = np.abs(np.asarray(sv.r).ravel())
            r_var = 1.0 / np.diag(sv.R_inv)
            hgh = np.einsum("ij,ji->i", sv.H, np.linalg.solve(sv.Gm, sv.H.T))
            omega = r_var - hgh
            testable = omega > 1e-6 * r_var
            rn = np.zeros_like(r)
            rn[testable] = r[testable] / np.sqrt(omega[testable])
            pp_idx = np.asarray(sv.pp_meas_indices, dtype=float)
            if len(pp_idx) != len(rn):
                return True, iterations, removed  # layout we do not know: no test
            rows = set(int(i) for i in self.net.measurement.index)
            own = np.array([np.isfinite(i) and int(i) in rows for i in pp_idx], dtype=bool)
            cand = testable & own
            if not cand.any() or rn[cand].max() <= self.rn_max_threshold:
                return True, iterations, removed
            k = int(np.flatnonzero(cand)[np.argmax(rn[cand])])
            row = int(pp_idx[k])
            _log.debug("bad data: %s (normalised residual %.1f)", self._sources[row], rn[k])
            self.net["measurement"] = self.net.measurement.drop(row)
            removed.append(row)
        return False, iterations, removed

    def _estimates(self) -> dict[str, float]:
        net = self.net
        out: dict[str, float] = {}
        self._at_bus = None  # set-points may have changed since the last step
        for p in self.points:
            idx = self._element[p.name]
            spec = ESTIMATE_COLUMNS.get((p.table, p.column))
            if spec is not None:
                res = net.get(spec[0])
                if res is None or spec[1] not in res or idx not in res.index:
                    continue
                out[p.name] = float(res.at[idx, spec[1]])
            elif p.table in ("load", "sgen") and p.column in ("p_mw", "q_mvar"):
                v = self._element_injection_estimate(p.table, p.column, idx)
                if v is not None:
                    out[p.name] = v
        return out

    def _all_measured(self, bus: int, mtype: str, members: list[tuple[Point, float]]) -> bool:
        """Whether every in-service load and sgen at ``bus`` has a point in ``members``."""
        col = "p_mw" if mtype == "p" else "q_mvar"
        have = {(p.table, self._element[p.name]) for p, _ in members if p.column == col}
        for table in ("load", "sgen"):
            df = self.net[table]
            if not len(df):
                continue
            at = df.index[(df["bus"] == bus) & df["in_service"]]
            if any((table, int(i)) not in have for i in at):
                return False
        return True

    def _buses_with_known_injection(self) -> set[int]:
        """Buses whose injection is only loads and sgens (so each element can be estimated)."""
        net = self.net
        buses = set(int(b) for b in net.bus.index)
        for table in _UNKNOWN_INJECTORS:
            df = net.get(table)
            if df is not None and len(df):
                buses -= set(int(b) for b in df["bus"])
        return buses

    def _element_injection_estimate(self, table: str, column: str, idx: int) -> float | None:
        """Estimate of one load/sgen P or Q from its bus's estimated injection.

        ``res_bus_est`` is in the load convention: injection = loads - sgens. The other elements
        at the bus are taken at their current set-points (scaled as pandapower does).
        """
        net = self.net
        bus = int(net[table].at[idx, "bus"])
        if bus not in self._injection_ok or "res_bus_est" not in net:
            return None
        total = float(net.res_bus_est.at[bus, column])
        others = 0.0
        for t, j, row in self._elements_at_bus().get(bus, ()):
            if t == table and j == idx:
                continue
            sign = 1.0 if t == "load" else -1.0
            others += sign * float(row[column]) * float(row["scaling"])
        own = total - others
        return own if table == "load" else -own

    def _elements_at_bus(self) -> dict[int, list[tuple[str, int, dict[str, float]]]]:
        """In-service loads, then sgens, per bus: ``(table, index, {p_mw, q_mvar, scaling})``.

        Built once per :meth:`_estimates` (one pass over the tables instead of a boolean mask
        of both tables for every estimated load and sgen: a third of a mirror step here)."""
        if self._at_bus is not None:
            return self._at_bus
        out: dict[int, list[tuple[str, int, dict[str, float]]]] = {}
        for t in ("load", "sgen"):
            df = self.net[t]
            if not len(df):
                continue
            n = len(df)
            scaling = df["scaling"].to_numpy(float) if "scaling" in df else np.ones(n)
            cols = {c: df[c].to_numpy(float) for c in ("p_mw", "q_mvar")}
            for k, (j, b, on) in enumerate(
                zip(df.index, df["bus"].to_numpy(), df["in_service"].to_numpy())
            ):
                if on:
                    row = {c: float(v[k]) for c, v in cols.items()}
                    row["scaling"] = float(scaling[k])
                    out.setdefault(int(b), []).append((t, int(j), row))
        self._at_bus = out
        return out


def _row(name: str, mtype: str, etype: str, element: int, sd: float, side: str | None) -> dict:
    return {
        "name": name,
        "measurement_type": mtype,
        "element_type": etype,
        "element": int(element),
        "value": math.nan,
        "std_dev": float(sd),
        "side": side,
    }


def _success(res: Any) -> tuple[bool, int]:
    if isinstance(res, dict):
        return bool(res.get("success")), int(res.get("num_iterations") or -1)
    return bool(res), -1


def resolve_element(net: Any, point: Point) -> int:
    """The pandapower index of ``point``'s element (int index, unique name or ``<table><n>``).

    Uses ``twin.pointmap.resolve_element`` when that exists, so the rules live in one place.
    """
    try:
        from twin import pointmap as _pm

        fn = getattr(_pm, "resolve_element", None)
    except ImportError:  # pragma: no cover
        fn = None
    if fn is not None:
        return int(fn(net, point))
    return _resolve_element_fallback(net, point)


def _resolve_element_fallback(net: Any, point: Point) -> int:
    from twin.errors import PointMapError

    df = net[point.table]
    el = point.element
    if isinstance(el, (int, np.integer)):
        if int(el) in df.index:
            return int(el)
    else:
        if "name" in df:
            hits = df.index[df["name"] == el]
            if len(hits) == 1:
                return int(hits[0])
        if el.startswith(point.table) and el[len(point.table) :].isdigit():
            i = int(el[len(point.table) :])
            if i in df.index:
                return i
    raise PointMapError(
        f"point {point.name!r}: expected an element of table {point.table!r} (index, unique name "
        f"or '{point.table}<index>'), found {el!r}"
    )


def measured_points(points: Sequence[Point]) -> list[Point]:
    """The ``to_twin`` measurement points the estimator and divergence look at."""
    return [
        p
        for p in points
        if p.direction == "to_twin"
        and p.kind in ("measurement", "status")
        and ((p.table, p.column) in ESTIMATE_COLUMNS or (p.table, p.column) in SE_MEASUREMENTS)
    ]
