"""scenarios/ is SimPy only: asyncio only in the bridge, asyncua and pymodbus nowhere.

ruff's banned-api rule (TID251, pyproject.toml) says the same at lint time; this test keeps it
true for runs of the suite without ruff. Private reaches into the field are refused as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BANNED = ("asyncio", "asyncua", "pymodbus")
PRIVATE = ("._by_name", ".sub.store", "__class__.__name__", "._not_writable")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


def test_scenarios_import_no_field_io_outside_the_bridge() -> None:
    found = {}
    for path in sorted((ROOT / "scenarios").rglob("*.py")):
        if path.name == "bridge.py" and path.parent.name == "scenarios":
            continue
        bad = _imports(path) & set(BANNED)
        if bad:
            found[str(path.relative_to(ROOT))] = sorted(bad)
    assert found == {}


def test_the_engine_uses_the_field_facade_only() -> None:
    text = (ROOT / "scenarios" / "engine.py").read_text()
    assert [p for p in PRIVATE if p in text] == []
