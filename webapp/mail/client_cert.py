"""The SMTP client certificate (Privileged Identity's "SSL client certificate authentication"): read from
an upload (PEM with the key, or PKCS#12) once, kept as a bundle (certificate chain and key in PEM, sealed
by the web layer), and presented in the TLS handshake.

Whether the server asked for a certificate is read from the handshake itself: OpenSSL reports each
handshake message to the context's message callback (CPython's `SSLContext._msg_callback`, its hook for
OpenSSL's SSL_CTX_set_msg_callback), and a CertificateRequest from the server is what "asked" means; the
Certificate message the client sent says whether one went. Whether the server accepted it shows only after
the handshake (TLS 1.3 sends the refusal as an alert after the client's Finished): the first reply over TLS
answering means accepted, an alert then means refused. Where the interpreter has no such callback, the
report says that it cannot tell.
"""
import json
import os
import secrets
import ssl
import tempfile
import weakref
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from .tls import format_utc

MAX_BYTES = 100_000  # an upload larger than this is no certificate file
_HANDSHAKE, _CERTIFICATE, _CERTIFICATE_REQUEST = 22, 11, 13  # TLS content type and handshake message types


class Unreadable(ValueError):
    """The upload is not a certificate with its key (str(): why, for beside the field)."""


@dataclass(frozen=True)
class ClientCertificate:
    cert_pem: str  # the certificate first, then its chain
    key_pem: str = field(repr=False)  # PKCS#8, unencrypted: it only ever exists sealed or in memory

    @classmethod
    def from_bundle(cls, bundle: str) -> "ClientCertificate":
        values = json.loads(bundle)
        return cls(values["cert"], values["key"])

    def bundle(self) -> str:
        return json.dumps({"cert": self.cert_pem, "key": self.key_pem})

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificates(self.cert_pem.encode())[0]

    def facts(self) -> dict:
        """What may be shown and stored in the clear: never the key."""
        cert = self.certificate
        return {"subject": cert.subject.rfc4514_string(), "issuer": cert.issuer.rfc4514_string(),
                "not_before": format_utc(cert.not_valid_before_utc), "expires": format_utc(cert.not_valid_after_utc)}

    def load_into(self, context: ssl.SSLContext) -> None:
        """ssl reads a certificate and key only from files: the key goes there encrypted with a one-time
        password (a private temporary file, removed at once), never in the clear."""
        once = secrets.token_urlsafe(24)
        key = serialization.load_pem_private_key(self.key_pem.encode(), None)
        encrypted = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.BestAvailableEncryption(once.encode()))
        fd, path = tempfile.mkstemp(prefix="mailroom-client-", suffix=".pem")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(self.cert_pem.encode() + b"\n" + encrypted)
            context.load_cert_chain(path, password=once)
        finally:
            os.unlink(path)


def read_upload(data: bytes, password: str = "") -> ClientCertificate:
    """A PEM file with the certificate (and chain) and its private key, or a PKCS#12 file (.p12, .pfx)."""
    if len(data) > MAX_BYTES:
        raise Unreadable("This file is too large to be a certificate file.")
    secret = password.encode() if password else None
    if b"-----BEGIN" in data:
        return _from_pem(data, secret)
    try:
        key, cert, chain = pkcs12.load_key_and_certificates(data, secret)
    except ValueError:
        if not password:
            raise Unreadable("This is neither a PEM file nor a PKCS#12 file that opens without a password: "
                             "enter the certificate's password.") from None
        raise Unreadable("This PKCS#12 file does not open with this password (or is not a certificate "
                         "file).") from None
    if cert is None or key is None:
        raise Unreadable("This PKCS#12 file has no certificate with its private key.")
    return _bundle(key, [cert, *(chain or [])])


def _from_pem(data: bytes, secret: bytes | None) -> ClientCertificate:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise Unreadable("This PEM file has no certificate (-----BEGIN CERTIFICATE-----).") from None
    blocks = [block for block in data.split(b"-----BEGIN ")[1:] if b"PRIVATE KEY-----" in block.split(b"\n")[0]]
    if not blocks:
        raise Unreadable("This PEM file has no private key: put the certificate and its key in one file "
                         "(or use PKCS#12).")
    try:
        key = serialization.load_pem_private_key(b"-----BEGIN " + blocks[0], secret)
    except TypeError:
        raise Unreadable("The private key is encrypted: enter its password." if secret is None else
                         "The private key is not encrypted: leave the password empty.") from None
    except ValueError:
        raise Unreadable("The private key could not be read with this password.") from None
    return _bundle(key, certs)


def _bundle(key, certs: list[x509.Certificate]) -> ClientCertificate:
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
                      | ed448.Ed448PrivateKey):
        raise Unreadable("This key type cannot sign a TLS handshake (use RSA or EC).")
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    mine = [c for c in certs if c.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) == public]
    if not mine:
        raise Unreadable("The private key does not belong to the certificate in this file.")
    ordered = mine[:1] + [c for c in certs if c is not mine[0]]
    cert_pem = "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in ordered)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return ClientCertificate(cert_pem, key_pem)


# --- what the handshake showed ------------------------------------------------------------------------

@dataclass
class Handshake:
    requested: bool = False  # a CertificateRequest came from the server
    sent: bool = False  # the client's Certificate message carried a certificate


_seen: "weakref.WeakKeyDictionary[object, Handshake]" = weakref.WeakKeyDictionary()
CAN_TELL = hasattr(ssl.SSLContext, "_msg_callback")


def watch(context: ssl.SSLContext) -> None:
    """Note the certificate messages of every handshake made with this context."""
    if CAN_TELL:
        context._msg_callback = _note


def _note(conn, direction, version, content_type, msg_type, data) -> None:
    """Never raises: an exception here would fail the TLS operation that reported the message."""
    try:
        if int(content_type) != _HANDSHAKE:
            return
        kind = int(msg_type)
        seen = _seen.setdefault(conn, Handshake())
    except (TypeError, ValueError):  # a connection object that cannot be weakly referenced, an odd message type
        return
    if direction == "read" and kind == _CERTIFICATE_REQUEST:
        seen.requested = True
    elif direction == "write" and kind == _CERTIFICATE:
        seen.sent = len(data) > 8  # an empty Certificate message is 4 bytes of header and an empty list (TLS 1.3: 8)


def handshake_of(sock: ssl.SSLSocket) -> Handshake | None:
    """What the handshake over `sock` showed; None when this interpreter cannot tell."""
    if not CAN_TELL:
        return None
    return _seen.get(sock) or Handshake()
