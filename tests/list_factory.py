"""Many rows at once for the list tests (and the browser test): bulk inserts of the app's models."""
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, insert
from sqlmodel import select

from webapp import db
from webapp.models import AuditEvent, MailServer, Membership, Portal, Role, User

T0 = datetime(2026, 10, 1, 8, 0, tzinfo=UTC)


def _insert(app, model, rows: list[dict], *where) -> list[int]:
    """Insert the rows; the ids of the last len(rows) rows that `where` selects, oldest first (the
    ids the database gave, in insertion order)."""
    with app.app_context():
        session = db.session()
        for first in range(0, len(rows), 2000):
            session.execute(insert(model), rows[first:first + 2000])
        session.commit()
        return list(session.exec(select(model.id).where(*where).order_by(model.id.desc()).limit(len(rows))))[::-1]


def servers(app, portal: Portal, count: int, host="relay{i}.example.com") -> list[int]:
    """`count` SMTP servers after the portal's last one, "Relay i" at relay{i}.example.com; their ids."""
    with app.app_context():
        last = db.session().execute(select(func.max(MailServer.position)).where(
            MailServer.portal_id == portal.id)).scalar_one() or 0
    now = datetime.now(UTC)
    rows = [dict(portal_id=portal.id, position=last + i + 1, enabled=True, version=1, description=f"Relay {i:04d}",
                 protocol="smtp", settings={"host": host.format(i=i), "port": 587, "security": "starttls",
                                            "verify_cert": True, "ca_cert": "", "local_hostname": "",
                                            "plaintext_auth": False},
                 timeout=10, max_connections=5, from_address=f"desk{i}@example.com", sender_name="", reply_to="",
                 admin_address="", failing_reason="", held_reason="", last_check_kind="", last_check_summary="",
                 created_at=now, updated_at=now, proxy={}, receiver={})
            for i in range(count)]
    return _insert(app, MailServer, rows, MailServer.portal_id == portal.id)


def users(app, count: int, email="user{i:05d}@example.com", name="User {i}") -> list[int]:
    now = datetime.now(UTC)
    rows = [dict(email=email.format(i=i), name=name.format(i=i), password_hash="not-a-hash", is_superadmin=False,
                 is_active=True, must_change_password=False, created_at=now) for i in range(count)]
    return _insert(app, User, rows, User.password_hash == "not-a-hash")


def portals(app, count: int) -> list[int]:
    now = datetime.now(UTC)
    rows = [dict(slug=f"portal-{i:05d}", name=f"Portal {i:05d}", base_url="", egress_allow="", egress_deny="",
                 created_at=now, delivery_policy="failover", admin_address="", failover_reason="")
            for i in range(count)]
    return _insert(app, Portal, rows, Portal.slug.startswith("portal-"))


def members(app, portal: Portal, user_ids: list[int], role=Role.STAFF) -> None:
    with app.app_context():
        db.session().execute(insert(Membership), [dict(user_id=u, portal_id=portal.id, role=role) for u in user_ids])
        db.session().commit()


def events(app, portal: Portal, count: int, start=T0, step=timedelta(minutes=1), actor="admin@example.com",
           subject="“Relay {i}”") -> list[int]:
    """`count` History events, one a `step` apart from `start`; their ids, oldest first."""
    rows = [dict(portal_id=portal.id, actor_id=None, actor=actor, at=start + i * step, action="server.updated",
                 subject=subject.format(i=i), changes={"timeout": [10, 20]}) for i in range(count)]
    return _insert(app, AuditEvent, rows, AuditEvent.portal_id == portal.id)
