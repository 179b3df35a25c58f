"""The Mailroom side of the bench: a throwaway instance set up through the CLI, a signed-in
admin (who chose their own password, as every new user must), servers created through the
real form, and the form fields as the browser posts them."""
import os
import re
import subprocess
import sys
from html import unescape
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
SLUG = "bench"
EMAIL = "bench@example.com"
FIRST_PASSWORD = "bench-password-123"  # set by the CLI: must be changed at the first sign-in
PASSWORD = "bench-chosen-password-456"
USER_AGENT = "mailroom-bench/1"  # wrk sends the same one: the session was signed in with it

TOKEN = re.compile(r'name="csrf_token" (?:type="hidden" )?value="([^"]+)"|value="([^"]+)" name="csrf_token"')
INPUT = re.compile(r"<input\b[^>]*>", re.S)
TEXTAREA = re.compile(r'<textarea\b[^>]*\bname="([^"]+)"[^>]*>\n?(.*?)</textarea>', re.S)
SELECT = re.compile(r'<select\b[^>]*\bname="([^"]+)"[^>]*>(.*?)</select>', re.S)
ATTR = re.compile(r'([\w-]+)(?:="([^"]*)")?')

# A relay nobody connects to: the page and the swap only render it.
RELAY_FIELDS = {
    "description": "Bench relay", "protocol": "smtp", "host": "smtp.example.com", "security": "starttls",
    "port": "587", "verify_cert": "y", "auth_type": "none", "from_address": "helpdesk@example.com",
    "sender_name": "Bench Help Desk", "timeout": "10", "max_connections": "5", "enabled": "y",
}


def env_for(instance: Path) -> dict:
    """The caller's environment without its MAILROOM_* settings, on a throwaway instance and SQLite."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILROOM_")}
    env["MAILROOM_INSTANCE_PATH"] = str(instance)
    env["MAILROOM_DATABASE_URL"] = f"sqlite:///{instance / 'mailroom.sqlite3'}"
    return env


def flask_cli(env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "flask", "--app", "webapp", *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    if check and result.returncode:
        raise RuntimeError(f"flask {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result


def set_up_instance(env: dict) -> None:
    flask_cli(env, "init", "--email", "first-admin@example.com")
    flask_cli(env, "create-user", EMAIL, "--password", FIRST_PASSWORD, "--superadmin")
    flask_cli(env, "create-portal", SLUG, "Bench Portal")


def allow_loopback(env: dict) -> str:
    """Portal connections to 127.0.0.0/8, where the bench's SMTP peers listen. The egress policy
    refuses loopback by default once it exists; a super-admin allows it with the CLI."""
    if flask_cli(env, "egress", "--help", check=False).returncode:
        return "no `flask egress` command in this version: no egress policy to open"
    result = flask_cli(env, "egress", "allow", "127.0.0.0/8")
    return f"flask egress allow 127.0.0.0/8: {(result.stdout + result.stderr).strip()[:200]}"


def token_in(page: str) -> str:
    match = TOKEN.search(page)
    if not match:
        raise RuntimeError("no csrf_token in the page")
    return unescape(match.group(1) or match.group(2))


def sign_in(base: str) -> requests.Session:
    """Signed in, and past the first-sign-in password change (every page redirects there until then)."""
    http = requests.Session()
    http.headers["User-Agent"] = USER_AGENT
    token = token_in(http.get(f"{base}/login", timeout=10).text)
    response = http.post(f"{base}/login", data={"email": EMAIL, "password": FIRST_PASSWORD, "csrf_token": token},
                         allow_redirects=False, timeout=10)
    if response.status_code != 303:
        raise RuntimeError(f"sign-in answered {response.status_code}")
    page = http.get(f"{base}/account/password", timeout=10)
    response = http.post(f"{base}/account/password", allow_redirects=False, timeout=10,
                         data={"current": FIRST_PASSWORD, "new": PASSWORD, "confirm": PASSWORD,
                               "csrf_token": token_in(page.text)})
    if response.status_code != 303:
        raise RuntimeError(f"choosing the password answered {response.status_code}:\n{response.text[:1500]}")
    landing = http.get(f"{base}/p/{SLUG}/servers/", allow_redirects=False, timeout=10)
    if landing.status_code != 200:
        raise RuntimeError(f"after the password change the server list answered {landing.status_code} "
                           f"{landing.headers.get('Location', '')}")
    return http


def cookie_header(http: requests.Session) -> str:
    return "; ".join(f"{c.name}={c.value}" for c in http.cookies)


def create_server(http: requests.Session, base: str, fields: dict) -> int:
    """A server through the real form (POST …/servers/new), as an admin types it."""
    token = token_in(http.get(f"{base}/p/{SLUG}/servers/new", timeout=10).text)
    response = http.post(f"{base}/p/{SLUG}/servers/new", data={**fields, "csrf_token": token},
                         allow_redirects=False, timeout=10)
    if response.status_code != 303:
        raise RuntimeError(f"creating the server answered {response.status_code}:\n{response.text[:2000]}")
    listing = http.get(f"{base}/p/{SLUG}/servers/", timeout=10).text
    ids = [int(i) for i in re.findall(rf"/p/{SLUG}/servers/(\d+)/edit", listing)]
    if not ids:
        raise RuntimeError("the new server is not in the list")
    return max(ids)


def form_fields(page: str) -> list[tuple[str, str]]:
    """What the browser would post from the server form as it is on the page (hx-include="closest
    form"): every named input (checkboxes only when checked), textarea and select, in page order."""
    start = page.index('<form id="server-form"')
    form = page[start:page.index("</form>", start)]
    found: list[tuple[int, str, str]] = []
    for tag in INPUT.finditer(form):
        attrs = {k: unescape(v or "") for k, v in ATTR.findall(tag.group(0)[6:])}
        kind = attrs.get("type", "text")
        if "name" not in attrs or kind in ("submit", "button") or (kind == "checkbox" and "checked" not in attrs):
            continue
        found.append((tag.start(), attrs["name"], attrs.get("value", "on" if kind == "checkbox" else "")))
    for tag in TEXTAREA.finditer(form):
        found.append((tag.start(), tag.group(1), unescape(tag.group(2))))
    for tag in SELECT.finditer(form):
        chosen = re.search(r'<option value="([^"]*)" selected', tag.group(2)) or \
            re.search(r'<option value="([^"]*)"', tag.group(2))
        found.append((tag.start(), tag.group(1), unescape(chosen.group(1)) if chosen else ""))
    return [(name, value) for _, name, value in sorted(found)]


def with_values(fields: list[tuple[str, str]], **changes: str) -> list[tuple[str, str]]:
    """The fields with some values changed (the first field of each name)."""
    out, done = [], set()
    for name, value in fields:
        if name in changes and name not in done:
            value = changes[name]
            done.add(name)
        out.append((name, value))
    return out + [(k, v) for k, v in changes.items() if k not in done]


def report_summary(html: str) -> str:
    header = re.search(r"<header>(.*?)</header>", html, re.S)
    text = re.sub(r"<[^>]+>", " ", header.group(1) if header else html)
    return re.sub(r"\s+", " ", unescape(text)).strip()[:300]
