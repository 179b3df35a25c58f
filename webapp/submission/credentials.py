"""SMTP credentials: admins create, change and revoke them (the web page and History); the listener
signs devices in with them and counts what they send.

A credential belongs to one portal: whatever it submits is stored in that portal's outbox and goes
out only through that portal's servers. Only the password's hash is stored (werkzeug, as users'
passwords are); the password itself is shown once. Usernames are unique across portals and stay
taken after a revocation, so a device still configured with an old credential never signs in as a
new one. Rate limits are fixed windows counted in the credential's row, so every listener process
and host counts together.
"""
import ipaddress
import secrets
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from sqlalchemy import bindparam, case, or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import select
from werkzeug.security import check_password_hash

from .. import audit, db, passwords
from ..audit import Actor
from ..models import MAX_ID, FromPolicy, Portal, SmtpCredential, utcnow
from ..security import hash_password, unknown_user_hash

MIB = 1024 * 1024

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class UsernameTaken(Exception):
    """Another credential (of any portal, revoked ones too) has this username."""


@dataclass(frozen=True)
class CredentialValues:
    """What an admin sets: everything but the username and the password."""
    name: str
    from_policy: FromPolicy = FromPolicy.LISTED
    from_addresses: str = ""  # one per line: an address, or @domain for every address of the domain
    client_networks: str = ""  # CIDR, one per line; empty: any client address
    plain_networks: str = ""  # clients that may sign in without TLS; empty: none
    max_message_bytes: int = 10 * MIB
    per_minute: int | None = None
    per_day: int | None = None


def values_of(credential: SmtpCredential) -> CredentialValues:
    return CredentialValues(credential.name, FromPolicy(credential.from_policy), credential.from_addresses,
                            credential.client_networks, credential.plain_networks, credential.max_message_bytes,
                            credential.per_minute, credential.per_day)


def parse_networks(text: str) -> list[Network]:
    """ValueError naming the first line that is not a network (10.0.0.0/8, 192.0.2.7, 2001:db8::/32)."""
    networks = []
    for line in text.splitlines():
        if line.strip():
            try:
                networks.append(ipaddress.ip_network(line.strip(), strict=False))
            except ValueError:
                raise ValueError(f"“{line.strip()}” is not a network: write it as 10.0.0.0/8 or 192.0.2.7") from None
    return networks


def client_ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The client's address as an IP (an IPv4-mapped IPv6 address as IPv4); None if it is none."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    return getattr(ip, "ipv4_mapped", None) or ip


def _within(address: str, networks_text: str) -> bool:
    ip = client_ip(address)
    return ip is not None and any(ip in network for network in parse_networks(networks_text))


# -- admins ------------------------------------------------------------------------------------

def credentials_of(portal: Portal) -> list[SmtpCredential]:
    return list(db.session().exec(select(SmtpCredential).where(SmtpCredential.portal_id == portal.id).order_by(
        SmtpCredential.revoked_at.is_not(None), SmtpCredential.name, SmtpCredential.id)))


def get(portal: Portal, credential_id: int) -> SmtpCredential | None:
    if not 0 < credential_id <= MAX_ID:
        return None
    return db.session().exec(select(SmtpCredential).where(
        SmtpCredential.id == credential_id, SmtpCredential.portal_id == portal.id)).first()


def new_username(portal: Portal) -> str:
    return f"{portal.slug}-{secrets.token_hex(4)}"


def new_password() -> str:
    return passwords.new_password(24)  # 142 bits: within what old devices let one type in


def _recorded(values: CredentialValues) -> dict:
    """As History shows it: in the form's words (the size in MB)."""
    recorded = {name: str(value) if isinstance(value, FromPolicy) else value for name, value in asdict(values).items()}
    recorded["max_message_mb"] = recorded.pop("max_message_bytes") // MIB
    return recorded


def create(actor: Actor, portal: Portal, values: CredentialValues, username: str | None = None
           ) -> tuple[SmtpCredential, str]:
    """A new credential and its only plain password (to show once). UsernameTaken for a chosen
    username that exists already."""
    username = username or new_username(portal)
    taken = f"The username {username} is taken (usernames are unique across portals): choose another."
    if db.session().exec(select(SmtpCredential.id).where(SmtpCredential.username == username)).first():
        raise UsernameTaken(taken)
    password = new_password()
    credential = SmtpCredential(portal_id=portal.id, username=username, password_hash=hash_password(password),
                                owner_id=actor.user_id, created_by=actor.label[:254], **asdict(values))
    db.session().add(credential)
    changes = {"username": [None, username], **audit.diff({}, _recorded(values))}
    audit.record(actor, "smtp_credential.created", f"“{values.name}”", changes, portal.id)
    try:
        db.session().commit()
    except IntegrityError:  # someone took the username in the meantime
        db.session().rollback()
        raise UsernameTaken(taken) from None
    return credential, password


def update_credential(actor: Actor, portal: Portal, credential: SmtpCredential, values: CredentialValues) -> None:
    changes = audit.diff(_recorded(values_of(credential)), _recorded(values))
    if not changes:
        return
    for name, value in asdict(values).items():
        setattr(credential, name, value)
    db.session().add(credential)
    audit.record(actor, "smtp_credential.updated", f"“{values.name}”", changes, portal.id)
    db.session().commit()


def replace_password(actor: Actor, portal: Portal, credential: SmtpCredential) -> str:
    """A new password (the old one stops working at once); shown once."""
    password = new_password()
    credential.password_hash = hash_password(password)
    db.session().add(credential)
    audit.record(actor, "smtp_credential.password_replaced", f"“{credential.name}”", {"password": audit.SECRET},
                 portal.id)
    db.session().commit()
    return password


def revoke(actor: Actor, portal: Portal, credential: SmtpCredential) -> None:
    """From now on the credential is refused (a session signed in with it too, at its next message)."""
    if credential.revoked_at is not None:
        return
    credential.revoked_at = utcnow()
    db.session().add(credential)
    audit.record(actor, "smtp_credential.revoked", f"“{credential.name}”", {"username": [credential.username, None]},
                 portal.id)
    db.session().commit()


# -- the listener ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Account:
    """A signed-in credential, as the listener needs it."""
    id: int
    portal_id: int
    name: str
    username: str
    from_policy: FromPolicy
    from_addresses: tuple[str, ...]  # lower case; "@domain" for a whole domain
    max_message_bytes: int
    per_minute: int | None
    per_day: int | None
    owner_id: int | None = None  # who created it: mail with "rewrite From" carries their sender ID

    @classmethod
    def of(cls, credential: SmtpCredential) -> "Account":
        addresses = tuple(line.strip().lower() for line in credential.from_addresses.splitlines() if line.strip())
        return cls(credential.id, credential.portal_id, credential.name, credential.username,
                   FromPolicy(credential.from_policy), addresses, credential.max_message_bytes,
                   credential.per_minute, credential.per_day, credential.owner_id)

    def may_send_as(self, address: str) -> bool:
        if self.from_policy == FromPolicy.REWRITE:
            return True
        address = address.lower()
        return address in self.from_addresses or f"@{address.rpartition('@')[2]}" in self.from_addresses


def sign_in(username: str, password: str, client: str, encrypted: bool) -> tuple[Account | None, str]:
    """The account, or None and why (for the listener's log only: the client hears 535 either way,
    so that nothing tells it which part was right)."""
    credential = db.session().exec(select(SmtpCredential).where(
        SmtpCredential.username == username, SmtpCredential.revoked_at.is_(None))).first()
    db.session().rollback()  # nothing to write: give the connection back before the slow hash
    if not check_password_hash(credential.password_hash if credential else unknown_user_hash(), password):
        return None, "unknown username or wrong password"
    if credential.client_networks.strip() and not _within(client, credential.client_networks):
        return None, f"the right password for {username}, but from {client}, outside its client networks"
    if not encrypted and not _within(client, credential.plain_networks):
        return None, f"the right password for {username}, but without TLS from {client}"
    return Account.of(credential), ""


def plain_allowed_from(client: str) -> bool:
    """Whether any live credential may sign in without TLS from this address (only then is AUTH
    offered before STARTTLS)."""
    rows = db.session().exec(select(SmtpCredential.plain_networks).where(
        SmtpCredential.revoked_at.is_(None), SmtpCredential.plain_networks != "")).all()
    db.session().rollback()
    return any(_within(client, networks) for networks in rows)


# the credential's row as it is now (a row, not an object: MAIL FROM reads it for every message)
_CREDENTIAL = select(SmtpCredential.__table__).where(SmtpCredential.__table__.c.id == bindparam("id"))


def standing(account_id: int, now: float | None = None) -> tuple[Account | None, str]:
    """The account as it is now (None once it is revoked) and which rate limit its next message would
    exceed ("30 per minute", or ""): one read, what MAIL FROM needs. `now`: seconds since the epoch."""
    with db.engine().connect() as connection:  # not the session's: a read alone, and given back at once
        credential = connection.execute(_CREDENTIAL, {"id": account_id}).first()
    if credential is None or credential.revoked_at is not None:
        return None, ""
    return Account.of(credential), _exceeded(credential, time.time() if now is None else now)


def _windows(now: float) -> tuple[int, int]:
    return int(now // 60), int(now // 86400)


def _exceeded(credential, now: float) -> str:
    """Which limit the credential (an object or its row) has reached in the windows of `now`, or ""."""
    minute, day = _windows(now)
    if credential.per_minute is not None and credential.minute_window == minute \
            and credential.minute_count >= credential.per_minute:
        return f"{credential.per_minute} per minute"
    if credential.per_day is not None and credential.day_window == day and credential.day_count >= credential.per_day:
        return f"{credential.per_day} per day"
    return ""


def over_limit(account_: Account, now: float | None = None) -> str:
    """Which rate limit the next message would exceed ("30 per minute"), or "" (read only).
    `now`: seconds since the epoch (default: the clock)."""
    credential = db.session().get(SmtpCredential, account_.id)
    db.session().rollback()
    return "" if credential is None else _exceeded(credential, time.time() if now is None else now)


def _count_statement():
    c = SmtpCredential
    minute, day = bindparam("minute"), bindparam("day")
    return update(c).where(
        c.id == bindparam("account_id"), c.revoked_at.is_(None),
        or_(c.per_minute.is_(None), c.minute_window != minute, c.minute_count < c.per_minute),
        or_(c.per_day.is_(None), c.day_window != day, c.day_count < c.per_day),
    ).values(
        minute_count=case((c.minute_window == minute, c.minute_count + 1), else_=1), minute_window=minute,
        day_count=case((c.day_window == day, c.day_count + 1), else_=1), day_window=day,
        last_used_at=bindparam("at", type_=c.__table__.c.last_used_at.type), last_client=bindparam("client"),
    )


_COUNT = _count_statement()  # built once: only its parameters change per message


def count_message(account_: Account, client: str, now: float | None = None) -> bool:
    """Count one message, atomically and only if it is within both limits (one UPDATE), in the
    caller's transaction: the caller commits it with the message it counts (or rolls both back), so
    a message that is not stored is not counted. False when a limit is reached or the credential
    was revoked meanwhile. `now`: seconds since the epoch (default: the clock)."""
    now = time.time() if now is None else now
    minute, day = _windows(now)
    result = db.session().connection().execute(_COUNT, {
        "account_id": account_.id, "minute": minute, "day": day, "at": datetime.fromtimestamp(now, UTC),
        "client": client[:64]})
    return result.rowcount == 1
