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
    root = ET.Element(
        "testsuites",
        tests=suite.get("tests", "0"),
        failures=str(failures),
        errors=suite.get("errors", "0"),
    )
    root.append(suite)
    ET.indent(root)
    return ET.ElementTree(root)


def write_junit(path: Path, res: RunResult) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    junit_tree(res).write(path, encoding="utf-8", xml_declaration=True)
