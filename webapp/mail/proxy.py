"""Proxies and firewalls: a server's connections through an HTTP CONNECT tunnel, SOCKS4 or SOCKS5.

A server's proxy rides on its network (`egress.Network.proxy`), so every connection made for the
server goes through it: SMTP (smtp/steps.py), the mail receiver's login (receiver.py) and every HTTP
call (http.py's adapter: token endpoints, EWS, Graph, Gmail). `connect(network, host, port, deadline)`
opens a TCP connection, directly or through the proxy:

- the proxy's own address is resolved and checked by the egress policy: it is where Mailroom connects;
- the target is resolved here too and every address checked, and the proxy is handed the checked
  address, never the name (SOCKS4 and HTTP CONNECT always; SOCKS5 unless "Resolve names at the proxy"
  is on). With that option the proxy resolves the name: the egress policy then checks the name and port
  (its rules on host names, the metadata names) but cannot check the address the proxy reaches;
- python-socks speaks the proxy's protocol over the socket Mailroom connected itself (its `forward`
  hop; imported by the handshake, so a process whose servers use no proxy never loads it); a watchdog
  (deadline.Watchdog) shuts that socket down when the deadline is over, so a proxy that trickles its
  answer cannot outlast it, and an answer it cut short is "no answer from the proxy", never a tunnel.
  What is read is bounded: SOCKS replies have fixed sizes, and python-socks reads an HTTP proxy's answer
  to CONNECT with one receive of at most 64 KB (which _HeadersOnly makes last to the header's end);
- a refusal comes back in words (ProxyFailed, a StepFailed): 407, 403, the SOCKS reply codes. Nothing
  the proxy wrote is shown (its reason phrase could repeat a password): only its codes, in our words.
"""
import ipaddress
import socket
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from http import HTTPStatus
from urllib.parse import urlsplit

from .deadline import Deadline, DeadlineExceeded, Watchdog, connect_within
from .egress import Network
from .report import Step, StepFailed, step_result


class ProxyKind(StrEnum):
    NONE = "none"
    HTTP = "http"
    SOCKS4 = "socks4"
    SOCKS5 = "socks5"


KIND_LABELS = {
    ProxyKind.NONE: "None (connect directly)",
    ProxyKind.HTTP: "HTTP CONNECT tunnel",
    ProxyKind.SOCKS4: "SOCKS4",
    ProxyKind.SOCKS5: "SOCKS5",
}
_A_PROXY = {ProxyKind.HTTP: "an HTTP proxy", ProxyKind.SOCKS4: "a SOCKS4 proxy", ProxyKind.SOCKS5: "a SOCKS5 proxy"}
DEFAULT_PORTS = {ProxyKind.HTTP: 8080, ProxyKind.SOCKS4: 1080, ProxyKind.SOCKS5: 1080}


def default_port(kind: str) -> int:
    try:
        return DEFAULT_PORTS.get(ProxyKind(kind), 1080)
    except ValueError:
        return 1080


@dataclass(frozen=True)
class ProxySettings:
    """What an admin sets under "Proxy / firewall" (the password is sealed apart)."""
    kind: ProxyKind = ProxyKind.NONE
    host: str = ""
    port: int | None = None  # None: the kind's default
    username: str = ""  # SOCKS4: the user ID
    remote_dns: bool = False  # SOCKS5: the proxy resolves the target's name

    def __post_init__(self):
        kind = ProxyKind(self.kind or ProxyKind.NONE)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "port", int(self.port) if self.port else default_port(kind))
        object.__setattr__(self, "remote_dns", bool(self.remote_dns) and kind == ProxyKind.SOCKS5)

    @classmethod
    def from_dict(cls, values: dict | None) -> "ProxySettings":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (values or {}).items() if k in known})

    def to_dict(self) -> dict:
        if not self.enabled:
            return {}
        return {k: (str(v) if isinstance(v, StrEnum) else v) for k, v in asdict(self).items()}

    def destination(self) -> dict:
        """Where the proxy's password may go: a stored one serves only while this stays the same."""
        return {"kind": str(self.kind), "host": self.host.strip().lower().rstrip("."), "port": self.port}

    @property
    def enabled(self) -> bool:
        return self.kind != ProxyKind.NONE

    @property
    def takes_password(self) -> bool:
        """SOCKS4 knows a user ID only; SOCKS5 (RFC 1929) and HTTP (Basic) a username and password."""
        return self.kind in (ProxyKind.HTTP, ProxyKind.SOCKS5)

    @property
    def address(self) -> str:
        return f"{_bracketed(self.host.strip())}:{self.port}"

    @property
    def label(self) -> str:
        return f"{KIND_LABELS[self.kind] if self.kind != ProxyKind.HTTP else 'HTTP'} proxy {self.address}"


@dataclass(frozen=True)
class Proxy:
    """A proxy as a connection uses it: its settings and its password."""
    settings: ProxySettings
    password: str = field(default="", repr=False)


class ProxyFailed(StepFailed):
    """The proxy could not be reached or refused the tunnel; in words, with a hint."""


@dataclass
class Connection:
    """A TCP connection to the target, made directly or through the proxy."""
    sock: socket.socket
    peer: tuple | None  # the target's (family, sockaddr) when known here (not when the proxy resolved it)
    target: str  # host:port as asked for, or the address connected to
    proxy: Proxy | None = None
    proxy_address: str = ""  # the proxy's address Mailroom connected to

    def step(self) -> Step:
        """The "Proxy" step of a report: connected to the proxy, the tunnel established."""
        settings = self.proxy.settings
        signed_in = (f"as {settings.username}" if settings.username else "without a username")
        names = ("resolved by the proxy: the egress policy checked the name and port only" if settings.remote_dns
                 else "resolved by Mailroom: the egress policy checked every address")
        return step_result(
            f"connected to the {settings.label}, tunnel to {self.target} established",
            [("Proxy", f"{KIND_LABELS[settings.kind]} at {self.proxy_address}"), ("Signed in", signed_in),
             ("Tunnel to", self.target), ("Names", names)])


def tunnel_step(network: Network, url: str, deadline: Deadline) -> Step:
    """The "Proxy" step of an HTTP protocol's Validate: a tunnel to the service's host and port,
    opened through the proxy (policy, sign-in, the proxy's rules) and closed again."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or (80 if parts.scheme == "http" else 443)
    try:
        connection = connect(network, host, port, deadline)
    except socket.gaierror:
        raise StepFailed(f"the host name {host} could not be resolved", "check the service's address") from None
    except OSError as error:
        raise StepFailed(f"could not reach {host} port {port} through the proxy ({error.strerror or error})",
                         "check the service's address and the proxy") from None
    connection.sock.close()
    return connection.step()


def targets(network: Network, host: str, port: int, deadline: Deadline) -> list[tuple] | None:
    """The target's addresses to connect to (or to hand the proxy), each checked by the egress
    policy; None when the proxy resolves the name (SOCKS5 with remote DNS), after the policy
    checked the name and port."""
    proxy = network.proxy
    if proxy is not None and proxy.settings.remote_dns:
        network.policy.check_name(host.strip().strip("[]"), port)
        return None
    return network.resolve(host, port, deadline)


def connect(network: Network, host: str, port: int, deadline: Deadline,
            addresses: list[tuple] | None = None) -> Connection:
    """A connection to host:port for a portal: to a checked address, directly or through the
    network's proxy. `addresses`: what targets() gave, when the caller reported it already."""
    if addresses is None:
        addresses = targets(network, host, port, deadline)
    if network.proxy is None:
        return _direct(host, port, addresses, deadline)
    return tunnel(network, host, port, addresses, deadline)


def _direct(host: str, port: int, addresses: list[tuple], deadline: Deadline) -> Connection:
    errors: list[OSError] = []
    for family, sockaddr in addresses:  # like socket.create_connection: the first that answers
        try:
            return Connection(connect_within(deadline, family, sockaddr), (family, sockaddr), _endpoint(sockaddr))
        except OSError as error:
            errors.append(error)
    if not errors:
        raise OSError(f"{host} has no address to connect to")
    raise errors[0]


def tunnel(network: Network, host: str, port: int, addresses: list[tuple] | None, deadline: Deadline) -> Connection:
    """Through the proxy to the target: to each of its checked addresses in turn (or its name, when
    the proxy resolves it) until one is reached; a refusal that no other address changes (the
    sign-in, the protocol) ends it at once."""
    proxy = network.proxy
    settings = proxy.settings
    if not settings.host.strip():
        raise ProxyFailed("no proxy host is configured", "enter the proxy's host name or address")
    try:
        proxy_addresses = network.resolve(settings.host, settings.port, deadline)
    except socket.gaierror:
        raise ProxyFailed(f"the proxy's host name {settings.host.strip()} could not be resolved",
                          "check the spelling of the proxy host, and this machine's DNS settings") from None
    wanted = [(family, sockaddr) for family, sockaddr in addresses] if addresses is not None else [(None, None)]
    if settings.kind == ProxyKind.SOCKS4:
        wanted = [(f, s) for f, s in wanted if f != socket.AF_INET6] or _no_ipv4(host)
    if not wanted:
        raise OSError(f"{host} has no address to connect to")
    last: Exception | None = None
    for family, sockaddr in wanted:
        target_host = sockaddr[0] if sockaddr else host.strip().strip("[]")
        target = _endpoint((target_host, port))
        try:
            sock, used = _through(proxy, proxy_addresses, target_host, port, deadline)
        except _TargetUnreached as failure:  # another address of the target may do
            last = failure.words
            continue
        return Connection(sock, (family, sockaddr) if sockaddr else None, target, proxy, used)
    raise last


class _TargetUnreached(Exception):
    def __init__(self, words: ProxyFailed):
        super().__init__(words.summary)
        self.words = words


def _through(proxy: Proxy, proxy_addresses: list[tuple], target_host: str, port: int,
             deadline: Deadline) -> tuple[socket.socket, str]:
    settings = proxy.settings
    errors: list[OSError] = []
    for family, sockaddr in proxy_addresses:
        try:
            sock = connect_within(deadline, family, sockaddr)
        except OSError as error:
            errors.append(error)
            continue
        used = _endpoint(sockaddr)
        refusal = _handshake(proxy, sock, sockaddr, target_host, port, deadline)
        if refusal is not None:  # raised here, not in an except block: nothing of the proxy's own text rides along
            raise refusal
        return sock, used
    if errors and isinstance(errors[0], ConnectionRefusedError):
        raise ProxyFailed(f"nothing listens on the proxy {settings.address} (connection refused)",
                          "check the proxy's host and port, and that the proxy is running")
    raise ProxyFailed(f"could not connect to the proxy {settings.address}"
                      + (f" ({errors[0].strerror or errors[0]})" if errors else ""),
                      "check the proxy's host and port, and this machine's network")


def _handshake(proxy: Proxy, sock: socket.socket, sockaddr: tuple, target_host: str, port: int,
               deadline: Deadline) -> Exception | None:
    """python-socks speaks the proxy's protocol on our socket; the refusal in words, or None."""
    from python_socks import ProxyTimeoutError, ProxyType
    from python_socks.sync import Proxy as SocksProxy

    settings, used = proxy.settings, _endpoint(sockaddr)
    watchdog = Watchdog(sock, deadline)
    first_hop = _Connected(_HeadersOnly(sock) if settings.kind == ProxyKind.HTTP else sock)
    try:
        socks = SocksProxy(ProxyType[settings.kind.upper()], sockaddr[0], sockaddr[1],
                           username=settings.username or None,
                           password=proxy.password if settings.takes_password and settings.username else None,
                           rdns=settings.remote_dns, forward=first_hop)
        sock.settimeout(deadline.left())
        socks.connect(target_host, port, timeout=deadline.left())
    except Exception as error:  # noqa: BLE001 - python-socks' errors, in words below
        failure = error
    else:
        failure = None
    watchdog.cancel()
    if failure is None and not watchdog.fired:  # an answer the watchdog cut short can look whole ("HTTP/1.1 200")
        return None
    sock.close()
    if watchdog.fired or isinstance(failure, (ProxyTimeoutError, DeadlineExceeded)):
        return DeadlineExceeded(f"no answer from the proxy {used}")
    return _refusal(failure, settings, used, _endpoint((target_host, port)))


class _HeadersOnly:
    """The socket as python-socks' HTTP connector sees it: it reads the proxy's answer to CONNECT with
    one receive of up to 64 KB, which would swallow what the server behind says first (an SMTP, POP3
    or IMAP greeting, sent right after the proxy's 200), and would take the part of the answer that came
    in the first TCP segment for all of it. Here a receive ends with the answer's header (or `size`
    bytes, or the end of the connection: the watchdog's shutdown, when the proxy trickles)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock

    def recv(self, size: int) -> bytes:
        answer = b""
        while len(answer) < size:
            ahead = self.sock.recv(size - len(answer), socket.MSG_PEEK)
            if not ahead:
                break
            end = (answer + ahead).find(b"\r\n\r\n", max(0, len(answer) - 3))
            if end >= 0:
                answer += self.sock.recv(end + 4 - len(answer))
                break
            answer += self.sock.recv(len(ahead))
        return answer

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()


class _Connected:
    """python-socks' first hop (its `forward`): the socket Mailroom connected to a checked address."""

    def __init__(self, sock: socket.socket):
        self.sock = sock

    def connect(self, dest_host, dest_port, timeout=None, **kwargs) -> socket.socket:
        return self.sock


def _refusal(error: Exception, settings: ProxySettings, used: str, target: str) -> Exception:
    """python-socks' error in words: a ProxyFailed, or _TargetUnreached when another address may do."""
    from python_socks import ProxyConnectionError, ProxyError

    code = getattr(error, "error_code", None)
    text = str(error)
    kind = settings.kind
    where = f"the {settings.label}"
    if isinstance(error, UnicodeError) or isinstance(error, ValueError) and "login" in text:
        return ProxyFailed(f"{where} cannot be given this username or password",
                           "a proxy's username and password must be ASCII, and a username for an HTTP proxy "
                           "may not contain a colon", credentials=True)
    if isinstance(error, ProxyConnectionError) or (isinstance(error, OSError) and not isinstance(error, ProxyError)):
        return ProxyFailed(f"{where} closed the connection during its handshake",
                           f"check the proxy's port and type: is it {_A_PROXY[kind]}?")
    if kind == ProxyKind.HTTP and code is not None:
        return _http_refusal(code, where, target, settings)
    if kind == ProxyKind.SOCKS5 and code is not None:
        return _socks5_refusal(code, where, target)
    if kind == ProxyKind.SOCKS4 and code is not None:
        return _socks4_refusal(code, where, target, settings)
    if "authentication failure" in text:
        return ProxyFailed(f"{where} refused the username or password", "check the proxy's username and password",
                           credentials=True)
    if "No acceptable authentication methods" in text:
        if settings.username:
            return ProxyFailed(f"{where} accepts none of the ways to sign in Mailroom offered (none, and username "
                               "and password)", "ask the proxy's administrator which sign-in it wants",
                               credentials=True)
        return ProxyFailed(f"{where} wants a username and password", "enter the proxy's username and password",
                           credentials=True)
    if "closed unexpectedly" in text or "Empty" in text or isinstance(error, ProxyError):
        return ProxyFailed(f"{where} did not answer as {_A_PROXY[kind]} (from {used})",
                           f"check the proxy's port and type: is it {_A_PROXY[kind]}?")
    return ProxyFailed(f"{where} failed: {type(error).__name__}", "see the proxy's own log")


def _http_refusal(code: int, where: str, target: str, settings: ProxySettings) -> Exception:
    try:
        phrase = HTTPStatus(code).phrase
    except ValueError:
        phrase = "unknown status"
    status = f"{code} {phrase}"
    if code in (407, 401):  # 407 is the standard's answer; some proxies (tinyproxy) refuse wrong credentials with 401
        if settings.username:
            return ProxyFailed(f"{where} refused the username or password ({status})",
                               "check the proxy's username and password", code=code, credentials=True)
        return ProxyFailed(f"{where} wants a username and password ({status})",
                           "enter the proxy's username and password", code=code, credentials=True)
    if code == 403:
        return ProxyFailed(f"{where} does not allow a tunnel to {target} ({status})",
                           "many proxies allow CONNECT only to port 443: ask the proxy's administrator to allow this "
                           "host and port", code=code)
    if code in (405, 501):
        return ProxyFailed(f"{where} does not offer CONNECT tunnels ({status})",
                           "choose another proxy, or SOCKS5 if this one speaks it", code=code)
    if code in (502, 503, 504) or code == 500:
        return _TargetUnreached(ProxyFailed(f"{where} could not reach {target} ({status})",
                                            "check the server's host and port; the proxy may not reach that network",
                                            code=code))
    return ProxyFailed(f"{where} refused the tunnel to {target} ({status})", "see the proxy's own log", code=code)


_SOCKS5_REPLIES = {
    1: ("failed to connect to {target} (general SOCKS server failure, code 1)", "see the proxy's own log", False),
    2: ("does not allow a connection to {target} (not allowed by its rules, code 2)",
        "ask the proxy's administrator to allow this host and port", False),
    3: ("cannot reach the network of {target} (network unreachable, code 3)",
        "check the server's host; the proxy may not reach that network", True),
    4: ("cannot reach {target} (host unreachable, code 4)", "check the server's host and that it runs", True),
    5: ("was refused by {target}: nothing listens there (connection refused, code 5)",
        "check the server's port, and that the server is running", True),
    6: ("gave up on {target} (TTL expired, code 6)", "try again; the way to the server may be broken", True),
    7: ("does not support CONNECT (command not supported, code 7)", "check the proxy type", False),
    8: ("does not support this kind of address (address type not supported, code 8)",
        "for a name the proxy must resolve, turn “Resolve names at the proxy” on; for IPv6, use a name or IPv4",
        False),
}


def _socks5_refusal(code: int, where: str, target: str) -> Exception:
    summary, hint, other_address = _SOCKS5_REPLIES.get(
        code, ("refused the connection to {target} (code {code})", "see the proxy's own log", False))
    failure = ProxyFailed(f"{where} {summary.format(target=target, code=code)}", hint, code=code)
    return _TargetUnreached(failure) if other_address else failure


def _socks4_refusal(code: int, where: str, target: str, settings: ProxySettings) -> Exception:
    if code == 0x5B:
        return _TargetUnreached(ProxyFailed(
            f"{where} rejected the connection to {target} or could not make it (request rejected or failed, "
            "code 91)", "check the server's host and port; the proxy's rules may not allow it (see its log)",
            code=code))
    return ProxyFailed(f"{where} wanted to check the user ID with identd (code {code}), which Mailroom does not run",
                       "enter the user ID the proxy expects, or ask its administrator not to ask identd", code=code,
                       credentials=True)


def _no_ipv4(host: str):
    raise ProxyFailed(f"{host} has only IPv6 addresses, and SOCKS4 reaches IPv4 addresses only",
                      "choose SOCKS5 or an HTTP CONNECT tunnel")


def _endpoint(sockaddr: tuple) -> str:
    return f"{_bracketed(sockaddr[0])}:{sockaddr[1]}"


def _bracketed(host: str) -> str:
    try:
        return f"[{host}]" if ipaddress.ip_address(host.split("%", 1)[0]).version == 6 else host
    except ValueError:
        return host
