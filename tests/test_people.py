"""Portals, members and roles, through the pages and the command line."""
from sqlmodel import select

from webapp import db
from webapp.models import AuditEvent, Membership, Portal, Role, User


def test_superadmin_creates_a_portal_and_adds_a_member(app, make, client):
    make.user("root@example.com", superadmin=True)
    make.user("agent@example.com")
    client.login("root@example.com")
    created = client.post("/portals/new", {"name": "Help Desk", "slug": "help", "base_url": "https://help.example.com"})
    assert created.status_code == 303 and created.headers["Location"] == "/p/help/servers/"
    added = client.post("/p/help/members", {"email": "agent@example.com", "role": "staff"})
    assert added.status_code == 303
    page = client.get("/p/help/members").text
    assert "agent@example.com" in page
    history = client.get("/p/help/history").text
    assert "Created the portal" in history and "Added the member" in history and "root@example.com" in history


def test_portal_form_errors(app, make, client):
    make.user("root@example.com", superadmin=True)
    make.portal(slug="help")
    client.login("root@example.com")
    response = client.post("/portals/new", {"name": "", "slug": "Not A Slug", "base_url": "help.example.com"})
    assert response.status_code == 422
    assert "lowercase letters" in response.text and "https://help.example.com" in response.text
    taken = client.post("/portals/new", {"name": "Again", "slug": "help"})
    assert taken.status_code == 422 and "already exists" in taken.text
    with app.app_context():
        assert len(db.session().exec(select(Portal)).all()) == 1


def test_adding_an_unknown_user_says_so(admin):
    response = admin.post("/p/help/members", {"email": "nobody@example.com", "role": "staff"})
    assert response.status_code == 422 and "No user has this email" in response.text


def test_role_change_and_removal_are_recorded(app, admin, make, portal):
    make.member(portal, "agent@example.com", Role.STAFF)
    with app.app_context():
        membership = db.session().exec(
            select(Membership).join(User).where(User.email == "agent@example.com")).one()
    assert admin.post(f"/p/help/members/{membership.id}/role", {"role": "admin"}).status_code == 303
    assert admin.post(f"/p/help/members/{membership.id}/remove").status_code == 303
    with app.app_context():
        actions = [e.action for e in db.session().exec(select(AuditEvent).order_by(AuditEvent.id))]
        assert db.session().get(Membership, membership.id) is None
    assert actions[-2:] == ["membership.updated", "membership.removed"]


def test_a_member_sees_only_their_portals(make, client):
    mine = make.portal(slug="mine", name="Mine")
    make.portal(slug="theirs", name="Theirs")
    make.member(mine, "agent@example.com", Role.STAFF)
    page = client.login("agent@example.com").get("/").text
    assert "Mine" in page and "Theirs" not in page


def test_portal_settings_edit_name_and_base_url(app, admin):
    response = admin.post("/p/help/settings", {"name": "Service Desk", "base_url": "https://desk.example.com/app"})
    assert response.status_code == 303
    with app.app_context():
        portal = db.session().exec(select(Portal)).one()
    assert (portal.name, portal.base_url, portal.slug) == ("Service Desk", "https://desk.example.com/app", "help")


def test_superadmin_creates_users(app, make, client):
    make.user("root@example.com", superadmin=True)
    client.login("root@example.com")
    short = client.post("/users/new", {"email": "new@example.com", "password": "short"})
    assert short.status_code == 422
    created = client.post("/users/new", {"email": "New@Example.com", "password": "long enough password"})
    assert created.status_code == 303
    client.post("/logout")
    client._token = None
    client.login("new@example.com", "long enough password")


def test_command_line_administration(app):
    runner = app.test_cli_runner()
    first = runner.invoke(args=["init", "--email", "boss@example.com"])
    assert "password:" in first.output
    again = runner.invoke(args=["init"])
    assert "password:" not in again.output
    assert runner.invoke(args=["create-user", "agent@example.com", "--password", "pw-pw-pw-pw"]).exit_code == 0
    assert runner.invoke(args=["create-portal", "help", "Help Desk", "--base-url", "https://h.example"]).exit_code == 0
    assert runner.invoke(args=["add-member", "help", "agent@example.com", "--role", "admin"]).exit_code == 0
    duplicate = runner.invoke(args=["create-portal", "help", "Again"])
    assert duplicate.exit_code != 0 and "already exists" in duplicate.output
    with app.app_context():
        membership = db.session().exec(select(Membership)).one()
        assert membership.role == Role.ADMIN
        assert db.session().exec(select(User).where(User.email == "boss@example.com")).one().is_superadmin


def test_the_last_admin_of_a_portal_cannot_be_removed_or_demoted(app, admin):
    with app.app_context():
        membership = db.session().exec(select(Membership)).one()
    demoted = admin.post(f"/p/help/members/{membership.id}/role", {"role": "staff"})
    removed = admin.post(f"/p/help/members/{membership.id}/remove")
    assert demoted.status_code == removed.status_code == 303
    page = admin.get("/p/help/members").text
    assert "needs at least one admin" in page
    with app.app_context():
        assert db.session().exec(select(Membership)).one().role == Role.ADMIN


def test_users_change_their_own_password(make, client):
    make.user("someone@example.com")
    client.login("someone@example.com")
    wrong = client.post("/account/password", {"current": "not it", "new": "a new long password",
                                              "confirm": "a new long password"})
    assert wrong.status_code == 422 and "not your current password" in wrong.text
    changed = client.post("/account/password", {"current": "correct horse battery", "new": "a new long password",
                                                "confirm": "a new long password"})
    assert changed.status_code == 303
    client.post("/logout")
    client._token = None
    client.login("someone@example.com", "a new long password")


def test_the_slug_cannot_be_changed_once_created(app, admin):
    page = admin.get("/p/help/settings").text
    assert 'name="name"' in page and 'name="base_url"' in page and 'name="slug"' not in page
