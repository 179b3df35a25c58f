"""HTTP for transports and token endpoints: through the egress policy, under one deadline.

`session(network, deadline)` gives a requests.Session (authlib's OAuth2Session mounts the
same adapter) whose connections:

- resolve the host with `network.resolve` (every address checked) and connect to a
  checked address, never resolving again (no DNS rebinding between check and connect);
- go through the server's proxy when it has one (`network.proxy`, mail/proxy.py): a CONNECT
  or SOCKS tunnel to the checked address, TLS inside it; a proxy's refusal is a
  requests.ConnectionError whose reason (`reason()`) is the refusal and its hint in words;
- speak plain http:// only to this machine (every address loopback): a local test server
  may lack TLS, but nothing leaves the machine in the clear;
- verify TLS with the system's authorities plus the app's EXTRA_CA_CERTS, whatever the
  environment says (REQUESTS_CA_BUNDLE, proxies: trust_env is off);
- give up when the deadline runs out: each request's timeout is the time left, and a
  watchdog closes a connection that is still talking when it is over;
- read every answer up to `limit` bytes (decoded) and no further, whoever reads it (requests,
  authlib, exchangelib): a larger one (announced or sent), one cut off before its end, or one
  that cannot be decoded raises AnswerRefused (a requests.ConnectionError, in words);
- never follow a redirect (AnswerRefused too): a token or secret goes only to the URL it was
  saved for, and requests would re-send a 307's form, client secret included, wherever it points.

`record(report, response)` puts a request and its status into a report's transcript,
without bodies, query strings or headers (they may carry tokens).
"""
import ipaddress
import socket
from contextlib import contextmanager
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3 import HTTPResponse
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import DecodeError, NewConnectionError, ProtocolError, ReadTimeoutError

from . import proxy
from .deadline import Deadline, DeadlineExceeded, at
from .egress import EgressRefused, Network
from .tls import tls_context
from .urls import on_this_machine

USER_AGENT = "Mailroom/1 (+mail server settings check)"
# The most Mailroom reads of one answer. What it asks for (tokens, metadata documents, a mailbox's
# profile, the answer to a sent mail, EWS's SOAP answers) is a few KB; an error page a few more.
ANSWER_LIMIT = 1024 * 1024
CHUNK = 64 * 1024


class AnswerRefused(requests.ConnectionError):
    """An answer not read to its end: larger than the limit, cut off, or undecodable. str() in
    words, without a colon (callers show what follows the last one); `hint` says what to try."""

    def __init__(self, text: str, hint: str, request=None):
        super().__init__(text, request=request)
        self.hint = hint


class EgressAdapter(HTTPAdapter):
    def __init__(self, network: Network, deadline: Deadline, limit: int = ANSWER_LIMIT):
        self.network, self.deadline, self.limit = network, deadline, limit
        self.context = tls_context(True, "", network.extra_ca_pem)
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        adapter = self  # its deadline is that of the message under way (rebind)

        def new_conn(conn):
            return _checked_connection(conn, adapter)

        def new_plain_conn(conn):
            return _checked_connection(conn, adapter, loopback_only=True)

        def connect_tls(conn):
            HTTPSConnection.connect(conn)
            if isinstance(conn.sock, socket.socket):  # the TLS socket: the plain one it wrapped gave it its descriptor
                _watch(conn.sock, adapter)

        http = type("CheckedHTTPConnection", (HTTPConnection,), {"_new_conn": new_plain_conn})
        https = type("CheckedHTTPSConnection", (HTTPSConnection,), {"_new_conn": new_conn, "connect": connect_tls})
        self.poolmanager.pool_classes_by_scheme = {
            "http": type("CheckedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": http}),
            "https": type("CheckedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": https}),
        }

    def build_connection_pool_key_attributes(self, request, verify, cert=None):
        host_params, _ = super().build_connection_pool_key_attributes(request, True, cert)
        return host_params, {"ssl_context": self.context, "cert_reqs": "CERT_REQUIRED"}

    def cert_verify(self, conn, url, verify, cert):
        """Always verify, with our context alone (not a bundle loaded into it)."""
        conn.cert_reqs, conn.ca_certs, conn.ca_cert_dir = "CERT_REQUIRED", None, None

    def close(self) -> None:
        """Close the pooled connections now. urllib3 2's PoolManager.clear() only forgets its pools, whose
        connections close when a pool is garbage (weakref.finalize): a response still referenced kept its pool,
        so after a failure whose traceback holds the response in a reference cycle (exchangelib's
        ErrorServerBusy: the exception, its traceback and a frame holding it) the connection stayed open until
        the garbage collector ran. A connection still lent out closes as it comes back to its closed pool."""
        pools = self.poolmanager.pools
        for key in list(pools.keys()):
            pool = pools.get(key)
            if pool is not None:
                pool.close()
        super().close()

    def send(self, request, **kwargs):
        kwargs["timeout"] = self.deadline.left()
        kwargs["proxies"] = {}
        kwargs["stream"] = True  # requests reads the body afterwards, through the bounded response
        response = super().send(request, **kwargs)
        BoundedResponse.bind(response.raw, urlsplit(request.url).netloc, self.limit, self.deadline)
        if response.is_redirect:
            response.close()
            raise _redirect_refused(response)
        declared = response.headers.get("Content-Length", "").strip()
        if declared.isdigit() and int(declared) > self.limit:
            response.close()
            raise response.raw.too_large()
        return response


def _redirect_refused(response: requests.Response) -> AnswerRefused:
    """A redirect is not followed: requests would re-send a 307's form (a client secret) to wherever
    it points, and a session-wide Authorization header to another path of the host."""
    where = urlsplit(urljoin(response.request.url, response.headers["Location"]))
    target = f"{where.scheme}://{where.netloc}{where.path}" if where.netloc else "another address"
    return AnswerRefused(f"{urlsplit(response.request.url).netloc} redirects to {target} ({response.status_code} "
                         f"{response.reason or ''}".rstrip() + "), and Mailroom does not follow redirects",
                         "enter the address it redirects to, if that is the service's own: a token or secret goes "
                         "only to the address it was saved for", response.request)


class BoundedResponse(HTTPResponse):
    """urllib3's response to one request, read no further than `limit` bytes (decoded: a compressed
    bomb counts as what it inflates to) and never past the deadline (the watchdog's close is no
    end of an answer). It stays an HTTPResponse with its socket, which requests-ntlm reads for
    channel binding before the body; requests reads the body through it (.content, iter_content).
    """
    host: str
    limit: int
    deadline: Deadline
    received: int

    @classmethod
    def bind(cls, response: HTTPResponse, host: str, limit: int, deadline: Deadline) -> None:
        response.__class__ = cls  # urllib3 builds its own class in HTTPConnection.getresponse
        response.host, response.limit, response.deadline, response.received = host, limit, deadline, 0

    def too_large(self) -> AnswerRefused:
        return AnswerRefused(f"the answer from {self.host} is larger than {self.limit // 1024} KB, more than "
                             "Mailroom reads", "check the address: it should lead to the service itself, whose "
                             "answers are small")

    def read(self, amt=None, decode_content=None, cache_content=False):
        if amt is None or amt < 0:  # all of it, in pieces: the limit holds on the way
            data = b"".join(iter(lambda: self.read(CHUNK, decode_content), b""))
            if cache_content:
                self._body = data
            return data
        with self._refusals():
            return self._counted(super().read(amt, decode_content, cache_content))

    def read1(self, amt=None, decode_content=None):
        with self._refusals():
            return self._counted(super().read1(amt or CHUNK, decode_content))

    def read_chunked(self, amt=None, decode_content=None):
        with self._refusals():
            for chunk in super().read_chunked(amt or CHUNK, decode_content):  # never a whole 10 GB chunk at once
                yield self._counted(chunk)

    def _counted(self, data: bytes) -> bytes:
        self.received += len(data or b"")
        if self.received > self.limit:
            self.close()
            raise self.too_large()
        self.deadline.left()  # DeadlineExceeded once it is over, even if the watchdog's close looked like an end
        return data

    @contextmanager
    def _refusals(self):
        try:
            yield
        except ProtocolError:
            raise AnswerRefused(f"the answer from {self.host} was cut off before its end",
                                "try again; if it persists, check the address and what lies between (a proxy, a "
                                "firewall)") from None
        except DecodeError:
            raise AnswerRefused(f"the answer from {self.host} cannot be decoded (its Content-Encoding)",
                                "check the address: it should lead to the service itself") from None
        except ReadTimeoutError:
            raise DeadlineExceeded("no answer in time") from None


def _checked_connection(conn, adapter: EgressAdapter, loopback_only: bool = False) -> socket.socket:
    """Directly to a checked address, or through the server's proxy (mail/proxy.py); a proxy's
    refusal becomes a connection error whose reason is the refusal in words."""
    network, deadline = adapter.network, adapter.deadline
    addresses = proxy.targets(network, conn.host, conn.port, deadline)
    if loopback_only:
        if addresses is None and not on_this_machine(conn.host):
            raise EgressRefused(conn.host, conn.port, "", "plain http:// is used only on this machine (loopback): "
                                                          "use https://")
        for _, sockaddr in addresses or ():
            if not ipaddress.ip_address(sockaddr[0].split("%", 1)[0]).is_loopback:
                raise EgressRefused(conn.host, conn.port, sockaddr[0],
                                    "plain http:// is used only on this machine (loopback): use https://")
    try:
        sock = proxy.connect(network, conn.host, conn.port, deadline, addresses).sock
    except (proxy.ProxyFailed, OSError) as error:
        failure = error
    else:
        for option in conn.socket_options or ():  # as urllib3's own _new_conn does: TCP_NODELAY, else a request
            sock.setsockopt(*option)               # body written after its headers waits for the delayed ACK
        _watch(sock, adapter)
        return sock
    reason = _one_reason(failure) if isinstance(failure, proxy.ProxyFailed) else failure
    raise NewConnectionError(conn, f"Failed to establish a new connection: {reason}")  # no chain: reason() reads this


def _one_reason(failure: "proxy.ProxyFailed") -> str:
    """The refusal and its hint as the last part of a message (reason() keeps what follows the last ": ")."""
    return f"{failure.summary}; {failure.hint}".replace(": ", ", ")


def _watch(sock: socket.socket, holder) -> None:
    """Close the connection when `holder.deadline` is over, even if the server keeps trickling bytes.
    A kept connection's deadline moves on with each message (rebind): the watch waits for the new one.
    Over TLS, watch the TLS socket (wrapping detaches the plain one: its shutdown() would do nothing);
    socket.shutdown() of its descriptor, not SSLSocket's, which would also unwrap it under a reader.
    On the process's one watchdog thread (deadline.at), like deadline.Watchdog."""
    at(holder.deadline.end, _ConnectionWatch(sock, holder))


class _ConnectionWatch:
    cancelled = False  # never: it ends when the connection is closed, or with the deadline it finds over

    def __init__(self, sock: socket.socket, holder):
        self.sock, self.holder = sock, holder

    def due(self) -> float | None:
        if self.sock.fileno() < 0:
            return None  # closed meanwhile: nothing to watch
        deadline = self.holder.deadline
        if not deadline.over():
            return deadline.end  # rebound to the next message's deadline: wait for that one
        try:
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
        except OSError:
            pass
        return None


def mount(session: requests.Session, network: Network, deadline: Deadline,
          limit: int = ANSWER_LIMIT) -> requests.Session:
    adapter = EgressAdapter(network, deadline, limit)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.trust_env = False  # no REQUESTS_CA_BUNDLE, no proxies from the environment
    session.headers["User-Agent"] = USER_AGENT
    return session


def session(network: Network, deadline: Deadline, limit: int = ANSWER_LIMIT) -> requests.Session:
    return mount(requests.Session(), network, deadline, limit)


def rebind(session: requests.Session, deadline: Deadline) -> requests.Session:
    """The session's kept connections now serve a request under `deadline` (the next message's)."""
    for adapter in session.adapters.values():
        if isinstance(adapter, EgressAdapter):
            adapter.deadline = deadline
    return session


def record(transcript: list[str], response: requests.Response, what: str = "") -> None:
    """One line per request and one per answer; no query string, body or header."""
    request = response.request
    parts = urlsplit(request.url)
    label = f" ({what})" if what else ""
    transcript.append(f"C: {request.method} {parts.scheme}://{parts.netloc}{parts.path}{label}")
    transcript.append(f"S: {response.status_code} {response.reason or ''}".rstrip())


def host_of(url: str) -> str:
    return urlsplit(url).netloc


def reason(error: Exception) -> str:
    """The last cause of a requests error, in a few words ("Connection refused")."""
    cause: BaseException | None = error
    while cause is not None and (cause.__cause__ or cause.__context__) is not None:
        cause = cause.__cause__ or cause.__context__
    text = getattr(cause, "strerror", None) or str(cause or error)
    return text.rsplit("] ", 1)[-1].rsplit(": ", 1)[-1].strip(" '\")")
