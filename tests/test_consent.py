"""OAuth consent as the browser sees it, against the real authorization server on loopback
(tests/peers/oauth.py): how the browser leaves for the provider (never a form's redirect),
and how it comes back."""
import re
from urllib.parse import urlsplit

from sqlmodel import select

from webapp import db
from webapp.models import OAuthState

from .test_oauth import (MAILBOX, authorize_url, deny_the_provider, oauth_form, provider, query, relay,  # noqa: F401
                         save)


def test_without_javascript_authorize_answers_a_page_that_links_to_the_provider(app, admin, provider, relay):
    server = save(app, admin, oauth_form(provider, relay))
    page = admin.post(f"/p/help/servers/{server.id}/oauth/authorize")
    assert page.status_code == 200 and "Location" not in page.headers  # not a form's redirect
    link = re.search(r'<a href="([^"]+)" role="button" id="continue-to-provider"', page.text).group(1)
    link = link.replace("&amp;", "&")
    assert link.startswith(f"{provider.issuer}/contoso.example/oauth2/v2.0/authorize?")
    assert query(link)["client_id"] == "mailroom-app" and query(link)["login_hint"] == MAILBOX
    assert f"Continue to {urlsplit(provider.issuer).netloc}" in page.text
    assert "form-action 'self';" in page.headers["Content-Security-Policy"]
    with app.app_context():
        assert len(db.session().exec(select(OAuthState)).all()) == 1  # the consent has started


def test_with_htmx_authorize_sends_the_browser_on_by_a_plain_navigation(app, admin, provider, relay):
    server = save(app, admin, oauth_form(provider, relay))
    url = authorize_url(admin, server)
    assert url.startswith(f"{provider.issuer}/contoso.example/oauth2/v2.0/authorize?")
    assert query(url)["code_challenge_method"] == "S256"


def test_no_page_lets_a_form_go_to_another_origin(app, admin, provider, relay):
    """Every form posts to Mailroom: the provider's origin is no longer a form-action target."""
    server = save(app, admin, oauth_form(provider, relay))
    for path in (f"/p/help/servers/{server.id}/edit", "/p/help/servers/"):
        policy = admin.get(path).headers["Content-Security-Policy"]
        assert "form-action 'self';" in policy and "127.0.0.1" not in policy, policy


def test_a_refusal_to_start_is_shown_in_the_page_to_htmx(app, admin, make, provider, relay):
    server = save(app, admin, oauth_form(provider, relay))
    make.user("root@example.com", superadmin=True)
    deny_the_provider(app, provider)
    refused = admin.post(f"/p/help/servers/{server.id}/oauth/authorize", htmx=True)
    assert refused.status_code == 403 and "HX-Redirect" not in refused.headers
    assert refused.headers["HX-Retarget"] == "#messages"  # static/app.js swaps it there despite the 403
    assert refused.text.startswith('<p class="flash error" role="alert">The consent cannot go on: the token URL')
    assert "What to try:</strong> if it is right, a super-admin can allow it" in refused.text
