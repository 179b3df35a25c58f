"""Field validators shared by the forms."""
import ipaddress
import re
from functools import lru_cache

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from wtforms.validators import ValidationError

from ..addresses import LABEL, normalize_address
from ..mail.urls import url_problem


def hostname(_form, field) -> None:
    """A DNS name (IDN allowed) or an IP address; no scheme, port, path or spaces."""
    value = field.data or ""
    if not value:
        return
    if any(ch.isspace() for ch in value):
        raise ValidationError("A server name cannot contain spaces.")
    if "://" in value or "/" in value:
        raise ValidationError("Enter only the server name, without smtp:// or a path (e.g. smtp.example.com).")
    if len(value) > 253:
        raise ValidationError("A server name has at most 253 characters.")
    literal = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    if _is_ip(literal):
        return
    try:
        ascii_name = value.rstrip(".").encode("idna").decode()
    except UnicodeError:
        raise ValidationError("This is not a valid server name.") from None
    if ":" in value:
        raise ValidationError("Enter the port in the Port field, not after the server name.")
    if not all(LABEL.match(label) for label in ascii_name.split(".")):
        raise ValidationError("This is not a valid server name: use letters, digits, hyphens and dots.")


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def email_address(_form, field) -> None:
    """An address (internationalized ones too), stored normalized. Intranet and special-use
    domains (relay.local, host.internal, x.test, localhost) are addresses too."""
    if not field.data:
        return
    try:
        field.data = normalize_address(field.data)
    except ValueError as error:
        raise ValidationError(str(error)) from None


def slug(_form, field) -> None:
    if not re.fullmatch(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", field.data or ""):
        raise ValidationError("Use lowercase letters, digits and hyphens (e.g. help-desk).")


def base_url(_form, field) -> None:
    value = field.data or ""
    if value and (url_problem(value, ("https", "http")) or "?" in value):
        raise ValidationError("Enter an address such as https://help.example.com.")


def pem_certificates(_form, field) -> None:
    """One or more certificates, stored as clean PEM (anything around the blocks dropped)."""
    if field.data:
        field.data = _clean_pem(field.data)


@lru_cache(maxsize=32)  # a pasted CA bundle may be large: a few kept
def _clean_pem(text: str) -> str:
    """The certificates of `text` as clean PEM, read once per process (a server's CA certificate comes
    with every Validate and section swap); ValidationError when they cannot be read."""
    try:
        certificates = x509.load_pem_x509_certificates(text.encode())
    except ValueError:
        raise ValidationError("Paste one or more certificates in PEM form (-----BEGIN CERTIFICATE-----).") from None
    if len(certificates) != text.count("-----BEGIN CERTIFICATE-----"):
        raise ValidationError("One of the certificates is cut off or damaged: paste each one whole.")
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certificates).strip()


def https_url(_form, field) -> None:
    """An https:// address (tokens and secrets never travel in the clear) that a request can use;
    http:// only for a server on this machine (localhost, a loopback address)."""
    problem = url_problem(field.data or "")
    if problem:
        raise ValidationError(f"Enter an https:// address: {problem}.")


def tls_only_url(_form, field) -> None:
    """An https:// address, even on this machine (the transport checks the server's TLS itself)."""
    if (field.data or "").lower().startswith("http://"):
        raise ValidationError("Enter an https:// address: this protocol is used over TLS only.")
    https_url(_form, field)
