"""Moments as the database gives them back: SQLite drops the zone of a UTC timestamp."""
from datetime import UTC, datetime


def aware(moment: datetime | None) -> datetime | None:
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment
