"""SMTP/SMTPS: STARTTLS, implicit TLS or none; Basic authentication (PLAIN, LOGIN, CRAM-MD5, NTLM)."""
from .settings import DEFAULT_PORTS, MECHANISM_LABELS, SECURITY_LABELS, Mechanism, Security, SmtpSettings, default_port
from .transport import SmtpTransport

__all__ = ["DEFAULT_PORTS", "MECHANISM_LABELS", "SECURITY_LABELS", "Mechanism", "Security", "SmtpSettings",
           "SmtpTransport", "default_port"]
