"""A server's credential: its sealed secret, the destination the secret is bound to, and
what a transport gets from it.

The secret part (a password; later a client secret with its tokens, or a private key) is
one encrypted payload. It is bound to the destination it was saved with (protocol, host,
port, security, certificate trust, endpoint URLs): a stored secret is used only while
that destination is unchanged and the mechanism is no weaker; otherwise it must be
typed again. That holds for saving and for Validate of unsaved values alike.
"""
import json
from dataclasses import dataclass, field

from flask import current_app

from .crypto import SecretUnreadable
from .mail.auth import Auth, AuthType, BearerAuth, NoAuth, PasswordAuth
from .models import Credential, CredentialKind, MailServer, SecretPurpose, ServerSecret, utcnow

MARK = "\x01"  # a sealed payload is JSON after this mark; before revision 0002 it was the bare password

KIND_LABELS = {
    CredentialKind.NONE: "None",
    CredentialKind.PASSWORD: "Basic (username and password)",
    CredentialKind.OAUTH_DELEGATED: "OAuth 2.0 (delegated)",
    CredentialKind.OAUTH_APP: "OAuth 2.0 (app-only)",
    CredentialKind.SERVICE_ACCOUNT: "Service account key",
}
SECRET_NAMES = {CredentialKind.PASSWORD: "password", CredentialKind.OAUTH_DELEGATED: "client secret",
                CredentialKind.OAUTH_APP: "client secret", CredentialKind.SERVICE_ACCOUNT: "service-account key"}
OAUTH_KINDS = frozenset({CredentialKind.OAUTH_DELEGATED, CredentialKind.OAUTH_APP})
TOKEN_KINDS = OAUTH_KINDS | {CredentialKind.SERVICE_ACCOUNT}  # they keep an access token in their payload
TOKEN_PARTS = ("access_token", "refresh_token")  # in the payload beside the client secret
# What the client secret and the tokens are bound to, besides the protocol's destination.
OAUTH_DESTINATION = ("provider", "token_url", "authorize_url", "client_id", "tenant", "cloud", "issuer")
MECHANISM_STRENGTH = {"CRAM-MD5": 2, "NTLM": 2}  # the password itself never crosses the wire; others: 1


@dataclass
class CredentialValues:
    """A credential as a form (or the command line) gives it."""
    kind: CredentialKind = CredentialKind.NONE
    username: str = ""
    mechanism: str = "auto"
    secret: dict | None = field(default=None, repr=False)  # newly typed secret parts; None keeps the stored
    provider: dict = field(default_factory=dict)  # OAuth: provider, cloud, tenant, client_id, flow, URLs, scope


class SecretNeeded(Exception):
    """The stored secret may not be used for these values; str() says why, for beside the field
    (`field`: the form field of the secret, when it is not the credential's own)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def kind_for(auth_type: str, flow: str = "") -> CredentialKind:
    if auth_type == AuthType.OAUTH:
        return CredentialKind.OAUTH_APP if flow == "app" else CredentialKind.OAUTH_DELEGATED
    return {AuthType.BASIC: CredentialKind.PASSWORD,
            AuthType.SERVICE_ACCOUNT: CredentialKind.SERVICE_ACCOUNT}.get(auth_type, CredentialKind.NONE)


def auth_type_of(kind: str) -> AuthType:
    if kind in OAUTH_KINDS:
        return AuthType.OAUTH
    return {CredentialKind.PASSWORD: AuthType.BASIC,
            CredentialKind.SERVICE_ACCOUNT: AuthType.SERVICE_ACCOUNT}.get(kind, AuthType.NONE)


def destination_for(settings, values: CredentialValues) -> dict:
    """Where the secret may go: the protocol's destination, and for OAuth the token endpoint
    and the app registration it was saved for."""
    destination = settings.destination()
    if values.kind in OAUTH_KINDS:
        destination["oauth"] = {name: str(values.provider.get(name, "")).strip() for name in OAUTH_DESTINATION}
    return destination


def _box():
    return current_app.extensions["mailroom.secrets"]


def seal(payload: dict) -> str:
    return _box().encrypt(MARK + json.dumps(payload))


def unseal(token: str) -> dict:
    """The secret payload; SecretUnreadable when the configured keys cannot read it."""
    plain = _box().decrypt(token)
    return json.loads(plain[1:]) if plain.startswith(MARK) else {"password": plain}


def stored_secret_refusal(credential: Credential | None, values: CredentialValues, destination: dict) -> str:
    """Why the stored secret may not serve these values, in words for beside the field; "" if it may."""
    what = SECRET_NAMES.get(values.kind, "secret")
    if credential is None or not credential.secret or credential.kind != values.kind:
        return f"Enter the {what}."
    if credential.bound_to != destination:
        return (f"The server's address or security changed since the {what} was saved: enter the {what} "
                "again to use it there.")
    if MECHANISM_STRENGTH.get(values.mechanism, 1) < MECHANISM_STRENGTH.get(credential.mechanism, 1):
        return (f"The stored {what} was saved for {credential.mechanism}, which never sends it in the "
                f"clear: enter the {what} again to use a weaker mechanism.")
    return ""


def check_secret(credential: Credential | None, values: CredentialValues, destination: dict) -> None:
    """SecretNeeded unless a secret was typed, the kind needs none, or the stored one may serve."""
    if values.kind not in SECRET_NAMES or values.secret:
        return
    refusal = stored_secret_refusal(credential, values, destination)
    if refusal:
        raise SecretNeeded(refusal)


def tokens_serve(credential: Credential | None, values: CredentialValues, destination: dict) -> bool:
    """The stored OAuth tokens may serve these values: the same kind, destination, mailbox and scope."""
    return bool(values.kind in TOKEN_KINDS and credential is not None and credential.kind == values.kind
                and credential.secret and credential.bound_to == destination
                and credential.username == values.username
                and credential.provider.get("scope") == values.provider.get("scope"))


def apply(credential: Credential, values: CredentialValues, destination: dict) -> bool:
    """Write the values into the credential row; True when its secret changed. The caller
    has run check_secret(). For OAuth, the tokens stay only while the kind, the mailbox,
    the destination and the scope stay: anything else needs a new consent."""
    keep_tokens = tokens_serve(credential, values, destination)
    old = unseal(credential.secret) if keep_tokens else {}
    facts = _key_facts(values) if values.kind == CredentialKind.SERVICE_ACCOUNT else {}
    credential.kind, credential.username, credential.mechanism = values.kind, values.username, values.mechanism
    if values.kind in OAUTH_KINDS:
        credential.provider = dict(values.provider)
    elif values.kind == CredentialKind.SERVICE_ACCOUNT:  # what may be shown of the key: never the key
        stored = credential.provider if credential.kind == values.kind else {}
        credential.provider = {**stored, **facts, "scope": values.provider.get("scope", "")}
    else:
        credential.provider = {}
    changed = False
    if values.kind not in SECRET_NAMES:
        changed = credential.secret is not None
        credential.secret, credential.bound_to = None, {}
    elif values.secret:
        tokens = {part: old[part] for part in TOKEN_PARTS if old.get(part)}
        credential.secret, credential.bound_to, changed = seal({**values.secret, **tokens}), destination, True
    elif values.kind in TOKEN_KINDS and not keep_tokens and credential.secret:
        payload = unseal(credential.secret)  # same destination (check_secret), new scope or mailbox
        credential.secret, changed = seal({k: v for k, v in payload.items() if k not in TOKEN_PARTS}), True
    if changed:
        credential.revision += 1
    if not keep_tokens:
        forget_consent(credential)
    credential.updated_at = utcnow()
    return changed


def _key_facts(values: CredentialValues) -> dict:
    key = (values.secret or {}).get("key")
    if not isinstance(key, dict):
        return {}
    return {"client_email": key.get("client_email", ""), "key_id": key.get("private_key_id", ""),
            "token_uri": key.get("token_uri", ""), "project_id": key.get("project_id", "")}


def forget_consent(credential: Credential) -> None:
    credential.expires_at = credential.consented_at = credential.refreshed_at = None
    credential.granted_scopes = credential.consented_by = credential.last_error = ""
    credential.needs_reauthorization = False


def auth_for(credential: Credential | None, values: CredentialValues | None = None,
             destination: dict | None = None, network=None) -> Auth:
    """What the transport signs in with: the saved credential, or (Validate of unsaved
    values) the typed secret or the stored one where it may serve. SecretUnreadable or
    SecretNeeded when it cannot."""
    saved = values is None
    if saved:
        if credential is None or credential.kind not in SECRET_NAMES:
            return NoAuth()
        values = CredentialValues(credential.kind, credential.username, credential.mechanism,
                                  provider=dict(credential.provider))
        secret = unseal(credential.secret) if credential.secret else {}
    else:
        check_secret(credential, values, destination)
        stored = unseal(credential.secret) if values.kind in SECRET_NAMES and credential and credential.secret \
            and credential.bound_to == destination else {}
        if not tokens_serve(credential, values, destination):  # another mailbox or scope needs its own tokens
            stored = {part: value for part, value in stored.items() if part not in TOKEN_PARTS}
        secret = {**stored, **(values.secret or {})}
    if values.kind == CredentialKind.PASSWORD:
        return PasswordAuth(values.username, secret.get("password", ""), values.mechanism)
    if values.kind in TOKEN_KINDS:
        from .grants import grant_for  # grants store refreshed tokens through this module

        same_grant = credential is not None and credential.kind == values.kind and credential.secret and (
            saved or tokens_serve(credential, values, destination))
        return BearerAuth(values.username, grant_for(credential if same_grant else None, values, secret, network),
                          app_only=values.kind == CredentialKind.OAUTH_APP)
    return NoAuth()


# --- the passwords beside the credential: the proxy's, the mail receiver's -----------------------------

SIDE_SECRETS = {SecretPurpose.PROXY: ("proxy password", "proxy_password"),
                SecretPurpose.RECEIVER: ("mail receiver password", "receiver_password"),
                SecretPurpose.CLIENT_CERT: ("client certificate file", "client_cert_file")}
# What changed when a stored one may not serve: the words beside its field.
SIDE_DESTINATIONS = {SecretPurpose.PROXY: "proxy's type, host or port",
                     SecretPurpose.RECEIVER: "mail receiver's type, host or port",
                     SecretPurpose.CLIENT_CERT: "server's host or port"}


@dataclass
class SidePassword:
    """A password beside the credential as a form gives it: whether one is wanted at all (a proxy
    with a username, a receiver login), where it may go, and what was typed (None keeps the stored)."""
    purpose: SecretPurpose
    wanted: bool
    destination: dict = field(default_factory=dict)
    typed: str | None = field(default=None, repr=False)


def side_secret(server: MailServer | None, purpose: str) -> ServerSecret | None:
    if server is None or server.id is None:
        return None
    return next((s for s in server.secrets if s.purpose == purpose), None)


def check_side_password(server: MailServer | None, value: SidePassword) -> None:
    """SecretNeeded (naming the field) unless one was typed, none is wanted, or the stored one was
    saved for this very destination."""
    if not value.wanted or value.typed:
        return
    what, field_name = SIDE_SECRETS[value.purpose]
    stored = side_secret(server, value.purpose)
    verb = "choose" if field_name.endswith("_file") else "enter"
    if stored is None:
        raise SecretNeeded(f"{verb.capitalize()} the {what}.", field_name)
    if stored.bound_to != value.destination:
        raise SecretNeeded(f"The {SIDE_DESTINATIONS[value.purpose]} changed since the {what} was saved: {verb} the "
                           f"{what} again to use it there.", field_name)


def side_password(server: MailServer | None, value: SidePassword) -> str:
    """The password these values use: the typed one, or the stored one where it may serve
    (SecretNeeded otherwise; SecretUnreadable when the keys cannot read it)."""
    if not value.wanted:
        return ""
    check_side_password(server, value)
    if value.typed:
        return value.typed
    return unseal(side_secret(server, value.purpose).secret).get("password", "")


def apply_side_password(server: MailServer, value: SidePassword) -> bool:
    """Write it into the server's secrets (check_side_password ran); True when it changed."""
    if value.purpose == SecretPurpose.CLIENT_CERT:
        _note_client_cert(server, value)
    stored = side_secret(server, value.purpose)
    if not value.wanted:
        if stored is not None:
            server.secrets.remove(stored)
        return stored is not None
    if not value.typed:
        return False
    if stored is None:
        stored = ServerSecret(purpose=value.purpose)
        server.secrets.append(stored)
    changed = not stored.secret or unseal_quietly(stored.secret) != value.typed
    stored.secret, stored.bound_to, stored.updated_at = seal({"password": value.typed}), value.destination, utcnow()
    return changed


def _note_client_cert(server: MailServer, value: SidePassword) -> None:
    """What the page shows of the client certificate (never the key): its subject, issuer and expiry."""
    from .mail.client_cert import ClientCertificate

    if not value.wanted:
        server.client_cert = {}
    elif value.typed:
        server.client_cert = {"enabled": True, **ClientCertificate.from_bundle(value.typed).facts()}


def saved_client_cert(server: MailServer | None):
    """The saved client certificate of an SMTP server with TLS (mail.client_cert.ClientCertificate), or None."""
    from .mail.client_cert import ClientCertificate

    if server is None or server.protocol != "smtp" or not (server.client_cert or {}).get("enabled") \
            or server.settings.get("security") == "none":
        return None
    stored = side_secret(server, SecretPurpose.CLIENT_CERT)
    return ClientCertificate.from_bundle(unseal(stored.secret).get("password", "")) if stored else None


def client_cert_from(bundle: str):
    """A typed (or stored) bundle as the transport takes it; None for none."""
    from .mail.client_cert import ClientCertificate

    return ClientCertificate.from_bundle(bundle) if bundle else None


def saved_proxy(server: MailServer | None):
    """The saved proxy of a server as connections use it (mail.proxy.Proxy), or None."""
    from .mail.proxy import Proxy, ProxySettings

    settings = ProxySettings.from_dict(server.proxy if server is not None else {})
    if not settings.enabled:
        return None
    stored = side_secret(server, SecretPurpose.PROXY)
    password = unseal(stored.secret).get("password", "") if stored and settings.takes_password else ""
    return Proxy(settings, password)


def saved_receiver(server: MailServer | None, ca_pem: str = ""):
    """The saved mail receiver login of a server (mail.receiver.Receiver), or None."""
    from .mail.receiver import Receiver, ReceiverSettings

    settings = ReceiverSettings.from_dict(server.receiver if server is not None else {})
    if not settings.enabled or server.protocol != "smtp":
        return None
    stored = side_secret(server, SecretPurpose.RECEIVER)
    return Receiver(settings, unseal(stored.secret).get("password", "") if stored else "", ca_pem)


def unseal_quietly(token: str) -> str | None:
    try:
        return unseal(token).get("password")
    except SecretUnreadable:
        return None


def unreadable_secrets(credentials) -> int:
    """How many stored secrets the configured keys cannot read (told at start)."""
    box = _box()
    return sum(1 for credential in credentials if credential.secret and not box.readable(credential.secret))


__all__ = ["CredentialValues", "SecretNeeded", "SecretUnreadable", "SidePassword", "auth_for", "apply", "check_secret",
           "check_side_password", "side_password", "apply_side_password",
           "destination_for", "kind_for", "auth_type_of", "seal", "unseal", "KIND_LABELS", "OAUTH_KINDS"]
