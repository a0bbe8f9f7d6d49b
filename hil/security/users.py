"""Users and roles from a file of password hashes; failed logins back off.

The users file is TOML, one table per user, written by ``gridtwin certs add-user``::

    [users.op]
    role = "operator"
    hash = "scrypt$16384$8$1$<salt, base64>$<key, base64>"

Passwords are never stored, never taken from the command line: the CLI reads them from a file,
an environment variable or a prompt (:func:`read_password`). Hashes are scrypt (hashlib, n=2^14,
r=8, p=1, 16-byte salt); ``pbkdf2_sha256$<iterations>$<salt>$<key>`` is read too.

Back-off (:class:`LoginGuard`): after ``free`` wrong passwords in a row for one user name,
that name is locked for ``base_s`` seconds, doubling per further failure up to ``max_s``; a
login while locked is refused without checking the password (so guessing costs the locked time,
not the hash time). A correct login resets the count. asyncua asks the user manager
synchronously, so the server cannot sleep on a failed login: it refuses instead.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import hmac
import logging
import os
import secrets
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hil.errors import HilError

if TYPE_CHECKING:
    from twin.pointmap import Point

_log = logging.getLogger(__name__)

ROLES = ("viewer", "operator", "plant", "admin")
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def plant_not_available(point: Point, role: str) -> bool:
    """Whether a NaN / bad-status write means "not available" rather than a refused value.

    Only the plant (or admin) may say so, and only for what the plant computes: measurements
    and statuses. Commands and setpoints from anyone must be finite and within limits. (Here,
    beside the roles, so that the Modbus server gets it without importing the OPC UA stack.)
    """
    return role in ("plant", "admin") and point.kind in ("measurement", "status")


class UsersFileError(HilError, ValueError):
    """A users file or password source that cannot be used (names file, user, key)."""


@dataclass(frozen=True, slots=True)
class UserEntry:
    """One user: a password hash and a role."""

    name: str
    role: str
    hash: str

    def check(self, password: str) -> bool:
        return verify_password(password, self.hash)


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """A scrypt hash string of ``password`` (random salt)."""
    salt = salt or secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, hashed: str) -> bool:
    """Whether ``password`` matches a hash from :func:`hash_password` (or pbkdf2_sha256)."""
    parts = hashed.split("$")
    try:
        if parts[0] == "scrypt" and len(parts) == 6:
            n, r, p = (int(x) for x in parts[1:4])
            salt, key = base64.b64decode(parts[4]), base64.b64decode(parts[5])
            got = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=len(key))
        elif parts[0] == "pbkdf2_sha256" and len(parts) == 4:
            salt, key = base64.b64decode(parts[2]), base64.b64decode(parts[3])
            got = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, int(parts[1]), len(key))
        else:
            return False
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, key)


def load_users(path: str | Path) -> dict[str, UserEntry]:
    """Read a users file. Raises UsersFileError naming the file and user on bad content."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsersFileError(f"users file {p}: not found (create it with "
                             "`gridtwin certs add-user`)") from None  # fmt: skip
    except tomllib.TOMLDecodeError as exc:
        raise UsersFileError(f"users file {p}: not valid TOML: {exc}") from None
    table = data.get("users", {})
    if not isinstance(table, dict):
        raise UsersFileError(f"users file {p}: expected [users.NAME] tables, found {table!r}")
    out: dict[str, UserEntry] = {}
    for name, entry in table.items():
        if not isinstance(entry, dict):
            raise UsersFileError(f"users file {p}: users.{name}: expected a table")
        if "password" in entry:
            raise UsersFileError(
                f"users file {p}: users.{name}: a plain-text password; expected only a hash "
                "(`gridtwin certs add-user` writes one)"
            )
        role, hashed = entry.get("role"), entry.get("hash")
        if role not in ROLES:
            raise UsersFileError(
                f"users file {p}: users.{name}.role: expected one of {', '.join(ROLES)}, "
                f"found {role!r}"
            )
        if not isinstance(hashed, str) or hashed.split("$")[0] not in ("scrypt", "pbkdf2_sha256"):
            raise UsersFileError(
                f"users file {p}: users.{name}.hash: expected a scrypt$... or "
                f"pbkdf2_sha256$... hash, found {hashed!r}"
            )
        out[name] = UserEntry(name, role, hashed)
    return out


def save_users(path: str | Path, users: Mapping[str, UserEntry]) -> Path:
    """Write a users file (mode 0600)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# gridtwin users: password hashes only (gridtwin certs add-user)", ""]
    for name in sorted(users):
        u = users[name]
        if not name.replace("_", "").replace("-", "").replace(".", "").isalnum():
            raise UsersFileError(f"user name: expected letters, digits, '_', '-', '.'; "
                                 f"found {name!r}")  # fmt: skip
        lines += [f"[users.{name}]", f'role = "{u.role}"', f'hash = "{u.hash}"', ""]
    tmp = p.with_suffix(p.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    os.replace(tmp, p)
    return p


def add_user(path: str | Path, name: str, role: str, password: str) -> UserEntry:
    """Add (or replace) one user in a users file, creating the file if needed."""
    if role not in ROLES:
        raise UsersFileError(f"role: expected one of {', '.join(ROLES)}, found {role!r}")
    if not password:
        raise UsersFileError(f"user {name!r}: expected a non-empty password")
    p = Path(path)
    users = load_users(p) if p.exists() else {}
    users[name] = UserEntry(name, role, hash_password(password))
    save_users(p, users)
    return users[name]


def read_password(
    *,
    file: str | Path | None = None,
    env: str | None = None,
    prompt: str | None = "password: ",
    getpass_fn: Callable[[str], str] = getpass.getpass,
) -> str:
    """A password from a file (first line), an environment variable, or a prompt."""
    if file is not None:
        try:
            text = Path(file).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsersFileError(f"password file {file}: {exc.strerror or exc}") from None
        pw = text.splitlines()[0] if text else ""
        if not pw:
            raise UsersFileError(f"password file {file}: expected a password on line 1, "
                                 "found nothing")  # fmt: skip
        return pw
    if env is not None:
        pw = os.environ.get(env, "")
        if not pw:
            raise UsersFileError(f"environment variable {env}: expected a password, found none")
        return pw
    if prompt is None:
        raise UsersFileError("no password given: expected --password-file or --password-env")
    return getpass_fn(prompt)


class LoginGuard:
    """Per user name: consecutive failures and the lock they earn (see the module doc)."""

    def __init__(
        self,
        *,
        free: int = 3,
        base_s: float = 1.0,
        max_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        max_names: int = 10_000,
    ) -> None:
        self.free = free
        self.base_s = base_s
        self.max_s = max_s
        self.clock = clock
        self.max_names = max_names
        self._fails: dict[str, tuple[int, float]] = {}  # name -> (failures, locked until)
        self.refused_locked = 0

    def locked(self, name: str) -> float:
        """Seconds ``name`` stays locked (0: may try)."""
        entry = self._fails.get(name)
        if entry is None:
            return 0.0
        return max(entry[1] - self.clock(), 0.0)

    def failed(self, name: str) -> float:
        """Note a failed login; returns the lock time it earned (0: none yet)."""
        n, _ = self._fails.pop(name, (0, 0.0))
        n += 1
        lock = 0.0
        if n >= self.free:
            lock = min(self.base_s * 2 ** (n - self.free), self.max_s)
        if len(self._fails) >= self.max_names:  # bounded: forget the oldest name
            self._fails.pop(next(iter(self._fails)))
        self._fails[name] = (n, self.clock() + lock)
        return lock

    def succeeded(self, name: str) -> None:
        self._fails.pop(name, None)
