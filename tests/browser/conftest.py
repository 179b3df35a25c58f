"""Browser tests: the app served over real HTTP on 127.0.0.1, driven by headless Chromium.

Fixtures:
    live_url     (tests/conftest.py) the base URL of the `app` fixture served by werkzeug in a thread
    help_desk    the portal "Help Desk" with its admin; oauth_portal: the same at live_url's address
    chromium     one headless Chromium for the whole session (Debian's /usr/bin/chromium)
    page         a fresh browser context and page per test; the test fails if the page logs a
                 console error, throws an uncaught exception or reports a CSP violation
    page_problems  what `page` collected so far (a test may assert on it before it ends)

All tests here carry the `browser` marker: deselect them with -m "not browser".
"""
import os
import re
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("MAILROOM_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
HERE = Path(__file__).resolve().parent

# Reports every Content-Security-Policy violation, whether or not Chromium also logs it.
CSP_LISTENER = """
document.addEventListener("securitypolicyviolation", (event) => {
  window.__mailroomCspViolation(
    `${event.violatedDirective} blocked ${event.blockedURI || "inline"} at ${event.sourceFile || event.documentURI}:${event.lineNumber}`);
}, true);
"""


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: drives the app in a real headless Chromium (deselect with -m 'not browser')")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if Path(str(item.fspath)).resolve().is_relative_to(HERE):
            item.add_marker(pytest.mark.browser)


@pytest.fixture
def help_desk(make):
    """The portal "Help Desk" (/p/help) with admin@example.com as its admin."""
    from webapp.models import Role

    portal = make.portal(slug="help", name="Help Desk")
    make.member(portal, "admin@example.com", Role.ADMIN)
    return portal


@pytest.fixture
def oauth_portal(make, live_url):
    """The same portal reached at the live server's address, so an OAuth redirect URI comes back here."""
    from webapp.models import Role

    portal = make.portal(slug="help", name="Help Desk", base_url=live_url)
    make.member(portal, "admin@example.com", Role.ADMIN)
    return portal


@pytest.fixture(scope="session")
def chromium():
    if not os.access(CHROMIUM, os.X_OK):  # a failure, not a skip: `make test` installs it
        pytest.fail(f"no Chromium at {CHROMIUM}: run `make test` (it installs Debian's chromium), or set "
                    "MAILROOM_TEST_CHROMIUM, or deselect the browser tests with -m 'not browser'")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class PageProblems(list):
    """Console errors, uncaught exceptions and CSP violations seen in a test's pages."""

    def describe(self) -> str:
        return "\n".join(f"  - {problem}" for problem in self)


# The app answers a form with errors with 422 and a stale edit with 409, on purpose (htmx swaps
# them, see static/app.js); Chromium still logs "Failed to load resource" for them.
EXPECTED_STATUS = re.compile(r"^Failed to load resource: the server responded with a status of (409|422)\b")


def _is_expected(message, base_url: str) -> bool:
    url = message.location.get("url", "")
    if url == f"{base_url}/favicon.ico":  # Chromium asks by itself; the app has none
        return True
    return url.startswith(f"{base_url}/") and bool(EXPECTED_STATUS.match(message.text))


@pytest.fixture
def page_problems() -> PageProblems:
    return PageProblems()


@pytest.fixture
def page(chromium, live_url, page_problems):
    from playwright.sync_api import expect

    expect.set_options(timeout=10_000)
    # ignore_https_errors: the test peers' pages (the OAuth provider) have certificates from the
    # test CA, which this browser does not know; Mailroom itself is served over plain HTTP here.
    context = chromium.new_context(base_url=live_url, locale="en-US", timezone_id="UTC", ignore_https_errors=True)
    context.set_default_timeout(10_000)
    context.expose_binding("__mailroomCspViolation",
                           lambda source, text: page_problems.append(f"CSP violation: {text} ({source['frame'].url})"))
    context.add_init_script(CSP_LISTENER)
    page = context.new_page()
    page.on("console", lambda message: page_problems.append(
        f"console {message.type}: {message.text} ({message.location.get('url', '')})")
        if message.type == "error" and not _is_expected(message, live_url) else None)
    page.on("pageerror", lambda error: page_problems.append(f"uncaught exception: {error}"))
    yield page
    context.close()
    assert not page_problems, "the page reported problems:\n" + page_problems.describe()
