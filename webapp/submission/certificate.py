"""The listener's TLS certificate: the configured PEM files, or a self-signed pair the listener
creates in the instance folder at its first start (owner-only files). Devices that cannot check a
certificate against an authority pin its SHA-256 fingerprint, which the credentials page shows."""
import ipaddress
import os
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from ..instance import locked
from .settings import RelaySettings

CERT_FILE = "submission-cert.pem"
KEY_FILE = "submission-key.pem"
VALID_FOR = timedelta(days=3650)  # a pinned certificate is replaced by hand, not by expiry


@dataclass(frozen=True)
class Certificate:
    cert_file: Path
    key_file: Path
    fingerprint: str  # SHA-256 of the certificate (DER), "AB:CD:…" as openssl x509 -fingerprint prints it
    subject: str
    not_after: datetime
    self_signed: bool

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)  # TLS 1.2 or newer, no client certificate
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def fingerprint(der: bytes) -> str:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(der)
    return ":".join(f"{byte:02X}" for byte in digest.finalize())


def read(cert_file: Path, key_file: Path, self_signed: bool) -> Certificate:
    """The certificate in `cert_file` (the first of a chain); ValueError when it cannot be read."""
    try:
        leaf = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read the listener's certificate {cert_file}: {error}") from None
    return Certificate(cert_file, key_file, fingerprint(leaf.public_bytes(serialization.Encoding.DER)),
                       leaf.subject.rfc4514_string(), leaf.not_valid_after_utc, self_signed)


def configured_or_existing(cert_file: str | None, key_file: str | None, instance_path: str) -> Certificate | None:
    """What the listener uses, without creating anything: None while the self-signed pair does not
    exist yet (the listener creates it when it first starts)."""
    if cert_file:
        return read(Path(cert_file), Path(key_file or cert_file), self_signed=False)
    cert_file, key_file = Path(instance_path) / CERT_FILE, Path(instance_path) / KEY_FILE
    if not (cert_file.exists() and key_file.exists()):
        return None
    return read(cert_file, key_file, self_signed=True)


def load_or_create(settings: RelaySettings, instance_path: str) -> Certificate:
    """The configured certificate, or the self-signed one in the instance folder, created once."""
    with locked(Path(instance_path) / "submission-cert.lock"):  # several listeners may start at once
        existing = configured_or_existing(settings.cert_file, settings.key_file, instance_path)
        if existing is not None:
            return existing
        _create(Path(instance_path), settings.hostname, settings.host)
        return configured_or_existing(None, None, instance_path)


def _create(folder: Path, hostname: str, bind_host: str) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # RSA: what old devices all speak
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in dict.fromkeys([hostname, "localhost"])]
    for address in dict.fromkeys(["127.0.0.1", bind_host]):
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            continue
        if not ip.is_unspecified:
            names.append(x509.IPAddress(ip))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64]),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Mailroom SMTP submission")])
    now = datetime.now(UTC)
    certificate = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + VALID_FOR)
                   .add_extension(x509.SubjectAlternativeName(names), critical=False)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                   .sign(key, hashes.SHA256()))
    _write_private(folder / KEY_FILE, key.private_bytes(serialization.Encoding.PEM,
                                                        serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
    _write_private(folder / CERT_FILE, certificate.public_bytes(serialization.Encoding.PEM))


def _write_private(path: Path, content: bytes) -> None:
    """Written readable by the owner only, and whole or not at all (a listener that starts meanwhile)."""
    partial = path.with_suffix(".partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(content)
    os.replace(partial, path)
