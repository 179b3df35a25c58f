"""SQLModel tables. Secrets are stored only as Fernet tokens (columns named secret)."""
from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import JSON, Column, DateTime, Index, LargeBinary, Text, UniqueConstraint
from sqlmodel import Field, Relationship, SQLModel


MAX_ID = 2**31 - 1  # ids and versions are INTEGER columns: a larger number matches no row


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
    must_change_password: bool = False  # a password someone else chose: change it at sign-in
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
    __table_args__ = (Index("ix_portal_name", "name", "id"),)  # the portals index, by name
    id: int | None = Field(default=None, primary_key=True)
    slug: str = Field(max_length=63, unique=True, index=True)
    name: str = Field(max_length=200)
    base_url: str = Field(default="", max_length=2000)  # links in mails, OAuth redirect URIs
    egress_allow: str = Field(default="", sa_type=Text)  # egress rules, one per line (super-admins set them)
    egress_deny: str = Field(default="", sa_type=Text)
    created_at: datetime = _timestamp(default_factory=utcnow)

    # delivery
    delivery_policy: str = Field(default="failover", max_length=20)  # DeliveryPolicy
    admin_address: str = Field(default="", max_length=320)  # receives the delivery notices
    failover_since: datetime | None = _timestamp(default=None)  # mail goes via an alternate since then
    failover_reason: str = Field(default="", max_length=500)  # why the primary is not used, in words


class AppSetting(SQLModel, table=True):
    """Settings of the whole installation that super-admins change in the app (the global egress lists)."""

    __tablename__ = "app_setting"
    name: str = Field(primary_key=True, max_length=50)
    value: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class Membership(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("user_id", "portal_id"),)
    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="user.id", index=True, ondelete="CASCADE")
    portal_id: int = Field(foreign_key="portal.id", index=True, ondelete="CASCADE")
    role: Role = Field(sa_type=Text)
    # the From of mail sent on this member's behalf (their sample mails, their API keys and SMTP credentials);
    # None: the server's own From
    sender_id: int | None = Field(default=None, foreign_key="sender_id.id", ondelete="SET NULL")


class SenderId(SQLModel, table=True):
    """An alternative From address of a portal (eG's "Alternative Mail sender IDs"): members are assigned
    one, and the API and the SMTP submission listener accept it as a From besides the servers' own."""

    __tablename__ = "sender_id"
    __table_args__ = (UniqueConstraint("portal_id", "address"),)
    id: int | None = Field(default=None, primary_key=True)
    portal_id: int = Field(foreign_key="portal.id", index=True, ondelete="CASCADE")
    address: str = Field(max_length=320)  # normalized (email-validator), lower case
    created_by: str = Field(default="", max_length=254)
    created_at: datetime = _timestamp(default_factory=utcnow)


class DeliveryPolicy(StrEnum):
    FAILOVER = "failover"  # the first enabled server; the next when it fails temporarily
    SPREAD = "spread"  # messages shared across every enabled server


class CredentialKind(StrEnum):
    NONE = "none"
    PASSWORD = "password"
    OAUTH_DELEGATED = "oauth_delegated"  # a person consented; refresh tokens
    OAUTH_APP = "oauth_app"  # client credentials, app-only
    SERVICE_ACCOUNT = "service_account"  # a Google service-account key


class MailServer(SQLModel, table=True):
    """One outgoing server of a portal: what every protocol has in common. Its protocol's
    own settings are `settings` (typed by the protocol's settings class); how it signs
    in is its Credential. `position` is the order."""

    __tablename__ = "mail_server"
    __table_args__ = (UniqueConstraint("portal_id", "position"),)
    id: int | None = Field(default=None, primary_key=True)
    portal_id: int = Field(foreign_key="portal.id", index=True, ondelete="CASCADE")
    position: int = 0
    enabled: bool = True
    version: int = 1  # bumped on every save by an admin; a stale form is refused
    description: str = Field(default="", max_length=200)
    protocol: str = Field(default="smtp", max_length=20)
    settings: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))

    # limits
    timeout: int = 10  # seconds for a whole check or send
    max_connections: int = 5  # connections Mailroom opens to this server at once

    # sender
    from_address: str = Field(default="", max_length=320)
    sender_name: str = Field(default="", max_length=200)
    reply_to: str = Field(default="", max_length=320)
    admin_address: str = Field(default="", max_length=320)  # unused: the portal's admin_address gets the notices
    rate_per_minute: int | None = None  # messages this server may send per minute (None: no limit)
    rate_per_day: int | None = None  # ... and per day

    # delivery health, written by the worker without bumping `version`
    failing_since: datetime | None = _timestamp(default=None)  # temporary failures since then (alternates used)
    failing_reason: str = Field(default="", max_length=500)
    held_since: datetime | None = _timestamp(default=None)  # refuses its credentials: its mail is held
    held_reason: str = Field(default="", max_length=500)

    last_check_at: datetime | None = _timestamp(default=None)
    last_check_ok: bool | None = None
    last_check_kind: str = Field(default="", max_length=20)  # "validate" | "sample"
    last_check_summary: str = Field(default="", max_length=500)
    created_at: datetime = _timestamp(default_factory=utcnow)
    updated_at: datetime = _timestamp(default_factory=utcnow)

    # the way out: a proxy (mail.proxy.ProxySettings) and a login before sending (mail.receiver.ReceiverSettings);
    # {} when there is none. Their passwords are ServerSecrets.
    proxy: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    receiver: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # written into every message it sends (mail.options.MessageOptions); {} when none
    options: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # S/MIME (mail.smime.SmimeSettings: sign, hash, encrypt, algorithm, the signing certificate's PEM);
    # {} when off. Its private key is a ServerSecret (purpose smime_key).
    smime: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # SSL client certificate (mail.client_cert): {} or {"enabled", "subject", "issuer", "not_before", "expires"};
    # the certificate and its key are a ServerSecret (purpose client_cert)
    client_cert: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    transcripts: bool = False  # keep SMTP transcripts under instance/logs/ (mail.transcripts)

    credential: "Credential" = Relationship(
        back_populates="server",
        sa_relationship_kwargs={"lazy": "joined", "uselist": False, "cascade": "all, delete-orphan"})
    secrets: list["ServerSecret"] = Relationship(
        back_populates="server", sa_relationship_kwargs={"cascade": "all, delete-orphan"})

    @property
    def label(self) -> str:
        return server_label(self.id, self.description, self.settings.get("host"))


def server_label(server_id: int | None, description: str, host: str | None) -> str:
    """What a server is called in pages: its description, else its host (lists that load only
    these columns call this too)."""
    return description or host or f"server {server_id}"


class Credential(SQLModel, table=True):
    """How a server signs in. Written without touching the server's version: a token
    refresh never makes an open edit form stale. The secret part (password, client
    secret and tokens, or a private key) is one encrypted payload; the facts beside it
    are readable without decrypting."""

    id: int | None = Field(default=None, primary_key=True)
    server_id: int = Field(foreign_key="mail_server.id", unique=True, ondelete="CASCADE")
    kind: str = Field(default=CredentialKind.NONE, max_length=20)
    username: str = Field(default="", max_length=320)  # who signs in, or the mailbox acted for
    mechanism: str = Field(default="auto", max_length=20)  # SMTP: auto | PLAIN | LOGIN | CRAM-MD5
    provider: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))  # OAuth settings
    secret: str | None = Field(default=None, sa_type=Text)
    bound_to: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))  # its destination
    revision: int = 1  # bumped on every write of the secret (compare-and-set)

    expires_at: datetime | None = _timestamp(default=None)  # of the access token
    granted_scopes: str = Field(default="", sa_type=Text)
    consented_by: str = Field(default="", max_length=320)
    consented_at: datetime | None = _timestamp(default=None)
    refreshed_at: datetime | None = _timestamp(default=None)
    last_error: str = Field(default="", max_length=500)
    needs_reauthorization: bool = False
    updated_at: datetime = _timestamp(default_factory=utcnow)

    server: MailServer = Relationship(back_populates="credential")


class SecretPurpose(StrEnum):
    PROXY = "proxy"  # the proxy's password
    RECEIVER = "receiver"  # the mail receiver's password (login before sending)
    SMIME_KEY = "smime_key"  # the S/MIME signing key (PKCS#8 PEM, unencrypted inside the seal)
    CLIENT_CERT = "client_cert"  # the SMTP client certificate with its private key (mail.client_cert)


class ServerSecret(SQLModel, table=True):
    """A server's password beside its credential's (the proxy's, the mail receiver's): sealed like
    the credential's secret, and bound to the destination it was saved for (`bound_to`)."""

    __tablename__ = "server_secret"
    __table_args__ = (UniqueConstraint("server_id", "purpose"),)
    id: int | None = Field(default=None, primary_key=True)
    server_id: int = Field(foreign_key="mail_server.id", index=True, ondelete="CASCADE")
    purpose: str = Field(max_length=20)  # SecretPurpose
    secret: str = Field(sa_type=Text)
    bound_to: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    updated_at: datetime = _timestamp(default_factory=utcnow)

    server: MailServer = Relationship(back_populates="secrets")


class OAuthState(SQLModel, table=True):
    """A consent under way: one use, bound to the browser that started it and to one server."""

    __tablename__ = "oauth_state"
    id: str = Field(primary_key=True, max_length=64)  # sha256 of the state sent to the provider
    server_id: int = Field(foreign_key="mail_server.id", index=True, ondelete="CASCADE")
    purpose: str = Field(max_length=20)  # "consent" | "admin_consent"
    browser: str = Field(max_length=64)  # sha256 of a random value kept in the starting browser's session
    verifier: str = Field(sa_type=Text)  # the PKCE code verifier, sealed
    redirect_uri: str = Field(max_length=2000)
    issuer: str = Field(default="", max_length=2000)  # the expected `iss` of the answer, when known
    iss_required: bool = False  # the provider's metadata says it sends `iss` (RFC 9207): an answer without is refused
    destination: str = Field(default="", max_length=64)  # sha256 of the OAuth settings it was started for
    started_by: str = Field(default="", max_length=320)  # a user's email, or "the mailbox owner (consent link)"
    link_id: str | None = Field(default=None, max_length=64)
    created_at: datetime = _timestamp(default_factory=utcnow)


class ConsentLink(SQLModel, table=True):
    """A link an admin hands to the mailbox owner: for one server, expiring, usable once."""

    __tablename__ = "consent_link"
    id: str = Field(primary_key=True, max_length=64)  # random; the link carries it signed
    server_id: int = Field(foreign_key="mail_server.id", index=True, ondelete="CASCADE")
    created_by: str = Field(default="", max_length=320)
    created_at: datetime = _timestamp(default_factory=utcnow)
    expires_at: datetime = _timestamp()
    used_at: datetime | None = _timestamp(default=None)


class UserSession(SQLModel, table=True):
    """A signed-in browser. The cookie holds a random token; only its hash is stored here."""

    __tablename__ = "user_session"
    id: str = Field(primary_key=True, max_length=64)  # sha256 of the cookie's token
    user_id: int = Field(foreign_key="user.id", index=True, ondelete="CASCADE")
    data: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = _timestamp(default_factory=utcnow)
    last_seen_at: datetime = _timestamp(default_factory=utcnow)


class RateCount(SQLModel, table=True):
    """One rate limit's count in its current window (failed sign-ins, sample mails) when there is no
    Redis: every process of every host counts here together (limits.DatabaseStorage)."""

    __tablename__ = "rate_count"
    key: str = Field(primary_key=True, max_length=64)  # sha256 of the limit's key (it may name an account)
    count: int = 0
    expires_at: float = Field(index=True)  # seconds since the epoch: the window's end


class AuditEvent(SQLModel, table=True):
    __tablename__ = "audit_event"
    __table_args__ = (
        Index("ix_audit_event_portal_at", "portal_id", "at", "id"),  # History, newest first
        Index("ix_audit_event_portal_actor", "portal_id", "actor", "at", "id"),  # ... by who
    )
    id: int | None = Field(default=None, primary_key=True)
    portal_id: int | None = Field(default=None, foreign_key="portal.id", index=True, ondelete="CASCADE")
    actor_id: int | None = Field(default=None, foreign_key="user.id", ondelete="SET NULL")
    actor: str = Field(default="", max_length=254)  # who, in words, kept if the user goes
    at: datetime = _timestamp(default_factory=utcnow, index=True)
    action: str = Field(max_length=50)  # "server.updated", "membership.created", ...
    subject: str = Field(default="", max_length=300)
    changes: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class MailState(StrEnum):
    QUEUED = "queued"  # waiting for its next attempt (next_attempt_at)
    SENDING = "sending"  # claimed by a worker until lease_until
    HELD = "held"  # the server refused its credentials: waits until they are fixed (attempts not counted)
    SENT = "sent"  # every recipient accepted (or refused for good: see recipients)
    FAILED = "failed"  # refused for good, or its lifetime ran out


class OutboundMail(SQLModel, table=True):
    """A message handed to Mailroom: the record of what happens to it (the task queue only wakes
    workers up). `raw` is the MIME message as accepted (Bcc header included, CRLF line ends), so
    every attempt sends the same bytes with the same Message-ID; `recipients` holds each envelope
    recipient's outcome: [{"address", "state": pending|sent|failed, "code", "reply"}]."""

    __tablename__ = "outbound_mail"
    __table_args__ = (
        UniqueConstraint("portal_id", "idempotency_key"),
        Index("ix_outbound_mail_due", "state", "next_attempt_at"),
        Index("ix_outbound_mail_portal_list", "portal_id", "id"),
        Index("ix_outbound_mail_portal_state", "portal_id", "state", "id"),
        Index("ix_outbound_mail_portal_server", "portal_id", "server_id", "id"),  # the queue's server filter
        Index("ix_outbound_mail_portal_created", "portal_id", "created_at", "id"),  # ... and its time range
        Index("ix_outbound_mail_fresh", "state", "attempts", "next_attempt_at"),  # new mail before retries
    )
    id: int | None = Field(default=None, primary_key=True)
    portal_id: int = Field(foreign_key="portal.id", ondelete="CASCADE")
    state: str = Field(default=MailState.QUEUED, max_length=20)
    source: str = Field(default="api", max_length=20)  # api | python | smtp | notice
    submitted_by: str = Field(default="", max_length=320)  # an API key's name, an SMTP credential, a user
    client_address: str = Field(default="", max_length=64)
    api_key_id: int | None = Field(default=None, foreign_key="api_key.id", ondelete="SET NULL")
    # Mailroom's own mail through the server the super-admin designated for system mail: only that server
    # is tried (None: the portal's servers, in the order of its delivery policy)
    pinned_server_id: int | None = Field(default=None, foreign_key="mail_server.id", ondelete="SET NULL")
    idempotency_key: str | None = Field(default=None, max_length=200)
    request_hash: str = Field(default="", max_length=64)  # of the request that used the idempotency key

    message_id: str = Field(default="", max_length=500)
    mail_from: str = Field(default="", max_length=320)  # envelope sender
    recipients: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    subject: str = Field(default="", max_length=300)  # for lists, shortened
    to_summary: str = Field(default="", max_length=500)  # the receiver(s), for lists
    size: int = 0
    raw: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))  # purged after retention

    attempts: int = 0
    created_at: datetime = _timestamp(default_factory=utcnow)
    updated_at: datetime = _timestamp(default_factory=utcnow)
    next_attempt_at: datetime = _timestamp(default_factory=utcnow)
    last_attempt_at: datetime | None = _timestamp(default=None)
    expires_at: datetime | None = _timestamp(default=None)  # its lifetime: fails (with a notice) after this
    lease_owner: str = Field(default="", max_length=100)  # the worker that claimed it
    lease_until: datetime | None = _timestamp(default=None)
    server_id: int | None = Field(default=None, foreign_key="mail_server.id", ondelete="SET NULL")  # last used
    last_error: str = Field(default="", max_length=1000)
    last_code: int | None = None
    sent_at: datetime | None = _timestamp(default=None)
    purged_at: datetime | None = _timestamp(default=None)
    # its body carries a secret (a password-recovery link): purged as soon as it is sent or failed
    purge_when_done: bool = False


class DeliveryAttempt(SQLModel, table=True):
    """One try to hand a message to one server."""

    __tablename__ = "delivery_attempt"
    __table_args__ = (Index("ix_delivery_attempt_server_at", "server_id", "at"),)
    id: int | None = Field(default=None, primary_key=True)
    mail_id: int = Field(foreign_key="outbound_mail.id", index=True, ondelete="CASCADE")
    at: datetime = _timestamp(default_factory=utcnow)
    server_id: int | None = Field(default=None, foreign_key="mail_server.id", ondelete="SET NULL")
    server_label: str = Field(default="", max_length=200)  # kept if the server goes
    outcome: str = Field(max_length=20)  # sent | deferred | failed | held
    code: int | None = None
    reply: str = Field(default="", max_length=1000)  # the server's words (or ours), never a secret
    elapsed: float = 0.0
    worker: str = Field(default="", max_length=100)


class ApiKey(SQLModel, table=True):
    """A portal's key for the HTTP API. Only its hash is stored; `prefix` identifies it in lists."""

    __tablename__ = "api_key"
    id: int | None = Field(default=None, primary_key=True)
    portal_id: int = Field(foreign_key="portal.id", index=True, ondelete="CASCADE")
    name: str = Field(max_length=100)
    prefix: str = Field(max_length=20)
    key_hash: str = Field(max_length=64, unique=True)
    owner_id: int | None = Field(default=None, foreign_key="user.id", ondelete="SET NULL")  # who created it
    created_by: str = Field(default="", max_length=254)
    created_at: datetime = _timestamp(default_factory=utcnow)
    last_used_at: datetime | None = _timestamp(default=None)
    revoked_at: datetime | None = _timestamp(default=None)


class ConnectionLease(SQLModel, table=True):
    """A connection a worker holds open to a server: their count never exceeds the server's
    max_connections, across every process and host. A lease a dead worker left expires."""

    __tablename__ = "connection_lease"
    id: int | None = Field(default=None, primary_key=True)
    server_id: int = Field(foreign_key="mail_server.id", index=True, ondelete="CASCADE")
    owner: str = Field(max_length=100)
    expires_at: datetime = _timestamp()


class NoticeKind(StrEnum):
    FAILOVER_STARTED = "failover_started"  # mail goes via an alternate server
    FAILOVER_ENDED = "failover_ended"  # the primary server works again
    HELD = "held"  # a server refuses its credentials: its mail is held (or goes via an alternate)
    REAUTHORIZATION = "reauthorization"  # an OAuth grant needs the mailbox owner's consent again
    HELD_EXPIRED = "held_expired"  # held mail reached the end of its lifetime and failed
    SUMMARY = "summary"  # the daily summary of failed mail


class DeliveryNotice(SQLModel, table=True):
    """A notice sent to a portal's admin address: at most one of each kind per portal per period."""

    __tablename__ = "delivery_notice"
    __table_args__ = (Index("ix_delivery_notice_portal_kind_at", "portal_id", "kind", "at"),)
    id: int | None = Field(default=None, primary_key=True)
    portal_id: int = Field(foreign_key="portal.id", ondelete="CASCADE")
    kind: str = Field(max_length=30)  # NoticeKind
    at: datetime = _timestamp(default_factory=utcnow)
    mail_id: int | None = Field(default=None, foreign_key="outbound_mail.id", ondelete="SET NULL")
    subject: str = Field(default="", max_length=300)


class FromPolicy(StrEnum):
    LISTED = "listed"  # the message's From (and MAIL FROM) must be one of from_addresses
    REWRITE = "rewrite"  # whatever the device writes, From becomes the portal's From


class SmtpCredential(SQLModel, table=True):
    """A device's or an application's sign-in to the SMTP submission listener, for one portal.
    Only the password's hash is stored. The counters are fixed windows (epoch minute, epoch day)
    shared by every listener process and host: a message is counted when it is accepted."""

    __tablename__ = "smtp_credential"
    id: int | None = Field(default=None, primary_key=True)
    portal_id: int = Field(foreign_key="portal.id", index=True, ondelete="CASCADE")
    name: str = Field(max_length=100)  # what admins call it: "Scanner, 2nd floor"
    username: str = Field(max_length=100, unique=True)  # unique across portals, kept after revocation
    password_hash: str = Field(max_length=255)
    from_policy: str = Field(default=FromPolicy.LISTED, max_length=20)
    from_addresses: str = Field(default="", sa_type=Text)  # one per line: an address, or @domain for all of it
    client_networks: str = Field(default="", sa_type=Text)  # CIDR, one per line; empty: any client
    plain_networks: str = Field(default="", sa_type=Text)  # may sign in without TLS from these; empty: nowhere
    max_message_bytes: int = 10 * 1024 * 1024
    per_minute: int | None = None  # messages accepted per minute (None: no limit)
    per_day: int | None = None  # ... per calendar day (UTC)

    minute_window: int = 0  # epoch minute of minute_count
    minute_count: int = 0
    day_window: int = 0  # epoch day of day_count
    day_count: int = 0

    owner_id: int | None = Field(default=None, foreign_key="user.id", ondelete="SET NULL")  # who created it
    created_by: str = Field(default="", max_length=254)
    created_at: datetime = _timestamp(default_factory=utcnow)
    last_used_at: datetime | None = _timestamp(default=None)  # the last message accepted
    last_client: str = Field(default="", max_length=64)  # ... and from where
    revoked_at: datetime | None = _timestamp(default=None)


class SmimeCertificate(SQLModel, table=True):
    """A recipient's S/MIME certificate (public), for encrypting the portal's mail to that address.
    One row per address the certificate names; `der` is the certificate itself."""

    __tablename__ = "smime_certificate"
    __table_args__ = (Index("ix_smime_certificate_portal_address", "portal_id", "address"),)
    id: int | None = Field(default=None, primary_key=True)
    portal_id: int = Field(foreign_key="portal.id", ondelete="CASCADE")
    address: str = Field(max_length=320)  # lower case
    der: bytes = Field(sa_type=LargeBinary)
    subject: str = Field(default="", max_length=1000)
    issuer: str = Field(default="", max_length=1000)
    not_after: datetime = _timestamp()
    fingerprint: str = Field(default="", max_length=64)  # SHA-256 of der, hex: the same certificate once per address
    created_at: datetime = _timestamp(default_factory=utcnow)


class PasswordReset(SQLModel, table=True):
    """A password-recovery link sent by mail: single-use and expiring. Only the token's hash is stored."""

    __tablename__ = "password_reset"
    id: str = Field(primary_key=True, max_length=64)  # sha256 of the token in the link
    user_id: int = Field(foreign_key="user.id", index=True, ondelete="CASCADE")
    created_at: datetime = _timestamp(default_factory=utcnow)
    expires_at: datetime = _timestamp()
    used_at: datetime | None = _timestamp(default=None)
    client_address: str = Field(default="", max_length=64)  # who asked for it


class RecoveryRequest(SQLModel, table=True):
    """"Forgot your password?" asked for an address, known or not: the request only records it, and a
    job of the delivery queue answers it (recovery.answer), so every address costs the request the same."""

    __tablename__ = "recovery_request"
    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(max_length=320)  # as typed
    client_address: str = Field(default="", max_length=64)
    asked_at: datetime = _timestamp(default_factory=utcnow)
