"""Modbus/TCP Security: TLS with mutual certificates, the client's role from its certificate.

The emulator's Modbus server (``ModbusPolicy(tls=ModbusTls(...))``) and the twin's Modbus link
(``ModbusLink(..., tls=ModbusTls(...))``) use one PKI folder each (``gridtwin certs create
--pki DIR [--modbus-role ROLE]``): the own certificate and key, and ``trusted/`` with the
peer certificates accepted (exact certificates: self-signed ones are pinned, no host name
check). TLS 1.2 or newer; the client must present a trusted certificate
(``CERT_REQUIRED``), else the handshake fails and the server audits the refused connection.
The server reads the trust folder again when it changes (``certs trust`` needs no restart).

The role of a client (what it may write) is read from its certificate: the Modbus/TCP
Security role extension (OID 1.3.6.1.4.1.50316.802.1, a UTF8String: ``viewer``,
``operator``, ``plant`` or ``admin``), else ``roles`` (certificate common name -> role), else
``default_role`` (``viewer``: read only). A ``viewer`` cannot write (exception 01, audited).
The conventional port is 802.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from hil.security.certs import (
    CertificateError,
    Pki,
    TrustList,
    describe,
    load_certificate,
    modbus_role_of,
)
from hil.security.users import ROLES

#: The port Modbus/TCP Security uses by convention.
MODBUS_TLS_PORT = 802


@dataclass(frozen=True)
class ModbusTls:
    """Mutual TLS of a Modbus server or client (see the module docstring)."""

    certificate: Path
    private_key: Path
    trust: Path
    roles: Mapping[str, str] = field(default_factory=dict)
    default_role: str = "viewer"

    def __post_init__(self) -> None:
        for name, role in [*self.roles.items(), ("default_role", self.default_role)]:
            if role not in ROLES:
                raise CertificateError(
                    f"Modbus/TLS role of {name!r}: expected one of {', '.join(ROLES)}, found "
                    f"{role!r}"
                )

    @classmethod
    def from_pki(
        cls, pki: Pki, *, roles: Mapping[str, str] | None = None, default_role: str = "viewer"
    ) -> ModbusTls:
        if not pki.exists():
            raise CertificateError(
                f"PKI folder {pki.root}: expected own/cert.der and own/key.pem (make them with "
                f"`gridtwin certs create --pki {pki.root}`), found none"
            )
        return cls(pki.cert, pki.key, pki.trusted, dict(roles or {}), default_role)

    def _context(self, purpose: int) -> ssl.SSLContext:
        ctx = ssl.SSLContext(purpose)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.check_hostname = False  # trusted certificates are pinned exactly, not by name
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        pem = load_certificate(self.certificate).public_bytes(Encoding.PEM)
        # ssl loads the chain from files only: a private temporary PEM copy of our certificate
        fd, tmp = tempfile.mkstemp(suffix=".pem")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
            try:
                ctx.load_cert_chain(tmp, str(self.private_key))
            except (ssl.SSLError, OSError) as exc:
                raise CertificateError(
                    f"Modbus/TLS: cannot load certificate {self.certificate} / key "
                    f"{self.private_key}: {exc}"
                ) from None
        finally:
            os.unlink(tmp)
        trusted = self.trusted_pem()
        if not trusted:
            raise CertificateError(
                f"Modbus/TLS: no trusted peer certificate in {self.trust} (expected at least "
                "one: `gridtwin certs trust PEER.der --pki DIR`)"
            )
        ctx.load_verify_locations(cadata=trusted)
        return ctx

    def stamp(self) -> tuple[tuple[str, int], ...]:
        """Names and modification times in the trust folder (a change: rebuild the context)."""
        files = sorted(self.trust.glob("*")) if self.trust.is_dir() else []
        return tuple((f.name, f.stat().st_mtime_ns) for f in files)

    def trusted_pem(self) -> str:
        files = sorted(self.trust.glob("*")) if self.trust.is_dir() else []
        out = []
        for f in files:
            try:
                out.append(load_certificate(f).public_bytes(Encoding.PEM).decode())
            except CertificateError:
                continue
        return "".join(out)

    def server_context(self) -> ssl.SSLContext:
        return self._context(ssl.PROTOCOL_TLS_SERVER)

    def client_context(self) -> ssl.SSLContext:
        return self._context(ssl.PROTOCOL_TLS_CLIENT)

    def trust_list(self) -> TrustList:
        return TrustList(self.trust)

    def role_of(self, der: bytes | None) -> tuple[str, str]:
        """(role, label) of a peer certificate (DER) that passed the handshake."""
        if not der:
            return "viewer", ""
        cert = x509.load_der_x509_certificate(der)
        label = describe(cert)
        role = modbus_role_of(cert)
        if role is None:
            cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            role = self.roles.get(str(cn[0].value) if cn else "", self.default_role)
        if role not in ROLES:
            return "viewer", f"{label} (unknown role {role!r}: read only)"
        return role, label
