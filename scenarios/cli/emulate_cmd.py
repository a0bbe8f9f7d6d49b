"""``gridtwin emulate``: serve an emulated substation (OPC UA + Modbus TCP) for a grid.

gridtwin emulate --grid ieee14 [--points FILE] [--mode hil|mirror] [--opcua-port 4840]
                 [--modbus-port 5020] [--host 127.0.0.1] [--duration S]
                 [--user NAME:PASSWORD:ROLE ...] [--no-devices] [--seed N]

Serves until Ctrl-C / SIGTERM (clean stop, exit 0) or for ``--duration`` seconds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``emulate``."""
    parser = subparsers.add_parser(
        "emulate",
        help="serve an emulated substation over OPC UA and Modbus TCP",
        description=(
            "Serve a grid's field points as an emulated substation: OPC UA and Modbus TCP over "
            "one point store, with breaker, tap-changer, relay and inverter behaviours."
        ),
    )
    parser.add_argument("--grid", required=True, help="grid name (see `gridtwin grids`)")
    parser.add_argument(
        "--points", type=Path, default=None, help="point map (TOML); default: generated"
    )
    parser.add_argument(
        "--mode", choices=("hil", "mirror"), default="hil", help="generated map mode (hil)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--opcua-port", type=int, default=4840, help="default 4840 (0: free)")
    parser.add_argument("--modbus-port", type=int, default=5020, help="default 5020 (0: free)")
    parser.add_argument(
        "--duration", type=float, default=None, help="stop after S seconds (default: Ctrl-C)"
    )
    parser.add_argument(
        "--user",
        action="append",
        default=[],
        metavar="NAME:PASSWORD:ROLE",
        help="OPC UA user (role: viewer, operator, plant, admin); repeatable",
    )
    parser.add_argument("--no-devices", action="store_true", help="serve points only")
    parser.add_argument("--seed", type=int, default=None, help="RTU noise seed")
    parser.set_defaults(func=_emulate)


def _parse_users(specs: list[str]) -> dict[str, tuple[str, str]]:
    from hil.errors import HilError
    from hil.store import ROLE_WRITES

    users: dict[str, tuple[str, str]] = {}
    for spec in specs:
        parts = spec.split(":")
        if len(parts) != 3 or not parts[0] or parts[2] not in ROLE_WRITES:
            raise HilError(
                f"--user: expected NAME:PASSWORD:ROLE with ROLE in {', '.join(ROLE_WRITES)}, "
                f"found {spec!r}"
            )
        users[parts[0]] = (parts[1], parts[2])
    return users


def _emulate(args: argparse.Namespace) -> int:
    import grids
    from hil.emulator import is_loopback
    from hil.serve import serve_substation
    from twin.pointmap import generate_pointmap, load_pointmap

    users = _parse_users(args.user)
    if args.duration is not None and args.duration < 0:
        print(
            f"gridtwin emulate: --duration: expected >= 0, found {args.duration}", file=sys.stderr
        )
        return 2
    if not is_loopback(args.host):
        print(
            f"WARNING: binding {args.host}, which is NOT a loopback address: anyone who can reach "
            "it can read every point and, over Modbus (no authentication), operate breakers and "
            "change setpoints. Use 127.0.0.1 unless this network is isolated.",
            file=sys.stderr,
        )
    net = grids.load(args.grid)
    if args.points is not None:
        pm = load_pointmap(args.points)
    else:
        pm = generate_pointmap(net, mode=args.mode)

    def say(line: str) -> None:
        print(line, flush=True)

    try:
        return serve_substation(
            net,
            pm,
            grid=args.grid,
            host=args.host,
            opcua_port=args.opcua_port,
            modbus_port=args.modbus_port,
            users=users,
            devices=not args.no_devices,
            seed=args.seed,
            duration=args.duration,
            say=say,
        )
    except OSError as exc:  # port taken, address not on this machine, ...
        print(
            f"gridtwin emulate: error: cannot serve on {args.host} (OPC UA port "
            f"{args.opcua_port}, Modbus port {args.modbus_port}): {exc}",
            file=sys.stderr,
        )
        return 1
