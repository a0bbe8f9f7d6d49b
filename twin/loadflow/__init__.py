"""Load-flow kernels: the compiled Cython kernel and the NumPy/SciPy reference, one signature.

Both modules expose ``analyse(indptr, indices, kind, order=None) -> plan`` and
``newton(plan, indptr, indices, y_re, y_im, kind, p_spec, q_spec, vset, vm, va, tol, max_iter)
-> (iterations, max_mismatch)`` raising :class:`twin.errors.LoadflowNotConverged`, plus
``Stepper(plan, indptr, indices, y_re, y_im, kind, vset, base_p, base_q, groups, inv_base)``: one
compiled system bound once, whose ``run(vm, va, kind=None, qfix=None, tol, max_iter)`` assembles
the bus injections from the element input arrays (read in place) and runs ``newton`` in one call
(``set_y(y_re, y_im)`` swaps the Ybus values after a topology patch), ``batch(...)`` (many cases
on one plan without the GIL: see ``_newton.batch``),
``copy_if_finite(src, dst) -> bool`` (the update fast path's all-or-nothing finite copy), and
the result functions ``polar(vm, va, out)`` (per-bus V and wrapped angle),
``branch_results(vm, vpolar, n, base_mva, fb, tb, stamps, scale, out)`` (a line / trafo table's
flows, currents, loading and end voltages), ``bus_power(indptr, indices, y_re, y_im, vpolar,
rows, out_p, out_q)`` (S = V conj(Ybus V) at some buses), and ``Results(n, base_mva, indptr,
indices, y_re, y_im, line, trafo, gen, load, sgen, n_load, n_sgen)`` whose ``compute(vm, va,
gen_pg, load_p, sgen_p, load_q, sgen_q, out=None)`` fills every native result table into one
buffer in one call (sections in ``Results.offsets``), read with ``take(buffer, (start, stop))``.
The backend is chosen per call (``"auto" | "cython" | "numpy"``); the environment variable
``GRIDTWIN_BACKEND`` overrides the choice.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from types import ModuleType
from typing import Any

from twin.errors import LoadflowError
from twin.loadflow import _reference

_log = logging.getLogger(__name__)

BACKENDS = ("auto", "cython", "numpy")

try:
    from twin.loadflow import _newton as _cy  # type: ignore[attr-defined]

    _CY_REASON = ""
except ImportError as exc:  # no compiled kernel: the reference is used
    _cy = None
    if importlib.util.find_spec("twin.loadflow._newton") is None:
        # Python's own message here is "partially initialized module ... circular import"
        _CY_REASON = (
            f"no compiled kernel file (_newton*.so) in {os.path.dirname(__file__)}: this source "
            "tree was never built; 'pip install .' and run outside it, or build it in place "
            "with 'python setup.py build_ext --inplace'"
        )
    else:
        _CY_REASON = f"compiled kernel twin.loadflow._newton not importable: {exc}"


class BackendUnavailable(LoadflowError):
    """The Cython backend was requested but the compiled kernel is not available."""


def _env_backend() -> str | None:
    value = os.environ.get("GRIDTWIN_BACKEND", "").strip().lower()
    if not value:
        return None
    if value not in BACKENDS:
        raise LoadflowError(
            f"GRIDTWIN_BACKEND: expected one of {', '.join(BACKENDS)}, found {value!r}"
        )
    return value


def resolve_backend(backend: str = "auto") -> str:
    """Name of the backend actually used for a request ("cython" or "numpy").

    Raises:
        LoadflowError: unknown backend name.
        BackendUnavailable: "cython" requested (or forced) without a compiled kernel.
    """
    if backend not in BACKENDS:
        raise LoadflowError(f"backend: expected one of {', '.join(BACKENDS)}, found {backend!r}")
    forced = _env_backend()
    if forced is not None and forced != "auto":
        backend = forced
    if backend == "auto":
        return "cython" if _cy is not None else "numpy"
    if backend == "cython" and _cy is None:
        raise BackendUnavailable(
            f"backend 'cython' requested but unavailable ({_CY_REASON}); build it with "
            "'python setup.py build_ext --inplace' or use backend='numpy'"
        )
    return backend


def kernel(name: str) -> ModuleType:
    """The kernel module for a resolved backend name."""
    if name == "cython":
        if _cy is None:
            raise BackendUnavailable(f"backend 'cython' unavailable: {_CY_REASON}")
        return _cy
    if name == "numpy":
        return _reference
    raise LoadflowError(f"kernel: expected 'cython' or 'numpy', found {name!r}")


def build_info() -> dict[str, Any]:
    """How the load flow was built: kernel availability, default backend, module path."""
    return {
        "cython_available": _cy is not None,
        "default_backend": "cython" if _cy is not None else "numpy",
        "reason": _CY_REASON,
        "kernel_module": getattr(_cy, "__file__", None) if _cy is not None else None,
        "env_backend": os.environ.get("GRIDTWIN_BACKEND") or None,
    }


__all__ = ["BACKENDS", "BackendUnavailable", "build_info", "kernel", "resolve_backend"]
