"""The S/MIME section of the server form (Privileged Identity's "SMTP Email Settings - SMIME"):
sign with a certificate and key, encrypt to the recipients' certificates.

The files and the password are secrets of the section: never rendered back, never carried. A
certificate file chosen is opened here (with its key and password) and kept as a mail.smime.Signer
for the save (`smime_values`); the choices are stored in `MailServer.smime`.
"""
from wtforms import BooleanField, FileField, PasswordField, SelectChoice, SelectField
from wtforms.validators import Length

from ..mail.smime import (CIPHER_LABELS, HASH_LABELS, MAX_FILE_BYTES, Cipher, HashAlgorithm, SmimeProblem,
                          SmimeSettings, load_signer)
from ..smime_settings import SmimeValues
from .server import PARTIALS, Section, register_section


class SigningFormat:
    PKCS12 = "pkcs12"
    PEM = "pem"


FORMAT_CHOICES = [SelectChoice(SigningFormat.PKCS12, "PKCS#12 file (.p12, .pfx) with its password"),
                  SelectChoice(SigningFormat.PEM, "PEM certificate and PEM private key")]
FILE_FIELDS = ("smime_certificate_file", "smime_key_file")


class SmimeSection(Section):
    name, store = "smime", "smime"
    template = "servers/_smime.html"
    secret = frozenset({*FILE_FIELDS, "smime_password"})
    not_stored = frozenset({"smime_format"})
    smime_sign = BooleanField(
        "Sign email", default=False,
        description="Digitally sign outgoing email (S/MIME), so that recipients can verify that it was not tampered "
                    "with. Every mail this server sends is signed: queued mail and sample mails alike.")
    smime_format = SelectField("Signing file", choices=FORMAT_CHOICES, default=SigningFormat.PKCS12)
    smime_certificate_file = FileField(
        "Signing certificate file",
        description="A PKCS#12 file (.p12, .pfx) with the certificate and its private key, or the certificate in PEM.")
    smime_key_file = FileField("Private key (PEM)", description="Only with a PEM certificate: its private key.")
    smime_password = PasswordField(
        "Signing cert password", validators=[Length(max=1000)],
        description="If applicable, the password used while exporting the certificate (or protecting the key). It "
                    "only opens the file: Mailroom keeps the key encrypted, never the password.")
    smime_hash = SelectField("Hash algorithm", default=HashAlgorithm.SHA256.value,
                             choices=[SelectChoice(h.value, label) for h, label in HASH_LABELS.items()],
                             description="The algorithm used to prepare the message digest for the signature.")
    smime_attach_certificate = BooleanField(
        "Attach certificate to email", default=True,
        description="The signing certificate travels in the signature, so recipients can verify it (and encrypt "
                    "replies) without having it already.")
    smime_encrypt = BooleanField(
        "Encrypt email", default=False,
        description="Encrypt every mail to its recipients' certificates (S/MIME certificates, in the portal's bar). "
                    "A message to a recipient without a certificate is refused with the reason, never sent in clear.")
    smime_algorithm = SelectField("Encryption algorithm", default=Cipher.AES256.value,
                                  choices=[SelectChoice(c.value, label) for c, label in CIPHER_LABELS.items()],
                                  description="The algorithm used to encrypt the email (what cryptography's PKCS#7 "
                                              "envelope builder offers).")

    signer = None  # the certificate and key opened from the files chosen, if any

    def validate(self, extra_validators=None) -> bool:
        valid = super().validate(extra_validators)
        self.signer = None
        certificate = _read(self.smime_certificate_file)
        key = _read(self.smime_key_file)
        if certificate is None or certificate is False or key is False:
            for field, data in ((self.smime_certificate_file, certificate), (self.smime_key_file, key)):
                if data is False:
                    field.errors = [*field.errors, "This file is too large for a certificate or key."]
            return valid and certificate is not False and key is not False
        pem = self.smime_format.data == SigningFormat.PEM
        if pem and key is None:
            self.smime_key_file.errors = [*self.smime_key_file.errors,
                                          "Choose the private key (PEM) that belongs to the certificate."]
            return False
        try:
            self.signer = load_signer(certificate, self.smime_password.data or "", key if pem else None)
        except SmimeProblem as problem:
            target = self.smime_password if "password" in str(problem) else (
                self.smime_key_file if pem and "key" in str(problem).split(":")[0] else self.smime_certificate_file)
            target.errors = [*target.errors, str(problem)]
            return False
        return valid


def _read(field) -> bytes | None | bool:
    """The chosen file's bytes; None when none was chosen; False when it is too large."""
    upload = field.data
    if not upload or not hasattr(upload, "read"):
        return None
    data = upload.read(MAX_FILE_BYTES + 1)
    if not data:
        return None
    return False if len(data) > MAX_FILE_BYTES else data


def settings_of(section: SmimeSection) -> SmimeSettings:
    return SmimeSettings(sign=bool(section.smime_sign.data), hash=section.smime_hash.data,
                         attach_certificate=bool(section.smime_attach_certificate.data),
                         encrypt=bool(section.smime_encrypt.data), algorithm=section.smime_algorithm.data)


def smime_values(form) -> SmimeValues | None:
    """The S/MIME values of a validated ServerForm (None when its section was not built)."""
    section = form.sections.get(SmimeSection.name)
    if section is None:
        return None
    return SmimeValues(settings_of(section), section.signer)


PARTIALS.setdefault("smime", [])
register_section(SmimeSection, "smime")
