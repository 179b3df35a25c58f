"""OAuth 2.0 for sending mail: providers and their clouds, the default scopes, the consent
URL (PKCE S256), the code exchange, refresh, client credentials and discovery. No Flask.

Every request goes through mail/http.py (the egress policy, one deadline). Token requests
are RFC 6749 form posts with client_secret_post; errors come back as OAuthFailure, whose
words say what the provider's error usually means. Never call a token endpoint without a
code for a code exchange (authlib's fetch_token would silently do client credentials).

The providers, clouds, scopes and URLs are read by every protocol's registration and the forms; the
functions that make requests import requests and mail/http.py (urllib3, python-socks) themselves, so
a process that never talks OAuth never loads them.
"""
import base64
import json
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from urllib.parse import quote, urlencode, urlsplit

from .deadline import Deadline, DeadlineExceeded
from .egress import EgressRefused, Network
from .oauth_errors import SERVICE_ACCOUNT, explain
from .urls import url_problem


class Provider(StrEnum):
    MICROSOFT = "microsoft"
    GOOGLE = "google"
    OTHER = "other"


class Cloud(StrEnum):
    GLOBAL = "global"
    GCC_HIGH = "gcc_high"
    DOD = "dod"
    CHINA = "china"


class Flow(StrEnum):
    DELEGATED = "delegated"  # a person consents; refresh tokens
    APP = "app"  # client credentials (Microsoft only)


PROVIDER_LABELS = {Provider.MICROSOFT: "Microsoft 365", Provider.GOOGLE: "Google", Provider.OTHER: "Other"}
FLOW_LABELS = {Flow.DELEGATED: "Delegated: the mailbox owner consents",
               Flow.APP: "App-only: client credentials, admin consent"}
CLOUD_LABELS = {Cloud.GLOBAL: "Global", Cloud.GCC_HIGH: "US Government GCC High", Cloud.DOD: "US Government DoD",
                Cloud.CHINA: "China (21Vianet)"}
# cloud -> (login authority, Graph root): https://learn.microsoft.com/graph/deployments
CLOUDS = {
    Cloud.GLOBAL: ("https://login.microsoftonline.com", "https://graph.microsoft.com"),
    Cloud.GCC_HIGH: ("https://login.microsoftonline.us", "https://graph.microsoft.us"),
    Cloud.DOD: ("https://login.microsoftonline.us", "https://dod-graph.microsoft.us"),
    Cloud.CHINA: ("https://login.chinacloudapi.cn", "https://microsoftgraph.chinacloudapi.cn"),
}
# cloud -> the Exchange Online resource that SMTP AUTH and EWS tokens are for (its scopes are
# "<resource>/SMTP.Send", "<resource>/EWS.AccessAsUser.All", "<resource>/.default"). Microsoft's own
# list: CSS-Exchange, Shared/AzureFunctions/Get-CloudServiceEndpoint.ps1
# (https://github.com/microsoft/CSS-Exchange), and the Exchange Online hosts of
# https://learn.microsoft.com/microsoft-365/enterprise/microsoft-365-u-s-government-gcc-high-endpoints and
# https://learn.microsoft.com/microsoft-365/enterprise/microsoft-365-u-s-government-dod-endpoints.
EXCHANGE = {
    Cloud.GLOBAL: "https://outlook.office365.com",
    Cloud.GCC_HIGH: "https://outlook.office365.us",
    Cloud.DOD: "https://outlook-dod.office365.us",
    Cloud.CHINA: "https://partner.outlook.cn",
}
GOOGLE_AUTHORIZE = "https://accounts.google.com/o/oauth2/v2/auth"
GOOGLE_TOKEN = "https://oauth2.googleapis.com/token"


def _microsoft_scopes(cloud: Cloud) -> dict[tuple, str]:
    exchange, graph = EXCHANGE[cloud], CLOUDS[cloud][1]
    # Microsoft documents SMTP.Send of the global cloud under outlook.office.com (the same service principal)
    smtp = "https://outlook.office.com" if cloud == Cloud.GLOBAL else exchange
    # A bare scope means the global Graph; a national cloud's Graph is named in full
    mail_send = "Mail.Send" if cloud == Cloud.GLOBAL else f"{graph}/Mail.Send"
    return {
        (Provider.MICROSOFT, "smtp", Flow.DELEGATED, cloud): f"{smtp}/SMTP.Send offline_access",
        (Provider.MICROSOFT, "smtp", Flow.APP, cloud): f"{exchange}/.default",
        (Provider.MICROSOFT, "ews", Flow.DELEGATED, cloud): f"{exchange}/EWS.AccessAsUser.All offline_access",
        (Provider.MICROSOFT, "ews", Flow.APP, cloud): f"{exchange}/.default",
        (Provider.MICROSOFT, "graph", Flow.DELEGATED, cloud): f"{mail_send} offline_access",
        (Provider.MICROSOFT, "graph", Flow.APP, cloud): f"{graph}/.default",
    }


# (provider, protocol, flow, cloud) -> the scope to ask for; Google's have the cloud GLOBAL
DEFAULT_SCOPES = {
    **{key: scope for cloud in Cloud for key, scope in _microsoft_scopes(cloud).items()},
    (Provider.GOOGLE, "smtp", Flow.DELEGATED, Cloud.GLOBAL): "https://mail.google.com/",
    (Provider.GOOGLE, "gmail", Flow.DELEGATED, Cloud.GLOBAL): "https://www.googleapis.com/auth/gmail.send",
}
SIGN_IN_SCOPES = "openid email"  # asked for besides, so the token response says who consented
# Provider Other: an OpenID provider's sign-in and a refresh token (OpenID Connect Core 11:
# offline_access; Okta, Auth0 and Ory Hydra issue refresh tokens only for it). The admin adds
# what the mail server wants in its tokens.
OTHER_SCOPE = "openid offline_access"
EARLY = timedelta(minutes=5)  # an access token this close to its expiry is refreshed first


def default_scope(provider: str, protocol: str, flow: str, cloud: str = Cloud.GLOBAL) -> str:
    if provider == Provider.OTHER:
        return OTHER_SCOPE
    cloud = cloud if provider == Provider.MICROSOFT and cloud in CLOUDS else Cloud.GLOBAL
    return DEFAULT_SCOPES.get((provider, protocol, flow, cloud), "")  # StrEnum keys match plain strings


def endpoints(provider: str, cloud: str | None = Cloud.GLOBAL, tenant: str | None = "") -> tuple[str, str]:
    """(authorization URL, token URL) of a known provider; ("", "") for Other."""
    if provider == Provider.MICROSOFT:
        tenant = (tenant or "").strip() or "organizations"
        authority = f"{CLOUDS.get(cloud, CLOUDS[Cloud.GLOBAL])[0]}/{tenant}/oauth2/v2.0"
        return f"{authority}/authorize", f"{authority}/token"
    if provider == Provider.GOOGLE:
        return GOOGLE_AUTHORIZE, GOOGLE_TOKEN
    return "", ""


def admin_consent_url(token_url: str, client_id: str, redirect_uri: str, state: str) -> str:
    """Microsoft's admin-consent endpoint of the tenant, beside its token endpoint."""
    base = token_url.rsplit("/oauth2/", 1)[0]
    return f"{base}/adminconsent?{urlencode({'client_id': client_id, 'redirect_uri': redirect_uri, 'state': state})}"


@dataclass(frozen=True)
class Client:
    """An app registration as the provider knows it."""
    provider: str
    client_id: str
    client_secret: str = field(repr=False)
    authorize_url: str
    token_url: str
    scope: str
    redirect_uri: str = ""


@dataclass
class Tokens:
    access_token: str = field(repr=False)
    expires_at: datetime | None
    scope: str = ""
    refresh_token: str | None = field(default=None, repr=False)
    account: str = ""  # who signed in, when the provider says (id_token claims)

    def fresh(self, now: datetime | None = None) -> bool:
        return bool(self.access_token) and (self.expires_at is None or
                                            self.expires_at - (now or datetime.now(UTC)) > EARLY)


class OAuthFailure(Exception):
    """The provider (or the way to it) said no. `error`/`description` as the provider wrote
    them; str() and `hint` in words (mail/oauth_errors.py); `permanent` when only a person can
    fix it (a new consent, a new secret or key), not a retry; `reauthorize` when only a new
    consent can (the grant is dead: never for a service account, which has no consent);
    `headline` is the sentence a failed Token step shows. `grant` is "service_account" for
    Google's JWT bearer grant."""

    def __init__(self, error: str, description: str = "", status: int | None = None, provider: str = "",
                 grant: str = ""):
        self.error, self.description, self.status, self.provider, self.grant = error, description, status, provider, \
            grant
        words = explain(error, description, provider, grant)
        self.summary, self.hint, self.permanent, self.reauthorize = words.summary, words.hint, words.permanent, \
            words.reauthorize
        self.headline = words.sentence(error)
        super().__init__(self.summary)


def new_verifier() -> str:
    return secrets.token_urlsafe(48)


def authorization_url(client: Client, state: str, verifier: str, login_hint: str = "") -> str:
    from authlib.oauth2.rfc7636 import create_s256_code_challenge

    scope = client.scope
    if client.provider in (Provider.MICROSOFT, Provider.GOOGLE):
        scope = " ".join(dict.fromkeys([*scope.split(), *SIGN_IN_SCOPES.split()]))
    params = {"response_type": "code", "client_id": client.client_id, "redirect_uri": client.redirect_uri,
              "scope": scope, "state": state, "code_challenge": create_s256_code_challenge(verifier),
              "code_challenge_method": "S256"}
    if client.provider == Provider.GOOGLE:
        params.update(access_type="offline", prompt="consent")  # else no refresh token
    if client.provider == Provider.MICROSOFT:
        params["prompt"] = "select_account"
    if login_hint:
        params["login_hint"] = login_hint
    return f"{client.authorize_url}{'&' if '?' in client.authorize_url else '?'}{urlencode(params)}"


def exchange_code(client: Client, code: str, verifier: str, network: Network, deadline: Deadline,
                  transcript: list[str] | None = None) -> Tokens:
    return _token_request(client, {"grant_type": "authorization_code", "code": code, "code_verifier": verifier,
                                   "redirect_uri": client.redirect_uri}, network, deadline, transcript,
                          "authorization code")


def refresh(client: Client, refresh_token: str, network: Network, deadline: Deadline,
            transcript: list[str] | None = None) -> Tokens:
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    if client.scope:  # else, RFC 6749 6: the scope originally granted
        form["scope"] = client.scope
    tokens = _token_request(client, form, network, deadline, transcript, "refresh")
    tokens.refresh_token = tokens.refresh_token or refresh_token  # a provider that does not rotate
    return tokens


def client_credentials(client: Client, network: Network, deadline: Deadline,
                       transcript: list[str] | None = None) -> Tokens:
    return _token_request(client, {"grant_type": "client_credentials", "scope": client.scope}, network,
                          deadline, transcript, "client credentials")


def _token_request(client: Client, form: dict, network: Network, deadline: Deadline,
                   transcript: list[str] | None, what: str) -> Tokens:
    methods = _client_auth_methods(client.provider)
    for method in methods:
        fields, headers = _client_authentication(client, form, method)
        response = _post(client.token_url, fields, network, deadline, transcript, what, client.provider, headers)
        body = _json(response, client.provider)
        if body.get("error") != "invalid_client" or method == methods[-1]:
            break
    if response.status_code != 200 or "error" in body:
        raise OAuthFailure(str(body.get("error") or f"http_{response.status_code}"),
                           str(body.get("error_description") or ""), response.status_code, client.provider)
    if not body.get("access_token"):
        raise OAuthFailure("no_access_token", "the token endpoint answered without an access token", 200,
                           client.provider)
    expires_in = body.get("expires_in")
    expires_at = datetime.now(UTC) + timedelta(seconds=int(expires_in)) if str(expires_in or "").isdigit() else None
    return Tokens(access_token=body["access_token"], expires_at=expires_at,
                  scope=str(body.get("scope") or form.get("scope") or ""),
                  refresh_token=body.get("refresh_token"), account=_account(body.get("id_token")))


def _client_auth_methods(provider: str) -> tuple[str, ...]:
    """How the app proves itself at the token endpoint, in the order tried. Microsoft and Google
    take the secret in the form; any other server must accept HTTP Basic (RFC 6749 2.3.1), and
    some accept nothing else, while others want the form: Basic first, the form once more after
    an invalid_client (the secret goes only to the same saved token URL either way)."""
    if provider in (Provider.MICROSOFT, Provider.GOOGLE):
        return ("client_secret_post",)
    return ("client_secret_basic", "client_secret_post")


def _client_authentication(client: Client, form: dict, method: str) -> tuple[dict, dict]:
    if method == "client_secret_basic":
        pair = f"{quote(client.client_id, safe='')}:{quote(client.client_secret, safe='')}"
        return form, {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}
    return {**form, "client_id": client.client_id, "client_secret": client.client_secret}, {}


def discover(issuer: str, network: Network, deadline: Deadline) -> dict:
    """The authorization server's metadata (RFC 8414, then OpenID discovery); its issuer must
    be the one asked for."""
    import requests

    from . import http

    issuer = issuer.rstrip("/")
    last: Exception | None = None
    for path in ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"):
        parts = urlsplit(issuer)
        url = (f"{parts.scheme}://{parts.netloc}{path}{parts.path}" if path.endswith("server") and parts.path
               else f"{issuer}{path}")
        try:
            response = http.session(network, deadline).get(url)
        except requests.RequestException as error:
            last = error
            continue
        if response.status_code != 200:
            continue
        try:
            metadata = response.json()
        except (ValueError, RecursionError):  # RecursionError: JSON nested without bound
            raise OAuthFailure("discovery_failed", f"{url}: the answer is not JSON", 200, Provider.OTHER) from None
        if not isinstance(metadata, dict):
            raise OAuthFailure("discovery_failed", f"{url}: the answer is not a JSON object", 200, Provider.OTHER)
        if str(metadata.get("issuer", "")).rstrip("/") != issuer:
            raise OAuthFailure("issuer_mismatch", f"the metadata names the issuer {metadata.get('issuer')!r}, "
                                                  f"not {issuer!r}", 200, Provider.OTHER)
        if not metadata.get("token_endpoint"):
            raise OAuthFailure("no_token_endpoint", "the metadata has no token_endpoint", 200, Provider.OTHER)
        return metadata
    why = (str(last) if isinstance(last, http.AnswerRefused) else http.reason(last)) if last else ""
    raise OAuthFailure("discovery_failed", f"no metadata found under {issuer}" + (f" ({why})" if why else ""),
                       None, Provider.OTHER)


def as_failure(error: Exception, provider: str) -> "OAuthFailure":
    """A failure on the way to the token endpoint that the transports report as their own step
    (an egress refusal, the deadline), as an OAuthFailure for the pages that only speak OAuth."""
    if isinstance(error, OAuthFailure):
        return error
    if isinstance(error, EgressRefused):
        return OAuthFailure("egress_refused", f"{error.host} port {error.port}, {error.reason}", None, provider)
    if isinstance(error, DeadlineExceeded):
        return OAuthFailure("timeout", "", None, provider)
    raise error


def _post(url: str, form: dict, network: Network, deadline: Deadline, transcript, what: str, provider: str,
          headers: dict | None = None, grant: str = ""):
    import requests

    from . import http

    host = http.host_of(url)
    try:
        response = http.session(network, deadline).post(url, data=form,
                                                        headers={"Accept": "application/json", **(headers or {})})
    except requests.exceptions.SSLError as error:
        raise OAuthFailure("tls", f"{host} ({http.reason(error)})", None, provider, grant) from None
    except http.AnswerRefused as error:  # too large, cut off, or a redirect: never read past the limit
        raise OAuthFailure("unreadable_answer", str(error), None, provider, grant) from None
    except requests.Timeout:
        raise OAuthFailure("timeout", host, None, provider, grant) from None
    except requests.ConnectionError as error:
        raise OAuthFailure("unreachable", f"{host} ({http.reason(error)})", None, provider, grant) from None
    except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema):
        raise OAuthFailure("unreachable", "the token URL cannot be used", None, provider, grant) from None
    if transcript is not None:
        http.record(transcript, response, what)
    return response


def _json(response, provider: str, grant: str = "") -> dict:
    try:
        body = response.json()
    except (ValueError, RecursionError):  # RecursionError: JSON nested without bound
        raise OAuthFailure("not_json", f"HTTP {response.status_code}", response.status_code, provider,
                           grant) from None
    return body if isinstance(body, dict) else {}


def _account(id_token: str | None) -> str:
    """Who signed in, from the id_token the token endpoint sent over TLS (display only)."""
    if not id_token or id_token.count(".") != 2:
        return ""
    try:
        payload = id_token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, UnicodeDecodeError):
        return ""
    return str(claims.get("email") or claims.get("preferred_username") or claims.get("upn") or "")


# -- Google service accounts (RFC 7523 JWT bearer, domain-wide delegation) ---------------------

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GMAIL_SEND = "https://www.googleapis.com/auth/gmail.send"


def check_service_account_key(key: dict) -> str:
    """Why `key` is not a usable service-account key, in words; "" when it is."""
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    if key.get("type") != "service_account":
        return "this is not a service-account key (its type is not “service_account”)"
    for name in ("client_email", "private_key", "token_uri"):
        if name not in key or key[name] in ("", None):
            return f"the key has no {name}"
        if not isinstance(key[name], str) or not key[name].strip():
            return f"the key's {name} is not text"
    if not re.fullmatch(r"[^@\s]+@[^@\s]+", key["client_email"]):
        return "the key's client_email is not an address"
    problem = url_problem(key["token_uri"])
    if problem:
        return f"the key's token_uri is not an https:// address that can be used ({problem})"
    try:
        private_key = load_pem_private_key(key["private_key"].encode(), password=None)
    except (ValueError, TypeError):
        return "the key's private_key cannot be read"
    if not isinstance(private_key, rsa.RSAPrivateKey):
        return "the key's private_key is not an RSA key (Google signs service-account tokens with RS256)"
    return ""


def service_account_token_url(key: dict) -> str:
    """Where a service-account key's tokens come from: its token_uri (the JWT's audience and the URL
    posted to; Google's is https://oauth2.googleapis.com/token)."""
    return str(key.get("token_uri") or "")


def service_account_token(key: dict, subject: str, scope: str, network: Network, deadline: Deadline,
                          transcript: list[str] | None = None) -> Tokens:
    """An access token for `subject` (the mailbox), from a JWT signed with the key (RS256)."""
    from joserfc import jwt
    from joserfc.jwk import RSAKey

    now = int(datetime.now(UTC).timestamp())
    token_url = service_account_token_url(key)
    claims = {"iss": key["client_email"], "sub": subject, "scope": scope, "aud": token_url,
              "iat": now, "exp": now + 3600}
    header = {"alg": "RS256", "typ": "JWT", **({"kid": key["private_key_id"]} if key.get("private_key_id") else {})}
    assertion = jwt.encode(header, claims, RSAKey.import_key(key["private_key"]))
    response = _post(token_url, {"grant_type": JWT_BEARER, "assertion": assertion}, network, deadline,
                     transcript, "service account", Provider.GOOGLE, grant=SERVICE_ACCOUNT)
    body = _json(response, Provider.GOOGLE, SERVICE_ACCOUNT)
    if response.status_code != 200 or "error" in body or not body.get("access_token"):
        raise OAuthFailure(str(body.get("error") or f"http_{response.status_code}"),
                           str(body.get("error_description") or ""), response.status_code, Provider.GOOGLE,
                           SERVICE_ACCOUNT)
    expires_in = body.get("expires_in")
    expires_at = datetime.now(UTC) + timedelta(seconds=int(expires_in)) if str(expires_in or "").isdigit() else None
    # Google's answer names no scope (a service account gets exactly what the signed request asked, or an error)
    return Tokens(access_token=body["access_token"], expires_at=expires_at, scope=str(body.get("scope") or scope))
