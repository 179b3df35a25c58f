"""Relay: the submission listeners of one process, STARTTLS on one port and implicit TLS on another,
each an aiosmtpd Controller (its own thread and uvloop event loop) around one SubmissionHandler.

Several processes or hosts may run it behind a TCP load balancer: what they share is the database
(the credentials, their counters, the outbox) and the count of failed sign-ins (Redis or database).
"""
import asyncio
import ctypes
import logging
import signal
import threading
import warnings
from functools import lru_cache
from types import SimpleNamespace

import uvloop
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, TLSSetupException, syntax

from .certificate import Certificate, load_or_create
from .handler import SubmissionHandler
from .settings import RelaySettings
from .throttle import FailedSignIns

log = logging.getLogger(__name__)


class _SMTP(SMTP):
    """aiosmtpd's SMTP, but STARTTLS goes through the event loop's start_tls: uvloop's TLS (C) instead of
    asyncio's SSLProtocol (Python), which aiosmtpd builds itself; and the addresses of MAIL FROM and
    RCPT TO are parsed once (the email package's parser, about 0.1 ms each), as a device sends the
    same ones with every message."""

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        return _parsed_address(arg, self.local_part_limit)

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:
        if arg:
            await self.push("501 Syntax: STARTTLS")
            return
        if not self.tls_context or self._tls_protocol:  # the implicit-TLS port, or TLS already
            await self.push("454 TLS not available")
            return
        await self.push("220 Ready to start TLS")
        plain = self.transport
        try:
            encrypted = await self.loop.start_tls(plain, self, self.tls_context, server_side=True)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            raise TLSSetupException() from error
        # What aiosmtpd's connection_made does after its own handshake (RFC 3207 4.2: a new session, and
        # nothing the client sent before TLS is kept).
        self._original_transport, self._tls_protocol = plain, plain.get_protocol()
        self._set_rset_state()
        self.session = self._create_session()
        self.session.peer = encrypted.get_extra_info("peername")
        self.session.ssl = {name: encrypted.get_extra_info(name)
                            for name in ("sslcontext", "ssl_object", "peercert", "cipher", "compression")}
        self._reader._transport = self._writer._transport = self.transport = encrypted
        self._reader._buffer.clear()
        self._reset_timeout()


@lru_cache(maxsize=1024)
def _parsed_address(arg: str, local_part_limit: int) -> tuple[str | None, str | None]:
    """aiosmtpd's SMTP._getaddr (of its SMTP object it reads only this limit)."""
    return SMTP._getaddr(SimpleNamespace(local_part_limit=local_part_limit), arg)


class _Listener(Controller):
    def __init__(self, handler: SubmissionHandler, settings: RelaySettings, port: int, **tls):
        super().__init__(
            handler, hostname=settings.host, port=port, server_hostname=settings.hostname, ident="Mailroom",
            data_size_limit=settings.max_message_bytes, auth_required=True, auth_require_tls=False,
            timeout=settings.idle_timeout, enable_SMTPUTF8=True, decode_data=False,
            proxy_protocol_timeout=10 if settings.proxy_protocol else None, loop=uvloop.new_event_loop(), **tls)

    def factory(self):
        # AUTH is always required; whether it needs TLS first is decided per client by the handler
        # (handle_EHLO, handle_AUTH), which is what aiosmtpd warns about here.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")
            return _SMTP(self.handler, **self.SMTP_kwargs)


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_tls_reads_on_the_heap() -> bool:
    """The event loop's TLS (uvloop's and asyncio's alike) reads every record, however short, into a new
    256 KiB buffer. glibc serves blocks of that size with mmap by default (then munmap, page faults):
    about 20 µs more a record (some four records a message) than from the heap. From here on this
    process takes blocks up to 1 MiB from the heap, and gives free memory back above 8 MiB.
    False where the C library has no mallopt (not glibc) or refuses."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    return bool(mallopt and mallopt(_M_MMAP_THRESHOLD, 1 << 20) == 1 and mallopt(_M_TRIM_THRESHOLD, 8 << 20) == 1)


class Relay:
    def __init__(self, app, settings: RelaySettings | None = None):
        self.settings = settings or RelaySettings.from_config(app.config)
        self.certificate: Certificate = load_or_create(self.settings, app.instance_path)
        failed = FailedSignIns(self.settings.auth_failures, app.config["RATELIMIT_STORAGE_URI"],
                               app.config.get("RATELIMIT_KEY_PREFIX") or "mailroom")
        context = self.certificate.server_context()
        # Implicit TLS: the event loop's TLS, or, behind the PROXY protocol (whose header comes first,
        # in the clear), TLS started by the handler once the header is read.
        implicit = {"tls_context": context} if self.settings.proxy_protocol else {"ssl_context": context}
        self.listeners = [
            _Listener(SubmissionHandler(app, self.settings, failed), self.settings, self.settings.starttls_port,
                      tls_context=context),
            _Listener(SubmissionHandler(app, self.settings, failed, implicit_tls=self.settings.proxy_protocol),
                      self.settings, self.settings.tls_port, **implicit)]
        logging.getLogger("mail.log").setLevel(logging.ERROR)  # aiosmtpd: every command at INFO otherwise

    def start(self) -> None:
        keep_tls_reads_on_the_heap()
        started = []
        try:
            for listener in self.listeners:
                listener.start()
                started.append(listener)
        except BaseException:
            for listener in started:
                listener.stop()
            raise

    def stop(self) -> None:
        for listener in self.listeners:
            listener.stop()

    def wait_then_stop(self) -> None:
        """After start(): listen until SIGINT or SIGTERM. A message being stored when the signal comes
        is committed before the process ends (its client may not hear so: it sends it again)."""
        stopping = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopping.set())
        try:
            stopping.wait()
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()
