"""S/MIME as mail.smime writes it, checked by Debian's openssl (`openssl smime -verify` / `-decrypt`):
signed (each hash, the certificate attached or not), encrypted (each algorithm), both; the refusals
in words (a recipient without a certificate, a wrong password, an expired certificate, a key that
does not belong to the certificate)."""
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest
from cryptography import x509

from webapp.mail.envelope import Envelope
from webapp.mail.report import StepFailed
from webapp.mail.smime import (Signer, Smime, SmimeProblem, SmimeSettings, load_recipient_certificate, load_signer, protect,
                               seven_bit, split_content)

from .smime_certs import TestCA, decrypt, openssl, verify

SENDER, JANE, BOB = "helpdesk@example.com", "jane@example.org", "bob@example.org"


class Book:
    """The recipients' certificates, as the portal's page would give them."""

    def __init__(self, *issued):
        self.by_address = {}
        for each in issued:
            names = each.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            for name in names.get_values_for_type(x509.RFC822Name):
                self.by_address.setdefault(name, []).append(each.certificate)

    def certificates(self, addresses):
        return {a: self.by_address[a] for a in addresses if a in self.by_address}


@pytest.fixture(scope="module")
def ca():
    return TestCA()


@pytest.fixture(scope="module")
def signer_issued(ca):
    return ca.issue(SENDER)


@pytest.fixture
def files(tmp_path, ca, signer_issued):
    (tmp_path / "ca.pem").write_bytes(ca.pem)
    signer_issued.write(tmp_path, "signer")
    return tmp_path


def message() -> Envelope:
    mail = EmailMessage()
    mail["From"] = f"Help Desk <{SENDER}>"
    mail["To"] = JANE
    mail["Bcc"] = BOB
    mail["Subject"] = "Invoice ✓"
    mail.set_content("Plain text, ünïcode\nsecond line\n")
    mail.add_alternative("<p>An <b>HTML</b> part</p>", subtype="html")
    mail.add_attachment(b"%PDF-1.4 binary \x00\x01", maintype="application", subtype="pdf", filename="a.pdf")
    return Envelope.of(mail)


def signer_of(issued):
    return load_signer(issued.pkcs12("p12-secret"), "p12-secret")


@pytest.mark.parametrize("hash_, micalg", [("sha256", "sha-256"), ("sha384", "sha-384"), ("sha512", "sha-512")])
def test_a_signed_message_verifies_with_openssl_and_keeps_its_headers_outside(files, signer_issued, hash_, micalg):
    envelope = message()
    smime = Smime(SmimeSettings(sign=True, hash=hash_), signer_of(signer_issued))
    signed, step = protect(smime, envelope.raw, envelope.recipients)
    parsed = message_from_bytes(signed, policy=policy.default)
    assert parsed.get_content_type() == "multipart/signed" and parsed.get_param("micalg") == micalg
    assert parsed["Subject"] == "Invoice ✓" and parsed["Bcc"] == BOB and parsed["Message-ID"] == envelope.message_id
    assert signed.count(b"\r\n") == signed.count(b"\n")  # CRLF throughout, as mail goes
    content = verify(signed, files / "ca.pem")
    assert content == seven_bit(split_content(envelope.raw)[1])  # the Content-* fields and the body (8bit as QP)
    assert b"Content-Transfer-Encoding: 8bit" in envelope.raw and b"Content-Transfer-Encoding: 8bit" not in content
    inner = message_from_bytes(content, policy=policy.default)
    assert inner.get_content_type() == "multipart/mixed" and "ünïcode" in inner.get_body(("plain",)).get_content()
    assert step.summary.startswith("signed (SHA-") and "certificate attached" in step.summary


def test_without_the_certificate_attached_the_recipient_needs_it_from_elsewhere(files, signer_issued):
    envelope = message()
    smime = Smime(SmimeSettings(sign=True, attach_certificate=False), signer_of(signer_issued))
    signed, _ = protect(smime, envelope.raw, envelope.recipients)
    alone = openssl("smime", "-verify", "-CAfile", str(files / "ca.pem"), data=signed)
    assert alone.returncode != 0 and b"signer certificate not found" in alone.stderr
    verify(signed, files / "ca.pem", "-certfile", str(files / "signer.pem"))


@pytest.mark.parametrize("algorithm, openssl_name", [("aes128-cbc", "aes-128-cbc"), ("aes256-cbc", "aes-256-cbc")])
def test_an_encrypted_message_decrypts_for_each_recipient_and_only_for_them(tmp_path, ca, algorithm, openssl_name):
    jane, bob, eve = ca.issue(JANE), ca.issue(BOB), ca.issue("eve@example.org")
    envelope = message()
    smime = Smime(SmimeSettings(encrypt=True, algorithm=algorithm), book=Book(jane, bob))
    sealed, step = protect(smime, envelope.raw, envelope.recipients)
    parsed = message_from_bytes(sealed, policy=policy.default)
    assert parsed.get_content_type() == "application/pkcs7-mime" and parsed.get_param("smime-type") == "enveloped-data"
    assert parsed["Subject"] == "Invoice ✓" and b"Plain text" not in sealed
    for who, issued in (("jane", jane), ("bob", bob)):
        cert, key = issued.write(tmp_path, who)
        assert decrypt(sealed, cert, key) == split_content(envelope.raw)[1]
    cert, key = eve.write(tmp_path, "eve")
    assert openssl("smime", "-decrypt", "-recip", str(cert), "-inkey", str(key), data=sealed).returncode != 0
    shown = openssl("cms", "-cmsout", "-print", "-inform", "SMIME", data=sealed).stdout.decode()
    assert f"algorithm: {openssl_name} " in shown  # the content encryption algorithm chosen
    assert step.summary == f"encrypted ({openssl_name.upper()}) to 2 recipient(s)"


def test_signed_then_encrypted_decrypts_and_then_verifies(files, ca, signer_issued):
    jane = ca.issue(JANE, BOB)
    envelope = message()
    smime = Smime(SmimeSettings(sign=True, encrypt=True), signer_of(signer_issued), Book(jane))
    sealed, step = protect(smime, envelope.raw, envelope.recipients)
    cert, key = jane.write(files, "jane")
    signed = decrypt(sealed, cert, key)
    assert message_from_bytes(signed).get_content_type() == "multipart/signed"
    assert verify(signed, files / "ca.pem") == seven_bit(split_content(envelope.raw)[1])
    assert " and encrypted" in step.summary


def test_a_recipient_without_a_certificate_is_refused_never_sent_in_clear(ca):
    envelope = message()
    smime = Smime(SmimeSettings(encrypt=True), book=Book(ca.issue(JANE)))
    with pytest.raises(StepFailed) as refused:
        protect(smime, envelope.raw, envelope.recipients)
    assert f"no S/MIME certificate for {BOB}" in refused.value.summary and "never in clear" in refused.value.summary
    assert refused.value.temporary is False and "S/MIME certificates" in refused.value.hint


def test_a_recipient_whose_only_certificate_expired_is_refused(ca):
    envelope = message()
    smime = Smime(SmimeSettings(encrypt=True), book=Book(ca.issue(JANE), ca.issue(BOB, expired=True)))
    with pytest.raises(StepFailed) as refused:
        protect(smime, envelope.raw, envelope.recipients)
    assert f"only expired or not yet valid certificates for {BOB}" in refused.value.summary


def test_an_expired_signing_certificate_stops_the_message(ca):
    expired = ca.issue(SENDER, expired=True)
    with pytest.raises(SmimeProblem, match="The signing certificate expired on"):
        load_signer(expired.pkcs12("pw"), "pw")
    envelope = message()
    smime = Smime(SmimeSettings(sign=True), Signer(expired.certificate, expired.key))
    with pytest.raises(StepFailed, match="the signing certificate expired on .*: the message was not sent") as failed:
        protect(smime, envelope.raw, envelope.recipients)
    assert failed.value.temporary is False


def test_the_files_are_refused_in_words(ca, signer_issued):
    other = ca.issue("other@example.com")
    with pytest.raises(SmimeProblem, match="The password does not open this PKCS#12 file"):
        load_signer(signer_issued.pkcs12("right"), "wrong")
    with pytest.raises(SmimeProblem, match="protected by a password: type it"):
        load_signer(signer_issued.pkcs12("right"), "")
    with pytest.raises(SmimeProblem, match="The private key does not belong to this certificate"):
        load_signer(signer_issued.pem, "", other.key_pem())
    with pytest.raises(SmimeProblem, match="The password does not open this private key"):
        load_signer(signer_issued.pem, "wrong", signer_issued.key_pem("right"))
    assert load_signer(signer_issued.pem, "right", signer_issued.key_pem("right")).certificate == \
        signer_issued.certificate
    with pytest.raises(SmimeProblem, match="This is a PEM file, not PKCS#12"):
        load_signer(signer_issued.pem, "")
    with pytest.raises(SmimeProblem, match="not a PKCS#12 file"):
        load_signer(b"\x30\x03\x02\x01\x00", "")
    with pytest.raises(SmimeProblem, match="not a certificate in PEM or DER"):
        load_recipient_certificate(b"hello")
    with pytest.raises(SmimeProblem, match="RSA certificates only"):
        load_recipient_certificate(ca.issue(JANE, ec_key=True).pem)
    assert load_recipient_certificate(ca.issue(JANE).der).subject.rfc4514_string() == f"CN={JANE}"


def test_an_ec_key_signs_too(files, ca):
    issued = ca.issue(SENDER, ec_key=True)
    envelope = message()
    signed, _ = protect(Smime(SmimeSettings(sign=True), signer_of(issued)), envelope.raw, envelope.recipients)
    verify(signed, files / "ca.pem")


def test_the_chain_of_a_pkcs12_file_travels_with_the_attached_certificate(files, ca, signer_issued):
    signer = load_signer(signer_issued.pkcs12("pw", chain=(ca.certificate,)), "pw")
    assert signer.chain == (ca.certificate,)
    envelope = message()
    for attach, expected in ((True, {signer_issued.certificate, ca.certificate}), (False, set())):
        signed, _ = protect(Smime(SmimeSettings(sign=True, attach_certificate=attach), signer), envelope.raw,
                            envelope.recipients)
        carried = openssl("smime", "-pk7out", data=signed)
        assert carried.returncode == 0
        certificates = openssl("pkcs7", "-print_certs", data=carried.stdout).stdout
        found = set(x509.load_pem_x509_certificates(certificates)) if certificates.strip() else set()
        assert found == expected


def test_an_8bit_body_is_signed_as_quoted_printable_so_no_relay_breaks_the_signature(files, signer_issued):
    raw = ("From: Help Desk <helpdesk@example.com>\r\nTo: jane@example.org\r\nSubject: Grüße\r\nMIME-Version: 1.0\r\n"
           "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
           "Grüße aus der Buchhaltung\r\n").encode()
    signed, _ = protect(Smime(SmimeSettings(sign=True), signer_of(signer_issued)), raw, (JANE,))
    assert split_content(signed)[1].isascii()  # the signed part: 7-bit (the outer Subject stays as it was)
    content = verify(signed, files / "ca.pem")
    inner = message_from_bytes(content, policy=policy.default)
    assert inner["Content-Transfer-Encoding"] == "quoted-printable"
    assert inner.get_content().splitlines() == ["Grüße aus der Buchhaltung"]
    seven = ("From: helpdesk@example.com\r\nTo: jane@example.org\r\nSubject: Plain\r\nMIME-Version: 1.0\r\n"
             "Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n\r\nPlain\r\n").encode()
    assert seven_bit(split_content(seven)[1]) == split_content(seven)[1]  # 7-bit content: signed byte for byte
    assert verify(protect(Smime(SmimeSettings(sign=True), signer_of(signer_issued)), seven, (JANE,))[0],
                  files / "ca.pem") == split_content(seven)[1]
