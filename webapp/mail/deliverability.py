"""Deliverability: what receivers will think of mail from this server, read from DNS (nothing is sent).

- **SPF** (RFC 7208), evaluated by pyspf for an address the server sends from: the SMTP host's own
  addresses, or for a service Mailroom knows (presets.py) one address its SPF include lists;
  pass, fail, softfail, neutral, none, permerror (too many lookups, two records, a bad term) or
  temperror, in words, with the record to publish.
- **DKIM**: whether the service signs as the From domain, where its documented selectors say it
  (`<selector>._domainkey.<domain>` has a key).
- **DMARC** (RFC 7489): the policy (checkdmarc reads and checks the record; it is imported, with the
  HTTP client and the command line it loads, only when there is a record to read), and whether the
  From would align: SPF through the envelope sender (Mailroom's is the From address, unless the
  service uses a bounce domain of its own), DKIM through the service's signature.
- **Addresses** (From, Reply-To, the admin address, ...): their domain receives mail (MX, or an
  address record, RFC 5321 5.1); a null MX (RFC 7505) says it never does.

Every lookup asks the configured resolver only (mail/dns.py) within one Deadline. pyspf's own
lookup function is replaced, once, by one that asks the resolver of the check running in this
context (a ContextVar), so pyspf never asks anything else.
"""
from . import plain_dns  # noqa: F401, I001 (first: pyspf imports dnspython's resolver)

import ipaddress
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import cache

import dns.exception
import spf
from publicsuffixlist import PublicSuffixList

from .deadline import Deadline, DeadlineExceeded
from .dns import DnsFailure, Resolver
from .presets import Preset
from .report import Outcome, Step

SECTION = "Deliverability"
MAX_INCLUDE_DEPTH = 5  # looking for one sending address of a service through its SPF includes

_lookup: ContextVar[tuple[Resolver, Deadline]] = ContextVar("mailroom_spf_lookup")


def _spf_dns(name, qtype, strict=True, timeout=None):
    """pyspf's DNSLookup, over the configured resolver (same answers as its dnspython lookup)."""
    try:
        resolver, deadline = _lookup.get()
    except LookupError:
        raise spf.TempError("DNS lookups outside a deliverability check are not allowed") from None
    try:
        records = resolver.query(name, qtype, deadline)
    except (DnsFailure, DeadlineExceeded) as failure:
        raise spf.TempError(f"DNS {failure}") from None
    found = []
    for rdata in records:
        if qtype in ("A", "AAAA"):
            found.append(((name, qtype), rdata.address))
        elif qtype == "MX":
            found.append(((name, qtype), (rdata.preference, rdata.exchange)))
        elif qtype == "PTR":
            found.append(((name, qtype), rdata.target.to_text(True)))
        elif qtype in ("TXT", "SPF"):
            found.append(((name, qtype), rdata.strings))
    return found


spf.DNSLookup = _spf_dns


@dataclass(frozen=True)
class Sending:
    """What the checks need to know of a server."""
    from_address: str
    protocol: str = "smtp"
    host: str = ""  # SMTP: where Mailroom hands the mail over
    preset: Preset | None = None  # the service it is, when Mailroom knows it
    label: str = ""  # the service's name for the words ("Microsoft 365"), else the host

    @property
    def domain(self) -> str:
        return self.from_address.rpartition("@")[2].lower().rstrip(".")


@dataclass
class SpfResult:
    verdict: str  # pass, fail, softfail, neutral, none, permerror, temperror, or "" (not evaluated)
    record: str = ""
    address: str = ""
    mechanism: str = ""  # what authorizes the server: include:…, ip4:…, ip6:…


def check(sending: Sending, addresses: list[tuple[str, str, str]], resolver: Resolver,
          deadline: Deadline) -> list[Step]:
    """The deliverability section: SPF, DKIM, DMARC, then each address (label, address, syntax problem)."""
    resolver = _AskedOnce(resolver.nameservers)
    token = _lookup.set((resolver, deadline))
    steps: list[Step] = []
    try:
        spf_result = _spf(sending, resolver, deadline, steps)
        dkim_signs = _dkim(sending, resolver, deadline, steps)
        _dmarc(sending, spf_result, dkim_signs, resolver, deadline, steps)
        for label, address, problem in addresses:
            steps.append(_address(label, address, problem, resolver, deadline))
    except (DnsFailure, DeadlineExceeded) as failure:
        steps.append(Step("DNS", Outcome.WARNING, f"the DNS lookups stopped: {failure}",
                          hint=f"check the resolver ({resolver.describe()}; MAILROOM_DNS_RESOLVER) and try again"))
    finally:
        _lookup.reset(token)
    return steps


@dataclass(frozen=True)
class _AskedOnce(Resolver):
    """The resolver for one check: each question asked once (the From, Reply-To and admin addresses
    often share a domain, which SPF and DMARC look at too)."""
    answers: dict = field(default_factory=dict, compare=False)

    def query(self, name: str, rdtype: str, deadline: Deadline) -> list:
        key = (name.lower().rstrip("."), rdtype)
        if key not in self.answers:
            self.answers[key] = super().query(name, rdtype, deadline)
        return self.answers[key]


# -- SPF -----------------------------------------------------------------------------------

def _spf(sending: Sending, resolver: Resolver, deadline: Deadline, steps: list[Step]) -> SpfResult:
    domain = sending.domain
    records = [r for r in resolver.txt(domain, deadline) if r.lower().startswith("v=spf1")]
    record = records[0] if len(records) == 1 else ""
    address, mechanism, whose = _sending_address(sending, resolver, deadline)
    if not address:
        summary = (f"not evaluated: {whose}" if whose else "not evaluated: Mailroom does not know which address "
                   "this server sends from")
        details = [("SPF record", record or "(none)")]
        steps.append(Step("SPF", Outcome.SKIPPED, summary, details=details,
                          hint="make sure the SPF record of " + domain + " lists the public addresses your mail "
                               "leaves from"))
        return SpfResult("", record)
    query = spf.query(i=address, s=sending.from_address, h=sending.host or domain, timeout=max(deadline.left(), 1))
    verdict, _code, explanation = query.check()
    result = SpfResult(verdict, record, address, mechanism)
    details = [("SPF record", record or ("(several: " + " | ".join(records) + ")" if records else "(none)")),
               ("Evaluated for", whose if address in whose else f"{address} ({whose})")]
    if verdict == "pass":
        steps.append(Step("SPF", Outcome.PASSED, f"{domain}'s SPF record allows {whose}: pass", details=details))
        return result
    fix = _spf_fix(domain, record, mechanism) if verdict in ("none", "fail", "softfail", "neutral") else ""
    if fix:
        details.append(("Record to publish", fix))
    words = {
        "none": f"{domain} has no SPF record: receivers cannot tell that {whose} may send as {domain}, and many "
                "put such mail in spam",
        "fail": f"{domain}'s SPF record does not allow {whose} (fail, -all): receivers may reject its mail",
        "softfail": f"{domain}'s SPF record does not allow {whose} (softfail, ~all): its mail is likely to land "
                    "in spam",
        "neutral": f"{domain}'s SPF record says nothing about {whose} (neutral): it does not vouch for its mail",
        "permerror": f"{domain}'s SPF record is broken (permerror: {_permerror_words(explanation)}); receivers "
                     "treat mail as if it had none or reject it",
        "temperror": f"the SPF lookups did not finish (temperror: {explanation})",
    }
    hint = ("publish the record shown (a TXT record at " + domain + "; replace the old SPF record, a domain may have "
            "only one)") if fix else ""
    if verdict == "permerror" and "lookup" in explanation.lower():
        hint = ("an SPF record may cause at most 10 DNS lookups (RFC 7208 4.6.4): remove includes of services you "
                "no longer use, or list their addresses (ip4:/ip6:) instead of include:")
    elif verdict == "permerror" and len(records) > 1:
        hint = "merge the SPF records into one: a domain may have only one"
    steps.append(Step("SPF", Outcome.WARNING, words.get(verdict, f"{verdict}: {explanation}"), details=details,
                      hint=hint))
    return result


def _permerror_words(explanation: str) -> str:
    text = explanation.removeprefix("SPF Permanent Error: ")
    if "Too many DNS lookups" in text or "More than" in text:
        return "more than 10 DNS lookups"
    if "Two or more" in text:
        return "more than one SPF record"
    return text


def _sending_address(sending: Sending, resolver: Resolver, deadline: Deadline) -> tuple[str, str, str]:
    """(an address the server sends from, the SPF mechanism that would allow it, whose it is in words);
    ("", "", why not) when Mailroom cannot know it."""
    preset = sending.preset
    if preset is not None and preset.spf_include:
        address = _address_in(preset.spf_include, resolver, deadline, 0)
        if address:
            name = sending.label or preset.service
            return address, f"include:{preset.spf_include}", f"{name}, one of the addresses in {preset.spf_include}"
        return "", "", f"{preset.spf_include} lists no address Mailroom could find"
    if preset is not None or sending.protocol != "smtp" or not sending.host:
        return "", "", ""
    host = sending.host
    try:
        found = [str(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        found = resolver.addresses(host, deadline)
    if not found:
        return "", "", f"{host} has no address in DNS"
    public = [a for a in found if not _internal(a)]
    if not public:
        return "", "", (f"{host} is at {found[0]}, not a public address: receivers see the public address your "
                        "relay or firewall sends from, which Mailroom cannot know")
    address = public[0]
    version = ipaddress.ip_address(address).version
    return address, f"ip{version}:{address}", f"{host}" if host == address else f"{host} ({address})"


INTERNAL = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "0.0.0.0/8",
    "fc00::/7", "fe80::/10", "::1/128", "::/128"))


def _internal(address: str) -> bool:
    """An address receivers never see mail come from (private, loopback, link-local, shared); the
    documentation ranges count as public (they stand for public addresses in examples and tests)."""
    ip = ipaddress.ip_address(address)
    return any(ip.version == net.version and ip in net for net in INTERNAL)


def _address_in(domain: str, resolver: Resolver, deadline: Deadline, depth: int) -> str:
    """One address a service's SPF record lists (following its includes), to evaluate the From domain for."""
    if depth > MAX_INCLUDE_DEPTH:
        return ""
    for record in resolver.txt(domain, deadline):
        if not record.lower().startswith("v=spf1"):
            continue
        terms = record.split()[1:]
        for term in terms:
            kind, _, value = term.lstrip("+").partition(":")
            if kind.lower() in ("ip4", "ip6") and value:
                network = ipaddress.ip_network(value, strict=False)
                return str(network[1] if network.num_addresses > 2 else network[0])
        for term in terms:
            kind, _, value = term.lstrip("+").partition(":")
            if kind.lower() == "include" and value:
                found = _address_in(value, resolver, deadline, depth + 1)
                if found:
                    return found
    return ""


def _spf_fix(domain: str, record: str, mechanism: str) -> str:
    """The SPF record with the server's mechanism added before its final all (or a new one)."""
    if not mechanism:
        return ""
    if not record:
        return f'{domain} TXT "v=spf1 {mechanism} ~all"'
    terms = record.split()
    if mechanism.lower() in (t.lower() for t in terms):
        return ""
    at = next((i for i, t in enumerate(terms) if t.lower().lstrip("+-~?") == "all"
               or t.lower().startswith("redirect=")), len(terms))
    return f'{domain} TXT "{" ".join([*terms[:at], mechanism, *terms[at:]])}"'


# -- DKIM ----------------------------------------------------------------------------------

def _dkim(sending: Sending, resolver: Resolver, deadline: Deadline, steps: list[Step]) -> bool | None:
    """True: the service signs as the From domain; False: its selectors have no key; None: unknown."""
    preset, domain = sending.preset, sending.domain
    if preset is None or not preset.dkim_selectors:
        whose = (sending.label or preset.service) if preset else (sending.host or "this server")
        steps.append(Step("DKIM", Outcome.SKIPPED,
                          f"Mailroom cannot know whether {whose} signs as {domain} (no documented selector)",
                          hint=f"look for “DKIM-Signature: … d={domain}” in a received message, or ask the "
                               "server's admin to sign as the From domain"))
        return None
    found = []
    for selector in preset.dkim_selectors:
        name = f"{selector}._domainkey.{domain}"
        if any("p=" in record for record in resolver.txt(name, deadline)):
            found.append(name)
    name = sending.label or preset.service
    if found:
        steps.append(Step("DKIM", Outcome.PASSED, f"{name} can sign as {domain}: a key is published at "
                                                  f"{', '.join(found)}", details=[("DKIM key", n) for n in found]))
        return True
    looked = ", ".join(f"{s}._domainkey.{domain}" for s in preset.dkim_selectors)
    steps.append(Step("DKIM", Outcome.WARNING, f"no DKIM key for {name} at {looked}: it does not sign as {domain}",
                      details=[("Looked at", looked)],
                      hint=f"turn on DKIM for {domain} at {name} and publish the records it shows (see "
                           f"{preset.dkim_docs or preset.docs})"))
    return False


# -- DMARC ---------------------------------------------------------------------------------

def base_domain(domain: str) -> str:
    """The organizational domain (RFC 7489 3.2): the public suffix and one label more. A name of one or two
    labels is its own (a public suffix is at least the last label), so the list is read for longer names only."""
    if domain.count(".") < 2:
        return domain
    return _public_suffixes().privatesuffix(domain) or domain


@cache
def _public_suffixes() -> PublicSuffixList:
    """The list the package ships (checkdmarc's base domain is the same): parsing it takes about 60 ms."""
    return PublicSuffixList()


def _dmarc(sending: Sending, spf_result: SpfResult, dkim_signs: bool | None, resolver: Resolver,
           deadline: Deadline, steps: list[Step]) -> None:
    domain = sending.domain
    base = base_domain(domain)
    location, records = domain, _dmarc_records(domain, resolver, deadline)
    if not records and base != domain:
        location, records = base, _dmarc_records(base, resolver, deadline)
    if not records:
        steps.append(Step("DMARC", Outcome.WARNING, f"{domain} has no DMARC record: receivers decide alone what to "
                                                    "do with mail that fails SPF and DKIM (Gmail and Yahoo require "
                                                    "one of bulk senders)",
                          details=[("Record to publish", f'_dmarc.{base} TXT "v=DMARC1; p=none; '
                                                         f'rua=mailto:postmaster@{base}"')],
                          hint="start with p=none and reports (rua), then move to quarantine or reject once the "
                               "reports show your mail passing"))
        return
    if len(records) > 1:
        steps.append(Step("DMARC", Outcome.WARNING, f"_dmarc.{location} has {len(records)} DMARC records: receivers "
                                                    "ignore them all", details=[("Records", " | ".join(records))],
                          hint="keep one"))
        return
    import checkdmarc.dmarc
    import checkdmarc.utils

    try:
        parsed = checkdmarc.dmarc.parse_dmarc_record(records[0], location, resolver=resolver.dnspython(deadline),
                                                     timeout=max(min(deadline.left(), 5), 0.5))
    except (checkdmarc.dmarc.DMARCError, checkdmarc.utils.DNSException, dns.exception.DNSException) as error:
        steps.append(Step("DMARC", Outcome.WARNING, f"the DMARC record of {location} cannot be read: {error}",
                          details=[("Record", records[0])], hint="correct the record (RFC 7489 6.3)"))
        return
    tags = parsed["tags"]
    policy = tags["p"]["value"]
    if location != domain and "sp" in tags:
        policy = tags["sp"]["value"]
    aligned, how = _alignment(sending, spf_result, dkim_signs, tags)
    details = [("Record", records[0]), ("Policy", f"p={policy}" + (f" at {location}" if location != domain else "")),
               ("Alignment", how), *(("Note", str(warning)) for warning in parsed.get("warnings", [])[:5])]
    if aligned:
        steps.append(Step("DMARC", Outcome.PASSED, f"the From address would align ({how}); policy {policy}",
                          details=details))
        return
    consequence = {"reject": "receivers reject mail that does not align",
                   "quarantine": "receivers put mail that does not align in spam",
                   "none": "receivers are asked to take no action, but may still treat it as spam"}.get(policy, "")
    outcome = Outcome.FAILED if policy in ("reject", "quarantine") else Outcome.WARNING
    steps.append(Step("DMARC", outcome, f"the From address would not align ({how}), and {location}'s policy is "
                                        f"{policy}: {consequence}", details=details,
                      hint="make SPF pass for the server (see SPF above) with an envelope sender in "
                           f"{domain}, or have the service sign with DKIM as {domain}"))


def _dmarc_records(domain: str, resolver: Resolver, deadline: Deadline) -> list[str]:
    return [r for r in resolver.txt(f"_dmarc.{domain}", deadline) if r.lower().startswith("v=dmarc1")]


def _alignment(sending: Sending, spf_result: SpfResult, dkim_signs: bool | None, tags: dict) -> tuple[bool, str]:
    """Whether the From would align, and how, in words (RFC 7489 3.1)."""
    preset = sending.preset
    spf_aligned = spf_result.verdict == "pass" and not (preset and preset.own_return_path)
    if dkim_signs:
        return True, f"DKIM signed as {sending.domain}" + (" and SPF pass" if spf_aligned else "")
    if spf_aligned:
        return True, f"SPF pass for the envelope sender {sending.from_address}"
    parts = []
    if preset and preset.own_return_path:
        parts.append(f"{sending.label or preset.service} sends with a bounce address of its own, so SPF cannot align "
                     f"unless you set up a custom return path in {sending.domain}")
    elif spf_result.verdict:
        parts.append(f"SPF {spf_result.verdict}")
    else:
        parts.append("SPF not evaluated")
    parts.append("no DKIM signature as " + sending.domain if dkim_signs is False else "DKIM unknown")
    return False, "; ".join(parts)


# -- Addresses -----------------------------------------------------------------------------

def _address(label: str, address: str, problem: str, resolver: Resolver, deadline: Deadline) -> Step:
    if problem:
        return Step(label, Outcome.FAILED, f"“{address}” is not an email address: {problem}",
                    hint="correct the address")
    domain = address.rpartition("@")[2].lower().rstrip(".")
    mx = resolver.mx(domain, deadline)
    if mx and all(not host for _, host in mx):
        return Step(label, Outcome.WARNING, f"{domain} says it receives no mail (null MX, RFC 7505): mail to "
                                            f"{address} cannot be delivered", details=[("MX", "0 .")],
                    hint="use an address of a domain that receives mail")
    if mx:
        return Step(label, Outcome.PASSED, f"{address}: {domain} receives mail (MX {mx[0][1]})",
                    details=[("MX", ", ".join(f"{pref} {host}" for pref, host in mx))])
    found = resolver.addresses(domain, deadline)
    if found:
        return Step(label, Outcome.PASSED, f"{address}: {domain} has no MX record; mail goes to its address "
                                           f"{found[0]} (RFC 5321 5.1)", details=[("Address", ", ".join(found))])
    return Step(label, Outcome.WARNING, f"{domain} does not exist in DNS (no MX, no address): mail to {address} "
                                        "cannot be delivered from outside", details=[("Looked at", f"MX, A, AAAA of "
                                                                                                   f"{domain}")],
                hint="check the domain's spelling; an intranet-only domain cannot receive replies from outside")
