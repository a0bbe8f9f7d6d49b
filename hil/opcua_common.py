"""Server set-up shared by the emulated substation's and the twin's OPC UA servers.

Safe defaults over asyncua's (FIELD-NOTES): the servers bind 127.0.0.1 unless told otherwise,
the caller names every security policy and identity token explicitly, and the user manager never
grants ``UserRole.Admin`` (that would bypass asyncua's access checks on the standard nodes).

Security (:class:`hil.security.certs.OpcuaSecurity`): certificates, the trust list of client
certificates, the None policy only when insecure. Logins: passwords are checked against a hash
(:mod:`hil.security.users`) or, for users made by code (the embedded emulator of a run), a
password held in memory; failed logins back off per user name (:class:`LoginGuard`). Every
session's user carries the client certificate it came with (``user.certificate``, for the
audit) and the peer address (``peer_of_current_request()`` inside a write).
"""

from __future__ import annotations

import contextvars
import hmac
import logging
import math
from collections.abc import Sequence
from typing import Any

from asyncua import Server, ua
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.user_managers import UserManager

from hil.security.certs import OpcuaSecurity, apply_security, describe
from hil.security.users import LoginGuard, UserEntry
from twin.quality import Quality, Sample

_log = logging.getLogger(__name__)

#: Quality -> status code: a value whose quality is not GOOD is never served as Good.
QUALITY_STATUS: dict[Quality, int] = {
    Quality.GOOD: ua.StatusCodes.Good,
    Quality.STALE: ua.StatusCodes.UncertainLastUsableValue,
    Quality.INVALID: ua.StatusCodes.BadWaitingForInitialData,
    Quality.COMMS_LOST: ua.StatusCodes.BadCommunicationError,
}


def status_code(sample: Sample) -> int:
    """The OPC UA status code of a sample: :data:`QUALITY_STATUS`, and BadSensorFailure for an
    INVALID sample whose value is NaN (marked not available, rather than never set)."""
    if sample.quality is Quality.INVALID and not math.isfinite(sample.value):
        return ua.StatusCodes.BadSensorFailure
    return QUALITY_STATUS[sample.quality]


_PEER: contextvars.ContextVar[str] = contextvars.ContextVar("gridtwin_opcua_peer", default="")


def peer_of_current_request() -> str:
    """``host:port`` of the client whose request is being served ('' outside a request)."""
    return _PEER.get()


def user_label(user: Any) -> str:
    """Who a session is, for the audit: user name (or anonymous) and client certificate."""
    name = getattr(user, "name", None) or "anonymous"
    cert = getattr(user, "certificate", "")
    return f"{name} [{cert}]" if cert else name


class PasswordUserManager(UserManager):
    """UserName logins checked against a password each, optional anonymous sessions.

    Every accepted session is a plain ``UserRole.User``, never ``UserRole.Admin``. Subclasses say
    which secret a user has (:meth:`_password`: a plain string made by code, or a
    :class:`UserEntry` with a hash) and whether anonymous sessions are accepted
    (:meth:`_anonymous_ok`).
    """

    #: what the "login refused" log line calls the server
    server_label = "OPC UA"
    #: where that line goes (a server sets its own module's logger)
    _log: logging.Logger = _log
    guard: LoginGuard | None = None

    def _password(self, username: str) -> str | UserEntry | None:
        """The password or hash entry of ``username`` (None: no such user)."""
        raise NotImplementedError

    def _anonymous_ok(self) -> bool:
        """Whether an anonymous session is accepted. Runs on every anonymous login."""
        raise NotImplementedError

    def _guard(self) -> LoginGuard:
        if self.guard is None:
            self.guard = LoginGuard()
        return self.guard

    def get_user(
        self,
        iserver: Any,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        # certificate is passed even for Anonymous/UserName tokens: it does not identify a user,
        # but the audit names it
        cert = describe(certificate) if certificate else ""
        if username is None:
            if not self._anonymous_ok():
                self._log.info("%s anonymous login refused %s", self.server_label, cert)
                return None
            user = User(role=UserRole.User, name=None)
            user.certificate = cert  # type: ignore[attr-defined]
            return user
        guard = self._guard()
        wait = guard.locked(username)
        if wait > 0:
            guard.refused_locked += 1
            self._log.warning(
                "%s login refused for user %r: locked for %.1f s after failed logins",
                self.server_label, username, wait,
            )  # fmt: skip
            return None
        expected = self._password(username)
        if isinstance(expected, UserEntry):
            ok = expected.check(password or "")
        elif expected is not None:
            ok = hmac.compare_digest(expected.encode(), (password or "").encode())
        else:
            ok = False
        if not ok:
            lock = guard.failed(username)
            self._log.warning(
                "%s login refused for user %r%s", self.server_label, username,
                f" (now locked for {lock:g} s)" if lock else "",
            )  # fmt: skip
            return None
        guard.succeeded(username)
        user = User(role=UserRole.User, name=username)
        user.certificate = cert  # type: ignore[attr-defined]
        return user


def _track_peers(server: Server) -> None:
    """Make each session's writes know the peer address (asyncua names sessions by it)."""
    iserver = server.iserver
    create = iserver.create_session

    def create_session(name: Any, user: Any = None, external: bool = False) -> Any:
        session = (
            create(name, user=user, external=external)
            if user is not None
            else create(name, external=external)
        )
        if not external:
            return session
        peer = name
        if isinstance(name, tuple) and len(name) >= 2:
            host = str(name[0])
            peer = f"[{host}]:{name[1]}" if ":" in host else f"{host}:{name[1]}"
        write = session.write

        async def peer_write(params: ua.WriteParameters) -> Any:
            token = _PEER.set(str(peer))
            try:
                return await write(params)
            finally:
                _PEER.reset(token)

        session.write = peer_write  # type: ignore[method-assign]
        return session

    iserver.create_session = create_session  # type: ignore[method-assign]


#: Connections an OPC UA server keeps at once (asyncua's default is 1000).
MAX_CONNECTIONS = 64
#: A connection that has not activated a session after this long is closed (asyncua: 30 s).
PENDING_ACTIVATION_S = 10.0


class _EvictingClients(list):
    """asyncua's list of open connections; asking its length at the cap (what a new
    connection does, asyncua 2.1 ``OPCUAProtocol.connection_made``) first closes the oldest
    connection without an activated session."""

    def __init__(self, items: Any, cap: int) -> None:
        super().__init__(items)
        self.cap = cap
        self.evicted = 0

    def __len__(self) -> int:
        n = list.__len__(self)
        if n >= self.cap:
            for proto in self[:]:  # a plain list: list(self) would ask __len__ again
                proc = getattr(proto, "processor", None)
                session = getattr(proc, "session", None)
                if session is None or not session.is_activated():
                    _log.warning(
                        "OPC UA: %d connections (cap): closing %s, which has no session",
                        n, getattr(proto, "peer_name", "?"),
                    )  # fmt: skip
                    transport = getattr(proto, "transport", None)
                    if transport is not None:
                        transport.close()
                    self.remove(proto)  # connection_lost would, a loop turn later
                    self.evicted += 1
                    return n - 1
        return n


def limit_connections(server: Server, cap: int = MAX_CONNECTIONS) -> None:
    """After ``server.start()``: at ``cap`` connections a new one closes the oldest connection
    without an activated session (so idle sockets cannot lock a legitimate client out); when
    every connection has a session, asyncua refuses the new one as before."""
    bserver = getattr(server, "bserver", None)
    if bserver is None or not isinstance(getattr(bserver, "clients", None), list):
        _log.warning("OPC UA: asyncua server layout unknown, connection cap not installed")
        return
    server.iserver.max_connections = cap
    bserver.clients = _EvictingClients(bserver.clients, cap)


async def new_server(
    *,
    endpoint: str,
    name: str,
    user_manager: UserManager,
    security_policies: Sequence[ua.SecurityPolicyType] = (),
    identity_tokens: Sequence[type],
    certificate: str | None = None,
    private_key: str | None = None,
    security: OpcuaSecurity | None = None,
) -> Server:
    """An initialised, not yet started asyncua Server with explicit endpoint, policies and users.

    With ``security`` its policies, certificate, key and trust list are used (and
    ``security_policies``/``certificate``/``private_key`` are ignored); without it the listed
    policies and files (loaded only when both are given) and no trust list.
    """
    server = Server(user_manager=user_manager)
    await server.init()
    server.set_endpoint(endpoint)
    server.set_server_name(name)
    if security is not None:
        await apply_security(server, security)
    else:
        server.set_security_policy(list(security_policies))
        if certificate and private_key:
            await server.load_certificate(certificate)
            await server.load_private_key(private_key)
    server.set_identity_tokens(list(identity_tokens))
    server.iserver.max_pending_activation_seconds = PENDING_ACTIVATION_S
    _track_peers(server)
    return server
