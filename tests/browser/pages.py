"""Steps a person takes in the pages, shared by the browser tests."""
from playwright.sync_api import Page, expect
from sqlmodel import select

from tests.conftest import PASSWORD
from webapp import db
from webapp.credentials import unseal
from webapp.models import MailServer

ADMIN = "admin@example.com"
SWAP_TLS = "changing Security should re-render #section-tls through htmx (hx-post on the select)"
SWAP_AUTH = ("choosing an authentication should re-render #section-credentials through htmx "
             "(hx-post on the select)")


def htmx_ready(page: Page) -> None:
    """Wait for the deferred scripts: a change made before htmx has processed the page does nothing."""
    page.wait_for_load_state("load")
    page.wait_for_function("() => window.htmx !== undefined")


def htmx_settled(page: Page) -> None:
    """Wait until htmx has processed what it swapped in: a select changed in the ~20 ms before
    (while the new nodes still carry htmx-added) posts nothing. A person is never that quick."""
    page.wait_for_function(
        "() => !document.querySelector('.htmx-added, .htmx-settling, .htmx-swapping, .htmx-request')")


def sign_in(page: Page, email: str = ADMIN) -> None:
    page.goto("/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Portals")).to_be_visible()


def open_mail_servers(page: Page, portal_name: str = "Help Desk") -> None:
    page.get_by_role("link", name=portal_name).click()
    expect(page.get_by_role("heading", name="Mail servers")).to_be_visible()


def add_server(page: Page) -> None:
    page.get_by_role("button", name="Add server").click()  # a link styled role="button"
    expect(page.get_by_role("heading", name="Add mail server")).to_be_visible()
    htmx_ready(page)


def field(page: Page, label: str):
    return page.get_by_label(label, exact=True)


def choose_auth(page: Page, label: str) -> None:
    htmx_settled(page)
    page.get_by_label("Authentication", exact=True).select_option(label=label)


def stored_servers(app) -> list[MailServer]:
    with app.app_context():
        return list(db.session().exec(select(MailServer)).unique())


def stored_password(app, server: MailServer) -> str:
    with app.app_context():
        return unseal(server.credential.secret)["password"]
