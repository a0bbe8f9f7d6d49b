"""The run report: written by ``gridtwin run``, rebuilt by ``gridtwin report`` from the folder
alone, every section with the run's own numbers, self-contained, never changing the exit code."""

from __future__ import annotations

import base64
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scenarios import report
from scenarios.cli import main

LIB = Path(__file__).resolve().parents[2] / "scenarios" / "library"
SECTIONS = ("run", "voltage", "heatmap", "loading", "switching", "alarms", "diagram", "timing",
            "timeline")  # fmt: skip


def _scenario_file(tmp: Path) -> Path:
    """mirror_biased_meter (an alarm, sync-loop phases) recording switches and taps too."""
    text = (LIB / "mirror_biased_meter.toml").read_text(encoding="utf-8")
    old = 'quantities = ["bus.vm_pu", "line.loading_percent"]'
    assert old in text
    text = text.replace(old, 'quantities = ["bus.vm_pu", "line.loading_percent", '
                        '"trafo.loading_percent", "trafo.tap_pos", "switch.closed"]')  # fmt: skip
    f = tmp / "mirror_biased_meter.toml"
    f.write_text(text, encoding="utf-8")
    return f


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("report")
    out = tmp / "run"
    assert main(["run", str(_scenario_file(tmp)), "--out", str(out), "--quiet"]) == 0
    return out


def _section(text: str, sid: str) -> str:
    m = re.search(rf'<(section|aside) id="{sid}"(.*?)</\1>', text, re.S)
    assert m, f"no section {sid}"
    return m.group(0)


def _images(text: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', text)]


def test_run_writes_a_report_with_every_section_and_the_runs_numbers(run_dir: Path) -> None:
    text = (run_dir / "report.html").read_text(encoding="utf-8")
    for sid in SECTIONS:
        _section(text, sid)
    ts = pd.read_parquet(run_dir / "timeseries.parquet")
    vm = ts[[c for c in ts.columns if c.startswith("bus.vm_pu[")]].to_numpy(float)
    lo = report._fmt(np.nanmin(vm), 5)
    assert f"<td>lowest</td><td>{lo}</td>" in _section(text, "voltage")
    run = _section(text, "run")
    for needle in ("mirror_biased_meter", "urban_district", "<td>mirror</td>", "<td>4</td>",
                   "pandapower 3.5.6", "alarm_names_the_biased_meter", "PASS"):  # fmt: skip
        assert needle in run, needle
    alarms = _section(text, "alarms")
    assert "N3.vm_pu" in alarms and "1 alarms recorded" in alarms
    assert "0.05" in alarms  # the bias the meter drifts by, as |field - twin|
    ld = ts[[c for c in ts.columns if c.startswith("line.loading_percent[")]]
    top = ld.max().idxmax()[len("line.loading_percent[") : -1]
    assert f"<td>line {top}</td>" in _section(text, "loading")
    sw = _section(text, "switching")
    assert "34 switches recorded, 1 open at the start" in sw and "<td>T1</td>" in sw
    assert "geodata (WGS84 lon/lat)" in _section(text, "diagram")
    timing = _section(text, "timing")
    assert "<td>estimate</td>" in timing and "21 steps" in timing
    assert "meas_bias" in _section(text, "timeline")
    for sid in ("voltage", "heatmap", "loading", "switching", "alarms", "diagram", "timing"):
        imgs = _images(_section(text, sid))
        assert imgs and all(i.startswith(b"\x89PNG\r\n\x1a\n") for i in imgs), sid
    # Self-contained: nothing fetched from anywhere.
    assert not re.search(r"(src|href)=\"(https?:)?//", text)
    assert "<script" not in text and "url(" not in text
    assert len(text) < 3_000_000


def test_report_rebuilds_from_the_results_folder_alone(run_dir: Path, tmp_path: Path) -> None:
    d = tmp_path / "copy"
    shutil.copytree(run_dir, d)
    (d / "report.html").unlink()
    # As after a hard kill: only the flushed Parquet parts, no timeseries.parquet.
    parts = d / "timeseries.parts"
    parts.mkdir()
    ts = pd.read_parquet(d / "timeseries.parquet")
    ts.iloc[:10].to_parquet(parts / "part-00000.parquet")
    ts.iloc[10:].to_parquet(parts / "part-00001.parquet")
    (d / "timeseries.parquet").unlink()
    assert main(["report", str(d)]) == 0
    text = (d / "report.html").read_text(encoding="utf-8")
    for sid in SECTIONS:
        _section(text, sid)
    original = (run_dir / "report.html").read_text(encoding="utf-8")
    assert (
        _section(text, "voltage").split("<img")[0] == _section(original, "voltage").split("<img")[0]
    )


def test_report_of_a_missing_or_wrong_folder_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "expected a results folder, found no folder" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "summary.json" in err and "Traceback" not in err


def test_a_failing_report_never_changes_the_exit_code(tmp_path: Path, monkeypatch, capsys) -> None:
    def broken(run_dir):
        raise RuntimeError("plotting exploded")

    monkeypatch.setattr(report, "build_report", broken)
    out = tmp_path / "storm"
    f = LIB / "storm_restoration.toml"
    assert main(["run", str(f), "--hardware", "none", "--out", str(out), "--quiet"]) == 0
    assert "report not written: RuntimeError: plotting exploded" in capsys.readouterr().err
    assert not (out / "report.html").exists()


def test_generated_layout_where_the_grid_has_no_geodata() -> None:
    import grids

    net = grids.load("urban_district")
    xy, how = report._bus_xy(net)
    assert how.startswith("geodata") and 108.1 < xy["x"].mean() < 108.3  # Da Nang
    assert 15.9 < xy["y"].mean() < 16.2
    net.bus["geo"] = None
    xy, how = report._bus_xy(net)
    assert how.startswith("generated layout")
    assert xy.notna().all(axis=None) and xy["x"].nunique() > 10
    # Without igraph or Graphviz: networkx's own layout, the same on every call.
    a, b = report._spring_xy(net), report._spring_xy(net)
    assert a.notna().all(axis=None) and a.equals(b)


def _chromium() -> str:
    import os

    exe = shutil.which("chromium")
    if exe is None:
        if os.environ.get("GRIDTWIN_REQUIRE_KERNEL", "") not in ("", "0"):  # set by .ci/run
            pytest.fail("chromium missing, but .ci/run installs it (apt-get install -y chromium)")
        pytest.skip("chromium not installed here (.ci/run installs it: apt-get install chromium)")
    return exe


def _render(exe: str, page: Path, shot: Path) -> list[str]:
    """Open ``page`` in headless Chromium, screenshot it; return its console messages."""
    import subprocess

    proc = subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
         "--window-size=1400,4200", f"--screenshot={shot}", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert shot.is_file(), proc.stderr[-2000:]
    return [ln for ln in proc.stderr.splitlines() if ":CONSOLE" in ln]


def test_report_opens_in_headless_chromium_without_console_errors(run_dir, tmp_path) -> None:
    exe = _chromium()
    # The detector itself: a page that logs an error is caught.
    bad = tmp_path / "bad.html"
    bad.write_text('<html><body><script>console.error("boom")</script></body></html>')
    assert any('"boom"' in m for m in _render(exe, bad, tmp_path / "bad.png"))

    page = run_dir / "report.html"
    shot = tmp_path / "report.png"
    assert _render(exe, page, shot) == []
    # Every embedded plot decodes in the browser: a copy with a checking script says so.
    text = page.read_text(encoding="utf-8")
    n = text.count("<img ")
    probe = tmp_path / "probe.html"
    probe.write_text(text.replace("</body>", """<script>
window.addEventListener("load", () => {
  const bad = [...document.images].filter(i => !(i.complete && i.naturalWidth > 0));
  console.log("IMAGES " + document.images.length + " BROKEN " + bad.length);
});</script></body>"""), encoding="utf-8")  # fmt: skip
    msgs = _render(exe, probe, tmp_path / "probe.png")
    assert any(f'"IMAGES {n} BROKEN 0"' in m for m in msgs), msgs
    # The screenshot shows the plots: far from blank, many colours (heatmap, diagram).
    from PIL import Image

    im = Image.open(shot).convert("RGB")
    px = np.asarray(im, dtype=np.int16)
    ink = np.mean(np.any(np.abs(px - 250) > 30, axis=2))
    colours = len(set(map(tuple, px[::4, ::4].reshape(-1, 3).tolist())))
    assert ink > 0.05 and colours > 200, (ink, colours)
    shutil.copy(shot, run_dir / "report-screenshot.png")
