"""The security of one run (``gridtwin run``): the twin's OPC UA server and the embedded links.

:class:`RunSecurity` is what the CLI parsed (``--pki``, ``--users``, ``--insecure``,
``--embedded-security``); the fields turn it into servers and links:

- the twin's server (``--twin-server``, and the substation served with ``--serve``) offers
  Basic256Sha256, Aes128_Sha256_RsaOaep and Aes256_Sha256_RsaPss in Sign and SignAndEncrypt
  with the certificate of ``--pki DIR`` (else a one-time certificate made for the run),
  checks client certificates against ``DIR/trusted/`` and accepts UserName logins from
  ``--users FILE`` (else one generated one-time login, shown once at start-up). The None
  policy and anonymous sessions exist only with ``--insecure``.
- the embedded emulator's links (``links = ["opcua", ...]`` without hardware) are in-process
  on loopback: ``embedded = "None"`` (default) uses generated one-time passwords over the None
  policy; ``"Sign"`` or ``"SignAndEncrypt"`` makes one-time certificates for the emulator and
  the twin, each trusting only the other, and runs the OPC UA link with Basic256Sha256 in that
  mode (the twin checks the emulator's certificate, the emulator the twin's).
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hil.security.certs import OpcuaSecurity, Pki

# hil.security.certs (cryptography) loads when a certificate is made or checked: a run with the
# defaults and a Modbus or in-process link (the one-time PKI folder unused) never needs it.

#: Values of ``embedded``: the OPC UA message security of the embedded emulator's link.
EMBEDDED_MODES = ("None", "Sign", "SignAndEncrypt")


@dataclass(frozen=True)
class RunSecurity:
    """What a run's servers and embedded links use (see the module docstring).

    Args:
        pki: the twin's PKI folder (``gridtwin certs create --pki DIR``): its certificate for
            the twin's server and ``trusted/`` for the clients it accepts. None: one-time.
        users: users file (``gridtwin certs add-user``) for the twin's server. None: one
            generated one-time ``viewer`` login.
        insecure: also offer the None policy and anonymous sessions (loopback tests only).
        embedded: OPC UA security of the embedded emulator's link, one of
            :data:`EMBEDDED_MODES`.
    """

    pki: Path | None = None
    users: Path | None = None
    insecure: bool = False
    embedded: str = "None"

    def __post_init__(self) -> None:
        if self.embedded in EMBEDDED_MODES and self.pki is None:
            return  # nothing to check (and no need to import cryptography)
        from hil.security.certs import CertificateError, Pki

        if self.embedded not in EMBEDDED_MODES:
            raise CertificateError(
                f"embedded security: expected one of {', '.join(EMBEDDED_MODES)}, found "
                f"{self.embedded!r}"
            )
        if self.pki is not None and not Pki(Path(self.pki)).exists():
            raise CertificateError(
                f"PKI folder {self.pki}: expected own/cert.der and own/key.pem (make them with "
                f"`gridtwin certs create --pki {self.pki}`), found none"
            )


@dataclass
class ServerSetup:
    """A server's security made from a :class:`RunSecurity` (and what to tell the user)."""

    security: OpcuaSecurity
    users: dict[str, Any]
    #: a generated login ``(name, password)`` when no users file was given
    one_time_login: tuple[str, str] | None = None
    notes: list[str] = field(default_factory=list)


class RunPki:
    """One-time PKI folders of a run, in a private temporary folder removed by :meth:`close`."""

    def __init__(self) -> None:
        self._root: Path | None = None

    @property
    def root(self) -> Path:
        if self._root is None:
            self._root = Path(tempfile.mkdtemp(prefix="gridtwin-run-pki-"))
        return self._root

    def make(self, name: str, *, app_uri: str, common_name: str) -> Pki:
        from hil.security.certs import Pki

        pki = Pki(self.root / name)
        if not pki.exists():
            pki.create(app_uri=app_uri, common_name=common_name)
        return pki

    def close(self) -> None:
        root, self._root = self._root, None
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)


def twin_server_setup(sec: RunSecurity | None, one_time: RunPki) -> ServerSetup:
    """The twin's OPC UA server security: secure unless ``sec.insecure`` (None: defaults)."""
    from hil.security.certs import OpcuaSecurity, Pki
    from hil.security.users import load_users

    sec = sec or RunSecurity()
    notes: list[str] = []
    if sec.pki is not None:
        pki = Pki(Path(sec.pki))
    elif sec.insecure and sec.users is None:
        security = OpcuaSecurity.insecure_only()
        notes.append("twin server: None policy and anonymous only (--insecure)")
        return ServerSetup(security, {}, None, notes)
    else:
        pki = one_time.make("twin", app_uri="urn:gridtwin:twin", common_name="gridtwin twin")
        notes.append(
            f"twin server: one-time certificate {pki.cert}; trust a client with "
            f"`gridtwin certs trust CLIENT.der --pki {pki.root}` (or give --pki DIR)"
        )
    security = OpcuaSecurity.from_pki(pki, insecure=sec.insecure)
    login: tuple[str, str] | None = None
    users: dict[str, Any]
    if sec.users is not None:
        users = dict(load_users(sec.users))
    else:
        login = ("viewer", secrets.token_urlsafe(12))
        users = {login[0]: login[1]}
    return ServerSetup(security, users, login, notes)


@dataclass(frozen=True)
class EmbeddedSecurity:
    """One-time certificates of the embedded emulator and the twin's link, trusting each other."""

    mode: str  # "Sign" or "SignAndEncrypt"
    server: Pki
    client: Pki

    def server_security(self) -> OpcuaSecurity:
        from hil.security.certs import OpcuaSecurity

        return OpcuaSecurity.from_pki(self.server)

    def security_string(self) -> str:
        """asyncua's security string of the twin's link (the server is checked by trust list)."""
        return f"Basic256Sha256,{self.mode},{self.client.cert},{self.client.key}"


def embedded_security(sec: RunSecurity | None, one_time: RunPki) -> EmbeddedSecurity | None:
    """Certificates for a signed embedded link, or None for the None policy."""
    if sec is None or sec.embedded == "None":
        return None
    server = one_time.make(
        "emulator", app_uri="urn:gridtwin:emulator", common_name="gridtwin emulator"
    )
    client = one_time.make("link", app_uri="urn:gridtwin:twin-link", common_name="gridtwin link")
    server.trust(client.cert)
    client.trust(server.cert)
    return EmbeddedSecurity(sec.embedded, server, client)
