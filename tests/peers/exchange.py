"""What Exchange makes of a message it takes as MIME, shared by the EWS and Graph peers (both hand the
MIME to Exchange's conversion)."""
from email.message import EmailMessage


def message_class(mime: EmailMessage) -> str:
    """The item class Exchange gives a message it takes as MIME ([MS-OXCMAIL] 2.1.3.2.x and [MS-OXOSMIME]
    2.1.2): multipart/signed is "IPM.Note.SMIME.MultipartSigned"; an opaque-signed or encrypted message,
    one entity of application/pkcs7-mime (or x-pkcs7-mime, or octet-stream named *.p7m), "IPM.Note.SMIME";
    anything else "IPM.Note". Graph's MIME send goes through the same conversion."""
    kind = mime.get_content_type()
    if kind == "multipart/signed":
        return "IPM.Note.SMIME.MultipartSigned"
    named = (mime.get_filename() or mime.get_param("name") or "").lower()
    if kind in ("application/pkcs7-mime", "application/x-pkcs7-mime") or (
            kind == "application/octet-stream" and named.endswith(".p7m")):
        return "IPM.Note.SMIME"
    return "IPM.Note"
