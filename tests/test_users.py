"""Super-admins edit, disable and remove users and reset passwords (page and command line); a
password someone else chose must be replaced at the next sign-in."""
import re

from sqlmodel import select

from tests.conftest import PASSWORD, Client
from webapp import db
from webapp.models import AuditEvent, Membership, Role, User


def user(app, email) -> User | None:
    with app.app_context():
        return db.session().exec(select(User).where(User.email == email)).first()


def sign_in_fails(app, email, password) -> bool:
    response = Client(app).post("/login", {"email": email, "password": password})
    assert response.status_code in (303, 422), response.status_code
    return response.status_code == 422 and "The email or password is not right." in response.text


def test_a_new_user_chooses_their_own_password_before_anything_else(app, make, client):
    make.user("root@example.com", superadmin=True)
    root = client.login("root@example.com")
    assert root.post("/users/new", {"email": "new@example.com", "password": "handed-over-1"}).status_code == 303
    newcomer = Client(app).login("new@example.com", "handed-over-1")
    for page in ("/", "/users/", "/p/help/servers/"):
        response = newcomer.get(page)
        assert response.status_code == 303 and response.headers["Location"] == "/account/password", page
    form = newcomer.get("/account/password").text
    assert "Choose your password" in form and "set by someone else" in form
    same = newcomer.post("/account/password", {"current": "handed-over-1", "new": "handed-over-1",
                                                "confirm": "handed-over-1"})
    assert same.status_code == 422 and "Choose a password other than the current one." in same.text
    chosen = newcomer.post("/account/password", {"current": "handed-over-1", "new": "my own password 2",
                                                  "confirm": "my own password 2"})
    assert chosen.status_code == 303
    assert newcomer.get("/").status_code == 200
    assert user(app, "new@example.com").must_change_password is False


def test_superadmins_edit_disable_and_remove_users(app, make, client, portal):
    make.user("root@example.com", superadmin=True)
    agent = make.member(portal, "agent@example.com", Role.STAFF)
    make.member(portal, "boss@example.com", Role.ADMIN)
    root = client.login("root@example.com")
    listing = root.get("/users/").text
    assert f'<a href="/users/{agent.id}">agent@example.com</a>' in listing

    edited = root.post(f"/users/{agent.id}", {"email": "Agent.Smith@Example.com", "name": "Agent Smith",
                                             "is_active": "y"})
    assert edited.status_code == 303
    assert (user(app, "agent.smith@example.com").name, user(app, "agent@example.com")) == ("Agent Smith", None)

    disabled = root.post(f"/users/{agent.id}", {"email": "agent.smith@example.com", "name": "Agent Smith"})
    assert disabled.status_code == 303
    assert user(app, "agent.smith@example.com").is_active is False
    assert sign_in_fails(app, "agent.smith@example.com", PASSWORD)
    assert '<span class="badge off">Disabled</span>' in root.get("/users/").text

    confirm = root.get(f"/users/{agent.id}/remove")
    assert "Remove agent.smith@example.com?" in confirm.text
    assert root.post(f"/users/{agent.id}/remove").status_code == 303
    assert user(app, "agent.smith@example.com") is None
    with app.app_context():
        assert db.session().exec(select(Membership).where(Membership.user_id == agent.id)).first() is None
        actions = [e.action for e in db.session().exec(select(AuditEvent).order_by(AuditEvent.id))]
    assert actions[-3:] == ["user.updated", "membership.removed", "user.removed"]


def test_the_last_superadmin_and_a_portals_only_admin_are_kept(app, make, client, portal):
    root = make.user("root@example.com", superadmin=True)
    boss = make.member(portal, "boss@example.com", Role.ADMIN)
    admin = client.login("root@example.com")
    demote_self = admin.post(f"/users/{root.id}", {"email": "root@example.com", "is_active": "y"})
    assert demote_self.status_code == 422
    assert "Mailroom needs an active super-admin" in demote_self.text
    assert user(app, "root@example.com").is_superadmin
    removed = admin.post(f"/users/{boss.id}/remove")
    assert removed.status_code == 303
    assert "is the only admin of the portal “Help Desk”" in admin.get(f"/users/{boss.id}").text
    disabled = admin.post(f"/users/{boss.id}", {"email": "boss@example.com"})
    assert disabled.status_code == 422 and "is the only admin of the portal" in disabled.text
    assert user(app, "boss@example.com").is_active


def test_a_superadmin_resets_a_password_shown_once(app, make, client):
    make.user("root@example.com", superadmin=True)
    agent = make.user("agent@example.com")
    root = client.login("root@example.com")
    assert "Reset the password of agent@example.com?" in root.get(f"/users/{agent.id}/reset-password").text
    shown = root.post(f"/users/{agent.id}/reset-password")
    password = re.search(r'<code class="secret-once">([^<]+)</code>', shown.text).group(1)
    assert shown.headers["Cache-Control"] == "no-store"
    assert sign_in_fails(app, "agent@example.com", PASSWORD)
    again = Client(app).login("agent@example.com", password)
    assert again.get("/").headers["Location"] == "/account/password"
    with app.app_context():
        event = db.session().exec(select(AuditEvent).where(AuditEvent.action == "user.password_reset")).one()
    assert event.actor == "root@example.com" and password not in str(event.changes)


def test_reset_password_from_the_command_line(app, make):
    make.user("agent@example.com")
    result = app.test_cli_runner().invoke(args=["reset-password", "agent@example.com"])
    assert result.exit_code == 0
    password = re.search(r"New one-time password for agent@example.com: (\S+)", result.output).group(1)
    assert user(app, "agent@example.com").must_change_password
    Client(app).login("agent@example.com", password)
    unknown = app.test_cli_runner().invoke(args=["reset-password", "nobody@example.com"])
    assert unknown.exit_code != 0 and "No user has the email nobody@example.com." in unknown.output
    with app.app_context():
        event = db.session().exec(select(AuditEvent).where(AuditEvent.action == "user.password_reset")).one()
    assert event.actor == "command line"
