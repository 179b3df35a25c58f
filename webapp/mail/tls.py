"""TLS: the context we connect with, and what a handshake showed about the connection
and the server's certificate."""
import ssl
from datetime import datetime

from cryptography import x509

from .config import SmtpSettings
from .report import Outcome, Step
from .smtp_session import StepFailed, step_result


def tls_context(settings: SmtpSettings) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if settings.ca_cert.strip():
        try:
            context.load_verify_locations(cadata=settings.ca_cert)
        except (ssl.SSLError, ValueError):
            raise StepFailed("the CA certificate could not be read",
                             "paste the CA certificate in PEM form "
                             "(-----BEGIN CERTIFICATE----- ...)") from None
    if not settings.verify_cert:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def handshake_result(sock: ssl.SSLSocket, settings: SmtpSettings) -> Step:
    name, _, bits = sock.cipher()
    details = [("TLS version", sock.version()), ("Cipher", f"{name} ({bits} bits)")]
    der = sock.getpeercert(binary_form=True)
    cert = x509.load_der_x509_certificate(der) if der else None
    details += certificate_details(cert)
    if settings.verify_cert:
        details.append(("Verification", "verified: trusted issuer, name matches"))
        return step_result(f"encrypted with {sock.version()}; the certificate is valid", details)
    details.append(("Verification", "not verified (disabled)"))
    return step_result(f"encrypted with {sock.version()}, but the certificate was not verified",
                       details, Outcome.WARNING,
                       hint="turn verification on (add the CA certificate if needed): "
                            "without it, anyone in between can read the password")


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
