"""Uploading a recipient's S/MIME certificate (the portal's S/MIME certificates page)."""
from wtforms import EmailField, FileField
from wtforms.validators import Length, Optional

from ..mail.smime import MAX_FILE_BYTES
from .base import BaseForm
from .validators import email_address


class SmimeCertificateForm(BaseForm):
    certificate = FileField("Certificate (PEM or DER)",
                            description="A recipient's S/MIME certificate: .pem, .crt, .cer or .der. Only the public "
                                        "certificate: never a private key.")
    address = EmailField("Address (optional)", validators=[Optional(), email_address, Length(max=320)],
                         description="Empty: every address the certificate names. A certificate that names none "
                                     "needs it.")

    def file_bytes(self) -> bytes | None:
        """The chosen file (None: none chosen; an error beside the field when it is too large)."""
        upload = self.certificate.data
        data = upload.read(MAX_FILE_BYTES + 1) if upload and hasattr(upload, "read") else b""
        if not data:
            self.certificate.errors = [*self.certificate.errors, "Choose the certificate file."]
            return None
        if len(data) > MAX_FILE_BYTES:
            self.certificate.errors = [*self.certificate.errors, "This file is too large for a certificate."]
            return None
        return data
