"""S/MIME test certificates made with cryptography: a CA, and certificates for mail addresses (RSA or
EC keys, emailProtection, any validity), written to files for openssl and as uploads for the forms."""
import io
import subprocess
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = datetime.now(timezone.utc)


@dataclass
class Issued:
    certificate: x509.Certificate
    key: object

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    def key_pem(self, password: str | None = None) -> bytes:
        encryption = serialization.BestAvailableEncryption(password.encode()) if password else \
            serialization.NoEncryption()
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)

    def pkcs12(self, password: str, chain: tuple[x509.Certificate, ...] = ()) -> bytes:
        return pkcs12.serialize_key_and_certificates(b"signer", self.key, self.certificate, list(chain) or None,
                                                     serialization.BestAvailableEncryption(password.encode()))

    def write(self, folder: Path, name: str) -> tuple[Path, Path]:
        cert, key = folder / f"{name}.pem", folder / f"{name}.key"
        cert.write_bytes(self.pem)
        key.write_bytes(self.key_pem())
        return cert, key


class TestCA:
    __test__ = False

    def __init__(self, name: str = "Mailroom Test S/MIME CA"):
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Mailroom tests"),
                             x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.certificate = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                            .not_valid_before(NOW - timedelta(days=400)).not_valid_after(NOW + timedelta(days=3650))
                            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                           critical=True)
                            .sign(self.key, hashes.SHA256()))

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue(self, *addresses: str, name: str = "", ec_key: bool = False, days: int = 365, expired: bool = False,
              email_protection: bool = True) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1()) if ec_key else rsa.generate_private_key(
            public_exponent=65537, key_size=2048)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name or (addresses[0] if addresses else "x"))])
        start, end = (NOW - timedelta(days=30), NOW - timedelta(days=1)) if expired else \
            (NOW - timedelta(days=1), NOW + timedelta(days=days))
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(self.certificate.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(start).not_valid_after(end)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(True, True, not ec_key, False, False, False, False, False, False),
                                  critical=True)
                   .add_extension(x509.ExtendedKeyUsage(
                       [ExtendedKeyUsageOID.EMAIL_PROTECTION if email_protection else ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False))
        if addresses:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.RFC822Name(a) for a in addresses]),
                                            critical=False)
        return Issued(builder.sign(self.key, hashes.SHA256()), key)


def upload(data: bytes, filename: str) -> tuple:
    return io.BytesIO(data), filename


def openssl(*args: str, data: bytes) -> subprocess.CompletedProcess:
    """Debian's openssl on the message (stdin), its output and its verdict."""
    return subprocess.run(["openssl", *args], input=data, capture_output=True, timeout=30)


def verify(message: bytes, ca_file: Path, *extra: str) -> bytes:
    """`openssl smime -verify` of a signed message; the content it vouches for (AssertionError otherwise)."""
    result = openssl("smime", "-verify", "-CAfile", str(ca_file), *extra, data=message)
    assert result.returncode == 0 and b"Verification successful" in result.stderr, result.stderr.decode()
    return result.stdout


def decrypt(message: bytes, cert: Path, key: Path) -> bytes:
    result = openssl("smime", "-decrypt", "-recip", str(cert), "-inkey", str(key), data=message)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout
