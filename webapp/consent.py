"""OAuth consent through the redirect URI: Authorize (an admin, or the mailbox owner through a
consent link) and Microsoft's admin consent for app-only access.

A consent under way is an OAuthState row: the state's hash, the server, the PKCE verifier
(sealed), the hash of a random value kept in the browser's session, and the hash of the OAuth
settings it was started for. The callback checks, in this order, before any token request:
the state is known, it belongs to this browser (an answer opened in another browser leaves it
alone), it is claimed (deleted; of two answers with the same state one gets it), it is at most
STATE_MINUTES old, the `iss` of the answer is the expected issuer, compared as an exact string
(and present when the provider's metadata says it sends it, RFC 9207), and the server's OAuth
settings are still those it was started for; then `error=` is shown in words; a consent
link is claimed (once, atomically); only then is the code exchanged (with the verifier and the
client secret, at the token endpoint the secret was saved for) and the tokens stored.
"""
import hashlib
import ipaddress
import json
import secrets
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

from flask import current_app, request, session, url_for
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import delete, update
from sqlmodel import select

from . import audit, db, delivery, network
from .audit import Actor
from .credentials import OAUTH_DESTINATION, OAUTH_KINDS, seal, unseal
from .grants import client_for
from .slots import Busy, slots
from .mail import oauth
from .mail.deadline import Deadline, DeadlineExceeded
from .mail.egress import EgressRefused
from .models import ConsentLink, Credential, CredentialKind, MailServer, OAuthState, Portal, utcnow

STATE_MINUTES = 15
ISSUER_SECONDS = 5  # reading the issuer's metadata before the browser leaves
LINK_DAYS = 7
BROWSER_KEY = "oauth_browser"
# Last labels of names that are not public domains (special-use names, RFC 6761/6762/8375, and
# the usual intranet ones): Google refuses redirect URIs on them.
LOCAL_SUFFIXES = frozenset({"local", "localdomain", "internal", "intranet", "lan", "home", "corp", "arpa", "test",
                            "example", "invalid"})


NO_REFRESH_TOKEN_HINTS = {
    oauth.Provider.MICROSOFT: "add offline_access to the scope (the default has it), save, and authorize again",
    oauth.Provider.GOOGLE: "remove Mailroom's access in the Google account (Security → Third-party access), then "
                           "authorize again: Google sends a refresh token with a new consent",
    oauth.Provider.OTHER: "add offline_access to the scope (the default has it), or allow refresh tokens for this "
                          "client at the authorization server; save, and authorize again",
}


class ConsentError(Exception):
    """The consent cannot go on; str() in words, `hint` what to do, `status` for the page."""

    def __init__(self, summary: str, hint: str = "", status: int = 400):
        super().__init__(summary)
        self.summary, self.hint, self.status = summary, hint, status


@dataclass
class Outcome:
    title: str
    text: str
    hint: str = ""
    ok: bool = True
    server: MailServer | None = None
    portal: Portal | None = None
    from_server_page: bool = False  # started by Authorize or admin consent: the browser goes back there

    @classmethod
    def refused(cls, error: ConsentError) -> "Outcome":
        summary = error.summary[:1].upper() + error.summary[1:]
        return cls("The consent cannot go on", f"{summary}.", f"{error.hint}." if error.hint else "", ok=False)


OUTCOME_KEY = "oauth_outcome"


def keep_outcome(outcome: Outcome) -> None:
    """Remembered in the browser's session for the page the callback redirects to (so that the
    code and the state do not stay in the address bar)."""
    session[OUTCOME_KEY] = {"title": outcome.title, "text": outcome.text, "hint": outcome.hint, "ok": outcome.ok,
                            "server_id": outcome.server.id if outcome.server else None,
                            "server_label": outcome.server.label if outcome.server else "",
                            "portal_slug": outcome.portal.slug if outcome.portal else ""}


def kept_outcome() -> dict | None:
    return session.get(OUTCOME_KEY)


def take_outcome(server_id: int) -> dict | None:
    """The outcome of a consent for this server, shown once on its page."""
    kept = session.get(OUTCOME_KEY)
    if kept and kept.get("server_id") == server_id:
        return session.pop(OUTCOME_KEY)
    return None


def next_step(server: MailServer) -> str:
    """What the server's OAuth credential waits for: "authorize", "reauthorize", "admin_consent",
    or "" (nothing, or not OAuth). Admin consent given outside Mailroom (in Entra) cannot be
    seen: Entra gives an unconsented app a token without roles, which the service refuses, so
    an app-only server not consented here asks for it until a check passed."""
    credential = server.credential
    if credential is None or credential.kind not in OAUTH_KINDS:
        return ""
    if credential.kind == CredentialKind.OAUTH_DELEGATED:
        if credential.needs_reauthorization:
            return "reauthorize"
        return "" if credential.consented_at else "authorize"
    if credential.provider.get("provider") != oauth.Provider.MICROSOFT:
        return ""
    if credential.needs_reauthorization or not (credential.consented_at or server.last_check_ok):
        return "admin_consent"
    return ""


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


# -- where the provider sends the browser back --------------------------------------------------

def redirect_uri(portal: Portal) -> str:
    """The one callback of the whole app, under the portal's public base URL (this host if unset)."""
    base = (portal.base_url or request.host_url).rstrip("/")
    return base + url_for("oauth.callback")


def host_warning(portal: Portal, provider: str = "") -> str:
    """Said before consent starts: the most common causes of a redirect URI mismatch or refusal
    (what Microsoft or Google refuse only for them, or for an unknown provider)."""
    if not portal.base_url:
        return (f"This portal has no public base URL, so the redirect URI uses the address you are using now "
                f"({request.host_url.rstrip('/')}). Set the base URL in the portal's Settings if people reach "
                "Mailroom under another address.")
    base, here = urlsplit(portal.base_url), urlsplit(request.host_url)
    if (base.scheme, base.netloc.lower()) != (here.scheme, here.netloc.lower()):
        return (f"You are using Mailroom at {here.scheme}://{here.netloc}, but the portal's public base URL is "
                f"{base.scheme}://{base.netloc}: the provider sends the browser back there, so finish the "
                "consent from that address (or correct the base URL in the portal's Settings).")
    return redirect_host_warning(base.scheme, base.hostname or "", provider)


def redirect_host_warning(scheme: str, host: str, provider: str = "") -> str:
    """What providers refuse in a redirect URI: plain http off this machine (Microsoft and Google
    accept it only for localhost; RFC 6749 3.1.2.1 asks TLS of every redirection endpoint),
    and for Google a bare IP address or a name that is not a public domain."""
    host = host.lower().rstrip(".")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if host == "localhost" or (address is not None and address.is_loopback):
        return (f"The redirect URI points at this machine ({host}): the consent can only be completed in a "
                "browser on the machine Mailroom runs on. Set an https:// public base URL in the portal's "
                "Settings for anyone else.")
    if scheme != "https":
        who = ("Authorization servers commonly accept" if provider == oauth.Provider.OTHER
               else "Microsoft and Google accept")
        return (f"The redirect URI is plain http://: {who} that only for localhost. "
                "Set an https:// public base URL in the portal's Settings.")
    if provider not in ("", oauth.Provider.GOOGLE):
        return ""  # what follows is Google's rule alone
    if address is not None:
        return (f"The redirect URI uses the IP address {host}: Google does not accept an IP address there "
                "(Microsoft does). Use a domain name as the public base URL if you use Google.")
    if "." not in host or host.rsplit(".", 1)[1] in LOCAL_SUFFIXES:
        return (f"The redirect URI uses the local name {host}: Google accepts only public domain names "
                "(Microsoft accepts it). Use a public domain name as the base URL if you use Google.")
    return ""


# -- starting ----------------------------------------------------------------------------------

def start(portal: Portal, server: MailServer, purpose: str, started_by: str, link_id: str | None = None) -> str:
    """The provider's URL to send the browser to: consent ("consent") or admin consent ("admin_consent")."""
    credential = server.credential
    if credential is None or credential.kind not in OAUTH_KINDS:
        raise ConsentError("this server does not use OAuth 2.0", "choose Authentication “OAuth 2.0” and save")
    if not credential.secret:
        raise ConsentError("the client secret is missing", "enter the client secret and save")
    provider = credential.provider
    if purpose == "admin_consent" and provider.get("provider") != oauth.Provider.MICROSOFT:
        raise ConsentError("admin consent is Microsoft's", "choose the delegated flow for this provider")
    client = client_for(provider, unseal(credential.secret), redirect_uri(portal))
    destination = _destination(credential)
    try:
        with slots().hold(portal.id, server.id, server.max_connections):  # resolving may wait on DNS
            db.release()
            _check_egress(portal, client, purpose)
            issuer, iss_required = _issuer_of(portal, provider)
    except Busy as busy:
        raise ConsentError(str(busy), "try again in a moment", status=429) from None
    state, verifier = secrets.token_urlsafe(32), oauth.new_verifier()
    if BROWSER_KEY not in session:
        session[BROWSER_KEY] = secrets.token_urlsafe(32)
    db.session().execute(delete(OAuthState).where(OAuthState.created_at < utcnow() - timedelta(minutes=STATE_MINUTES)))
    db.session().add(OAuthState(id=_hash(state), server_id=server.id, purpose=purpose,
                                browser=_hash(session[BROWSER_KEY]), verifier=seal({"verifier": verifier}),
                                redirect_uri=client.redirect_uri, issuer=issuer, iss_required=iss_required,
                                destination=destination, started_by=started_by, link_id=link_id))
    db.session().commit()
    if purpose == "admin_consent":
        return oauth.admin_consent_url(client.token_url, client.client_id, client.redirect_uri, state)
    return oauth.authorization_url(client, state, verifier, login_hint=credential.username)


def _check_egress(portal: Portal, client: oauth.Client, purpose: str) -> None:
    """Before the browser leaves for the provider: the portal's egress policy must allow the token
    endpoint (Mailroom exchanges the code there) and the sign-in page, or the consent is wasted.
    A name that does not resolve now is left to the code exchange to report."""
    endpoints = [("token URL", client.token_url)]
    if purpose == "consent":
        endpoints.append(("authorization URL", client.authorize_url))
    net = network.for_portal(portal)
    for what, url in endpoints:
        parts = urlsplit(url)
        try:
            net.resolve(parts.hostname or "", parts.port or (80 if parts.scheme == "http" else 443), Deadline(5))
        except EgressRefused as refused:
            raise ConsentError(f"the {what} cannot be used: {refused}",
                               "if it is right, a super-admin can allow it (“Egress policy” in the top bar, or the "
                               "portal's “Settings”); then authorize again", status=403) from None
        except (OSError, UnicodeError, ValueError, DeadlineExceeded):
            continue


def _issuer_of(portal: Portal, provider: dict) -> tuple[str, bool]:
    """(the issuer an authorization response may name, whether it must name it), RFC 9207. For
    Other, its metadata is read now: its `issuer` exactly, and whether it says it sends `iss`
    (authorization_response_iss_parameter_supported). Metadata that cannot be read leaves the
    configured issuer, compared when an answer names one."""
    if provider.get("provider") == oauth.Provider.GOOGLE and provider.get("authorize_url") == oauth.GOOGLE_AUTHORIZE:
        return "https://accounts.google.com", False  # Google's own endpoints: its own issuer
    if provider.get("provider") != oauth.Provider.OTHER or not provider.get("issuer"):
        return "", False  # Microsoft names the tenant's GUID, which a domain or "organizations" does not tell
    configured = str(provider["issuer"])
    try:
        metadata = oauth.discover(configured, network.for_portal(portal), Deadline(ISSUER_SECONDS))
    except (oauth.OAuthFailure, EgressRefused, DeadlineExceeded, OSError, ValueError):
        return configured, False
    return str(metadata["issuer"]), metadata.get("authorization_response_iss_parameter_supported") is True


def _destination(credential: Credential) -> str:
    """What a consent is for: the kind, the mailbox and the OAuth settings (endpoints, client,
    tenant, scope), hashed. A consent started before they changed does not finish."""
    settings = {name: str(credential.provider.get(name, "")) for name in (*OAUTH_DESTINATION, "scope", "flow")}
    return _hash(json.dumps({"kind": credential.kind, "mailbox": credential.username, **settings}, sort_keys=True))


# -- coming back -------------------------------------------------------------------------------

def callback(args) -> Outcome:
    """Handle the provider's answer; ConsentError when it cannot be trusted (nothing is asked
    of the token endpoint then)."""
    state = args.get("state", "")
    if not state:
        raise ConsentError("the answer carries no state", "start again from Mailroom")
    record = db.session().get(OAuthState, _hash(state))
    if record is None:
        raise ConsentError("this answer was already used, has expired, or was not started here",
                           "start again from Mailroom")
    if record.browser != _hash(session.get(BROWSER_KEY, "")):  # left alone: it is the other browser's
        raise ConsentError("this answer belongs to another browser",
                           "finish the consent in the browser that started it")
    if not _claim(record):
        raise ConsentError("this answer was already used", "start again from Mailroom")
    if utcnow() - _aware(record.created_at) > timedelta(minutes=STATE_MINUTES):
        raise ConsentError(f"more than {STATE_MINUTES} minutes passed since the consent started",
                           "start again from Mailroom")
    _check_issuer(record, args)
    server = db.session().exec(select(MailServer).where(MailServer.id == record.server_id)).unique().first()
    portal = db.session().get(Portal, server.portal_id)
    if server.credential is None or _destination(server.credential) != record.destination:
        raise ConsentError("the server's OAuth settings changed since this consent started, so it would not be "
                           "for the settings saved now", "authorize again from the server's page", status=409)
    outcome = _answer(server, portal, record, args)
    outcome.from_server_page = record.link_id is None
    return outcome


def _answer(server: MailServer, portal: Portal, record: OAuthState, args) -> Outcome:
    if args.get("error"):
        failure = oauth.OAuthFailure(args["error"], args.get("error_description", ""), None,
                                     server.credential.provider.get("provider", ""))
        _note_failure(server, portal, record, failure)
        return Outcome("The consent did not complete", f"The provider said: {failure.summary}.", failure.hint,
                       ok=False, server=server, portal=portal)
    if record.purpose == "admin_consent":
        return _admin_consented(server, portal, record, args)
    if not args.get("code"):
        raise ConsentError("the answer carries neither a code nor an error", "start again from Mailroom")
    return _exchange(server, portal, record, args["code"])


def _claim(record: OAuthState) -> bool:
    """Delete the state: of two answers with the same state, one gets it."""
    deleted = db.session().execute(delete(OAuthState).where(OAuthState.id == record.id))
    db.session().commit()
    return deleted.rowcount == 1


def _check_issuer(record: OAuthState, args) -> None:
    """RFC 9207: the `iss` of the answer is the expected issuer, as an exact string; required when
    the provider's metadata says it sends it (else a mix-up could strip it)."""
    issuer = args.get("iss")
    if issuer is None:
        if record.iss_required:
            raise ConsentError(f"the answer does not name its issuer, though {record.issuer} says it always does",
                               "someone may be mixing up authorization servers: start again from Mailroom")
        return
    if record.issuer and issuer != record.issuer:
        raise ConsentError(f"the answer names the issuer {issuer}, not {record.issuer}",
                           "someone may be mixing up authorization servers: start again from Mailroom")


def _exchange(server: MailServer, portal: Portal, record: OAuthState, code: str) -> Outcome:
    if record.link_id and not _claim_link(record.link_id):
        raise ConsentError("this consent link was already used", "ask the admin who sent it for a new one",
                           status=410)
    try:
        outcome = _exchange_code(server, portal, record, code)
    except Exception:
        _release_link(record.link_id)
        raise
    if not outcome.ok:
        _release_link(record.link_id)  # nothing came of it: the link may be used again
    return outcome


def _exchange_code(server: MailServer, portal: Portal, record: OAuthState, code: str) -> Outcome:
    credential = server.credential
    payload = unseal(credential.secret)
    client = client_for(credential.provider, payload, record.redirect_uri)
    verifier = unseal(record.verifier)["verifier"]
    revision = credential.revision
    net = network.for_server(portal, server)
    try:
        with slots().hold(portal.id, server.id, server.max_connections):
            db.release()
            tokens = oauth.exchange_code(client, code, verifier, net, Deadline(float(server.timeout) + 10))
    except Busy as busy:
        return Outcome("The consent did not complete", f"{busy}", "authorize again in a moment", ok=False,
                       server=server, portal=portal)
    except (oauth.OAuthFailure, EgressRefused, DeadlineExceeded) as error:
        failure = oauth.as_failure(error, client.provider)
        _note_failure(server, portal, record, failure)
        return Outcome("The consent did not complete", f"Exchanging the code for tokens failed: {failure.summary}.",
                       failure.hint, ok=False, server=server, portal=portal)
    if not tokens.refresh_token:
        hint = NO_REFRESH_TOKEN_HINTS.get(client.provider, NO_REFRESH_TOKEN_HINTS[oauth.Provider.OTHER])
        _note_failure(server, portal, record, oauth.OAuthFailure("no_refresh_token", hint, None, client.provider))
        return Outcome("The consent did not complete", "The provider gave no refresh token, so Mailroom "
                       "could send mail only until the access token expires.", hint, ok=False, server=server,
                       portal=portal)
    credential = db.session().get(Credential, credential.id, populate_existing=True)
    if credential.revision != revision:
        raise ConsentError("the server's OAuth settings changed while the consent was under way",
                           "authorize again from the server's page", status=409)
    account = tokens.account or credential.username
    credential.secret = seal({**payload, "access_token": tokens.access_token, "refresh_token": tokens.refresh_token})
    credential.revision += 1
    credential.expires_at, credential.granted_scopes = tokens.expires_at, tokens.scope
    credential.consented_by, credential.consented_at, credential.refreshed_at = account, utcnow(), None
    credential.last_error, credential.needs_reauthorization = "", False
    db.session().add(credential)
    audit.record(_actor(record, account), "server.authorized", f"“{server.label}”",
                 {"consented_by": [None, account], "scope": [None, tokens.scope]}, portal.id)
    db.session().commit()
    delivery.release_held(server, "its OAuth authorization was renewed")
    text = f"Mailroom can now send mail as {credential.username} through “{server.label}” ({portal.name})."
    if tokens.account and tokens.account.lower() != credential.username.lower():
        text += (f" Note: the consent was given by {tokens.account}, not by {credential.username}; mail goes out "
                 f"as {credential.username} only if {tokens.account} may send as that mailbox.")
    return Outcome("Authorized", text, server=server, portal=portal)


def _admin_consented(server: MailServer, portal: Portal, record: OAuthState, args) -> Outcome:
    if args.get("admin_consent", "").lower() != "true":
        raise ConsentError("the answer says neither that consent was granted nor why not",
                           "start again from Mailroom")
    credential = server.credential
    # A token fetched before the consent carries no roles (Entra issues it all the same): fetch a new one
    credential.secret, credential.expires_at = seal({k: v for k, v in unseal(credential.secret).items()
                                                     if k != "access_token"}), None
    credential.consented_by = f"a tenant administrator ({args.get('tenant', 'tenant not named')})"
    credential.consented_at, credential.last_error, credential.needs_reauthorization = utcnow(), "", False
    db.session().add(credential)
    audit.record(_actor(record, "a tenant administrator"), "server.admin_consented", f"“{server.label}”",
                 {"tenant": [None, args.get("tenant", "")]}, portal.id)
    db.session().commit()
    return Outcome("Admin consent granted",
                   f"The app may now act for the tenant {args.get('tenant', '')}: run Validate on “{server.label}” to "
                   "obtain an app-only token (Microsoft may take a few minutes to apply new permissions).",
                   server=server, portal=portal)


def _note_failure(server: MailServer, portal: Portal, record: OAuthState, failure: oauth.OAuthFailure) -> None:
    credential = db.session().get(Credential, server.credential.id, populate_existing=True)
    credential.last_error = f"{failure.summary}. {failure.hint}"[:500]
    db.session().add(credential)
    audit.record(_actor(record, ""), "server.authorization_failed", f"“{server.label}”",
                 {"reason": [None, failure.summary]}, portal.id)
    db.session().commit()


def _actor(record: OAuthState, account: str) -> Actor:
    who = f"OAuth consent by {account}" if account else f"OAuth consent started by {record.started_by}"
    return Actor(who[:254])


def _aware(moment):
    from datetime import UTC

    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


# -- consent links -------------------------------------------------------------------------------

def _links() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt="mailroom-consent-link")


def make_link(actor: Actor, portal: Portal, server: MailServer) -> str:
    """A link for the mailbox owner: signed, for this server only, valid LINK_DAYS, usable once."""
    if server.credential is None or server.credential.kind != CredentialKind.OAUTH_DELEGATED:
        raise ConsentError("consent links are for the delegated OAuth flow")
    link = ConsentLink(id=secrets.token_urlsafe(24), server_id=server.id, created_by=actor.label,
                       expires_at=utcnow() + timedelta(days=LINK_DAYS))
    db.session().add(link)
    audit.record(actor, "server.consent_link", f"“{server.label}”", {}, portal.id)
    db.session().commit()
    return url_for("oauth.link", link=_links().dumps({"link": link.id, "server": server.id}), _external=True)


def open_link(token: str) -> tuple[ConsentLink, MailServer, Portal]:
    try:
        data = _links().loads(token, max_age=LINK_DAYS * 86400)
    except BadSignature:
        raise ConsentError("this consent link is not valid (or has expired)",
                           "ask the admin who sent it for a new one", status=404) from None
    link = db.session().get(ConsentLink, str(data.get("link", "")))
    if link is None or link.server_id != data.get("server"):
        raise ConsentError("this consent link is not valid", "ask the admin who sent it for a new one", status=404)
    if link.used_at is not None:
        raise ConsentError("this consent link was already used", "ask the admin who sent it for a new one",
                           status=410)
    if _aware(link.expires_at) < utcnow():
        raise ConsentError("this consent link has expired", "ask the admin who sent it for a new one", status=410)
    server = db.session().exec(select(MailServer).where(MailServer.id == link.server_id)).unique().one()
    return link, server, db.session().get(Portal, server.portal_id)


def _claim_link(link_id: str) -> bool:
    """Mark the link used in one statement: of two browsers that come back at once, one gets it
    (before anything is asked of the token endpoint)."""
    claimed = db.session().execute(update(ConsentLink).where(ConsentLink.id == link_id, ConsentLink.used_at.is_(None))
                                   .values(used_at=utcnow()))
    db.session().commit()
    return claimed.rowcount == 1


def _release_link(link_id: str | None) -> None:
    if link_id:
        db.session().rollback()
        db.session().execute(update(ConsentLink).where(ConsentLink.id == link_id).values(used_at=None))
        db.session().commit()

