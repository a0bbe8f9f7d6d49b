# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled Newton-Raphson load-flow kernel with its own sparse LU on a fixed pattern.

Formulation (shared with ``_reference.py``): unknowns are (angle, magnitude) of every non-slack
bus, equations are (P, Q) mismatches; a PV bus keeps its Q row as ``dVm = vset - vm`` (an identity
row), so PV<->PQ switching (Q limits) never changes the sparsity pattern. Each non-slack bus is one
2x2 block; a fill-reducing order of the bus graph and the symbolic block LU pattern (elimination
tree; no pivoting between blocks: the pattern is structurally symmetric, each 2x2 diagonal block is
inverted exactly with a determinant check) are computed once by ``analyse``; the whole Newton loop
(mismatch, Jacobian, numeric LU, triangular solves, update) runs in one ``nogil`` call on
preallocated arrays.
"""

import numpy as np

cimport cython
cimport numpy as cnp
from libc.math cimport INFINITY, NAN, atan2, cos, fabs, isfinite, remainder, sin, sqrt
from libc.string cimport memcpy


cdef extern from "math.h" nogil:
    void sincos(double x, double *s, double *c)


cdef double PI = 3.141592653589793

cnp.import_array()

from twin.errors import LoadflowNotConverged
from twin.loadflow import _reference


cdef class Plan:
    """Symbolic analysis of one Jacobian pattern plus every work array the Newton loop needs."""

    cdef public object arrays
    cdef public int n_bus, n_unk
    cdef public object bus_order
    cdef public Py_ssize_t lu_nnz
    cdef int[::1] blk          # bus -> block position (-1 for slack)
    cdef int[::1] colptr, rowidx, diagpos
    cdef int[::1] ypos         # per Ybus entry: its block in the LU storage (-1: slack)
    cdef double[::1] lu, x, f, vre, vim, ire, iim

    def __init__(self, dict arrays):
        self.arrays = arrays
        self.blk = arrays["blk"]
        self.colptr = arrays["colptr"]
        self.rowidx = arrays["rowidx"]
        self.diagpos = arrays["diagpos"]
        self.ypos = arrays["ypos"]
        self.n_bus = arrays["blk"].shape[0]
        self.n_unk = arrays["colptr"].shape[0] - 1
        self.lu_nnz = arrays["rowidx"].shape[0]
        self.bus_order = arrays["bus_order"]
        self.lu = np.zeros(max(4 * self.lu_nnz, 1))
        self.x = np.zeros(max(4 * self.n_unk, 1))
        self.f = np.zeros(max(2 * self.n_unk, 1))
        self.vre = np.zeros(max(self.n_bus, 1))
        self.vim = np.zeros(max(self.n_bus, 1))
        self.ire = np.zeros(max(self.n_bus, 1))
        self.iim = np.zeros(max(self.n_bus, 1))

    def memory_bytes(self) -> int:
        """Bytes held by the plan's arrays (pattern plus work arrays)."""
        total = sum(a.nbytes for a in self.arrays.values() if hasattr(a, "nbytes"))
        return int(total + 8 * (4 * self.lu_nnz + 6 * self.n_unk + 4 * self.n_bus))


def _etree_rows(int n, int[::1] ap, int[::1] ai):
    """Row patterns of L for a structurally symmetric CSC pattern (ap, ai): (rowptr, cols)."""
    cdef int[::1] parent = np.full(n, -1, dtype=np.int32)
    cdef int[::1] ancestor = np.full(n, -1, dtype=np.int32)
    cdef int[::1] flag = np.full(n, -1, dtype=np.int32)
    cdef int k, p, i, inext, cnt
    for k in range(n):
        for p in range(ap[k], ap[k + 1]):
            i = ai[p]
            while i != -1 and i < k:
                inext = ancestor[i]
                ancestor[i] = k
                if inext == -1:
                    parent[i] = k
                i = inext
    # count then fill row patterns of L (ereach by walking the elimination tree)
    cdef cnp.ndarray[cnp.int64_t, ndim=1] rowcount = np.zeros(n + 1, dtype=np.int64)
    for k in range(n):
        flag[k] = k
        cnt = 0
        for p in range(ap[k], ap[k + 1]):
            i = ai[p]
            if i > k:
                continue
            while flag[i] != k:
                flag[i] = k
                cnt += 1
                i = parent[i]
        rowcount[k + 1] = cnt
    rowptr = np.cumsum(rowcount)
    cdef long long[::1] rp = rowptr
    cdef int[::1] cols = np.empty(rowptr[n], dtype=np.int32)
    flag[:] = -1
    cdef long long q
    for k in range(n):
        flag[k] = k
        q = rp[k]
        for p in range(ap[k], ap[k + 1]):
            i = ai[p]
            if i > k:
                continue
            while flag[i] != k:
                flag[i] = k
                cols[q] = i
                q += 1
                i = parent[i]
    return rowptr, np.asarray(cols)


@cython.wraparound(True)
@cython.boundscheck(True)
def analyse(indptr, indices, kind, order=None):
    """Symbolic analysis for the Ybus pattern (CSR ``indptr``/``indices``) and bus kinds.

    Args:
        indptr, indices: Ybus CSR pattern (internal buses), diagonal present on every bus.
        kind: int8 per bus, 0 slack, 1 PV, 2 PQ (only slack vs non-slack matters here).
        order: optional bus elimination order (non-slack buses); computed when None.

    Returns:
        A :class:`Plan` usable by :func:`newton` as long as the pattern is unchanged.
    """
    import scipy.sparse as sp
    from scipy.sparse.linalg import splu

    indptr = np.asarray(indptr, dtype=np.int64)
    indices = np.asarray(indices, dtype=np.int64)
    kind = np.asarray(kind, dtype=np.int8)
    n = kind.shape[0]
    nonref = np.flatnonzero(kind != 0)
    m = nonref.shape[0]
    if order is None:
        if m > 0:
            # symmetric fill-reducing order of the bus graph (SuperLU's MMD on A'+A)
            rows = np.repeat(np.arange(n), np.diff(indptr))
            g = sp.csr_matrix((np.ones(indices.shape[0]), (rows, indices)), shape=(n, n))
            g = g[nonref][:, nonref].tocsc()
            g = abs(g) + sp.identity(m, format="csc") * (abs(g).sum() + 1.0)
            order = splu(g, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0).perm_c
            # perm_c[i] is the new position of column i: invert to get an elimination order
            order = nonref[_inverse(order)]
        else:
            order = nonref
    order = np.asarray(order, dtype=np.int64)
    blk = np.full(n, -1, dtype=np.int32)
    blk[order] = np.arange(m, dtype=np.int32)
    nu = m  # one 2x2 block per non-slack bus: (P, Q) rows x (angle, magnitude) columns
    # block pattern of the permuted Jacobian: one block per Ybus entry between non-slack buses
    rows = np.repeat(np.arange(n), np.diff(indptr))
    bi = blk[rows]
    bk = blk[indices]
    keep = (bi >= 0) & (bk >= 0)
    bi = bi[keep].astype(np.int64)
    bk = bk[keep].astype(np.int64)
    jr = np.concatenate([bi, np.arange(nu)])
    jc = np.concatenate([bk, np.arange(nu)])
    a = sp.csc_matrix((np.ones(jr.shape[0]), (jr, jc)), shape=(nu, nu))
    a.sum_duplicates()
    a.sort_indices()
    ap = a.indptr.astype(np.int32)
    ai = a.indices.astype(np.int32)
    rowptr, lcols = _etree_rows(nu, ap, ai)
    # L row i = U column i (structural symmetry); build the column pattern of L from the rows
    lrow_of = np.repeat(np.arange(nu, dtype=np.int64), np.diff(rowptr))
    lmat = sp.csc_matrix(
        (np.ones(lcols.shape[0]), (lrow_of, lcols.astype(np.int64))), shape=(nu, nu)
    )
    lmat.sort_indices()
    umat = lmat.T.tocsc()
    umat.sort_indices()
    # combined column: U rows (< j), diagonal, L rows (> j)
    ucnt = np.diff(umat.indptr)
    lcnt = np.diff(lmat.indptr)
    cnt = ucnt + 1 + lcnt
    colptr = np.zeros(nu + 1, dtype=np.int64)
    np.cumsum(cnt, out=colptr[1:])
    rowidx = np.empty(colptr[-1], dtype=np.int32)
    diagpos = (colptr[:-1] + ucnt).astype(np.int32)
    for_u = np.repeat(colptr[:-1], ucnt) + (np.arange(umat.indices.shape[0]) - np.repeat(umat.indptr[:-1], ucnt))
    rowidx[for_u] = umat.indices
    rowidx[diagpos] = np.arange(nu, dtype=np.int32)
    for_l = np.repeat(diagpos.astype(np.int64) + 1, lcnt) + (
        np.arange(lmat.indices.shape[0]) - np.repeat(lmat.indptr[:-1], lcnt)
    )
    rowidx[for_l] = lmat.indices
    if colptr[-1] > np.iinfo(np.int32).max:
        raise MemoryError(f"LU pattern too large: expected < 2**31 entries, found {colptr[-1]}")
    colptr32 = colptr.astype(np.int32)
    # position of each Jacobian entry (r, c) inside the combined column c
    def pos_of(r, c):
        keys = c.astype(np.int64) * (nu + 1) + r
        allkeys = np.repeat(np.arange(nu, dtype=np.int64), cnt) * (nu + 1) + rowidx
        p = np.searchsorted(allkeys, keys)
        return p.astype(np.int32)
    ypos = np.full(indices.shape[0], -1, dtype=np.int32)
    if keep.any():
        ypos[keep] = pos_of(bi, bk)
    arrays = {
        "blk": blk,
        "colptr": colptr32,
        "rowidx": rowidx,
        "diagpos": diagpos,
        "ypos": ypos,
        "bus_order": order,
        "indptr": indptr.copy(),
        "indices": indices.copy(),
    }
    return Plan(arrays)


def _inverse(p):
    inv = np.empty_like(p)
    inv[p] = np.arange(p.shape[0])
    return inv


cdef inline void _mm_sub(double* x, const double* l, const double* u) noexcept nogil:
    """x -= l @ u for row-major 2x2 blocks."""
    x[0] -= l[0] * u[0] + l[1] * u[2]
    x[1] -= l[0] * u[1] + l[1] * u[3]
    x[2] -= l[2] * u[0] + l[3] * u[2]
    x[3] -= l[2] * u[1] + l[3] * u[3]


cdef int _newton_loop(
    Plan plan,
    const int[::1] yp, const int[::1] yi, const double[::1] yre, const double[::1] yim,
    const signed char[::1] kind, const double[::1] pspec, const double[::1] qspec,
    const double[::1] vset, double[::1] vm, double[::1] va,
    double tol, int max_iter, int* iters, double* norm, int* worst,
    const double* lu_fixed=NULL, int chord_max=0,
    const double* zc=NULL, const double* kc=NULL, const int* vc=NULL,
) noexcept nogil:
    """The whole Newton loop; returns 0 converged, 1 not converged, 2 singular block pivot.

    ``lu_fixed`` (with ``chord_max`` > 0): factors of a nearby Jacobian on this plan (a base
    case): up to ``chord_max`` first steps reuse them (chord steps: mismatch and two triangular
    solves, no Jacobian or factorization) while each step at least halves the mismatch; then
    full Newton steps. Every step checks the true mismatch, so the tolerance is the same.

    Block LU without pivoting between blocks: L has identity diagonal blocks, U keeps the
    2x2 diagonal blocks D_j (inverted exactly, with a determinant check).
    """
    cdef int n = plan.n_bus, nb = plan.n_unk
    cdef int[::1] blk = plan.blk, colptr = plan.colptr, rowidx = plan.rowidx
    cdef int[::1] diagpos = plan.diagpos, ypos = plan.ypos
    cdef double[::1] lu = plan.lu, x = plan.x, f = plan.f
    cdef double[::1] vre = plan.vre, vim = plan.vim, ire = plan.ire, iim = plan.iim
    cdef int i, k, p, q, j, b, it = 0, r, pd, kk
    cdef double sr, si, a, c, gr, gi, nrm, vmag, det, scale
    cdef double d0, d1, d2, d3, e0, e1, y0, y1
    cdef double dsr_t, dsi_t, dsr_v, dsi_v, ur, ui
    cdef double* xb
    cdef double* lb
    cdef const double* lup
    cdef int chord_left = chord_max if lu_fixed != NULL else 0, chord_used = 0
    cdef double prev_nrm = 0.0
    cdef double tv[4]
    cdef double sv[4]
    for i in range(n):
        if kind[i] != 2:
            vm[i] = vset[i]  # slack and PV magnitudes are set points
        # locals: the stores cannot alias the angle, so sin and cos share one sincos call
        a = va[i]
        vmag = vm[i]
        vre[i] = vmag * cos(a)
        vim[i] = vmag * sin(a)
    while True:
        # mismatch and bus currents
        nrm = 0.0
        worst[0] = -1
        for i in range(n):
            sr = 0.0
            si = 0.0
            for p in range(yp[i], yp[i + 1]):
                k = yi[p]
                sr = sr + yre[p] * vre[k] - yim[p] * vim[k]
                si = si + yre[p] * vim[k] + yim[p] * vre[k]
            ire[i] = sr
            iim[i] = si
            b = blk[i]
            if b < 0:
                continue
            # S = V conj(I)
            if kind[i] == 3:
                f[2 * b] = 0.0  # a dead bus (island without slack): both rows are identities
                f[2 * b + 1] = 0.0
                continue
            a = vre[i] * sr + vim[i] * si - pspec[i]
            c = vim[i] * sr - vre[i] * si - qspec[i]
            f[2 * b] = a
            if kind[i] == 1:
                f[2 * b + 1] = vm[i] - vset[i]
                c = 0.0
            else:
                f[2 * b + 1] = c
            if fabs(a) > nrm:
                nrm = fabs(a)
                worst[0] = i
            if fabs(c) > nrm:
                nrm = fabs(c)
                worst[0] = i
        norm[0] = nrm
        if nrm <= tol:
            iters[0] = it
            return 0
        if it - chord_used >= max_iter or nrm != nrm:
            iters[0] = it
            return 1
        if chord_left > 0 and it > 0 and nrm > 0.5 * prev_nrm:
            chord_left = 0  # the fixed factors no longer contract well: Newton from here
        prev_nrm = nrm
        if chord_left > 0:
            chord_left -= 1
            chord_used += 1
            lup = lu_fixed
        else:
            if _jacobian_lu(plan, yp, yi, yre, yim, kind, vm) != 0:
                iters[0] = it
                return 2
            lup = &lu[0]
        # solve L U dx = -f  (x reused as a 2-per-block vector)
        for j in range(2 * nb):
            x[j] = -f[j]
        _lu_solve(plan, lup, &x[0])
        if lup == lu_fixed and zc != NULL:
            # Woodbury: the fixed factors are of J0, the step wants J0 + U C V^T (the case's
            # Ybus change at the base voltages): dx = y - Z K (V^T y), K = (I + C V^T Z)^-1 C
            for j in range(4):
                tv[j] = x[vc[j]] if vc[j] >= 0 else 0.0
            for j in range(4):
                sv[j] = kc[4 * j] * tv[0] + kc[4 * j + 1] * tv[1] + kc[4 * j + 2] * tv[2] \
                    + kc[4 * j + 3] * tv[3]
            for k in range(2 * nb):
                x[k] -= zc[k] * sv[0] + zc[2 * nb + k] * sv[1] + zc[4 * nb + k] * sv[2] \
                    + zc[6 * nb + k] * sv[3]
        for i in range(n):
            b = blk[i]
            if b < 0:
                continue
            a = va[i] + x[2 * b]
            vmag = vm[i] + x[2 * b + 1]
            va[i] = a
            vm[i] = vmag
            vre[i] = vmag * cos(a)
            vim[i] = vmag * sin(a)
        for j in range(2 * nb):
            x[j] = 0.0
        it += 1


cdef void _lu_solve(Plan plan, const double* lup, double* x) noexcept nogil:
    """Solve L U z = x in place (x: two values per block) with the factors ``lup``."""
    cdef int nb = plan.n_unk, j, q, r
    cdef int[::1] colptr = plan.colptr, rowidx = plan.rowidx, diagpos = plan.diagpos
    cdef double y0, y1
    cdef const double* lb
    for j in range(nb):
        y0 = x[2 * j]
        y1 = x[2 * j + 1]
        if y0 == 0.0 and y1 == 0.0:
            continue
        for q in range(diagpos[j] + 1, colptr[j + 1]):
            r = 2 * rowidx[q]
            lb = &lup[4 * q]
            x[r] -= lb[0] * y0 + lb[1] * y1
            x[r + 1] -= lb[2] * y0 + lb[3] * y1
    for j in range(nb - 1, -1, -1):
        lb = &lup[4 * diagpos[j]]
        y0 = lb[0] * x[2 * j] + lb[1] * x[2 * j + 1]
        y1 = lb[2] * x[2 * j] + lb[3] * x[2 * j + 1]
        x[2 * j] = y0
        x[2 * j + 1] = y1
        if y0 == 0.0 and y1 == 0.0:
            continue
        for q in range(colptr[j], diagpos[j]):
            r = 2 * rowidx[q]
            lb = &lup[4 * q]
            x[r] -= lb[0] * y0 + lb[1] * y1
            x[r + 1] -= lb[2] * y0 + lb[3] * y1


cdef bint _woodbury(Plan plan, const double* lup, const signed char[::1] kind,
                    const double[::1] vm0, const double[::1] va0, const double[::1] vset,
                    int f, int t, const double* dy, double* zc, double* kc,
                    int* vc) noexcept nogil:
    """Z, K and the column indices of a branch change ``dy`` (Yff, Yft, Ytf, Ytt as re, im
    pairs, the change added to Ybus) for :func:`_newton_loop`'s corrected chord steps.

    Returns False when the small system is singular (then plain chord steps are used).
    """
    cdef int nb = plan.n_unk
    cdef int[::1] blk = plan.blk
    cdef int bus[2]
    cdef double vr[2]
    cdef double vi[2]
    cdef double vmag[2]
    cdef double c[16]
    cdef double m[16]
    cdef int a, b, i, k, j, piv, col
    cdef double gr, gi, ur, ui, yr, yim_, ir, ii, mag, tmp, fac
    bus[0] = f
    bus[1] = t
    for a in range(2):
        i = bus[a]
        mag = vset[i] if kind[i] != 2 else vm0[i]
        vmag[a] = mag
        vr[a] = mag * cos(va0[i])
        vi[a] = mag * sin(va0[i])
        if blk[i] >= 0:
            vc[2 * a] = 2 * blk[i]
            vc[2 * a + 1] = 2 * blk[i] + 1
        else:
            vc[2 * a] = -1
            vc[2 * a + 1] = -1
    for j in range(16):
        c[j] = 0.0
    for a in range(2):  # row bus
        if vc[2 * a] < 0:
            continue
        ir = 0.0
        ii = 0.0
        for b in range(2):  # column bus
            yr = dy[2 * (2 * a + b)]
            yim_ = dy[2 * (2 * a + b) + 1]
            gr = yr * vr[b] - yim_ * vi[b]
            gi = yr * vi[b] + yim_ * vr[b]
            ir += gr
            ii += gi
            if vc[2 * b] < 0:
                continue
            ur = vr[a] * gr + vi[a] * gi
            ui = vi[a] * gr - vr[a] * gi
            c[(2 * a) * 4 + 2 * b] += ui
            c[(2 * a) * 4 + 2 * b + 1] += ur / vmag[b]
            c[(2 * a + 1) * 4 + 2 * b] += -ur
            c[(2 * a + 1) * 4 + 2 * b + 1] += ui / vmag[b]
        ur = vr[a] * ir + vi[a] * ii
        ui = vi[a] * ir - vr[a] * ii
        c[(2 * a) * 4 + 2 * a] -= ui
        c[(2 * a) * 4 + 2 * a + 1] += ur / vmag[a]
        c[(2 * a + 1) * 4 + 2 * a] += ur
        c[(2 * a + 1) * 4 + 2 * a + 1] += ui / vmag[a]
        if kind[bus[a]] == 1:  # PV: the Q row is the fixed identity row
            for b in range(4):
                c[(2 * a + 1) * 4 + b] = 0.0
    # Z = J0^-1 U, one solve per valid column
    for a in range(4):
        for k in range(2 * nb):
            zc[2 * nb * a + k] = 0.0
        if vc[a] >= 0:
            zc[2 * nb * a + vc[a]] = 1.0
            _lu_solve(plan, lup, &zc[2 * nb * a])
    # M = I + C W with W[b][a] = Z_a[vc[b]]
    for a in range(4):
        for b in range(4):
            tmp = 1.0 if a == b else 0.0
            for j in range(4):
                if vc[j] >= 0 and vc[b] >= 0:
                    tmp += c[4 * a + j] * zc[2 * nb * b + vc[j]]
            m[4 * a + b] = tmp
    # K = M^-1 C (Gauss-Jordan with partial pivoting, 4 right-hand sides)
    for j in range(16):
        kc[j] = c[j]
    for col in range(4):
        piv = col
        for a in range(col + 1, 4):
            if fabs(m[4 * a + col]) > fabs(m[4 * piv + col]):
                piv = a
        if fabs(m[4 * piv + col]) < 1e-12:
            return False
        if piv != col:
            for b in range(4):
                tmp = m[4 * col + b]
                m[4 * col + b] = m[4 * piv + b]
                m[4 * piv + b] = tmp
                tmp = kc[4 * col + b]
                kc[4 * col + b] = kc[4 * piv + b]
                kc[4 * piv + b] = tmp
        fac = m[4 * col + col]
        for b in range(4):
            m[4 * col + b] /= fac
            kc[4 * col + b] /= fac
        for a in range(4):
            if a != col:
                fac = m[4 * a + col]
                if fac != 0.0:
                    for b in range(4):
                        m[4 * a + b] -= fac * m[4 * col + b]
                        kc[4 * a + b] -= fac * kc[4 * col + b]
    return True


cdef int _jacobian_lu(
    Plan plan,
    const int[::1] yp, const int[::1] yi, const double[::1] yre, const double[::1] yim,
    const signed char[::1] kind, double[::1] vm,
) noexcept nogil:
    """Jacobian at the plan's current voltages and currents, factorized in ``plan.lu``.

    Returns 0, or 2 for a singular diagonal block (x is left zeroed).
    """
    cdef int n = plan.n_bus, nb = plan.n_unk
    cdef int[::1] blk = plan.blk, colptr = plan.colptr, rowidx = plan.rowidx
    cdef int[::1] diagpos = plan.diagpos, ypos = plan.ypos
    cdef double[::1] lu = plan.lu, x = plan.x
    cdef double[::1] vre = plan.vre, vim = plan.vim, ire = plan.ire, iim = plan.iim
    cdef int i, k, p, q, j, b, r, pd, kk
    cdef double a, c, gr, gi, vmag, det, scale
    cdef double d0, d1, d2, d3, e0, e1
    cdef double dsr_t, dsi_t, dsr_v, dsi_v, ur, ui
    cdef double* xb
    cdef double* lb
    if True:
        # Jacobian blocks straight into the LU storage
        for p in range(4 * colptr[nb]):
            lu[p] = 0.0
        for i in range(n):
            b = blk[i]
            if b < 0:
                continue
            vmag = vm[i]
            if kind[i] == 3:
                for p in range(yp[i], yp[i + 1]):
                    if yi[p] == i:
                        q = 4 * ypos[p]
                        lu[q] += 1.0
                        lu[q + 3] += 1.0
                continue
            for p in range(yp[i], yp[i + 1]):
                k = yi[p]
                if blk[k] < 0 or kind[k] == 3:
                    continue
                # Y_ik V_k
                gr = yre[p] * vre[k] - yim[p] * vim[k]
                gi = yre[p] * vim[k] + yim[p] * vre[k]
                # dS_i/dtheta_k = -j V_i conj(Y_ik V_k); dS_i/dVm_k = V_i conj(Y_ik V_k) / |V_k|
                ur = vre[i] * gr + vim[i] * gi
                ui = vim[i] * gr - vre[i] * gi
                dsr_t = ui
                dsi_t = -ur
                dsr_v = ur / vm[k]
                dsi_v = ui / vm[k]
                if k == i:
                    # + j V_i conj(I_i) for the angle, + conj(I_i) V_i/|V_i| for the magnitude
                    ur = vre[i] * ire[i] + vim[i] * iim[i]
                    ui = vim[i] * ire[i] - vre[i] * iim[i]
                    dsr_t = dsr_t - ui
                    dsi_t = dsi_t + ur
                    dsr_v = dsr_v + ur / vmag
                    dsi_v = dsi_v + ui / vmag
                q = 4 * ypos[p]
                lu[q] += dsr_t
                lu[q + 1] += dsr_v
                if kind[i] == 1:
                    if k == i:
                        lu[q + 3] += 1.0  # PV bus: the Q row fixes the magnitude
                else:
                    lu[q + 2] += dsi_t
                    lu[q + 3] += dsi_v
        # left-looking block LU on the fixed pattern, dense block work vector x
        for j in range(nb):
            for p in range(colptr[j], colptr[j + 1]):
                r = 4 * rowidx[p]
                x[r] = lu[4 * p]
                x[r + 1] = lu[4 * p + 1]
                x[r + 2] = lu[4 * p + 2]
                x[r + 3] = lu[4 * p + 3]
            pd = diagpos[j]
            for p in range(colptr[j], pd):
                kk = rowidx[p]
                xb = &x[4 * kk]  # final U(kk, j)
                if xb[0] == 0.0 and xb[1] == 0.0 and xb[2] == 0.0 and xb[3] == 0.0:
                    continue
                for q in range(diagpos[kk] + 1, colptr[kk + 1]):
                    _mm_sub(&x[4 * rowidx[q]], &lu[4 * q], xb)
            # diagonal block: store D_j inverted, checked
            xb = &x[4 * j]
            d0 = xb[0]
            d1 = xb[1]
            d2 = xb[2]
            d3 = xb[3]
            det = d0 * d3 - d1 * d2
            scale = (fabs(d0) + fabs(d1)) * (fabs(d2) + fabs(d3))
            if not (fabs(det) > 1e-14 * scale) or scale == 0.0:
                for p in range(colptr[j], colptr[j + 1]):
                    r = 4 * rowidx[p]
                    x[r] = 0.0
                    x[r + 1] = 0.0
                    x[r + 2] = 0.0
                    x[r + 3] = 0.0
                return 2
            for p in range(colptr[j], pd):
                r = 4 * rowidx[p]
                lu[4 * p] = x[r]
                lu[4 * p + 1] = x[r + 1]
                lu[4 * p + 2] = x[r + 2]
                lu[4 * p + 3] = x[r + 3]
                x[r] = 0.0
                x[r + 1] = 0.0
                x[r + 2] = 0.0
                x[r + 3] = 0.0
            # inverse of D_j kept in the diagonal slot
            lu[4 * pd] = d3 / det
            lu[4 * pd + 1] = -d1 / det
            lu[4 * pd + 2] = -d2 / det
            lu[4 * pd + 3] = d0 / det
            xb[0] = 0.0
            xb[1] = 0.0
            xb[2] = 0.0
            xb[3] = 0.0
            e0 = lu[4 * pd]
            e1 = lu[4 * pd + 1]
            a = lu[4 * pd + 2]
            c = lu[4 * pd + 3]
            for p in range(pd + 1, colptr[j + 1]):
                r = 4 * rowidx[p]
                lb = &lu[4 * p]
                # L(r, j) = X(r) D^-1
                lb[0] = x[r] * e0 + x[r + 1] * a
                lb[1] = x[r] * e1 + x[r + 1] * c
                lb[2] = x[r + 2] * e0 + x[r + 3] * a
                lb[3] = x[r + 2] * e1 + x[r + 3] * c
                x[r] = 0.0
                x[r + 1] = 0.0
                x[r + 2] = 0.0
                x[r + 3] = 0.0
    return 0


def newton(plan, indptr, indices, y_re, y_im, kind, p_spec, q_spec, vset, vm, va,
           double tol=1e-8, int max_iter=10):
    """Newton-Raphson on one compiled system; ``vm``/``va`` (radians) are updated in place.

    Args:
        plan: from :func:`analyse` for this Ybus pattern and slack set.
        indptr, indices, y_re, y_im: Ybus in CSR (int32 / float64).
        kind: int8 per bus (0 slack, 1 PV, 2 PQ, 3 dead: a non-slack bus cut off from every
        slack, held where it is; its admittances to live buses must be zero); p_spec, q_spec: injections in per unit;
        vset: voltage set points (copied into vm at slack and PV buses first);
        vm, va: start values, overwritten.

    Returns:
        (iterations, max_mismatch).

    Raises:
        LoadflowNotConverged: with the internal bus index as ``worst_bus``; ``vm``/``va`` then
        hold the diverged state (the caller restores its own copy).
    """
    cdef Plan pl = <Plan?>plan
    cdef const int[::1] yp = indptr
    cdef const int[::1] yi = indices
    cdef const double[::1] yre = y_re
    cdef const double[::1] yim = y_im
    cdef const signed char[::1] kd = kind
    cdef const double[::1] ps = p_spec
    cdef const double[::1] qs = q_spec
    cdef const double[::1] vs = vset
    cdef double[::1] m = vm
    cdef double[::1] a = va
    cdef int n = pl.n_bus
    if yp.shape[0] != n + 1 or kd.shape[0] != n or ps.shape[0] != n or qs.shape[0] != n \
            or vs.shape[0] != n or m.shape[0] != n or a.shape[0] != n:
        raise ValueError(f"expected arrays sized for {n} buses, found a mismatch")
    if yi.shape[0] != pl.arrays["indices"].shape[0]:
        raise ValueError(
            f"expected a Ybus with {pl.arrays['indices'].shape[0]} entries, found {yi.shape[0]}"
        )
    cdef int iters = 0, worst = -1, status
    cdef double nrm = 0.0
    with nogil:
        status = _newton_loop(pl, yp, yi, yre, yim, kd, ps, qs, vs, m, a, tol, max_iter,
                              &iters, &nrm, &worst)
    if status == 1:
        raise LoadflowNotConverged(iters, worst, nrm)
    if status == 2:
        raise LoadflowNotConverged(iters, worst, nrm, "singular Jacobian (zero pivot)")
    return iters, nrm


cdef inline void _scatter(double[::1] out, long long[::1] bus, double[::1] w,
                          double[::1] val) noexcept nogil:
    """out[bus[k]] -= w[k] * val[k] for every element on an energized bus (bus >= 0)."""
    cdef Py_ssize_t k
    cdef long long b
    for k in range(bus.shape[0]):
        b = bus[k]
        if b >= 0:
            out[b] -= w[k] * val[k]


cdef class Stepper:
    """One compiled system bound once, so that a solve passes only the start state.

    Holds the plan, Ybus, bus kinds and set points, and the injection specification: per bus
    ``base_p`` / ``base_q`` (generation minus the demand that is not a load / sgen input, MW /
    Mvar) and four element groups (load P, sgen P, load Q, sgen Q) as (internal bus or -1,
    signed weight, input array). The input arrays are read at every :meth:`run`, so the caller
    updates them in place; ``vset`` too. ``p = (base_p - sum w*val) / base_mva`` and
    ``q = (base_q - sum w*val + qfix) / base_mva`` are assembled inside the call.
    """

    cdef Plan plan
    cdef int[::1] yp, yi
    cdef double[::1] yre, yim, vset, base_p, base_q, p, q
    cdef signed char[::1] kind0
    cdef long long[::1] b0, b1, b2, b3
    cdef double[::1] w0, w1, w2, w3, v0, v1, v2, v3
    cdef double inv_base
    cdef public object refs

    def __init__(self, plan, indptr, indices, y_re, y_im, kind, vset, base_p, base_q,
                 groups, double inv_base):
        cdef Plan pl = <Plan?>plan
        cdef int n = pl.n_bus
        if len(groups) != 4:
            raise ValueError(f"expected 4 element groups, found {len(groups)}")
        self.refs = (plan, indptr, indices, y_re, y_im, kind, vset, groups)
        self.plan = pl
        self.yp = indptr
        self.yi = indices
        self.yre = y_re
        self.yim = y_im
        self.kind0 = kind
        self.vset = vset
        if self.yp.shape[0] != n + 1 or self.kind0.shape[0] != n or self.vset.shape[0] != n:
            raise ValueError(f"expected arrays sized for {n} buses, found a mismatch")
        if self.yi.shape[0] != pl.arrays["indices"].shape[0]:
            raise ValueError(
                f"expected a Ybus with {pl.arrays['indices'].shape[0]} entries, "
                f"found {self.yi.shape[0]}"
            )
        for bus, w, val in groups:
            if not (len(bus) == len(w) == len(val)):
                raise ValueError("expected bus, weight and value arrays of one length per group")
            if len(bus) and int(np.max(bus)) >= n:
                raise ValueError(f"expected internal buses < {n}")
        self.b0, self.w0, self.v0 = groups[0]
        self.b1, self.w1, self.v1 = groups[1]
        self.b2, self.w2, self.v2 = groups[2]
        self.b3, self.w3, self.v3 = groups[3]
        self.inv_base = inv_base
        self.p = np.zeros(n)
        self.q = np.zeros(n)
        self.set_base(base_p, base_q)

    def set_y(self, y_re, y_im):
        """New Ybus values on the same pattern (a topology patch); read in place, not copied."""
        cdef double[::1] yr = y_re
        cdef double[::1] yi = y_im
        if yr.shape[0] != self.yi.shape[0] or yi.shape[0] != self.yi.shape[0]:
            raise ValueError(f"expected {self.yi.shape[0]} Ybus values, found {yr.shape[0]}")
        self.yre = yr
        self.yim = yi
        self.refs = self.refs[:3] + (y_re, y_im) + self.refs[5:]

    def set_base(self, base_p, base_q):
        """New per-bus fixed parts (after a generator set-point change); copied."""
        cdef double[::1] bp = np.array(base_p, dtype=float)
        cdef double[::1] bq = np.array(base_q, dtype=float)
        if bp.shape[0] != self.plan.n_bus or bq.shape[0] != self.plan.n_bus:
            raise ValueError(f"expected arrays sized for {self.plan.n_bus} buses")
        self.base_p = bp
        self.base_q = bq

    cdef void _assemble(self, const double* qfix) noexcept nogil:
        """p / q in per unit into the work arrays; ``qfix`` NULL: no fixed reactive injection."""
        cdef Py_ssize_t i, n = self.p.shape[0]
        for i in range(n):
            self.p[i] = self.base_p[i]
            self.q[i] = self.base_q[i]
        _scatter(self.p, self.b0, self.w0, self.v0)
        _scatter(self.p, self.b1, self.w1, self.v1)
        _scatter(self.q, self.b2, self.w2, self.v2)
        _scatter(self.q, self.b3, self.w3, self.v3)
        if qfix != NULL:
            for i in range(n):
                self.q[i] += qfix[i]
        for i in range(n):
            self.p[i] *= self.inv_base
            self.q[i] *= self.inv_base

    def spec(self, qfix=None):
        """(p_spec, q_spec) in per unit as :meth:`run` would use them (copies)."""
        cdef double[::1] qf
        cdef const double* qptr = NULL
        if qfix is not None:
            qf = qfix
            if qf.shape[0] != self.plan.n_bus:
                raise ValueError(f"expected arrays sized for {self.plan.n_bus} buses")
            if qf.shape[0]:
                qptr = &qf[0]
        self._assemble(qptr)
        return np.array(self.p), np.array(self.q)

    def run(self, vm, va, kind=None, qfix=None, double tol=1e-8, int max_iter=10):
        """Assemble p / q, then Newton-Raphson like :func:`newton` (``vm``/``va`` in place).

        ``kind`` None: the bound kinds; ``qfix`` None: no fixed reactive injections.
        """
        cdef double[::1] m = vm
        cdef double[::1] a = va
        cdef signed char[::1] kd
        cdef double[::1] qf
        cdef const double* qptr = NULL
        cdef int n = self.plan.n_bus
        if kind is None:
            kd = self.kind0
        else:
            kd = kind
        if qfix is not None:
            qf = qfix
            if qf.shape[0] != n:
                raise ValueError(f"expected arrays sized for {n} buses, found a mismatch")
            if n:
                qptr = &qf[0]
        if m.shape[0] != n or a.shape[0] != n or kd.shape[0] != n:
            raise ValueError(f"expected arrays sized for {n} buses, found a mismatch")
        cdef int iters = 0, worst = -1, status
        cdef double nrm = 0.0
        with nogil:
            self._assemble(qptr)
            status = _newton_loop(self.plan, self.yp, self.yi, self.yre, self.yim, kd, self.p,
                                  self.q, self.vset, m, a, tol, max_iter, &iters, &nrm, &worst)
        if status == 1:
            raise LoadflowNotConverged(iters, worst, nrm)
        if status == 2:
            raise LoadflowNotConverged(iters, worst, nrm, "singular Jacobian (zero pivot)")
        return iters, nrm


def copy_if_finite(src, dst):
    """Copy 1-D float64 ``src`` into ``dst`` when every value is finite.

    Returns False, with ``dst`` untouched, when a value is NaN or infinite (no floating-point
    flags are raised, so no NumPy warning either).
    """
    cdef const double[:] s = src
    cdef double[::1] d = dst
    cdef Py_ssize_t i, n = s.shape[0]
    if d.shape[0] != n:
        raise ValueError(f"expected {d.shape[0]} values, found {n}")
    for i in range(n):
        if not isfinite(s[i]):
            return False
    for i in range(n):
        d[i] = s[i]
    return True


def batch(plan, indptr, indices, y_re, y_im, kind, p_spec, q_spec, vset, vm0, va0,
          patch_ptr, patch_pos, patch_re, patch_im, dead_ptr, dead_bus, case_branch,
          branch, out_vm, out_va, out_loading, out_it, out_status, out_nrm,
          Py_ssize_t start, Py_ssize_t stop, double tol=1e-8, int max_iter=10, retry=None,
          int chord=10):
    """Solve cases ``start:stop`` of a batch on one compiled system, without the GIL.

    Case ``c`` adds ``patch_re/im[patch_ptr[c]:patch_ptr[c+1]]`` to the Ybus entries at
    ``patch_pos`` (a branch outage subtracts its admittances), marks ``dead_bus[dead_ptr[c]:
    dead_ptr[c+1]]`` as dead (kind 3: cut off from every slack), takes injections from row ``c``
    of ``p_spec``/``q_spec`` (or row 0 when they have one row) and starts from ``vm0``/``va0``
    (then from ``retry`` = (vm, va) when given and the first start fails). Results go to row
    ``c`` of the ``out_*`` arrays: voltages (NaN at dead buses, NaN rows when not converged),
    iterations, status (0 converged, 1 not converged, 2 singular) and the final mismatch.
    ``branch`` = (f, t, yff_re, yff_im, yft_re, yft_im, ytf_re, ytf_im, ytt_re, ytt_im, cf, ct)
    gives ``out_loading[c, j] = max(|I_f| cf, |I_t| ct)`` per branch (0 for branch
    ``case_branch[c]`` and branches at dead or missing (-1) buses); ``branch`` may be None.
    ``chord`` > 0: cases without dead buses first take up to that many chord steps on the
    factors of the base case's Jacobian (``vm0``/``va0``, unpatched Ybus, row 0 injections),
    then Newton steps; the tolerance is the same.
    The Ybus arrays and inputs are not changed (each call works on its own copies). Indices in
    ``patch_pos``, ``dead_bus``, ``f``/``t`` are not bounds-checked here: the caller validates.
    """
    cdef Plan pl = Plan((<Plan?>plan).arrays)  # own work arrays: calls may run in parallel
    cdef int n = pl.n_bus
    cdef const int[::1] yp = indptr
    cdef const int[::1] yi = indices
    cdef double[::1] yre = np.array(y_re, dtype=float)
    cdef double[::1] yim = np.array(y_im, dtype=float)
    cdef const double[::1] yre0 = y_re
    cdef const double[::1] yim0 = y_im
    cdef signed char[::1] kd = np.array(kind, dtype=np.int8)
    cdef const signed char[::1] kd0 = kind
    cdef const double[:, ::1] ps = p_spec
    cdef const double[:, ::1] qs = q_spec
    cdef const double[::1] vs = vset
    cdef const double[::1] m0 = vm0
    cdef const double[::1] a0 = va0
    cdef const double[::1] m1
    cdef const double[::1] a1
    cdef const long long[::1] pptr = patch_ptr
    cdef const int[::1] ppos = patch_pos
    cdef const double[::1] pre = patch_re
    cdef const double[::1] pim = patch_im
    cdef const long long[::1] dptr = dead_ptr
    cdef const int[::1] dbus = dead_bus
    cdef const int[::1] cbr = case_branch
    cdef double[:, ::1] ovm = out_vm
    cdef double[:, ::1] ova = out_va
    cdef int[::1] oit = out_it
    cdef signed char[::1] ost = out_status
    cdef double[::1] onrm = out_nrm
    cdef bint has_retry = retry is not None
    cdef bint has_branch = branch is not None
    cdef const int[::1] bf
    cdef const int[::1] bt
    cdef const double[::1] ffr, ffi, ftr, fti, tfr, tfi, ttr, tti, cf, ct
    cdef double[:, ::1] oload
    cdef Py_ssize_t nbr = 0
    if yp.shape[0] != n + 1 or kd.shape[0] != n or vs.shape[0] != n or m0.shape[0] != n \
            or a0.shape[0] != n or ps.shape[1] != n or qs.shape[1] != n \
            or ovm.shape[1] != n or ova.shape[1] != n:
        raise ValueError(f"expected arrays sized for {n} buses, found a mismatch")
    if yi.shape[0] != pl.arrays["indices"].shape[0] or yre.shape[0] != yi.shape[0]:
        raise ValueError(
            f"expected a Ybus with {pl.arrays['indices'].shape[0]} entries, found {yi.shape[0]}"
        )
    if has_retry:
        m1 = retry[0]
        a1 = retry[1]
    else:
        m1 = m0
        a1 = a0
    if has_branch:
        bf, bt, ffr, ffi, ftr, fti, tfr, tfi, ttr, tti, cf, ct = branch
        nbr = bf.shape[0]
        oload = out_loading
        if oload.shape[1] != nbr:
            raise ValueError(f"expected out_loading with {nbr} columns, found {oload.shape[1]}")
    if start < 0 or stop > ovm.shape[0] or stop > pptr.shape[0] - 1 or stop > dptr.shape[0] - 1 \
            or stop > cbr.shape[0]:
        raise ValueError(f"expected a case range inside the batch, found {start}:{stop}")
    cdef Py_ssize_t c, p, i, j, row
    cdef int iters, worst, status, fb, tb
    cdef double nrm, vfr, vfi, vtr, vti, ir, ii, lf, lt
    cdef double[::1] lu_base
    cdef const double* lu_ptr = NULL
    cdef double[::1] bvm, bva
    if chord > 0 and stop > start:
        # factors of the base Jacobian: one Newton step at the base state (never "converged")
        bvm = np.array(vm0, dtype=float)
        bva = np.array(va0, dtype=float)
        with nogil:
            status = _newton_loop(pl, yp, yi, yre, yim, kd, ps[0], qs[0], vs, bvm, bva, -1.0, 1,
                                  &iters, &nrm, &worst)
        if status == 1 and pl.lu.shape[0]:
            lu_base = np.array(pl.lu)
            lu_ptr = &lu_base[0]
    cdef double[::1] zbuf = np.zeros(max(8 * pl.n_unk, 1))
    cdef double kbuf[16]
    cdef int vbuf[4]
    cdef double dy[8]
    cdef bint corr
    cdef int br
    cdef double[::1] pvre = pl.vre
    cdef double[::1] pvim = pl.vim
    with nogil:
        for c in range(start, stop):
            row = c if ps.shape[0] > 1 else 0
            for p in range(pptr[c], pptr[c + 1]):
                yre[ppos[p]] += pre[p]
                yim[ppos[p]] += pim[p]
            for p in range(dptr[c], dptr[c + 1]):
                kd[dbus[p]] = 3
            for i in range(n):
                ovm[c, i] = m0[i]
                ova[c, i] = a0[i]
            iters = 0
            worst = -1
            nrm = 0.0
            corr = False
            br = cbr[c]
            if lu_ptr != NULL and dptr[c + 1] == dptr[c] and has_branch and br >= 0 \
                    and bf[br] >= 0 and bt[br] >= 0:
                dy[0] = -ffr[br]
                dy[1] = -ffi[br]
                dy[2] = -ftr[br]
                dy[3] = -fti[br]
                dy[4] = -tfr[br]
                dy[5] = -tfi[br]
                dy[6] = -ttr[br]
                dy[7] = -tti[br]
                corr = _woodbury(pl, lu_ptr, kd, m0, a0, vs, bf[br], bt[br], dy, &zbuf[0],
                                 kbuf, vbuf)
            status = _newton_loop(pl, yp, yi, yre, yim, kd, ps[row], qs[row], vs, ovm[c],
                                  ova[c], tol, max_iter, &iters, &nrm, &worst,
                                  lu_ptr if dptr[c + 1] == dptr[c] else NULL, chord,
                                  &zbuf[0] if corr else NULL, kbuf, vbuf)
            if status != 0 and has_retry:
                for i in range(n):
                    ovm[c, i] = m1[i]
                    ova[c, i] = a1[i]
                status = _newton_loop(pl, yp, yi, yre, yim, kd, ps[row], qs[row], vs, ovm[c],
                                      ova[c], tol, max_iter, &iters, &nrm, &worst)
            oit[c] = iters
            ost[c] = status
            onrm[c] = nrm
            if has_branch:
                for j in range(nbr):
                    fb = bf[j]
                    tb = bt[j]
                    if status != 0:
                        oload[c, j] = NAN
                        continue
                    if fb < 0 or tb < 0 or j == cbr[c] or kd[fb] == 3 or kd[tb] == 3:
                        oload[c, j] = 0.0
                        continue
                    # the loop leaves V of its last (converged) iterate in the plan's arrays
                    vfr = pvre[fb]
                    vfi = pvim[fb]
                    vtr = pvre[tb]
                    vti = pvim[tb]
                    ir = ffr[j] * vfr - ffi[j] * vfi + ftr[j] * vtr - fti[j] * vti
                    ii = ffr[j] * vfi + ffi[j] * vfr + ftr[j] * vti + fti[j] * vtr
                    lf = sqrt(ir * ir + ii * ii) * cf[j]
                    ir = tfr[j] * vfr - tfi[j] * vfi + ttr[j] * vtr - tti[j] * vti
                    ii = tfr[j] * vfi + tfi[j] * vfr + ttr[j] * vti + tti[j] * vtr
                    lt = sqrt(ir * ir + ii * ii) * ct[j]
                    oload[c, j] = lf if lf > lt else lt
            for i in range(n):
                if status != 0 or kd[i] == 3:
                    ovm[c, i] = NAN
                    ova[c, i] = NAN
            for p in range(pptr[c], pptr[c + 1]):
                yre[ppos[p]] = yre0[ppos[p]]
                yim[ppos[p]] = yim0[ppos[p]]
            for p in range(dptr[c], dptr[c + 1]):
                kd[dbus[p]] = kd0[dbus[p]]
    return None


_TYPE_NAMES = {cnp.NPY_DOUBLE: "float64", cnp.NPY_INT32: "int32", cnp.NPY_INT64: "int64"}


cdef void* _arr(object a, int typenum, Py_ssize_t rows, Py_ssize_t cols, bint write,
               str what) except? NULL:
    """The data pointer of a C-contiguous ``rows`` (x ``cols``; -1: 1-D) array of ``typenum``.

    The result kernels take raw pointers: a typed memoryview per argument costs more than the
    arithmetic on a grid of a few hundred buses.
    """
    cdef cnp.ndarray x
    cdef bint ok
    if not isinstance(a, cnp.ndarray):
        raise TypeError(f"{what}: expected a numpy array, found {type(a).__name__}")
    x = <cnp.ndarray>a
    ok = cnp.PyArray_TYPE(x) == typenum and cnp.PyArray_IS_C_CONTIGUOUS(x)
    if cols < 0:
        ok = ok and cnp.PyArray_NDIM(x) == 1 and cnp.PyArray_DIMS(x)[0] == rows
    else:
        ok = ok and cnp.PyArray_NDIM(x) == 2 and cnp.PyArray_DIMS(x)[0] == rows
        ok = ok and cnp.PyArray_DIMS(x)[1] == cols
    if not ok:
        shape = f"({rows},)" if cols < 0 else f"({rows}, {cols})"
        raise ValueError(
            f"{what}: expected a C-contiguous {shape} array of {_TYPE_NAMES.get(typenum, typenum)}"
            f", found {a.dtype.name} {a.shape}"
        )
    if write and not cnp.PyArray_ISWRITEABLE(x):
        raise ValueError(f"{what}: expected a writable array")
    return cnp.PyArray_DATA(x)


cdef inline Py_ssize_t _len(object a, str what) except -1:
    if not isinstance(a, cnp.ndarray) or cnp.PyArray_NDIM(<cnp.ndarray>a) != 1:
        raise ValueError(f"{what}: expected a 1-D numpy array")
    return cnp.PyArray_DIMS(<cnp.ndarray>a)[0]


cdef inline void _polar_loop(Py_ssize_t n, const double* m, const double* a,
                             double* o) noexcept nogil:
    cdef Py_ssize_t k
    cdef double deg = 180.0 / 3.141592653589793
    cdef double c, s, x
    for k in range(n):
        x = a[k]
        sincos(x, &s, &c)
        o[k] = m[k] * c
        o[n + k] = m[k] * s
        # angle(V) in [-180, 180]: the angle itself, wrapped only when outside (no atan2)
        if x > PI or x < -PI:
            x = remainder(x, 2.0 * PI)
            if x == PI or x == -PI:
                x = PI if s >= 0.0 else -PI
        if m[k] < 0.0:  # a negative magnitude turns the phasor half a turn
            x = x - PI if x > 0.0 else x + PI
        o[2 * n + k] = x * deg


def polar(vm, va, out):
    """Per bus: ``out[0] + 1j * out[1] = vm * exp(1j * va)``, ``out[2]`` angle(V) in degrees."""
    cdef Py_ssize_t n = _len(vm, "vm")
    cdef const double* m = <const double*>_arr(vm, cnp.NPY_DOUBLE, n, -1, False, "vm")
    cdef const double* a = <const double*>_arr(va, cnp.NPY_DOUBLE, n, -1, False, "va")
    cdef double* o = <double*>_arr(out, cnp.NPY_DOUBLE, 3, n, True, "outputs")
    with nogil:
        _polar_loop(n, m, a, o)
    return out


cdef inline void _branch_loop(Py_ssize_t rows, long long n, double base_mva, const double* m,
                              const double* p, const long long* f, const long long* t,
                              const double* y, const double* s, const double* cf,
                              double* o) noexcept nogil:
    """The body of :func:`branch_results` (``o`` is ``(14, rows)``).

    ``cf`` is NULL or ``(2, rows)``: ``base_mva / (sqrt(3) kv)`` at each end (kA per pu of
    current; computed here when NULL). ``|I| = |S| / |V|``, so the current comes from the
    branch current itself, without a division.
    """
    cdef Py_ssize_t k, R = rows
    cdef double vfr, vfi, vtr, vti, ifr, ifi, itr, iti, sfr, sfi, str_, sti
    cdef double i_f, i_t, i_max, lf, lt, fac, c_f, c_t
    cdef double sq3 = sqrt(3.0)
    for k in range(rows):
        vfr = vfi = vtr = vti = 0.0
        o[10 * R + k] = NAN
        o[11 * R + k] = NAN
        o[12 * R + k] = NAN
        o[13 * R + k] = NAN
        if f[k] < n:
            vfr = p[f[k]]
            vfi = p[n + f[k]]
            o[10 * R + k] = m[f[k]]
            o[11 * R + k] = p[2 * n + f[k]]
        if t[k] < n:
            vtr = p[t[k]]
            vti = p[n + t[k]]
            o[12 * R + k] = m[t[k]]
            o[13 * R + k] = p[2 * n + t[k]]
        ifr = y[k] * vfr - y[R + k] * vfi + y[2 * R + k] * vtr - y[3 * R + k] * vti
        ifi = y[k] * vfi + y[R + k] * vfr + y[2 * R + k] * vti + y[3 * R + k] * vtr
        itr = y[4 * R + k] * vfr - y[5 * R + k] * vfi + y[6 * R + k] * vtr - y[7 * R + k] * vti
        iti = y[4 * R + k] * vfi + y[5 * R + k] * vfr + y[6 * R + k] * vti + y[7 * R + k] * vtr
        # S = V conj(I)
        sfr = (vfr * ifr + vfi * ifi) * base_mva
        sfi = (vfi * ifr - vfr * ifi) * base_mva
        str_ = (vtr * itr + vti * iti) * base_mva
        sti = (vti * itr - vtr * iti) * base_mva
        o[k] = sfr
        o[R + k] = sfi
        o[2 * R + k] = str_
        o[3 * R + k] = sti
        o[4 * R + k] = sfr + str_
        o[5 * R + k] = sfi + sti
        if cf != NULL:
            c_f = cf[k]
            c_t = cf[R + k]
        else:
            c_f = base_mva / (sq3 * s[k])
            c_t = base_mva / (sq3 * s[R + k])
        # a branch end that is not energized has no voltage: NaN current (pandapower's 0 / NaN)
        i_f = sqrt(ifr * ifr + ifi * ifi) * c_f if f[k] < n else NAN
        i_t = sqrt(itr * itr + iti * iti) * c_t if t[k] < n else NAN
        o[6 * R + k] = i_f
        o[7 * R + k] = i_t
        # NaN at either end propagates, like np.maximum
        if i_f != i_f or i_t != i_t:
            i_max = NAN
        else:
            i_max = i_f if i_f >= i_t else i_t
        o[8 * R + k] = i_max
        lf = i_f * s[2 * R + k]
        lt = i_t * s[3 * R + k]
        fac = s[4 * R + k]
        if fac == INFINITY:
            o[9 * R + k] = INFINITY
        elif lf != lf or lt != lt:
            o[9 * R + k] = NAN
        else:
            o[9 * R + k] = (lf if lf >= lt else lt) * fac


def branch_results(vm, vpolar, long long n, double base_mva, fb, tb, stamps, scale, out):
    """Flows, currents, loading and end voltages of one line / trafo table from the solved V.

    ``vpolar`` is what ``polar`` fills; ``fb`` / ``tb`` are ppc end buses (``>= n``: not
    energized, NaN voltages); ``stamps`` is ``(8, rows)``: yff, yft, ytf, ytt as (re, im) pairs,
    all zero for a branch that is not solved (zero flows); ``scale`` is ``(5, rows)``: kv_f,
    kv_t, weight_f, weight_t, factor, with ``loading = max(i_f * weight_f, i_t * weight_t) *
    factor`` (``factor`` inf: a line without a rating). ``out`` is ``(14, rows)``, its rows in
    the order of ``_reference.BRANCH_ROWS``.
    """
    cdef Py_ssize_t rows = _len(fb, "fb")
    cdef const double* m = <const double*>_arr(vm, cnp.NPY_DOUBLE, n, -1, False, "vm")
    cdef const double* p = <const double*>_arr(vpolar, cnp.NPY_DOUBLE, 3, n, False, "bus voltages")
    cdef const long long* f = <const long long*>_arr(fb, cnp.NPY_INT64, rows, -1, False, "fb")
    cdef const long long* t = <const long long*>_arr(tb, cnp.NPY_INT64, rows, -1, False, "tb")
    cdef const double* y = <const double*>_arr(stamps, cnp.NPY_DOUBLE, 8, rows, False, "stamps")
    cdef const double* s = <const double*>_arr(scale, cnp.NPY_DOUBLE, 5, rows, False, "scale")
    cdef double* o = <double*>_arr(out, cnp.NPY_DOUBLE, 14, rows, True, "results")
    with nogil:
        _branch_loop(rows, n, base_mva, m, p, f, t, y, s, NULL, o)
    return out


def take(buf, tuple span):
    """A new float64 array holding ``buf[span[0]:span[1]]`` (``buf`` 1-D float64, C order).

    One allocation, where ``buf[a:b].copy()`` makes a view first: reading a result column.
    """
    cdef Py_ssize_t start = span[0], stop = span[1]
    cdef Py_ssize_t size = _len(buf, "buf")
    cdef const double* src = <const double*>_arr(buf, cnp.NPY_DOUBLE, size, -1, False, "buf")
    cdef cnp.npy_intp length
    if start < 0 or stop < start or stop > size:
        raise ValueError(f"span: expected 0 <= start <= stop <= {size}, found {start}, {stop}")
    length = stop - start
    out = cnp.PyArray_EMPTY(1, &length, cnp.NPY_DOUBLE, 0)
    if length:
        memcpy(cnp.PyArray_DATA(out), src + start, length * sizeof(double))
    return out


cdef inline void _csr_add(Py_ssize_t nr, const long long* ip, const long long* ix,
                          const double* wv, const double* xv, double* o) noexcept nogil:
    """``o[r] += sum(w[p] * x[idx[p]])`` over row ``r`` of a CSR map (the body of rows_add)."""
    cdef Py_ssize_t r, p
    cdef double acc
    for r in range(nr):
        acc = 0.0
        for p in range(ip[r], ip[r + 1]):
            acc = acc + wv[p] * xv[ix[p]]
        o[r] = o[r] + acc


cdef class _Keep:
    """Contiguous copies of a result plan's arrays, checked once, kept alive with the plan."""

    cdef list arrays

    def __init__(self):
        self.arrays = []

    cdef void* ptr(self, object a, int typenum, Py_ssize_t rows, Py_ssize_t cols,
                   str what) except? NULL:
        dtype = {cnp.NPY_DOUBLE: np.float64, cnp.NPY_INT64: np.int64, cnp.NPY_INT32: np.int32,
                 cnp.NPY_INT8: np.int8}[typenum]
        x = np.array(a, dtype=dtype, order="C")  # a copy: later edits of ``a`` do not leak in
        self.arrays.append(x)
        return _arr(x, typenum, rows, cols, False, what)


cdef inline int _check_index(object a, Py_ssize_t lo, Py_ssize_t hi, str what) except -1:
    a = np.asarray(a)
    if a.size and (int(a.min()) < lo or int(a.max()) >= hi):
        raise ValueError(f"{what}: expected indices in {lo}..{hi - 1}, found "
                         f"{int(a.min())}..{int(a.max())}")
    return 0


cdef class Results:
    """Every natively computed result table of one compiled structure, in one call.

    Built once per compiled structure (the maps from ``GridModel``); :meth:`compute` then fills
    one flat float64 buffer from a solved state without the GIL. The buffer's sections, in
    order, are listed by ``offsets`` (name -> (start, rows, length); each section is C-ordered
    ``(rows, length)``): ``polar`` (3, n: V real, imaginary, angle in degrees), ``line`` and
    ``trafo`` (14, branches: the rows of :func:`branch_results`), ``gen_pg`` / ``gen_qg``
    (1, internal gen rows: pypower's PG / QG after pfsoln), ``ext_grid`` (2: p, q), ``gen``
    (4: p, q, vm, va), ``load`` and ``sgen`` (2: p, q), and ``work`` (scratch).

    Args (all arrays are copied; indices are checked here, not in ``compute``):
        n, base_mva, indptr, indices, y_re, y_im: the solved system (internal buses, Ybus).
        line, trafo: ``(fb, tb, stamps, scale)`` as :func:`branch_results` takes them, or None.
        gen: None or an object with attributes ``rows`` (gen / ref buses), ``gpos`` (per
            in-service gen: its position in ``rows``), ``on`` (their internal gen rows),
            ``q_a``, ``q_b`` (the reactive split: ``q = q_a * Qbus + q_b``), ``rest_p``,
            ``rest_q`` (demand at ``rows`` that is not an element input), ``ng`` (internal gen
            rows), ``demand`` (4 CSR maps ``(ptr, idx, w)`` over ``rows`` into the load P, sgen
            P, load Q, sgen Q inputs), ``slack`` (``(pos, single, ext_ptr, ext_idx, ext_w,
            pvg_ptr, pvg_idx)``: per reference bus its position in ``rows``, whether one gen
            takes the whole bus P, and CSR lists of its slack gens with weights and of its
            other gens), ``eg_src``, ``g_src`` (per ext_grid / gen: its internal gen row or -1)
            and ``g_bus`` (per gen: its internal bus or -1).
        load, sgen: per element the factor its input is multiplied by (scaling * in service),
            or None when the table is not computed here.
        n_load, n_sgen: lengths of the load and sgen input arrays.
    """

    cdef readonly Py_ssize_t size
    cdef readonly dict offsets
    cdef _Keep keep
    cdef Py_ssize_t n, nnz, ng, nr, non, ns, neg, ngen, nload, nsgen, nin_load, nin_sgen
    cdef double base_mva
    cdef bint has_gen
    cdef const int* yp
    cdef const int* yi
    cdef const double* yre
    cdef const double* yim
    cdef const long long* bf[2]
    cdef const long long* bt[2]
    cdef const double* bst[2]
    cdef const double* bsc[2]
    cdef const double* bcf[2]
    cdef Py_ssize_t nb[2]
    cdef Py_ssize_t boff[2]
    cdef const long long* rows
    cdef const long long* gpos
    cdef const long long* qon
    cdef const double* qa
    cdef const double* qb
    cdef const double* rp
    cdef const double* rq
    cdef const long long* dptr[4]
    cdef const long long* didx[4]
    cdef const double* dw[4]
    cdef const long long* spos
    cdef const signed char* ssingle
    cdef const long long* septr
    cdef const long long* seidx
    cdef const double* sew
    cdef const long long* spptr
    cdef const long long* spidx
    cdef const long long* egsrc
    cdef const long long* gsrc
    cdef const long long* gbus
    cdef const double* lf
    cdef const double* sf
    cdef Py_ssize_t o_polar, o_pg, o_qg, o_eg, o_gen, o_load, o_sgen, o_work

    def __init__(self, Py_ssize_t n, double base_mva, indptr, indices, y_re, y_im, line=None,
                 trafo=None, gen=None, load=None, sgen=None, Py_ssize_t n_load=0,
                 Py_ssize_t n_sgen=0):
        cdef _Keep kp = _Keep()
        cdef Py_ssize_t j, g, nin
        self.keep = kp
        self.n = n
        self.base_mva = base_mva
        self.nnz = len(indices)
        self.yp = <const int*>kp.ptr(indptr, cnp.NPY_INT32, n + 1, -1, "indptr")
        self.yi = <const int*>kp.ptr(indices, cnp.NPY_INT32, self.nnz, -1, "indices")
        self.yre = <const double*>kp.ptr(y_re, cnp.NPY_DOUBLE, self.nnz, -1, "y_re")
        self.yim = <const double*>kp.ptr(y_im, cnp.NPY_DOUBLE, self.nnz, -1, "y_im")
        _check_index(indices, 0, n, "indices")
        for j, br in enumerate((line, trafo)):
            self.nb[j] = 0
            self.bf[j] = self.bt[j] = NULL
            self.bst[j] = self.bsc[j] = self.bcf[j] = NULL
            if br is None:
                continue
            fb, tb, stamps, scale = br
            self.nb[j] = len(fb)
            _check_index(fb, 0, 2 ** 62, "fb")
            _check_index(tb, 0, 2 ** 62, "tb")
            self.bf[j] = <const long long*>kp.ptr(fb, cnp.NPY_INT64, self.nb[j], -1, "fb")
            self.bt[j] = <const long long*>kp.ptr(tb, cnp.NPY_INT64, self.nb[j], -1, "tb")
            self.bst[j] = <const double*>kp.ptr(stamps, cnp.NPY_DOUBLE, 8, self.nb[j], "stamps")
            self.bsc[j] = <const double*>kp.ptr(scale, cnp.NPY_DOUBLE, 5, self.nb[j], "scale")
            with np.errstate(divide="ignore", invalid="ignore"):
                cfac = base_mva / (np.sqrt(3.0) * np.asarray(scale, dtype=float)[:2])
            self.bcf[j] = <const double*>kp.ptr(cfac, cnp.NPY_DOUBLE, 2, self.nb[j], "scale")
        self.nin_load = n_load
        self.nin_sgen = n_sgen
        self.has_gen = gen is not None
        self.ng = self.nr = self.non = self.ns = self.neg = self.ngen = 0
        if self.has_gen:
            self.ng = int(gen.ng)
            self.nr = len(gen.rows)
            self.non = len(gen.gpos)
            _check_index(gen.rows, 0, n, "gen rows")
            _check_index(gen.gpos, 0, self.nr, "gpos")
            _check_index(gen.on, 0, self.ng, "on")
            if len(gen.on) != self.non:
                raise ValueError(f"on: expected {self.non} gen rows, found {len(gen.on)}")
            self.rows = <const long long*>kp.ptr(gen.rows, cnp.NPY_INT64, self.nr, -1, "rows")
            self.gpos = <const long long*>kp.ptr(gen.gpos, cnp.NPY_INT64, self.non, -1, "gpos")
            self.qon = <const long long*>kp.ptr(gen.on, cnp.NPY_INT64, self.non, -1, "on")
            self.qa = <const double*>kp.ptr(gen.q_a, cnp.NPY_DOUBLE, self.non, -1, "q_a")
            self.qb = <const double*>kp.ptr(gen.q_b, cnp.NPY_DOUBLE, self.non, -1, "q_b")
            self.rp = <const double*>kp.ptr(gen.rest_p, cnp.NPY_DOUBLE, self.nr, -1, "rest_p")
            self.rq = <const double*>kp.ptr(gen.rest_q, cnp.NPY_DOUBLE, self.nr, -1, "rest_q")
            if len(gen.demand) != 4:
                raise ValueError(f"demand: expected 4 maps, found {len(gen.demand)}")
            for g in range(4):
                ptr, idx, w = gen.demand[g]
                nin = n_load if g % 2 == 0 else n_sgen
                ptr = np.asarray(ptr, dtype=np.int64)
                if len(ptr) != self.nr + 1 or ptr[0] != 0 or ptr[len(ptr) - 1] != len(idx) \
                        or np.any(np.diff(ptr) < 0):
                    raise ValueError(f"demand {g}: expected a CSR map over {self.nr} rows")
                _check_index(idx, 0, nin, f"demand {g}")
                self.dptr[g] = <const long long*>kp.ptr(ptr, cnp.NPY_INT64, self.nr + 1, -1,
                                                         "demand ptr")
                self.didx[g] = <const long long*>kp.ptr(idx, cnp.NPY_INT64, len(idx), -1,
                                                         "demand idx")
                self.dw[g] = <const double*>kp.ptr(w, cnp.NPY_DOUBLE, len(idx), -1, "demand w")
            pos, single, eptr, eidx, ew, pptr, pidx = gen.slack
            self.ns = len(pos)
            _check_index(pos, 0, self.nr, "slack pos")
            _check_index(eidx, 0, self.ng, "slack gens")
            _check_index(pidx, 0, self.ng, "slack bus gens")
            for what, ptr, idx in (("ext", eptr, eidx), ("pvg", pptr, pidx)):
                ptr = np.asarray(ptr, dtype=np.int64)
                if len(ptr) != self.ns + 1 or ptr[0] != 0 or ptr[len(ptr) - 1] != len(idx) \
                        or np.any(np.diff(ptr) < 0):
                    raise ValueError(f"slack {what}: expected a CSR map over {self.ns} buses")
            if np.any(np.asarray(single, dtype=bool) & (np.diff(np.asarray(eptr)) < 1)):
                raise ValueError("slack: a single-gen bus without its gen")
            self.spos = <const long long*>kp.ptr(pos, cnp.NPY_INT64, self.ns, -1, "slack pos")
            self.ssingle = <const signed char*>kp.ptr(single, cnp.NPY_INT8, self.ns, -1,
                                                      "slack single")
            self.septr = <const long long*>kp.ptr(eptr, cnp.NPY_INT64, self.ns + 1, -1, "ext_ptr")
            self.seidx = <const long long*>kp.ptr(eidx, cnp.NPY_INT64, len(eidx), -1, "ext_idx")
            self.sew = <const double*>kp.ptr(ew, cnp.NPY_DOUBLE, len(eidx), -1, "ext_w")
            self.spptr = <const long long*>kp.ptr(pptr, cnp.NPY_INT64, self.ns + 1, -1, "pvg_ptr")
            self.spidx = <const long long*>kp.ptr(pidx, cnp.NPY_INT64, len(pidx), -1, "pvg_idx")
            self.neg = len(gen.eg_src)
            self.ngen = len(gen.g_src)
            if len(gen.g_bus) != self.ngen:
                raise ValueError(f"g_bus: expected {self.ngen} gens, found {len(gen.g_bus)}")
            _check_index(gen.eg_src, -1, self.ng, "eg_src")
            _check_index(gen.g_src, -1, self.ng, "g_src")
            _check_index(gen.g_bus, -1, n, "g_bus")
            self.egsrc = <const long long*>kp.ptr(gen.eg_src, cnp.NPY_INT64, self.neg, -1, "eg")
            self.gsrc = <const long long*>kp.ptr(gen.g_src, cnp.NPY_INT64, self.ngen, -1, "g")
            self.gbus = <const long long*>kp.ptr(gen.g_bus, cnp.NPY_INT64, self.ngen, -1, "g_bus")
        self.nload = self.nsgen = 0
        self.lf = self.sf = NULL
        if load is not None:
            self.nload = n_load
            self.lf = <const double*>kp.ptr(load, cnp.NPY_DOUBLE, n_load, -1, "load factor")
        if sgen is not None:
            self.nsgen = n_sgen
            self.sf = <const double*>kp.ptr(sgen, cnp.NPY_DOUBLE, n_sgen, -1, "sgen factor")
        self.offsets = _reference.result_offsets(
            n, self.nb[0], self.nb[1], self.ng, self.neg, self.ngen, self.nload, self.nsgen,
            self.nr,
        )
        self.size = self.offsets["size"][0]
        self.o_polar = self.offsets["polar"][0]
        self.boff[0] = self.offsets["line"][0]
        self.boff[1] = self.offsets["trafo"][0]
        self.o_pg = self.offsets["gen_pg"][0]
        self.o_qg = self.offsets["gen_qg"][0]
        self.o_eg = self.offsets["ext_grid"][0]
        self.o_gen = self.offsets["gen"][0]
        self.o_load = self.offsets["load"][0]
        self.o_sgen = self.offsets["sgen"][0]
        self.o_work = self.offsets["work"][0]

    def compute(self, vm, va, gen_pg, load_p, sgen_p, load_q, sgen_q, out=None):
        """Fill ``out`` (``size`` float64; None: a new array) from the solved ``vm`` / ``va``
        (internal buses), the gens' PG set points ``gen_pg`` (internal gen rows; not read
        without ``gen``) and the element inputs the state was solved with; returns ``out``."""
        if out is None:
            out = cnp.PyArray_EMPTY(1, [self.size], cnp.NPY_DOUBLE, 0)
        cdef Py_ssize_t n = self.n
        cdef const double* m = <const double*>_arr(vm, cnp.NPY_DOUBLE, n, -1, False, "vm")
        cdef const double* a = <const double*>_arr(va, cnp.NPY_DOUBLE, n, -1, False, "va")
        cdef const double* pg0 = NULL
        if self.has_gen:
            pg0 = <const double*>_arr(gen_pg, cnp.NPY_DOUBLE, self.ng, -1, False, "gen_pg")
        cdef const double* x[4]
        x[0] = <const double*>_arr(load_p, cnp.NPY_DOUBLE, self.nin_load, -1, False, "load p")
        x[1] = <const double*>_arr(sgen_p, cnp.NPY_DOUBLE, self.nin_sgen, -1, False, "sgen p")
        x[2] = <const double*>_arr(load_q, cnp.NPY_DOUBLE, self.nin_load, -1, False, "load q")
        x[3] = <const double*>_arr(sgen_q, cnp.NPY_DOUBLE, self.nin_sgen, -1, False, "sgen q")
        cdef double* o = <double*>_arr(out, cnp.NPY_DOUBLE, self.size, -1, True, "out")
        with nogil:
            self._compute(m, a, pg0, x, o)
        return out

    cdef void _compute(self, const double* m, const double* a, const double* pg0,
                       const double** x, double* o) noexcept nogil:
        cdef Py_ssize_t n = self.n, nr = self.nr, k, j, g, b, c, s, e
        cdef double* p = o + self.o_polar
        cdef double* pg = o + self.o_pg
        cdef double* qg = o + self.o_qg
        cdef double* pd = o + self.o_work
        cdef double* qd = pd + nr
        cdef double* pbus = qd + nr
        cdef double* qbus = pbus + nr
        cdef double* out
        cdef double ir, ii, vr, vi, vbr, vbi, p_ext, tot, sw, base = self.base_mva
        cdef Py_ssize_t ne
        _polar_loop(n, m, a, p)
        for j in range(2):
            if self.nb[j]:
                _branch_loop(self.nb[j], n, base, m, p, self.bf[j], self.bt[j], self.bst[j],
                             self.bsc[j], self.bcf[j], o + self.boff[j])
        if self.has_gen:
            # bus demand at the gen / ref buses: the fixed part plus the element groups
            for k in range(nr):
                pd[k] = self.rp[k]
                qd[k] = self.rq[k]
            for g in range(4):
                _csr_add(nr, self.dptr[g], self.didx[g], self.dw[g], x[g], pd if g < 2 else qd)
            # generation there: S = V conj(Ybus V) plus the demand (pypower's pfsoln)
            for k in range(nr):
                b = self.rows[k]
                ir = ii = 0.0
                for j in range(self.yp[b], self.yp[b + 1]):
                    c = self.yi[j]
                    vr = p[c]
                    vi = p[n + c]
                    ir = ir + self.yre[j] * vr - self.yim[j] * vi
                    ii = ii + self.yre[j] * vi + self.yim[j] * vr
                vbr = p[b]
                vbi = p[n + b]
                pbus[k] = (vbr * ir + vbi * ii) * base + pd[k]
                qbus[k] = (vbi * ir - vbr * ii) * base + qd[k]
            for j in range(self.ng):
                pg[j] = pg0[j]
                qg[j] = 0.0
            for j in range(self.non):
                qg[self.qon[j]] = self.qa[j] * qbus[self.gpos[j]] + self.qb[j]
            # the slack buses' P: one gen takes it all, or the slack gens share what the
            # other gens there leave, by their weights (pypower's _update_p)
            for s in range(self.ns):
                if self.ssingle[s]:
                    pg[self.seidx[self.septr[s]]] = pbus[self.spos[s]]
                    continue
                p_ext = pbus[self.spos[s]]
                for e in range(self.spptr[s], self.spptr[s + 1]):
                    p_ext = p_ext - pg[self.spidx[e]]
                tot = 0.0
                sw = 0.0
                for e in range(self.septr[s], self.septr[s + 1]):
                    tot = tot + pg[self.seidx[e]]
                    sw = sw + self.sew[e]
                ne = self.septr[s + 1] - self.septr[s]
                for e in range(self.septr[s], self.septr[s + 1]):
                    if sw > 0:
                        pg[self.seidx[e]] = pg[self.seidx[e]] + (p_ext - tot) * self.sew[e] / sw
                    else:
                        pg[self.seidx[e]] = p_ext / ne
            out = o + self.o_eg
            for j in range(self.neg):
                g = self.egsrc[j]
                out[j] = pg[g] if g >= 0 else 0.0
                out[self.neg + j] = qg[g] if g >= 0 else 0.0
            out = o + self.o_gen
            k = self.ngen
            for j in range(k):
                g = self.gsrc[j]
                out[j] = pg[g] if g >= 0 else 0.0
                out[k + j] = qg[g] if g >= 0 else 0.0
                b = self.gbus[j]
                out[2 * k + j] = m[b] if b >= 0 else 0.0
                out[3 * k + j] = p[2 * n + b] if b >= 0 else 0.0
        out = o + self.o_load
        for j in range(self.nload):
            out[j] = x[0][j] * self.lf[j]
            out[self.nload + j] = x[2][j] * self.lf[j]
        out = o + self.o_sgen
        for j in range(self.nsgen):
            out[j] = x[1][j] * self.sf[j]
            out[self.nsgen + j] = x[3][j] * self.sf[j]


def bus_power(indptr, indices, y_re, y_im, vpolar, rows, out_p, out_q):
    """``S = V conj(Ybus V)`` (per unit) at buses ``rows`` into ``out_p`` / ``out_q``.

    ``vpolar`` is what ``polar`` fills.
    """
    cdef const int[::1] ip = indptr
    cdef const int[::1] ix = indices
    cdef const double[::1] gr = y_re
    cdef const double[::1] gi = y_im
    cdef const double[:, ::1] p = vpolar
    cdef const long long[::1] r = rows
    cdef double[::1] op = out_p
    cdef double[::1] oq = out_q
    cdef Py_ssize_t k, j, b, c
    cdef double ir, ii, vr, vi, vbr, vbi
    if op.shape[0] != r.shape[0] or oq.shape[0] != r.shape[0]:
        raise ValueError(f"expected {r.shape[0]} outputs")
    if p.shape[0] != 3 or p.shape[1] != ip.shape[0] - 1:
        raise ValueError(f"expected (3, {ip.shape[0] - 1}) bus voltages")
    with nogil:
        for k in range(r.shape[0]):
            b = r[k]
            ir = ii = 0.0
            for j in range(ip[b], ip[b + 1]):
                c = ix[j]
                vr = p[0, c]
                vi = p[1, c]
                ir = ir + gr[j] * vr - gi[j] * vi
                ii = ii + gr[j] * vi + gi[j] * vr
            vbr = p[0, b]
            vbi = p[1, b]
            op[k] = vbr * ir + vbi * ii
            oq[k] = vbi * ir - vbr * ii


def gen_pq(indptr, indices, y_re, y_im, vpolar, rows, pd, qd, double base_mva, gpos, q_a, q_b,
           out_p, out_q):
    """Bus P and gen Q at the gen / ref buses ``rows`` from the solved V, as pypower's pfsoln.

    ``out_p[k] = P(rows[k]) * base_mva + pd[k]`` (the generation at that bus, MW);
    ``out_q[j] = q_a[j] * (Q(rows[gpos[j]]) * base_mva + qd[gpos[j]]) + q_b[j]`` (gen j's share).
    """
    cdef Py_ssize_t n = _len(indptr, "indptr") - 1
    cdef Py_ssize_t nnz = _len(indices, "indices")
    cdef Py_ssize_t nr = _len(rows, "rows"), ng = _len(gpos, "gpos")
    cdef const int* ip = <const int*>_arr(indptr, cnp.NPY_INT32, n + 1, -1, False, "indptr")
    cdef const int* ix = <const int*>_arr(indices, cnp.NPY_INT32, nnz, -1, False, "indices")
    cdef const double* gr = <const double*>_arr(y_re, cnp.NPY_DOUBLE, nnz, -1, False, "y_re")
    cdef const double* gi = <const double*>_arr(y_im, cnp.NPY_DOUBLE, nnz, -1, False, "y_im")
    cdef const double* p = <const double*>_arr(vpolar, cnp.NPY_DOUBLE, 3, n, False, "bus voltages")
    cdef const long long* r = <const long long*>_arr(rows, cnp.NPY_INT64, nr, -1, False, "rows")
    cdef const double* dp = <const double*>_arr(pd, cnp.NPY_DOUBLE, nr, -1, False, "pd")
    cdef const double* dq = <const double*>_arr(qd, cnp.NPY_DOUBLE, nr, -1, False, "qd")
    cdef const long long* gp = <const long long*>_arr(gpos, cnp.NPY_INT64, ng, -1, False, "gpos")
    cdef const double* qa = <const double*>_arr(q_a, cnp.NPY_DOUBLE, ng, -1, False, "q_a")
    cdef const double* qb = <const double*>_arr(q_b, cnp.NPY_DOUBLE, ng, -1, False, "q_b")
    cdef double* op = <double*>_arr(out_p, cnp.NPY_DOUBLE, nr, -1, True, "out_p")
    cdef double* oq = <double*>_arr(out_q, cnp.NPY_DOUBLE, ng, -1, True, "out_q")
    cdef Py_ssize_t k, j, b, c
    cdef double ir, ii, vr, vi, vbr, vbi
    for j in range(ng):
        if gp[j] < 0 or gp[j] >= nr:
            raise ValueError(f"gen {j}: bus row {gp[j]} outside 0..{nr - 1}")
    for k in range(nr):
        if r[k] < 0 or r[k] >= n:
            raise ValueError(f"row {k}: bus {r[k]} outside 0..{n - 1}")
    qbus_arr = np.empty(max(nr, 1))
    cdef double* qbus = <double*>cnp.PyArray_DATA(qbus_arr)
    with nogil:
        for k in range(nr):
            b = r[k]
            ir = ii = 0.0
            for j in range(ip[b], ip[b + 1]):
                c = ix[j]
                vr = p[c]
                vi = p[n + c]
                ir = ir + gr[j] * vr - gi[j] * vi
                ii = ii + gr[j] * vi + gi[j] * vr
            vbr = p[b]
            vbi = p[n + b]
            op[k] = (vbr * ir + vbi * ii) * base_mva + dp[k]
            qbus[k] = (vbi * ir - vbr * ii) * base_mva + dq[k]
        for j in range(ng):
            oq[j] = qa[j] * qbus[gp[j]] + qb[j]
    return None


def rows_add(indptr, idx, w, x, out):
    """``out[r] += sum(w[p] * x[idx[p]] for p in indptr[r]:indptr[r + 1])`` (a CSR product)."""
    cdef Py_ssize_t nr = _len(out, "out"), nnz = _len(idx, "idx"), nx = _len(x, "x")
    cdef const long long* ip = <const long long*>_arr(
        indptr, cnp.NPY_INT64, nr + 1, -1, False, "indptr"
    )
    cdef const long long* ix = <const long long*>_arr(idx, cnp.NPY_INT64, nnz, -1, False, "idx")
    cdef const double* wv = <const double*>_arr(w, cnp.NPY_DOUBLE, nnz, -1, False, "w")
    cdef const double* xv = <const double*>_arr(x, cnp.NPY_DOUBLE, nx, -1, False, "x")
    cdef double* o = <double*>_arr(out, cnp.NPY_DOUBLE, nr, -1, True, "out")
    cdef Py_ssize_t p
    if ip[0] != 0 or ip[nr] != nnz:
        raise ValueError(f"indptr: expected 0 .. {nnz}, found {ip[0]} .. {ip[nr]}")
    for p in range(nnz):
        if ix[p] < 0 or ix[p] >= nx:
            raise ValueError(f"idx[{p}] = {ix[p]} outside 0..{nx - 1}")
    with nogil:
        _csr_add(nr, ip, ix, wv, xv, o)
    return None
