"""A server's S/MIME settings: the signing certificate and its key (a sealed ServerSecret bound to
the certificate it came with), what a transport gets from them, and Verify.

The key is stored decrypted inside the seal (never the PKCS#12 file or its password, which are
only needed to open the upload): it is encrypted at rest like every secret, never rendered, and
used only for this server (its row).
"""
import base64
from dataclasses import dataclass, replace
from datetime import datetime, timezone

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs7

from .credentials import SecretNeeded, seal, side_secret, unseal
from .addresses import normalize_address
from .mail.attempt import Attempt
from .mail.config import Sender
from .mail.envelope import Envelope
from .mail.message import build_message
from .mail.redact import Redactor
from .mail.report import Outcome, Report, Step, StepFailed
from .mail.smime import (CIPHER_LABELS, HASH_LABELS, Cipher, CertificateFacts, HashAlgorithm, Signer, Smime,
                         SmimeSettings, allows_email_protection, decrypt, encrypt, sign, split_content,
                         validity_problem)
from .models import MailServer, Portal, SecretPurpose, ServerSecret, SmimeCertificate, utcnow
from .smime_certificates import PortalCertificates

CERTIFICATE_FIELD = "smime_certificate_file"


@dataclass
class SmimeValues:
    """The S/MIME settings as a form gives them: the choices, and a signer opened from files chosen
    this time (None keeps the stored certificate and key)."""
    settings: SmimeSettings
    signer: Signer | None = None


def smime_fields(stored: dict) -> dict:
    """The server form's S/MIME fields from `MailServer.smime` (what the form shows and History compares)."""
    settings = SmimeSettings.from_dict(stored)
    return {"smime_sign": settings.sign, "smime_hash": settings.hash,
            "smime_attach_certificate": settings.attach_certificate, "smime_encrypt": settings.encrypt,
            "smime_algorithm": settings.algorithm}


def _binding(settings: SmimeSettings) -> dict:
    facts = settings.facts()
    return {"certificate": facts.fingerprint} if facts else {}


def _stored_key(server: MailServer | None) -> ServerSecret | None:
    """The sealed key, when the server has one that belongs to its saved certificate."""
    if server is None or server.id is None:
        return None
    settings = SmimeSettings.from_dict(server.smime)
    stored = side_secret(server, SecretPurpose.SMIME_KEY)
    return stored if settings.certificate and stored is not None and stored.bound_to == _binding(settings) else None


def stored_signer(server: MailServer | None) -> Signer | None:
    """The saved certificate with its key (SecretUnreadable when the configured keys cannot open it)."""
    stored = _stored_key(server)
    return Signer.from_stored(SmimeSettings.from_dict(server.smime), unseal(stored.secret)["key"]) if stored else None


def has_stored_signer(server: MailServer | None) -> bool:
    return _stored_key(server) is not None


def check(server: MailServer | None, values: SmimeValues) -> None:
    """SecretNeeded (beside the file field) when signing is on without a certificate and key."""
    if values.settings.sign and values.signer is None and not has_stored_signer(server):
        raise SecretNeeded("Signing is on: choose the signing certificate file (and its key and password).",
                           CERTIFICATE_FIELD)


def apply(server: MailServer, values: SmimeValues) -> bool:
    """Write the settings and the key into the server (check() ran); True when the key changed.
    With signing off, the certificate and key are forgotten."""
    stored = side_secret(server, SecretPurpose.SMIME_KEY)
    old = SmimeSettings.from_dict(server.smime)
    settings, changed = values.settings, False
    if not settings.sign:
        settings = replace(settings, certificate="", chain="")
        if stored is not None:
            server.secrets.remove(stored)
            changed = True
    elif values.signer is not None:
        signer = values.signer
        settings = replace(settings, certificate=signer.certificate_pem(), chain=signer.chain_pem())
        if stored is None:
            stored = ServerSecret(purpose=SecretPurpose.SMIME_KEY)
            server.secrets.append(stored)
        changed = old.certificate != settings.certificate or not stored.secret
        stored.secret, stored.bound_to, stored.updated_at = seal({"key": signer.key_pem()}), _binding(settings), utcnow()
    else:
        settings = replace(settings, certificate=old.certificate, chain=old.chain)
    server.smime = settings.to_dict()
    return changed


def saved_smime(portal: Portal, server: MailServer) -> Smime | None:
    """What the transport protects the server's mail with (None: no S/MIME). A signer whose key is
    missing stays None: the transport then refuses to send rather than send unsigned."""
    settings = SmimeSettings.from_dict(server.smime)
    if not settings.enabled:
        return None
    signer = stored_signer(server) if settings.sign else None
    return Smime(settings, signer, PortalCertificates(portal.id) if settings.encrypt else None)


# --- Verify: sign and encrypt a test message, nothing is sent ---------------------------------------------

def verify(portal: Portal, server: MailServer | None, values: SmimeValues, from_address: str,
           now: datetime | None = None) -> Report:
    """Each step in words: the certificate, signing, encrypting (and decrypting again with the signing
    key, or a throwaway one), and the recipients' certificates the portal has; the first failure ends it."""
    now = now or datetime.now(timezone.utc)
    settings, report = values.settings, Report(transcript_name="S/MIME")
    if not settings.enabled:
        report.add(Step("S/MIME", Outcome.SKIPPED, "neither signing nor encryption is on: there is nothing to verify",
                        hint="turn on Sign email or Encrypt email"))
        return report
    signer = values.signer or (stored_signer(server) if settings.sign else None)
    entity = [split_content(_test_message(from_address, now).raw)[1]]

    def signed() -> Step:
        entity[0] = sign(entity[0], signer, settings)
        return _signed_step(entity[0], signer, settings)

    with Attempt(report, Redactor()) as attempt:
        if settings.sign:
            attempt.run("Signing certificate", lambda: _certificate_step(signer, from_address, now))
            attempt.run("Sign", signed)
        if settings.encrypt:
            attempt.run("Encrypt", lambda: _encrypt_step(entity[0], signer, settings))
            attempt.run("Recipients' certificates", lambda: _recipients_step(portal))
    report.passed_summary = " and ".join(part for part in (
        "the certificate and key sign" if settings.sign else "",
        "encryption works" if settings.encrypt else "") if part) + "."
    return report


def _test_message(from_address: str, now: datetime) -> Envelope:
    try:
        address = normalize_address(from_address)
    except ValueError:  # not typed yet, or not an address: the test message needs one all the same
        address = "verify@mailroom.invalid"
    return Envelope.of(build_message(Sender(address), [address], "Mailroom S/MIME verification",
                                     "A test message signed and encrypted by Verify. It is never sent.\n", now=now))


def _certificate_step(signer: Signer | None, from_address: str, now: datetime) -> Step:
    if signer is None:
        raise StepFailed("no signing certificate and key: choose the certificate file (and its key and password)",
                         "a PKCS#12 file (.p12, .pfx) with its password, or a PEM certificate with its PEM key")
    facts = CertificateFacts.of(signer.certificate)
    validity = validity_problem(signer.certificate, now)
    if validity:
        raise StepFailed(f"the signing certificate {validity}", "upload a current certificate")
    details = [("Subject", facts.subject), ("Issuer", facts.issuer), ("Valid until", f"{facts.not_after:%Y-%m-%d} UTC"),
               ("Addresses", ", ".join(facts.addresses) or "none")]
    warnings = []
    if not allows_email_protection(signer.certificate):
        warnings.append("its extended key usage does not include email protection, so mail clients may call "
                        "the signature invalid")
    if from_address and facts.addresses and from_address.lower() not in facts.addresses:
        warnings.append(f"it is for {', '.join(facts.addresses)}, not the From address {from_address}: mail "
                        "clients warn about a signer who is not the sender")
    if warnings:
        return Step("Signing certificate", Outcome.WARNING, "the key belongs to the certificate, but " +
                    "; and ".join(warnings), details, "use a certificate issued for the From address, for email")
    return Step("Signing certificate", Outcome.PASSED, "the key belongs to the certificate, which is valid for "
                f"another {(facts.not_after - now).days} day(s)", details)


def _signed_step(signed: bytes, signer: Signer, settings: SmimeSettings) -> Step:
    head, _, body = signed.partition(b"\r\n\r\n")
    boundary = head.split(b'boundary="', 1)[1].split(b'"', 1)[0]
    signature_part = body.split(b"--" + boundary)[2]
    der = base64.b64decode(signature_part.partition(b"\r\n\r\n")[2])
    carried = pkcs7.load_der_pkcs7_certificates(der)
    attached = any(c == signer.certificate for c in carried)
    if attached != settings.attach_certificate:
        raise StepFailed("the signature does not carry the certificate as chosen")
    return Step("Sign", Outcome.PASSED, f"a test message was signed with {HASH_LABELS[HashAlgorithm(settings.hash)]} "
                f"({len(signed)} bytes, multipart/signed)",
                [("Certificate attached", "yes" if attached else "no: recipients need it from elsewhere")])


def _encrypt_step(entity: bytes, signer: Signer | None, settings: SmimeSettings) -> Step:
    if signer is not None and isinstance(signer.certificate.public_key(), rsa.RSAPublicKey):
        certificate, key, whom = signer.certificate, signer.key, "the signing certificate"
    else:
        certificate, key = _throwaway()
        whom = "a throwaway certificate made for this check"
    enveloped = encrypt(entity, [certificate], settings)
    if decrypt(enveloped, certificate, key) != entity:
        raise StepFailed("the message decrypted again is not the one encrypted")
    return Step("Encrypt", Outcome.PASSED, f"the test message was encrypted with "
                f"{CIPHER_LABELS[Cipher(settings.algorithm)]} to {whom} and decrypted again: it is intact",
                [("Encrypted size", f"{len(enveloped)} bytes")])


def _throwaway():
    from datetime import timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Mailroom S/MIME Verify")])
    now = datetime.now(timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=1))
                   .not_valid_after(now + timedelta(minutes=10)).sign(key, hashes.SHA256()))
    return certificate, key


def _recipients_step(portal: Portal) -> Step:
    from sqlmodel import func, select

    from . import db

    count = db.session().exec(select(func.count(func.distinct(SmimeCertificate.address)))
                              .where(SmimeCertificate.portal_id == portal.id)).one()
    if not count:
        return Step("Recipients' certificates", Outcome.WARNING, "the portal has no recipient certificates yet: every "
                    "message would be refused, never sent in clear", hint="upload them under S/MIME certificates")
    return Step("Recipients' certificates", Outcome.PASSED, f"certificates for {count} address(es) are stored; mail to "
                "any other address is refused with the reason, never sent in clear")
