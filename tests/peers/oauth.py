"""Pytest plugin: a real OAuth 2.0 authorization server (authlib) over HTTPS on 127.0.0.1
(or over plain HTTP: the `http_oauth_server` fixture, a local authorization server such as
a developer's Keycloak on http://localhost, which Mailroom accepts on this machine).

It plays Microsoft's identity platform and Google's token endpoint for the tests:
authorization code with PKCE (S256 required), refresh tokens that rotate,
client credentials after admin consent, Google's JWT bearer grant for service
accounts, introspection (RFC 7662), revocation (RFC 7009) and RFC 8414
metadata. Everything lives in memory and is gone at the end of the test.
Until the plugin is registered, import the fixtures into the test module:
`from tests.peers.oauth import oauth_server, service_account_key  # noqa: F401`.

    def test_x(oauth_server):                       # started now, stopped at teardown
        oauth_server.add_user("alice@example.test", "alice-pw")
        oauth_server.register_client("app-id", "app-secret", ["https://app.test/cb"],
                                     scopes=None, app_roles={"SMTP.SendAsApp"})
        oauth_server.issuer           # "https://127.0.0.1:<port>" (cert from the test CA)
        oauth_server.authorize_url, .token_url, .introspect_url, .revoke_url,
        oauth_server.admin_consent_url, .metadata_url
        oauth_server.introspect(access_token)   # dict, or None when unknown/expired/revoked
        oauth_server.requests   # every token-endpoint request: {grant_type, client_id, tenant, scope,
                                #   outcome ("ok" or the error code), status, error_description}
        oauth_server.consents   # approvals: {username, client_id, scope, tenant} (admin consent too)
        oauth_server.revoke_grant(username, client_id=None, keep_access_tokens=False), .expire_access_tokens(),
        oauth_server.grant_admin_consent(client_id), .revoke_admin_consent(client_id)
        oauth_server.access_token_lifetime = 3600, .issue_iss = True, .rotate_refresh_tokens = True,
        oauth_server.known_tenants = set(), .code_lifetime = 60, .withheld_scopes = set(), .cloud = "global",
        .clock_offset = 0

    service_account_key(oauth_server, client_email=..., subjects=..., scopes=...)
        -> the dict of a Google service-account key file whose token_uri is this server

Microsoft-shaped aliases: /<tenant>/oauth2/v2.0/authorize, /<tenant>/oauth2/v2.0/token,
/<tenant>/adminconsent (and /<tenant>/v2.0/adminconsent). Any tenant is accepted
unless `known_tenants` is a non-empty set; "common", "organizations" and
"consumers" are always known. Client credentials on one of those three are
refused (AADSTS50059), as Microsoft does.

Endpoints and their errors (error_description texts are Microsoft's or Google's):
  /authorize        unknown client, missing or unregistered redirect_uri, unknown
                    tenant: an HTML error page (400), no redirect. Otherwise a
                    sign-in page (Username, Password, "Sign in and approve", "Deny").
                    PKCE S256 is required; prompt=none gives login_required.
  /token            authorization_code, refresh_token, client_credentials,
                    urn:ietf:params:oauth:grant-type:jwt-bearer. Clients
                    authenticate with client_secret_post or client_secret_basic.
  /introspect       any registered client may introspect access tokens.
  /revoke           a refresh token revokes its whole grant; an access token only itself.
  /adminconsent     sign-in page with "Accept" and "Cancel" (Microsoft's app-only consent).

How tokens are described (introspect()):
  sub        the user's username (code and refresh grants), the client_id (client
             credentials), the assertion's `sub` (JWT bearer; the client_email
             when the assertion has none).
  username   the user (same as sub) or the assertion's sub; None for client credentials.
  roles      the client's app_roles for client credentials, else [].
  aud        client credentials: the scope without "/.default"
             (https://graph.microsoft.com/.default -> https://graph.microsoft.com).
             Other grants: the origin (scheme://host) of the URL-shaped scopes when
             they all share one, e.g. https://outlook.office.com/SMTP.Send ->
             https://outlook.office.com; None when there is none or several
             (bare scopes such as "Mail.Send" or "offline_access" carry no resource).
  scope, client_id, exp, iat, grant_type, tenant, iss, token_type.

Strictness beyond RFC 6749: redirect_uri is required and must match exactly; on
the tenant paths a delegated token request whose scopes span several resources
is refused with AADSTS28000 (bare scopes other than openid/profile/email/
offline_access count as Microsoft Graph there). A refresh request may narrow the
scope to any part of what the user consented to. Refresh tokens do not expire;
authorization codes live `code_lifetime` (60) seconds.

Granting less than asked (`withheld_scopes`): RFC 6749 3.3 lets a server "fully or
partially ignore the scope requested" and then name the issued scope in the token
response, as Keycloak does with a scope not assigned to the client, or Okta and Auth0
with `offline_access` while still issuing a refresh token under their own policy. The
scopes in `withheld_scopes` are left out of what a consent grants (the code, the token
response's `scope`, introspection); a refresh token is still issued when offline access
was asked for. A refresh that asks for a withheld scope is refused with invalid_scope,
as RFC 6749 6 requires ("MUST NOT include any scope not originally granted"); a refresh
without `scope` gets what was granted.

`authorization_response_iss_parameter_supported` in the metadata follows `issue_iss`
(RFC 9207 2.3: a server that says so sends `iss` in every authorization response).

Faithful to Entra ID and Google where they differ from a textbook server:
  - `cloud` ("global", "gcc_high", "dod", "china"): the Microsoft cloud whose login authority
    this server plays. A scope naming a Microsoft resource of another cloud (Exchange or Graph
    of GCC High, DoD or China at the global authority, and so on) is refused on the tenant
    paths with invalid_resource AADSTS500011, at the authorization and the token endpoint,
    as Entra does (https://learn.microsoft.com/entra/identity-platform/reference-error-codes).
    GCC High and DoD share one authority (login.microsoftonline.us) and so each other's
    resources. On the tenant paths a token for bare (Graph) scopes has aud
    00000003-0000-0000-c000-000000000000, Graph's application ID, as Entra's v2 tokens do.
  - Client credentials before admin consent: Entra issues a token all the same, without a
    `roles` claim (the app has no application permission yet); the resource then refuses it
    ("Either scp or roles claim need to be present in the token." at Graph). So does this
    server: `roles` are the client's app_roles only after grant_admin_consent().
  - The token answers of client credentials (Entra: token_type, expires_in, access_token;
    https://learn.microsoft.com/entra/identity-platform/v2-oauth2-client-creds-grant-flow) and
    of Google's JWT bearer grant (access_token, expires_in, token_type;
    https://developers.google.com/identity/protocols/oauth2/service-account) carry no `scope`.
  - A declined admin consent redirects with error=permission_denied and "The admin canceled
    the request" (the client credentials flow's documented error response).
  - register_client(..., auth_methods=("client_secret_basic",)): a client that may authenticate
    only with HTTP Basic (RFC 6749 2.3.1), as some servers configure it; a client_secret_post
    request is then invalid_client.
"""
import hmac
import html
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

import pytest
import trustme
from authlib.common.urls import add_params_to_uri
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import (
    AccessDeniedError,
    AuthorizationCodeMixin,
    ClientMixin,
    InvalidClientError,
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Error,
    TokenMixin,
    UnauthorizedClientError,
    grants,
)
from authlib.oauth2.rfc6749.util import extract_basic_authorization
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7523 import JWTBearerGrant
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oauth2.rfc9207 import IssuerParameter
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask, Response, g, jsonify, request
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey

from tests.peers.https import HttpsPeer
from tests.peers.tls import server_context

JWT_BEARER = JWTBearerGrant.GRANT_TYPE
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
# The Microsoft resources each login authority knows (Graph and Exchange Online of its clouds):
# https://learn.microsoft.com/graph/deployments and Microsoft's CSS-Exchange Get-CloudServiceEndpoint.ps1
AUTHORITY_OF_CLOUD = {"global": "global", "gcc_high": "us_government", "dod": "us_government", "china": "china"}
MICROSOFT_RESOURCES = {
    "global": {"https://graph.microsoft.com", "https://outlook.office365.com", "https://outlook.office.com"},
    "us_government": {"https://graph.microsoft.us", "https://dod-graph.microsoft.us", "https://outlook.office365.us",
                      "https://outlook-dod.office365.us"},
    "china": {"https://microsoftgraph.chinacloudapi.cn", "https://partner.outlook.cn"},
}
DEFAULT_GRANT_TYPES = ("authorization_code", "refresh_token", "client_credentials")
GENERIC_TENANTS = {"common", "organizations", "consumers"}
NON_RESOURCE_SCOPES = {"openid", "profile", "email", "offline_access"}
CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]
JSON_HEADERS = {"Cache-Control": "no-store", "Pragma": "no-cache"}

# --- error texts --------------------------------------------------------------------

REDIRECT_MISMATCH = ("AADSTS50011: The redirect URI '{uri}' specified in the request does not match "
                     "the redirect URIs configured for the application '{client_id}'.")
UNKNOWN_APP = ("AADSTS700016: Application with identifier '{client_id}' was not found in the "
               "directory '{tenant}'. This can happen if the application has not been installed "
               "by the administrator of the tenant or consented to by any user in the tenant.")
MISSING_PARAMETER = "AADSTS900144: The request body must contain the following parameter: '{name}'."
UNKNOWN_TENANT = ("AADSTS90002: Tenant '{tenant}' not found. Check to make sure you have the correct "
                  "tenant ID and are signing into the correct cloud.")
BAD_SECRET = ("AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the "
              "request is the client secret value, not the client secret ID, for a secret added "
              "to app '{client_id}'.")
NO_SECRET = ("AADSTS7000218: The request body must contain the following parameter: 'client_assertion' "
             "or 'client_secret'.")
CODE_INVALID = "AADSTS70000: The provided value for the 'code' parameter is not valid."
CODE_REDEEMED = ("AADSTS54005: OAuth2 Authorization code was already redeemed, please retry with a "
                 "new valid code or use an existing refresh token.")
CODE_EXPIRED = ("AADSTS70008: The provided authorization code or refresh token has expired due to "
                "inactivity. Send a new interactive authorization request for this user and resource.")
REFRESH_INVALID = "AADSTS70000: The provided refresh token is invalid or expired."
GRANT_REVOKED = ("AADSTS50173: The provided grant has expired due to it being revoked, a fresh auth "
                 "token is needed. The user might have changed or reset their password.")
PKCE_MISMATCH = ("AADSTS501481: The Code_Verifier does not match the code_challenge supplied in the "
                 "authorization request.")
PKCE_REQUIRED = ("Proof Key for Code Exchange is required: send code_challenge and "
                 "code_challenge_method=S256.")
PKCE_METHOD = "Unsupported code_challenge_method: only S256 is accepted."
SEVERAL_RESOURCES = ("AADSTS28000: Provided value for the input parameter scope is not valid because "
                     "it contains more than one resource. Scope {scope} is not valid.")
NOT_DEFAULT_SCOPE = ("AADSTS1002012: The provided value for scope {scope} is not valid. Client "
                     "credential flows must have a scope value with /.default suffixed to the "
                     "resource identifier (application ID URI).")
SCOPE_NOT_GRANTED = "AADSTS65001: The user or administrator has not consented to use the scope {scope}."
# RFC 6749 5.2's own words for invalid_scope (what Keycloak-like servers answer)
SCOPE_EXCEEDS_GRANT = ("The requested scope is invalid, unknown, malformed, or exceeds the scope granted "
                       "by the resource owner: {scope}.")
NO_TENANT = ("AADSTS50059: No tenant-identifying information found in either the request or implied "
             "by any provided credentials.")
USER_DENIED = "The user denied the request."
ADMIN_CANCELED = "The admin canceled the request"
OTHER_CLOUD = ("AADSTS500011: The resource principal named {resource} was not found in the tenant named {tenant}. "
               "This can happen if the application has not been installed by the administrator of the tenant or "
               "consented to by any user in the tenant. You might have sent your authentication request to the "
               "wrong tenant.")
SILENT_SIGN_IN = "AADSTS50058: A silent sign-in request was sent but no user is signed in."
WRONG_LOGIN = "Wrong username or password."
# Google (oauth2.googleapis.com) for the JWT bearer grant
JWT_SIGNATURE = "Invalid JWT Signature."
JWT_ISSUER = "Invalid issuer: no service account with this client_email."
JWT_AUDIENCE = "Invalid JWT: Failed audience check. The expected audience is {aud}."
JWT_LIFETIME = ("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable "
                "timeframe. Check your iat and exp values in the JWT claim.")
JWT_NO_SCOPE = "Empty or missing scope not allowed."
JWT_UNAUTHORIZED = ("Client is unauthorized to retrieve access tokens using this method, or client "
                    "not authorized for any of the scopes requested.")


def safe(value: str) -> str:
    """RFC 6749 allows only %x20-21 / %x23-5B / %x5D-7E in error_description (authlib enforces it)."""
    return "".join(c if 0x20 <= ord(c) <= 0x7E and c not in '"\\' else "?" for c in value)


# --- scopes and resources -------------------------------------------------------------

def scope_list(scope: str | None) -> list[str]:
    return (scope or "").split()


def scope_resource(scope: str) -> str | None:
    """The resource a URL-shaped scope belongs to: its scheme://host; None for bare scopes."""
    parts = urlsplit(scope)
    if parts.scheme in ("https", "http") and parts.netloc:
        return f"{parts.scheme}://{parts.netloc}"
    return None


def delegated_audience(scope: str, microsoft: bool = False) -> str | None:
    """The resource of the URL-shaped scopes; on Microsoft's paths bare scopes are Graph's (its app ID)."""
    resources = {scope_resource(s) for s in scope_list(scope)} - {None}
    if microsoft and not resources and set(scope_list(scope)) - NON_RESOURCE_SCOPES:
        return GRAPH_APP_ID
    return resources.pop() if len(resources) == 1 else None


def app_only_audience(scope: str) -> str:
    return scope.removesuffix("/.default")


# Exchange Online answers to both names (one service principal).
RESOURCE_ALIASES = [{"https://outlook.office.com", "https://outlook.office365.com"}]


def same_resource(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return False
    a, b = a.rstrip("/").lower(), b.rstrip("/").lower()
    return a == b or any({a, b} <= names for names in RESOURCE_ALIASES)


def microsoft_resources(scope: str) -> set[str]:
    """Resources as Microsoft counts them: bare scopes (except the OpenID ones) are Graph's."""
    resources = set()
    for item in scope_list(scope):
        if item in NON_RESOURCE_SCOPES:
            continue
        resource = scope_resource(item)
        resources.add(resource.lower() if resource else "https://graph.microsoft.com")
    return resources


# --- records (authlib's model mixins) ----------------------------------------------------

@dataclass
class User:
    username: str
    password: str = field(repr=False)

    def get_user_id(self) -> str:
        return self.username


@dataclass(eq=False)
class Client(ClientMixin):
    client_id: str
    client_secret: str = field(repr=False)
    redirect_uris: list[str]
    scopes: set[str] | None = None  # None: any scope
    app_roles: frozenset[str] = frozenset()
    grant_types: tuple[str, ...] = DEFAULT_GRANT_TYPES
    admin_consented: bool = False
    auth_methods: tuple[str, ...] = tuple(CLIENT_AUTH_METHODS)

    def get_client_id(self):
        return self.client_id

    def get_default_redirect_uri(self):
        return self.redirect_uris[0] if self.redirect_uris else None

    def get_allowed_scope(self, scope):
        requested = scope_list(scope)
        if not requested:
            return None  # Microsoft and Google both want a scope
        if self.scopes is not None and not set(requested) <= set(self.scopes):
            return None
        return " ".join(requested)

    def check_redirect_uri(self, redirect_uri):
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret):
        return hmac.compare_digest(self.client_secret.encode(), client_secret.encode())

    def check_endpoint_auth_method(self, method, endpoint):
        return method in self.auth_methods

    def check_response_type(self, response_type):
        return response_type == "code" and "authorization_code" in self.grant_types

    def check_grant_type(self, grant_type):
        return grant_type in self.grant_types


@dataclass(eq=False)
class ServiceAccount(ClientMixin):
    client_email: str
    public_key_pem: str = field(repr=False)
    allowed_subjects: set[str]
    allowed_scopes: set[str]
    key_id: str | None = None

    def get_client_id(self):
        return self.client_email

    def check_grant_type(self, grant_type):
        return grant_type == JWT_BEARER

    def check_client_secret(self, client_secret):
        return False

    def check_endpoint_auth_method(self, method, endpoint):
        return False

    def check_redirect_uri(self, redirect_uri):
        return False

    def check_response_type(self, response_type):
        return False

    def may_act_for(self, subject: str | None) -> bool:
        return subject is None or subject.lower() in {s.lower() for s in self.allowed_subjects}


@dataclass(eq=False)
class AuthorizationCode(AuthorizationCodeMixin):
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    username: str
    code_challenge: str
    code_challenge_method: str
    offline: bool
    tenant: str | None
    expires_at: float
    used: bool = False
    revoked: bool = False

    def get_redirect_uri(self):
        return self.redirect_uri

    def get_scope(self):
        return self.scope


@dataclass(eq=False)
class Token(TokenMixin):
    access_token: str
    refresh_token: str | None
    client_id: str
    grant_type: str
    scope: str           # of the access token
    grant_scope: str     # what the user consented to: a refresh may ask for any part of it
    sub: str
    username: str | None
    roles: list[str]
    aud: str | None
    tenant: str | None
    issued_at: float
    expires_at: float
    grant_id: str | None = None  # the authorization code the chain started from
    access_revoked: bool = False
    refresh_status: str = "active"  # active | rotated | revoked

    def check_client(self, client):
        return self.client_id == client.get_client_id()

    def get_scope(self):
        return self.grant_scope

    def get_expires_in(self):
        return int(self.expires_at - self.issued_at)

    def is_expired(self):
        return time.time() >= self.expires_at

    def is_revoked(self):
        return self.access_revoked

    def is_active(self) -> bool:
        return not (self.is_expired() or self.is_revoked())

    def describe(self, issuer: str) -> dict:
        return {
            "active": True, "token_type": "Bearer", "iss": issuer, "sub": self.sub,
            "username": self.username, "client_id": self.client_id, "scope": self.scope,
            "roles": list(self.roles), "aud": self.aud, "exp": int(self.expires_at),
            "iat": int(self.issued_at), "grant_type": self.grant_type, "tenant": self.tenant,
        }


# --- authlib grants, extensions and endpoints -------------------------------------------------

class RequiredS256(CodeChallenge):
    """PKCE is required for every authorization request, and only S256 is accepted."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def validate_code_challenge(self, grant, redirect_uri):
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError(PKCE_REQUIRED)
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError(PKCE_METHOD)
        super().validate_code_challenge(grant, redirect_uri)

    def validate_code_verifier(self, grant, result):
        try:
            super().validate_code_verifier(grant, result)
        except InvalidGrantError:
            raise InvalidGrantError(PKCE_MISMATCH) from None


class AuthorizationCodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def create_authorization_response(self, redirect_uri, grant_user):
        if not grant_user:
            raise AccessDeniedError(USER_DENIED, redirect_uri=redirect_uri)
        return super().create_authorization_response(redirect_uri, grant_user)

    def save_authorization_code(self, code, request):
        self.server.peer._save_code(code, request)

    def query_authorization_code(self, code, client):
        return self.server.peer._redeem_code(code, client)

    def delete_authorization_code(self, authorization_code):
        authorization_code.used = True

    def authenticate_user(self, authorization_code):
        return self.server.peer._user(authorization_code.username)

    def validate_token_request(self):
        super().validate_token_request()
        granted = self.request.authorization_code.scope
        requested = self.request.payload.scope or granted
        check_within(requested, granted, self.server.peer.withheld_scopes)
        check_one_resource(self.request, requested)
        self.request.token_scope = requested

    def generate_token(self, user=None, scope=None, grant_type=None, expires_in=None,
                       include_refresh_token=True):
        offline = include_refresh_token and self.request.authorization_code.offline
        return super().generate_token(user, self.request.token_scope, grant_type, expires_in, offline)


class RefreshTokenGrant(grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def authenticate_refresh_token(self, refresh_token):
        return self.server.peer._find_refresh_token(refresh_token, self.request.client)

    def authenticate_user(self, refresh_token):
        return self.server.peer._user(refresh_token.username)

    def _validate_token_scope(self, token):
        check_within(self.request.payload.scope, token.get_scope(), self.server.peer.withheld_scopes)

    def issue_token(self, user, refresh_token):
        scope = self.request.payload.scope or refresh_token.grant_scope  # RFC 6749 6: omitted, as granted
        check_one_resource(self.request, scope)
        return self.generate_token(user=user, scope=scope,
                                   include_refresh_token=self.server.peer.rotate_refresh_tokens)

    def revoke_old_credential(self, refresh_token):
        if self.server.peer.rotate_refresh_tokens:
            refresh_token.refresh_status = "rotated"


class ClientCredentialsGrant(grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def validate_requested_scope(self):
        if (getattr(self.request, "tenant", None) or "").lower() in GENERIC_TENANTS:
            raise InvalidRequestError(NO_TENANT)
        check_app_only_scope(self.request.payload.scope)


class ServiceAccountGrant(JWTBearerGrant):
    """Google's JWT bearer grant: the scope is a claim of the assertion, Google's error texts."""

    LEEWAY = 60
    MAX_LIFETIME = 3600

    def get_audiences(self):
        return [self.server.peer.token_url]

    def resolve_issuer_client(self, issuer):
        return self.server.peer._service_accounts.get(issuer) if isinstance(issuer, str) else None

    def resolve_client_public_key(self, client):
        return RSAKey.import_key(client.public_key_pem)

    def process_assertion_claims(self, assertion):
        headers, claims = self.extract_assertion(assertion)
        account = self.resolve_issuer_client(claims.get("iss"))
        if account is None:
            raise InvalidGrantError(JWT_ISSUER)
        other_key = account.key_id and headers.get("kid", account.key_id) != account.key_id
        if headers.get("alg") != "RS256" or other_key:
            raise InvalidGrantError(JWT_SIGNATURE)
        try:
            token = jwt.decode(assertion, self.resolve_client_public_key(account), algorithms=["RS256"])
        except (JoseError, ValueError):
            raise InvalidGrantError(JWT_SIGNATURE) from None
        self.verify_claims(token.claims)
        return token.claims

    def verify_claims(self, claims):
        if claims.get("aud") not in self.get_audiences():
            raise InvalidGrantError(JWT_AUDIENCE.format(aud=self.get_audiences()[0]))
        iat, exp, now = claims.get("iat"), claims.get("exp"), time.time() + self.server.peer.clock_offset
        if not all(isinstance(v, (int, float)) for v in (iat, exp)):
            raise InvalidGrantError(JWT_LIFETIME)
        if exp - iat > self.MAX_LIFETIME or exp <= iat or exp < now - self.LEEWAY or iat > now + self.LEEWAY:
            raise InvalidGrantError(JWT_LIFETIME)

    def validate_token_request(self):
        assertion = self.request.form.get("assertion")
        if not assertion:
            raise InvalidRequestError("Missing required parameter: assertion")
        claims = self.process_assertion_claims(assertion)
        account = self.resolve_issuer_client(claims["iss"])
        scope = claims.get("scope")
        if not isinstance(scope, str) or not scope_list(scope):
            raise InvalidScopeError(JWT_NO_SCOPE)
        subject = claims.get("sub")
        if not account.may_act_for(subject) or not set(scope_list(scope)) <= set(account.allowed_scopes):
            raise UnauthorizedClientError(JWT_UNAUTHORIZED, status_code=401)
        self.request.client = account
        self.request.assertion_claims = claims

    def create_token_response(self):
        token = self.generate_token(scope=self.request.assertion_claims["scope"],
                                    include_refresh_token=False)
        self.save_token(token)
        return 200, token, self.TOKEN_RESPONSE_HEADER


class Introspection(IntrospectionEndpoint):
    CLIENT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def query_token(self, token_string, token_type_hint):
        return self.server.peer._access.get(token_string)  # access tokens only

    def check_permission(self, token, client, request):
        return True  # any registered client may ask

    def introspect_token(self, token):
        return token.describe(self.server.peer.issuer)


class Revocation(RevocationEndpoint):
    CLIENT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def query_token(self, token_string, token_type_hint):
        peer = self.server.peer
        if token_type_hint == "refresh_token":
            return peer._refresh.get(token_string) or peer._access.get(token_string)
        return peer._access.get(token_string) or peer._refresh.get(token_string)

    def revoke_token(self, token, request):
        if request.form["token"] == token.refresh_token:
            self.server.peer._revoke_chain(token)
        else:
            token.access_revoked = True


class Issuer(IssuerParameter):
    """RFC 9207 `iss` in authorization responses, while the test wants it (issue_iss)."""

    def __init__(self, peer):
        self.peer = peer

    def get_issuer(self):
        return self.peer.issuer if self.peer.issue_iss else None


class AuthlibServer(AuthorizationServer):
    """authlib's Flask authorization server, backed by an OAuthServer's in-memory state."""

    def __init__(self, peer: "OAuthServer"):
        super().__init__()
        self.peer = peer
        self.issuer_parameter = Issuer(peer)
        self.register_token_generator("default", peer._generate_token)
        self.register_grant(AuthorizationCodeGrant, [RequiredS256()])
        self.register_grant(RefreshTokenGrant)
        self.register_grant(ClientCredentialsGrant)
        self.register_grant(ServiceAccountGrant)
        self.register_endpoint(Introspection)
        self.register_endpoint(Revocation)
        self.register_extension(self.issuer_parameter)

    def query_client(self, client_id):
        return self.peer._clients.get(client_id)

    def save_token(self, token, request):
        self.peer._save_token(token, request)

    def create_oauth2_request(self, request):
        oauth_request = super().create_oauth2_request(request)
        oauth_request.tenant = g.get("tenant")
        return oauth_request

    def authenticate_client(self, request, methods, endpoint="token"):
        try:
            return super().authenticate_client(request, methods, endpoint)
        except InvalidClientError:
            raise self.peer._client_error(request, endpoint) from None


def check_app_only_scope(scope: str | None) -> None:
    scopes = scope_list(scope)
    if not scopes:
        raise InvalidRequestError(MISSING_PARAMETER.format(name="scope"))
    for item in scopes:
        if not item.endswith("/.default"):
            raise InvalidScopeError(NOT_DEFAULT_SCOPE.format(scope=safe(item)))
    if len(scopes) > 1:
        raise InvalidScopeError(SEVERAL_RESOURCES.format(scope=safe(scope)))


def check_within(requested: str | None, granted: str, withheld: set[str] = frozenset()) -> None:
    """A token request may ask for part of what was consented to (OpenID scopes always, as Microsoft,
    unless the server withheld them)."""
    extra = set(scope_list(requested)) - set(scope_list(granted)) - (NON_RESOURCE_SCOPES - set(withheld))
    if extra & set(withheld):
        raise InvalidScopeError(SCOPE_EXCEEDS_GRANT.format(scope=safe(" ".join(sorted(extra)))))
    if extra:
        raise InvalidScopeError(SCOPE_NOT_GRANTED.format(scope=safe(" ".join(sorted(extra)))))


def check_one_resource(oauth_request, scope: str) -> None:
    """On Microsoft's paths a delegated token is for one resource (AADSTS28000)."""
    if getattr(oauth_request, "tenant", None) and len(microsoft_resources(scope)) > 1:
        raise InvalidScopeError(SEVERAL_RESOURCES.format(scope=safe(scope)))


# --- HTML pages -----------------------------------------------------------------------------

PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>{title}</title></head>
<body>
<main>
<h1>{title}</h1>
{body}
</main>
</body>
</html>
"""
def text(value: str) -> str:
    """Escape for an HTML text node (quotes stay as they are, so messages read verbatim)."""
    return html.escape(value, quote=False)


PAGE_HEADERS = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
                "Cache-Control": "no-store"}


def page(title: str, body: str, status: int = 200) -> Response:
    document = PAGE.format(title=text(title), body=body)
    return Response(document, status=status, headers=PAGE_HEADERS, mimetype="text/html")


def error_page(message: str) -> Response:
    return page("Sign in to your account",
                f'<p role="alert">Sorry, but we\'re having trouble signing you in.</p>\n'
                f'<p id="error">{text(message)}</p>', status=400)


def sign_in_form(intro: str, buttons: list[tuple[str, str]], username: str = "",
                 error: str | None = None) -> str:
    alert = f'<p role="alert">{text(error)}</p>\n' if error else ""
    submit = "\n".join(f'<button type="submit" name="action" value="{value}">{text(label)}</button>'
                       for value, label in buttons)
    return f"""{intro}
{alert}<form method="post">
<p><label for="username">Username</label>
<input id="username" name="username" type="text" autocomplete="username" value="{html.escape(username)}"></p>
<p><label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password"></p>
<p>{submit}</p>
</form>"""


def consent_page(client_id: str, scope: str, username: str = "", error: str | None = None) -> Response:
    items = "\n".join(f"<li>{text(s)}</li>" for s in scope_list(scope))
    intro = (f"<p>The application <strong>{text(client_id)}</strong> asks for:</p>\n"
             f'<ul id="scopes">\n{items}\n</ul>')
    buttons = [("approve", "Sign in and approve"), ("deny", "Deny")]
    return page("Sign in and approve", sign_in_form(intro, buttons, username, error))


def admin_consent_page(client_id: str, error: str | None = None) -> Response:
    intro = (f"<p>The application <strong>{text(client_id)}</strong> asks for permission "
             "to act on its own in your organization. An administrator signs in to accept.</p>")
    buttons = [("accept", "Accept"), ("cancel", "Cancel")]
    return page("Permissions requested", sign_in_form(intro, buttons, error=error))


# --- the server ---------------------------------------------------------------------------------

class OAuthServer:
    """An authorization server on 127.0.0.1 over HTTPS (certificate from `ca`)."""

    def __init__(self, ca: trustme.CA, tls: bool = True):
        self._lock = threading.RLock()
        self._users: dict[str, User] = {}
        self._clients: dict[str, Client] = {}
        self._service_accounts: dict[str, ServiceAccount] = {}
        self._codes: dict[str, AuthorizationCode] = {}
        self._access: dict[str, Token] = {}
        self._refresh: dict[str, Token] = {}
        self.known_tenants: set[str] = set()
        self.access_token_lifetime = 3600
        self.code_lifetime = 60
        self.issue_iss = True
        self.rotate_refresh_tokens = True
        self.withheld_scopes: set[str] = set()
        self.cloud = "global"
        self.clock_offset = 0.0  # seconds this server's clock is ahead: a client whose clock is off, seen from here
        self.requests: list[dict] = []
        self.consents: list[dict] = []
        self.ca_pem = ca.cert_pem.bytes().decode()
        self._authlib = AuthlibServer(self)
        self._http = HttpsPeer(self._build_app(), server_context(ca) if tls else None)
        self.issuer = self._http.url
        self.port = self._http.port
        self.authorize_url = f"{self.issuer}/authorize"
        self.token_url = f"{self.issuer}/token"
        self.introspect_url = f"{self.issuer}/introspect"
        self.revoke_url = f"{self.issuer}/revoke"
        self.admin_consent_url = f"{self.issuer}/adminconsent"
        self.metadata_url = f"{self.issuer}/.well-known/oauth-authorization-server"

    def stop(self) -> None:
        self._http.stop()

    # --- set-up by the tests ---

    def add_user(self, username: str, password: str) -> User:
        user = User(username, password)
        with self._lock:
            self._users[username.lower()] = user
        return user

    def register_client(self, client_id: str, client_secret: str, redirect_uris: list[str],
                        scopes: set[str] | None = None, app_roles: set[str] = frozenset(),
                        grant_types=DEFAULT_GRANT_TYPES, auth_methods=tuple(CLIENT_AUTH_METHODS)) -> Client:
        client = Client(client_id, client_secret, list(redirect_uris),
                        None if scopes is None else set(scopes), frozenset(app_roles), tuple(grant_types),
                        auth_methods=tuple(auth_methods))
        with self._lock:
            self._clients[client_id] = client
        return client

    def register_service_account(self, client_email: str, public_key_pem: str,
                                 allowed_subjects: set[str], allowed_scopes: set[str],
                                 key_id: str | None = None) -> ServiceAccount:
        account = ServiceAccount(client_email, public_key_pem, set(allowed_subjects),
                                 set(allowed_scopes), key_id)
        with self._lock:
            self._service_accounts[client_email] = account
        return account

    def grant_admin_consent(self, client_id: str) -> None:
        with self._lock:
            self._clients[client_id].admin_consented = True

    def revoke_admin_consent(self, client_id: str) -> None:
        """Withdraw app-only consent and its tokens."""
        with self._lock:
            self._clients[client_id].admin_consented = False
            for token in self._access.values():
                if token.client_id == client_id and token.grant_type == "client_credentials":
                    token.access_revoked = True

    # --- what the other peers and the tests look at ---

    def introspect(self, token: str) -> dict | None:
        with self._lock:
            record = self._access.get(token)
            if record is None or not record.is_active():
                return None
            return record.describe(self.issuer)

    def revoke_grant(self, username: str, client_id: str | None = None, keep_access_tokens: bool = False) -> int:
        """Revoke every token (and pending code) the user granted, to one client or all; returns a count.
        keep_access_tokens: only the refresh tokens end, issued access tokens live until they expire
        (Microsoft: a password change or a revoked session ends refresh tokens, while access tokens
        "can't be revoked" and stay valid until expiry; Microsoft identity platform, "Refresh tokens"
        and "Access tokens: token lifetime")."""
        def matches(item) -> bool:
            return ((item.username or "").lower() == username.lower()
                    and client_id in (None, item.client_id))

        with self._lock:
            for code in filter(matches, self._codes.values()):
                code.revoked = True
            tokens = [t for t in self._access.values() if matches(t)]
            for token in tokens:
                token.access_revoked = token.access_revoked or not keep_access_tokens
                if token.refresh_status == "active":
                    token.refresh_status = "revoked"
            return len(tokens)

    def expire_access_tokens(self) -> None:
        with self._lock:
            now = time.time()
            for token in self._access.values():
                token.expires_at = min(token.expires_at, now - 1)

    def metadata(self) -> dict:
        with self._lock:
            scopes = set(NON_RESOURCE_SCOPES)
            for client in self._clients.values():
                scopes |= client.scopes or set()
            for account in self._service_accounts.values():
                scopes |= account.allowed_scopes
        return {
            "issuer": self.issuer,
            "authorization_endpoint": self.authorize_url,
            "token_endpoint": self.token_url,
            "introspection_endpoint": self.introspect_url,
            "revocation_endpoint": self.revoke_url,
            "scopes_supported": sorted(scopes),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": [*DEFAULT_GRANT_TYPES, JWT_BEARER],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
            "introspection_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
            "revocation_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
            "authorization_response_iss_parameter_supported": self.issue_iss,
        }

    # --- state used by the authlib grants ---

    def _user(self, username: str | None) -> User | None:
        return self._users.get((username or "").lower())

    def _check_login(self, username: str, password: str) -> User | None:
        user = self._user(username.strip())
        if user and hmac.compare_digest(user.password.encode(), password.encode()):
            return user
        return None

    def _save_code(self, code: str, oauth_request) -> None:
        data = oauth_request.payload.data
        scope = oauth_request.scope
        granted = " ".join(s for s in scope_list(scope) if s not in self.withheld_scopes)
        self._codes[code] = AuthorizationCode(
            code=code, client_id=oauth_request.client.client_id,
            redirect_uri=oauth_request.payload.redirect_uri, scope=granted,
            username=oauth_request.user.username, code_challenge=data["code_challenge"],
            code_challenge_method=data["code_challenge_method"],
            offline="offline_access" in scope_list(scope) or data.get("access_type") == "offline",
            tenant=g.get("tenant"), expires_at=time.time() + self.code_lifetime)

    def _redeem_code(self, value: str, client: Client) -> AuthorizationCode:
        code = self._codes.get(value)
        if code is None or code.client_id != client.client_id:
            raise InvalidGrantError(CODE_INVALID)
        if code.revoked:
            raise InvalidGrantError(GRANT_REVOKED)
        if code.used:
            self._revoke_grant_id(code.code)  # RFC 6749 4.1.2: revoke what the code produced
            raise InvalidGrantError(CODE_REDEEMED)
        if time.time() >= code.expires_at:
            raise InvalidGrantError(CODE_EXPIRED)
        return code

    def _find_refresh_token(self, value: str, client: Client) -> Token:
        token = self._refresh.get(value)
        if token is None or token.refresh_status == "rotated" or not token.check_client(client):
            raise InvalidGrantError(REFRESH_INVALID)
        if token.refresh_status == "revoked":
            raise InvalidGrantError(GRANT_REVOKED)
        return token

    def _revoke_grant_id(self, grant_id: str) -> None:
        for token in self._access.values():
            if token.grant_id == grant_id:
                token.access_revoked = True
                if token.refresh_status == "active":
                    token.refresh_status = "revoked"

    def _revoke_chain(self, token: Token) -> None:
        if token.grant_id:
            self._revoke_grant_id(token.grant_id)
        token.access_revoked = True
        token.refresh_status = "revoked"

    def _generate_token(self, grant_type, client, user=None, scope=None, expires_in=None,
                        include_refresh_token=True) -> dict:
        token = {"token_type": "Bearer", "access_token": secrets.token_urlsafe(32),
                 "expires_in": expires_in or self.access_token_lifetime, "scope": scope or ""}
        if include_refresh_token:
            token["refresh_token"] = secrets.token_urlsafe(48)
        return token

    def _save_token(self, token: dict, oauth_request) -> None:
        now = time.time()
        grant_type = oauth_request.payload.grant_type
        client = oauth_request.client
        scope = token["scope"]
        tenant = getattr(oauth_request, "tenant", None)
        values = dict(sub=None, username=None, roles=[], aud=delegated_audience(scope, microsoft=bool(tenant)),
                      grant_scope=scope, grant_id=None)
        if grant_type == "client_credentials":  # no roles before admin consent, as Entra issues them
            values.update(sub=client.client_id, roles=sorted(client.app_roles) if client.admin_consented else [],
                          aud=app_only_audience(scope))
        elif grant_type == JWT_BEARER:
            subject = oauth_request.assertion_claims.get("sub")
            values.update(sub=subject or client.client_email, username=subject)
        elif grant_type == "authorization_code":
            code = oauth_request.authorization_code
            values.update(sub=oauth_request.user.username, username=oauth_request.user.username,
                          grant_id=code.code, grant_scope=code.scope)
            if "openid" in code.scope.split():  # as OpenID providers do: who signed in
                token["id_token"] = self._id_token(client, oauth_request.user.username)
        else:  # refresh_token
            old = oauth_request.refresh_token
            values.update(sub=old.sub, username=old.username, grant_id=old.grant_id,
                          grant_scope=old.grant_scope)
        record = Token(access_token=token["access_token"], refresh_token=token.get("refresh_token"),
                       client_id=client.get_client_id(), grant_type=grant_type, scope=scope,
                       tenant=getattr(oauth_request, "tenant", None), issued_at=now,
                       expires_at=now + token["expires_in"], **values)
        self._access[record.access_token] = record
        if record.refresh_token:
            self._refresh[record.refresh_token] = record

    def _id_token(self, client, username: str) -> str:
        """An OpenID Connect id_token, signed with the client secret (HS256, as OIDC allows)."""
        from joserfc import jwt
        from joserfc.jwk import OctKey

        now = int(time.time())
        claims = {"iss": self.issuer, "sub": username, "aud": client.client_id, "email": username,
                  "preferred_username": username, "iat": now, "exp": now + 3600}
        return jwt.encode({"alg": "HS256", "typ": "JWT"}, claims, OctKey.import_key(client.client_secret))

    def _client_error(self, oauth_request, endpoint: str) -> InvalidClientError:
        client_id, secret = extract_basic_authorization(oauth_request.headers)
        if not client_id:
            client_id = oauth_request.form.get("client_id")
            secret = oauth_request.form.get("client_secret")
        if not client_id:  # RFC 7662 2.1 and RFC 7009 2.1: 401 on introspection and revocation
            return InvalidClientError(MISSING_PARAMETER.format(name="client_id"),
                                      status_code=400 if endpoint == "token" else 401)
        if client_id not in self._clients:
            tenant = getattr(oauth_request, "tenant", None) or "common"
            return InvalidClientError(safe(UNKNOWN_APP.format(client_id=client_id, tenant=tenant)),
                                      status_code=400)
        if not secret:
            return InvalidClientError(NO_SECRET, status_code=401)
        return InvalidClientError(safe(BAD_SECRET.format(client_id=client_id)), status_code=401)

    # --- the web application ---

    def _build_app(self) -> Flask:
        app = Flask(f"oauth-peer-{id(self)}")
        authorize = self._locked(self._authorize)
        token = self._locked(self._token)
        admin_consent = self._locked(self._admin_consent)
        app.add_url_rule("/.well-known/oauth-authorization-server", "metadata", self._metadata)
        app.add_url_rule("/.well-known/openid-configuration", "openid", self._metadata)
        both = ["GET", "POST"]
        app.add_url_rule("/authorize", "authorize", authorize, methods=both)
        app.add_url_rule("/<tenant>/oauth2/v2.0/authorize", "ms_authorize", authorize, methods=both)
        app.add_url_rule("/token", "token", token, methods=["POST"])
        app.add_url_rule("/<tenant>/oauth2/v2.0/token", "ms_token", token, methods=["POST"])
        app.add_url_rule("/introspect", "introspect", self._locked(self._introspect), methods=["POST"])
        app.add_url_rule("/revoke", "revoke", self._locked(self._revoke), methods=["POST"])
        app.add_url_rule("/adminconsent", "adminconsent", admin_consent, methods=both)
        app.add_url_rule("/<tenant>/adminconsent", "ms_adminconsent", admin_consent, methods=both)
        app.add_url_rule("/<tenant>/v2.0/adminconsent", "ms_adminconsent_v2", admin_consent, methods=both)
        return app

    def _locked(self, view):
        def locked(**kwargs):
            g.tenant = kwargs.get("tenant")
            with self._lock:
                return view()
        return locked

    def _metadata(self):
        return jsonify(self.metadata())

    def _tenant_problem(self) -> str | None:
        tenant = g.tenant
        if tenant is None or tenant.lower() in GENERIC_TENANTS or not self.known_tenants:
            return None
        if tenant.lower() in {t.lower() for t in self.known_tenants}:
            return None
        return UNKNOWN_TENANT.format(tenant=tenant)

    def _client_problem(self, client_id: str | None, redirect_uri: str | None) -> str | None:
        if not client_id:
            return MISSING_PARAMETER.format(name="client_id")
        client = self._clients.get(client_id)
        if client is None:
            return UNKNOWN_APP.format(client_id=client_id, tenant=g.tenant or "common")
        if not redirect_uri:
            return MISSING_PARAMETER.format(name="redirect_uri")
        if not client.check_redirect_uri(redirect_uri):
            return REDIRECT_MISMATCH.format(uri=redirect_uri, client_id=client_id)
        return None

    def _with_iss(self, response: Response) -> Response:
        self._authlib.issuer_parameter.add_issuer_parameter(self._authlib, response)
        return response

    def _authorize(self):
        problem = self._tenant_problem() or self._client_problem(
            request.values.get("client_id"), request.values.get("redirect_uri"))
        if problem:
            return error_page(problem)
        try:
            grant = self._authlib.get_consent_grant(end_user=None)
        except OAuth2Error as error:
            if not error.redirect_uri:
                return error_page(f"{error.error}: {error.get_error_description()}")
            return self._with_iss(self._authlib.handle_error_response(None, error))
        other_cloud = self._other_cloud(request.values.get("scope"))
        if other_cloud:
            error = OAuth2Error(safe(other_cloud), error="invalid_resource", redirect_uri=grant.redirect_uri,
                                state=request.values.get("state"))
            return self._with_iss(self._authlib.handle_error_response(None, error))
        if request.values.get("prompt") == "none":
            error = OAuth2Error(SILENT_SIGN_IN, error="login_required", redirect_uri=grant.redirect_uri,
                                state=request.values.get("state"))
            return self._with_iss(self._authlib.handle_error_response(None, error))
        client_id, scope = grant.request.client.client_id, grant.request.scope
        if request.method == "GET":
            return consent_page(client_id, scope, request.args.get("login_hint", ""))
        action = request.form.get("action")
        if action == "deny":
            return self._authlib.create_authorization_response(grant=grant, grant_user=None)
        if action != "approve":
            return error_page("The form was sent without choosing 'Sign in and approve' or 'Deny'.")
        user = self._check_login(request.form.get("username", ""), request.form.get("password", ""))
        if user is None:
            return consent_page(client_id, scope, request.form.get("username", ""), WRONG_LOGIN)
        self.consents.append({"username": user.username, "client_id": client_id, "scope": scope,
                              "tenant": g.tenant})
        return self._authlib.create_authorization_response(grant=grant, grant_user=user)

    def _token(self):
        problem = self._tenant_problem()
        other_cloud = self._other_cloud(request.form.get("scope"))
        if problem or other_cloud:
            error = "invalid_request" if problem else "invalid_resource"
            response = jsonify(error=error, error_description=safe(problem or other_cloud))
            response.status_code = 400
            response.headers.update(JSON_HEADERS)
        else:
            response = self._authlib.create_token_response()
        self._without_scope(response)
        self._log_token_request(response)
        return response

    def _other_cloud(self, scope: str | None) -> str | None:
        """AADSTS500011 when, on the tenant paths, a scope names a Microsoft resource of another cloud."""
        if g.tenant is None:
            return None
        known = MICROSOFT_RESOURCES[AUTHORITY_OF_CLOUD[self.cloud]]
        every = set().union(*MICROSOFT_RESOURCES.values())
        for item in scope_list(scope):
            resource = (scope_resource(item) or "").lower()
            if resource in every and resource not in known:
                return OTHER_CLOUD.format(resource=resource, tenant=g.tenant)
        return None

    @staticmethod
    def _without_scope(response: Response) -> None:
        """Entra's client credentials answer and Google's JWT bearer answer name no scope."""
        if response.status_code != 200 or request.form.get("grant_type") not in ("client_credentials", JWT_BEARER):
            return
        body = response.get_json(silent=True)
        if isinstance(body, dict) and body.pop("scope", None) is not None:
            response.set_data(json.dumps(body))

    def _log_token_request(self, response: Response) -> None:
        form = request.form
        client_id = extract_basic_authorization(request.headers)[0] or form.get("client_id")
        scope = form.get("scope")
        if form.get("grant_type") == JWT_BEARER:
            claims = unverified_claims(form.get("assertion", ""))
            client_id, scope = claims.get("iss"), claims.get("scope", scope)
        body = response.get_json(silent=True) or {}
        self.requests.append({
            "grant_type": form.get("grant_type"), "client_id": client_id, "tenant": g.tenant,
            "scope": scope, "outcome": "ok" if response.status_code == 200 else body.get("error"),
            "status": response.status_code, "error_description": body.get("error_description"),
        })

    def _introspect(self):
        return self._authlib.create_endpoint_response(Introspection.ENDPOINT_NAME)

    def _revoke(self):
        return self._authlib.create_endpoint_response(Revocation.ENDPOINT_NAME)

    def _admin_consent(self):
        client_id, redirect_uri = request.values.get("client_id"), request.values.get("redirect_uri")
        problem = self._tenant_problem() or self._client_problem(client_id, redirect_uri)
        if problem:
            return error_page(problem)
        if request.method == "GET":
            return admin_consent_page(client_id)
        action = request.form.get("action")
        state = request.values.get("state")
        if action == "cancel":
            return redirect_to(redirect_uri, error="permission_denied", error_description=ADMIN_CANCELED,
                               state=state)
        if action != "accept":
            return error_page("The form was sent without choosing 'Accept' or 'Cancel'.")
        user = self._check_login(request.form.get("username", ""), request.form.get("password", ""))
        if user is None:
            return admin_consent_page(client_id, WRONG_LOGIN)
        self.grant_admin_consent(client_id)
        self.consents.append({"username": user.username, "client_id": client_id,
                              "scope": request.values.get("scope") or ".default (admin consent)",
                              "tenant": g.tenant})
        return redirect_to(redirect_uri, admin_consent="True", tenant=g.tenant or "common",
                           scope=request.values.get("scope"), state=state)


def redirect_to(uri: str, **params) -> Response:
    location = add_params_to_uri(uri, [(k, v) for k, v in params.items() if v is not None])
    return Response("", status=302, headers={"Location": location})


def unverified_claims(assertion: str) -> dict:
    """The claims of a JWT without checking it (for the request log only)."""
    try:
        claims = json.loads(jws.extract_compact(assertion.encode()).payload)
    except (JoseError, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


# --- Google service-account key files ----------------------------------------------------------

def make_service_account_key(oauth_server: OAuthServer,
                             client_email: str = "mailer@project.iam.gserviceaccount.com",
                             subjects: set[str] = frozenset({"sender@example.test"}),
                             scopes: set[str] = frozenset({"https://www.googleapis.com/auth/gmail.send",
                                                           "https://mail.google.com/"})) -> dict:
    """A new RSA key registered with the server; returns the key file's JSON as a dict."""
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()).decode()
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    key_id = secrets.token_hex(20)
    oauth_server.register_service_account(client_email, public_pem, set(subjects), set(scopes), key_id)
    project = client_email.partition("@")[2].split(".")[0] or "project"
    return {
        "type": "service_account",
        "project_id": project,
        "private_key_id": key_id,
        "private_key": private_pem,
        "client_email": client_email,
        "client_id": str(secrets.randbelow(9 * 10**20) + 10**20),
        "auth_uri": oauth_server.authorize_url,
        "token_uri": oauth_server.token_url,
        "auth_provider_x509_cert_url": f"{oauth_server.issuer}/oauth2/v1/certs",
        "client_x509_cert_url": f"{oauth_server.issuer}/robot/v1/metadata/x509/{quote(client_email)}",
        "universe_domain": "googleapis.com",
    }


# --- fixtures --------------------------------------------------------------------------------

@pytest.fixture
def oauth_server(test_ca):
    """A fresh authorization server for this test, stopped at teardown."""
    server = OAuthServer(test_ca)
    yield server
    server.stop()


@pytest.fixture
def http_oauth_server(test_ca):
    """The same over plain HTTP on 127.0.0.1 (a local authorization server without TLS)."""
    server = OAuthServer(test_ca, tls=False)
    yield server
    server.stop()


@pytest.fixture
def service_account_key():
    """Factory: service_account_key(oauth_server, client_email=..., subjects=..., scopes=...) -> key dict."""
    return make_service_account_key
