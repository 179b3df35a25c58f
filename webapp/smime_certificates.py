"""A portal's S/MIME certificates: its recipients' certificates, which its servers encrypt to.

The page (views/smime_certificates.py) lists, adds and removes them; a transport finds them through
`PortalCertificates` (mail.smime.CertificateBook), one query per message.
"""
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlmodel import select

from . import audit, db
from .audit import Actor
from .mail.smime import CertificateFacts, SmimeProblem, load_recipient_certificate
from .models import MAX_ID, Portal, SmimeCertificate
from .pagination import Page, paginate

ORDER = (SmimeCertificate.address.asc(), SmimeCertificate.id.asc())


class Refused(ValueError):
    """The certificate will not do: str() says why, for beside the field."""


@dataclass(frozen=True)
class PortalCertificates:
    """mail.smime.CertificateBook over a portal's rows (a short read; no transaction is kept)."""
    portal_id: int

    def certificates(self, addresses: Iterable[str]) -> dict[str, list[x509.Certificate]]:
        wanted = sorted({address.lower() for address in addresses})
        if not wanted:
            return {}
        rows = db.session().exec(select(SmimeCertificate.address, SmimeCertificate.der).where(
            SmimeCertificate.portal_id == self.portal_id, SmimeCertificate.address.in_(wanted))).all()
        found: dict[str, list[x509.Certificate]] = {}
        for address, der in rows:
            found.setdefault(address, []).append(x509.load_der_x509_certificate(der))
        return found


def page_of(portal: Portal, size: int, bookmark: str | None) -> Page:
    """One page of the list: only the columns shown (never the certificate itself)."""
    query = select(SmimeCertificate.id, SmimeCertificate.address, SmimeCertificate.subject, SmimeCertificate.issuer,
                   SmimeCertificate.not_after).where(SmimeCertificate.portal_id == portal.id)
    return paginate(query, ORDER, size, bookmark)


def add(actor: Actor, portal: Portal, data: bytes, address: str = "") -> list[SmimeCertificate]:
    """Store a recipient's certificate (PEM or DER) for each address it names (or for `address`,
    which it must name when it names any); Refused in words otherwise."""
    try:
        certificate = load_recipient_certificate(data)
    except SmimeProblem as problem:
        raise Refused(str(problem)) from None
    facts = CertificateFacts.of(certificate)
    addresses = facts.addresses
    if address:
        if addresses and address.lower() not in addresses:
            raise Refused(f"This certificate is for {', '.join(addresses)}, not {address}: mail clients refuse a "
                          "certificate that does not name the recipient.")
        addresses = (address.lower(),)
    if not addresses:
        raise Refused("This certificate names no mail address: type the address it is for.")
    session = db.session()
    known = set(session.exec(select(SmimeCertificate.address).where(
        SmimeCertificate.portal_id == portal.id, SmimeCertificate.fingerprint == facts.fingerprint)).all())
    added = []
    der = certificate.public_bytes(serialization.Encoding.DER)
    for each in addresses:
        if each in known:
            continue
        row = SmimeCertificate(portal_id=portal.id, address=each, der=der, subject=facts.subject[:1000],
                               issuer=facts.issuer[:1000], not_after=facts.not_after, fingerprint=facts.fingerprint)
        session.add(row)
        added.append(row)
    if not added:
        raise Refused(f"This certificate is already stored for {', '.join(addresses)}.")
    session.flush()
    audit.record(actor, "smime_certificate.added", f"S/MIME certificate for {', '.join(r.address for r in added)}",
                 {"subject": [None, facts.subject], "not_after": [None, f"{facts.not_after:%Y-%m-%d}"]}, portal.id)
    session.commit()
    return added


def get(portal: Portal, certificate_id: int) -> SmimeCertificate | None:
    if not 0 < certificate_id <= MAX_ID:
        return None
    return db.session().exec(select(SmimeCertificate).where(SmimeCertificate.id == certificate_id,
                                                            SmimeCertificate.portal_id == portal.id)).first()


def remove(actor: Actor, portal: Portal, row: SmimeCertificate) -> None:
    session = db.session()
    session.delete(row)
    audit.record(actor, "smime_certificate.removed", f"S/MIME certificate for {row.address}",
                 {"subject": [row.subject, None]}, portal.id)
    session.commit()
