"""Field validators shared by the forms."""
import ipaddress
import re

from email_validator import EmailNotValidError, validate_email
from wtforms.validators import ValidationError

_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$", re.IGNORECASE)


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
    if _is_ip(value.strip("[]")):
        return
    try:
        ascii_name = value.rstrip(".").encode("idna").decode()
    except UnicodeError:
        raise ValidationError("This is not a valid server name.") from None
    if ":" in value:
        raise ValidationError("Enter the port in the Port field, not after the server name.")
    if not all(_LABEL.match(label) for label in ascii_name.split(".")):
        raise ValidationError("This is not a valid server name: use letters, digits, hyphens and dots.")


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def email_address(_form, field) -> None:
    """An address email-validator accepts (internationalized ones too); stored normalized."""
    if not field.data:
        return
    try:
        field.data = validate_email(field.data, check_deliverability=False, allow_smtputf8=True).normalized
    except EmailNotValidError as error:
        raise ValidationError(str(error)) from None


def slug(_form, field) -> None:
    if not re.fullmatch(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", field.data or ""):
        raise ValidationError("Use lowercase letters, digits and hyphens (e.g. help-desk).")


def base_url(_form, field) -> None:
    value = field.data or ""
    if value and not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value):
        raise ValidationError("Enter an address such as https://help.example.com.")


def pem_certificates(_form, field) -> None:
    if not field.data:
        return
    from cryptography.x509 import load_pem_x509_certificates

    try:
        load_pem_x509_certificates(field.data.encode())
    except ValueError:
        raise ValidationError("Paste one or more certificates in PEM form (-----BEGIN CERTIFICATE-----).") from None
