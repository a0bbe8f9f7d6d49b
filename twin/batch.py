"""Many cases on one compiled model, solved in the kernel: N-1 outages and injection batches.

``n_minus_1(model)`` removes one branch per case by subtracting its admittances from the
compiled Ybus (the analysed pattern and ordering are reused), and ``solve_batch(model, p_mw=...)``
solves many load injection sets; both run in the kernel's ``batch`` call (no pandas per case, the
GIL released), split over a thread pool. Outages that cut buses off from every slack (a bridge
branch) are solved for the part that keeps a slack: the buses on the other side are held out of
the solve (NaN voltages, ``islanded`` True, counted in ``unsupplied``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from twin.errors import InvalidInput

if TYPE_CHECKING:
    from twin.model import GridModel

_BRANCH_TABLES = ("line", "trafo")
# chord steps on the base case's factors before Newton steps (the kernel's ``batch(chord=)``)
CHORD_STEPS = 10


@dataclass(frozen=True)
class BatchResult:
    """Per-case results of a batch (rows = cases), numpy arrays ordered like the net's tables.

    Attributes:
        element: per case ``(table, index)`` of the outaged branch (``("", -1)``: no outage).
        converged, islanded: per case booleans (islanded: some buses lost every slack).
        iterations: Newton iterations per case.
        unsupplied: per case, how many in-service pandapower buses lost every slack.
        bus: pandapower bus indices (the columns of ``vm_pu``).
        vm_pu: cases x buses (NaN where not supplied or not converged).
        branch: ``(table, index)`` of the columns of ``loading_percent`` (lines, then trafos).
        loading_percent: cases x branches, pandapower's ``res_line`` / ``res_trafo`` loading
            (0 for the outaged branch and branches without supply, NaN when not converged).
        min_vm_pu, max_vm_pu, max_loading_percent: the worst values per case.
    """

    element: list[tuple[str, int]]
    converged: np.ndarray
    islanded: np.ndarray
    iterations: np.ndarray
    unsupplied: np.ndarray
    bus: np.ndarray
    vm_pu: np.ndarray
    branch: list[tuple[str, int]]
    loading_percent: np.ndarray
    min_vm_pu: np.ndarray
    max_vm_pu: np.ndarray
    max_loading_percent: np.ndarray

    def __len__(self) -> int:
        return int(self.converged.shape[0])


@dataclass
class _Branches:
    """Every pandapower line / trafo as the compiled model sees it."""

    keys: list[tuple[str, int]]
    row: np.ndarray  # internal branch row or -1
    f: np.ndarray  # internal end buses (-1 when the branch is not in the compile)
    t: np.ndarray
    stamps: np.ndarray  # (4, m) complex: Yff, Yft, Ytf, Ytt
    cf: np.ndarray
    ct: np.ndarray


def _branches(c: Any, net: Any) -> _Branches:
    """Stamps, end buses and loading coefficients of every line and trafo (one pass)."""
    from pandapower.pypower.makeYbus import branch_vectors

    ppci = c.ppci
    branch_is = np.asarray(ppci["internal"]["branch_is"], dtype=bool)
    to_int = np.where(branch_is, np.cumsum(branch_is) - 1, -1)
    ytt, yff, yft, ytf = branch_vectors(ppci["branch"], ppci["branch"].shape[0])
    base_kv = ppci["bus"][:, 9].real  # BASE_KV
    keys: list[tuple[str, int]] = []
    rows, cfs, cts = [], [], []
    lookups = net._pd2ppc_lookups["branch"]
    for table in _BRANCH_TABLES:
        df = net[table]
        if len(df) == 0:
            continue
        rng = lookups.get(table)
        if rng is None or int(rng[1]) - int(rng[0]) != len(df):
            raise InvalidInput(table, "in_service", None, "an unexpected branch layout", "")
        r = to_int[int(rng[0]) : int(rng[1])]
        keys.extend((table, int(i)) for i in df.index)
        rows.append(r)
        if table == "line":
            rating = (df["max_i_ka"] * df["df"] * df["parallel"]).to_numpy(float)
            with np.errstate(divide="ignore"):
                k = c.base_mva / np.sqrt(3) / rating * 100.0
            cfs.append((k, None))
        else:
            par_df = (df["parallel"] * df["df"]).to_numpy(float)
            sn = df["sn_mva"].to_numpy(float)
            k_hv = c.base_mva * df["vn_hv_kv"].to_numpy(float) / (sn * par_df) * 100.0
            k_lv = c.base_mva * df["vn_lv_kv"].to_numpy(float) / (sn * par_df) * 100.0
            cfs.append((k_hv, k_lv))
        cts.append(table)
    row = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    br = ppci["branch"]
    # a branch patched out of the compile (GridModel topology patch) is not a candidate; one
    # opened at one end by a switch is, with the stamps it keeps (its closed end's shunt)
    half: dict[int, np.ndarray] = getattr(c, "half", {})
    out_rows = np.asarray(sorted(set(getattr(c, "out_rows", ())) - half.keys()), dtype=np.int64)
    row = np.where(np.isin(row, out_rows), -1, row)
    ok = row >= 0
    f = np.full(row.shape[0], -1, dtype=np.int64)
    t = np.full(row.shape[0], -1, dtype=np.int64)
    f[ok] = br[row[ok], 0].real.astype(np.int64)
    t[ok] = br[row[ok], 1].real.astype(np.int64)
    stamps = np.zeros((4, row.shape[0]), dtype=complex)
    for k, y in enumerate((yff, yft, ytf, ytt)):
        stamps[k, ok] = y[row[ok]]
    for j in np.flatnonzero(np.isin(row, list(half))).tolist() if half else ():
        # the kept stamps sit at the closed end alone: the open end is that bus too (no flow)
        stamps[:, j] = half[int(row[j])]
        if stamps[3, j] == 0:
            t[j] = f[j]
        else:
            f[j] = t[j]
    # loading = max(|I_f| cf, |I_t| ct) with I in per unit: pandapower's current-based loading
    cf = np.zeros(row.shape[0])
    ct = np.zeros(row.shape[0])
    at = 0
    for (k1, k2), table in zip(cfs, cts):
        m = k1.shape[0]
        sl = slice(at, at + m)
        fs, ts = np.where(ok[sl], f[sl], 0), np.where(ok[sl], t[sl], 0)
        kv_f, kv_t = base_kv[fs], base_kv[ts]
        if table == "line":
            cf[sl], ct[sl] = k1 / kv_f, k1 / kv_t
        else:
            cf[sl], ct[sl] = k1 / kv_f, k2 / kv_t
        at += m
    return _Branches(keys, row, f, t, stamps, cf, ct)


def _ybus_positions(c: Any, f: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(4, m) positions of (f,f), (f,t), (t,f), (t,t) in the compiled CSR Ybus."""
    indptr = c.y_indptr.astype(np.int64)
    indices = c.y_indices.astype(np.int64)
    n = c.n
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    keys = rows * n + indices  # sorted: CSR with sorted indices
    out = np.empty((4, f.shape[0]), dtype=np.int64)
    for k, (r, col) in enumerate(((f, f), (f, t), (t, f), (t, t))):
        want = r * n + col
        pos = np.searchsorted(keys, want)
        pos = np.minimum(pos, keys.shape[0] - 1)
        if not np.array_equal(keys[pos], want):
            raise RuntimeError("a branch entry is missing from the compiled Ybus pattern")
        out[k] = pos
    return out


def _bridges(n: int, f: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, Any]:
    """Bridges of the multigraph (edge ids) and, per bridge, the DFS subtree below it.

    Returns (is_bridge per edge, (tin, order, child_of_bridge, tout)): the subtree of a bridge is
    ``order[tin[child] : tout[child]]``.
    """
    m = f.shape[0]
    adj_ptr = np.zeros(n + 1, dtype=np.int64)
    ends = np.concatenate([f, t])
    other = np.concatenate([t, f])
    eid = np.concatenate([np.arange(m), np.arange(m)])
    srt = np.argsort(ends, kind="stable")
    np.add.at(adj_ptr, ends + 1, 1)
    adj_ptr = np.cumsum(adj_ptr)
    nbr = other[srt].tolist()
    nid = eid[srt].tolist()
    ptr = adj_ptr.tolist()
    tin = [-1] * n
    low = [0] * n
    tout = [0] * n
    order: list[int] = []
    is_bridge = np.zeros(m, dtype=bool)
    child = np.full(m, -1, dtype=np.int64)
    timer = 0
    for root in range(n):
        if tin[root] >= 0:
            continue
        tin[root] = low[root] = timer
        timer += 1
        order.append(root)
        stack = [(root, -1, ptr[root])]
        while stack:
            v, pe, it = stack[-1]
            if it < ptr[v + 1]:
                stack[-1] = (v, pe, it + 1)
                w, e = nbr[it], nid[it]
                if e == pe:
                    continue
                if tin[w] < 0:
                    tin[w] = low[w] = timer
                    timer += 1
                    order.append(w)
                    stack.append((w, e, ptr[w]))
                elif tin[w] < low[v]:
                    low[v] = tin[w]
            else:
                stack.pop()
                tout[v] = timer
                if stack:
                    u = stack[-1][0]
                    if low[v] < low[u]:
                        low[u] = low[v]
                    if low[v] > tin[u]:
                        is_bridge[pe] = True
                        child[pe] = v
    return is_bridge, (np.asarray(tin), np.asarray(order), child, np.asarray(tout))


def _dead_sets(c: Any, edges_f: np.ndarray, edges_t: np.ndarray, kind: np.ndarray):
    """Per compiled branch row: the internal buses without a slack once it is out (or None)."""
    n = c.n
    is_bridge, (tin, order, child, tout) = _bridges(n, edges_f, edges_t)
    slack_pos = np.zeros(n + 1, dtype=np.int64)  # prefix count of slacks along the DFS order
    slack_pos[1:] = np.cumsum(kind[order] == 0)
    # component of each bus: the DFS root range it falls into
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    g = sp.coo_matrix((np.ones(edges_f.shape[0]), (edges_f, edges_t)), shape=(n, n))
    _, comp = connected_components(g, directed=False)
    dead: dict[int, np.ndarray] = {}
    for e in np.flatnonzero(is_bridge):
        v = int(child[e])
        lo, hi = int(tin[v]), int(tout[v])
        below = order[lo:hi]
        if slack_pos[hi] - slack_pos[lo] == 0:
            dead[int(e)] = below
        else:
            same = np.flatnonzero(comp == comp[v])
            rest = np.setdiff1d(same, below, assume_unique=True)
            if not np.any(kind[rest] == 0):
                dead[int(e)] = rest
    return dead


def _threads(threads: int | None) -> int:
    if threads is None:
        return max(1, os.cpu_count() or 1)
    if not isinstance(threads, int) or threads < 1:
        raise InvalidInput("batch", "threads", None, threads, "a positive integer or None")
    return threads


def _run(
    model: GridModel, cm: Any, p_spec, q_spec, patches, dead, case_branch, br, threads
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Run the kernel's batch over a thread pool; returns the raw per-case arrays."""
    ncase = len(case_branch)
    n = cm.n
    out_vm = np.empty((ncase, n))
    out_va = np.empty((ncase, n))
    out_it = np.zeros(ncase, dtype=np.int32)
    out_st = np.zeros(ncase, dtype=np.int8)
    out_nrm = np.zeros(ncase)
    out_load = np.empty((ncase, br.row.shape[0]))
    patch_ptr, patch_pos, patch_re, patch_im = patches
    dead_ptr, dead_bus = dead
    branch = (
        br.f.astype(np.int32), br.t.astype(np.int32),
        *(np.ascontiguousarray(x) for s in br.stamps for x in (s.real, s.imag)),
        br.cf, br.ct,
    )  # fmt: skip
    kern = model._kernel
    args = (
        cm.plan, cm.y_indptr, cm.y_indices, cm.y_re, cm.y_im, cm.kind, p_spec, q_spec, cm.vset,
        cm.vm, cm.va, patch_ptr, patch_pos, patch_re, patch_im, dead_ptr, dead_bus,
        np.ascontiguousarray(case_branch, dtype=np.int32), branch, out_vm, out_va, out_load,
        out_it, out_st, out_nrm,
    )  # fmt: skip
    nthreads = min(_threads(threads), max(ncase, 1))
    chunks = max(1, min(ncase, nthreads * 4))
    bounds = np.linspace(0, ncase, chunks + 1).astype(int)

    def work(k: int) -> None:
        kern.batch(
            *args, int(bounds[k]), int(bounds[k + 1]), model.tolerance_mva, model.max_iteration,
            cm.retry, CHORD_STEPS,
        )  # fmt: skip

    if nthreads == 1 or ncase < 2:
        for k in range(chunks):
            work(k)
    else:
        with ThreadPoolExecutor(nthreads) as pool:
            list(pool.map(work, range(chunks)))
    return out_vm, out_load, out_it, out_st


def _finish(model, cm, br, out_vm, out_load, out_it, out_st, elements, islanded) -> BatchResult:
    ib = cm.bus_int
    vm_pu = np.full((out_vm.shape[0], ib.shape[0]), np.nan)
    ok = ib >= 0
    vm_pu[:, ok] = out_vm[:, ib[ok]]
    on = model.net.bus["in_service"].to_numpy(dtype=bool) & ok
    unsupplied = np.sum(np.isnan(vm_pu[:, on]), axis=1)
    converged = out_st == 0
    unsupplied[~converged] = 0
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            min_vm = np.nanmin(np.where(converged[:, None], vm_pu, np.nan), axis=1, initial=np.inf)
            max_vm = np.nanmax(np.where(converged[:, None], vm_pu, -np.inf), axis=1)
            max_load = np.nanmax(out_load, axis=1) if out_load.shape[1] else np.zeros(len(out_st))
    min_vm[~converged] = np.nan
    max_vm[~converged] = np.nan
    return BatchResult(
        # islanded: the outage cut in-service pandapower buses off (not just auxiliary buses)
        element=elements, converged=converged, islanded=np.asarray(islanded, dtype=bool)
        & (unsupplied > 0),
        iterations=out_it.astype(np.int64), unsupplied=unsupplied.astype(np.int64),
        bus=model.net.bus.index.to_numpy(), vm_pu=vm_pu, branch=list(br.keys),
        loading_percent=out_load, min_vm_pu=min_vm, max_vm_pu=max_vm,
        max_loading_percent=max_load,
    )  # fmt: skip


def _setup(model: GridModel, cm: Any) -> dict[str, Any]:
    """What every N-1 call on this compile needs: branches, bridges, Ybus positions (cached).

    Kept on the model for its current compile and patched-out set; any recompile or patch
    makes a new key, so a stale entry is never used.
    """
    key = (id(model._c), cm.out_rows, cm.y_indptr.shape[0], cm.y_indices.shape[0])
    net = model.net
    labels = tuple(net[t].index for t in _BRANCH_TABLES)
    cached = getattr(model, "_n1_setup", None)
    if (
        cached is not None
        and cached["key"] == key
        and cached["c"] is model._c
        and all(a is b for a, b in zip(cached["labels"], labels))
    ):
        return cached
    br = _branches(cm, net)
    # every compiled branch (trafo3w, impedance, switches included) makes the bus graph
    allb = cm.ppci["branch"]
    live = np.ones(allb.shape[0], dtype=bool)
    live[np.asarray(sorted(cm.out_rows), dtype=np.int64)] = False  # patched out of the compile
    ef = allb[live, 0].real.astype(np.int64)
    et = allb[live, 1].real.astype(np.int64)
    live_rows = np.flatnonzero(live)
    edge_of_row = np.full(allb.shape[0], -1, dtype=np.int64)
    edge_of_row[live_rows] = np.arange(live_rows.shape[0])
    on = br.row >= 0
    pos = np.zeros((4, br.row.shape[0]), dtype=np.int64)
    if on.any():
        pos[:, on] = _ybus_positions(cm, br.f[on], br.t[on])
    cached = {
        "key": key, "c": model._c, "labels": labels, "br": br,
        "where": {k: i for i, k in enumerate(br.keys)},
        "dead": _dead_sets(cm, ef, et, cm.kind), "edge_of_row": edge_of_row, "pos": pos,
    }  # fmt: skip
    setattr(model, "_n1_setup", cached)  # noqa: B010 - per-model cache, not an attribute of the API
    return cached


def n_minus_1(
    model: GridModel,
    elements: Sequence[tuple[str, int]] | None = None,
    *,
    threads: int | None = None,
) -> BatchResult:
    """Every single-branch outage solved on one compiled model, in the kernel.

    Args:
        model: a compiled :class:`~twin.model.GridModel`; its current inputs and last converged
            state are the base case (solved first when it was never solved). Not changed.
        elements: ``(table, index)`` pairs of in-service lines / trafos; None: all of them.
        threads: worker threads (None: one per CPU); each releases the GIL in the kernel.

    Returns:
        A :class:`BatchResult`, one row per element in the order given.

    Raises:
        InvalidInput: an element that is not an in-service line or trafo of the compiled model.
    """
    cm = model.compiled()
    cached = _setup(model, cm)
    br, where = cached["br"], cached["where"]
    if elements is None:
        picks = np.flatnonzero(br.row >= 0)
    else:
        picks_l = []
        for item in elements:
            try:
                table, index = item
                k = where[(str(table), int(index))]
            except (KeyError, TypeError, ValueError):
                raise InvalidInput(
                    "n_minus_1", "elements", item, item, "(table, index) of a line or trafo"
                ) from None
            if br.row[k] < 0:
                raise InvalidInput(
                    str(table), "in_service", index, False, "an in-service, energised branch"
                )
            picks_l.append(k)
        picks = np.asarray(picks_l, dtype=np.int64)
    ncase = picks.shape[0]
    # every compiled branch (trafo3w, impedance, switches included) makes the bus graph
    dead_of, edge_of_row, pos_all = cached["dead"], cached["edge_of_row"], cached["pos"]
    pos = pos_all[:, picks]  # (4, ncase)
    patch_ptr = np.arange(0, 4 * ncase + 1, 4, dtype=np.int64)
    patch_pos = np.ascontiguousarray(pos.T.reshape(-1), dtype=np.int32)
    delta = -br.stamps[:, picks].T.reshape(-1)
    none = np.zeros(0, dtype=np.int64)
    dead_lists = [dead_of.get(int(edge_of_row[br.row[k]]), none) for k in picks]
    islanded = np.array([d.size > 0 for d in dead_lists], dtype=bool)
    dead_ptr = np.zeros(ncase + 1, dtype=np.int64)
    dead_ptr[1:] = np.cumsum([d.size for d in dead_lists])
    dead_bus = np.concatenate(dead_lists).astype(np.int32) if ncase else np.zeros(0, dtype=np.int32)
    p, q = cm.spec
    out = _run(
        model, cm, p[None, :], q[None, :],
        (patch_ptr, patch_pos, np.ascontiguousarray(delta.real), np.ascontiguousarray(delta.imag)),
        (dead_ptr, dead_bus), picks, br, threads,
    )  # fmt: skip
    keys = [br.keys[k] for k in picks]
    return _finish(model, cm, br, *out, keys, islanded)


def solve_batch(
    model: GridModel,
    *,
    p_mw: Any = None,
    q_mvar: Any = None,
    sgen_p_mw: Any = None,
    sgen_q_mvar: Any = None,
    threads: int | None = None,
) -> BatchResult:
    """Many injection sets (time series, Monte Carlo) on one compiled model, in the kernel.

    Each argument is a (cases x elements) array of ``net.load`` / ``net.sgen`` inputs in table
    order (None: the model's current inputs for every case); every case starts from the model's
    last converged state. The model is not changed.

    Raises:
        InvalidInput: arrays of the wrong shape or with non-finite values.
    """
    cm = model.compiled()
    net = model.net
    given = {
        ("load", "p_mw"): p_mw, ("load", "q_mvar"): q_mvar,
        ("sgen", "p_mw"): sgen_p_mw, ("sgen", "q_mvar"): sgen_q_mvar,
    }  # fmt: skip
    ncase = None
    arrays = {}
    for (table, column), val in given.items():
        if val is None:
            continue
        a = np.asarray(val, dtype=float)
        if a.ndim != 2 or a.shape[1] != len(net[table]):
            raise InvalidInput(
                table, column, None, f"shape {a.shape}", f"(cases, {len(net[table])}) values"
            )
        if ncase is not None and a.shape[0] != ncase:
            raise InvalidInput(table, column, None, f"{a.shape[0]} cases", f"{ncase} cases")
        bad = ~np.isfinite(a)
        if bad.any():
            r, k = np.argwhere(bad)[0]
            raise InvalidInput(table, column, net[table].index[k], a[r, k], "a finite number")
        ncase = a.shape[0]
        arrays[(table, column)] = a
    if ncase is None:
        raise InvalidInput("solve_batch", "p_mw", None, None, "at least one input array")
    p0, q0 = cm.spec
    p = np.repeat(p0[None, :], ncase, axis=0)
    q = np.repeat(q0[None, :], ncase, axis=0)
    import scipy.sparse as sp

    for (table, column), a in arrays.items():
        bus, w, cur = cm.groups[(table, column)]
        ok = np.flatnonzero(bus >= 0)
        # bus injection change per case: -(w * (new - current)) summed per bus, per unit
        scatter = sp.csr_matrix((w[ok] / cm.base_mva, (ok, bus[ok])), shape=(bus.shape[0], cm.n))
        target = p if column == "p_mw" else q
        target -= (scatter.T @ (a - cur[None, :]).T).T
    br = _branches(cm, net)
    empty64 = np.zeros(ncase + 1, dtype=np.int64)
    out = _run(
        model, cm, np.ascontiguousarray(p), np.ascontiguousarray(q),
        (empty64, np.zeros(0, dtype=np.int32), np.zeros(0), np.zeros(0)),
        (empty64, np.zeros(0, dtype=np.int32)), np.full(ncase, -1, dtype=np.int64), br, threads,
    )  # fmt: skip
    return _finish(model, cm, br, *out, [("", -1)] * ncase, np.zeros(ncase, dtype=bool))


__all__ = ["BatchResult", "n_minus_1", "solve_batch"]
