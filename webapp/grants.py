"""Token sources for OAuth credentials (mail/auth.py TokenSource), kept alive in the database.

- A delegated grant gives its stored access token while it is fresh, and otherwise refreshes
  it first, asking for what was granted (Microsoft: the configured scope, which it requires;
  others: no scope, which RFC 6749 6 reads as the scope originally granted, so a provider
  that granted less than asked is not asked again for what it withheld). The newest refresh
  token (providers rotate them) is written with the new access token, in one write, as a
  compare-and-set on the credential's revision; the server's version is untouched, so no
  open edit form becomes stale. Two refreshes at once do not race: one at a time per
  credential in a process, and across processes the one that loses the compare-and-set (or
  gets invalid_grant for a refresh token the other one just used) reads the winner's token
  instead.
- An app-only credential (Microsoft client credentials) fetches a token when its stored one
  is not fresh, and stores it the same way.
- When a refresh shows that the grant has ended (invalid_grant: revoked, expired; or the
  person must sign in again) the credential is marked "re-authorization needed" with the
  reason in words; a refused scope or client secret is reported, not marked, since a new
  consent would not cure it. An app-only or service-account credential is marked on any
  failure only a person can fix.
- The stored access token does not vouch for what it cannot prove: while the credential is
  marked "re-authorization needed", and when a client secret (or key) is typed for a check,
  a new token is obtained instead (with the typed secret, which is never stored).

No database connection is held while a token endpoint is awaited.
"""
import threading
from collections import defaultdict
from dataclasses import replace
from datetime import UTC, datetime

from sqlalchemy import update

from . import audit, db, network
from .credentials import CredentialValues, seal, unseal
from .delivery import notices
from .mail import oauth
from .mail.auth import AccessToken
from .mail.deadline import Deadline, DeadlineExceeded
from .mail.egress import EgressRefused, Network
from .mail.report import StepFailed
from .models import Credential, CredentialKind, MailServer, Portal, utcnow

_locks: dict[int, threading.Lock] = defaultdict(threading.Lock)
REFRESHER = audit.Actor("token refresh")
# Errors of a delegated refresh that say the grant itself has ended (RFC 6749 5.2 invalid_grant;
# OpenID Connect Core 3.1.2.6 for the person having to act again).
GRANT_ENDED = frozenset({"invalid_grant", "interaction_required", "consent_required", "login_required"})


def client_for(provider: dict, secret: dict, redirect_uri: str = "") -> oauth.Client:
    return oauth.Client(provider=provider.get("provider", ""), client_id=provider.get("client_id", ""),
                        client_secret=secret.get("client_secret", ""), authorize_url=provider.get("authorize_url", ""),
                        token_url=provider.get("token_url", ""), scope=provider.get("scope", ""),
                        redirect_uri=redirect_uri)


def token_endpoint(kind: str, provider: dict, secret: dict) -> str:
    """The URL a credential's token requests go to, the one place that decides it: a service
    account's key's token_uri (oauth.service_account_token posts there), any other kind's token URL
    (the code exchange, a refresh, client credentials: oauth.Client.token_url)."""
    if kind == CredentialKind.SERVICE_ACCOUNT:
        return oauth.service_account_token_url(secret.get("key") or {})
    return client_for(provider, secret).token_url


def grant_for(credential: Credential | None, values: CredentialValues, secret: dict, net: Network):
    """The token source for a credential: the stored grant when `credential` is given (a
    client secret typed for this check is used, not stored), else one that lives only for
    this check (unsaved values). Token endpoints are reached through `net`."""
    if credential is None:
        if values.kind == CredentialKind.OAUTH_APP:
            return DraftAppGrant(client_for(values.provider, secret), net)
        if values.kind == CredentialKind.SERVICE_ACCOUNT and secret.get("key"):
            return DraftServiceAccountGrant(secret["key"], values.username, values.provider.get("scope", ""), net)
        return NotAuthorized("the server is not saved with these OAuth settings yet: save, then click "
                             "Authorize", token_endpoint(values.kind, values.provider, secret))
    typed = values.secret or {}  # what was typed for this check, beside the stored secret
    endpoint = token_endpoint(credential.kind, credential.provider, secret)  # what _renew will post to
    if credential.kind == CredentialKind.SERVICE_ACCOUNT:
        return StoredGrant(credential.id, net, endpoint, key=typed.get("key") or None)
    return StoredGrant(credential.id, net, endpoint, typed.get("client_secret") or None)


class NotAuthorized:
    def __init__(self, hint: str, endpoint: str = ""):
        self.hint = hint
        self._endpoint = endpoint  # where the code exchange, then the refreshes, will go once authorized

    def token(self, deadline: Deadline) -> AccessToken:
        raise StepFailed("no OAuth authorization yet", self.hint, credentials=True)

    def endpoint(self) -> str:
        return self._endpoint


class DraftAppGrant:
    """Client credentials with settings typed into the form: nothing is stored."""

    def __init__(self, client: oauth.Client, net: Network):
        self.client, self.net = client, net

    def token(self, deadline: Deadline) -> AccessToken:
        try:
            tokens = oauth.client_credentials(self.client, self.net, deadline)
        except oauth.OAuthFailure as failure:
            raise _words(failure) from None
        return AccessToken(tokens.access_token, tokens.expires_at, tuple(tokens.scope.split()), refreshed=True)

    def endpoint(self) -> str:
        return self.client.token_url  # as token_endpoint() decides for client credentials


class DraftServiceAccountGrant:
    """A service-account key uploaded into the form, not saved: a token for this check only."""

    def __init__(self, key: dict, subject: str, scope: str, net: Network):
        self.key, self.subject, self.scope, self.net = key, subject, scope, net

    def token(self, deadline: Deadline) -> AccessToken:
        try:
            tokens = oauth.service_account_token(self.key, self.subject, self.scope, self.net, deadline)
        except oauth.OAuthFailure as failure:
            raise _words(failure) from None
        return AccessToken(tokens.access_token, tokens.expires_at, tuple(tokens.scope.split()), refreshed=True)

    def endpoint(self) -> str:
        return oauth.service_account_token_url(self.key)  # as token_endpoint() decides for a key


class StoredGrant:
    def __init__(self, credential_id: int, net: Network, endpoint: str, client_secret: str | None = None,
                 key: dict | None = None):
        self.credential_id, self.net = credential_id, net
        self._endpoint = endpoint  # token_endpoint() of the credential as it was read with its secret
        self.client_secret = client_secret  # a secret typed into the form for this check, not stored
        self.key = key  # a service-account key uploaded for this check, not stored

    @property
    def typed(self) -> bool:
        """A secret (or key) typed for this check: it is tried itself, and nothing it got is kept
        beyond what the grant needs."""
        return bool(self.client_secret or self.key)

    def endpoint(self) -> str:
        return self._endpoint

    def token(self, deadline: Deadline) -> AccessToken:
        credential, payload = self._load()
        if self._stored_serves(credential, payload):
            return _access(payload["access_token"], credential, refreshed=False)
        with _locks[self.credential_id]:  # one refresh at a time in this process
            credential, payload = self._load()  # another thread may have refreshed meanwhile
            if self._stored_serves(credential, payload):
                return _access(payload["access_token"], credential, refreshed=False)
            return self._renew(credential, payload, deadline)

    def _stored_serves(self, credential: Credential, payload: dict) -> bool:
        if self.typed or credential.needs_reauthorization:
            return False
        return oauth.Tokens(payload.get("access_token", ""), _aware(credential.expires_at)).fresh()

    def _load(self) -> tuple[Credential, dict]:
        credential = db.session().get(Credential, self.credential_id, populate_existing=True)
        if credential is None:
            raise StepFailed("the server's credential is gone", "reload the page")
        payload = unseal(credential.secret) if credential.secret else {}
        if self.client_secret:
            payload["client_secret"] = self.client_secret
        if self.key:
            payload["key"] = self.key
        return credential, payload

    def _renew(self, credential: Credential, payload: dict, deadline: Deadline) -> AccessToken:
        client = client_for(credential.provider, payload)
        app_only = credential.kind in (CredentialKind.OAUTH_APP, CredentialKind.SERVICE_ACCOUNT)
        if not app_only and not payload.get("refresh_token"):
            raise StepFailed("no OAuth authorization yet: nobody has consented for this server",
                             "click Authorize on the server's page (or send the mailbox owner a consent link)",
                             credentials=True)
        revision = credential.revision
        db.release()
        try:
            if credential.kind == CredentialKind.SERVICE_ACCOUNT:
                tokens = oauth.service_account_token(payload.get("key") or {}, credential.username,
                                                     credential.provider.get("scope", ""), self.net, deadline)
            elif app_only:
                tokens = oauth.client_credentials(client, self.net, deadline)
            else:
                tokens = oauth.refresh(_for_refresh(client), payload["refresh_token"], self.net, deadline)
        except oauth.OAuthFailure as failure:
            current, fresh_payload = self._load()
            if current.revision != revision and fresh_payload.get("access_token") and not self.typed:
                return _access(fresh_payload["access_token"], current, refreshed=True)  # another one won
            # Delegated: only an answer that says the grant ended (not a refused scope or secret);
            # app-only and service accounts: what only a new consent fixes (never a service account's key)
            ended = failure.reauthorize if app_only else failure.error in GRANT_ENDED
            if ended and not self.typed:
                mark_needs_reauthorization(current, failure)
            raise _words(failure, needs_reauthorization=ended or current.needs_reauthorization) from None
        scopes = tuple((tokens.scope or credential.granted_scopes).split())
        if self.typed and app_only:  # a token for this check only: the stored one stays
            return AccessToken(tokens.access_token, tokens.expires_at, scopes, refreshed=True)
        own = unseal(credential.secret) if credential.secret else {}  # without a secret typed for this check
        stored = {**own, "access_token": tokens.access_token}
        if tokens.refresh_token:
            stored["refresh_token"] = tokens.refresh_token
        # A compare-and-set: if another process refreshed at the same moment, its tokens are
        # stored (this write does nothing) and ours are valid all the same.
        db.session().execute(
            update(Credential).where(Credential.id == credential.id, Credential.revision == revision).values(
                secret=seal(stored), revision=revision + 1, expires_at=tokens.expires_at, refreshed_at=utcnow(),
                granted_scopes=tokens.scope or credential.granted_scopes, last_error="",
                needs_reauthorization=False, updated_at=utcnow()).execution_options(synchronize_session=False))
        db.session().commit()
        return AccessToken(tokens.access_token, tokens.expires_at, scopes, refreshed=True)


def _for_refresh(client: oauth.Client) -> oauth.Client:
    """Microsoft wants the scope on a refresh (one resource per token); Google documents none;
    any other server gets none, which RFC 6749 6 reads as "what was granted"."""
    return client if client.provider == oauth.Provider.MICROSOFT else replace(client, scope="")


def _access(value: str, credential: Credential, refreshed: bool) -> AccessToken:
    return AccessToken(value, _aware(credential.expires_at), tuple(credential.granted_scopes.split()), refreshed)


def _aware(moment: datetime | None) -> datetime | None:
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment


def _words(failure: oauth.OAuthFailure, needs_reauthorization: bool = False) -> StepFailed:
    """`credentials`: only a person can fix it (the delivery queue holds the mail meanwhile)."""
    state = "re-authorization needed: " if needs_reauthorization else ""
    return StepFailed(f"{state}{failure.headline}", failure.hint, temporary=not failure.permanent,
                      credentials=failure.permanent)


def mark_needs_reauthorization(credential: Credential, failure: oauth.OAuthFailure) -> None:
    """A failure only a person can fix: say so on the server's pages (and in History, once)."""
    words = f"{failure.summary}. {failure.hint}"[:500]
    first = not credential.needs_reauthorization
    db.session().execute(update(Credential).where(Credential.id == credential.id).values(
        needs_reauthorization=True, last_error=words, updated_at=utcnow()).execution_options(
        synchronize_session=False))
    if first:
        server = db.session().get(MailServer, credential.server_id)
        audit.record(REFRESHER, "server.reauthorization_needed", f"“{server.label}”", {"reason": [None, words]},
                     server.portal_id)
    db.session().commit()
    if first:
        notices.reauthorization_needed(credential.server_id, words)


def refresh_quiet_grants(older_than_hours: float = 24) -> list[tuple[str, str]]:
    """Refresh every delegated grant not refreshed for `older_than_hours` (for cron, so that
    unused grants do not expire); [(server label, outcome in words)]."""
    from datetime import timedelta

    from sqlmodel import select

    limit = utcnow() - timedelta(hours=older_than_hours)
    rows = db.session().exec(select(Credential, MailServer, Portal).join(
        MailServer, MailServer.id == Credential.server_id).join(Portal, Portal.id == MailServer.portal_id).where(
        Credential.kind == CredentialKind.OAUTH_DELEGATED, Credential.secret.is_not(None))).all()
    outcomes = []
    for credential, server, portal in rows:
        refreshed = credential.refreshed_at or credential.consented_at
        if refreshed is not None and _aware(refreshed) > limit:
            continue
        if not credential.secret or "refresh_token" not in unseal(credential.secret):
            continue
        payload = unseal(credential.secret)
        grant = StoredGrant(credential.id, network.for_server(portal, server),
                            token_endpoint(credential.kind, credential.provider, payload))
        try:
            grant._renew(credential, payload, Deadline(float(server.timeout) + 10))
            outcomes.append((f"{portal.slug}/{server.label}", "refreshed"))
        except StepFailed as failure:
            outcomes.append((f"{portal.slug}/{server.label}", f"failed: {failure.summary}"))
        except (EgressRefused, DeadlineExceeded) as error:
            failure = oauth.as_failure(error, credential.provider.get("provider", ""))
            outcomes.append((f"{portal.slug}/{server.label}", f"failed: {failure.summary}"))
    return outcomes
