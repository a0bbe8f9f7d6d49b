"""NumPy/SciPy reference of the Newton-Raphson kernel: same signature, same errors as _newton.

Same formulation as the compiled kernel: unknowns (angle, magnitude) of every non-slack bus,
equations (P, Q); a PV bus keeps its Q row as the identity row ``dVm = vset - vm``. The Jacobian is
assembled with SciPy sparse products and factorized by ``splu`` every iteration.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import splu

from twin.errors import LoadflowNotConverged


@dataclass(frozen=True)
class Plan:
    """What the reference keeps between solves: the non-slack buses and the pattern size."""

    nonref: np.ndarray
    n_bus: int
    nnz: int

    def memory_bytes(self) -> int:
        """Bytes held by the plan."""
        return int(self.nonref.nbytes)


def analyse(indptr, indices, kind, order=None) -> Plan:
    """Same contract as ``_newton.analyse`` (the reference needs no symbolic factorization)."""
    kind = np.asarray(kind, dtype=np.int8)
    return Plan(np.flatnonzero(kind != 0), int(kind.shape[0]), int(np.asarray(indices).shape[0]))


def _validate(plan: Plan, indptr, indices, kind, p_spec, q_spec, vset, vm, va) -> None:
    n = plan.n_bus
    sizes = [np.shape(indptr)[0] - 1] + [
        np.shape(a)[0] for a in (kind, p_spec, q_spec, vset, vm, va)
    ]
    if any(s != n for s in sizes):
        raise ValueError(f"expected arrays sized for {n} buses, found a mismatch")
    if np.shape(indices)[0] != plan.nnz:
        raise ValueError(f"expected a Ybus with {plan.nnz} entries, found {np.shape(indices)[0]}")


def newton(
    plan: Plan,
    indptr,
    indices,
    y_re,
    y_im,
    kind,
    p_spec,
    q_spec,
    vset,
    vm,
    va,
    tol: float = 1e-8,
    max_iter: int = 10,
) -> tuple[int, float]:
    """Newton-Raphson; ``vm``/``va`` (radians) updated in place. See ``_newton.newton``."""
    _validate(plan, indptr, indices, kind, p_spec, q_spec, vset, vm, va)
    n = plan.n_bus
    ybus = sp.csr_matrix((np.asarray(y_re) + 1j * np.asarray(y_im), indices, indptr), shape=(n, n))
    kind = np.asarray(kind)
    nr = plan.nonref
    pv_rows = kind[nr] == 1
    dead_rows = kind[nr] == 3  # cut off from every slack: both rows are identities
    sspec = np.asarray(p_spec) + 1j * np.asarray(q_spec)
    it = 0
    m = nr.shape[0]
    fixed = kind != 2
    vm[fixed] = np.asarray(vset)[fixed]  # slack and PV magnitudes are set points
    while True:
        v = vm * np.exp(1j * va)
        ibus = ybus @ v
        mis = v * np.conj(ibus) - sspec
        fp = np.where(dead_rows, 0.0, mis.real[nr])
        fq = np.where(pv_rows | dead_rows, 0.0, mis.imag[nr])
        f = np.concatenate([fp, np.where(pv_rows, (vm - vset)[nr], fq)])
        both = np.abs(np.concatenate([fp, fq]))
        nrm = float(both.max()) if both.size else 0.0
        worst = int(nr[int(np.argmax(both)) % m]) if both.size else -1
        if nrm <= tol:
            return it, nrm
        if it >= max_iter or not np.isfinite(nrm):
            raise LoadflowNotConverged(it, worst, nrm)
        dv = sp.diags(v)
        vnorm = sp.diags(v / np.abs(v))
        ds_dvm = dv @ np.conj(ybus @ vnorm) + sp.diags(np.conj(ibus) * v / np.abs(v))
        ds_dva = 1j * dv @ np.conj(sp.diags(ibus) - ybus @ dv)
        a = ds_dva[nr][:, nr]
        b = ds_dvm[nr][:, nr]
        live = sp.diags((~dead_rows).astype(float))
        a = live @ a @ live
        b = live @ b @ live
        keep = sp.diags((~pv_rows & ~dead_rows).astype(float))
        eye_pv = sp.diags((pv_rows | dead_rows).astype(float))
        eye_dead = sp.diags(dead_rows.astype(float))
        jac = sp.bmat(
            [[a.real + eye_dead, b.real], [keep @ a.imag, keep @ b.imag + eye_pv]], format="csc"
        )
        try:
            dx = splu(jac).solve(-f)
        except RuntimeError as exc:  # SuperLU: "Factor is exactly singular"
            raise LoadflowNotConverged(it, worst, nrm, "singular Jacobian (zero pivot)") from exc
        va[nr] += dx[:m]
        vm[nr] += dx[m:]
        it += 1


class Stepper:
    """Same contract as ``_newton.Stepper``: a compiled system bound once, solved from a state.

    ``groups``: four (internal bus or -1, signed weight, input array) element groups (load P,
    sgen P, load Q, sgen Q); the input arrays and ``vset`` are read at every :meth:`run`.
    """

    def __init__(
        self, plan: Plan, indptr, indices, y_re, y_im, kind, vset, base_p, base_q, groups,
        inv_base: float,
    ) -> None:  # fmt: skip
        if len(groups) != 4:
            raise ValueError(f"expected 4 element groups, found {len(groups)}")
        n = plan.n_bus
        _validate(plan, indptr, indices, kind, vset, vset, vset, vset, vset)
        for bus, w, val in groups:
            if not (len(bus) == len(w) == len(val)):
                raise ValueError("expected bus, weight and value arrays of one length per group")
            if len(bus) and int(np.max(bus)) >= n:
                raise ValueError(f"expected internal buses < {n}")
        self.plan = plan
        self._y = (indptr, indices, y_re, y_im)
        self.kind0 = kind
        self.vset = vset
        self.groups = [(np.asarray(b), np.asarray(w), val) for b, w, val in groups]
        self.inv_base = float(inv_base)
        self.set_base(base_p, base_q)

    def set_y(self, y_re, y_im) -> None:
        """New Ybus values on the same pattern (a topology patch); read in place, not copied."""
        if np.shape(y_re)[0] != self.plan.nnz or np.shape(y_im)[0] != self.plan.nnz:
            raise ValueError(f"expected {self.plan.nnz} Ybus values, found {np.shape(y_re)[0]}")
        self._y = (self._y[0], self._y[1], y_re, y_im)

    def set_base(self, base_p, base_q) -> None:
        """New per-bus fixed parts (after a generator set-point change); copied."""
        bp = np.array(base_p, dtype=float)
        bq = np.array(base_q, dtype=float)
        if bp.shape[0] != self.plan.n_bus or bq.shape[0] != self.plan.n_bus:
            raise ValueError(f"expected arrays sized for {self.plan.n_bus} buses")
        self.base_p, self.base_q = bp, bq

    def spec(self, qfix=None) -> tuple[np.ndarray, np.ndarray]:
        """(p_spec, q_spec) in per unit as :meth:`run` uses them."""
        n = self.plan.n_bus
        out = []
        for base, groups in ((self.base_p, self.groups[:2]), (self.base_q, self.groups[2:])):
            s = base.copy()
            for bus, w, val in groups:
                ok = bus >= 0
                s -= np.bincount(bus[ok], weights=(w * val)[ok], minlength=n)
            out.append(s)
        p, q = out
        if qfix is not None:
            q = q + qfix
        return p * self.inv_base, q * self.inv_base

    def run(self, vm, va, kind=None, qfix=None, tol: float = 1e-8, max_iter: int = 10):
        """Assemble p / q, then :func:`newton` (``vm``/``va`` in place)."""
        p, q = self.spec(qfix)
        kind = self.kind0 if kind is None else kind
        return newton(self.plan, *self._y, kind, p, q, self.vset, vm, va, tol, max_iter)


def copy_if_finite(src, dst) -> bool:
    """Same contract as ``_newton.copy_if_finite``: copy when every value is finite."""
    src = np.asarray(src, dtype=float)
    if src.shape[0] != dst.shape[0]:
        raise ValueError(f"expected {dst.shape[0]} values, found {src.shape[0]}")
    if not np.isfinite(src).all():
        return False
    dst[:] = src
    return True


def batch(
    plan: Plan, indptr, indices, y_re, y_im, kind, p_spec, q_spec, vset, vm0, va0,
    patch_ptr, patch_pos, patch_re, patch_im, dead_ptr, dead_bus, case_branch,
    branch, out_vm, out_va, out_loading, out_it, out_status, out_nrm,
    start: int, stop: int, tol: float = 1e-8, max_iter: int = 10, retry=None, chord: int = 10,
) -> None:  # fmt: skip
    """Same contract as ``_newton.batch``: cases ``start:stop`` solved one by one.

    ``chord`` is accepted and not used: the reference takes full Newton steps (same tolerance).
    """
    n = plan.n_bus
    y_re0 = np.asarray(y_re, dtype=float)
    y_im0 = np.asarray(y_im, dtype=float)
    kind0 = np.asarray(kind, dtype=np.int8)
    p_spec = np.asarray(p_spec, dtype=float)
    q_spec = np.asarray(q_spec, dtype=float)
    if p_spec.shape[1] != n or q_spec.shape[1] != n or np.shape(vm0)[0] != n:
        raise ValueError(f"expected arrays sized for {n} buses, found a mismatch")
    if branch is not None:
        f, t, ffr, ffi, ftr, fti, tfr, tfi, ttr, tti, cf, ct = (np.asarray(b) for b in branch)
        yff, yft = ffr + 1j * ffi, ftr + 1j * fti
        ytf, ytt = tfr + 1j * tfi, ttr + 1j * tti
    for c in range(start, stop):
        row = c if p_spec.shape[0] > 1 else 0
        yre = y_re0.copy()
        yim = y_im0.copy()
        pos = np.asarray(patch_pos[patch_ptr[c] : patch_ptr[c + 1]])
        np.add.at(yre, pos, patch_re[patch_ptr[c] : patch_ptr[c + 1]])
        np.add.at(yim, pos, patch_im[patch_ptr[c] : patch_ptr[c + 1]])
        kd = kind0.copy()
        kd[np.asarray(dead_bus[dead_ptr[c] : dead_ptr[c + 1]], dtype=np.int64)] = 3
        status, it, nrm = 1, 0, 0.0
        for start_vm, start_va in [(vm0, va0)] + ([retry] if retry is not None else []):
            vm = np.array(start_vm, dtype=float)
            va = np.array(start_va, dtype=float)
            try:
                it, nrm = newton(
                    plan, indptr, indices, yre, yim, kd, p_spec[row], q_spec[row], vset, vm,
                    va, tol, max_iter,
                )  # fmt: skip
                status = 0
                break
            except LoadflowNotConverged as exc:
                status = 2 if "pivot" in str(exc) else 1
                it, nrm = exc.iterations, exc.mismatch
        out_it[c], out_status[c], out_nrm[c] = it, status, nrm
        dead = kd == 3
        if branch is not None:
            if status != 0:
                out_loading[c, :] = np.nan
            else:
                v = vm * np.exp(1j * va)
                ok = (f >= 0) & (t >= 0)
                fs, ts = np.where(ok, f, 0), np.where(ok, t, 0)
                i_f = np.abs(yff * v[fs] + yft * v[ts]) * cf
                i_t = np.abs(ytf * v[fs] + ytt * v[ts]) * ct
                load = np.maximum(i_f, i_t)
                load[~ok | dead[fs] | dead[ts]] = 0.0
                if case_branch[c] >= 0:
                    load[case_branch[c]] = 0.0
                out_loading[c, :] = load
        if status != 0:
            vm[:] = np.nan
            va[:] = np.nan
        vm[dead] = np.nan
        va[dead] = np.nan
        out_vm[c, :] = vm
        out_va[c, :] = va


# the rows of the matrix ``branch_results`` fills (line names; trafos use hv / lv, no i_ka)
BRANCH_ROWS = (
    "p_from_mw", "q_from_mvar", "p_to_mw", "q_to_mvar", "pl_mw", "ql_mvar", "i_from_ka",
    "i_to_ka", "i_ka", "loading_percent", "vm_from_pu", "va_from_degree", "vm_to_pu",
    "va_to_degree",
)  # fmt: skip


def polar(vm, va, out):
    """Same contract as ``_newton.polar``."""
    if out.shape != (3, vm.shape[0]):
        raise ValueError(f"expected (3, {vm.shape[0]}) outputs")
    v = vm * np.exp(1j * va)
    out[0], out[1], out[2] = v.real, v.imag, np.rad2deg(np.angle(v))
    return out


def branch_results(vm, vpolar, n, base_mva, fb, tb, stamps, scale, out):
    """Same contract as ``_newton.branch_results``."""
    rows = fb.shape[0]
    va = np.arctan2(vpolar[1], vpolar[0])
    if out.shape != (14, rows) or stamps.shape[1] != rows or scale.shape[1] != rows:
        raise ValueError(f"expected (14, {rows}) results for {rows} branches")
    fon = fb < n
    ton = tb < n
    vf = np.zeros(rows, dtype=complex)
    vt = np.zeros(rows, dtype=complex)
    vf[fon] = vm[fb[fon]] * np.exp(1j * va[fb[fon]])
    vt[ton] = vm[tb[ton]] * np.exp(1j * va[tb[ton]])
    y = stamps[0::2] + 1j * stamps[1::2]
    sf = vf * np.conj(y[0] * vf + y[1] * vt) * base_mva
    st = vt * np.conj(y[2] * vf + y[3] * vt) * base_mva
    vmf = np.where(fon, np.abs(vf), np.nan)
    vmt = np.where(ton, np.abs(vt), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        i_f = np.abs(sf) / (vmf * scale[0]) / np.sqrt(3)
        i_t = np.abs(st) / (vmt * scale[1]) / np.sqrt(3)
        load = np.maximum(i_f * scale[2], i_t * scale[3]) * scale[4]
    load[np.isinf(scale[4])] = np.inf
    out[0], out[1], out[2], out[3] = sf.real, sf.imag, st.real, st.imag
    out[4], out[5] = sf.real + st.real, sf.imag + st.imag
    out[6], out[7], out[8], out[9] = i_f, i_t, np.maximum(i_f, i_t), load
    out[10], out[12] = vmf, vmt
    out[11] = np.where(fon, np.rad2deg(np.angle(vf)), np.nan)
    out[13] = np.where(ton, np.rad2deg(np.angle(vt)), np.nan)
    return out


def bus_power(indptr, indices, y_re, y_im, vpolar, rows, out_p, out_q) -> None:
    """Same contract as ``_newton.bus_power``."""
    if out_p.shape[0] != rows.shape[0] or out_q.shape[0] != rows.shape[0]:
        raise ValueError(f"expected {rows.shape[0]} outputs")
    n = indptr.shape[0] - 1
    v = vpolar[0] + 1j * vpolar[1]
    y = sp.csr_matrix((y_re + 1j * y_im, indices, indptr), shape=(n, n))[rows]
    s = v[rows] * np.conj(y @ v)
    out_p[:] = s.real
    out_q[:] = s.imag


def gen_pq(
    indptr, indices, y_re, y_im, vpolar, rows, pd, qd, base_mva, gpos, q_a, q_b, out_p, out_q
):
    """Same contract as ``_newton.gen_pq``."""
    nr, ng = rows.shape[0], gpos.shape[0]
    if out_p.shape[0] != nr or pd.shape[0] != nr or qd.shape[0] != nr:
        raise ValueError(f"expected {nr} bus rows")
    if out_q.shape[0] != ng or q_a.shape[0] != ng or q_b.shape[0] != ng:
        raise ValueError(f"expected {ng} gen rows")
    if np.any((gpos < 0) | (gpos >= nr)):
        raise ValueError(f"gen bus rows outside 0..{nr - 1}")
    sp_, sq_ = np.empty(nr), np.empty(nr)
    bus_power(indptr, indices, y_re, y_im, vpolar, rows, sp_, sq_)
    out_p[:] = sp_ * base_mva + pd
    out_q[:] = q_a * (sq_ * base_mva + qd)[gpos] + q_b


def rows_add(indptr, idx, w, x, out) -> None:
    """Same contract as ``_newton.rows_add``."""
    nr = out.shape[0]
    if indptr.shape[0] != nr + 1 or indptr[0] != 0 or indptr[-1] != idx.shape[0]:
        raise ValueError(f"indptr: expected {nr + 1} entries from 0 to {idx.shape[0]}")
    if np.any((idx < 0) | (idx >= x.shape[0])):
        raise ValueError(f"idx outside 0..{x.shape[0] - 1}")
    rows = np.repeat(np.arange(nr), np.diff(indptr))
    out += np.bincount(rows, weights=w * x[idx], minlength=nr)


def take(buf, span):
    """Same contract as ``_newton.take``."""
    start, stop = span
    if buf.ndim != 1 or not 0 <= start <= stop <= buf.shape[0]:
        raise ValueError(
            f"span: expected 0 <= start <= stop <= {buf.shape[0]}, found {start}, {stop}"
        )
    return buf[start:stop].copy()


# the sections of the buffer ``Results.compute`` fills, in order, with their row counts
RESULT_SECTIONS = (
    ("polar", 3), ("line", 14), ("trafo", 14), ("gen_pg", 1), ("gen_qg", 1), ("ext_grid", 2),
    ("gen", 4), ("load", 2), ("sgen", 2), ("work", 4),
)  # fmt: skip


def result_offsets(
    n: int, nl: int, nt: int, ng: int, neg: int, ngen: int, nload: int, nsgen: int, nr: int
) -> dict[str, tuple[int, int, int]]:
    """name -> (start, rows, length) of each section of a ``Results`` buffer, and "size"."""
    lengths = {
        "polar": n, "line": nl, "trafo": nt, "gen_pg": ng, "gen_qg": ng, "ext_grid": neg,
        "gen": ngen, "load": nload, "sgen": nsgen, "work": nr,
    }  # fmt: skip
    out: dict[str, tuple[int, int, int]] = {}
    at = 0
    for name, rows in RESULT_SECTIONS:
        out[name] = (at, rows, lengths[name])
        at += rows * lengths[name]
    out["size"] = (at, 1, at)
    return out


class Results:
    """Same contract as ``_newton.Results`` (NumPy; copies its arrays, checks the indices)."""

    def __init__(
        self, n, base_mva, indptr, indices, y_re, y_im, line=None, trafo=None, gen=None,
        load=None, sgen=None, n_load=0, n_sgen=0,
    ) -> None:  # fmt: skip
        def idx(a, lo, hi, what):
            a = np.array(a, dtype=np.int64)
            if a.size and (a.min() < lo or a.max() >= hi):
                raise ValueError(
                    f"{what}: expected indices in {lo}..{hi - 1}, found {a.min()}..{a.max()}"
                )
            return a

        def csr(ptr, nrows, nnz, what):
            ptr = np.array(ptr, dtype=np.int64)
            bad = ptr.shape != (nrows + 1,) or ptr[0] != 0 or ptr[-1] != nnz
            if bad or np.any(ptr[1:] < ptr[:-1]):
                raise ValueError(f"{what}: expected a CSR map over {nrows} rows")
            return ptr

        self.n = int(n)
        self.base_mva = float(base_mva)
        nnz = len(indices)
        self.ybus = sp.csr_matrix(
            (np.asarray(y_re, float) + 1j * np.asarray(y_im, float),
             idx(indices, 0, n, "indices"), np.array(indptr, dtype=np.int64)),
            shape=(n, n),
        )  # fmt: skip
        if self.ybus.nnz != nnz:
            raise ValueError(f"expected {nnz} Ybus values")
        self.branches: list[tuple[Any, ...] | None] = []
        for br in (line, trafo):
            if br is None:
                self.branches.append(None)
                continue
            fb, tb, stamps, scale = br
            rows = len(fb)
            fb, tb = idx(fb, 0, 2**62, "fb"), idx(tb, 0, 2**62, "tb")
            stamps, scale = np.array(stamps, dtype=float), np.array(scale, dtype=float)
            if stamps.shape != (8, rows) or scale.shape != (5, rows):
                raise ValueError(f"expected (8, {rows}) stamps and (5, {rows}) scales")
            self.branches.append((fb, tb, stamps, scale))
        self.n_load, self.n_sgen = int(n_load), int(n_sgen)
        self.gen = None
        ng = nr = neg = ngen = 0
        if gen is not None:
            ng, nr = int(gen.ng), len(gen.rows)
            rows = idx(gen.rows, 0, n, "gen rows")
            gpos = idx(gen.gpos, 0, nr, "gpos")
            on = idx(gen.on, 0, ng, "on")
            if on.shape != gpos.shape:
                raise ValueError(f"on: expected {gpos.shape[0]} gen rows, found {on.shape[0]}")
            if len(gen.demand) != 4:
                raise ValueError(f"demand: expected 4 maps, found {len(gen.demand)}")
            demand = []
            for g, (ptr, di, w) in enumerate(gen.demand):
                nin = self.n_load if g % 2 == 0 else self.n_sgen
                demand.append(
                    (csr(ptr, nr, len(di), f"demand {g}"), idx(di, 0, nin, f"demand {g}"),
                     np.array(w, dtype=float))
                )  # fmt: skip
            pos, single, eptr, eidx, ew, pptr, pidx = gen.slack
            ns = len(pos)
            slack = (
                idx(pos, 0, nr, "slack pos"), np.array(single, dtype=bool),
                csr(eptr, ns, len(eidx), "slack ext"), idx(eidx, 0, ng, "slack gens"),
                np.array(ew, dtype=float), csr(pptr, ns, len(pidx), "slack pvg"),
                idx(pidx, 0, ng, "slack bus gens"),
            )  # fmt: skip
            if np.any(slack[1] & (np.diff(slack[2]) < 1)):
                raise ValueError("slack: a single-gen bus without its gen")
            neg, ngen = len(gen.eg_src), len(gen.g_src)
            if len(gen.g_bus) != ngen:
                raise ValueError(f"g_bus: expected {ngen} gens, found {len(gen.g_bus)}")
            self.gen = SimpleNamespace(
                ng=ng, rows=rows, gpos=gpos, on=on, q_a=np.array(gen.q_a, dtype=float),
                q_b=np.array(gen.q_b, dtype=float), rest_p=np.array(gen.rest_p, dtype=float),
                rest_q=np.array(gen.rest_q, dtype=float), demand=demand, slack=slack,
                eg_src=idx(gen.eg_src, -1, ng, "eg_src"), g_src=idx(gen.g_src, -1, ng, "g_src"),
                g_bus=idx(gen.g_bus, -1, n, "g_bus"),
            )  # fmt: skip
        self.load = None if load is None else np.array(load, dtype=float).reshape(self.n_load)
        self.sgen = None if sgen is None else np.array(sgen, dtype=float).reshape(self.n_sgen)
        nl = 0 if line is None else len(line[0])
        nt = 0 if trafo is None else len(trafo[0])
        self.offsets = result_offsets(
            self.n, nl, nt, ng, neg, ngen, 0 if load is None else self.n_load,
            0 if sgen is None else self.n_sgen, nr,
        )  # fmt: skip
        self.size = self.offsets["size"][0]

    def _section(self, out, name):
        start, rows, length = self.offsets[name]
        return out[start : start + rows * length].reshape(rows, length)

    def compute(self, vm, va, gen_pg, load_p, sgen_p, load_q, sgen_q, out=None):
        """Same contract as ``_newton.Results.compute``."""
        n = self.n
        if out is None:
            out = np.empty(self.size)
        if vm.shape != (n,) or va.shape != (n,):
            raise ValueError(f"expected vm / va for {n} buses")
        if out.shape != (self.size,) or out.dtype != np.float64:
            raise ValueError(f"out: expected a ({self.size},) float64 array")
        x = (load_p, sgen_p, load_q, sgen_q)
        for k, arr in enumerate(x):
            want = self.n_load if k % 2 == 0 else self.n_sgen
            if arr.shape != (want,):
                raise ValueError(f"inputs: expected {want} values, found {arr.shape}")
        p = polar(vm, va, self._section(out, "polar"))
        for name, br in zip(("line", "trafo"), self.branches):
            if br is not None:
                branch_results(vm, p, n, self.base_mva, *br, self._section(out, name))
        m = self.gen
        if m is not None:
            if gen_pg.shape != (m.ng,):
                raise ValueError(f"gen_pg: expected {m.ng} values, found {gen_pg.shape}")
            pd, qd = m.rest_p.copy(), m.rest_q.copy()
            for g, (ptr, di, w) in enumerate(m.demand):
                rows_add(ptr, di, w, x[g], pd if g < 2 else qd)
            v = p[0] + 1j * p[1]
            s = v[m.rows] * np.conj(self.ybus[m.rows] @ v) * self.base_mva
            pbus, qbus = s.real + pd, s.imag + qd
            pg = self._section(out, "gen_pg")[0]
            qg = self._section(out, "gen_qg")[0]
            pg[:] = gen_pg
            qg[:] = 0.0
            qg[m.on] = m.q_a * qbus[m.gpos] + m.q_b
            pos, single, eptr, eidx, ew, pptr, pidx = m.slack
            for s_ in range(pos.shape[0]):
                ext = eidx[eptr[s_] : eptr[s_ + 1]]
                if single[s_]:
                    pg[ext[0]] = pbus[pos[s_]]
                    continue
                p_ext = pbus[pos[s_]] - np.sum(pg[pidx[pptr[s_] : pptr[s_ + 1]]])
                w = ew[eptr[s_] : eptr[s_ + 1]]
                sw = np.sum(w)
                if sw > 0:
                    pg[ext] = pg[ext] + (p_ext - np.sum(pg[ext])) * w / sw
                else:
                    pg[ext] = p_ext / len(ext)

            def pick(src, at):
                return np.where(at >= 0, src[np.maximum(at, 0)], 0.0) if src.size else 0.0 * at

            eg = self._section(out, "ext_grid")
            eg[0], eg[1] = pick(pg, m.eg_src), pick(qg, m.eg_src)
            gn = self._section(out, "gen")
            gn[0], gn[1] = pick(pg, m.g_src), pick(qg, m.g_src)
            gn[2], gn[3] = pick(vm, m.g_bus), pick(p[2], m.g_bus)
        if self.load is not None:
            ld = self._section(out, "load")
            ld[0], ld[1] = load_p * self.load, load_q * self.load
        if self.sgen is not None:
            sg = self._section(out, "sgen")
            sg[0], sg[1] = sgen_p * self.sgen, sgen_q * self.sgen
        return out
