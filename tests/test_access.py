"""Walk the URL map: every route is CSRF-protected on POST and checks the user's right to the portal.

The API's routes (under sessions.SESSIONLESS_PATH) are authorized by a portal's API key instead of a
session: they are walked apart, and must refuse every request without a live key of their portal."""
import re

import pytest
from sqlmodel import select

from webapp import apikeys, db, senders
from webapp.audit import Actor
from webapp.models import Membership, OutboundMail, Role, SmimeCertificate, utcnow
from webapp.sessions import SESSIONLESS_PATH
from webapp.submission import credentials as smtp_credentials

# Endpoints a staff member may use; every other portal route is for admins only.
STAFF_ENDPOINTS = {"servers.index", "servers.sample", "servers.arrival", "servers.check", "portals.history", "queue.index",
                   "queue.message", "portals.home"}
# Reached without signing in: sign-in, assets, and the OAuth pages a mailbox owner uses.
PUBLIC_ENDPOINTS = {"auth.login", "static", "oauth.callback", "oauth.result", "oauth.link", "oauth.follow_link",
                    "auth.forgot", "auth.reset"}


@pytest.fixture
def world(app, make, portal):
    server = make.server(portal)
    member = make.member(portal, "member@example.com", Role.STAFF)
    mail = OutboundMail(portal_id=portal.id, state="failed", subject="Hello", raw=b"Subject: Hello\r\n\r\nHi")
    with app.app_context():
        membership = db.session().exec(select(Membership).where(Membership.user_id == member.id)).one()
        key, _ = apikeys.create(Actor("tests"), portal, "Sample")
        credential, _ = smtp_credentials.create(Actor("tests"), portal, smtp_credentials.CredentialValues(
            "Scanner", from_addresses="scanner@example.com"))
        sender = senders.add(Actor("tests"), portal, "alerts@customer.example")
        db.session().add(mail)
        certificate = SmimeCertificate(portal_id=portal.id, address="jane@example.org", der=b"0", subject="CN=Jane",
                                       issuer="CN=CA", not_after=utcnow())
        db.session().add(certificate)
        db.session().commit()
    values = {"slug": portal.slug, "server_id": server.id, "membership_id": membership.id, "name": "tls",
              "direction": "up", "user_id": member.id, "token": "not-a-link", "key_id": key.id, "message_id": 1,
              "mail_id": mail.id, "action": "requeue", "credential_id": credential.id,
              "certificate_id": certificate.id, "sender_id": sender.id}
    return values


def by_key(rule) -> bool:
    return rule.rule.startswith(SESSIONLESS_PATH)


def routes(app, predicate=lambda rule: True):
    """The routes a session authorizes (not the API's)."""
    for rule in app.url_map.iter_rules():
        if rule.endpoint in PUBLIC_ENDPOINTS or by_key(rule) or not predicate(rule):
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            yield rule, method


def url(rule, values) -> str:
    missing = rule.arguments - values.keys()
    assert not missing, f"add a sample value for {missing} (route {rule.rule}) so the access tests cover it"
    return rule.build({k: values[k] for k in rule.arguments}, append_unknown=False)[1]


def portal_routes(app):
    return list(routes(app, lambda rule: "slug" in rule.arguments))


def test_the_public_routes_are_only_these_and_refuse_what_they_cannot_trust(app, client):
    public = {rule.endpoint for rule in app.url_map.iter_rules() if not by_key(rule) and not rule.endpoint.startswith(
        ("portals.", "servers.", "users.", "settings.", "keys.", "queue.", "smtp_credentials.", "smime.", "transcripts.")
    ) and rule.endpoint not in (
        "auth.logout", "auth.password", "oauth.authorize", "oauth.admin_consent", "oauth.make_link",
        "oauth.discover")}
    assert public == PUBLIC_ENDPOINTS
    assert client.get("/oauth/result").status_code == 404  # no consent in this browser: nothing to show
    assert client.get("/oauth/callback", follow_redirects=True).status_code == 400
    assert client.get("/oauth/callback?state=forged&code=x", follow_redirects=True).status_code == 400
    assert client.get("/oauth/consent/not-a-link").status_code == 404
    assert client.post("/oauth/consent/not-a-link", csrf=False).status_code == 400


def test_the_map_has_portal_routes(app):
    endpoints = {rule.endpoint for rule, _ in portal_routes(app)}
    assert {"servers.edit", "servers.validate", "servers.section", "servers.sample"} <= endpoints


def test_anonymous_users_are_sent_to_sign_in(app, client, world):
    for rule, method in routes(app):
        response = client.post(url(rule, world)) if method == "POST" else client.get(url(rule, world))
        assert response.status_code == 302, (method, rule.rule, response.status_code)
        assert response.headers["Location"].startswith("/login"), rule.rule


def test_non_members_get_404_on_every_portal_route(app, make, client, world):
    make.member(make.portal(slug="other", name="Other"), "stranger@example.com", Role.ADMIN)
    client.login("stranger@example.com")
    for rule, method in portal_routes(app):
        response = client.post(url(rule, world)) if method == "POST" else client.get(url(rule, world))
        assert response.status_code == 404, (method, rule.rule, response.status_code)


def test_a_portals_own_address_leads_its_members_to_its_servers(staff, world):
    answer = staff.get("/p/help/")
    assert answer.status_code == 302 and answer.headers["Location"] == "/p/help/servers/"
    assert staff.get("/p/help").status_code == 308  # Flask's slash, then the same


def test_staff_may_not_change_anything_but_send_samples(app, staff, world):
    for rule, method in portal_routes(app):
        response = staff.post(url(rule, world)) if method == "POST" else staff.get(url(rule, world))
        if rule.endpoint in STAFF_ENDPOINTS:
            assert response.status_code in ((302,) if rule.endpoint == "portals.home" else (200, 422)), \
                (method, rule.rule, response.status_code)
        else:
            assert response.status_code == 403, (method, rule.rule, response.status_code)


def test_only_superadmins_manage_users_and_portals(app, staff, world):
    for rule, method in routes(app, lambda rule: rule.endpoint.startswith(("users.", "settings."))
                               or rule.endpoint == "portals.new"):
        response = staff.post(url(rule, world)) if method == "POST" else staff.get(url(rule, world))
        assert response.status_code == 403, (method, rule.rule)


def test_every_post_needs_the_csrf_token(app, admin, world):
    posts = [(rule, method) for rule, method in routes(app) if method == "POST"]
    assert posts
    public_posts = [(r, "POST") for r in app.url_map.iter_rules()
                    if r.endpoint in ("auth.login", "auth.forgot", "auth.reset")]
    for rule, _ in [*posts, *public_posts]:
        response = admin.post(url(rule, world), csrf=False)
        assert response.status_code == 400, rule.rule
        response = admin.post(url(rule, world), csrf=False, htmx=True, headers={"X-CSRFToken": "forged"})
        assert response.status_code == 400, rule.rule


def test_the_smtp_transcripts_are_for_admins_only(admin, staff, world):
    """servers/<id>/transcripts (views/transcripts.py): admins read it, staff get 403 (and strangers 404, above)."""
    path = f"/p/{world['slug']}/servers/{world['server_id']}/transcripts"
    assert admin.get(path).status_code == 200
    assert staff.get(path).status_code == 403
    assert admin.get(f"/p/{world['slug']}/servers/{world['server_id'] + 100000}/transcripts").status_code == 404


def test_htmx_sends_the_token_as_a_header(admin, world):
    page = admin.get(f"/p/{world['slug']}/servers/").text
    token = re.search(r"<body hx-headers='\{\"X-CSRFToken\": \"([^\"]+)\"\}'>", page).group(1)
    response = admin.http.post(f"/p/{world['slug']}/servers/{world['server_id']}/toggle",
                               headers={"X-CSRFToken": token, "HX-Request": "true"})
    assert response.status_code == 200


def test_session_cookie_flags(app, make, client):
    make.user("someone@example.com")
    client.login("someone@example.com")
    cookie = client.http.get_cookie("session")
    assert cookie.http_only and cookie.same_site == "Lax" and not cookie.secure
    secure = app.test_client()
    page = secure.get("/login", base_url="https://mailroom.example").text
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
    response = secure.post("/login", base_url="https://mailroom.example",
                           headers={"Referer": "https://mailroom.example/login"},
                           data={"email": "someone@example.com", "password": "correct horse battery",
                                 "csrf_token": token})
    assert "Secure" in response.headers["Set-Cookie"]


def test_content_security_policy_forbids_inline_script(admin, world):
    response = admin.get(f"/p/{world['slug']}/servers/{world['server_id']}/edit")
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert not re.search(r"<script(?![^>]*\bsrc=)", response.text)
    assert not re.search(r"\son[a-z]+=", response.text)  # no inline event handlers


def test_bad_credentials_get_a_generic_error(make, client):
    make.user("someone@example.com")
    wrong_password = client.post("/login", {"email": "someone@example.com", "password": "nope"})
    unknown_user = client.post("/login", {"email": "nobody@example.com", "password": "nope"})
    assert wrong_password.status_code == unknown_user.status_code == 422
    assert "The email or password is not right." in wrong_password.text
    assert "The email or password is not right." in unknown_user.text


def test_next_parameter_cannot_leave_the_site(make, client):
    make.user("someone@example.com")
    response = client.post("/login?next=//evil.example/", {"email": "someone@example.com",
                                                          "password": "correct horse battery"})
    assert response.headers["Location"] == "/"


def test_every_answer_to_htmx_varies_on_hx_request(app, admin, world):
    """One URL serves a whole page or a fragment: caches must keep them apart."""
    for rule, method in routes(app):
        if rule.endpoint == "auth.logout":
            continue
        response = (admin.post(url(rule, world), htmx=True) if method == "POST"
                    else admin.get(url(rule, world), headers={"HX-Request": "true"}))
        assert "HX-Request" in response.headers.get("Vary", ""), (method, rule.rule)
        assert response.headers["Cache-Control"] == "no-store", (method, rule.rule)


def test_a_post_from_another_origin_is_refused(admin, world):
    url_ = f"/p/{world['slug']}/servers/{world['server_id']}/toggle"
    foreign = admin.post(url_, htmx=True, headers={"Origin": "https://evil.example"})
    assert foreign.status_code == 400
    same = admin.post(url_, htmx=True, headers={"Origin": "http://localhost"})
    assert same.status_code == 200


def test_pages_cannot_be_framed_and_https_is_remembered(client):
    plain = client.get("/login")
    assert plain.headers["X-Frame-Options"] == "DENY" and "frame-ancestors 'none'" in plain.headers[
        "Content-Security-Policy"]
    assert "Strict-Transport-Security" not in plain.headers
    secure = client.http.get("/login", base_url="https://mailroom.example")
    assert secure.headers["Strict-Transport-Security"] == "max-age=31536000"


def test_the_database_and_the_keys_are_readable_by_their_owner_only(tmp_path):
    import os
    import stat

    from webapp import create_app

    instance = tmp_path / "instance"
    create_app(instance_path=str(instance))
    for name in ("mailroom.sqlite3", "secret-keys", "flask-secret-key"):
        mode = stat.S_IMODE(os.stat(instance / name).st_mode)
        assert mode & 0o077 == 0, (name, oct(mode))
    assert stat.S_IMODE(os.stat(instance).st_mode) & 0o077 == 0


def test_fragments_for_htmx_carry_no_document_policy_and_pages_do(admin, world):
    fragment = admin.post(f"/p/{world['slug']}/servers/{world['server_id']}/section/tls", {"security": "tls"},
                          htmx=True)
    assert fragment.status_code == 200 and "<html" not in fragment.text
    assert "Content-Security-Policy" not in fragment.headers and "X-Frame-Options" not in fragment.headers
    assert fragment.headers["Cache-Control"] == "no-store" and "HX-Request" in fragment.headers["Vary"]
    restore = admin.get(f"/p/{world['slug']}/servers/",
                        headers={"HX-Request": "true", "HX-History-Restore-Request": "true"})
    assert "<html" in restore.text and "Content-Security-Policy" in restore.headers  # a whole page again


# -- the API: a key of the portal, never a session ---------------------------------------------------------

def key_routes(app):
    for rule in app.url_map.iter_rules():
        if by_key(rule) and rule.endpoint != "api.openapi":  # the description is public
            for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
                yield rule, method


def test_the_sessionless_paths_are_the_apis_and_only_its(app):
    assert {rule.endpoint.split(".")[0] for rule in app.url_map.iter_rules() if by_key(rule)} == {"api"}
    assert all(by_key(rule) for rule in app.url_map.iter_rules() if rule.endpoint.startswith("api."))
    assert {rule.endpoint for rule, _ in key_routes(app)} == {"api.submit", "api.message"}


def test_every_api_route_refuses_without_a_live_key_of_its_portal(app, make, admin, world):
    other = make.portal(slug="other", name="Other")
    with app.app_context():
        others = apikeys.create(Actor("tests"), other, "Theirs")[1]
    admin.get(f"/p/{world['slug']}/servers/")  # a signed-in browser session: worth nothing here
    for rule, method in key_routes(app):
        for headers in ({}, {"Authorization": "Bearer mr_unknown"}, {"Authorization": f"Bearer {others}"}):
            response = admin.http.open(url(rule, world), method=method, headers=headers)
            assert response.status_code == 401, (method, rule.rule, headers, response.status_code)
            assert response.headers["WWW-Authenticate"].startswith("Bearer"), rule.rule
            assert response.get_json()["error"]["field"] == "Authorization"
            assert "Set-Cookie" not in response.headers, rule.rule


def test_staff_and_strangers_have_no_api_keys_page(app, make, staff, client, world):
    make.member(make.portal(slug="other", name="Other"), "stranger@example.com", Role.ADMIN)
    stranger = client.login("stranger@example.com")
    for path in (f"/p/{world['slug']}/api-keys", f"/p/{world['slug']}/api-keys/{world['key_id']}/revoke"):
        assert staff.get(path).status_code == 403 and staff.post(path).status_code == 403
        assert stranger.get(path).status_code == 404 and stranger.post(path).status_code == 404
