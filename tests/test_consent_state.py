"""A consent under way is bound to what it was started for, against the real authorization server
on loopback (tests/peers/oauth.py): the server's OAuth settings, the browser, one use of a
consent link, and the issuer (RFC 9207)."""
import re
import threading
from urllib.parse import urlsplit

from tests.conftest import Client

from .test_oauth import (at_the_provider, authorize_url, back_at_mailroom, credential,
                         oauth_form, provider, query, relay, save, to_the_provider)  # noqa: F401


def callback_of(location: str) -> str:
    parts = urlsplit(location)
    return f"{parts.path}?{parts.query}"


def test_a_consent_started_before_the_token_url_changed_does_not_finish_there(app, admin, provider, relay,
                                                                              test_ca_file, listener):
    server = save(app, admin, oauth_form(provider, relay))
    location = at_the_provider(authorize_url(admin, server), test_ca_file)
    elsewhere = listener()
    changed = admin.post(f"/p/help/servers/{server.id}/edit", oauth_form(
        provider, relay, version="1", token_url=f"https://127.0.0.1:{elsewhere.port}/token"))
    assert changed.status_code == 303, changed.text
    answer = back_at_mailroom(admin, location)
    assert "The consent cannot go on" in answer.text
    assert "The server&#39;s OAuth settings changed since this consent started" in answer.text
    assert elsewhere.connections == 0 and provider.requests == []  # the code went nowhere
    assert credential(app, server.id).consented_at is None


def test_a_consent_link_works_once_when_two_browsers_come_back_at_once(app, admin, provider, relay, test_ca_file):
    server = save(app, admin, oauth_form(provider, relay))
    made = admin.post(f"/p/help/servers/{server.id}/oauth/link", htmx=True).text
    token = query(re.search(r'id="consent-link-url" value="([^"]+)"', made).group(1).replace("&amp;", "&"))["link"]
    owners = [Client(app), Client(app)]
    locations = [at_the_provider(to_the_provider(owner, "/oauth/consent", {"link": token}), test_ca_file)
                 for owner in owners]  # both opened the link and signed in before either came back
    answers, start = [None, None], threading.Barrier(2)

    def come_back(index):
        start.wait()
        answers[index] = back_at_mailroom(owners[index], locations[index])

    threads = [threading.Thread(target=come_back, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    texts = sorted(answer.text for answer in answers)
    assert sum("<h1>Authorized</h1>" in text for text in texts) == 1
    assert sum("This consent link was already used" in text for text in texts) == 1
    assert [r["grant_type"] for r in provider.requests] == ["authorization_code"]  # one code exchanged


def test_a_consent_link_whose_exchange_failed_can_be_used_again(app, admin, provider, relay, test_ca_file):
    server = save(app, admin, oauth_form(provider, relay))
    made = admin.post(f"/p/help/servers/{server.id}/oauth/link", htmx=True).text
    token = query(re.search(r'id="consent-link-url" value="([^"]+)"', made).group(1).replace("&amp;", "&"))["link"]
    owner = Client(app)
    provider.code_lifetime = 0  # the code has expired when Mailroom exchanges it
    failed = back_at_mailroom(owner, at_the_provider(to_the_provider(owner, "/oauth/consent", {"link": token}),
                                                     test_ca_file))
    assert "The consent did not complete" in failed.text
    provider.code_lifetime = 60
    done = back_at_mailroom(owner, at_the_provider(to_the_provider(owner, "/oauth/consent", {"link": token}),
                                                   test_ca_file))
    assert "<h1>Authorized</h1>" in done.text


def other_form(authority, relay, **overrides) -> dict:
    return oauth_form(authority, relay, provider="other", issuer=authority.issuer,
                      authorize_url=authority.authorize_url, token_url=authority.token_url,
                      scope="https://outlook.office.com/SMTP.Send openid offline_access",
                      _shown=["smtp", "port", "tls", "oauth", "issuer"], **overrides)


def without_iss(location: str) -> str:
    return re.sub(r"[?&]iss=[^&]*", "", location).replace("/callback&", "/callback?")


def test_an_answer_without_iss_is_refused_when_the_metadata_says_it_sends_it(app, admin, provider, relay,
                                                                             test_ca_file):
    server = save(app, admin, other_form(provider, relay))
    location = at_the_provider(authorize_url(admin, server), test_ca_file)
    assert query(location)["iss"] == provider.issuer
    stripped = without_iss(location)
    assert "iss=" not in stripped and "code=" in stripped and "state=" in stripped
    refused = back_at_mailroom(admin, stripped)
    assert "The answer does not name its issuer, though " in refused.text and "says it always does" in refused.text
    assert provider.requests == []


def test_an_answer_without_iss_is_taken_from_a_server_that_does_not_send_it(app, admin, provider, relay,
                                                                           test_ca_file):
    provider.issue_iss = False  # and its metadata says so
    server = save(app, admin, other_form(provider, relay))
    location = at_the_provider(authorize_url(admin, server), test_ca_file)
    assert "iss" not in query(location)
    assert "<strong>Authorized.</strong>" in back_at_mailroom(admin, location).text


def test_iss_is_compared_as_an_exact_string(app, admin, provider, relay, test_ca_file):
    server = save(app, admin, other_form(provider, relay))
    location = at_the_provider(authorize_url(admin, server), test_ca_file)
    slashed = re.sub(r"(iss=[^&]*)", lambda m: m.group(1) + "%2F", location)  # the issuer with a "/" more
    refused = back_at_mailroom(admin, slashed)
    assert f"The answer names the issuer {provider.issuer}/, not {provider.issuer}" in refused.text
    assert provider.requests == []


def test_a_consent_link_leaves_its_token_out_of_the_path(app, admin, provider, relay):
    server = save(app, admin, oauth_form(provider, relay))
    made = admin.post(f"/p/help/servers/{server.id}/oauth/link", htmx=True).text
    link = re.search(r'id="consent-link-url" value="([^"]+)"', made).group(1).replace("&amp;", "&")
    assert urlsplit(link).path == "/oauth/consent" and query(link)["link"]
    page = Client(app).get(f"/oauth/consent?link={query(link)['link']}").text
    assert 'action="/oauth/consent"' in page  # the button posts the token in the form, not in the path
