"""S/MIME: sign a message with the server's certificate and key, encrypt it to its recipients'
certificates (RFC 8551), with the `cryptography` package's PKCS#7 builders. No Flask in here.

What is protected is the message's content: its Content-* fields and body become the inner
entity (signed as multipart/signed with a detached signature, then, when encrypting, enveloped
as application/pkcs7-mime); every other field (From, To, Subject, Date, Message-ID, Bcc, the
headers a transport or the message options add) stays on the outer message, where S/MIME
never reaches. So a transport applies it as the last step, to the very bytes it hands over.

Failures are StepFailed in words and never temporary: a message that may not be signed or
encrypted fails for good (no other server is tried, so it is never sent in clear by surprise).
"""
import hashlib
from email import encoders
from email import message_from_bytes
from email import policy as email_policy
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .report import Step, StepFailed, step_result

MAX_FILE_BYTES = 100_000  # a certificate, a key or a PKCS#12 file


class HashAlgorithm(StrEnum):
    SHA256 = "sha256"
    SHA384 = "sha384"
    SHA512 = "sha512"


class Cipher(StrEnum):
    AES128 = "aes128-cbc"
    AES256 = "aes256-cbc"


HASH_LABELS = {HashAlgorithm.SHA256: "SHA-256", HashAlgorithm.SHA384: "SHA-384", HashAlgorithm.SHA512: "SHA-512"}
CIPHER_LABELS = {Cipher.AES128: "AES-128-CBC", Cipher.AES256: "AES-256-CBC"}
_HASHES = {HashAlgorithm.SHA256: hashes.SHA256, HashAlgorithm.SHA384: hashes.SHA384,
           HashAlgorithm.SHA512: hashes.SHA512}
_CIPHERS = {Cipher.AES128: algorithms.AES128, Cipher.AES256: algorithms.AES256}


@dataclass(frozen=True)
class SmimeSettings:
    """A server's S/MIME settings as stored (`MailServer.smime`); the key is a ServerSecret."""
    sign: bool = False
    hash: str = HashAlgorithm.SHA256.value
    attach_certificate: bool = True
    encrypt: bool = False
    algorithm: str = Cipher.AES256.value
    certificate: str = ""  # the signing certificate (PEM, public): what the page shows it by
    chain: str = ""  # the certificates that came with it in a PKCS#12 file (PEM), attached with it

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "SmimeSettings":
        values = values or {}
        hash_ = str(values.get("hash") or HashAlgorithm.SHA256.value)
        algorithm = str(values.get("algorithm") or Cipher.AES256.value)
        return cls(sign=bool(values.get("sign")),
                   hash=hash_ if hash_ in HASH_LABELS else HashAlgorithm.SHA256.value,
                   attach_certificate=bool(values.get("attach_certificate", True)),
                   encrypt=bool(values.get("encrypt")),
                   algorithm=algorithm if algorithm in CIPHER_LABELS else Cipher.AES256.value,
                   certificate=str(values.get("certificate") or ""), chain=str(values.get("chain") or ""))

    def to_dict(self) -> dict[str, Any]:
        if not (self.sign or self.encrypt or self.certificate):
            return {}
        return {"sign": self.sign, "hash": self.hash, "attach_certificate": self.attach_certificate,
                "encrypt": self.encrypt, "algorithm": self.algorithm, "certificate": self.certificate,
                "chain": self.chain}

    @property
    def enabled(self) -> bool:
        return self.sign or self.encrypt

    def facts(self) -> "CertificateFacts | None":
        return CertificateFacts.of(x509.load_pem_x509_certificate(self.certificate.encode())) \
            if self.certificate else None


@dataclass(frozen=True)
class CertificateFacts:
    """What a page shows of a certificate."""
    subject: str
    issuer: str
    not_before: datetime
    not_after: datetime
    fingerprint: str  # SHA-256 of the DER, hex
    addresses: tuple[str, ...]

    @classmethod
    def of(cls, certificate: x509.Certificate) -> "CertificateFacts":
        return cls(subject=certificate.subject.rfc4514_string(), issuer=certificate.issuer.rfc4514_string(),
                   not_before=certificate.not_valid_before_utc, not_after=certificate.not_valid_after_utc,
                   fingerprint=hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest(),
                   addresses=addresses_of(certificate))


class SmimeProblem(ValueError):
    """A certificate, key or password that will not do, in words for beside the field."""


@dataclass(frozen=True)
class Signer:
    """The signing certificate with its private key (and the chain a PKCS#12 file brought)."""
    certificate: x509.Certificate
    key: Any = field(repr=False)
    chain: tuple[x509.Certificate, ...] = ()

    def key_pem(self) -> str:
        """The key as unencrypted PKCS#8 PEM: only ever stored sealed (credentials.seal)."""
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()).decode("ascii")

    def certificate_pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")

    def chain_pem(self) -> str:
        return "".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in self.chain)

    @classmethod
    def from_stored(cls, settings: SmimeSettings, key_pem: str) -> "Signer":
        certificate = x509.load_pem_x509_certificate(settings.certificate.encode())
        chain = tuple(x509.load_pem_x509_certificates(settings.chain.encode())) if settings.chain else ()
        return cls(certificate, serialization.load_pem_private_key(key_pem.encode(), None), chain)


def load_signer(certificate_file: bytes, password: str = "", key_file: bytes | None = None,
                now: datetime | None = None) -> Signer:
    """A PKCS#12 file (certificate_file alone), or a PEM certificate and a PEM key (key_file), each
    opened with the password; SmimeProblem in words when it will not do for signing today."""
    secret = password.encode("utf-8") if password else None
    if key_file is None:
        signer = _from_pkcs12(certificate_file, secret)
    else:
        certificate = load_certificate(certificate_file)
        signer = Signer(certificate, _pem_key(key_file, secret))
    check_signer(signer, now)
    return signer


def _from_pkcs12(data: bytes, password: bytes | None) -> Signer:
    if data.lstrip().startswith(b"-----BEGIN"):
        raise SmimeProblem("This is a PEM file, not PKCS#12: choose “PEM certificate and key” and add the key file.")
    try:
        loaded = pkcs12.load_pkcs12(data, password)
    except ValueError as error:
        if "password" in str(error).lower() or "mac" in str(error).lower():
            if not password:
                raise SmimeProblem("This PKCS#12 file is protected by a password: type it.") from None
            raise SmimeProblem("The password does not open this PKCS#12 file: type the password it was exported "
                               "with.") from None
        raise SmimeProblem("This is not a PKCS#12 file (.p12 / .pfx) Mailroom can read.") from None
    except TypeError:
        raise SmimeProblem("This PKCS#12 file is protected by a password: type it.") from None
    if loaded.cert is None or loaded.key is None:
        raise SmimeProblem("This PKCS#12 file holds no certificate with its private key: export the signing "
                           "certificate together with its private key.")
    return Signer(loaded.cert.certificate, loaded.key, tuple(c.certificate for c in loaded.additional_certs))


def _pem_key(data: bytes, password: bytes | None):
    try:
        return serialization.load_pem_private_key(data, password)
    except TypeError as error:
        if "not encrypted" in str(error):
            return serialization.load_pem_private_key(data, None)  # a password typed for a plain key: not needed
        raise SmimeProblem("The private key is protected by a password: type it.") from None
    except ValueError as error:
        if "password" in str(error).lower() or "decrypt" in str(error).lower():
            raise SmimeProblem("The password does not open this private key: type the password it was saved "
                               "with.") from None
        raise SmimeProblem("This is not a private key in PEM (“-----BEGIN PRIVATE KEY-----” or “-----BEGIN "
                           "ENCRYPTED PRIVATE KEY-----”).") from None
    except Exception:  # noqa: BLE001 - cryptography reports unsupported keys in several ways
        raise SmimeProblem("This private key cannot be read (an unsupported kind of key?).") from None


def load_certificate(data: bytes) -> x509.Certificate:
    """A certificate in PEM or DER; SmimeProblem otherwise."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            found = x509.load_pem_x509_certificates(data)
            if len(found) != 1:
                raise ValueError
            return found[0]
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise SmimeProblem("This is not a certificate in PEM or DER (one certificate per file).") from None


def check_signer(signer: Signer, now: datetime | None = None) -> None:
    """SmimeProblem unless the key belongs to the certificate and the certificate is valid today."""
    certificate, key = signer.certificate, signer.key
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise SmimeProblem("S/MIME signing takes an RSA or EC key; this is another kind of key.")
    if key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) != \
            certificate.public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo):
        raise SmimeProblem("The private key does not belong to this certificate: choose the key that was created "
                           "with it.")
    validity = validity_problem(certificate, now)
    if validity:
        raise SmimeProblem(f"The signing certificate {validity}: upload a current one.")


def validity_problem(certificate: x509.Certificate, now: datetime | None = None) -> str:
    """"expired on …" / "is valid only from …", or "" when it is valid now."""
    now = now or datetime.now(timezone.utc)
    if certificate.not_valid_after_utc < now:
        return f"expired on {certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    if certificate.not_valid_before_utc > now:
        return f"is valid only from {certificate.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
    return ""


def load_recipient_certificate(data: bytes, now: datetime | None = None) -> x509.Certificate:
    """A recipient's certificate to encrypt to: PEM or DER, an RSA key (the only kind cryptography's
    envelope builder encrypts to), valid today."""
    certificate = load_certificate(data)
    if not isinstance(certificate.public_key(), rsa.RSAPublicKey):
        raise SmimeProblem("Mailroom encrypts to RSA certificates only (cryptography's PKCS#7 envelope builder "
                           "takes no other kind); this certificate has another kind of key.")
    validity = validity_problem(certificate, now)
    if validity:
        raise SmimeProblem(f"This certificate {validity}.")
    return certificate


def addresses_of(certificate: x509.Certificate) -> tuple[str, ...]:
    """The mail addresses a certificate names (subjectAltName rfc822Name, else the subject's emailAddress)."""
    found: list[str] = []
    try:
        found += certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
            .get_values_for_type(x509.RFC822Name)
    except x509.ExtensionNotFound:
        pass
    if not found:
        found += [str(a.value) for a in certificate.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS)]
    return tuple(dict.fromkeys(address.strip().lower() for address in found if address.strip()))


def allows_email_protection(certificate: x509.Certificate) -> bool:
    """No extended key usage, or one that includes emailProtection (RFC 8550 4.4.4)."""
    try:
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return ExtendedKeyUsageOID.EMAIL_PROTECTION in usages or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in usages


class CertificateBook(Protocol):
    """Where the recipients' certificates are found (the portal's S/MIME certificates)."""

    def certificates(self, addresses: Iterable[str]) -> dict[str, list[x509.Certificate]]: ...


@dataclass(frozen=True)
class Smime:
    """What a transport needs to protect a server's mail."""
    settings: SmimeSettings
    signer: Signer | None = None
    book: CertificateBook | None = None


Run = Callable[[str, Callable[[], Step]], Any]
STEP = "S/MIME"


def protected(run: Run, smime: "Smime | None", raw: bytes, recipients: Iterable[str]) -> bytes:
    """The bytes to hand over: `raw` signed and/or encrypted in a step of the transport's runner
    (`run(name, action)`), or `raw` itself when the server has no S/MIME."""
    if smime is None or not smime.settings.enabled:
        return raw
    result: list[bytes] = []

    def action() -> Step:
        data, step = protect(smime, raw, tuple(recipients))
        result.append(data)
        return step
    run(STEP, action)
    return result[0]


def protect(smime: Smime, raw: bytes, recipients: tuple[str, ...], now: datetime | None = None) -> tuple[bytes, Step]:
    """(the protected message, a Step saying what was done); StepFailed (never temporary) when it may not be."""
    settings, done, details = smime.settings, [], []
    outer, inner = split_content(raw)
    if settings.sign:
        signer = smime.signer
        if signer is None:
            raise StepFailed("signing is on but no signing certificate and key are stored",
                             "upload the signing certificate and key in the server's S/MIME settings",
                             temporary=False)
        validity = validity_problem(signer.certificate, now)
        if validity:
            raise StepFailed(f"the signing certificate {validity}: the message was not sent",
                             "upload a current signing certificate in the server's S/MIME settings, or turn "
                             "signing off", temporary=False)
        inner = sign(seven_bit(inner), signer, settings)
        done.append(f"signed ({HASH_LABELS[HashAlgorithm(settings.hash)]}"
                    f"{', certificate attached' if settings.attach_certificate else ''})")
        details.append(("Signed by", signer.certificate.subject.rfc4514_string()))
    if settings.encrypt:
        certificates = _recipient_certificates(smime, recipients, now)
        inner = encrypt(inner, certificates, settings)
        done.append(f"encrypted ({CIPHER_LABELS[Cipher(settings.algorithm)]}) to {len(recipients)} recipient(s)")
        details.append(("Encrypted to", ", ".join(recipients)))
    return outer + inner, step_result(" and ".join(done), details)


def _recipient_certificates(smime: Smime, recipients: tuple[str, ...], now) -> list[x509.Certificate]:
    if not recipients:
        raise StepFailed("the message has no recipients to encrypt to", "add at least one To, Cc or Bcc address",
                         temporary=False)
    found = smime.book.certificates(recipients) if smime.book is not None else {}
    chosen, missing, expired = [], [], []
    for address in recipients:
        usable = [c for c in found.get(address.lower(), []) if not validity_problem(c, now)]
        if usable:
            chosen.append(max(usable, key=lambda c: c.not_valid_after_utc))
        elif found.get(address.lower()):
            expired.append(address)
        else:
            missing.append(address)
    if missing or expired:
        why = "; ".join(part for part in (
            f"no S/MIME certificate for {', '.join(missing)}" if missing else "",
            f"only expired or not yet valid certificates for {', '.join(expired)}" if expired else "") if part)
        raise StepFailed(f"encryption is on, and {why}: the message was not sent (never in clear)",
                         "upload the recipients' certificates under S/MIME certificates, then send the message "
                         "again; or turn encryption off for this server", temporary=False)
    return chosen


def split_content(raw: bytes) -> tuple[bytes, bytes]:
    """(the outer fields without MIME-Version, the inner entity: the Content-* fields and the body)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    outer, inner, current = [], [], None
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and current is not None:
            current.append(line)
            continue
        name = line.split(b":", 1)[0].strip().lower()
        current = inner if name.startswith(b"content-") else None if name == b"mime-version" else outer
        if current is not None:
            current.append(line)
    outer_bytes = b"".join(line + b"\r\n" for line in outer)
    return outer_bytes, b"".join(line + b"\r\n" for line in inner) + b"\r\n" + body


def seven_bit(entity: bytes) -> bytes:
    """The entity with every 8bit or binary part re-encoded (text as quoted-printable, the rest as
    base64), as RFC 8551 3.1.3 asks of signed content: a relay that converts 8bit on the way would
    break the signature. A 7-bit entity is returned as it is, byte for byte."""
    if entity.isascii() and b"\0" not in entity and max(map(len, entity.split(b"\r\n"))) <= 998:
        return entity
    parsed = message_from_bytes(entity, policy=email_policy.compat32)
    for part in parsed.walk():
        if part.is_multipart() or (part.get("Content-Transfer-Encoding") or "7bit").strip().lower() not in (
                "8bit", "binary", "7bit"):
            continue
        payload = part.get_payload(decode=True) or b""
        if payload.isascii() and b"\0" not in payload and all(len(line) <= 998 for line in payload.splitlines()):
            continue
        del part["Content-Transfer-Encoding"]
        (encoders.encode_quopri if part.get_content_maintype() == "text" else encoders.encode_base64)(part)
    return parsed.as_bytes(policy=email_policy.compat32.clone(linesep="\r\n"))


def sign(entity: bytes, signer: Signer, settings: SmimeSettings) -> bytes:
    """multipart/signed (detached, so any client shows the content), MIME-Version first."""
    builder = pkcs7.PKCS7SignatureBuilder().set_data(entity).add_signer(
        signer.certificate, signer.key, _HASHES[HashAlgorithm(settings.hash)]())
    options = [pkcs7.PKCS7Options.DetachedSignature]
    if settings.attach_certificate:
        for extra in signer.chain:
            builder = builder.add_certificate(extra)
    else:
        options.append(pkcs7.PKCS7Options.NoCerts)
    return _crlf(builder.sign(serialization.Encoding.SMIME, options))


def encrypt(entity: bytes, certificates: list[x509.Certificate], settings: SmimeSettings) -> bytes:
    """application/pkcs7-mime; smime-type=enveloped-data, to every certificate given."""
    builder = pkcs7.PKCS7EnvelopeBuilder().set_data(entity)
    for certificate in certificates:
        builder = builder.add_recipient(certificate)
    builder = builder.set_content_encryption_algorithm(_CIPHERS[Cipher(settings.algorithm)])
    return _crlf(builder.encrypt(serialization.Encoding.SMIME, []))


def decrypt(message: bytes, certificate: x509.Certificate, key) -> bytes:
    """The enveloped content again (Verify decrypts its own test message with the signing key)."""
    return pkcs7.pkcs7_decrypt_smime(message, certificate, key, [])


def _crlf(data: bytes) -> bytes:
    """cryptography writes the envelope with bare LF; mail is CRLF (the signed part is CRLF already)."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
