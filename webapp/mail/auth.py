"""How a transport signs in: the credential as a transport sees it.

The web layer turns a stored credential into one of these; a transport only ever uses
them. A password is a password whatever produced it; a bearer token comes from a
TokenSource (a delegated OAuth grant, client credentials, a service-account key), so
SMTP XOAUTH2, EWS, Graph and the Gmail API share one token path.
"""
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from .deadline import Deadline


class AuthType(StrEnum):
    """What an admin chooses under "Authentication"."""

    NONE = "none"
    BASIC = "basic"
    OAUTH = "oauth"
    SERVICE_ACCOUNT = "service_account"


AUTH_LABELS = {
    AuthType.NONE: "None",
    AuthType.BASIC: "Basic",
    AuthType.OAUTH: "OAuth 2.0",
    AuthType.SERVICE_ACCOUNT: "Service account key",
}


@dataclass(frozen=True)
class NoAuth:
    username: str = ""


@dataclass(frozen=True)
class PasswordAuth:
    username: str
    password: str = field(repr=False)
    mechanism: str = "auto"  # SMTP: auto | PLAIN | LOGIN | CRAM-MD5


@dataclass(frozen=True)
class AccessToken:
    value: str = field(repr=False)
    expires_at: datetime | None
    scopes: tuple[str, ...] = ()
    refreshed: bool = False  # True when this use obtained a new token, False when a stored one was still good


class TokenSource(Protocol):
    """Gives a valid access token, refreshing or obtaining one within the deadline.
    Raises StepFailed in words when it cannot."""

    def token(self, deadline: Deadline) -> AccessToken: ...

    def endpoint(self) -> str:
        """The token endpoint token() posts to when it asks for a token (for a grant nobody has
        authorized yet, the one its code exchange and refreshes will use; "" when none is known): what
        the egress policy must allow besides the server (mail/destinations.py)."""


@dataclass(frozen=True)
class BearerAuth:
    username: str  # the mailbox the token acts for
    tokens: TokenSource = field(repr=False)
    app_only: bool = False  # Microsoft client credentials: the app acts for the mailbox (EWS impersonates it)


Auth = NoAuth | PasswordAuth | BearerAuth


def token_step(auth: BearerAuth, deadline: Deadline):
    """Obtain the access token (refreshing it when needed): the "Token" step of every
    transport. Returns (Step, AccessToken); raises StepFailed in words."""
    from .report import step_result

    token = auth.tokens.token(deadline)
    how = "obtained a new access token" if token.refreshed else "the stored access token is still valid"
    details = [("Acts as", auth.username)]
    if token.expires_at:
        details.append(("Expires", token.expires_at.strftime("%Y-%m-%d %H:%M UTC")))
    if token.scopes:
        details.append(("Scopes", " ".join(token.scopes)))
    return step_result(how, details), token
