"""The results folder's summary.json and junit.xml (one test case per check) for CI."""

from __future__ import annotations

import json
import math
import platform
import xml.etree.ElementTree as ET
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scenarios.engine import RunResult

_PACKAGES = ("gridtwin", "pandapower", "simpy", "asyncua", "pymodbus", "numpy", "scipy", "pyarrow")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _clean(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if hasattr(x, "item") and not isinstance(x, str):
        try:
            return _clean(x.item())
        except (TypeError, ValueError):
            return str(x)
    return x


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_clean(summary), indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


def junit_tree(res: RunResult) -> ET.ElementTree:
    """A JUnit XML tree: one ``testsuite`` per scenario, one ``testcase`` per check."""
    return junit_tree_many([res])


def _suite(res: RunResult) -> ET.Element:
    sc = res.scenario
    failures = sum(not c.passed for c in res.checks)
    suite = ET.Element(
        "testsuite",
        name=f"gridtwin.{sc.name}",
        tests=str(len(res.checks) + (1 if res.error else 0)),
        failures=str(failures),
        errors="1" if res.error else "0",
        time=f"{res.wall_s:.3f}",
    )
    props = ET.SubElement(suite, "properties")
    for k in ("grid", "mode", "pace", "seed", "hardware"):
        ET.SubElement(props, "property", name=k, value=str(res.summary.get(k, "")))
    for c in res.checks:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"gridtwin.{sc.name}",
            name=f"{c.name} ({c.kind})",
            time="0",
        )
        if not c.passed:
            f = ET.SubElement(case, "failure", message=c.message, type=c.kind)
            f.text = c.message
        else:
            out = ET.SubElement(case, "system-out")
            out.text = c.message
    if res.error:
        case = ET.SubElement(
            suite, "testcase", classname=f"gridtwin.{sc.name}", name="run", time=f"{res.wall_s:.3f}"
        )
        e = ET.SubElement(case, "error", message=res.error, type="RunError")
        e.text = res.error
    return suite


def junit_tree_many(results: list[RunResult]) -> ET.ElementTree:
    """One ``testsuites`` root with a ``testsuite`` per run (``gridtwin run A.toml B.toml``)."""
    suites = [_suite(r) for r in results]
    root = ET.Element(
        "testsuites",
        tests=str(sum(int(s.get("tests", "0")) for s in suites)),
        failures=str(sum(int(s.get("failures", "0")) for s in suites)),
        errors=str(sum(int(s.get("errors", "0")) for s in suites)),
    )
    root.extend(suites)
    ET.indent(root)
    return ET.ElementTree(root)


def write_junit(path: Path, res: RunResult) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    junit_tree(res).write(path, encoding="utf-8", xml_declaration=True)


def write_junit_many(path: Path, results: list[RunResult]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    junit_tree_many(results).write(path, encoding="utf-8", xml_declaration=True)


#: The files a run writes into its folder (what ``--force`` replaces; nothing else is removed).
RESULT_FILES = (
    "summary.json",
    "junit.xml",
    "timeseries.parquet",
    "events.csv",
    "alarms.csv",
    "timing.csv",
    "report.html",
    "audit.jsonl",  # appended to while the run goes: an old run's records must not stay
)
PARTS_DIR = "timeseries.parts"


def is_results_folder(path: Path) -> bool:
    return any((path / f).exists() for f in ("summary.json", "events.csv", PARTS_DIR))


def prepare_out_dir(path: Path, *, force: bool = False) -> Path:
    """Check and create a run's results folder before the run starts.

    An existing results folder is refused unless ``force`` (then its result files are removed,
    so that no part of the old run stays beside the new one); so is a folder that is not empty.

    Raises:
        ConfigError: ``path`` is a file, an existing results folder without ``force``, or a
            folder holding other files (bad usage: exit 2).
        OSError: the folder cannot be created or written (the run could not complete: exit 3),
            with the folder and the reason.
    """
    import errno
    import os
    import shutil

    from twin.errors import ConfigError

    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(str(p), "--out", "expected a results folder, found a file")
    if p.is_dir() and any(p.iterdir()):
        if not is_results_folder(p):
            raise ConfigError(
                str(p),
                "--out",
                "expected a new or empty folder, found a folder with other files in it "
                "(choose another --out)",
            )
        if not force:
            raise ConfigError(
                str(p),
                "--out",
                "expected a new folder, found the results of an earlier run "
                "(add --force to replace them, or choose another --out)",
            )
        for name in RESULT_FILES:
            (p / name).unlink(missing_ok=True)
        shutil.rmtree(p / PARTS_DIR, ignore_errors=True)
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / ".gridtwin-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        code = exc.errno or errno.EIO
        raise OSError(
            code,
            f"cannot write the results folder (--out): {os.strerror(code)}",
            str(p),
        ) from None
    return p
