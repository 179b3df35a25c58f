"""Exchange Web Services (EWS) through exchangelib: for Exchange Server on premises.

check(): [Token] -> Connect (the egress policy, TLS and the server's certificate) -> Sign in
(the first authenticated SOAP call: the version probe when the version is "auto", and
ResolveNames for the mailbox) -> Mailbox (what ResolveNames found). Nothing is sent.
send(): the stored message (Envelope.raw) as MimeContent (every header, Reply-To and the Message-ID
kept), with the message options' item fields (Importance, Sensitivity, IsReadReceiptRequested,
IsDeliveryReceiptRequested: options.ews_fields()) beside it, in one CreateItem: SendOnly, or
SendAndSaveCopy to Sent Items (exchangelib first looks the folder up with two GetFolder calls, once
per connection: the Account that caches it is kept with the protocol).

Sign-in: Basic or NTLM with a password ("auto": Basic, or NTLM when the server refuses Basic
and offers NTLM/Negotiate), or OAuth 2.0 with the token of the Token step: delegated
(EWS.AccessAsUser.All) or app-only with impersonation of the mailbox (ExchangeImpersonation
and X-AnchorMailbox, sent by exchangelib for the credentials' identity).

exchangelib never opens a connection of its own here, nor keeps anything beyond our own objects:
- each check, and the first message of a connection (open()), builds its own Protocol (not
  through exchangelib's process-wide cache, which keys on endpoint and credentials only and
  would keep the password) whose sessions mount one EgressAdapter (mail/http.py) for every URL:
  connections go only to addresses the egress policy checked, TLS is verified with the app's CA
  store plus the server's own CA certificate, and every request's timeout is what is left of the
  one deadline;
- the delivery worker's consecutive messages to a server (open(): api.ApiConnection) share that
  Protocol through api.Kept: its one session keeps its HTTPS connection alive (NTLM's sign-in
  with it), the version it probed, and the mailbox's Account with the Sent Items folder it looked
  up; each message takes it over (EwsProtocol.take_over: the message's call, so its deadline,
  transcript and token) and a failed message closes it;
- the retry policy is FailFast: exchangelib's fault-tolerant policy would sleep through
  401s and back-offs far beyond the deadline;
- OAuth credentials carry the access token and cannot refresh or fetch one (no client id or
  secret, no token URL, refresh() raises); the session signs requests with the token itself
  (requests-oauthlib's session would log it at DEBUG level);
- Autodiscover is not used: its DNS and HTTP requests would not go through the policy.

Errors are put in words here (what the admin should do); the transcript has one line per
HTTP request (the SOAP operation) and one per answer (status and EWS response codes), never a
header or a body. exchangelib's own log lines carry request headers and bodies: its logger is
kept quiet unless someone configured it.
"""
import logging
import re
import socket
import ssl
from contextlib import suppress
from urllib.parse import urlsplit

import requests
from exchangelib import (BASIC, DELEGATE, IMPERSONATION, NTLM, OAUTH2, UTC, Account, Build, Configuration,
                         Credentials, FailFast, Identity, Message, OAuth2AuthorizationCodeCredentials, Version)
from exchangelib import errors as ews
from exchangelib.protocol import Protocol
from exchangelib.transport import DEFAULT_HEADERS

from . import http, proxy, smime
from .api import ApiCall, ApiConnection, Kept, accepted_all
from .auth import BearerAuth, PasswordAuth, token_step
from .deadline import DeadlineExceeded, Watchdog, cut_short
from .egress import EgressRefused
from .envelope import Envelope
from .ews_protocol import AUTO, GRAPH_HINT, ONLINE_WARNING, Ews, EwsSettings, is_exchange_online, online_warning
from .options import MessageOptions, ews_fields
from .report import DeliveryError, Outcome, Receipt, Report, Step, StepFailed, step_result
from .tls import handshake_result, tls_context

_quiet = logging.getLogger("exchangelib")  # its DEBUG lines hold request headers (Authorization), its ERRORs bodies
if _quiet.level == logging.NOTSET:
    _quiet.setLevel(logging.CRITICAL)

BUILDS = {"Exchange2019": Build(15, 2), "Exchange2016": Build(15, 1), "Exchange2013_SP1": Build(15, 0, 847),
          "Exchange2013": Build(15, 0), "Exchange2010_SP2": Build(14, 2), "Exchange2010_SP1": Build(14, 1),
          "Exchange2010": Build(14, 0)}
TEXT_LIMIT = 300  # of a server's message quoted in a report

_OPERATION = re.compile(rb"<(?:[\w.-]+:)?Body\b[^>]*>\s*<(?:[\w.-]+:)?(\w+)")
_RESPONSE_CODE = re.compile(rb"<(?:[\w.-]+:)?ResponseCode>\s*(\w+)\s*<")
_FAULT_CODE = re.compile(rb"<faultcode\b[^>]*>(?:[\w.-]+:)?(\w+)<")


class EwsTransport(Ews):
    """Ews's sending code (the registry imports this module when an EWS server is first checked or used)."""

    def check(self, config) -> Report:
        call = EwsCall(config)
        with call:
            call.warn_online()
            if isinstance(config.auth, BearerAuth):
                call.run("Token", call.take_token)
            call.run("Connect", call.connect)
            call.run("Sign in", call.sign_in)
            call.run("Mailbox", call.mailbox_step)
        call.report.passed_summary = "Exchange accepts the sign-in and knows the mailbox."
        return call.report

    def open(self, config) -> ApiConnection:
        return ApiConnection(self, config)

    def send(self, config, envelope: Envelope, kept: Kept | None = None) -> Receipt:
        call = EwsCall(config, kept)

        def prepare() -> Step:
            if not envelope.recipients:
                raise StepFailed("the message has no recipients", "add at least one To, Cc or Bcc address",
                                 temporary=False)
            return step_result(f"{len(envelope.recipients)} recipient(s); a copy saved to Sent Items: "
                               f"{'yes' if config.settings.save_copy else 'no'}",
                               [("Message-ID", envelope.message_id), ("Mailbox", call.mailbox)])

        with call:
            call.warn_online(as_note=True)
            call.run("Message", prepare)
            if isinstance(config.auth, BearerAuth):
                call.run("Token", call.take_token)
            mime = smime.protected(call.run, config.smime, envelope.raw, envelope.recipients)
            call.run("Send", lambda: call.send(mime, ews_fields(config.options or MessageOptions(), envelope.raw)))
        if not call.report.ok:
            raise DeliveryError(call.report)
        disposition = "SendAndSaveCopy" if config.settings.save_copy else "SendOnly"
        reply = f"EWS accepted the message (CreateItem {disposition})"
        return Receipt(reply=reply, message_id=envelope.message_id, report=call.report,
                       recipients=accepted_all(envelope, reply))


# --- one check or send -------------------------------------------------------------------------------------

class EwsCall(ApiCall):
    """The steps of one check or send (ApiCall: one deadline, a step runner, a scrubbed report)."""

    def __init__(self, config, kept: Kept | None = None):
        super().__init__(config, kept)
        self.report.transcript_name = EwsTransport.transcript_name
        self.settings: EwsSettings = config.settings
        self.url = self.settings.ews_url.strip()
        self.host = urlsplit(self.url).hostname or ""
        self.mailbox = mailbox_of(config)
        self.protocols: list[Protocol] = []
        self.last: dict = {}  # the last HTTP answer: status, reason, offered (auth schemes), diagnostics
        self.auth_used = ""  # BASIC, NTLM or OAUTH2, once a call got through
        self.found = None  # what ResolveNames gave
        self.mailbox_error: Exception | None = None
        self._context: ssl.SSLContext | None = None
        if isinstance(config.auth, PasswordAuth):
            self.redactor.add(config.auth.password)

    def __exit__(self, kind, error, traceback) -> bool:
        handled = super().__exit__(kind, error, traceback)  # keeps the last protocol after a message that went well
        kept = self.kept.client if self.kept is not None else None
        for protocol in self.protocols:
            if protocol is not kept:
                with suppress(Exception):
                    protocol.close()
        return handled

    def keep(self, kept: Kept) -> None:
        super().keep(kept)
        if self.protocols:
            kept.client = self.protocols[-1]

    @property
    def context(self) -> ssl.SSLContext:
        if self._context is None:  # StepFailed in words when the CA certificate cannot be read
            self._context = tls_context(True, self.settings.ews_ca_cert, self.config.network.extra_ca_pem)
        return self._context

    @property
    def app_only(self) -> bool:
        return isinstance(self.config.auth, BearerAuth) and self.config.auth.app_only

    # -- steps ---------------------------------------------------------------------------------------------

    def warn_online(self, as_note: bool = False) -> None:
        if not is_exchange_online(self.url):
            return
        if as_note:
            self.report.notes.append(online_warning(self.url))
            return
        self.report.add(Step("Exchange Online", Outcome.WARNING, ONLINE_WARNING, [("Host", self.host)],
                             GRAPH_HINT))

    def take_token(self) -> Step:
        step, token = token_step(self.config.auth, self.deadline)
        self.token = token.value
        self.redactor.add(token.value)
        return step

    def connect(self) -> Step:
        """Resolve through the egress policy, connect (through the server's proxy, if it has one), and shake
        hands as exchangelib's sessions will."""
        port = urlsplit(self.url).port or 443
        try:
            connection = proxy.connect(self.config.network, self.host, port, self.deadline)
        except OSError as error:
            if isinstance(error, socket.gaierror):
                raise
            raise StepFailed(f"could not connect to {self.host} port {port}: {http.reason(error)}",
                             "check the address and this machine's network") from None
        sock, context = connection.sock, self.context
        watchdog = Watchdog(sock, self.deadline)  # a handshake trickled a byte at a time cannot outlast the deadline
        try:
            sock.settimeout(self.deadline.left())
            with cut_short(self.deadline, "no TLS handshake in time"), \
                    context.wrap_socket(sock, server_hostname=self.host) as tls:
                step = handshake_result(tls, verified=True)
        except ssl.SSLCertVerificationError as error:
            raise StepFailed(f"the TLS certificate of {self.host} could not be verified: "
                             f"{error.verify_message or error.reason}",
                             "check the address; an Exchange server with a certificate from your own "
                             "authority needs that CA under “CA certificate” (or in EXTRA_CA_CERTS)",
                             temporary=False) from None
        except DeadlineExceeded:
            raise StepFailed(f"no answer within {self.deadline}: {self.host} port {port} accepted the connection "
                             "but did not finish the TLS handshake",
                             "the server may be overloaded, or a firewall or TLS-inspecting proxy in between may be "
                             "holding the connection: check the address and port (EWS is HTTPS, usually 443), try "
                             "again, or raise the timeout") from None
        except (ssl.SSLError, OSError) as error:
            raise _no_tls(self.host, port, error) from None
        finally:
            watchdog.cancel()
            sock.close()
        step.summary = f"connected to {self.host} port {port}, {step.summary}"
        step.details.insert(0, ("Address", f"{connection.peer[1][0] if connection.peer else self.host} port {port}"))
        if connection.proxy is not None:
            step.details.insert(1, ("Through", connection.proxy.settings.label))
        return step

    def sign_in(self) -> Step:
        def resolve(protocol):
            if not self.settings.ews_version or self.settings.ews_version == AUTO:
                protocol.version  # noqa: B018  (the version probe: ConvertId)
            return protocol.resolve_names([self.mailbox])

        try:
            self.found = self.with_protocol(resolve)
        except MAILBOX_ERRORS as error:  # signed in; the mailbox is the problem
            self.mailbox_error = error
        details = self._sign_in_details()
        return step_result(f"signed in with {_auth_label(self.auth_used)}", details)

    def mailbox_step(self) -> Step:
        if self.mailbox_error is not None:
            raise self._explain(self.mailbox_error)
        wanted = self.mailbox.lower()
        found = [m for m in self.found or [] if not isinstance(m, Exception)]
        errors = [m for m in self.found or [] if isinstance(m, Exception)]
        match = next((m for m in found if (m.email_address or "").lower() == wanted), found[0] if found else None)
        if match is None:
            raise self._explain(errors[0] if errors else ews.ErrorNameResolutionNoResults("No results were found."))
        details = [("Name", match.name or ""), ("Address", match.email_address or ""),
                   ("Type", match.mailbox_type or "")]
        if isinstance(self.config.auth, PasswordAuth):
            details.append(("Sends as", f"{self.mailbox}: the account {self.config.auth.username} needs “Send As” "
                                        "on it unless it is its own mailbox"))
        if self.app_only:
            details.append(("Impersonated", self.mailbox))
        if match.mailbox_type and match.mailbox_type not in ("Mailbox", "PublicFolder", "LinkedMailbox"):
            return step_result(f"{self.mailbox} resolves to a {match.mailbox_type}, not a mailbox of this "
                               "Exchange organization", details, Outcome.WARNING,
                               hint="enter the primary SMTP address of a mailbox on this server")
        return step_result(f"Exchange knows the mailbox {match.email_address} ({match.name})", details)

    def send(self, mime: bytes, item_fields: dict) -> Step:
        """The MIME content with the item fields Exchange takes apart from it (the message options')."""
        save = bool(self.settings.save_copy)

        def create(protocol):
            account = self.account(protocol)
            Message(account=account, mime_content=mime, **item_fields).send(save_copy=save)

        self.with_protocol(create)
        disposition = "SendAndSaveCopy" if save else "SendOnly"
        return step_result(f"EWS accepted the message for delivery (CreateItem {disposition})",
                           [("Signed in with", _auth_label(self.auth_used)), ("Mailbox", self.mailbox)])

    # -- exchangelib -----------------------------------------------------------------------------------------

    def with_protocol(self, action):
        """Run action(protocol); "auto" retries once with NTLM when the server refused Basic and asked for NTLM."""
        auth = self.config.auth
        if not isinstance(auth, (PasswordAuth, BearerAuth)):
            raise StepFailed("EWS needs a sign-in", "choose Authentication “Basic” or “OAuth 2.0”", temporary=False)
        kept = self.kept.client if self.kept is not None else None
        if kept is not None:  # the previous message's sign-in ("auto": what the server took)
            first = kept.auth_type
        else:
            first = OAUTH2 if isinstance(auth, BearerAuth) else (NTLM if auth.mechanism == "ntlm" else BASIC)
        try:
            return self._attempt(action, first)
        except (ews.UnauthorizedError, ews.ErrorServerBusy):  # a 401 with "Connection: close" reads as busy
            offered = self.last.get("offered", ())
            if not (self.last.get("status") == 401 and isinstance(auth, PasswordAuth)
                    and auth.mechanism in ("auto", "") and first == BASIC
                    and "basic" not in offered and {"ntlm", "negotiate"} & set(offered)):
                raise
        return self._attempt(action, NTLM)

    def _attempt(self, action, auth_type):
        kept = self.kept.client if self.kept is not None else None
        if kept is not None and kept.auth_type == auth_type and kept not in self.protocols:  # not tried yet
            protocol = kept.take_over(self)
        else:
            protocol = EwsProtocol.for_call(self, self._configuration(auth_type))
        self.protocols.append(protocol)
        self.auth_used = auth_type
        return action(protocol)

    def _configuration(self, auth_type) -> Configuration:
        auth = self.config.auth
        if isinstance(auth, BearerAuth):
            identity = Identity(primary_smtp_address=self.mailbox) if self.app_only else None
            credentials = TokenCredentials(self.token, identity)
        else:
            credentials = PasswordCredentials(auth.username, auth.password)
        build = BUILDS.get(self.settings.ews_version)
        return Configuration(service_endpoint=self.url, credentials=credentials, auth_type=auth_type,
                             version=Version(build=build) if build else None, retry_policy=FailFast(),
                             max_connections=1)

    def account(self, protocol) -> Account:
        """The mailbox's Account on this protocol, made for its first message and kept with it: exchangelib
        caches on the Account the folders it looked up (Sent Items: two GetFolder), so a kept connection's
        later messages save their copy with CreateItem alone. It goes with the protocol (a failed message, a
        closed connection; the worker opens a new connection once the server's settings were saved)."""
        access = IMPERSONATION if self.app_only else DELEGATE
        key = (self.mailbox.lower(), access)
        account = protocol.accounts.get(key)
        if account is None:
            account = Account(self.mailbox, config=protocol.config, autodiscover=False, access_type=access,
                              locale="en_US", default_timezone=UTC)
            with suppress(KeyError):  # Account() put a Protocol for this config into exchangelib's cache: not ours
                del Protocol[protocol.config]
            account.protocol = protocol
            protocol.accounts[key] = account
        return account

    def observe(self, request, response) -> None:
        """One line for the request (its SOAP operation), one for the answer; what the words need."""
        status, reason = response.status_code, response.reason or ""
        codes = []
        if (response.headers.get("Content-Type") or "").startswith(("text/xml", "application/soap")):
            body = response.content[:200_000]
            codes = list(dict.fromkeys(m.decode() for m in (_RESPONSE_CODE.findall(body)
                                                              or _FAULT_CODE.findall(body))))
        self.report.transcript.append(f"S: {status} {reason}".rstrip() + (f" ({', '.join(codes)})" if codes else ""))
        offered = _schemes(response.headers.get("WWW-Authenticate", ""))
        diagnostics = response.headers.get("x-ms-diagnostics", "")
        self.last = {"status": status, "reason": reason, "offered": offered, "diagnostics": diagnostics,
                     "codes": codes, "content_type": (response.headers.get("Content-Type") or "").split(";")[0]}

    def record_request(self, request) -> None:
        parts = urlsplit(request.url)
        match = _OPERATION.search(request.body or b"") if isinstance(request.body, bytes) else None
        operation = f" ({match.group(1).decode()})" if match else ""
        self.report.transcript.append(f"C: {request.method} {parts.scheme}://{parts.netloc}{parts.path}{operation}")

    # -- words -----------------------------------------------------------------------------------------------

    def words(self, name: str, error: Exception) -> StepFailed | None:
        return self._explain(error)

    def _explain(self, error: Exception) -> StepFailed | None:
        if isinstance(error, StepFailed):
            return error
        cause = _network_cause(error)
        if cause is not None:
            if not isinstance(cause, EgressRefused) and self._out_of_time():
                cause = DeadlineExceeded("the deadline passed")
            return super().words("", cause)
        inner = error.__context__  # exchangelib's version probe wraps what the server said in a TransportError
        if isinstance(error, ews.TransportError) and isinstance(inner, ews.EWSError) and not isinstance(
                error, ews.ResponseMessageError):
            error = inner
        status = self.last.get("status")
        details = [("HTTP status", f"{status} {self.last.get('reason', '')}".strip())] if status else []
        if isinstance(error, ews.UnauthorizedError):
            return self._unauthorized(details)
        if isinstance(error, ews.RateLimitError):
            return _throttled(getattr(error, "wait", None), details, status)
        if isinstance(error, ews.ErrorServerBusy):
            if status == 401:  # exchangelib reads some 401s as "busy"
                return self._unauthorized(details)
            return _throttled(error.back_off, details, status)
        if isinstance(error, ews.ResponseMessageError):
            return self._response_error(error, details, status)
        if isinstance(error, ews.RedirectError):
            return StepFailed(f"Exchange redirects this address to {error.server}",
                              "enter the EWS address itself (https://<server>/EWS/Exchange.asmx): Mailroom does not "
                              "follow redirects, and does not use Autodiscover", details, code=status)
        if isinstance(error, ews.CASError):
            return StepFailed(f"Exchange's front end refused the request ({_short(error.cas_error)})",
                              "check the address and that the mailbox is on this Exchange organization", details,
                              code=status)
        if status == 403:
            return self._forbidden(details)
        if status == 404:
            return StepFailed(f"there is no EWS at {self.url} (404 Not Found)",
                              "the address of EWS usually ends in /EWS/Exchange.asmx", details, code=status,
                              temporary=False)
        if status == 200 and not self.last.get("content_type", "").endswith("xml"):
            kind = self.last.get("content_type") or "no content type"
            return StepFailed(f"{self.host} answered, but not as Exchange Web Services does (200 OK with {kind}, "
                              "not a SOAP answer)",
                              "check the Connect URL: it is the EWS address itself, usually "
                              "https://<server>/EWS/Exchange.asmx", details, code=status, temporary=False)
        if isinstance(error, ews.TransportError) and "version" in str(error).lower():
            return StepFailed("the server did not answer like Exchange (no version information in its answer)",
                              "check that the address is the server's EWS address (…/EWS/Exchange.asmx)",
                              details, code=status)
        if isinstance(error, ews.EWSError):
            return StepFailed(f"Exchange answered in a way Mailroom cannot use{f' ({status})' if status else ''}",
                              "check the address; if it persists, see the EWS requests below", details,
                              code=status, temporary=status is None or status >= 500)
        return None

    def _out_of_time(self) -> bool:
        try:
            self.deadline.left()
        except DeadlineExceeded:
            return True
        return False

    def _unauthorized(self, details) -> StepFailed:
        offered = self.last.get("offered", ())
        if offered:
            details = [*details, ("The server offers", ", ".join(s.capitalize() if s != "ntlm" else "NTLM"
                                                                for s in offered))]
        auth = self.config.auth
        diagnostics = self.last.get("diagnostics", "")
        if isinstance(auth, BearerAuth) and "no permissions" in diagnostics:
            details = [*details, ("Exchange says", "the token contains no permissions")]
            if self.app_only:
                return StepFailed("Exchange refused the app's token: it carries no permission, so nobody has granted "
                                  "admin consent yet (401 Unauthorized)",
                                  "a tenant administrator grants admin consent to the app's full_access_as_app "
                                  "permission (save the server, then Grant admin consent on its page), then try again",
                                  details, code=401, credentials=True)
            return StepFailed("Exchange refused the token: it carries no permission (401 Unauthorized)",
                              "ask for EWS.AccessAsUser.All in the scope and authorize again", details, code=401,
                              credentials=True)
        if isinstance(auth, BearerAuth):
            if is_exchange_online(self.url):
                hint = ("re-authorize. The token must be for Exchange Online of this cloud: the default scope "
                        "(EWS.AccessAsUser.All delegated, /.default app-only, of outlook.office365.com or your "
                        "cloud's Exchange)")
            else:
                hint = ("re-authorize. An Exchange on premises takes OAuth tokens only when it is set up for them "
                        "(hybrid modern authentication), for its own address as the resource; otherwise use Basic "
                        "or NTLM")
            return StepFailed("Exchange refused the access token (401 Unauthorized)", hint, details, code=401,
                              credentials=True)
        used = NTLM if self.auth_used == NTLM or auth.mechanism == "ntlm" else BASIC
        if used == BASIC and offered and "basic" not in offered and {"ntlm", "negotiate"} & set(offered):
            hint = "the server does not take Basic: choose the mechanism “NTLM” (or Automatic)"
        else:
            hint = ("check the username and the password; Exchange on premises usually wants DOMAIN\\user or "
                    "user@domain, and the account may be locked or its password expired")
        return StepFailed(f"Exchange refused the sign-in of {auth.username} with {_auth_label(used)} "
                          "(401 Unauthorized)", hint, details, code=401, credentials=True)

    def _forbidden(self, details) -> StepFailed:
        diagnostics = self.last.get("diagnostics", "")
        if diagnostics:
            reason = re.search(r'reason="([^"]*)"', diagnostics)
            details = [*details, ("Exchange says", _short(reason.group(1) if reason else diagnostics))]
        if isinstance(self.config.auth, BearerAuth) and ("scope" in diagnostics.lower() or "2000008" in diagnostics):
            hint = ("app-only: grant the app the Office 365 Exchange Online application permission full_access_as_app "
                    "with admin consent" if self.app_only else
                    "delegated: ask for the scope https://outlook.office365.com/EWS.AccessAsUser.All and "
                    "authorize again")
            return StepFailed("the token may not use EWS (403 Forbidden: not enough scope)", hint, details, code=403,
                              credentials=True)
        if is_exchange_online(self.url):
            return StepFailed("Exchange Online refuses EWS for this organization (403 Forbidden): Microsoft has been "
                              "blocking EWS in Exchange Online since October 2026", GRAPH_HINT, details, code=403)
        return StepFailed("Exchange refused access to EWS (403 Forbidden)",
                          "on premises, EWS may be turned off for this account or by an access policy (ask the "
                          "Exchange admin: Set-CASMailbox -EwsEnabled); if this server is in fact Exchange Online, "
                          "EWS is blocked there since October 2026: " + GRAPH_HINT, details, code=403)

    def _response_error(self, error, details, status) -> StepFailed:
        code = type(error).__name__
        text = _short(str(error))
        details = [*details, ("EWS response", f"{code}: {text}" if text else code)]
        http_code = status if status and status != 200 else None
        mailbox = self.mailbox
        known = {
            "ErrorNonExistentMailbox": (f"Exchange has no mailbox {mailbox} ({code})",
                                        "check the mailbox's address: its primary SMTP address", False),
            "ErrorNameResolutionNoResults": (f"Exchange knows no mailbox {mailbox} ({code})",
                                             "check the mailbox's address: its primary SMTP address", False),
            "ErrorNameResolutionNoMailbox": (f"{mailbox} has no mailbox on this Exchange ({code})",
                                             "enter the address of a mailbox on this server", False),
            "ErrorSendAsDenied": (f"{_who(self.config)} may not send as {self.config.sender.address} ({code})",
                                  "make the From address the mailbox's own address, or give the account “Send As” "
                                  "on that mailbox (Exchange admin center: mailbox delegation)", False),
            "ErrorImpersonateUserDenied": (f"{_who(self.config)} may not impersonate {mailbox} ({code})",
                                           "app-only: grant full_access_as_app with admin consent (and check an "
                                           "application access policy); on premises: the ApplicationImpersonation "
                                           "role", False),
            "ErrorImpersonationDenied": (f"{_who(self.config)} may not impersonate {mailbox} ({code})",
                                         "grant the impersonation right (app-only: full_access_as_app)", False),
            "ErrorImpersonationFailed": (f"impersonating {mailbox} failed ({code})",
                                         "check the mailbox's address; Exchange needs X-AnchorMailbox to name it "
                                         "(Mailroom sends it)", True),
            "ErrorInvalidExchangeImpersonationHeaderData": (
                f"Exchange refused the impersonation header ({code})",
                "app-only tokens must impersonate the mailbox and delegated tokens must not: check that the flow "
                "under Authentication matches the app's permissions (delegated EWS.AccessAsUser.All or app-only "
                "full_access_as_app)", True),
            "ErrorAccessDenied": (f"{_who(self.config)} may not use the mailbox {mailbox} ({code})",
                                  "an application access policy (or RBAC for Applications) in Exchange keeps the app "
                                  "from this mailbox: the Exchange admin adds the mailbox to it" if self.app_only else
                                  f"use the mailbox's own account, or have the Exchange admin give "
                                  f"{_account(self.config)} Full Access on {mailbox} (Add-MailboxPermission)", True),
            "ErrorAccountDisabled": (f"the account is disabled ({code})", "enable the account, or use another one",
                                     True),
            "ErrorQuotaExceeded": (f"the mailbox {mailbox} is full ({code})",
                                   "free space in the mailbox (Sent Items, Deleted Items) or raise its quota", True),
            "ErrorMessageSizeExceeded": (f"the message is larger than Exchange accepts ({code})",
                                         "send a smaller message", False),
            "ErrorInvalidRecipients": (f"Exchange refused the recipients ({code})", "check the recipients", False),
            "ErrorInvalidServerVersion": (f"Exchange accepts none of the EWS versions tried ({code})",
                                          "choose the Exchange version “Automatic”", True),
            "ErrorMailboxStoreUnavailable": (f"the mailbox database is not available ({code})",
                                             "try again later; the Exchange admin can check the database", True),
            "ErrorMailboxMoveInProgress": (f"the mailbox is being moved ({code})", "try again later", True),
        }
        if code in known:
            summary, hint, temporary = known[code]
            # A right only an admin can grant, or a mailbox the settings name wrongly: every message would fail the
            # same way until someone fixes the server's side, so the delivery queue holds the mail.
            return StepFailed(summary, hint, details, code=http_code, temporary=temporary,
                              credentials=code in ADMIN_FIXES)
        if status and status >= 500:
            return StepFailed(f"Exchange answered with a SOAP fault: {code}{': ' + text if text else ''}",
                              "try again later; if it persists, the Exchange admin can look it up in the server's "
                              "logs (a fixed Exchange version may also not match the server: try “Automatic”)",
                              details, code=status)
        return StepFailed(f"Exchange answered {code}{': ' + text if text else ''}",
                          "see the EWS requests below; if it persists, ask the Exchange admin", details,
                          code=http_code)

    def _sign_in_details(self) -> list[tuple[str, str]]:
        auth = self.config.auth
        details = []
        if isinstance(auth, PasswordAuth):
            details.append(("Username", auth.username))
            if self.auth_used == NTLM and auth.mechanism != "ntlm":
                details.append(("Method", "NTLM (the server does not take Basic)"))
        else:
            details.append(("Token", "app-only, impersonating the mailbox" if self.app_only else "delegated"))
        protocol = self.protocols[-1] if self.protocols else None
        version = protocol.config.version if protocol is not None else None
        if version is not None and version.build is not None:
            with suppress(Exception):
                details.append(("Exchange", f"{version.fullname} (build {version.build}, EWS {version.api_version})"))
        return details


ADMIN_FIXES = frozenset({"ErrorNonExistentMailbox", "ErrorNameResolutionNoResults", "ErrorNameResolutionNoMailbox",
                         "ErrorSendAsDenied", "ErrorImpersonateUserDenied", "ErrorImpersonationDenied",
                         "ErrorAccessDenied", "ErrorAccountDisabled", "ErrorInvalidExchangeImpersonationHeaderData"})
MAILBOX_ERRORS = (ews.ErrorNonExistentMailbox, ews.ErrorNameResolutionNoResults, ews.ErrorNameResolutionNoMailbox,
                  ews.ErrorImpersonateUserDenied, ews.ErrorImpersonationDenied, ews.ErrorImpersonationFailed)


# --- exchangelib, confined to this call ----------------------------------------------------------------------

class EwsProtocol(Protocol):
    """exchangelib's Protocol for one check or send, or for a connection's messages one after the other (api.Kept):
    never in exchangelib's cache, every session through the egress adapter, under the deadline of the call
    under way. Its pool holds one session (max_connections=1), whose requests go one after the other, so over
    one kept-alive connection while the server keeps it open."""

    call: EwsCall
    accounts: dict[tuple[str, str], Account]

    @classmethod
    def for_call(cls, call: EwsCall, configuration: Configuration) -> "EwsProtocol":
        protocol = cls.__new__(cls)  # not cls(...): CachingProtocol would keep it, with the password, for the process
        Protocol.__init__(protocol, config=configuration)
        protocol.call = call
        protocol.accounts = {}  # (mailbox, access type) -> its Account: EwsCall.account
        protocol.TIMEOUT = max(call.config.timeout, 1)  # each request gets only what is left of the deadline anyway
        return protocol

    def take_over(self, call: EwsCall) -> "EwsProtocol":
        """The next message's call uses this (kept) protocol: its transcript, its deadline (from the next
        request on: get_session) and, with OAuth, its token (taken from the cache by its Token step)."""
        self.call = call
        if isinstance(self.credentials, TokenCredentials):
            self.credentials.access_token = {"access_token": call.token, "token_type": "Bearer"}
        return self

    def close(self):
        self.__dict__.get("accounts", {}).clear()  # a closed protocol keeps nothing of its mailboxes
        super().close()

    def get_session(self):
        """exchangelib takes a session from the pool for every request: it serves the call under way."""
        session = super().get_session()
        for adapter in session.adapters.values():
            if isinstance(adapter, EwsAdapter):
                adapter.call = self.call
        return http.rebind(session, self.call.deadline)

    def raw_session(self, prefix, oauth2_client=None, oauth2_session_params=None, oauth2_token_endpoint=None):
        session = requests.Session()
        session.trust_env = False  # no proxies or CA bundles from the environment
        session.headers.update(DEFAULT_HEADERS)
        session.headers["User-Agent"] = http.USER_AGENT
        adapter = EwsAdapter(self.call)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        return session

    def create_oauth2_session(self):
        session = self.raw_session(self.service_endpoint)
        session.auth = _Bearer(self.credentials)
        return session


class EwsAdapter(http.EgressAdapter):
    """The egress adapter with the server's own CA, writing the transcript as exchangelib talks."""

    def __init__(self, call: EwsCall):
        super().__init__(call.config.network, call.deadline)
        self.context = call.context
        self.call = call

    def send(self, request, **kwargs):
        self.call.record_request(request)
        try:
            response = super().send(request, **kwargs)
        except Exception as error:
            self.call.last = {}
            if isinstance(error, EgressRefused):
                self.call.report.transcript.append("S: (not sent: the egress policy refuses this address)")
            elif isinstance(error, (DeadlineExceeded, requests.Timeout)):
                self.call.report.transcript.append(f"S: (no answer within {self.call.deadline})")
            else:
                self.call.report.transcript.append(f"S: (no answer: {http.reason(error)})")
            raise
        self.call.observe(request, response)
        return response


class _Bearer(requests.auth.AuthBase):
    def __init__(self, credentials: "TokenCredentials"):
        self.credentials = credentials

    def __call__(self, request):
        token = (self.credentials.access_token or {}).get("access_token")
        if not token:
            raise NoRefresh()
        request.headers["Authorization"] = f"Bearer {token}"
        return request


class NoRefresh(StepFailed):
    def __init__(self):
        super().__init__("the access token ran out during this request",
                         "try again: Mailroom obtains a fresh token before each check or mail (exchangelib may not "
                         "fetch tokens itself)")


class PasswordCredentials(Credentials):
    """Basic/NTLM credentials, equal only to themselves (so exchangelib's cache key is unique to this call)."""
    __eq__ = object.__eq__
    __hash__ = object.__hash__


class TokenCredentials(OAuth2AuthorizationCodeCredentials):
    """The access token of the Token step, and nothing to get another one with."""
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def __init__(self, token: str, identity: Identity | None = None):
        super().__init__(access_token={"access_token": token, "token_type": "Bearer"}, identity=identity)

    def __repr__(self):
        return "TokenCredentials([access_token])"

    def refresh(self, session):
        raise NoRefresh()

    def on_token_auto_refreshed(self, access_token):
        raise NoRefresh()

    def session_params(self):
        return {"token": self.access_token}  # no client id or secret: nothing to refresh with

    @property
    def token_url(self):
        raise NoRefresh()


# --- helpers -------------------------------------------------------------------------------------------------

def mailbox_of(config) -> str:
    """The mailbox mail is sent from: the setting, else the OAuth mailbox, else the From address."""
    if config.settings.mailbox.strip():
        return config.settings.mailbox.strip()
    if isinstance(config.auth, BearerAuth) and "@" in config.auth.username:
        return config.auth.username.strip()
    return config.sender.address


def _who(config) -> str:
    auth = config.auth
    if isinstance(auth, PasswordAuth):
        return f"the account {auth.username}"
    return "the app" if getattr(auth, "app_only", False) else f"the account {auth.username}"


def _account(config) -> str:
    return getattr(config.auth, "username", "") or "the account"


def _auth_label(auth_type: str) -> str:
    return {BASIC: "Basic", NTLM: "NTLM", OAUTH2: "an OAuth 2.0 access token"}.get(auth_type, auth_type or "—")


# OpenSSL's reasons when the other side does not speak TLS at all (plain HTTP, SMTP, ...)
NOT_TLS = frozenset({"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL", "RECORD_LAYER_FAILURE",
                     "PACKET_LENGTH_TOO_LONG", "UNEXPECTED_RECORD", "WRONG_SSL_VERSION"})


def _no_tls(host: str, port: int, error: Exception) -> StepFailed:
    """A failed TLS handshake in one sentence (never OpenSSL's text with its _ssl.c line)."""
    reason = getattr(error, "reason", None) or ""
    if reason in NOT_TLS:
        return StepFailed(f"{host} port {port} does not speak TLS: it is not an HTTPS server (perhaps plain HTTP, "
                          "or another service such as SMTP)",
                          "EWS is HTTPS, usually on port 443: check the Connect URL's host and port", temporary=False)
    if isinstance(error, ssl.SSLError):
        words = reason.replace("_", " ").lower() if reason else "the server closed the connection"
        return StepFailed(f"the TLS handshake with {host} port {port} failed ({words})",
                          "EWS needs HTTPS with a current TLS version: check the address and the port")
    return StepFailed(f"the TLS handshake with {host} port {port} failed ({http.reason(error)})",
                      "EWS needs HTTPS: check the address and the port")


def _throttled(back_off, details, status) -> StepFailed:
    wait = f"{back_off:g} s" if isinstance(back_off, (int, float)) and back_off else ""
    return StepFailed(f"Exchange is throttling this account (ErrorServerBusy){' for ' + wait if wait else ''}",
                      f"try again {'after ' + wait if wait else 'in a few minutes'}: Exchange's throttling policy "
                      "limits how many EWS requests one account may make", details, code=status or None,
                      retry_after=float(back_off) if wait else None, throttled=True)


def _network_cause(error: BaseException) -> BaseException | None:
    """The network failure under an exchangelib error (it re-raises them as TransportError or ErrorTimeoutExpired)."""
    seen, cause = set(), error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, (EgressRefused, DeadlineExceeded, requests.RequestException)):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None


def _schemes(value: str) -> tuple[str, ...]:
    """The schemes a WWW-Authenticate header offers (requests joins several headers with commas):
    'Basic realm="x", Bearer client_id="a, b"' -> ("basic", "bearer")."""
    schemes = []
    for piece in re.sub(r'"(?:[^"\\]|\\.)*"', '""', value or "").split(","):
        word = piece.strip().split(" ", 1)[0]
        if word and "=" not in word:
            schemes.append(word.lower())
    return tuple(dict.fromkeys(schemes))


def _short(text) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= TEXT_LIMIT else text[:TEXT_LIMIT - 1] + "…"
