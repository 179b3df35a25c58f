"""Command-line administration: flask --app webapp <command>."""
import secrets
from pathlib import Path

import click
from flask import current_app
from flask.cli import AppGroup, with_appcontext
from sqlmodel import select

from . import db, people
from .crypto import KEY_FILE, SecretBox, configured_keys, prepend_new_key
from .models import MailServer, Role, User


def init_app(app) -> None:
    for command in (db_group, init, create_user, create_portal, add_member, rotate_secrets):
        app.cli.add_command(command)


db_group = AppGroup("db", help="Database migrations.")


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
    password = secrets.token_urlsafe(12)
    people.create_user(email, password, name="Administrator", superadmin=True)
    click.echo(f"\nCreated the first super-admin. Sign in at {url}\n  email:    {email}\n  password: {password}\n"
               "Change it after signing in: click your email at the top right.\n")


@click.command("create-user")
@with_appcontext
@click.argument("email")
@click.option("--name", default="")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True)
@click.option("--superadmin", is_flag=True, help="May create portals and users.")
def create_user(email, name, password, superadmin):
    """Create a user who signs in with EMAIL."""
    try:
        people.create_user(email, password, name, superadmin)
    except people.Conflict as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"Created {email}.")


@click.command("create-portal")
@with_appcontext
@click.argument("slug")
@click.argument("name")
@click.option("--base-url", default="", help="Public base URL, used for links in mails.")
def create_portal(slug, name, base_url):
    """Create a portal."""
    try:
        people.create_portal(slug, name, base_url)
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
    from .models import Portal

    portal = db.session().exec(select(Portal).where(Portal.slug == slug)).first()
    user = people.find_user(email)
    if portal is None or user is None:
        raise click.ClickException("No such portal." if portal is None else "No such user.")
    try:
        people.add_member(portal, user, Role(role))
    except people.Conflict as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"{email} is now {role} of {slug}.")


@click.command("rotate-secrets")
@with_appcontext
def rotate_secrets():
    """Add a new key to instance/secret-keys and re-encrypt every stored secret with it."""
    if not current_app.config.get("SECRET_KEYS"):  # else the new key is already first in MAILROOM_SECRET_KEYS
        prepend_new_key(Path(current_app.instance_path) / KEY_FILE)
    box = SecretBox(configured_keys(current_app.config, current_app.instance_path))
    servers = db.session().exec(select(MailServer).where(MailServer.password_secret.is_not(None))).all()
    for server in servers:
        server.password_secret = box.rotate(server.password_secret)
        db.session().add(server)
    db.session().commit()
    click.echo(f"Re-encrypted {len(servers)} secret(s). Older keys can be removed now.")
