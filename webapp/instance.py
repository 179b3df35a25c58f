"""Keys kept in the instance folder when the environment does not provide them."""
import fcntl
import secrets
from contextlib import contextmanager
from pathlib import Path

from .crypto import KEY_FILE, SecretBox, configured_keys, ensure_key_file

FLASK_KEY_FILE = "flask-secret-key"


def load_secrets(app) -> None:
    folder = Path(app.instance_path)
    with locked(folder / "keys.lock"):
        if not app.config.get("SECRET_KEY"):
            app.config["SECRET_KEY"] = _read_or_create(folder / FLASK_KEY_FILE)
        if not app.config.get("SECRET_KEYS"):
            ensure_key_file(folder / KEY_FILE)
    app.extensions["mailroom.secrets"] = SecretBox(configured_keys(app.config, app.instance_path))


def _read_or_create(path: Path) -> str:
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(48))
    return path.read_text().strip()


@contextmanager
def locked(path: Path):
    """Several gunicorn workers start at once: one at a time past this point."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
