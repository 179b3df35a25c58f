"""SMTP AUTH NTLM as Exchange does it (MS-SMTPNTLM and its example exchange): "AUTH NTLM", a 334 that only
says NTLM is supported, the client's NEGOTIATE, the server's CHALLENGE in a 334, the client's AUTHENTICATE,
then 235 or 535. The NTLM messages are pyspnego's (its own NTLM implementation, not the system's GSSAPI), so the
password never crosses the wire, only an NTLMv2 response to the server's challenge.

Kerberos (GSSAPI) is not offered: it needs a ticket from a KDC or a keytab on this machine, which
Mailroom does not manage.
"""
import base64
import binascii


from ..auth import PasswordAuth
from ..report import StepFailed
from .session import Rejected, Session

MECHANISM = "NTLM"


def sign_in(s: Session, auth: PasswordAuth) -> tuple[int, bytes]:
    """The whole exchange; returns the server's last reply (235 on success). The client's lines are
    recorded as redacted (client.py: every line answering a 334)."""
    import spnego  # pyspnego: imported by the first NTLM sign-in, not with the app
    from spnego.exceptions import SpnegoError

    code, text = s.client.docmd("AUTH", MECHANISM)
    if code != 334:
        return code, text
    try:
        context = spnego.client(auth.username, auth.password, hostname=s.settings.host.strip() or "unspecified",
                                service="SMTP", protocol="ntlm", options=spnego.NegotiateOptions.use_ntlm)
        negotiate = context.step()
    except (SpnegoError, ValueError) as exc:
        _cancel(s)
        raise StepFailed(f"NTLM could not start: {exc}", "check the username (DOMAIN\\user or user@domain)") from None
    code, text = s.client.docmd(_b64(negotiate))
    if code != 334:
        return code, text
    try:
        challenge = base64.b64decode(text.strip(), validate=True)
        answer = context.step(challenge)
    except (binascii.Error, ValueError, SpnegoError):
        _cancel(s)
        raise StepFailed("the server's NTLM challenge could not be read",
                         "the server may not speak NTLM as Exchange does; choose another mechanism") from None
    if not answer:
        _cancel(s)
        raise StepFailed("the server's NTLM challenge could not be answered",
                         "choose another mechanism")
    return s.client.docmd(_b64(answer))


def _cancel(s: Session) -> None:
    """RFC 4954 4: a "*" line cancels the exchange; the server answers 501."""
    try:
        s.client.docmd("*")
    except OSError:
        pass


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


__all__ = ["MECHANISM", "Rejected", "sign_in"]
