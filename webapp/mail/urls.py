"""A service's address as Mailroom accepts it (https://, or http:// on this machine only), without the
HTTP client: the forms and the service-account key check read it, http.py connects by it."""
import ipaddress
from urllib.parse import urlsplit

URL_FORBIDDEN = frozenset("<>\"'`\\{}|^")


def url_problem(url: str, schemes: tuple[str, ...] = ("https",)) -> str:
    """Why `url` cannot be a service's address, in words; "" when it can. A user name or password
    in it would be stored and shown in the clear (and https://good.example@evil.example goes to
    evil.example); a port or host that does not parse fails every request."""
    if not url:
        return ""
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url) or URL_FORBIDDEN & set(url):
        return "spaces, control characters, quotes and <>\\{}|^` are not allowed in an address"
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError when it is not a number from 0 to 65535
    except ValueError:
        return "the address cannot be read (check the host, the brackets of an IPv6 address and the port)"
    if "https" in schemes and "http" not in schemes and url.lower().startswith("http://") \
            and on_this_machine(parts.hostname or ""):
        schemes = (*schemes, "http")  # a test server on this machine may lack TLS; nothing leaves it
    if parts.scheme.lower() not in schemes or not url.lower().startswith(tuple(f"{s}://" for s in schemes)):
        return f"the address must start with {' or '.join(s + '://' for s in schemes)}" + (
            " (http:// only for this machine: localhost, 127.0.0.1, [::1])" if schemes == ("https",) else "")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        return "an address may not carry a user name or password (before an @)"
    if not parts.hostname:
        return "the address has no host name"
    if port == 0:
        return "the port must be a number from 1 to 65535"
    if parts.fragment or "#" in url:
        return "an address may not carry a #fragment"
    return ""


def on_this_machine(host: str) -> bool:
    """localhost or a loopback address, written as such (not a name that may resolve elsewhere)."""
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
