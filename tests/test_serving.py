"""As deployed: the instance folder (keys, the database) is readable by its owner only however it
came to be (created by the app or `flask init`, or already there from a git checkout), and a
proxy's X-Forwarded-* headers are believed only as MAILROOM_TRUSTED_PROXIES says, by the app and by
gunicorn started as the Makefile starts it."""
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import SECRET_KEYS
from webapp import create_app

ROOT = Path(__file__).resolve().parent.parent


def mode_of(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.fixture
def open_umask():
    old = os.umask(0)  # the most permissive umask: the app's own modes must hold anyway
    yield
    os.umask(old)


def test_a_new_instance_folder_and_its_files_are_the_owner_s_alone(tmp_path, open_umask):
    instance = tmp_path / "new" / "instance"
    create_app({"SECRET_KEYS": None, "SECRET_KEY": None}, instance_path=str(instance))
    assert mode_of(instance) == 0o700
    for name in ("secret-keys", "flask-secret-key", "mailroom.sqlite3"):
        assert mode_of(instance / name) & 0o077 == 0, name


def test_an_instance_folder_others_may_read_is_made_private(tmp_path):
    instance = tmp_path / "instance"  # as a git checkout leaves instance/ (with its .gitkeep)
    instance.mkdir()
    instance.chmod(0o755)
    create_app({"SECRET_KEYS": SECRET_KEYS, "SECRET_KEY": "k"}, instance_path=str(instance))
    assert mode_of(instance) == 0o700


def test_flask_init_creates_a_private_instance_folder(tmp_path, open_umask):
    instance = tmp_path / "init" / "instance"
    env = {**os.environ, "MAILROOM_INSTANCE_PATH": str(instance)}
    result = subprocess.run([sys.executable, "-m", "flask", "--app", "webapp", "init", "--url",
                             "http://127.0.0.1:8000"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert mode_of(instance) == 0o700
    assert mode_of(instance / "mailroom.sqlite3") & 0o077 == 0


def test_a_database_folder_elsewhere_is_created_private(tmp_path, open_umask):
    database = tmp_path / "data" / "mailroom.sqlite3"
    create_app({"SECRET_KEYS": SECRET_KEYS, "SECRET_KEY": "k", "DATABASE_URL": f"sqlite:///{database}"},
               instance_path=str(tmp_path / "instance"))
    assert mode_of(database.parent) == 0o700 and mode_of(database) & 0o077 == 0


FORWARDED = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9", "X-Forwarded-Host": "evil.example"}


@pytest.mark.parametrize("hops, believed", [(0, False), (1, True)])
def test_forwarded_headers_are_believed_only_as_trusted_proxies_says(app, hops, believed):
    served = create_app({**app.config, "TRUSTED_PROXIES": hops}, instance_path=app.instance_path)
    seen = {}

    @served.get("/_seen")
    def _seen():
        from flask import request
        seen.update(scheme=request.scheme, remote=request.remote_addr, host=request.host)
        return ""

    answer = served.test_client().get("/login", headers=FORWARDED)
    served.test_client().get("/_seen", headers=FORWARDED)
    assert ("Strict-Transport-Security" in answer.headers) == believed
    assert seen == ({"scheme": "https", "remote": "203.0.113.9", "host": "evil.example"} if believed else
                    {"scheme": "http", "remote": "127.0.0.1", "host": "localhost"})


def gunicorn_of_the_makefile(port: int) -> list[str]:
    """The command `make serve` runs (printed by make -n, not run by it)."""
    printed = subprocess.run(["make", "-n", "serve", f"PORT={port}", "HOST=127.0.0.1", "WORKERS=1", "THREADS=2"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout
    [line] = [line for line in printed.splitlines() if "gunicorn" in line and "--bind" in line]
    return shlex.split(line)


def test_gunicorn_as_the_makefile_starts_it_trusts_no_forwarded_header(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = gunicorn_of_the_makefile(port)
    assert "--forwarded-allow-ips" in command and command[command.index("--forwarded-allow-ips") + 1] == ""
    env = {**os.environ, "MAILROOM_INSTANCE_PATH": str(tmp_path / "instance"), "MAILROOM_SECRET_KEYS": SECRET_KEYS,
           "MAILROOM_SECRET_KEY": "k", "MAILROOM_LOG_LEVEL": "WARNING"}
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        end = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            try:
                answer = requests.get(f"http://127.0.0.1:{port}/login", headers=FORWARDED, timeout=5)
                break
            except requests.ConnectionError:
                assert time.monotonic() < end, "gunicorn did not start"
                time.sleep(0.2)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert answer.status_code == 200
    assert "Strict-Transport-Security" not in answer.headers  # the request stayed plain http from loopback
    assert "Secure" not in answer.headers.get("Set-Cookie", "")


def test_the_readme_s_multi_host_command_trusts_no_forwarded_header_in_gunicorn():
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"\.venv/bin/gunicorn .*?'webapp:create_app\(\)'", readme.replace("\\\n", " "), re.S).group(0)
    assert "--forwarded-allow-ips ''" in command
