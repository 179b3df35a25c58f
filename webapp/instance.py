"""The instance folder (keys, by default the database) and the keys kept there when the
environment does not provide them."""
import fcntl
import logging
import os
import secrets
from contextlib import contextmanager
from pathlib import Path

from .crypto import KEY_FILE, SecretBox, configured_keys, ensure_key_file

FLASK_KEY_FILE = "flask-secret-key"
log = logging.getLogger(__name__)


def private_folder(path: Path) -> None:
    """Create the folder readable by its owner only; an existing one that others may read (such as
    the instance/ of a git checkout) is made so, as it holds the keys."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        try:
            os.chmod(path, mode & 0o700)
        except OSError as error:  # not ours to change: say so, the keys in it are at stake
            log.warning("the folder %s is readable by others and cannot be made private: %s", path, error)
            return
        log.info("the folder %s was readable by others: it is now readable by its owner only", path)


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
    private_folder(path.parent)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
