"""Command-line administration: flask --app webapp <command>. Every change is recorded in
History as done by "command line"."""
from pathlib import Path

import click
from flask import current_app
from flask.cli import AppGroup, with_appcontext
from sqlmodel import select

from . import checks, db, mailservers, network, people
from .audit import COMMAND_LINE
from .passwords import new_password
from .crypto import KEY_FILE, SecretBox, configured_keys, prepend_new_key
from .models import Credential, Portal, Role, User


# The commands that need no pages: the app is made without its blueprints for them (create_app).
# Not the long-running ones (`mail worker`, `mail relay`: start-up does not matter there), nor
# Flask's own (`run`, `routes`, `shell`).
WITHOUT_PAGES = {("mail", "check"), ("mail", "send-sample"), ("mail", "enqueue"), ("mail", "refresh-tokens"),
                 ("mail", "purge"), ("db", "upgrade"), ("egress", "show"), ("egress", "allow"), ("egress", "deny"),
                 ("egress", "check"), ("init", None), ("create-user", None), ("reset-password", None),
                 ("create-portal", None), ("add-member", None), ("rotate-secrets", None)}
_FLASK_OPTIONS_WITH_VALUE = ("--app", "-A", "--env-file", "-e")


def without_pages(argv: list[str]) -> bool:
    """Whether `flask <argv>` runs one of WITHOUT_PAGES (`--app webapp mail check x 1` → mail check)."""
    words, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word in _FLASK_OPTIONS_WITH_VALUE:
            skip = True
        elif not word.startswith("-"):
            words.append(word)
        if len(words) == 2:
            break
    if not words:
        return False
    return (words[0], None) in WITHOUT_PAGES or tuple(words[:2]) in WITHOUT_PAGES


def init_app(app) -> None:
    for command in commands.commands.values():
        app.cli.add_command(command)


db_group = AppGroup("db", help="Database migrations.")
mail_group = AppGroup("mail", help="Check servers and send sample mails, as the web pages do; hand mail in; deliver the queue.")
egress_group = AppGroup("egress", help="Where portals' connections may go (the egress policy).")


@db_group.command("upgrade", help="Upgrade the database to the newest schema.")
def db_upgrade():
    db.upgrade(db.engine())
    click.echo("Database is up to date.")


@click.command(help="Upgrade the database and create a first super-admin if there is no user.")
@with_appcontext
@click.option("--email", default="admin@example.com", show_default=True)
@click.option("--url", default="http://127.0.0.1:8000", show_default=True, help="Where the app will be served.")
def init(email, url):
    db.upgrade(db.engine())
    if db.session().exec(select(User)).first():
        click.echo(f"Mailroom is ready: sign in at {url}")
        return
    password = new_password(16)
    people.create_user(COMMAND_LINE, email, password, name="Administrator", superadmin=True)
    click.echo(f"\nCreated the first super-admin. Sign in at {url}\n  email:    {email}\n  password: {password}\n"
               "You will be asked to choose your own password at the first sign-in.\n")


@click.command("create-user")
@with_appcontext
@click.argument("email")
@click.option("--name", default="")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True)
@click.option("--superadmin", is_flag=True, help="May create portals and users.")
def create_user(email, name, password, superadmin):
    """Create a user who signs in with EMAIL (and must choose their own password at first sign-in)."""
    try:
        people.create_user(COMMAND_LINE, email, password, name, superadmin)
    except people.Conflict as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"Created {email}.")


@click.command("reset-password")
@with_appcontext
@click.argument("email")
def reset_password(email):
    """Give EMAIL a new one-time password; they choose their own at the next sign-in."""
    user = people.find_user(email)
    if user is None:
        raise click.ClickException(f"No user has the email {email}.")
    password = people.reset_password(COMMAND_LINE, user)
    click.echo(f"New one-time password for {user.email}: {password}\n"
               "They are signed out everywhere and choose their own password at the next sign-in.")


@click.command("create-portal")
@with_appcontext
@click.argument("slug")
@click.argument("name")
@click.option("--base-url", default="", help="Public base URL, used for links in mails and OAuth redirect URIs.")
def create_portal(slug, name, base_url):
    """Create a portal."""
    try:
        people.create_portal(COMMAND_LINE, slug, name, base_url)
    except people.Conflict as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"Created portal {slug}.")


@click.command("add-member")
@with_appcontext
@click.argument("slug")
@click.argument("email")
@click.option("--role", type=click.Choice([r.value for r in Role]), default=Role.STAFF.value, show_default=True)
def add_member(slug, email, role):
    """Make the user EMAIL a member of the portal SLUG."""
    portal = _portal(slug)
    user = people.find_user(email)
    if user is None:
        raise click.ClickException("No such user.")
    try:
        people.add_member(COMMAND_LINE, portal, user, Role(role))
    except people.Conflict as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"{email} is now {role} of {slug}.")


@mail_group.command("check")
@click.argument("slug")
@click.argument("server_id", type=int)
def mail_check(slug, server_id):
    """Validate a saved server, as its row's Validate does; exit status 1 if a step failed."""
    portal = _portal(slug)
    report = checks.check(COMMAND_LINE, portal, _server(portal, server_id))
    for step in report.steps:
        click.echo(f"{step.outcome.upper():8} {step.name}: {step.summary}")
        _echo_refused(step, slug)
        if step.hint:
            click.echo(f"{'':8} what to try: {step.hint}")
    for title, steps in report.sections:  # advice (Deliverability): shown, never the exit status
        click.echo(f"\n{title}")
        for step in steps:
            click.echo(f"{step.outcome.upper():8} {step.name}: {step.summary}")
            for label, value in step.details:
                if label == "Record to publish":
                    click.echo(f"{'':8} record to publish: {value}")
            if step.hint:
                click.echo(f"{'':8} what to try: {step.hint}")
    raise SystemExit(0 if report.ok else 1)


@mail_group.command("send-sample")
@click.argument("slug")
@click.argument("server_id", type=int)
@click.argument("recipient")
def mail_send_sample(slug, server_id, recipient):
    """Send a sample mail through a saved server; exit status 1 if it was not accepted."""
    portal = _portal(slug)
    result = checks.send_sample(COMMAND_LINE, portal, _server(portal, server_id), recipient)
    if result.receipt:
        click.echo(f"Email server accepted mail for delivery: {result.receipt.reply}")
        return
    click.echo(f"The mail was not sent: {result.error}")
    if result.error.report.failure:
        _echo_refused(result.error.report.failure, slug)
    click.echo(f"What to try: {result.error.hint}")
    raise SystemExit(1)


def _echo_refused(step, slug: str) -> None:
    """What the report's Allow button offers, for a step the egress policy failed: each refused
    destination of an "Egress policy" step, and the command that allows each for the portal."""
    from .mail.destinations import STEP
    from .mail.egress import REFUSED_DESTINATION

    for label, value in step.details:
        if label == REFUSED_DESTINATION:
            click.echo(f"{'':8} allow it: flask --app webapp egress allow '{value}' --portal {slug}")
        elif step.name == STEP:
            click.echo(f"{'':8} {label}: {value}")


@mail_group.command("enqueue")
@click.argument("slug")
@click.option("--to", "to", multiple=True, help="A recipient (“Name <address>” or an address); repeat for more.")
@click.option("--cc", multiple=True)
@click.option("--bcc", multiple=True)
@click.option("--from", "from_", help="One of the portal's From addresses (default: its first enabled server's).")
@click.option("--reply-to")
@click.option("--subject", default="")
@click.option("--text", help="The plain-text body.")
@click.option("--text-file", type=click.File(encoding="utf-8"), help="The plain-text body from a file (- for stdin).")
@click.option("--html-file", type=click.File(encoding="utf-8"), help="The HTML body from a file.")
@click.option("--attach", "attachments", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="A file to attach; repeat for more.")
@click.option("--header", "headers", multiple=True, help="A further header, “Name: value”; repeat for more.")
@click.option("--idempotency-key", help="The same key with the same message stores it only once.")
def mail_enqueue(slug, to, cc, bcc, from_, reply_to, subject, text, text_file, html_file, attachments, headers,
                 idempotency_key):
    """Hand a message to the portal SLUG: it is stored and queued for delivery; prints its id."""
    from pydantic import ValidationError

    from . import outbox

    portal = _portal(slug)
    try:
        submission = outbox.Submission.model_validate({
            "from": from_, "to": list(to), "cc": list(cc), "bcc": list(bcc), "reply_to": reply_to,
            "subject": subject, "text": text_file.read() if text_file else text,
            "html": html_file.read() if html_file else None, "headers": dict(_header(h) for h in headers),
            "attachments": [{"filename": Path(path).name, "content": Path(path).read_bytes()} for path in attachments]})
        mail = outbox.submit(portal, submission, outbox.Submitter(outbox.Source.COMMAND_LINE, COMMAND_LINE.label),
                             idempotency_key)
    except ValidationError as error:
        problems = [f"{_option(outbox.error_field(e))}: {e['ctx']['error'] if e['type'] == 'value_error' else e['msg']}"
                    for e in error.errors(include_url=False)]
        raise click.ClickException("the message was not queued:\n  " + "\n  ".join(problems)) from None
    except outbox.Refused as refused:
        raise click.ClickException(f"the message was not queued: {_option(refused.field)}: {refused.message}") from None
    click.echo(mail.id)


def _header(text: str) -> tuple[str, str]:
    name, colon, value = text.partition(":")
    if not colon:
        raise click.BadParameter(f"{text!r} is not “Name: value”", param_hint="--header")
    return name.strip(), value.strip()


def _option(field: str) -> str:
    """The option a submission's field came from: "to[1]" -> "--to (2nd)"."""
    name, _, rest = field.partition("[")
    option = {"from": "--from", "reply_to": "--reply-to", "text": "--text", "html": "--html-file",
              "attachments": "--attach", "headers": "--header", "Idempotency-Key": "--idempotency-key"}.get(
        name.split(".")[0], f"--{name}" if name in ("to", "cc", "bcc", "subject") else name)
    if rest[:1].isdigit():
        option += f" #{int(rest.split(']')[0]) + 1}"
    return option


@egress_group.command("show")
@click.option("--portal", "slug", help="A portal's lists instead of the global ones.")
def egress_show(slug):
    """Print the allow and deny lists."""
    rules = _egress_rules(slug)
    for name in ("allow", "deny"):
        click.echo(f"{name}:")
        for line in rules[name].splitlines() or ["(empty)"]:
            click.echo(f"  {line}")


@egress_group.command("allow")
@click.argument("rule")
@click.option("--portal", "slug", help="Add to a portal's list instead of the global one.")
def egress_allow(rule, slug):
    """Add RULE (e.g. '127.0.0.1 25' or '10.0.0.0/8') to the allow list."""
    _egress_add("allow", rule, slug)


@egress_group.command("deny")
@click.argument("rule")
@click.option("--portal", "slug", help="Add to a portal's list instead of the global one.")
def egress_deny(rule, slug):
    """Add RULE to the deny list."""
    _egress_add("deny", rule, slug)


@egress_group.command("check")
@click.argument("host")
@click.argument("port", type=int)
@click.option("--portal", "slug", help="Decide for this portal (its lists, then the global ones).")
def egress_check(host, port, slug):
    """Say what the policy decides for HOST PORT, without connecting."""
    click.echo(network.decide(_portal(slug) if slug else None, host, port))


def _egress_rules(slug: str | None) -> dict:
    if slug:
        portal = _portal(slug)
        return {"allow": portal.egress_allow, "deny": portal.egress_deny}
    return network.global_rules()


def _egress_add(name: str, rule: str, slug: str | None) -> None:
    rules = _egress_rules(slug)
    rules[name] = "\n".join([*rules[name].splitlines(), rule])
    try:
        if slug:
            network.set_portal_rules(COMMAND_LINE, _portal(slug), rules["allow"], rules["deny"])
        else:
            network.set_global_rules(COMMAND_LINE, rules["allow"], rules["deny"])
    except network.RulesInvalid as error:
        raise click.ClickException(f"Not a rule: {error}") from None
    click.echo(f"Added to the {'portal ' + slug + chr(39) + 's' if slug else 'global'} {name} list: {rule}")


@mail_group.command("refresh-tokens")
@click.option("--older-than-hours", default=24.0, show_default=True,
              help="Refresh delegated OAuth grants not refreshed for this long.")
def mail_refresh_tokens(older_than_hours):
    """Refresh delegated OAuth grants that would otherwise go quiet (run it daily from cron).
    Exit status 1 if a grant needs re-authorization."""
    from .grants import refresh_quiet_grants

    outcomes = refresh_quiet_grants(older_than_hours)
    for server, outcome in outcomes:
        click.echo(f"{server}: {outcome}")
    if not outcomes:
        click.echo("No grant needed a refresh.")
    raise SystemExit(1 if any(outcome.startswith("failed") for _, outcome in outcomes) else 0)


@mail_group.command("relay")
@click.option("--host", help="Bind address (default: SUBMISSION_HOST, 127.0.0.1).")
@click.option("--starttls-port", type=click.IntRange(1, 65535),
              help="Port with STARTTLS (default: SUBMISSION_STARTTLS_PORT, 2587).")
@click.option("--tls-port", type=click.IntRange(1, 65535),
              help="Port with implicit TLS (default: SUBMISSION_TLS_PORT, 2465).")
def mail_relay(host, starttls_port, tls_port):
    """Run the SMTP submission listener until Ctrl-C or SIGTERM: devices sign in with a portal's SMTP
    credential and their mail is stored in that portal's outbox."""
    from dataclasses import replace

    from .submission.listener import Relay
    from .submission.settings import RelaySettings

    try:
        settings = RelaySettings.from_config(current_app.config)
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    overrides = {"host": host, "starttls_port": starttls_port, "tls_port": tls_port}
    settings = replace(settings, **{name: value for name, value in overrides.items() if value is not None})
    relay = Relay(current_app._get_current_object(), settings)
    try:
        relay.start()
    except OSError as error:
        raise click.ClickException(f"The SMTP submission listener cannot listen: {error}") from None
    certificate = relay.certificate
    click.echo(f"SMTP submission on {settings.host}: port {settings.starttls_port} (STARTTLS), port "
               f"{settings.tls_port} (SSL/TLS). Certificate {certificate.subject}"
               f"{' (self-signed)' if certificate.self_signed else ''}, SHA-256 {certificate.fingerprint}", err=True)
    relay.wait_then_stop()


@mail_group.command("worker")
@click.option("--workers", type=click.IntRange(1, 256), default=None,
              help="Messages sent at once by this process (threads); default DELIVERY_WORKERS (4).")
def mail_worker(workers):
    """Deliver the queued mail until Ctrl-C (then the messages under way are finished first).
    Also runs the periodic jobs: the sweep, probes of failing servers, the daily summary of
    failures, purging old messages and refreshing OAuth grants. Run one or more per host."""
    from .delivery import run_worker

    _log_to_stderr()
    run_worker(workers)


@mail_group.command("purge")
def mail_purge():
    """Delete the bodies of messages sent or failed DELIVERY_PURGE_BODY_DAYS ago, and the messages
    with their attempts DELIVERY_KEEP_DAYS ago (the worker does this daily too)."""
    from .delivery import queue
    from .delivery.retention import purge

    purged = purge(queue().settings)
    click.echo(f"Deleted {purged.bodies} message bod{'y' if purged.bodies == 1 else 'ies'} and "
               f"{purged.messages} old message{'' if purged.messages == 1 else 's'}.")


def _log_to_stderr() -> None:
    """The worker's lines (and Huey's about starting and stopping) on stderr, as gunicorn's are."""
    import logging

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"))
    for name, level in (("huey", logging.WARNING), ("huey.consumer", logging.INFO),
                        ("huey.consumer.Scheduler", logging.WARNING)):
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.addHandler(handler)
        logger.propagate = False


@click.command("rotate-secrets")
@with_appcontext
def rotate_secrets():
    """Add a new key to instance/secret-keys and re-encrypt every stored secret with it."""
    if not current_app.config.get("SECRET_KEYS"):  # else the new key is already first in MAILROOM_SECRET_KEYS
        prepend_new_key(Path(current_app.instance_path) / KEY_FILE)
    box = SecretBox(configured_keys(current_app.config, current_app.instance_path))
    stored = db.session().exec(select(Credential).where(Credential.secret.is_not(None))).all()
    for credential in stored:
        credential.secret = box.rotate(credential.secret)  # the revision stays: the secret is the same
        db.session().add(credential)
    db.session().commit()
    click.echo(f"Re-encrypted {len(stored)} secret(s). Older keys can be removed now.")


commands = click.Group("mailroom", help="Mailroom's administration: the commands of `flask --app webapp`.", commands=[
    db_group, mail_group, egress_group, init, create_user, reset_password, create_portal, add_member, rotate_secrets])


def _portal(slug: str) -> Portal:
    portal = db.session().exec(select(Portal).where(Portal.slug == slug)).first()
    if portal is None:
        raise click.ClickException(f"No portal has the slug {slug}.")
    return portal


def _server(portal: Portal, server_id: int):
    server = mailservers.get_server(portal, server_id)
    if server is None:
        raise click.ClickException(f"The portal {portal.slug} has no server {server_id}.")
    return server
