"""Who may act on the dashboard: the admin credential, and the CSRF token of its forms (pure).

Reading is open to whoever reaches the dashboard (bind it to loopback, or mount it behind the
application's own auth); every action needs the admin credential: HTTP Basic (``--auth
user:password``) or a bearer token (``AQUEUE_DASHBOARD_TOKEN``). A browser sends Basic
credentials by itself with any request to the site, so a Basic-authenticated action also
needs the CSRF token the dashboard's forms carry (a form field or the ``X-CSRF-Token``
header); a bearer token is never sent by a browser on its own and needs none.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from typing import Literal

from aqueue.exceptions import ConfigurationError

__all__ = ["Admin", "Verdict", "parse_auth"]

#: Why an action is refused, or ``"ok"``: refused actions answer 401 (no or wrong
#: credential) or 403 (read-only dashboard, or a missing or wrong CSRF token).
Verdict = Literal["ok", "read-only", "unauthenticated", "csrf"]


def parse_auth(text: str) -> tuple[str, str]:
    """``user:password`` as a pair.

    Raises:
        ConfigurationError: no colon, or an empty user or password.
    """
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise ConfigurationError("the admin credential must look like 'user:password'")
    return user, password


@dataclass(frozen=True)
class Admin:
    """The admin credential of one dashboard (none set: read-only).

    Args:
        basic: the ``(user, password)`` of HTTP Basic, or None.
        token: the bearer token, or None.
    """

    basic: tuple[str, str] | None = None
    token: str | None = None
    #: signs the CSRF token: new for every dashboard (a restart invalidates open forms)
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)

    def __post_init__(self) -> None:
        token: object = self.token  # run-time input: not every caller runs mypy
        if token is not None and (not isinstance(token, str) or len(token) < 8):
            raise ConfigurationError("the admin token must be a string of 8 characters or more")

    @property
    def enabled(self) -> bool:
        """Whether any action is possible."""
        return self.basic is not None or self.token is not None

    @property
    def csrf_token(self) -> str:
        """The token the dashboard's forms carry."""
        return hmac.new(self.secret, b"aqueue-dashboard-csrf", hashlib.sha256).hexdigest()

    def who(self, authorization: str | None) -> Literal["basic", "bearer"] | None:
        """How the ``Authorization`` header proves the admin credential, or None."""
        scheme, _, value = (authorization or "").partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer" and self.token is not None:
            return "bearer" if hmac.compare_digest(value.encode(), self.token.encode()) else None
        if scheme.lower() == "basic" and self.basic is not None:
            try:
                user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None
            same_user = hmac.compare_digest(user.encode(), self.basic[0].encode())
            same_password = hmac.compare_digest(password.encode(), self.basic[1].encode())
            return "basic" if same_user and same_password else None
        return None

    def verdict(self, authorization: str | None, csrf: str | None) -> Verdict:
        """Whether an action with these request parts may run."""
        if not self.enabled:
            return "read-only"
        how = self.who(authorization)
        if how is None:
            return "unauthenticated"
        if how == "basic" and not hmac.compare_digest(
            (csrf or "").encode(), self.csrf_token.encode()
        ):
            return "csrf"
        return "ok"
