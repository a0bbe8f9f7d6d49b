"""Docs that are true: every ``gridtwin`` command in README.md (the Quick start and the bash
blocks) and in the docs/ blocks marked ``<!-- doctest: cli -->`` is a valid command line, every
input file it names exists, and every scenario it runs or validates validates.

The commands are not run (the Quick start's run plays a simulated day); the parser, the files
and ``validate`` are what a reader trips over. Placeholders (``FILE``, ``my.toml``, ``<time>``)
are accepted where a file of the user's is meant: a bare name without a folder that is not a
bundled scenario.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from scenarios.cli import build_parser
from scenarios.cli.scenarios_cmd import find_bundled
from scenarios.validate import validate_file

ROOT = Path(__file__).resolve().parents[2]
_FENCE = re.compile(r"^```(\w*)\s*$")
#: options whose value is written, not read
_OUTPUTS = {"--out", "--junit", "-o"}
#: commands whose positional arguments name files to read
_READS = {"run", "validate", "solve", "report", "compare", "show", "import", "check"}


def _blocks(path: Path, *, marked_only: bool) -> list[tuple[int, str]]:
    """(line number, text) of each shell line in the fenced blocks of ``path``."""
    out: list[tuple[int, str]] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    inside, take, prev = False, False, ""
    for no, line in enumerate(lines, start=1):
        m = _FENCE.match(line)
        if m and not inside:
            inside = True
            lang = m.group(1)
            take = (
                prev.strip() == "<!-- doctest: cli -->"
                if marked_only
                else lang in ("bash", "sh", "")
            )
        elif line.startswith("```") and inside:
            inside = False
        elif inside and take:
            out.append((no, line))
        if line.strip():
            prev = line
    return out


def _commands(path: Path, *, marked_only: bool) -> list[tuple[str, int, list[str]]]:
    cmds = []
    for no, line in _blocks(path, marked_only=marked_only):
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        seg: list[str] = []
        for w in [*words, "&&"]:
            if w in ("&&", "||", ";", "|"):
                if seg and seg[0] == "gridtwin":
                    cmds.append((f"{path.name}:{no}", no, seg[1:]))
                seg = []
            else:
                seg.append(w)
    return cmds


def _all_commands() -> list[tuple[str, int, list[str]]]:
    cmds = _commands(ROOT / "README.md", marked_only=False)
    for doc in sorted((ROOT / "docs").glob("*.md")):
        cmds += _commands(doc, marked_only=True)
    return cmds


COMMANDS = _all_commands()


def _is_placeholder(word: str) -> bool:
    return "<" in word or "://" in word or word.isupper() or "/" not in word


def _problems(argv: list[str]) -> list[str]:
    problems: list[str] = []
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        if exc.code not in (0, None):
            return [f"not a valid command line (exit {exc.code})"]
    positional = [w for w in argv if not w.startswith("-")]
    command = next((w for w in positional if w in _READS), None)
    after = argv[argv.index(command) + 1 :] if command else []
    skip = False
    for i, w in enumerate(after):
        if skip:
            skip = False
            continue
        if w in _OUTPUTS:
            skip = True
            continue
        if w.startswith("-") or (i > 0 and after[i - 1] in _OUTPUTS):
            continue
        if (
            i > 0
            and after[i - 1].startswith("--")
            and after[i - 1]
            not in (
                "--hardware",
                "--baseline",
            )
        ):
            continue  # an option's value (a number, a name)
        bundled = find_bundled(w) if "/" not in w else None
        path = ROOT / w
        if command in ("run", "validate") and (bundled is not None or path.is_file()):
            if after[i - 1 : i] == ["--hardware"]:
                continue
            _, found = validate_file(bundled or path)
            problems += [f"{w}: {p}" for p in found]
        elif not _is_placeholder(w) and not path.exists():
            problems.append(f"{w}: no such file or folder (from the repository root)")
    return problems


def test_the_docs_have_commands_to_check() -> None:
    names = {where.split(":")[0] for where, _, _ in COMMANDS}
    assert {"README.md", "cli.md", "scenarios.md"} <= names, names
    assert any(argv[:1] == ["run"] for _, _, argv in COMMANDS)


@pytest.mark.parametrize(
    "argv", [c[2] for c in COMMANDS], ids=[f"{c[0]} {' '.join(c[2])[:40]}" for c in COMMANDS]
)
def test_a_documented_command_is_valid(argv: list[str]) -> None:
    problems = _problems(argv)
    assert not problems, "gridtwin " + " ".join(argv) + ":\n  " + "\n  ".join(problems)


def test_the_checker_finds_wrong_commands() -> None:
    assert _problems(["run", "scenarios/library/nope.toml"])  # a path that is not there
    assert _problems(["run", "city_day.toml", "--hardware", "bench/hardware.toml"])
    assert _problems(["run", "city_day", "--sped", "2"])  # not an option
    bad = _problems(["validate", "tests/data/broken/record_typo/scenario.toml"])
    assert any("did you mean vm_pu" in p for p in bad), bad
    assert not _problems(["run", "FILE", "--out", "results/x", "--junit", "ci/x.xml"])
