"""SQLModel tables. Secrets are stored only as Fernet tokens (columns ending in _secret)."""
from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import JSON, Column, DateTime, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def _timestamp(**kwargs):
    return Field(sa_type=DateTime(timezone=True), **kwargs)


class Role(StrEnum):
    ADMIN = "admin"  # configures the portal's servers
    STAFF = "staff"  # sees status, sends a sample mail


class User(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(max_length=254, unique=True, index=True)
    name: str = Field(default="", max_length=200)
    password_hash: str = Field(max_length=255)
    is_superadmin: bool = False
    is_active: bool = True
    created_at: datetime = _timestamp(default_factory=utcnow)

    # Flask-Login
    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def is_anonymous(self) -> bool:
        return False

    def get_id(self) -> str:
        return str(self.id)


class Portal(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    slug: str = Field(max_length=63, unique=True, index=True)
    name: str = Field(max_length=200)
    base_url: str = Field(default="", max_length=2000)  # links in mails, OAuth redirect URIs
    created_at: datetime = _timestamp(default_factory=utcnow)


class Membership(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("user_id", "portal_id"),)
    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="user.id", index=True, ondelete="CASCADE")
    portal_id: int = Field(foreign_key="portal.id", index=True, ondelete="CASCADE")
    role: Role = Field(sa_type=Text)


class MailServer(SQLModel, table=True):
    """One outgoing server of a portal. `position` is the failover order."""

    __tablename__ = "mail_server"
    id: int | None = Field(default=None, primary_key=True)
    portal_id: int = Field(foreign_key="portal.id", index=True, ondelete="CASCADE")
    position: int = 0
    enabled: bool = True
    version: int = 1  # bumped on every save; a stale form is refused
    description: str = Field(default="", max_length=200)
    protocol: str = Field(default="smtp", max_length=20)

    # SMTP/SMTPS
    host: str = Field(default="", max_length=253)
    port: int | None = None
    security: str = Field(default="starttls", max_length=20)
    verify_cert: bool = True
    ca_cert: str = Field(default="", sa_type=Text)
    timeout: int = 10

    # authentication
    auth_type: str = Field(default="none", max_length=20)  # none | basic (oauth later)
    username: str = Field(default="", max_length=320)
    password_secret: str | None = Field(default=None, sa_type=Text)
    auth_mechanism: str = Field(default="auto", max_length=20)

    # sender
    from_address: str = Field(default="", max_length=320)
    sender_name: str = Field(default="", max_length=200)
    reply_to: str = Field(default="", max_length=320)
    admin_address: str = Field(default="", max_length=320)

    max_connections: int = 5

    last_check_at: datetime | None = _timestamp(default=None)
    last_check_ok: bool | None = None
    last_check_summary: str = Field(default="", max_length=500)
    created_at: datetime = _timestamp(default_factory=utcnow)
    updated_at: datetime = _timestamp(default_factory=utcnow)

    @property
    def label(self) -> str:
        return self.description or self.host or f"server {self.id}"


class AuditEvent(SQLModel, table=True):
    __tablename__ = "audit_event"
    id: int | None = Field(default=None, primary_key=True)
    portal_id: int | None = Field(default=None, foreign_key="portal.id", index=True, ondelete="CASCADE")
    actor_id: int | None = Field(default=None, foreign_key="user.id", ondelete="SET NULL")
    actor: str = Field(default="", max_length=254)  # the email at the time, kept if the user goes
    at: datetime = _timestamp(default_factory=utcnow, index=True)
    action: str = Field(max_length=50)  # "server.updated", "membership.created", ...
    subject: str = Field(default="", max_length=300)
    changes: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
