"""A portal's API keys: admins create, name and revoke them; the HTTP API accepts a key for its portal.

A key is "mr_" and 256 random bits (base64url); only its SHA-256 is stored, and its first
characters (`prefix`) name it in lists. It is shown once, when it is made. Creating and revoking
are recorded in History.
"""
import hashlib
import secrets
from datetime import timedelta

from sqlalchemy import bindparam, update
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import select

from . import audit, db
from .audit import Actor
from .models import MAX_ID, ApiKey, Portal, utcnow

KEY_PREFIX = "mr_"
SHOWN_PREFIX = len(KEY_PREFIX) + 8  # "mr_" and 8 characters: enough to tell keys apart in a list
TOUCH_EVERY = timedelta(minutes=1)  # last_used_at is written at most this often


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def keys_of(portal: Portal) -> list[ApiKey]:
    return list(db.session().exec(select(ApiKey).where(ApiKey.portal_id == portal.id)
                                  .order_by(ApiKey.revoked_at.is_not(None), ApiKey.created_at.desc(), ApiKey.id.desc())))


def get_key(portal: Portal, key_id: int) -> ApiKey | None:
    if not 0 < key_id <= MAX_ID:
        return None
    return db.session().exec(select(ApiKey).where(ApiKey.id == key_id, ApiKey.portal_id == portal.id)).first()


def create(actor: Actor, portal: Portal, name: str) -> tuple[ApiKey, str]:
    """A new key and its only plain copy (to show once)."""
    plain = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(portal_id=portal.id, name=name, prefix=plain[:SHOWN_PREFIX], key_hash=_hash(plain),
                 owner_id=actor.user_id, created_by=actor.label[:254])
    db.session().add(key)
    audit.record(actor, "api_key.created", f"“{name}”", {"key": [None, key.prefix + "…"]}, portal.id)
    db.session().commit()
    return key, plain


def revoke(actor: Actor, portal: Portal, key: ApiKey) -> None:
    """From now on the key is refused; it stays listed as revoked."""
    if key.revoked_at is not None:
        return
    key.revoked_at = utcnow()
    db.session().add(key)
    audit.record(actor, "api_key.revoked", f"“{key.name}”", {"key": [key.prefix + "…", "revoked"]}, portal.id)
    db.session().commit()


_BY_HASH = select(ApiKey, Portal).join(Portal, Portal.id == ApiKey.portal_id).where(
    ApiKey.key_hash == bindparam("key_hash"), ApiKey.revoked_at.is_(None))


def authenticate(plain: str) -> tuple[ApiKey, Portal] | None:
    """The live key and its portal, or None (unknown or revoked). One query."""
    if not plain.startswith(KEY_PREFIX) or len(plain) > 100:
        return None
    row = db.session().exec(_BY_HASH, params={"key_hash": _hash(plain)}).first()
    return tuple(row) if row else None


def note_use(key: ApiKey) -> None:
    """Remember when the key was last used, at most once a minute (a short transaction of its own)."""
    now = utcnow()
    last = key.last_used_at
    if last is not None and now - (last if last.tzinfo else last.replace(tzinfo=now.tzinfo)) < TOUCH_EVERY:
        return
    with db.engine().begin() as connection:
        connection.execute(update(ApiKey).where(ApiKey.id == key.id).values(last_used_at=now))
    # as stored: not a change of the request's session, which would write it again (and hold SQLite's
    # write lock from its next query on)
    set_committed_value(key, "last_used_at", now)
