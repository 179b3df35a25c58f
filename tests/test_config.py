"""Layered configuration, keys outside the database, secrets encrypted at rest and rotated."""
import json

from cryptography.fernet import Fernet
from sqlmodel import select

from webapp import create_app, db
from webapp.crypto import SecretBox
from webapp.credentials import seal
from webapp.models import Credential, MailServer


def test_layers_defaults_then_instance_file_then_environment(tmp_path, monkeypatch):
    instance = tmp_path / "instance"
    instance.mkdir()
    (instance / "config.py").write_text("TRUSTED_PROXIES = 1\nSESSION_COOKIE_SECURE = True\n")
    monkeypatch.setenv("MAILROOM_TRUSTED_PROXIES", "2")
    app = create_app(instance_path=str(instance))
    assert app.config["TRUSTED_PROXIES"] == 2  # environment wins, typed
    assert app.config["SESSION_COOKIE_SECURE"] is True  # instance file
    assert app.config["SESSION_COOKIE_SAMESITE"] == "Lax"  # default
    assert app.config["DATABASE_URL"] == f"sqlite:///{instance / 'mailroom.sqlite3'}"


def test_embedded_default_creates_keys_and_migrates_by_itself(tmp_path):
    instance = tmp_path / "instance"
    app = create_app(instance_path=str(instance))
    assert (instance / "secret-keys").stat().st_mode & 0o077 == 0
    assert (instance / "flask-secret-key").exists()
    with app.app_context():
        assert db.session().exec(select(MailServer)).all() == []  # the tables exist
    again = create_app(instance_path=str(instance))
    assert again.config["SECRET_KEY"] == app.config["SECRET_KEY"]


def test_secret_box_rotation_keeps_old_tokens_readable():
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    token = SecretBox([old]).encrypt("s3cret")
    rotated_box = SecretBox([new, old])
    assert rotated_box.decrypt(token) == "s3cret"
    rotated = rotated_box.rotate(token)
    assert SecretBox([new]).decrypt(rotated) == "s3cret"


def test_rotate_secrets_command_re_encrypts_stored_passwords(tmp_path):
    instance = tmp_path / "instance"
    app = create_app(instance_path=str(instance))
    with app.app_context():
        portal_id = _portal(app)
        server = MailServer(portal_id=portal_id, settings={"host": "h"})
        server.credential = Credential(kind="password", username="u", secret=seal({"password": "pw-1"}))
        db.session().add(server)
        db.session().commit()
    result = app.test_cli_runner().invoke(args=["rotate-secrets"])
    assert "Re-encrypted 1" in result.output
    keys = [line for line in (instance / "secret-keys").read_text().splitlines() if not line.startswith("#")]
    assert len(keys) == 2
    with app.app_context():
        token = db.session().exec(select(Credential)).one().secret
    plain = SecretBox(keys[:1]).decrypt(token)  # readable with the new key alone
    assert plain == "\x01" + json.dumps({"password": "pw-1"})


def _portal(app) -> int:
    from webapp.models import Portal

    portal = Portal(slug="p", name="P")
    db.session().add(portal)
    db.session().commit()
    return portal.id
