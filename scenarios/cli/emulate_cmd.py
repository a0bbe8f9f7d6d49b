"""``gridtwin emulate``: serve an emulated substation (OPC UA + Modbus TCP) for a grid.

gridtwin emulate --grid ieee14 [--points FILE] [--mode hil|mirror] [--opcua-port 4840]
                 [--modbus-port 5020] [--host 127.0.0.1] [--duration S] [--no-devices] [--seed N]
                 [--pki DIR] [--users FILE] [--insecure [--user NAME:PASSWORD:ROLE ...]]
                 [--modbus-read-only] [--modbus-allow ADDR[,ADDR]] [--modbus-max-connections N]
                 [--modbus-idle-timeout S] [--audit FILE]

Secure by default: OPC UA offers Basic256Sha256, Aes128_Sha256_RsaOaep and Aes256_Sha256_RsaPss
(Sign, SignAndEncrypt) only, with the certificate of ``--pki DIR`` (a one-time certificate in
the results folder without it), client certificates checked against ``DIR/trusted``, and
UserName logins from ``--users FILE`` (password hashes). ``--insecure`` adds the None policy
and anonymous (viewer) sessions, and is announced on stderr. Modbus writes are accepted from
loopback only unless ``--modbus-allow`` says otherwise. Every write attempt goes to the audit
file (default ``results/emulate-<time>/audit.jsonl``).

Serves until Ctrl-C / SIGTERM (clean stop, exit 0) or for ``--duration`` seconds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``emulate``."""
    parser = subparsers.add_parser(
        "emulate",
        help="serve an emulated substation over OPC UA and Modbus TCP",
        description=(
            "Serve a grid's field points as an emulated substation: OPC UA and Modbus TCP over "
            "one point store, with breaker, tap-changer, relay and inverter behaviours. Secure "
            "by default (see docs/safety.md)."
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
    sec = parser.add_argument_group("security")
    sec.add_argument(
        "--pki",
        type=Path,
        default=None,
        metavar="DIR",
        help="PKI folder from `gridtwin certs create` (own/cert.der, own/key.pem, trusted/); "
        "default: a one-time certificate in the results folder, no client trusted",
    )
    sec.add_argument(
        "--users",
        type=Path,
        default=None,
        metavar="FILE",
        help="users file with password hashes (`gridtwin certs add-user`)",
    )
    sec.add_argument(
        "--insecure",
        action="store_true",
        help="also offer the None policy and anonymous (viewer) sessions: loopback tests only",
    )
    sec.add_argument(
        "--user",
        action="append",
        default=[],
        metavar="NAME:PASSWORD:ROLE",
        help="an OPC UA user with its password on the command line: only with --insecure",
    )
    sec.add_argument(
        "--audit",
        type=Path,
        default=None,
        metavar="FILE",
        help="audit log, JSON lines (default results/emulate-<time>/audit.jsonl)",
    )
    sec.add_argument(
        "--modbus-read-only", action="store_true", help="refuse every Modbus write (01)"
    )
    sec.add_argument(
        "--modbus-allow",
        action="append",
        default=[],
        metavar="ADDR",
        help="address or network whose Modbus clients may write (repeatable, comma lists); "
        "default loopback only; 'any' for every client",
    )
    sec.add_argument(
        "--modbus-max-connections", type=int, default=32, help="default 32 (oldest idle dropped)"
    )
    sec.add_argument(
        "--modbus-idle-timeout", type=float, default=120.0, help="seconds (default 120)"
    )
    sec.add_argument(
        "--modbus-tls",
        action="store_true",
        help="Modbus/TCP Security: mutual TLS with the certificate of --pki (needed); clients "
        "must present a certificate in DIR/trusted/, their role from its Modbus role extension "
        "(none: viewer, read only); the conventional port is 802 (--modbus-port 802)",
    )
    parser.add_argument("--no-devices", action="store_true", help="serve points only")
    parser.add_argument("--seed", type=int, default=None, help="RTU noise seed")
    parser.add_argument(
        "--watchdog-s",
        type=float,
        default=10.0,
        help="device watchdog: seconds without the master's heartbeat (or a scripted comms "
        "loss) before inverters, AVRs and breakers go to their safe state (default 10)",
    )
    parser.add_argument(
        "--fallback-p-limit-pct",
        default="0",
        help="inverter safe state: P limit in %% of rating, or 'hold' (default 0)",
    )
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


def _fail(message: str) -> int:
    print(f"gridtwin emulate: error: {message}", file=sys.stderr)
    return 2


def _emulate(args: argparse.Namespace) -> int:
    import grids
    from hil.emulator import is_loopback
    from hil.emulator.modbus_server import LOOPBACK, ModbusPolicy, parse_allow
    from hil.errors import HilError
    from hil.security.certs import OpcuaSecurity, Pki
    from hil.security.users import load_users
    from hil.serve import serve_substation
    from twin.pointmap import generate_pointmap, load_pointmap

    if args.duration is not None and args.duration < 0:
        return _fail(f"--duration: expected >= 0, found {args.duration}")
    if args.user and not args.insecure:
        return _fail(
            "--user puts a password on the command line (visible in `ps`): expected --users "
            "FILE (`gridtwin certs add-user`), or --insecure for a loopback test"
        )
    run_dir = Path("results") / f"emulate-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        users: dict = dict(load_users(args.users)) if args.users is not None else {}
        users.update(_parse_users(args.user))
        if args.pki is not None:
            security = OpcuaSecurity.from_pki(Pki(args.pki), insecure=args.insecure)
        elif args.insecure:
            security = OpcuaSecurity.insecure_only()
        else:
            pki = Pki(run_dir / "pki")
            pki.create(app_uri="urn:gridtwin:emulator", common_name="gridtwin emulator")
            security = OpcuaSecurity.from_pki(pki)
        allow: tuple[str, ...] | None = LOOPBACK
        if any(a.strip().lower() == "any" for a in args.modbus_allow):
            allow = None
        elif args.modbus_allow:
            allow = parse_allow(args.modbus_allow)
        tls = None
        if args.modbus_tls:
            from hil.security.modbus_tls import ModbusTls

            if args.pki is None:
                return _fail("--modbus-tls: expected --pki DIR (its certificate and trusted/)")
            tls = ModbusTls.from_pki(Pki(args.pki))
            tls.server_context()  # a missing key or an empty trust list: say so now
        policy = ModbusPolicy(
            read_only=args.modbus_read_only,
            allow=allow,
            max_connections=args.modbus_max_connections,
            idle_timeout_s=args.modbus_idle_timeout,
            tls=tls,
        )
    except HilError as exc:
        return _fail(str(exc))
    audit_path = args.audit if args.audit is not None else run_dir / "audit.jsonl"
    if args.insecure:
        print(
            "WARNING: --insecure: OPC UA offers the None policy and anonymous sessions; "
            "passwords and values cross the wire in clear and are not checked against a "
            "certificate. Only for loopback tests.",
            file=sys.stderr,
        )
    if not is_loopback(args.host):
        print(
            f"WARNING: binding {args.host}, which is NOT a loopback address: anyone who can reach "
            "it can read every point; Modbus has no authentication (writes only from "
            f"{'nobody' if policy.read_only else ', '.join(policy.allow or ['ANYONE'])}). Use "
            "127.0.0.1 unless this network is isolated.",
            file=sys.stderr,
        )
    net = grids.load(args.grid)
    if args.points is not None:
        pm = load_pointmap(args.points)
    else:
        pm = generate_pointmap(net, mode=args.mode)

    def say(line: str) -> None:
        print(line, flush=True)

    policies = ", ".join(p.name for p in security.all_policies())
    say(f"  OPC UA security: {policies}")
    say(
        f"  OPC UA certificate {security.certificate or 'none'}, trusted clients in "
        f"{security.trust or 'none'}; {len(users)} users"
        + ("" if users else " (nobody can log in: --users FILE)")
        + ("; anonymous viewer" if args.insecure else "")
    )
    say(
        "  Modbus writes: "
        + ("none (read-only)" if policy.read_only else ", ".join(policy.allow or ["anyone"]))
        + (
            "; Modbus/TLS, mutual certificates (role from the client certificate)"
            if policy.tls is not None
            else "; plain Modbus TCP (no authentication)"
        )
    )
    from hil.emulator.devices import DeviceSettings

    if not (args.watchdog_s > 0 and args.watchdog_s < 1e6):
        return _fail(f"--watchdog-s: expected seconds > 0, found {args.watchdog_s!r}")
    fallback: float | None = None
    if args.fallback_p_limit_pct != "hold":
        try:
            fallback = float(args.fallback_p_limit_pct)
        except ValueError:
            fallback = -1.0
        if not 0.0 <= fallback <= 100.0:
            return _fail(
                "--fallback-p-limit-pct: expected a percentage 0..100 or 'hold', found "
                f"{args.fallback_p_limit_pct!r}"
            )
    settings = DeviceSettings(comms_timeout_s=args.watchdog_s, der_fallback_p_limit_pct=fallback)
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
            opcua_security=security,
            modbus_policy=policy,
            audit_path=audit_path,
            device_settings=settings,
        )
    except OSError as exc:  # port taken, address not on this machine, ...
        print(
            f"gridtwin emulate: error: cannot serve on {args.host} (OPC UA port "
            f"{args.opcua_port}, Modbus port {args.modbus_port}): {exc}",
            file=sys.stderr,
        )
        return 1
