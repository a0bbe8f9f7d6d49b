"""Application certificates, trust lists and the OPC UA security of our servers.

A PKI folder (``gridtwin certs create --pki DIR``)::

    DIR/own/cert.der     this application's certificate (DER, self-signed, 2 years)
    DIR/own/key.pem      its private key (PEM, mode 0600)
    DIR/trusted/*.der    certificates of peers we trust (``gridtwin certs trust FILE``)

:class:`TrustList` validates a client's certificate against ``trusted/`` (re-read when the
folder changes, so ``certs trust`` works without a restart): a certificate not in it is refused
with BadCertificateUntrusted, an expired one with BadCertificateTimeInvalid.

:class:`OpcuaSecurity` says what a server offers: by default Basic256Sha256,
Aes128_Sha256_RsaOaep and Aes256_Sha256_RsaPss, each in Sign and SignAndEncrypt, UserName
logins only. ``insecure=True`` adds the None policy and anonymous sessions (only ever on
request; the CLI announces it).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hil.errors import HilError

if TYPE_CHECKING:
    from asyncua import ua

# asyncua (~0.4 s to import) loads on first use of an OPC UA name here, not with the module:
# a Modbus-only run (hil.security.run, the audit log) needs certificates and users, not OPC UA.

_log = logging.getLogger(__name__)

#: The names of the secure policies offered by default (asyncua ``SecurityPolicyType``), in
#: the order asyncua lists endpoints; :data:`SECURE_POLICIES` holds the enum values.
SECURE_POLICY_NAMES: tuple[str, ...] = (
    "Basic256Sha256_Sign",
    "Basic256Sha256_SignAndEncrypt",
    "Aes128Sha256RsaOaep_Sign",
    "Aes128Sha256RsaOaep_SignAndEncrypt",
    "Aes256Sha256RsaPss_Sign",
    "Aes256Sha256RsaPss_SignAndEncrypt",
)


def _secure_policies() -> tuple[ua.SecurityPolicyType, ...]:
    from asyncua import ua

    return tuple(getattr(ua.SecurityPolicyType, n) for n in SECURE_POLICY_NAMES)


def __getattr__(name: str) -> Any:
    # SECURE_POLICIES: the module's public constant, made (with asyncua) when first asked for
    if name == "SECURE_POLICIES":
        value = _secure_policies()
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _service_error(code_name: str) -> Exception:
    from asyncua import ua
    from asyncua.common.utils import ServiceError

    return ServiceError(getattr(ua.StatusCodes, code_name))


class CertificateError(HilError, ValueError):
    """A certificate or PKI folder that cannot be used (names the file)."""


@dataclass(frozen=True, slots=True)
class Pki:
    """A PKI folder: own certificate and key, trusted peer certificates."""

    root: Path

    @property
    def cert(self) -> Path:
        return self.root / "own" / "cert.der"

    @property
    def key(self) -> Path:
        return self.root / "own" / "key.pem"

    @property
    def trusted(self) -> Path:
        return self.root / "trusted"

    def exists(self) -> bool:
        return self.cert.is_file() and self.key.is_file()

    def create(
        self,
        *,
        app_uri: str = "urn:gridtwin:app",
        common_name: str = "gridtwin",
        hostnames: tuple[str, ...] = ("localhost",),
        days: int = 730,
        overwrite: bool = False,
        modbus_role: str | None = None,
    ) -> Path:
        """Make the application certificate and key (refuses to overwrite unless told);
        ``modbus_role`` puts a Modbus/TCP Security role into it (:data:`MODBUS_ROLE_OID`)."""
        if self.exists() and not overwrite:
            raise CertificateError(
                f"{self.cert} exists already (expected a PKI folder without a certificate, or "
                "--overwrite)"
            )
        create_certificate(
            self.cert, self.key, app_uri=app_uri, common_name=common_name,
            hostnames=hostnames, days=days, modbus_role=modbus_role,
        )  # fmt: skip
        self.trusted.mkdir(parents=True, exist_ok=True)
        return self.cert

    def trust(self, path: str | Path) -> Path:
        """Copy a peer's certificate (DER or PEM) into ``trusted/``; returns the new file."""
        cert = load_certificate(path)
        self.trusted.mkdir(parents=True, exist_ok=True)
        cn = _common_name(cert) or "peer"
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in cn)[:40]
        out = self.trusted / f"{safe}_{fingerprint(cert)[:16]}.der"
        out.write_bytes(cert.public_bytes(Encoding.DER))
        return out

    def app_uri(self) -> str:
        """The application URI in the own certificate (servers must announce the same)."""
        return app_uri_of(self.cert)


def app_uri_of(path: str | Path) -> str:
    """The application URI in a certificate's subject alternative name (a default if none)."""
    cert = load_certificate(path)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    return uris[0] if uris else "urn:gridtwin:app"


def _common_name(cert: x509.Certificate) -> str | None:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else None


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 fingerprint (hex) of a certificate."""
    return cert.fingerprint(hashes.SHA256()).hex()


def describe(cert: x509.Certificate | bytes | None) -> str:
    """``CN=... sha256:abcd...`` for the audit log ('' for no certificate)."""
    if cert is None:
        return ""
    if isinstance(cert, (bytes, bytearray)):
        raw = bytes(cert)
        try:
            cert = x509.load_der_x509_certificate(raw)
        except ValueError:
            return "sha256:" + hashlib.sha256(raw).hexdigest()[:16]
    return f"CN={_common_name(cert) or '?'} sha256:{fingerprint(cert)[:16]}"


def load_certificate(path: str | Path) -> x509.Certificate:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise CertificateError(f"certificate {p}: {exc.strerror or exc}") from None
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise CertificateError(
            f"certificate {p}: expected an X.509 certificate (DER or PEM), found something else"
        ) from None


def create_certificate(
    cert_path: str | Path,
    key_path: str | Path,
    *,
    app_uri: str,
    common_name: str = "gridtwin",
    hostnames: tuple[str, ...] = ("localhost",),
    days: int = 730,
    modbus_role: str | None = None,
) -> None:
    """A self-signed application certificate for client and server use, and its key.

    ``modbus_role``: the Modbus/TCP Security role extension (OID
    :data:`MODBUS_ROLE_OID`, a UTF8String) a Modbus/TLS server reads the client's role from.
    """
    from asyncua.crypto.cert_gen import (
        dump_private_key_as_pem,
        generate_private_key,
        generate_self_signed_app_certificate,
    )

    cert_path, key_path = Path(cert_path), Path(key_path)
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.parent.mkdir(parents=True, exist_ok=True)
    key = generate_private_key()
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(app_uri)]
    hosts = list(dict.fromkeys((*hostnames, socket.gethostname())))
    names += [x509.DNSName(h) for h in hosts if h]
    cert = generate_self_signed_app_certificate(
        key,
        common_name,
        {"organizationName": "gridtwin"},
        names,
        extended=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        days=days,
    )
    if modbus_role is not None:
        cert = _with_modbus_role(cert, key, modbus_role)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(dump_private_key_as_pem(key))
    cert_path.write_bytes(cert.public_bytes(Encoding.DER))


#: Modbus/TCP Security (MB-TCP-Security v21): the role of a client certificate, an X.509
#: extension holding one UTF8String.
MODBUS_ROLE_OID = x509.ObjectIdentifier("1.3.6.1.4.1.50316.802.1")


def _with_modbus_role(cert: x509.Certificate, key: Any, role: str) -> x509.Certificate:
    raw = role.encode("utf-8")
    if len(raw) > 127:
        raise CertificateError(f"Modbus role: expected at most 127 bytes, found {len(raw)}")
    b = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(cert.issuer)
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
        .serial_number(cert.serial_number)
        .public_key(cert.public_key())
    )
    for ext in cert.extensions:
        b = b.add_extension(ext.value, critical=ext.critical)
    der = bytes([0x0C, len(raw)]) + raw  # DER UTF8String
    b = b.add_extension(x509.UnrecognizedExtension(MODBUS_ROLE_OID, der), critical=False)
    return b.sign(private_key=key, algorithm=hashes.SHA256())


def modbus_role_of(cert: x509.Certificate) -> str | None:
    """The Modbus/TCP Security role in a certificate (None: no role extension)."""
    try:
        ext = cert.extensions.get_extension_for_oid(MODBUS_ROLE_OID)
    except x509.ExtensionNotFound:
        return None
    der = getattr(ext.value, "value", b"")
    if len(der) >= 2 and der[0] == 0x0C and der[1] < 0x80 and len(der) == 2 + der[1]:
        return der[2:].decode("utf-8", errors="replace")
    raise CertificateError(
        f"certificate {describe(cert)}: Modbus role extension: expected a UTF8String, found "
        f"{der[:8].hex()}"
    )


class TrustList:
    """asyncua certificate validator: a client certificate must be in a trusted folder."""

    def __init__(self, folder: str | Path, *more: str | Path) -> None:
        self.folder = Path(folder)
        self.folders = (self.folder, *map(Path, more))
        self._stamp: tuple[Any, ...] | None = None
        self._trusted: set[str] = set()
        self.refused = 0

    def _reload(self) -> None:
        files = sorted(f for d in self.folders if d.is_dir() for f in d.glob("*"))
        stamp = tuple((f.name, f.stat().st_mtime_ns) for f in files)
        if stamp == self._stamp:
            return
        trusted = set()
        for f in files:
            try:
                trusted.add(fingerprint(load_certificate(f)))
            except CertificateError as exc:
                _log.warning("trust list: skipping %s", exc)
        self._trusted, self._stamp = trusted, stamp

    def is_trusted(self, cert: x509.Certificate) -> bool:
        self._reload()
        return fingerprint(cert) in self._trusted

    async def __call__(self, cert: x509.Certificate, app_description: Any) -> None:
        now = _dt.datetime.now(_dt.UTC)
        if not (cert.not_valid_before_utc <= now <= cert.not_valid_after_utc):
            self.refused += 1
            _log.warning("OPC UA: client certificate %s expired or not yet valid", describe(cert))
            raise _service_error("BadCertificateTimeInvalid")
        if not self.is_trusted(cert):
            self.refused += 1
            _log.warning(
                "OPC UA: client certificate %s (%s) not trusted: refused (trust it with "
                "`gridtwin certs trust FILE`)",
                describe(cert),
                getattr(app_description, "ApplicationUri", "?"),
            )
            raise _service_error("BadCertificateUntrusted")


class ServerTrust:
    """Client-side validator (asyncua ``Client.certificate_validator``): the server's
    certificate must be in a trusted folder, checked before the session is activated (so no
    password reaches a server we do not trust).

    A certificate not in the folder is saved to ``rejected/`` beside it (the OPC UA PKI
    convention) and refused with :class:`UntrustedServer`, which names its subject, SHA-256
    thumbprint and the command that trusts it.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._list = TrustList(self.folder)
        self.refused = 0

    @property
    def rejected(self) -> Path:
        return self.folder.parent / "rejected"

    async def __call__(self, cert: x509.Certificate, app_description: Any) -> None:
        now = _dt.datetime.now(_dt.UTC)
        if not (cert.not_valid_before_utc <= now <= cert.not_valid_after_utc):
            self.refused += 1
            raise UntrustedServer(cert, None, self.folder, "BadCertificateTimeInvalid",
                                  "expired or not yet valid")  # fmt: skip
        if self._list.is_trusted(cert):
            return
        self.refused += 1
        saved: Path | None = None
        try:
            self.rejected.mkdir(parents=True, exist_ok=True)
            cn = _common_name(cert) or "server"
            safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in cn)[:40]
            saved = self.rejected / f"{safe}_{fingerprint(cert)[:16]}.der"
            saved.write_bytes(cert.public_bytes(Encoding.DER))
        except OSError as exc:
            _log.warning("could not save the refused server certificate: %s", exc)
        raise UntrustedServer(cert, saved, self.folder, "BadCertificateUntrusted", "not trusted")


class UntrustedServer(CertificateError):
    """The server's certificate is not in the client's trust list (or not valid now)."""

    def __init__(
        self, cert: x509.Certificate, saved: Path | None, folder: Path, code: str, why: str
    ) -> None:
        self.code = code
        self.thumbprint = fingerprint(cert)
        self.subject = cert.subject.rfc4514_string()
        pki = folder.parent
        file = str(saved) if saved is not None else "SERVER_CERT.der"
        how = (
            f"if this is the right server, trust it with `gridtwin certs trust {file} --pki {pki}`"
            if code == "BadCertificateUntrusted"
            else "renew the server's certificate"
        )
        super().__init__(
            f"server certificate {why} ({code}): subject {self.subject}, sha256 thumbprint "
            f"{self.thumbprint}; expected a certificate in {folder}; {how}"
        )


@dataclass(frozen=True)
class OpcuaSecurity:
    """What an OPC UA server offers.

    Args:
        certificate, private_key: the server's certificate (DER/PEM) and key (PEM).
        trust: folder of trusted client certificates (None: any client certificate is accepted,
            logged as a warning: only for code that knows its peers).
        policies: secure policies offered (default all three in Sign and SignAndEncrypt).
        insecure: also offer the None policy and anonymous sessions.
        app_uri: application URI announced (must match the certificate's).
    """

    certificate: Path | None = None
    private_key: Path | None = None
    trust: Path | None = None
    policies: tuple[ua.SecurityPolicyType, ...] = field(default_factory=_secure_policies)
    insecure: bool = False
    app_uri: str | None = None
    #: more folders of trusted client certificates (a run's one-time link certificate)
    also_trust: tuple[Path, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_pki(cls, pki: Pki, *, insecure: bool = False) -> OpcuaSecurity:
        if not pki.exists():
            raise CertificateError(
                f"PKI folder {pki.root}: expected own/cert.der and own/key.pem (make them with "
                f"`gridtwin certs create --pki {pki.root}`), found none"
            )
        return cls(
            certificate=pki.cert, private_key=pki.key, trust=pki.trusted, insecure=insecure,
            app_uri=pki.app_uri(),
        )  # fmt: skip

    @classmethod
    def insecure_only(cls) -> OpcuaSecurity:
        """The None policy and anonymous sessions only (loopback tests, the embedded run)."""
        return cls(policies=(), insecure=True)

    def all_policies(self) -> list[ua.SecurityPolicyType]:
        from asyncua import ua

        out = list(self.policies)
        if self.insecure:
            out.insert(0, ua.SecurityPolicyType.NoSecurity)
        if not out:
            raise CertificateError("OPC UA: no security policy to offer")
        if self.policies and not (self.certificate and self.private_key):
            raise CertificateError(
                "OPC UA: secure policies need a certificate and a private key (gridtwin certs "
                "create), found none"
            )
        return out


async def apply_security(server: Any, security: OpcuaSecurity) -> None:
    """Set policies, certificate, key, application URI and trust list on an asyncua Server."""
    server.set_security_policy(security.all_policies())
    if security.app_uri:
        await server.set_application_uri(security.app_uri)
    if security.certificate and security.private_key:
        try:
            await server.load_certificate(str(security.certificate))
            await server.load_private_key(str(security.private_key))
        except (OSError, ValueError) as exc:
            raise CertificateError(
                f"OPC UA: cannot load certificate {security.certificate} / key "
                f"{security.private_key}: {exc}"
            ) from None
    if security.trust is not None:
        server.set_certificate_validator(TrustList(security.trust, *security.also_trust))
    elif security.policies:
        _log.warning("OPC UA: no trust list: any client certificate is accepted")
