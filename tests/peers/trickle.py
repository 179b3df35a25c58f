"""A server on loopback that answers properly up to a chosen point and then trickles: it sends one
byte every `interval` seconds and never finishes what it began (a reply line, a proxy's answer, a
TLS handshake). It stands for a server, or a middlebox in between (a proxy, a TLS-inspecting
firewall, an overloaded load balancer), that sends a byte at a time: the slowloris pattern in
reverse. Each of the client's reads gets something, so no socket timeout ever expires; only a
deadline for the whole conversation ends it. It can also stall a TLS handshake (accept the TCP
connection, read the ClientHello, never answer), as a firewall that holds the connection does.

It speaks no protocol of its own: each connection runs a script, a list of steps, so one peer serves
for SMTP, POP3, IMAP, HTTP CONNECT and SOCKS5 (the tests write the protocol's lines):

    ("send", b"220 mx ESMTP\\r\\n")   send these bytes
    ("line",)                         read one line from the client (a command), recorded in `heard`
    ("data",)                         read the client's lines up to a lone "." (SMTP's DATA)
    ("head",)                         read up to an empty line (an HTTP request's head)
    ("tagged", b"* CAPABILITY ..\r\n", b"OK done")   send the first bytes, then the status with the tag of the
                                      last line read (IMAP's tagged answer)
    ("read", n)                       read n bytes
    ("tls",)                          the server's side of a TLS handshake (then everything goes over TLS)
    ("stall_tls",)                    read the ClientHello and never answer it
    ("trickle_tls",)                  answer the ClientHello with the server's first flight a byte at a time
    ("trickle", b"250 ")              send these bytes, then a filler byte every `interval`, never a line end

A trickle lasts `length` bytes at most (then the connection is closed): the suite's own safety net,
far longer than any deadline a test sets (`lasts` says how long in seconds).

    peer = TricklePeer(script, context)      # context: an ssl.SSLContext for the TLS steps
    peer.port, peer.heard, peer.trickling     # trickling: set once a trickle or stall began
    peer.stop()
"""
import socket
import ssl
import threading
import time


class TricklePeer:
    def __init__(self, script: list[tuple], context: ssl.SSLContext | None = None, interval: float = 0.2,
                 length: int = 300, filler: bytes = b"x"):
        self.script, self.context, self.interval, self.length, self.filler = script, context, interval, length, filler
        self.heard: list[bytes] = []
        self.trickling = threading.Event()
        self._stopped = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.1)  # accept() looks at _stopped this often (closing it would not wake it)
        self.port = self._sock.getsockname()[1]
        self.host = "127.0.0.1"
        self._threads = [threading.Thread(target=self._serve, daemon=True, name=f"trickle-peer-{self.port}")]
        self._threads[0].start()

    @property
    def lasts(self) -> float:
        """Seconds a trickle takes to its end (the bound a test's check must stay well under)."""
        return self.length * self.interval

    def stop(self) -> None:
        self._stopped.set()
        for thread in self._threads:
            thread.join(10)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            talk = threading.Thread(target=self._talk, args=(conn,), daemon=True, name=f"trickle-peer-{self.port}-talk")
            self._threads.append(talk)
            talk.start()

    def _talk(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(30)
            reader = _Reader(conn)
            for step in self.script:
                conn, reader = getattr(self, "_" + step[0])(conn, reader, *step[1:])
        except (OSError, EOFError):
            pass  # the client hung up: what a deadline makes it do
        finally:
            conn.close()

    # -- steps: each takes and gives (connection, reader) -------------------------------------------------

    def _send(self, conn, reader, data: bytes):
        conn.sendall(data)
        return conn, reader

    def _line(self, conn, reader):
        self.heard.append(reader.until(b"\n"))
        return conn, reader

    def _data(self, conn, reader):
        while reader.until(b"\n") not in (b".\r\n", b".\n"):
            pass
        return conn, reader

    def _head(self, conn, reader):
        self.heard.append(reader.until(b"\r\n\r\n"))
        return conn, reader

    def _tagged(self, conn, reader, untagged: bytes, status: bytes):
        conn.sendall(untagged + self.heard[-1].split(b" ", 1)[0] + b" " + status + b"\r\n")
        return conn, reader

    def _read(self, conn, reader, n: int):
        self.heard.append(reader.exactly(n))
        return conn, reader

    def _tls(self, conn, reader):
        conn = self.context.wrap_socket(conn, server_side=True)
        return conn, _Reader(conn)

    def _stall_tls(self, conn, reader):
        conn.recv(65536)  # the ClientHello
        self.trickling.set()
        self._stopped.wait(self.lasts)
        return conn, reader

    def _trickle_tls(self, conn, reader):
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        server = self.context.wrap_bio(incoming, outgoing, server_side=True)
        flight = b""
        while not flight:
            incoming.write(conn.recv(65536))
            try:
                server.do_handshake()
            except ssl.SSLWantReadError:
                pass
            flight = outgoing.read()
        self.trickling.set()
        self._drip(conn, flight[:self.length])
        return conn, reader

    def _trickle(self, conn, reader, start: bytes):
        conn.sendall(start)
        self.trickling.set()
        self._drip(conn, self.filler * self.length)
        return conn, reader

    def _drip(self, conn, data: bytes) -> None:
        for byte in data:
            if self._stopped.wait(self.interval):
                return
            conn.sendall(bytes([byte]))


class _Reader:
    def __init__(self, conn):
        self.conn, self.buffer = conn, b""

    def until(self, end: bytes) -> bytes:
        while end not in self.buffer:
            self._more()
        found = self.buffer.index(end) + len(end)
        taken, self.buffer = self.buffer[:found], self.buffer[found:]
        return taken

    def exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self._more()
        taken, self.buffer = self.buffer[:n], self.buffer[n:]
        return taken

    def _more(self) -> None:
        chunk = self.conn.recv(65536)
        if not chunk:
            raise EOFError
        self.buffer += chunk
