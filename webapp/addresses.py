"""Email addresses and host names as Mailroom accepts them, for the forms and for the code that takes
addresses from elsewhere (the API, the command line, checks). email-validator (whose import compiles its
grammar's regular expressions) is imported by the first address checked, not by the commands that check none."""
import re
from functools import lru_cache

LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$", re.IGNORECASE)


@lru_cache(maxsize=4096)
def normalize_address(value: str) -> str:
    """ValueError with the reason when `value` cannot be an email address. (Addresses recur: each is
    read once per process.)"""
    from email_validator import EmailNotValidError, validate_email

    try:
        return validate_email(value, check_deliverability=False, allow_smtputf8=True,
                              globally_deliverable=False).normalized
    except EmailNotValidError as error:
        local, at, domain = value.rpartition("@")
        if not (local and at and domain) or not is_host_name(domain):
            raise ValueError(str(error)) from None
    try:  # a domain email-validator refuses only for being special-use: check the local part alone
        checked = validate_email(f"{local}@example.com", check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError as error:
        raise ValueError(str(error)) from None
    return f"{checked.local_part}@{domain.rstrip('.').lower()}"


def is_host_name(value: str) -> bool:
    try:
        ascii_name = value.rstrip(".").encode("idna").decode()
    except UnicodeError:
        return False
    return 0 < len(ascii_name) <= 253 and all(LABEL.match(label) for label in ascii_name.split("."))
