"""Operations on a portal's mail servers: settings to mail config, saving, order, checks."""
from flask import current_app
from sqlmodel import func, select, update

from . import audit, db
from .mail.config import AuthMechanism, Security, Sender, ServerConfig, SmtpSettings
from .mail.report import Report
from .models import MailServer, Portal, utcnow

AUDITED = (
    "description", "protocol", "enabled", "host", "port", "security", "verify_cert", "ca_cert", "timeout",
    "auth_type", "username", "auth_mechanism", "from_address", "sender_name", "reply_to", "admin_address",
    "max_connections",
)


class StaleEdit(Exception):
    """The server changed since the form was opened."""


def secret_box():
    return current_app.extensions["mailroom.secrets"]


def servers_of(portal: Portal) -> list[MailServer]:
    return list(db.session().exec(
        select(MailServer).where(MailServer.portal_id == portal.id).order_by(MailServer.position, MailServer.id)
    ))


def get_server(portal: Portal, server_id: int) -> MailServer | None:
    server = db.session().get(MailServer, server_id)
    return server if server and server.portal_id == portal.id else None


def draft(server: MailServer | None, portal: Portal) -> MailServer:
    """A detached copy to apply form values to, for Validate (nothing is saved)."""
    if server is None:
        return MailServer(portal_id=portal.id)
    return MailServer.model_validate(server.model_dump())


def apply(server: MailServer, settings: dict, password: str | None, clear_password: bool) -> None:
    for name, value in settings.items():
        setattr(server, name, value)
    if clear_password:
        server.password_secret = None
    if password:
        server.password_secret = secret_box().encrypt(password)


def snapshot(server: MailServer) -> dict:
    values = {name: getattr(server, name) for name in AUDITED}
    values["password"] = server.password_secret
    return values


def save(portal: Portal, server: MailServer, form_version: str | None, settings: dict,
         password: str | None, clear_password: bool) -> MailServer:
    """Apply the form and commit, with the change recorded; StaleEdit if someone saved first."""
    session = db.session()
    creating = server.id is None
    before = {} if creating else snapshot(server)
    if creating:
        server.portal_id = portal.id
        server.position = _next_position(portal)
    else:
        _claim_version(server, form_version)
        server.updated_at = utcnow()
    apply(server, settings, password, clear_password)
    session.add(server)
    session.flush()
    changes = audit.diff(before, snapshot(server), secret_fields=frozenset({"password"}))
    if changes or creating:
        action = "server.created" if creating else "server.updated"
        audit.record(action, f"“{server.label}”", changes, portal.id)
    session.commit()
    return server


def _claim_version(server: MailServer, form_version: str | None) -> None:
    """Compare-and-set on the version the form was opened with: of two saves, only one wins."""
    session = db.session()
    try:
        opened = int(form_version or "")
    except ValueError:
        raise StaleEdit() from None
    result = session.execute(
        update(MailServer)
        .where(MailServer.id == server.id, MailServer.version == opened)
        .values(version=opened + 1)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        session.rollback()
        raise StaleEdit()
    server.version = opened + 1


def _next_position(portal: Portal) -> int:
    highest = db.session().exec(select(func.max(MailServer.position)).where(MailServer.portal_id == portal.id)).one()
    return (highest or 0) + 1


def remove(portal: Portal, server: MailServer) -> None:
    session = db.session()
    session.delete(server)
    audit.record("server.removed", f"“{server.label}”", {}, portal.id)
    session.commit()


def set_enabled(portal: Portal, server: MailServer, enabled: bool) -> None:
    if server.enabled == enabled:
        return
    audit.record("server.updated", f"“{server.label}”", {"enabled": [server.enabled, enabled]}, portal.id)
    server.enabled = enabled
    server.version += 1
    db.session().add(server)
    db.session().commit()


def move(portal: Portal, server: MailServer, step: int) -> None:
    """Swap with the neighbour above (-1) or below (+1); positions are renumbered 1..n."""
    servers = servers_of(portal)
    index = servers.index(server)
    other = index + step
    if not 0 <= other < len(servers):
        return
    servers[index], servers[other] = servers[other], servers[index]
    for position, each in enumerate(servers, start=1):
        each.position = position
        db.session().add(each)
    audit.record("server.reordered", f"“{server.label}”",
                 {"order": [s.label for s in servers]}, portal.id)
    db.session().commit()


def config_for(server: MailServer, password: str | None = None) -> ServerConfig:
    """The settings a transport needs. `password` overrides the stored one (an unsaved form)."""
    basic = server.auth_type == "basic"
    if basic and password is None and server.password_secret:
        password = secret_box().decrypt(server.password_secret)
    smtp = SmtpSettings(
        host=server.host,
        port=server.port or 0,
        security=Security(server.security),
        verify_cert=server.verify_cert,
        ca_cert=server.ca_cert or "",
        timeout=float(server.timeout),
        username=server.username if basic else "",
        password=(password or "") if basic else "",
        mechanism=AuthMechanism(server.auth_mechanism),
    )
    sender = Sender(address=server.from_address, name=server.sender_name, reply_to=server.reply_to)
    return ServerConfig(protocol=server.protocol, sender=sender, smtp=smtp, label=server.label)


def remember_check(server: MailServer, report: Report) -> None:
    """Store the outcome of a check of the saved settings, for the server list."""
    failure = report.failure
    server.last_check_at = utcnow()
    server.last_check_ok = report.ok
    server.last_check_summary = (f"{failure.name}: {failure.summary}" if failure else "All checks passed")[:500]
    db.session().add(server)
    db.session().commit()
