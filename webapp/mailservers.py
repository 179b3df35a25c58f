"""A portal's mail servers: save, remove, order, enable. Views, the command line and the
worker call these; each change is committed with its AuditEvent."""
from sqlalchemy import bindparam
from sqlmodel import func, select, update

from . import audit, credentials, db, delivery, smime_settings
from .audit import Actor
from .credentials import CredentialValues
from .mail.transport import TRANSPORTS
from .models import MAX_ID, Credential, CredentialKind, MailServer, Portal, utcnow
from .smime_settings import SmimeValues, smime_fields

SERVER_COLUMNS = ("description", "protocol", "enabled", "timeout", "max_connections", "rate_per_minute",
                  "rate_per_day", "from_address", "sender_name", "reply_to", "transcripts")
# and proxy, receiver (prefixed fields), options, smime, client_cert_enabled
# Each kind's secret as its form field calls it: History says "(changed)" when a different one is typed.
SECRET_FIELD = {CredentialKind.PASSWORD: "password", CredentialKind.OAUTH_DELEGATED: "client_secret",
                CredentialKind.OAUTH_APP: "client_secret", CredentialKind.SERVICE_ACCOUNT: "key"}
KEY_FACTS = ("client_email", "key_id", "token_uri", "project_id")  # what the page shows of a stored key


class StaleEdit(Exception):
    """The server changed since the form was opened."""


def servers_of(portal: Portal) -> list[MailServer]:
    return list(db.session().exec(
        select(MailServer).where(MailServer.portal_id == portal.id).order_by(MailServer.position, MailServer.id)
    ).unique())


_SERVER = select(MailServer).where(MailServer.id == bindparam("id"), MailServer.portal_id == bindparam("portal_id"))


def get_server(portal: Portal, server_id: int) -> MailServer | None:
    if not 0 < server_id <= MAX_ID:
        return None
    return db.session().exec(_SERVER, params={"id": server_id, "portal_id": portal.id}).unique().first()


_SERVER_ID = select(MailServer.id).where(MailServer.id == bindparam("id"), MailServer.portal_id == bindparam("portal_id"))


def server_exists(portal: Portal, server_id: int) -> bool:
    """For the parts of the form that need only the id: is it a server of this portal?"""
    return 0 < server_id <= MAX_ID and db.session().exec(
        _SERVER_ID, params={"id": server_id, "portal_id": portal.id}).first() is not None


def settings_of(protocol: str, values: dict):
    """The protocol's typed settings from stored or posted values."""
    return TRANSPORTS[protocol].settings_type.from_dict(values)


def saved_values(server: MailServer) -> dict:
    """Everything the form shows of a saved server, flat by field name."""
    values = {name: getattr(server, name) for name in SERVER_COLUMNS}
    values.update(server.settings)
    for column, prefix in (("proxy", "proxy_"), ("receiver", "receiver_")):  # their fields carry the prefix
        values.update({prefix + name: value for name, value in (getattr(server, column) or {}).items()})
    values.update(server.options or {})  # the message options' fields carry their own names
    values.update(smime_fields(server.smime))
    values["client_cert_enabled"] = bool((server.client_cert or {}).get("enabled"))
    credential = server.credential
    if credential is not None:
        values.update(credential.provider)
        values.update(auth_type=credentials.auth_type_of(credential.kind).value, username=credential.username)
        if credential.kind == CredentialKind.PASSWORD:  # the only kind that has a mechanism
            values["mechanism"] = credential.mechanism
    return values


def snapshot(server: MailServer) -> dict:
    """What History compares: the values of the form's fields as saved (not the facts read from a
    stored key, nor the secret: `secret_typed` says whether that changed)."""
    values = saved_values(server)
    values.setdefault("auth_type", "none")
    for fact in KEY_FACTS:
        values.pop(fact, None)
    if values.get("headers"):  # the message options' custom headers as they read in a mail
        values["headers"] = "; ".join(f"{row['name']}: {row['value']}" for row in values["headers"])
    return values


def secret_typed(credential: Credential | None, values: CredentialValues) -> str | None:
    """The field of a secret that was typed (or a key file chosen) and differs from the stored one;
    None when no secret changed (left blank, typed the same, or the kind has none)."""
    field = SECRET_FIELD.get(values.kind)
    if field is None or not values.secret:
        return None
    if credential is None or not credential.secret or credential.kind != values.kind:
        return field
    try:
        stored = credentials.unseal(credential.secret)
    except credentials.SecretUnreadable:
        return field
    return field if any(stored.get(name) != typed for name, typed in values.secret.items()) else None



def same_credential(server: MailServer, values: CredentialValues, side: list[credentials.SidePassword]) -> bool:
    """The form's credential and side passwords are the saved ones: the same kind, username,
    mechanism and OAuth settings, each secret left blank or typed the same (a browser may fill in
    the password)."""
    saved = server.credential
    if values.kind != (saved.kind if saved else CredentialKind.NONE):
        return False
    if saved is not None and (saved.username != values.username or (
            saved.kind == CredentialKind.PASSWORD and saved.mechanism != values.mechanism)):
        return False
    if saved is not None and saved.kind in credentials.OAUTH_KINDS and saved.provider != values.provider:
        return False  # another tenant, app, flow, endpoint or scope
    if saved is not None and saved.kind == CredentialKind.SERVICE_ACCOUNT and (
            saved.provider.get("scope", "") != values.provider.get("scope", "")):
        return False
    if secret_typed(saved, values) is not None:
        return False
    for value in side:
        stored = credentials.side_secret(server, value.purpose) if value.typed else None
        if value.typed and (stored is None or credentials.unseal_quietly(stored.secret) != value.typed):
            return False
    return True

def save(actor: Actor, portal: Portal, server: MailServer | None, opened_version: str | None,
         columns: dict, settings: dict, credential_values: CredentialValues,
         side: list[credentials.SidePassword] = (), smime: SmimeValues | None = None) -> MailServer:
    """Create or update a server with its credential (and the proxy's and mail receiver's passwords,
    `side`; its S/MIME settings and signing key, `smime`), and record the change; StaleEdit if someone
    saved first, credentials.SecretNeeded if a stored secret may not serve the new values."""
    session = db.session()
    creating = server is None
    typed = settings_of(columns.get("protocol", "smtp"), settings)
    destination = credentials.destination_for(typed, credential_values)
    credentials.check_secret(None if creating else server.credential, credential_values, destination)
    for value in side:
        credentials.check_side_password(server, value)
    if smime is not None:
        smime_settings.check(server, smime)
    before = {} if creating else snapshot(server)
    secret_changed = secret_typed(None if creating else server.credential, credential_values)
    if creating:
        server = MailServer(portal_id=portal.id)
        server.credential = Credential()
        db.lock_portal(portal)
        server.position = _next_position(portal)
    else:
        _claim_version(server, opened_version)
        server.updated_at = utcnow()
        if server.credential is None:
            server.credential = Credential()
    for name, value in columns.items():
        setattr(server, name, value)
    server.settings = typed.to_dict()
    credentials.apply(server.credential, credential_values, destination)
    side_changed = [credentials.SIDE_SECRETS[value.purpose][1] for value in side
                    if credentials.apply_side_password(server, value) and value.wanted]
    if smime is not None and smime_settings.apply(server, smime):
        side_changed.append(smime_settings.CERTIFICATE_FIELD)
    session.add(server)
    session.flush()
    changes = audit.diff(before, snapshot(server))
    if secret_changed:
        changes[secret_changed] = audit.SECRET
    for name in side_changed:
        changes[name] = audit.SECRET
    if changes or creating:
        audit.record(actor, "server.created" if creating else "server.updated", f"“{server.label}”", changes,
                     portal.id)
    session.commit()
    delivery.release_held(server, "its settings were saved")
    return server


def _claim_version(server: MailServer, opened_version: str | None) -> None:
    """Compare-and-set on the version the form was opened with: of two saves, only one wins."""
    try:
        opened = int(opened_version or "")
    except ValueError:
        raise StaleEdit() from None
    if not 0 < opened <= MAX_ID - 1:
        raise StaleEdit()
    session = db.session()
    result = session.execute(
        update(MailServer).where(MailServer.id == server.id, MailServer.version == opened)
        .values(version=opened + 1).execution_options(synchronize_session=False))
    if result.rowcount != 1:
        session.rollback()
        raise StaleEdit()
    server.version = opened + 1


def _next_position(portal: Portal) -> int:
    highest = db.session().exec(select(func.max(MailServer.position)).where(MailServer.portal_id == portal.id)).one()
    return (highest or 0) + 1


def remove(actor: Actor, portal: Portal, server: MailServer) -> None:
    session = db.session()
    db.lock_portal(portal)
    if session.exec(select(MailServer.id).where(MailServer.id == server.id)).first() is None:
        session.rollback()  # removed meanwhile (a double click): nothing to do, nothing to record
        return
    session.delete(server)
    session.flush()
    audit.record(actor, "server.removed", f"“{server.label}”", {}, portal.id)
    _renumber(portal, servers_of(portal))
    session.commit()


def set_enabled(actor: Actor, portal: Portal, server: MailServer, enabled: bool) -> None:
    """Enable or disable; the version moves on in the same statement (an open edit form of the
    server becomes stale); a server removed meanwhile is left alone."""
    if server.enabled == enabled:
        return
    session = db.session()
    changed = session.execute(update(MailServer).where(MailServer.id == server.id, MailServer.enabled != enabled)
                              .values(enabled=enabled, version=MailServer.version + 1))
    if changed.rowcount != 1:
        session.rollback()
        return
    audit.record(actor, "server.updated", f"“{server.label}”", {"enabled": [not enabled, enabled]}, portal.id)
    session.commit()
    if enabled:
        delivery.release_held(server, "it was enabled")


def move(actor: Actor, portal: Portal, server: MailServer, step: int) -> None:
    """Swap places with the neighbour above (-1) or below (+1): two rows change, whatever the number of
    servers. A server removed meanwhile, or already first (last), is left alone."""
    db.lock_portal(portal)
    session = db.session()
    current = session.exec(select(MailServer.position).where(MailServer.id == server.id,
                                                             MailServer.portal_id == portal.id)).first()
    if current is None:
        session.rollback()
        return
    above = step < 0
    neighbour = session.exec(
        select(MailServer.id, MailServer.position)
        .where(MailServer.portal_id == portal.id,
               MailServer.position < current if above else MailServer.position > current)
        .order_by(MailServer.position.desc() if above else MailServer.position).limit(1)).first()
    if neighbour is None:
        session.rollback()
        return
    other_id, other_position = neighbour
    for id_, position in ((server.id, -current), (other_id, current), (server.id, other_position)):
        session.execute(update(MailServer).where(MailServer.id == id_).values(position=position)
                        .execution_options(synchronize_session=False))  # through a free position: unique
    audit.record(actor, "server.reordered", f"“{server.label}”", {"position": [current, other_position]}, portal.id)
    session.commit()
    server.position = other_position


def _renumber(portal: Portal, servers: list[MailServer]) -> None:
    """Positions 1..n in this order, through negative ones so that none is ever taken twice."""
    session = db.session()
    for position, each in enumerate(servers, start=1):
        session.execute(update(MailServer).where(MailServer.id == each.id).values(position=-position)
                        .execution_options(synchronize_session=False))
    session.execute(update(MailServer).where(MailServer.portal_id == portal.id)
                    .values(position=-MailServer.position).execution_options(synchronize_session=False))
    for position, each in enumerate(servers, start=1):
        each.position = position



def reads_back(server: MailServer) -> bool:
    """Can Mailroom read a mailbox for this server (its mail receiver login), to show how a sample arrived?"""
    from .mail.receiver import ReceiverSettings

    return server.protocol == "smtp" and ReceiverSettings.from_dict(server.receiver).enabled
