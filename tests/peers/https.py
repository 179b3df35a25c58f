"""A WSGI application served over HTTPS on 127.0.0.1 in a thread, for the HTTP peers
(OAuth authorization server, Microsoft Graph, Gmail API, Exchange Web Services).

    server = HttpsPeer(wsgi_app, ssl_context)   # started at once, on a free port
    server = HttpsPeer(wsgi_app, ssl_context, keep_alive=True)  # HTTP/1.1 connections stay open
    server.url                                   # "https://127.0.0.1:<port>"
    server.stop()

werkzeug's server closes the connection after every answer (and, after an answer, reads whatever
the client sends next, to throw away a body the application left unread: it cannot serve a second
request on a connection). The services Mailroom talks to keep HTTP/1.1 connections open between
requests (RFC 9112 section 9.3: persistence is the default), so with `keep_alive=True` the peer is
served by the standard library's wsgiref, one connection per thread, as they do: each request's
body is read to its end after the application answered, every answer has a Content-Length, and
the connection stays open unless the client asks to close it, sent a chunked body, or is idle for
IDLE_SECONDS.
"""
import socketserver
import ssl
import threading
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer

from werkzeug.serving import make_server
from werkzeug.wsgi import LimitedStream

IDLE_SECONDS = 15


class _Answer(ServerHandler):
    http_version = "1.1"


class _KeepAliveHandler(WSGIRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = IDLE_SECONDS  # an idle connection is closed (the next request line is read under it)
    disable_nagle_algorithm = True  # an answer goes out in pieces: do not hold the last one back

    def setup(self):
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(IDLE_SECONDS)
            self.request.do_handshake()
        super().setup()

    def handle(self):
        self.close_connection = True
        self.handle_one_request()
        while not self.close_connection:
            self.handle_one_request()

    def handle_one_request(self):
        try:
            self.raw_requestline = self.rfile.readline(65537)
        except (TimeoutError, OSError):
            self.close_connection = True
            return
        if not self.raw_requestline:
            self.close_connection = True
            return
        if len(self.raw_requestline) > 65536:
            self.send_error(414)
            self.close_connection = True
            return
        if not self.parse_request():  # also decides close_connection from the version and Connection header
            return
        answer = _Answer(self.rfile, self.wfile, self.get_stderr(), self.get_environ(), multithread=True)
        answer.request_handler = self
        answer.run(self.server.get_app())
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True  # its end is not looked for here
        self.wfile.flush()

    def get_environ(self):
        environ = super().get_environ()
        environ["REMOTE_PORT"] = self.client_address[1]
        if isinstance(self.request, ssl.SSLSocket):
            environ["HTTPS"] = "on"
        return environ

    def log_message(self, format, *args):  # noqa: A002 - http.server's name
        pass


class _KeepAliveServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    block_on_close = False  # stop() does not wait for the clients' open connections

    def __init__(self, host: str, app, context: ssl.SSLContext | None):
        self.context = context
        super().__init__((host, 0), _KeepAliveHandler)
        self.set_app(_drained(app))

    def server_bind(self):
        socketserver.TCPServer.server_bind(self)  # not http.server's, which looks the name up (DNS)
        self.server_name, self.server_port = self.server_address[:2]
        self.setup_environ()

    def get_request(self):
        sock, address = self.socket.accept()
        if self.context is not None:  # the handshake happens in the connection's own thread (setup)
            sock = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address


def _drained(app):
    """Every answer with a Content-Length; the request's body read to its end once answered."""
    def application(environ, start_response):
        length = environ.get("CONTENT_LENGTH", "")
        body = LimitedStream(environ["wsgi.input"], int(length)) if length.isdigit() else None
        if body is not None:
            environ["wsgi.input"] = body
        result = app(environ, start_response)
        try:
            return [b"".join(result)]
        finally:
            if hasattr(result, "close"):
                result.close()
            if body is not None:
                body.exhaust()
    return application


class HttpsPeer:
    def __init__(self, app, context: ssl.SSLContext | None, host: str = "127.0.0.1", keep_alive: bool = False):
        if keep_alive:
            self._server = _KeepAliveServer(host, app, context)
        else:
            self._server = make_server(host, 0, app, threaded=True, ssl_context=context)
        self.port = self._server.server_port
        scheme = "https" if context is not None else "http"
        self.url = f"{scheme}://{host}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name=f"https-peer-{self.port}")
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
