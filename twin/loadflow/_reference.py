"""NumPy/SciPy reference of the Newton-Raphson kernel: same signature, same errors as _newton.

Same formulation as the compiled kernel: unknowns (angle, magnitude) of every non-slack bus,
equations (P, Q); a PV bus keeps its Q row as the identity row ``dVm = vset - vm``. The Jacobian is
assembled with SciPy sparse products and factorized by ``splu`` every iteration.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    sspec = np.asarray(p_spec) + 1j * np.asarray(q_spec)
    it = 0
    m = nr.shape[0]
    fixed = kind != 2
    vm[fixed] = np.asarray(vset)[fixed]  # slack and PV magnitudes are set points
    while True:
        v = vm * np.exp(1j * va)
        ibus = ybus @ v
        mis = v * np.conj(ibus) - sspec
        fp = mis.real[nr]
        fq = np.where(pv_rows, 0.0, mis.imag[nr])
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
        keep = sp.diags((~pv_rows).astype(float))
        eye_pv = sp.diags(pv_rows.astype(float))
        jac = sp.bmat([[a.real, b.real], [keep @ a.imag, keep @ b.imag + eye_pv]], format="csc")
        try:
            dx = splu(jac).solve(-f)
        except RuntimeError as exc:  # SuperLU: "Factor is exactly singular"
            raise LoadflowNotConverged(it, worst, nrm, "singular Jacobian (zero pivot)") from exc
        va[nr] += dx[:m]
        vm[nr] += dx[m:]
        it += 1
