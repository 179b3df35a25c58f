"""What an authorization server's refusal means, in words an admin acts on.

    words = explain(error, description, provider, grant)
    words.summary, words.hint        # "the client secret is wrong (AADSTS7000215)", "enter the secret's Value …"
    words.permanent                  # only a person can fix it (not a retry)
    words.reauthorize                # only a new consent fixes it: the grant is marked "re-authorization needed"

`error`/`description` are what the server sent (RFC 6749 5.2, or Mailroom's own codes for the way
to it: unreachable, timeout, tls, egress_refused, …); `provider` chooses whose advice the hint gives
(Microsoft's, Google's, or none for another server); `grant` is "service_account" for Google's JWT
bearer grant, whose refusals are about the key and its domain-wide delegation, never a consent.

Sources: Microsoft Entra's error codes
(https://learn.microsoft.com/entra/identity-platform/reference-error-codes, looked up by number:
the AADSTS prefix is followed by the code), the admin-consent response of the client credentials
flow (https://learn.microsoft.com/entra/identity-platform/v2-oauth2-client-creds-grant-flow:
a declined consent comes back as error=permission_denied), Google's OAuth 2.0 errors
(https://developers.google.com/identity/protocols/oauth2/web-server#authorization-errors) and its
service-account token errors (https://developers.google.com/identity/protocols/oauth2/service-account,
"Handling errors": invalid_grant for a bad signature, clock skew or unknown user; unauthorized_client
for a missing domain-wide delegation).
"""
import re
from dataclasses import dataclass

MICROSOFT, GOOGLE = "microsoft", "google"  # mail/oauth.py's Provider values (imported from there would be a cycle)
SERVICE_ACCOUNT = "service_account"
TRANSPORT_ERRORS = frozenset({"unreachable", "timeout", "tls", "egress_refused", "not_json", "unreadable_answer"})
# Mailroom's own codes (the way to the server, or an answer that is not OAuth): never a dead grant
MAILROOM_ERRORS = TRANSPORT_ERRORS | {"no_access_token", "issuer_mismatch", "discovery_failed", "no_token_endpoint",
                                      "no_refresh_token"}


@dataclass(frozen=True)
class Words:
    summary: str
    hint: str
    permanent: bool
    reauthorize: bool = False

    def sentence(self, error: str) -> str:
        """The failed step's summary: the server's refusal, or what kept Mailroom from asking."""
        return self.summary if error in TRANSPORT_ERRORS else f"the token endpoint refused: {self.summary}"


# Microsoft Entra's AADSTS codes: number -> (summary, hint, permanent, only a new consent fixes it)
AADSTS: dict[str, tuple[str, str, bool, bool]] = {
    "7000215": ("the client secret is wrong",
                "enter the secret's Value, not its Secret ID (Entra ID → App registrations → Certificates & secrets); "
                "a secret shows its value only right after it is made", True, True),
    "7000222": ("the client secret has expired", "make a new client secret in Entra ID and enter its Value", True,
                True),
    "7000218": ("the token request carried no client secret", "enter the client secret (its Value) and save", True,
                True),
    "7000112": ("the app is disabled in Entra ID", "enable the app (Enterprise applications → the app → Properties)",
                True, True),
    "700016": ("the app registration was not found in this tenant",
               "check the Client ID and the Tenant ID: the app must be registered in that tenant (or be multi-tenant), "
               "and in the cloud chosen", True, True),
    "90002": ("the tenant does not exist",
              "check the Tenant ID (a GUID, or a domain such as example.com) and the cloud: a US Government or China "
              "tenant exists only in its own cloud", True, True),
    "50194": ("the app is registered for one organization only, so the tenant “organizations” or “common” cannot be "
              "used", "enter your Tenant ID (a GUID or your domain), or make the app multi-tenant in Entra ID", True,
              True),
    "50059": ("app-only tokens need a real tenant", "enter the Tenant ID (not common or organizations)", True, True),
    "700022": ("the scope names more than one resource", "use the default scope: one resource, ending in /.default",
               True, True),
    "28000": ("the scope names more than one resource", "use the default scope", True, True),
    "1002012": ("app-only scopes must end in /.default", "use the default scope", True, True),
    "70011": ("the scope is not valid for this app", "use the default scope", True, True),
    "500011": ("the service the scope names does not exist in this tenant or cloud",
               "check the scope and the cloud: US Government (GCC High, DoD) and China have their own Exchange and "
               "Graph addresses; choose the Cloud and use the default scope. Exchange Online must be licensed in the "
               "tenant", True, True),
    "650052": ("the app needs a service the organization has not enabled",
               "check the scope; an admin may need to enable the service (for example Exchange Online) for the tenant",
               True, True),
    "65001": ("nobody has consented to this app yet",
              "save the server, then click Authorize (delegated) or Grant admin consent (app-only) under OAuth "
              "authorization on its page", True, True),
    "65004": ("the consent was declined", "ask the person who declined to try again and accept", True, True),
    "50011": ("the redirect URI is not registered for this app",
              "add Mailroom's redirect URI (shown on the server page) to the app registration, exactly", True, True),
    "50105": ("the signed-in account is not assigned to this app",
              "an Entra ID admin assigns it (Enterprise applications → the app → Users and groups)", True, True),
    "53003": ("a Conditional Access policy blocked the sign-in",
              "ask the Entra ID admin: the policy applies to this app, account or location", True, True),
    "50076": ("multi-factor sign-in is required", "re-authorize and complete the sign-in", True, True),
    "50079": ("multi-factor sign-in is required", "re-authorize and complete the sign-in", True, True),
    "50020": ("the account that signed in belongs to another organization",
              "sign in with an account of this tenant (the mailbox's own account)", True, True),
    "50034": ("the account does not exist in this tenant", "sign in with the mailbox's own account", True, True),
    "50057": ("the account is disabled", "enable the account in Entra ID, then re-authorize", True, True),
    "50055": ("the account's password has expired", "change the password, then re-authorize", True, True),
    "70000": ("the refresh token is no longer valid",
              "re-authorize. Microsoft refresh tokens end after 90 days unused, when the user's password changes, or "
              "when consent is revoked", True, True),
    "700082": ("the refresh token expired after 90 days unused",
               "re-authorize, then run “flask mail refresh-tokens” daily so grants stay alive", True, True),
    "70008": ("the authorization has expired", "re-authorize", True, True),
    "50173": ("the grant was revoked", "re-authorize: the user's password changed, or the consent was revoked", True,
              True),
    "54005": ("the authorization code was already used", "authorize again", True, True),
    "501481": ("the sign-in did not match its start (PKCE)", "authorize again", True, True),
    "50148": ("the sign-in did not match its start (PKCE)", "authorize again", True, True),
}
_AADSTS = re.compile(r"\bAADSTS(\d+)")

# What an RFC 6749 error code means, and the advice per provider (OTHER: advice that fits any server).
OTHER = ""
ERRORS: dict[str, tuple[str, dict[str, str], bool]] = {
    # error -> (summary, {provider: hint}, permanent)
    "invalid_grant": ("the provider no longer accepts the authorization (revoked or expired)", {
        MICROSOFT: "re-authorize. Microsoft refresh tokens end after 90 days unused or when the user's password "
                   "changes",
        GOOGLE: "re-authorize. Google refresh tokens end when access is revoked, after six months unused, and after "
                "7 days while the app's consent screen is in “Testing” (publish the app)",
        OTHER: "re-authorize: the server no longer accepts the refresh token"}, True),
    "invalid_client": ("the provider does not accept the client ID or secret", {
        MICROSOFT: "check the Client ID and the client secret (its Value, not its ID)",
        GOOGLE: "check the client ID and secret of the OAuth client (APIs & Services → Credentials)",
        OTHER: "check the client ID and the client secret registered at the server"}, True),
    "unauthorized_client": ("the app may not use this kind of authorization", {
        MICROSOFT: "check the app registration: its platform (Web), its permissions and whether it may use this "
                   "flow",
        GOOGLE: "check the OAuth client: its type must be “Web application”",
        OTHER: "check that the client is allowed this grant type at the server"}, True),
    "invalid_scope": ("the provider does not accept the scope", {
        MICROSOFT: "use the default scope for this protocol and cloud",
        GOOGLE: "use the default scope for this protocol",
        OTHER: "use a scope the server offers (its metadata lists them under scopes_supported)"}, True),
    "access_denied": ("the person who signed in declined, or may not consent to this app", {
        MICROSOFT: "sign in as the mailbox owner and accept; if an administrator must approve the app first, ask "
                   "them to grant consent",
        GOOGLE: "sign in as the mailbox owner and allow access; a Workspace admin may have to trust the app first",
        OTHER: "sign in as the mailbox owner and accept"}, True),
    "permission_denied": ("the administrator declined the admin consent", {
        OTHER: "ask a tenant administrator to click Grant admin consent again and accept the permissions"}, True),
    "consent_required": ("consent is needed first", {
        OTHER: "click Authorize, or ask an administrator to grant consent"}, True),
    "interaction_required": ("the provider wants the person to sign in again", {OTHER: "re-authorize"}, True),
    "login_required": ("the provider wants the person to sign in again", {OTHER: "re-authorize"}, True),
    "invalid_rapt": ("the provider wants the person to confirm the sign-in again", {OTHER: "re-authorize"}, True),
    "admin_policy_enforced": ("the organization's policy blocks this app", {
        GOOGLE: "a Workspace admin allows the app (Admin console → Security → API controls → App access control)",
        OTHER: "ask the server's administrator to allow the app"}, True),
    "org_internal": ("the app is limited to another organization", {
        GOOGLE: "sign in with an account of the Workspace organization that owns the app, or make the app External",
        OTHER: "sign in with an account of the organization that owns the app"}, True),
    "invalid_request": ("the provider refused the request", {OTHER: "check the endpoints and the scope"}, True),
    "unsupported_grant_type": ("the token endpoint does not offer this kind of authorization", {
        OTHER: "check the token URL and the flow"}, True),
    "temporarily_unavailable": ("the provider is busy", {OTHER: "try again in a few minutes"}, False),
    "server_error": ("the provider had an error", {OTHER: "try again in a few minutes"}, False),
    # Mailroom's own codes: what kept the request from the token endpoint, or what came back instead of OAuth
    "unreachable": ("could not reach the token endpoint", {
        OTHER: "check the token URL, and this machine's network"}, False),
    "timeout": ("the token endpoint did not answer in time", {
        OTHER: "the provider is slow or a firewall drops the connection: try again, or raise the timeout"}, False),
    "egress_refused": ("Mailroom's egress policy refuses the token endpoint", {
        OTHER: "once a super-admin allows it (“Egress policy” in the top bar, or the portal's “Settings”), try "
               "again"}, False),
    "tls": ("the token endpoint's TLS certificate could not be verified", {
        OTHER: "check the token URL; a server certified by your own authority needs its CA in EXTRA_CA_CERTS"},
            False),
    "not_json": ("the token endpoint did not answer with OAuth JSON", {
        OTHER: "check the token URL: it must be the server's token endpoint"}, False),
    "unreadable_answer": ("the token endpoint's answer cannot be used", {
        OTHER: "check the token URL: it should lead to the provider's token endpoint itself"}, False),
    "no_access_token": ("the token endpoint answered without an access token", {
        OTHER: "check the token URL: it must be the server's token endpoint"}, True),
    "issuer_mismatch": ("the answer came from another issuer than the one configured", {
        OTHER: "check the issuer URL"}, True),
    "discovery_failed": ("the issuer's metadata could not be found", {
        OTHER: "check the issuer URL, or enter the authorization and token URLs by hand"}, True),
    "no_token_endpoint": ("the issuer's metadata has no token endpoint", {
        OTHER: "enter the authorization and token URLs by hand"}, True),
}

# Google's answers to a service account's signed request (description -> summary, hint, permanent)
SERVICE_ACCOUNT_GRANTS = [
    ("invalid jwt signature", "Google does not accept the key's signature: the key was deleted or disabled",
     "create a new JSON key for the service account (Google Cloud → IAM → Service accounts → Keys) and upload it",
     True),
    ("reasonable timeframe", "Google refused the signed request as too old or from the future: this machine's clock "
                             "is off", "set this machine's clock right (NTP), then try again", True),
    ("invalid issuer", "Google knows no service account with the key's client_email (it was deleted)",
     "create a new service account and key, and upload the key", True),
    ("invalid email or user id", "Google knows no user with the mailbox's address in the service account's domain",
     "check “Mailbox to send as”: it must be a user of the Google Workspace domain", True),
    ("audience", "the key's token_uri is not Google's token endpoint", "upload the key file exactly as Google made "
                                                                        "it", True),
]
SA_UNAUTHORIZED = ("the service account may not act for the mailbox with this scope (domain-wide delegation)",
                   "in the Workspace admin console (Security → Access and data control → API controls → Domain-wide "
                   "delegation), allow the service account's client ID the scope; check that the mailbox belongs "
                   "to that Workspace", True)


def explain(error: str, description: str = "", provider: str = "", grant: str = "") -> Words:
    """The words for a refusal (see the module docstring)."""
    text = f"{error} {description}"
    if grant == SERVICE_ACCOUNT:
        return _service_account(error, description)
    code = _AADSTS.search(text)
    if code and code.group(1) in AADSTS:
        summary, hint, permanent, reauthorize = AADSTS[code.group(1)]
        return Words(f"{summary} (AADSTS{code.group(1)})", hint, permanent, reauthorize)
    if error in ERRORS:
        summary, hints, permanent = ERRORS[error]
        hint = hints.get(provider) if provider in (MICROSOFT, GOOGLE) and provider in hints else hints.get(OTHER, "")
    else:
        summary, hint, permanent = f"the provider answered “{error}”", "see the provider's description", \
            error.startswith("invalid")
    first = _first_line(description)
    return Words(f"{summary}: {first}" if first else summary, hint, permanent,
                 reauthorize=permanent and error not in MAILROOM_ERRORS)


def _service_account(error: str, description: str) -> Words:
    """A service account has no consent to renew: its key, its delegation or this machine are at fault."""
    lowered = description.lower()
    if error == "invalid_grant":
        for marker, summary, hint, permanent in SERVICE_ACCOUNT_GRANTS:
            if marker in lowered:
                return Words(summary, hint, permanent)
    if error == "unauthorized_client":
        summary, hint, permanent = SA_UNAUTHORIZED
        first = _first_line(description)
        return Words(f"{summary}: {first}" if first else summary, hint, permanent)
    if error in ERRORS:
        summary, hints, permanent = ERRORS[error]
        hint = hints.get(GOOGLE) or hints[OTHER]
        if error in ("unreachable", "timeout"):
            hint = "check the key's token_uri (Google's is https://oauth2.googleapis.com/token) and this machine's " \
                   "network"
    else:
        summary, hint, permanent = f"Google refused the service account's token request (“{error}”)", \
            "see Google's description", error.startswith("invalid")
    first = _first_line(description)
    return Words(f"{summary}: {first}" if first else summary, hint, permanent)


def _first_line(description: str) -> str:
    return description.split("\r\n")[0].split("\n")[0].split(" Trace ID:")[0].strip()
