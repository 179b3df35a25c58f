"""Secrets at rest: Fernet tokens under keys kept outside the database.

Several keys may be configured, newest first: encrypting uses the newest, decrypting
tries each, so a key can be rotated (`flask --app webapp rotate-secrets`).
"""
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

KEY_FILE = "secret-keys"


class SecretUnreadable(ValueError):
    """A stored secret cannot be decrypted with the configured keys."""


class SecretBox:
    def __init__(self, keys: list[str]):
        if not keys:
            raise ValueError("no secret keys configured")
        self._fernet = MultiFernet([Fernet(key) for key in keys])

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise SecretUnreadable("a stored secret cannot be decrypted with the configured keys") from None

    def readable(self, token: str) -> bool:
        try:
            self._fernet.decrypt(token.encode())
        except InvalidToken:
            return False
        return True

    def rotate(self, token: str) -> str:
        return self._fernet.rotate(token.encode()).decode()


def configured_keys(config, instance_path: str) -> list[str]:
    keys = config.get("SECRET_KEYS")
    if keys:
        return [k.strip() for k in (keys.split(",") if isinstance(keys, str) else keys) if k.strip()]
    return read_key_file(Path(instance_path) / KEY_FILE)


def read_key_file(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def ensure_key_file(path: Path) -> None:
    """Create the instance key file with one fresh key, readable by its owner only."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("# Fernet keys for secrets at rest, newest first. Keep a copy: without it stored secrets are lost.\n")
        f.write(Fernet.generate_key().decode() + "\n")


def prepend_new_key(path: Path) -> str:
    key = Fernet.generate_key().decode()
    keys = read_key_file(path)
    path.write_text("# Fernet keys for secrets at rest, newest first.\n" + "\n".join([key, *keys]) + "\n")
    return key
