"""OAuth consent through the redirect URI: Authorize (an admin, or the mailbox owner through a
consent link) and Microsoft's admin consent for app-only access.

A consent under way is an OAuthState row: the state's hash, the server, the PKCE verifier
(sealed), and the hash of a random value kept in the browser's session. The callback checks,
in this order, before any token request: the state is known and not used (it is deleted as it
is read), it belongs to this browser, it is at most STATE_MINUTES old, the `iss` of the answer
(if any) is the expected issuer; then `error=` is shown in words; only then is the code
exchanged (with the verifier and the client secret, at the token endpoint the secret was saved
for) and the tokens stored.
"""
import hashlib
import ipaddress
import secrets
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

from flask import current_app, request, session, url_for
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import delete
from sqlmodel import select

from . import audit, db, delivery, network
from .audit import Actor
from .credentials import OAUTH_KINDS, seal, unseal
from .grants import client_for
from .limits import Busy, slots
from .mail import oauth
from .mail.deadline import Deadline, DeadlineExceeded
from .mail.egress import EgressRefused
from .models import ConsentLink, Credential, CredentialKind, MailServer, OAuthState, Portal, utcnow

STATE_MINUTES = 15
LINK_DAYS = 7
BROWSER_KEY = "oauth_browser"
# Last labels of names that are not public domains (special-use names, RFC 6761/6762/8375, and
# the usual intranet ones): Google refuses redirect URIs on them.
LOCAL_SUFFIXES = frozenset({"local", "localdomain", "internal", "intranet", "lan", "home", "corp", "arpa", "test",
                            "example", "invalid"})


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


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


# -- where the provider sends the browser back --------------------------------------------------

def redirect_uri(portal: Portal) -> str:
    """The one callback of the whole app, under the portal's public base URL (this host if unset)."""
    base = (portal.base_url or request.host_url).rstrip("/")
    return base + url_for("oauth.callback")


def host_warning(portal: Portal) -> str:
    """Said before consent starts: the most common causes of a redirect URI mismatch or refusal."""
    if not portal.base_url:
        return (f"This portal has no public base URL, so the redirect URI uses the address you are using now "
                f"({request.host_url.rstrip('/')}). Set the base URL in the portal's Settings if people reach "
                "Mailroom under another address.")
    base, here = urlsplit(portal.base_url), urlsplit(request.host_url)
    if (base.scheme, base.netloc.lower()) != (here.scheme, here.netloc.lower()):
        return (f"You are using Mailroom at {here.scheme}://{here.netloc}, but the portal's public base URL is "
                f"{base.scheme}://{base.netloc}: the provider sends the browser back there, so finish the "
                "consent from that address (or correct the base URL in the portal's Settings).")
    return redirect_host_warning(base.scheme, base.hostname or "")


def redirect_host_warning(scheme: str, host: str) -> str:
    """What providers refuse in a redirect URI: plain http off this machine (Microsoft and Google
    accept it only for localhost), and for Google a bare IP address or a name that is not a
    public domain."""
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
        return ("The redirect URI is plain http://: Microsoft and Google accept that only for localhost. "
                "Set an https:// public base URL in the portal's Settings.")
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
    try:
        with slots().hold(portal.id, server.id, server.max_connections):  # resolving may wait on DNS
            _check_egress(portal, client, purpose)
    except Busy as busy:
        raise ConsentError(str(busy), "try again in a moment", status=429) from None
    state, verifier = secrets.token_urlsafe(32), oauth.new_verifier()
    if BROWSER_KEY not in session:
        session[BROWSER_KEY] = secrets.token_urlsafe(32)
    db.session().execute(delete(OAuthState).where(OAuthState.created_at < utcnow() - timedelta(minutes=STATE_MINUTES)))
    db.session().add(OAuthState(id=_hash(state), server_id=server.id, purpose=purpose,
                                browser=_hash(session[BROWSER_KEY]), verifier=seal({"verifier": verifier}),
                                redirect_uri=client.redirect_uri, issuer=expected_issuer(provider),
                                started_by=started_by, link_id=link_id))
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


def expected_issuer(provider: dict) -> str:
    """The issuer an authorization response may name (RFC 9207), where it is known."""
    if provider.get("provider") == oauth.Provider.GOOGLE and provider.get("authorize_url") == oauth.GOOGLE_AUTHORIZE:
        return "https://accounts.google.com"  # Google's own endpoints: its own issuer
    if provider.get("provider") == oauth.Provider.OTHER:
        return str(provider.get("issuer") or "").rstrip("/")
    return ""  # Microsoft names the tenant's GUID, which a domain or "organizations" does not tell


# -- coming back -------------------------------------------------------------------------------

def callback(args) -> Outcome:
    """Handle the provider's answer; ConsentError when it cannot be trusted (nothing is asked
    of the token endpoint then)."""
    state = args.get("state", "")
    if not state:
        raise ConsentError("the answer carries no state", "start again from Mailroom")
    record = _take(state)
    if record is None:
        raise ConsentError("this answer was already used, has expired, or was not started here",
                           "start again from Mailroom")
    if record.browser != _hash(session.get(BROWSER_KEY, "")):
        raise ConsentError("this answer belongs to another browser",
                           "finish the consent in the browser that started it")
    if utcnow() - _aware(record.created_at) > timedelta(minutes=STATE_MINUTES):
        raise ConsentError(f"more than {STATE_MINUTES} minutes passed since the consent started",
                           "start again from Mailroom")
    issuer = args.get("iss", "")
    if issuer and record.issuer and issuer.rstrip("/") != record.issuer:
        raise ConsentError(f"the answer names the issuer {issuer}, not {record.issuer}",
                           "someone may be mixing up authorization servers: start again from Mailroom")
    server = db.session().exec(select(MailServer).where(MailServer.id == record.server_id)).unique().first()
    portal = db.session().get(Portal, server.portal_id)
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


def _take(state: str) -> OAuthState | None:
    """Read and delete the state in one go: of two answers with the same state, one gets it."""
    record = db.session().get(OAuthState, _hash(state))
    if record is None:
        return None
    deleted = db.session().execute(delete(OAuthState).where(OAuthState.id == record.id))
    db.session().commit()
    return record if deleted.rowcount == 1 else None


def _exchange(server: MailServer, portal: Portal, record: OAuthState, code: str) -> Outcome:
    credential = server.credential
    payload = unseal(credential.secret)
    client = client_for(credential.provider, payload, record.redirect_uri)
    verifier = unseal(record.verifier)["verifier"]
    revision = credential.revision
    net = network.for_portal(portal)
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
        hint = "the provider gave no refresh token: the scope needs offline_access (Microsoft)"
        _note_failure(server, portal, record, oauth.OAuthFailure("no_refresh_token", hint, None, client.provider))
        return Outcome("The consent did not complete", "The provider gave no refresh token, so Mailroom "
                       "could send mail only for an hour.", "add offline_access to the scope (the default has "
                       "it), save, and authorize again", ok=False, server=server, portal=portal)
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
    _use_link(record)
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
    return url_for("oauth.link", token=_links().dumps({"link": link.id, "server": server.id}), _external=True)


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


def _use_link(record: OAuthState) -> None:
    if record.link_id:
        link = db.session().get(ConsentLink, record.link_id)
        if link is not None:
            link.used_at = utcnow()
            db.session().add(link)

