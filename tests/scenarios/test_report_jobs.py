"""With ``GRIDTWIN_REPORT_JOBS=2`` the report is drawn by two processes (a forked child draws
some sections on the second core): the same page as drawn by one; a child that dies or fails
costs time, never a section."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from scenarios import report
from scenarios.cli import main

LIB = Path(__file__).resolve().parents[2] / "scenarios" / "library"

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork here")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report_jobs") / "run"
    f = LIB / "storm_restoration.toml"
    assert main(["run", str(f), "--hardware", "none", "--out", str(out), "--quiet",
                 "--no-report"]) == 0  # fmt: skip
    return out


def test_two_processes_draw_the_same_page_as_one(run_dir: Path, monkeypatch) -> None:
    monkeypatch.delenv("GRIDTWIN_REPORT_JOBS", raising=False)
    assert report.report_jobs() == 1  # the default
    monkeypatch.setenv("GRIDTWIN_REPORT_JOBS", "1")
    assert report.report_jobs() == 1
    one = report.build_report(run_dir)
    monkeypatch.setenv("GRIDTWIN_REPORT_JOBS", "2")
    assert report.report_jobs() == 2
    two = report.build_report(run_dir)
    assert two == one
    for name in report._CHILD_SECTIONS:  # the child's sections are there, drawn
        sid = {"_section_loading": "loading", "_section_diagram": "diagram",
               "_section_timing": "timing"}[name]  # fmt: skip
        assert f'<section id="{sid}">' in two, sid
    monkeypatch.setenv("GRIDTWIN_REPORT_JOBS", "many")
    assert report.report_jobs() == 1


@pytest.mark.parametrize("how", ["dies", "raises"])
def test_a_failing_child_costs_time_not_sections(run_dir, monkeypatch, caplog, how) -> None:
    monkeypatch.setenv("GRIDTWIN_REPORT_JOBS", "1")
    one = report.build_report(run_dir)
    monkeypatch.setenv("GRIDTWIN_REPORT_JOBS", "2")
    parent = os.getpid()
    real = report._one_section

    def failing(fn, rd, clk):
        if os.getpid() != parent:  # in the child only
            if how == "dies":
                os._exit(3)
            raise MemoryError("the child ran out of memory")
        return real(fn, rd, clk)

    monkeypatch.setattr(report, "_one_section", failing)
    assert report.build_report(run_dir) == one
    assert "drawing its sections here" in caplog.text
