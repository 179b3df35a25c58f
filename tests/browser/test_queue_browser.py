"""The Mail Queue page and the delivery banner in a real browser, under the app's real CSP: a
filter, the next page, a bulk action with its confirmation, a message's page."""
import re
from datetime import UTC, datetime, timedelta

from playwright.sync_api import Page, expect
from sqlalchemy import update
from sqlmodel import select

from tests.queue_factory import T0, Outbox
from webapp import db
from webapp.models import MailServer, MailState, OutboundMail, Portal

from .pages import htmx_ready, htmx_settled, sign_in


def open_queue(page: Page) -> None:
    page.get_by_role("link", name="Help Desk").click()
    page.get_by_role("link", name="Mail queue").click()
    expect(page.get_by_role("heading", name="Mail queue")).to_be_visible()
    htmx_ready(page)


def listed(page: Page):
    return page.locator("table.queue tbody tr")


def test_filter_page_and_requeue_every_failed_message(page, app, help_desk, make):
    outbox = Outbox(app, help_desk)
    server = make.server(help_desk, description="Office relay")
    sent = outbox.many(40, state=MailState.SENT, server_id=server.id)
    failed = outbox.many(70, state=MailState.FAILED, start=T0 + timedelta(hours=2), server_id=server.id,
                         last_error="550 5.1.1 User unknown")
    sign_in(page)
    open_queue(page)
    expect(listed(page)).to_have_count(50)
    expect(page.locator("nav.counts")).to_contain_text("Failed 70")

    page.get_by_label("State", exact=True).select_option(label="Failed")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"state=failed"))  # htmx pushed the filter into the address
    expect(listed(page)).to_have_count(50)
    expect(listed(page).first).to_contain_text("550 5.1.1 User unknown")
    expect(page.get_by_role("heading", name="Attempts in the last 24 hours")).to_be_visible()  # the page stayed

    htmx_settled(page)
    page.get_by_role("link", name="Older →").click()
    expect(listed(page)).to_have_count(20)
    expect(page).to_have_url(re.compile(r"page="))
    first_of_second = int(listed(page).first.locator("td").first.inner_text().split()[0].lstrip("#"))
    assert first_of_second == sorted(failed, reverse=True)[50]
    page.go_back()  # history restore: the first page again
    expect(listed(page)).to_have_count(50)

    page.get_by_role("link", name="Requeue failed").click()
    expect(page.get_by_role("heading", name="Requeue: 70 failed messages")).to_be_visible()
    expect(page.get_by_text("The filter: state failed.")).to_be_visible()
    page.get_by_role("button", name="Requeue 70 failed messages").click()
    expect(page.get_by_role("status").filter(has_text="Requeued 70 messages")).to_be_visible()
    expect(page).to_have_url(re.compile(r"/p/help/queue/\?state=failed$"))
    expect(page.get_by_text("No message matches.")).to_be_visible()
    with app.app_context():
        states = set(db.session().exec(select(OutboundMail.state).where(OutboundMail.id.in_(failed))))
        assert states == {MailState.QUEUED}
        assert set(db.session().exec(select(OutboundMail.state).where(OutboundMail.id.in_(sent)))) == {MailState.SENT}


def test_a_messages_page_from_the_list(page, app, help_desk):
    mail = Outbox(app, help_desk).mail(state=MailState.FAILED, subject="Your <b>invoice</b>",
                                       to=("ann@example.com",), last_error="552 Message too large")
    sign_in(page)
    open_queue(page)
    page.get_by_role("link", name="Your <b>invoice</b>").click()
    expect(page.get_by_role("heading", name=f"Message #{mail.id}")).to_be_visible()
    expect(page.locator("table.headers")).to_contain_text("Your <b>invoice</b>")
    page.get_by_role("button", name="Requeue").click()
    expect(page.get_by_role("status").filter(has_text="Requeued")).to_be_visible()
    expect(page.get_by_role("heading", name=f"Message #{mail.id}")).to_contain_text("Queued")


def test_the_banner_while_in_failover_and_with_held_mail(page, app, help_desk, make):
    primary = make.server(help_desk, description="Office relay", credential={"kind": "password"})
    make.server(help_desk, description="Backup relay")
    since = datetime(2026, 12, 6, 9, 15, tzinfo=UTC)
    with app.app_context():
        db.session().execute(update(Portal).where(Portal.id == help_desk.id).values(
            failover_since=since, failover_reason="Office relay refused the connection"))
        db.session().execute(update(MailServer).where(MailServer.id == primary.id).values(
            failing_since=since, held_since=since, held_reason="535 5.7.8 Authentication credentials invalid"))
        db.session().commit()
    sign_in(page)
    page.get_by_role("link", name="Help Desk").click()
    banner = page.locator(".delivery-banner")
    expect(banner).to_contain_text("Mail is going out via the alternate server Backup relay since 2026-12-06 09:15 UTC: "
                                   "Office relay refused the connection.")
    expect(banner).to_contain_text("Correct the username or password in the server's settings")
    banner.get_by_role("link", name="View the mail queue").click()
    expect(page.get_by_role("heading", name="Mail queue")).to_be_visible()
    expect(page.locator(".delivery-banner")).to_be_visible()  # on this page too
    page.locator(".delivery-banner").get_by_role("link", name="Office relay").click()
    expect(page.get_by_role("heading", name=re.compile("Edit"))).to_be_visible()
