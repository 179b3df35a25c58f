"""TLS: the context we connect with, and what a handshake showed about the connection
and the server's certificate.

Contexts are built once per (verify, CA certificates) and reused: building one loads
the system's CA bundle, which costs far more than the handshake itself. An SSLContext
is safe to share between threads.
"""
import ssl
from datetime import datetime
from functools import lru_cache

from cryptography import x509

from .report import Outcome, Step, StepFailed, step_result


def tls_context(verify: bool = True, ca_pem: str = "", extra_ca_pem: str = "", client_cert=None,
                watched: bool = False) -> ssl.SSLContext:
    """The client context for these settings. `ca_pem` is the server's own CA certificate (its
    settings), `extra_ca_pem` the CA certificates the whole app trusts (EXTRA_CA_CERTS). With a
    `client_cert` (client_cert.ClientCertificate) the context is built for this connection alone.
    `watched`: its handshakes note whether the server asked for a client certificate (SMTP)."""
    ca_pem, extra_ca_pem = ca_pem.strip() if verify else "", extra_ca_pem.strip() if verify else ""
    if client_cert is None:
        return _context(verify, ca_pem, extra_ca_pem, watched)
    context = _build(verify, ca_pem, extra_ca_pem, True)
    try:
        client_cert.load_into(context)
    except (ssl.SSLError, ValueError, TypeError):
        raise StepFailed("the client certificate and its key could not be loaded",
                         "upload the certificate file again (PEM with its key, or PKCS#12)") from None
    return context


@lru_cache(maxsize=64)
def _context(verify: bool, ca_pem: str, extra_ca_pem: str, watched: bool) -> ssl.SSLContext:
    return _build(verify, ca_pem, extra_ca_pem, watched)


def _build(verify: bool, ca_pem: str, extra_ca_pem: str, watched: bool) -> ssl.SSLContext:
    from .client_cert import watch

    context = ssl.create_default_context()
    if watched:
        watch(context)  # which certificate messages the handshake carried (client_cert.handshake_of)
    for pem, what in ((extra_ca_pem, "The CA certificates configured for the app (EXTRA_CA_CERTS)"),
                      (ca_pem, "The CA certificate")):
        if pem:
            try:
                context.load_verify_locations(cadata=pem)
            except (ssl.SSLError, ValueError, TypeError):
                raise StepFailed(f"{what} could not be read",
                                 "paste the CA certificate in PEM form "
                                 "(-----BEGIN CERTIFICATE----- ...)") from None
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def handshake_result(sock: ssl.SSLSocket, verified: bool) -> Step:
    name, _, bits = sock.cipher()
    details = [("TLS version", sock.version()), ("Cipher", f"{name} ({bits} bits)")]
    details += _details_of_der(sock.getpeercert(binary_form=True) or b"")
    if verified:
        details.append(("Verification", "verified: trusted issuer, name matches"))
        return step_result(f"encrypted with {sock.version()}; the certificate is valid", details)
    details.append(("Verification", "not verified (disabled)"))
    return step_result(f"encrypted with {sock.version()}, but the certificate was not verified",
                       details, Outcome.WARNING,
                       hint="turn verification on (add the CA certificate if needed): "
                            "without it, anyone in between can read the password")


@lru_cache(maxsize=256)
def _details_of_der(der: bytes) -> tuple[tuple[str, str], ...]:
    """A server's certificate read once per process, not at every handshake."""
    return tuple(certificate_details(x509.load_der_x509_certificate(der) if der else None))


def certificate_details(cert: x509.Certificate | None) -> list[tuple[str, str]]:
    if cert is None:
        return [("Certificate", "none presented")]
    return [("Certificate subject", cert.subject.rfc4514_string()),
            ("Certificate names", ", ".join(certificate_names(cert))),
            ("Issuer", cert.issuer.rfc4514_string()),
            ("Valid from", format_utc(cert.not_valid_before_utc)),
            ("Expires", format_utc(cert.not_valid_after_utc))]


def certificate_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = san.get_values_for_type(x509.DNSName)
        names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names = []
    common = [a.value for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    return names or [str(name) for name in common] or ["(no names)"]


def format_utc(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")
