"""An HTTP(S) server on loopback that answers every request with one chosen misbehaviour, for the
tests that a portal's server, token endpoint or metadata document cannot make Mailroom hold
unbounded memory or crash.

It stands for no particular service: it sends what any server may put on the wire, within the
framing HTTP/1.1 defines (RFC 9112 section 6: a body is delimited by Content-Length, by chunked
transfer coding, or by the server closing the connection), and breaks the promise each framing
makes:

    endless          200, no Content-Length, "Connection: close": bytes until the client hangs up
    endless-chunked  200, chunked: chunks until the client hangs up
    trickle          200, no Content-Length: a byte every 0.2 s
    cut-off          200, "Content-Length: 100000", 1000 bytes, then the connection is closed
    huge-length      200, "Content-Length: 10**12", a few bytes, then silence
    nested           200, valid JSON nested 100,000 deep (well under the size limit)
    gzip-bomb        200, "Content-Encoding: gzip": 100 KB on the wire, 100 MB once inflated
    redirect-302     302 to `redirect_to` (another port), as a server moving its token endpoint would
    redirect-307     307 to `redirect_to` (307 keeps the method and the body: RFC 9110 15.4.8)

Safety net for the suite itself: an endless answer stops after CAP bytes even if nobody hangs up.

    server = HostilePeer("endless", context=None)   # context: an ssl.SSLContext for https
    server.url                                       # "http://127.0.0.1:<port>"
    server.requests                                  # [(method, path, headers dict, body)] as received
    server.stop()
"""
import functools
import gzip
import socket
import threading
import time

CAP = 256 * 1024 * 1024
MODES = ("endless", "endless-chunked", "trickle", "cut-off", "huge-length", "nested", "gzip-bomb",
         "redirect-302", "redirect-307")


class HostilePeer:
    def __init__(self, mode: str, context=None, redirect_to: str = ""):
        assert mode in MODES, mode
        self.mode, self.context, self.redirect_to = mode, context, redirect_to
        self.requests: list[tuple[str, str, dict, bytes]] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"{'https' if context else 'http'}://127.0.0.1:{self.port}"
        self._stopped = threading.Event()
        threading.Thread(target=self._serve, daemon=True, name=f"hostile-{mode}-{self.port}").start()

    def stop(self) -> None:
        self._stopped.set()
        self._sock.close()

    def _serve(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn: socket.socket) -> None:
        try:
            if self.context is not None:
                conn = self.context.wrap_socket(conn, server_side=True)
            conn.settimeout(30)
            self._read_request(conn)
            getattr(self, "_" + self.mode.replace("-", "_"))(conn)
        except OSError:
            pass  # the client hung up: what it should do
        finally:
            conn.close()

    def _read_request(self, conn) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        method, path = lines[0].split(" ")[:2]
        headers = {name.strip().lower(): value.strip() for name, value in
                   (line.split(":", 1) for line in lines[1:] if ":" in line)}
        length = int(headers.get("content-length", "0") or 0)
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                break
            body += chunk
        self.requests.append((method, path, headers, body))

    @staticmethod
    def _head(conn, *lines: str) -> None:
        conn.sendall(("\r\n".join(["HTTP/1.1 200 OK", "Content-Type: application/json", *lines]) + "\r\n\r\n")
                     .encode())

    def _endless(self, conn) -> None:
        self._head(conn, "Connection: close")
        chunk, sent = b'{"value": "' + b"x" * 65_000, 0
        while sent < CAP and not self._stopped.is_set():
            conn.sendall(chunk)
            sent += len(chunk)

    def _endless_chunked(self, conn) -> None:
        self._head(conn, "Transfer-Encoding: chunked")
        chunk, sent = b"[" * 65_536, 0
        while sent < CAP and not self._stopped.is_set():
            conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)

    def _trickle(self, conn) -> None:
        self._head(conn, "Connection: close")
        for _ in range(600):
            conn.sendall(b" ")
            time.sleep(0.2)

    def _cut_off(self, conn) -> None:
        self._head(conn, "Content-Length: 100000")
        conn.sendall(b'{"value": "' + b"x" * 989)

    def _huge_length(self, conn) -> None:
        self._head(conn, f"Content-Length: {10**12}")
        conn.sendall(b'{"value": "')
        self._stopped.wait(30)

    def _nested(self, conn) -> None:
        body = b"[" * 100_000 + b"]" * 100_000
        self._head(conn, f"Content-Length: {len(body)}")
        conn.sendall(body)

    def _gzip_bomb(self, conn) -> None:
        body = bomb()
        self._head(conn, "Content-Encoding: gzip", f"Content-Length: {len(body)}")
        conn.sendall(body)

    def _redirect_302(self, conn) -> None:
        self._redirect(conn, "302 Found")

    def _redirect_307(self, conn) -> None:
        self._redirect(conn, "307 Temporary Redirect")

    def _redirect(self, conn, status: str) -> None:
        conn.sendall((f"HTTP/1.1 {status}\r\nLocation: {self.redirect_to}\r\nContent-Length: 0\r\n\r\n").encode())


@functools.cache
def bomb() -> bytes:
    """100 MB of zeros, gzipped (about 100 KB): made once per test session."""
    return gzip.compress(b"\0" * (100 * 1024 * 1024), compresslevel=9)
