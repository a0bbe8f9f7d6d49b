"""grids.load caches parsed grids: a bundled JSON grid on disk between processes, a user grid in
memory while its file is unchanged. Every answer is still a fresh, independent net."""

from __future__ import annotations

import os
import pickle

import pandapower as pp
import pytest

import grids
from grids import registry as R

JSON_GRID = "urban_district"  # bundled as JSON: the disk cache applies


@pytest.fixture
def cold(monkeypatch):
    """No grid parsed in this process yet (the in-memory cache emptied for the test)."""
    monkeypatch.setattr(R, "_cache", {})
    monkeypatch.setattr(R, "_user_cache", {})


def _cache_files():
    d = R.grid_cache_dir()
    return sorted(d.glob("*.pickle")) if d.is_dir() else []


def _same(a, b):
    for t in ("bus", "line", "trafo", "load", "sgen", "switch"):
        assert a[t].equals(b[t]), t


def test_a_bundled_json_grid_is_kept_on_disk_and_read_back(cold, monkeypatch):
    first = grids.load(JSON_GRID)
    files = _cache_files()
    assert len(files) == 1 and files[0].name.startswith(JSON_GRID + "-")
    assert files[0].stat().st_mode & 0o077 == 0  # private to the user
    monkeypatch.setattr(R, "_cache", {})  # as a new process: only the disk cache is left
    monkeypatch.setattr(R, "_build_bundled", lambda spec: pytest.fail("parsed the JSON again"))
    second = grids.load(JSON_GRID)
    _same(first, second)
    second.bus.loc[second.bus.index[0], "vn_kv"] = 999.0  # fresh nets: no sharing
    assert grids.load(JSON_GRID).bus["vn_kv"].iloc[0] != 999.0


def test_a_broken_or_foreign_cache_file_is_rebuilt(cold, monkeypatch):
    reference = grids.load(JSON_GRID)
    (path,) = _cache_files()
    path.write_bytes(b"not a pickle")
    monkeypatch.setattr(R, "_cache", {})
    _same(grids.load(JSON_GRID), reference)
    assert pickle.loads(path.read_bytes()) is not None  # rewritten with a good pickle
    os.chmod(path, 0o666)  # writable by others: never unpickled
    monkeypatch.setattr(R, "_cache", {})
    calls = []
    real = R._build_bundled
    monkeypatch.setattr(R, "_build_bundled", lambda spec: calls.append(1) or real(spec))
    _same(grids.load(JSON_GRID), reference)
    assert calls == [1]


def test_cache_off_writes_nothing(cold, monkeypatch):
    monkeypatch.setenv("GRIDTWIN_CACHE", "off")
    grids.load(JSON_GRID)
    assert _cache_files() == []


def test_a_user_grid_is_read_again_only_when_its_file_changes(cold, monkeypatch):
    net = pp.create_empty_network()
    a, b = pp.create_bus(net, 20.0, name="A"), pp.create_bus(net, 20.0, name="B")
    pp.create_ext_grid(net, a)
    pp.create_line(net, a, b, 1.0, "NA2XS2Y 1x95 RM/25 12/20 kV")
    folder = R.user_grid_dir()
    folder.mkdir(parents=True)
    path = folder / "mine.json"
    pp.to_json(net, str(path))
    reads = []
    real = R.read_net_json
    monkeypatch.setattr(R, "read_net_json", lambda p: reads.append(p) or real(p))
    one, two = grids.load("mine"), grids.load("mine")
    assert len(reads) == 1
    _same(one, two)
    one.bus.loc[a, "name"] = "changed"
    assert grids.load("mine").bus.loc[a, "name"] == "A"  # independent nets
    pp.create_bus(net, 20.0, name="C")
    pp.to_json(net, str(path))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert len(grids.load("mine").bus) == 3
    assert len(reads) == 2


_PROBE = """
import sys
import grids
net = grids.load("urban_district")
light = "pandapower.plotting" not in sys.modules and "matplotlib" not in sys.modules
import pandapower
pandapower.runpp(net)  # the whole package on first use of what only its __init__ has
print(light, "pandapower.plotting" in sys.modules, round(float(net.res_bus.vm_pu.min()), 4))
"""


def test_a_cached_grid_loads_without_the_whole_of_pandapower(tmp_path):
    """A cached bundled grid needs pandapower's net class, not its plotting (matplotlib) and
    the rest of its package body; the first access of a package attribute still gives the
    whole package. Two processes: the first builds the disk cache, the second reads it."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "GRIDTWIN_HOME": str(tmp_path), "PYTHONPATH": str(root)}
    env.pop("GRIDTWIN_CACHE", None)
    outs = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                              text=True, timeout=120, check=True)  # fmt: skip
        outs.append(done.stdout.split())
    assert outs[0][1:] == outs[1][1:] and outs[1][1] == "True"  # full package after runpp
    assert outs[1][0] == "True", outs  # the cached load imported no plotting
    env["GRIDTWIN_LIGHT_IMPORT"] = "off"
    off = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                         env=env, timeout=120, check=True)  # fmt: skip
    assert off.stdout.split()[0] == "False"  # the switch restores the plain import
