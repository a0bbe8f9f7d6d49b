"""`gridtwin report SWEEP_DIR`: the sweep report from a real small sweep on a LocalCluster."""

from __future__ import annotations

import base64
import re

import pytest

distributed = pytest.importorskip("distributed")

from scenarios.sweep import load_sweep, make_client, run_sweep  # noqa: E402
from scenarios.sweep_report import build_sweep_report, is_sweep_folder  # noqa: E402
from twin.errors import ConfigError  # noqa: E402

STUDY = """
name = "mv_study"
grid = "cigre_mv"
hardware = "none"
start = "17:00"
duration = "3min"
step = "1min"
seed = 5
[[profile]]
name = "homes"
table = "load"
match = "*"
shape = "residential"
[[check]]
kind = "converged"
[[check]]
name = "band"
kind = "voltage_band"
min_pu = 0.95
max_pu = 1.05
[sweep]
n-1 = ["Line 1-2", "Line 3-4"]
[sweep.grid]
load_scale = [1.0, 1.6]
"""

STEADY = """
name = "n1"
grid = "ieee14"
hardware = "none"
duration = "1min"
step = "1min"
[[check]]
kind = "converged"
[[check]]
name = "band"
kind = "voltage_band"
min_pu = 0.95
max_pu = 1.1
[sweep]
run = "steady"
n-1 = "all"
seeds = 2
"""


@pytest.fixture(scope="module")
def client():
    c = make_client(workers=2)
    try:
        yield c
    finally:
        cluster = c.cluster
        c.close()
        cluster.close()


def _section(text: str, sid: str) -> str:
    m = re.search(rf'<section id="{sid}">(.*?)</section>', text, re.S)
    assert m, f"no section {sid}"
    return m.group(1)


def _pngs(text: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', text)]


def test_cli_sweep_writes_the_report_and_report_rebuilds_it(tmp_path, client, capsys):
    from scenarios.cli import main

    p = tmp_path / "study.toml"
    p.write_text(STUDY, encoding="utf-8")
    out = tmp_path / "out"
    code = main(["sweep", str(p), "--scheduler", client.scheduler.address, "--out", str(out),
                 "--keep-runs", "--no-progress"])  # fmt: skip
    said = capsys.readouterr().out
    assert code == 1, said  # load_scale 1.6 leaves the band
    report = out / "report.html"
    assert report.is_file() and f"report: {report}" in said.replace("\n", "")
    text = report.read_text(encoding="utf-8")
    # self-contained: no script, nothing fetched from anywhere
    assert "<script" not in text.lower()
    assert not re.search(r"(src|href)=\"(https?:)?//", text)
    assert not re.search(r"(src|href)=\"(?!data:|#)[a-z]+:", text)
    pngs = _pngs(text)
    assert len(pngs) >= 3 and all(b.startswith(b"\x89PNG") for b in pngs)
    # the ranking: the failed heavy-load cases first, each with its worst voltage
    import pandas as pd

    table = pd.read_parquet(out / "results.parquet")
    ranking = _section(text, "ranking")
    rows = re.findall(r"<tr><td>(\d+)</td><td>(c\d{6})</td>", ranking)
    assert [int(r[0]) for r in rows] == list(range(1, len(table) + 1))
    failed = set(table.loc[~table["passed"], "case"])
    assert failed and {c for _, c in rows[: len(failed)]} == failed
    worst = table.loc[table["worst_vm_pu"].idxmin()]
    assert f"{worst['worst_vm_pu']:.4g} {worst['worst_vm_bus']}" in ranking
    # pass / fail counts per check, failed cases, relative links to the kept run folders
    checks = _section(text, "checks")
    n_band_fail = int((~table["check.band"].astype(bool)).sum())
    assert re.search(rf"<td>band</td><td>{len(table) - n_band_fail}</td><td>{n_band_fail}</td>",
                     checks)  # fmt: skip
    assert f"Failed cases ({len(failed)})" in text
    links = re.findall(r'href="(runs/c\d{6}/)"', text)
    assert set(links) == {f"runs/{c}/" for c in table["case"]}
    assert all((out / link).is_dir() for link in links)
    # `gridtwin report OUT` rebuilds the same page from the folder alone
    report.unlink()
    assert main(["report", str(out)]) == 0
    assert "report:" in capsys.readouterr().out
    again = report.read_text(encoding="utf-8")
    assert _section(again, "ranking") == ranking
    # written elsewhere with --out: the links still reach the run folders from there
    elsewhere = tmp_path / "elsewhere.html"
    assert main(["report", str(out), "--out", str(elsewhere)]) == 0
    moved = re.findall(r'href="(out/runs/c\d{6}/)"', elsewhere.read_text(encoding="utf-8"))
    assert len(set(moved)) == len(table) and all((tmp_path / m).is_dir() for m in moved)


def test_steady_report_spread(tmp_path, client):
    p = tmp_path / "n1.toml"
    p.write_text(STEADY, encoding="utf-8")
    sc, spec = load_sweep(p)
    out = tmp_path / "out"
    res = run_sweep(sc, spec, out, client=client)
    assert is_sweep_folder(out) and not is_sweep_folder(tmp_path)
    text = build_sweep_report(out)
    spread = _section(text, "spread")
    vm = res.table["worst_vm_pu"].dropna()
    assert f"<td>{len(vm)}</td><td>{vm.min():.4g}</td>" in spread
    assert len(_pngs(spread)) >= 2  # histograms and box plots
    assert "no result (error)" in _section(text, "checks")


def test_report_of_an_unfinished_sweep_and_of_no_sweep(tmp_path, client, capsys):
    from scenarios.cli import main

    p = tmp_path / "n1.toml"
    p.write_text(STEADY.replace("seeds = 2", "chunk = 5"), encoding="utf-8")
    sc, spec = load_sweep(p)
    out = tmp_path / "out"
    run_sweep(sc, spec, out, client=client)
    (out / "results.parquet").unlink()  # as if the sweep had stopped before gathering
    (out / "summary.json").unlink()
    text = build_sweep_report(out)
    assert "has not gathered its results" in text
    assert re.findall(r"<tr><td>1</td><td>(c\d{6})</td>", _section(text, "ranking"))
    for f in (out / "chunks").glob("*.parquet"):
        f.unlink()
    with pytest.raises(ConfigError, match="no case has finished yet"):
        build_sweep_report(out)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty)]) == 2
    assert "results folder" in capsys.readouterr().err
