"""Passwords Mailroom makes for people and devices to type or paste in."""
import secrets
import string

ALPHABET = string.ascii_letters + string.digits  # no "-" that a command line reads as an option, no "_" to misread


def new_password(length: int) -> str:
    """`length` letters and digits, about 5.95 bits each (16: 95 bits)."""
    return "".join(secrets.choice(ALPHABET) for _ in range(length))
