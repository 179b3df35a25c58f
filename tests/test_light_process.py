"""A light process: the protocol libraries, Huey and alembic are imported when something uses them,
not by `import webapp` or create_app(), and create_app() leaves no database connection open for
gunicorn's --preload to hand to its workers. Each check runs in a fresh interpreter (this test
process has imported everything long ago)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from cryptography.fernet import Fernet

from webapp import create_app, db

ROOT = Path(__file__).resolve().parent.parent
# exchangelib and what only it needs (NTLM), the HTTP client of Graph, Gmail, OAuth and Find settings,
# python-socks (a proxy's handshake), email-validator (the first address checked), the deliverability
# checks' libraries, Find settings' XML parser, Huey (and the Redis and PostgreSQL clients its storage module
# loads), the migrations' library and, on SQLite, SQLAlchemy's PostgreSQL dialects
HEAVY = ("exchangelib", "spnego", "requests_ntlm", "requests", "urllib3", "authlib", "python_socks",
         "email_validator", "checkdmarc", "spf", "dns", "defusedxml", "xml.etree.ElementTree", "huey", "alembic",
         "sqlalchemy.dialects.postgresql")
# the lists' keyset pagination (sqlakeyset, with SQLAlchemy's asyncio extension and dateutil): the pages import it
# at start, for gunicorn's workers to share it; a short command only when it reads a page of a list
PAGES = ("sqlakeyset", "sqlalchemy.ext.asyncio", "dateutil")


def _run(code: str, instance: Path, **env) -> dict:
    """Runs `code` in a new interpreter on the instance's SQLite database; it prints one JSON line."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MAILROOM_")}
    environment.update({"MAILROOM_INSTANCE_PATH": str(instance), "MAILROOM_SECRET_KEY": "test-secret-key",
                        "MAILROOM_SECRET_KEYS": KEYS, "MAILROOM_LOG_LEVEL": "WARNING",
                        "MAILROOM_DATABASE_URL": f"sqlite:///{instance / 'mailroom.sqlite3'}", **env})
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environment, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


KEYS = Fernet.generate_key().decode()
LOADED = ("import json, sys; print(json.dumps({'loaded': sorted(m for m in %r if m in sys.modules), **extra}))"
          % (HEAVY + PAGES,))


@pytest.fixture
def instance(tmp_path):
    """An instance whose database is already migrated (as after `flask init`)."""
    folder = tmp_path / "instance"
    _run("from webapp import create_app; create_app(); extra = {}\n" + LOADED, folder)
    return folder


def test_import_webapp_loads_no_protocol_library_huey_or_alembic(instance):
    found = _run("import webapp; extra = {}\n" + LOADED, instance)
    assert found["loaded"] == []


def test_import_webapp_leaves_the_garbage_collector_on_and_what_it_imported_out_of_its_passes(instance):
    found = _run("import gc, webapp; extra = {'enabled': gc.isenabled(), 'frozen': gc.get_freeze_count()}\n" + LOADED,
                 instance)
    assert found["enabled"] is True
    assert found["frozen"] > 10_000


def test_create_app_on_a_migrated_database_loads_only_the_pages_pagination_and_keeps_no_connection(instance):
    code = ("from webapp import create_app\n"
            "app = create_app()\n"
            "pool = app.extensions['mailroom.engine'].pool\n"
            "extra = {'idle': pool.checkedin(), 'in_use': pool.checkedout()}\n" + LOADED)
    found = _run(code, instance)
    assert found["loaded"] == sorted(PAGES)
    assert (found["idle"], found["in_use"]) == (0, 0)


@pytest.mark.parametrize(("protocol", "label", "implementation", "library"), [
    ("ews", "Exchange Web Services (EWS)", "webapp.mail.ews:EwsTransport", "exchangelib"),
    ("graph", "Microsoft Graph", "webapp.mail.graph:GraphTransport", "requests"),
    ("gmail", "Gmail API", "webapp.mail.gmail:GmailTransport", "requests"),
])
def test_a_protocols_sending_code_is_imported_when_a_server_of_it_is_first_used(instance, protocol, label,
                                                                                implementation, library):
    module = implementation.partition(":")[0]
    code = ("from webapp import create_app\n"
            "from webapp.mail.transport import TRANSPORTS, transport_for\n"
            "app = create_app()\n"
            f"label = TRANSPORTS[{protocol!r}].label\n"  # the form and the lists need only this
            f"before = sorted(m for m in ({module!r}, {library!r}) if m in sys.modules)\n"
            f"transport = transport_for({protocol!r})\n"
            f"after = sorted(m for m in ({module!r}, {library!r}) if m in sys.modules)\n"
            "extra = {'label': label, 'before': before, 'after': after, 'class': type(transport).__module__ + ':' +"
            " type(transport).__qualname__, 'has_check': callable(transport.check)}\n" + LOADED)
    found = _run("import sys\n" + code, instance)
    assert found["label"] == label
    assert found["before"] == []
    assert found["class"] == implementation
    assert found["has_check"] is True
    assert found["after"] == sorted((module, library))


def test_without_pages_keyset_pagination_is_imported_by_the_first_page_of_a_list(instance):
    code = ("from webapp import create_app, db, pagination\n"
            "from webapp.models import Portal\n"
            "from sqlmodel import select\n"
            "app = create_app(pages=False)\n"
            "before = 'sqlakeyset' in sys.modules\n"
            "with app.app_context():\n"
            "    for slug in ('one', 'two', 'three'):\n"
            "        db.session().add(Portal(slug=slug, name=slug))\n"
            "    db.session().commit()\n"
            "    first = pagination.paginate(select(Portal.slug), (Portal.id,), 2)\n"
            "    second = pagination.paginate(select(Portal.slug), (Portal.id,), 2, first.next)\n"
            "extra = {'before': before, 'pages': [[r.slug for r in first.rows], [r.slug for r in second.rows]],"
            " 'last': second.next}\n" + LOADED)
    found = _run("import sys\n" + code, instance)
    assert found["before"] is False
    assert found["pages"] == [["one", "two"], ["three"]]
    assert found["last"] is None
    assert "sqlakeyset" in found["loaded"]


def test_huey_is_made_when_mail_is_first_woken_for(instance):
    code = ("from webapp import create_app, delivery\n"
            "app = create_app()\n"
            "with app.app_context():\n"
            "    delivery.wake([])\n"
            "    nothing = 'huey' in sys.modules\n"
            "    delivery.wake([12345])\n"
            "    waiting = delivery.queue().waiting()\n"
            "extra = {'after_nothing': nothing, 'waiting': waiting}\n" + LOADED)
    found = _run("import sys\n" + code, instance)
    assert found["after_nothing"] is False
    assert found["waiting"] == 1  # the job is in the instance's Huey file
    assert "huey" in found["loaded"]


def test_the_head_read_from_the_files_is_alembics(migrated):
    assert db._head_revision() == ScriptDirectory.from_config(db.alembic_config(migrated)).get_current_head()


def test_a_database_behind_is_upgraded_at_start_and_one_at_head_is_left_alone(tmp_path):
    url = f"sqlite:///{tmp_path / 'behind.sqlite3'}"
    engine = db.make_engine(url)
    assert not db.at_head(engine)  # empty: no alembic_version table
    db.upgrade(engine, "0010")
    assert not db.at_head(engine)
    app = create_app({"DATABASE_URL": url, "AUTO_MIGRATE": True, "SECRET_KEY": "k", "SECRET_KEYS": KEYS},
                     instance_path=str(tmp_path / "instance"))
    assert db.at_head(engine)
    app.extensions["mailroom.engine"].dispose()
    engine.dispose()


def test_a_short_command_makes_the_app_without_pages_and_still_works(instance):
    code = ("import atexit, json, sys\n"
            "import webapp\n"
            "made = []\n"
            "def spy(*args, **kwargs):\n"
            "    made.append(original(*args, **kwargs))\n"
            "    return made[-1]\n"
            "original, webapp.create_app = webapp.create_app, spy\n"
            "atexit.register(lambda: print(json.dumps({'blueprints': sorted(made[0].blueprints),"
            " 'commands': sorted(made[0].cli.commands), 'views': 'webapp.views' in sys.modules,"
            " 'loaded': sorted(m for m in %r if m in sys.modules)})))\n"
            "sys.argv = ['flask', '--app', 'webapp', 'egress', 'check', '127.0.0.1', '25']\n"
            "from flask.cli import main\n"
            "main()\n" % (HEAVY + PAGES,))
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MAILROOM_")}
    environment.update({"MAILROOM_INSTANCE_PATH": str(instance), "MAILROOM_SECRET_KEY": "test-secret-key",
                        "MAILROOM_SECRET_KEYS": KEYS,
                        "MAILROOM_DATABASE_URL": f"sqlite:///{instance / 'mailroom.sqlite3'}"})
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environment, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    *output, last = result.stdout.strip().splitlines()
    assert "loopback" in "\n".join(output)  # the command's own answer: 127.0.0.1 is refused by default
    found = json.loads(last)
    assert found["blueprints"] == []
    assert found["views"] is False  # the pages' modules (and their forms) are not even imported
    assert {"mail", "egress", "db", "init"} <= set(found["commands"])
    assert found["loaded"] == []


@pytest.mark.parametrize(("argv", "short"), [
    (["--app", "webapp", "mail", "check", "help", "1"], True),
    (["-A", "webapp", "mail", "refresh-tokens"], True),
    (["--app=webapp", "mail", "enqueue", "help", "--to", "a@example.com"], True),
    (["--app", "webapp", "init", "--url", "http://127.0.0.1:8000"], True),
    (["--app", "webapp", "mail", "worker"], False),
    (["--app", "webapp", "mail", "relay"], False),
    (["--app", "webapp", "run"], False),
    (["--app", "webapp", "routes"], False),
    (["--app", "webapp"], False),
])
def test_which_commands_need_no_pages(argv, short):
    from webapp.cli import without_pages

    assert without_pages(argv) is short
