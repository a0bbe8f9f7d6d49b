"""``gridtwin certs``: application certificates, trust lists and users for the OPC UA servers.

gridtwin certs create --pki DIR [--uri URI] [--name CN] [--host NAME ...] [--days N] [--overwrite]
                      [--modbus-role ROLE]
gridtwin certs trust FILE --pki DIR
gridtwin certs add-user NAME --role ROLE --users FILE [--password-file F | --password-env VAR]

``add-user`` never takes the password on the command line: from a file (first line), an
environment variable, or a prompt. The users file holds scrypt hashes only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``certs`` with its sub-commands."""
    parser = subparsers.add_parser(
        "certs",
        help="OPC UA certificates, trust lists and users",
        description="Make application certificates, trust peers' certificates, add users.",
    )
    sub = parser.add_subparsers(dest="certs_command", metavar="ACTION")
    c = sub.add_parser("create", help="make an application certificate and key in a PKI folder")
    c.add_argument("--pki", type=Path, required=True, metavar="DIR", help="PKI folder")
    c.add_argument("--uri", default="urn:gridtwin:app", help="application URI (urn:gridtwin:app)")
    c.add_argument("--name", default="gridtwin", help="certificate common name")
    c.add_argument(
        "--host", action="append", default=[], help="host name in the certificate (repeatable)"
    )
    c.add_argument("--days", type=int, default=730, help="validity in days (730)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing certificate")
    c.add_argument(
        "--modbus-role",
        choices=("viewer", "operator", "plant", "admin"),
        help="Modbus/TCP Security: the client's role, in the certificate's role extension "
        "(OID 1.3.6.1.4.1.50316.802.1)",
    )
    c.set_defaults(func=_guarded(_create))
    t = sub.add_parser("trust", help="trust a peer's certificate (DER or PEM)")
    t.add_argument("file", type=Path, help="the peer's certificate")
    t.add_argument("--pki", type=Path, required=True, metavar="DIR", help="PKI folder")
    t.set_defaults(func=_guarded(_trust))
    u = sub.add_parser("add-user", help="add or replace a user in a users file")
    u.add_argument("name", help="user name")
    u.add_argument(
        "--role", required=True, choices=("viewer", "operator", "plant", "admin"), help="role"
    )
    u.add_argument("--users", type=Path, required=True, metavar="FILE", help="users file (TOML)")
    g = u.add_mutually_exclusive_group()
    g.add_argument("--password-file", type=Path, metavar="F", help="read the password from F")
    g.add_argument("--password-env", metavar="VAR", help="read the password from $VAR")
    u.set_defaults(func=_guarded(_add_user))
    parser.set_defaults(func=lambda args: _usage(parser))


def _guarded(fn):  # noqa: ANN001, ANN202
    """Bad certificates, PKI folders, users files and passwords: one line, exit 2."""

    def run(args: argparse.Namespace) -> int:
        from hil.errors import HilError

        try:
            return int(fn(args))
        except HilError as exc:
            print(f"gridtwin certs: error: {exc}", file=sys.stderr)
            return 2

    return run


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _create(args: argparse.Namespace) -> int:
    from hil.security.certs import Pki

    if args.days < 1:
        print(f"gridtwin certs: --days: expected >= 1, found {args.days}", file=sys.stderr)
        return 2
    pki = Pki(args.pki)
    pki.create(
        app_uri=args.uri,
        common_name=args.name,
        hostnames=tuple(args.host) or ("localhost",),
        days=args.days,
        overwrite=args.overwrite,
        modbus_role=args.modbus_role,
    )
    from hil.security.certs import describe, load_certificate

    print(f"certificate {pki.cert} ({describe(load_certificate(pki.cert))}, {args.uri})")
    if args.modbus_role:
        print(f"Modbus role {args.modbus_role} (OID 1.3.6.1.4.1.50316.802.1)")
    print(f"private key {pki.key} (mode 0600)")
    print(f"trust list  {pki.trusted}/ (add peers with `gridtwin certs trust FILE --pki DIR`)")
    return 0


def _trust(args: argparse.Namespace) -> int:
    from hil.security.certs import Pki, describe, load_certificate

    out = Pki(args.pki).trust(args.file)
    print(f"trusted {describe(load_certificate(out))}: {out}")
    return 0


def _add_user(args: argparse.Namespace) -> int:
    from hil.security.users import add_user, read_password

    interactive = args.password_file is None and args.password_env is None
    if interactive and not sys.stdin.isatty():
        print(
            "gridtwin certs add-user: expected --password-file or --password-env (no terminal "
            "to prompt on)",
            file=sys.stderr,
        )
        return 2
    pw = read_password(file=args.password_file, env=args.password_env)
    if interactive and read_password(prompt="again: ") != pw:
        print("gridtwin certs add-user: the passwords differ", file=sys.stderr)
        return 2
    add_user(args.users, args.name, args.role, pw)
    print(f"user {args.name} ({args.role}) in {args.users}")
    return 0
