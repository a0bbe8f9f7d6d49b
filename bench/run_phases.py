"""Where the wall time of ``gridtwin run SCENARIO`` goes, outside and inside the step loop
(issue 15): one table of phases per source tree, medians of repeated runs in fresh processes.

    python bench/run_phases.py [--scenario city_day] [--runs 3] [--tree main=/work/main]
                               [--tree this=.] [-- EXTRA RUN OPTIONS, e.g. --no-report]

Each run is ``python -c PROBE run SCENARIO --quiet --out TMP --force EXTRA`` with ``PYTHONPATH``
set to the tree, the trees' runs interleaved (A B A B ...) so that a change of the machine's load
hits every tree alike. The probe wraps ``scenarios.engine.run_scenario``'s ``progress`` callback
(called after every step) to stamp the wall clock; the phases are:

- ``start-up``: process launch to the end of the first step (interpreter, imports, parsing,
  the grid, the model, the field's start), of which ``to run_scenario`` is launch to the call of
  ``run_scenario`` (interpreter, imports, parsing);
- ``steps``: the end of the first step to the end of the last (every step but the first);
- ``finish``: the last step to ``run_scenario``'s return (recorder close, summary, junit);
- ``report``: the return to the end of ``main`` (the checks table, report.html), as the
  ``gridtwin`` program runs it (``main()`` without arguments: the atexit handlers stamp it);
- ``exit``: from the atexit handlers to the process's end (the interpreter's shut-down);
- ``wall``: launch to exit, as a user waits for it;
- ``cpu ...``: the process's CPU time (all its threads) in the same phases (start-up from the
  process's start, report to the return of ``main``): steadier than wall time on a busy machine.

The machine is shared: the header prints the load average; read the ratios between the trees.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_line  # noqa: E402

_PROBE = r"""
import json, sys, time
stamps = {}
def stamp(key):
    stamps[key] = (time.time(), time.process_time())
import scenarios.engine as _eng
_orig = _eng.run_scenario
def _wrapped(*a, **kw):
    stamp("run_scenario")
    inner = kw.get("progress")
    def progress(done, total, t):
        if "first_step" not in stamps:
            stamp("first_step")
        stamp("last_step")
        if inner is not None:
            inner(done, total, t)
    kw["progress"] = progress
    try:
        return _orig(*a, **kw)
    finally:
        stamp("returned")
_eng.run_scenario = _wrapped
import atexit
def report_stamps():
    # run by the interpreter's shut-down, or by the program's own fast exit, after main
    stamp("exit")
    sys.stdout.flush()
    print("PHASES " + json.dumps(stamps), flush=True)
atexit.register(report_stamps)
from scenarios.cli import main
# main() without arguments: the program's own command line, as the gridtwin script runs it
sys.exit(main())
"""

PHASES = (
    "to run_scenario",
    "start-up",
    "steps",
    "finish",
    "report",
    "exit",
    "wall",
    "cpu start-up",
    "cpu steps",
    "cpu finish",
    "cpu report",
)


def one_run(tree: Path, scenario: str, extra: list[str], out: Path) -> dict[str, float]:
    """The phases (s) of one ``gridtwin run`` in a fresh process on ``tree``."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    cmd = [sys.executable, "-c", _PROBE, "run", scenario, "--quiet", "--out", str(out),
           "--force", *extra]  # fmt: skip
    t0 = time.time()
    done = subprocess.run(cmd, cwd=out.parent, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    t_end = time.time()
    line = [x for x in done.stdout.splitlines() if x.startswith("PHASES ")]
    if not line:
        raise SystemExit(f"{tree}: no phases printed (exit {done.returncode}):\n"
                         f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}")  # fmt: skip
    s = json.loads(line[-1][len("PHASES ") :])
    if done.returncode not in (0, 1):
        raise SystemExit(f"{tree}: exit code {done.returncode}:\n{done.stderr[-3000:]}")
    w = {k: v[0] for k, v in s.items() if isinstance(v, list)}
    c = {k: v[1] for k, v in s.items() if isinstance(v, list)}
    return {
        "to run_scenario": w["run_scenario"] - t0,
        "start-up": w["first_step"] - t0,
        "steps": w["last_step"] - w["first_step"],
        "finish": w["returned"] - w["last_step"],
        "report": w["exit"] - w["returned"],
        "exit": t_end - w["exit"],
        "wall": t_end - t0,
        # CPU seconds of the process (every thread), less sensitive to a busy machine
        "cpu start-up": c["first_step"],
        "cpu steps": c["last_step"] - c["first_step"],
        "cpu finish": c["returned"] - c["last_step"],
        "cpu report": c["exit"] - c["returned"],
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        k = argv.index("--")
        argv, extra = argv[:k], argv[k + 1 :]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", default="city_day")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tree", action="append", metavar="NAME=PATH",
                    help="a source tree to run (repeatable; default: main=/work/main and "
                    "this checkout)")  # fmt: skip
    args = ap.parse_args(argv)
    here = Path(__file__).resolve().parents[1]
    specs = args.tree or [f"main={os.environ.get('GRIDTWIN_MAIN', '/work/main')}", f"this={here}"]
    trees: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not Path(path).is_dir():
            raise SystemExit(f"--tree: expected NAME=PATH of a source tree, found {spec!r}")
        trees[name] = Path(path).resolve()
    print(machine_line())
    print(f"gridtwin run {args.scenario} --quiet {' '.join(extra)}: {args.runs} runs per tree, "
          "interleaved; medians in s (min-max)")  # fmt: skip
    got: dict[str, list[dict[str, float]]] = {n: [] for n in trees}
    with tempfile.TemporaryDirectory(prefix="run_phases_") as tmp:
        for k in range(args.runs):
            for name, tree in trees.items():
                got[name].append(one_run(tree, args.scenario, extra, Path(tmp) / f"{name}-{k}"))
    width = max(len(n) for n in trees) + 2
    print(f"{'phase':<16}" + "".join(f"{n:>{width + 14}}" for n in trees))
    for ph in PHASES:
        cells = []
        for name in trees:
            v = [r[ph] for r in got[name]]
            cells.append(f"{statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f})")
        print(f"{ph:<16}" + "".join(f"{c:>{width + 14}}" for c in cells))
    print(machine_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
