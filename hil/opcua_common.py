"""Server set-up shared by the emulated substation's and the twin's OPC UA servers.

Safe defaults over asyncua's (FIELD-NOTES): the servers bind 127.0.0.1 unless told otherwise,
the caller names every security policy and identity token explicitly, and the user manager never
grants ``UserRole.Admin`` (that would bypass asyncua's access checks on the standard nodes).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Sequence
from typing import Any

from asyncua import Server, ua
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.user_managers import UserManager

_log = logging.getLogger(__name__)


class PasswordUserManager(UserManager):
    """UserName logins checked against a password each, optional anonymous sessions.

    Every accepted session is a plain ``UserRole.User``, never ``UserRole.Admin``. Subclasses say
    which password a user has (:meth:`_password`) and whether anonymous sessions are accepted
    (:meth:`_anonymous_ok`).
    """

    #: what the "login refused" log line calls the server
    server_label = "OPC UA"
    #: where that line goes (a server sets its own module's logger)
    _log: logging.Logger = _log

    def _password(self, username: str) -> str | None:
        """The password of ``username`` (None: no such user). Runs on every UserName login."""
        raise NotImplementedError

    def _anonymous_ok(self) -> bool:
        """Whether an anonymous session is accepted. Runs on every anonymous login."""
        raise NotImplementedError

    def get_user(
        self,
        iserver: Any,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        # certificate is passed even for Anonymous/UserName tokens: it does not identify a user
        if username is None:
            return User(role=UserRole.User, name=None) if self._anonymous_ok() else None
        expected = self._password(username)
        if expected is None or not hmac.compare_digest(
            expected.encode(), (password or "").encode()
        ):
            self._log.info("%s login refused for user %r", self.server_label, username)
            return None
        return User(role=UserRole.User, name=username)


async def new_server(
    *,
    endpoint: str,
    name: str,
    user_manager: UserManager,
    security_policies: Sequence[ua.SecurityPolicyType],
    identity_tokens: Sequence[type],
    certificate: str | None = None,
    private_key: str | None = None,
) -> Server:
    """An initialised, not yet started asyncua Server with explicit endpoint, policies and users.

    The certificate and private key are loaded only when both are given (signed policies need
    them).
    """
    server = Server(user_manager=user_manager)
    await server.init()
    server.set_endpoint(endpoint)
    server.set_server_name(name)
    server.set_security_policy(list(security_policies))
    server.set_identity_tokens(list(identity_tokens))
    if certificate and private_key:
        await server.load_certificate(certificate)
        await server.load_private_key(private_key)
    return server
