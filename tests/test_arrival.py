"""How a sample mail arrived: the receiving side's Authentication-Results read back from the mailbox
of the server's mail receiver login (Dovecot, over IMAP and POP3), after a real delivery into it."""
import re

import pytest

from webapp.mail.arrival import valid_message_id

from .test_server_proxy_receiver import only_server, proxied_form


def saved_with_receiver(admin, app, mx, dovecot, protocol="imap"):
    port = dovecot.ports["imaps" if protocol == "imap" else "pop3s"]
    form = proxied_form(mx, dovecot=dovecot, receiver_protocol=protocol, receiver_port=str(port))
    assert admin.post("/p/help/servers/new", form).status_code == 303
    return only_server(app)


def send_sample(admin, server, recipient) -> str:
    page = admin.post(f"/p/help/servers/{server.id}/sample", {"recipient": recipient}, htmx=True).text
    assert "Email server accepted mail for delivery" in page, page
    return re.search(r'name="message_id" value="([^"]+)"', page).group(1).replace("&lt;", "<").replace("&gt;", ">")


def read_arrival(admin, server, message_id, htmx=True):
    return admin.post(f"/p/help/servers/{server.id}/sample/arrival", {"message_id": message_id}, htmx=htmx)


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_the_receiving_sides_verdicts_are_read_back(app, admin, dovecot, receiving_mx, protocol):
    mx = receiving_mx("spf=pass smtp.mailfrom=example.com; dkim=none (no signature); "
                      "dmarc=fail header.from=example.com")
    server = saved_with_receiver(admin, app, mx, dovecot, protocol)
    message_id = send_sample(admin, server, dovecot.username)
    response = read_arrival(admin, server, message_id)
    assert response.status_code == 200
    page = response.text
    assert "could not be read" not in page, page
    assert f"How it arrived in the inbox of {dovecot.username}" in page and "checked by mx.receiving.test" in page
    rows = re.findall(r"<tr><td>(\w+)</td><td class=\"(\w+)\">([^<]+)", page)
    assert rows == [("SPF", "ok", "passed"), ("DKIM", "warning", "none found"), ("DMARC", "warning", "failed")]
    assert "<code>header.from=example.com</code>" in page
    assert "Deliverability section says which DNS record to publish" in page
    assert dovecot.password not in page


def test_a_forged_verdict_in_the_mail_is_not_what_is_shown(app, admin, dovecot, receiving_mx):
    """The receiving side drops an Authentication-Results claiming its name (RFC 8601 §5); one with
    another name stays and is shown under that name."""
    mx = receiving_mx("spf=fail smtp.mailfrom=example.com")
    server = saved_with_receiver(admin, app, mx, dovecot)
    message_id = send_sample(admin, server, dovecot.username)
    page = read_arrival(admin, server, message_id).text
    assert re.findall(r"<tr><td>(\w+)</td><td class=\"\w+\">([^<]+)", page) == [("SPF", "failed")]


def test_a_server_that_checks_nothing_and_a_mail_not_there_yet(app, admin, dovecot, receiving_mx):
    server = saved_with_receiver(admin, app, receiving_mx(None), dovecot)
    message_id = send_sample(admin, server, dovecot.username)
    assert "wrote no\n    <code>Authentication-Results</code>" in read_arrival(admin, server, message_id).text
    missing = read_arrival(admin, server, "<never-sent.123@example.com>").text
    assert "Not in the inbox of receiver@example.test" in missing and "Read it again" in missing


def test_without_a_receiver_login_there_is_no_button_and_the_route_says_why(app, admin, smtp_peer):
    smtp = smtp_peer("plain")
    assert admin.post("/p/help/servers/new", proxied_form(smtp)).status_code == 303
    server = only_server(app)
    page = admin.post(f"/p/help/servers/{server.id}/sample", {"recipient": "x@example.com"}, htmx=True).text
    assert "Email server accepted mail" in page and "Read how it arrived" not in page
    said = read_arrival(admin, server, "<a.b@example.com>").text
    assert "This server has no mail receiver login" in said


@pytest.mark.parametrize("message_id", ["", "no-brackets@example.com", '<a"b@example.com>', "<a\\b@x>",
                                        "<a b@example.com>", "<a@b>\r\nA001 LOGOUT", "<" + "a" * 300 + ">"])
def test_only_a_message_id_goes_into_the_search(app, admin, dovecot, receiving_mx, message_id):
    server = saved_with_receiver(admin, app, receiving_mx(), dovecot)
    logins = dovecot.logins()
    response = read_arrival(admin, server, message_id)
    assert response.status_code == 422 and "not the Message-ID of a sample mail" in response.text
    assert dovecot.logins() == logins and not valid_message_id(message_id)


def test_a_wrong_receiver_password_is_said_in_words(app, admin, dovecot, receiving_mx):
    mx = receiving_mx()
    server = saved_with_receiver(admin, app, mx, dovecot)
    edited = admin.post(f"/p/help/servers/{server.id}/edit",
                        proxied_form(mx, dovecot=dovecot, receiver_protocol="imap",
                                     receiver_port=str(dovecot.ports["imaps"]), receiver_password="wrong-one",
                                     version=str(server.version)))
    assert edited.status_code == 303, edited.text
    page = read_arrival(admin, only_server(app), "<a.b@example.com>").text
    assert "The mailbox could not be read: the mail receiver" in page and "rejected the login or password" in page
    assert "wrong-one" not in page


def test_without_javascript_the_whole_page(app, admin, dovecot, receiving_mx):
    server = saved_with_receiver(admin, app, receiving_mx(), dovecot)
    message_id = send_sample(admin, server, dovecot.username)
    response = read_arrival(admin, server, message_id, htmx=False)
    assert response.status_code == 200 and "<html" in response.text and "How it arrived" in response.text


def test_staff_may_read_how_a_sample_arrived(app, admin, staff, dovecot, receiving_mx):
    server = saved_with_receiver(admin, app, receiving_mx(), dovecot)
    message_id = send_sample(staff, server, dovecot.username)
    assert "How it arrived" in read_arrival(staff, server, message_id).text
