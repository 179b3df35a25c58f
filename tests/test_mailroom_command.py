"""`mailroom <command>` (`python -m webapp <command>`, what the script runs): the commands of `flask --app
webapp`, in a new interpreter as an admin or cron runs them, without Flask's command line, and for the
short commands without the pages' libraries."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SECRET_KEYS

ROOT = Path(__file__).resolve().parent.parent
# what only the pages use, and what Flask's command line would load (Flask-Limiter's commands pull in rich)
PAGES_ONLY = ("flask_limiter", "flask_wtf", "wtforms", "htmx_flask", "rich", "webapp.views", "webapp.forms")
# what no command that takes no address and talks to no server needs: the other protocols' sending code, the
# HTTP clients, python-socks, email-validator
NOT_FOR_EGRESS = ("webapp.mail.ews", "webapp.mail.graph", "webapp.mail.gmail", "requests", "urllib3", "authlib",
                  "python_socks", "email_validator")


def _environment(instance: Path, database_url: str, **more) -> dict:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("MAILROOM_", "FLASK_"))}
    environment.update({"MAILROOM_INSTANCE_PATH": str(instance), "MAILROOM_SECRET_KEY": "test-secret-key",
                        "MAILROOM_SECRET_KEYS": SECRET_KEYS, "MAILROOM_LOG_LEVEL": "WARNING",
                        "MAILROOM_DATABASE_URL": database_url, **more})
    return environment


def mailroom(environment: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "webapp", *args], cwd=ROOT, env=environment, capture_output=True,
                          text=True, timeout=60)


def test_a_new_instance_is_set_up_with_the_mailroom_command(tmp_path):
    environment = _environment(tmp_path / "instance", f"sqlite:///{tmp_path / 'mailroom.sqlite3'}")
    first = mailroom(environment, "init", "--url", "http://127.0.0.1:8000")
    assert first.returncode == 0, first.stderr
    assert "Created the first super-admin. Sign in at http://127.0.0.1:8000" in first.stdout
    assert mailroom(environment, "create-portal", "help", "Help Desk").stdout == "Created portal help.\n"
    added = mailroom(environment, "egress", "allow", "127.0.0.1 25", "--portal", "help")
    assert added.stdout == "Added to the portal help's allow list: 127.0.0.1 25\n"
    assert mailroom(environment, "egress", "check", "127.0.0.1", "25", "--portal", "help").stdout.startswith("Allowed")
    assert "loopback" in mailroom(environment, "egress", "check", "127.0.0.1", "25").stdout  # the global lists
    missing = mailroom(environment, "mail", "check", "nowhere", "1")
    assert (missing.returncode, missing.stderr) == (1, "Error: No portal has the slug nowhere.\n")


def test_mail_check_through_the_mailroom_command_talks_to_the_server(app, make, portal, smtp_peer, dns_zone,
                                                                    database_url, tmp_path):
    peer = smtp_peer("plain")
    server = make.server(portal, settings={"port": peer.port})
    environment = _environment(tmp_path / "instance", database_url, MAILROOM_DNS_RESOLVER=dns_zone.address)
    passed = mailroom(environment, "mail", "check", "help", str(server.id))
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert f"PASSED   Connect: connected to 127.0.0.1:{peer.port}" in passed.stdout
    assert "\nDeliverability\n" in passed.stdout
    peer.stop()
    failed = mailroom(environment, "mail", "check", "help", str(server.id))
    assert failed.returncode == 1
    assert "FAILED   Connect" in failed.stdout


# what an SMTP check does not use: the other protocols' sending code and the HTTP clients it needs, OAuth's
# PKCE library, python-socks for a server without a proxy, checkdmarc (with httpx and the command line
# httpx imports) when there is no DMARC record, and dnspython's DNS-over-HTTPS client
NOT_FOR_AN_SMTP_CHECK = ("webapp.mail.graph", "webapp.mail.gmail", "webapp.mail.ews", "webapp.mail.http", "requests",
                         "urllib3", "authlib", "python_socks", "checkdmarc", "httpx", "rich", "pygments", "httpx2",
                         "httpcore2", "h2")


def test_an_smtp_check_with_a_password_loads_only_what_smtp_and_the_dns_checks_need(app, make, portal, smtp_peer,
                                                                                  dns_zone, database_url, tmp_path):
    from webapp import db, mailservers
    from webapp.credentials import seal
    from webapp.models import MailServer

    peer = smtp_peer("starttls")
    server = make.server(portal, settings={"port": peer.port, "security": "starttls", "ca_cert": peer.ca_pem},
                         credential={"kind": "password", "username": peer.username})
    with app.app_context():
        row = db.session().get(MailServer, server.id)
        row.credential.secret = seal({"password": peer.password})
        row.credential.bound_to = mailservers.settings_of("smtp", row.settings).destination()
        db.session().commit()
    environment = _environment(tmp_path / "instance", database_url, MAILROOM_DNS_RESOLVER=dns_zone.address)
    watched = (*NOT_FOR_AN_SMTP_CHECK, "spf", "dns.resolver")
    code = ("import atexit, json, runpy, sys\n"
            "atexit.register(lambda: print(json.dumps(sorted(m for m in %r if m in sys.modules))))\n"
            "sys.argv = ['mailroom', 'mail', 'check', 'help', '%d']\n"
            "runpy.run_module('webapp', run_name='__main__')\n" % (watched, server.id))
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environment, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    *output, loaded = result.stdout.strip().splitlines()
    report = "\n".join(output)
    assert f"PASSED   Authenticate: signed in as {peer.username}" in report
    assert "example.com has no DMARC record" in report  # the Deliverability section ran, its DNS through pyspf
    assert json.loads(loaded) == ["dns.resolver", "spf"]


def test_a_short_command_loads_neither_the_pages_nor_flasks_command_line_nor_what_it_does_not_use(tmp_path):
    environment = _environment(tmp_path / "instance", f"sqlite:///{tmp_path / 'mailroom.sqlite3'}")
    assert mailroom(environment, "init").returncode == 0
    code = ("import atexit, json, runpy, sys\n"
            "atexit.register(lambda: print(json.dumps(sorted(m for m in %r if m in sys.modules))))\n"
            "sys.argv = ['mailroom', 'egress', 'show']\n"
            "runpy.run_module('webapp', run_name='__main__')\n" % ((*PAGES_ONLY, *NOT_FOR_EGRESS),))
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environment, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    *output, loaded = result.stdout.strip().splitlines()
    assert output == ["allow:", "  (empty)", "deny:", "  (empty)"]
    assert json.loads(loaded) == []


def test_the_mailroom_command_lists_the_same_commands_as_flask(app):
    from webapp.cli import commands

    assert set(commands.commands) <= set(app.cli.commands)
    assert {"init", "db", "mail", "egress", "create-user", "rotate-secrets"} <= set(commands.commands)


@pytest.mark.parametrize(("argv", "short"), [
    (["mail", "check", "help", "1"], True),
    (["egress", "show"], True),
    (["mail", "worker", "--workers", "2"], False),
    (["mail", "relay"], False),
    ([], False),
])
def test_which_mailroom_commands_need_no_pages(argv, short):
    from webapp.cli import without_pages

    assert without_pages(argv) is short


def test_a_sample_mail_refused_for_two_destinations_names_them_and_the_commands_that_allow_them(
        app, admin, portal, smtp_peer, proxy_peer, dns_zone, database_url, tmp_path):
    from webapp import db
    from webapp.models import AppSetting

    from .test_server_checks import saved_server
    from .test_server_proxy_receiver import proxied_form

    smtp, proxy = smtp_peer("plain"), proxy_peer("socks5")
    server = saved_server(app, admin, proxied_form(smtp, proxy))
    with app.app_context():  # no global allow list: loopback is refused, as on a new installation
        db.session().get(AppSetting, "egress").value = {"allow": "", "deny": ""}
        db.session().commit()
    environment = _environment(tmp_path / "instance", database_url, MAILROOM_DNS_RESOLVER=dns_zone.address)
    refused = mailroom(environment, "mail", "send-sample", "help", str(server.id), "jane@example.org")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert refused.stdout.startswith("The mail was not sent: Egress policy: the egress policy refuses 2 destinations")
    assert f"Proxy: 127.0.0.1 port {proxy.port}: 127.0.0.1 is a loopback address" in refused.stdout
    assert f"Mail server: 127.0.0.1 port {smtp.port}: 127.0.0.1 is a loopback address" in refused.stdout
    for port in (proxy.port, smtp.port):
        assert f"allow it: flask --app webapp egress allow '127.0.0.1 {port}' --portal help\n" in refused.stdout
        assert mailroom(environment, "egress", "allow", f"127.0.0.1 {port}", "--portal", "help").returncode == 0
    assert smtp.sessions == 0
    sent = mailroom(environment, "mail", "send-sample", "help", str(server.id), "jane@example.org")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert sent.stdout.startswith("Email server accepted mail for delivery: 250") and len(smtp.messages) == 1
