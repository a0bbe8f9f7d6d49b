"""Every domain error crosses a process boundary intact (a sweep case raising on a Dask worker)."""

from __future__ import annotations

import inspect
import pickle

import pytest

import hil.errors
import twin.errors
from twin.errors import ConfigError, LoadflowNotConverged, TwinError


def _all_errors() -> list[type[TwinError]]:
    out = []
    for mod in (twin.errors, hil.errors):
        for _, obj in inspect.getmembers(mod, inspect.isclass):
            if issubclass(obj, TwinError) and obj.__module__ == mod.__name__:
                out.append(obj)
    return out


def test_config_error_keeps_message_and_attributes() -> None:
    e = ConfigError("s.toml", "pace", "expected fast or realtime, found 'x'", 7)
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is ConfigError and str(back) == str(e)
    assert (back.path, back.key, back.line) == ("s.toml", "pace", 7)


def test_not_converged_keeps_worst_bus() -> None:
    e = LoadflowNotConverged(12, 13, 4.1e59)
    back = pickle.loads(pickle.dumps(e))
    assert str(back) == str(e) and back.worst_bus == 13 and back.iterations == 12


@pytest.mark.parametrize("cls", _all_errors(), ids=lambda c: c.__name__)
def test_every_error_class_round_trips(cls: type[TwinError]) -> None:
    sig = inspect.signature(cls.__init__)
    params = [p for p in list(sig.parameters.values())[1:] if p.default is p.empty]
    samples = {int: 3, float: 2.5, str: "x"}
    args: list[object] = []
    for p in params:
        ann = str(p.annotation)
        if "list" in ann:
            args.append(["a", "b"])
        elif "float" in ann:
            args.append(samples[float])
        elif "int" in ann:
            args.append(samples[int])
        else:
            args.append("x")
    e = cls(*args)
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is cls and str(back) == str(e) and back.__dict__ == e.__dict__
