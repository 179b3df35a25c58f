"""Find settings: from a mail address to the settings of the server that sends its mail.

In order, the first that answers wins:

1. the domain's autoconfig document, Thunderbird's format (config-v1.1.xml), at
   `https://autoconfig.<domain>/mail/config-v1.1.xml?emailaddress=<address>`, then
   `https://<domain>/.well-known/autoconfig/mail/config-v1.1.xml`
   (wiki.mozilla.org/Thunderbird:Autoconfiguration, "Mechanisms"; the format:
   wiki.mozilla.org/Thunderbird:Autoconfiguration:ConfigFileFormat);
2. RFC 6186 SRV records: `_submissions._tcp.<domain>` (implicit TLS, RFC 8314 5.1), then
   `_submission._tcp.<domain>` (STARTTLS); a target of "." means "not offered";
3. the MX records: a domain whose mail a known service hosts (Microsoft 365, Google, ...) gets that
   service's preset (presets.for_mx).

The HTTP fetches go through mail/http.py (the portal's egress policy, https:// only, no redirect,
at most DOCUMENT_LIMIT bytes; requests and http.py are imported by the first autoconfig fetch, so the
pages that import this module do not load the HTTP client), their host names resolved by the configured
resolver; the XML is parsed by defusedxml (no DTD, no entities; imported with the first document). DNS goes to
the configured resolver only. Nothing is saved: the caller fills the form and says where each value came from.
"""
from dataclasses import dataclass, field, replace
from urllib.parse import quote

from .auth import AuthType
from .deadline import Deadline, DeadlineExceeded
from .dns import DnsFailure, Resolver
from .egress import EgressRefused, Network
from .presets import Preset, for_mx, for_server
from .smtp import Security

DOCUMENT_LIMIT = 64 * 1024  # an autoconfig document is a few KB
FETCH_SECONDS = 5  # each autoconfig address (a web server that never answers must leave time for DNS)
SOCKET_TYPES = {"SSL": Security.TLS, "STARTTLS": Security.STARTTLS, "plain": Security.NONE}
# Thunderbird's <authentication> values -> Mailroom's authentication (the first one Mailroom can do wins)
AUTHENTICATIONS = {"OAuth2": AuthType.OAUTH, "password-cleartext": AuthType.BASIC,
                   "password-encrypted": AuthType.BASIC, "none": AuthType.NONE, "client-IP-address": AuthType.NONE}


@dataclass
class Found:
    """What Find settings found: the form's values, where each came from, and what it looked at."""
    address: str
    values: dict[str, str] = field(default_factory=dict)  # form field -> value
    sources: dict[str, str] = field(default_factory=dict)  # form field -> where it came from, in words
    looked: list[str] = field(default_factory=list)  # each lookup and its outcome, in order
    preset: Preset | None = None  # the service the settings are, when Mailroom knows it
    refused: EgressRefused | None = None  # an autoconfig host the egress policy refused

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2].lower().rstrip(".")

    def fill(self, values: dict[str, str], source: str) -> None:
        for name, value in values.items():
            self.values[name] = value
            self.sources[name] = source


def find(address: str, resolver: Resolver, network: Network, deadline: Deadline) -> Found:
    found = Found(address)
    try:
        if _autoconfig(found, resolver, network, deadline):
            return found
        if _srv(found, resolver, deadline):
            return found
        _mx(found, resolver, deadline)
    except (DnsFailure, DeadlineExceeded) as failure:
        found.looked.append(f"stopped: {failure}")
    return found


# -- 1. autoconfig ----------------------------------------------------------------------------

def autoconfig_urls(address: str, domain: str) -> list[str]:
    return [f"https://autoconfig.{domain}/mail/config-v1.1.xml?emailaddress={quote(address, safe='@')}",
            f"https://{domain}/.well-known/autoconfig/mail/config-v1.1.xml"]


def _autoconfig(found: Found, resolver: Resolver, network: Network, deadline: Deadline) -> bool:
    import requests

    from . import http

    checked = replace(network, resolver=resolver.getaddrinfo_within(deadline))
    for url in autoconfig_urls(found.address, found.domain):
        where = url.split("?", 1)[0]
        try:
            with http.session(checked, Deadline(min(FETCH_SECONDS, deadline.left())), DOCUMENT_LIMIT) as session:
                response = session.get(url, headers={"Accept": "application/xml, text/xml"})
                text = response.content
        except EgressRefused as refused:
            found.refused = found.refused or refused
            found.looked.append(f"{where}: not fetched, {refused}")
            continue
        except http.AnswerRefused as refused:
            found.looked.append(f"{where}: {refused}")
            continue
        except requests.RequestException as error:
            found.looked.append(f"{where}: no answer ({http.reason(error)})")
            continue
        except DeadlineExceeded as late:
            found.looked.append(f"{where}: no answer in time ({late})")
            continue
        if response.status_code != 200:
            found.looked.append(f"{where}: no document ({response.status_code} {response.reason or ''})".rstrip())
            continue
        problem = _read_document(found, text, where)
        if not problem:
            return True
        found.looked.append(f"{where}: {problem}")
    return False


def _read_document(found: Found, text: bytes, where: str) -> str:
    """Fill `found` from an autoconfig document; the reason in words when it cannot be used."""
    from xml.etree.ElementTree import ParseError  # the XML parser with the first document, not with every page

    import defusedxml.ElementTree
    from defusedxml import DefusedXmlException

    try:
        root = defusedxml.ElementTree.fromstring(text, forbid_dtd=True)
    except (ParseError, DefusedXmlException, ValueError):
        return "not a readable autoconfig document (XML expected; DTDs and entities are refused)"
    if root.tag != "clientConfig":
        return f"not an autoconfig document (its root is <{root.tag}>, not <clientConfig>)"
    servers = [s for s in root.iter("outgoingServer") if s.get("type") == "smtp"]
    server = next((s for s in servers if (s.findtext("hostname") or "").strip()), None)
    if server is None:
        return "the document names no outgoing SMTP server"
    host = _expand(server.findtext("hostname") or "", found).strip()
    values = {"protocol": "smtp", "host": host}
    security = SOCKET_TYPES.get((server.findtext("socketType") or "").strip())
    if security is not None:
        values["security"] = security.value
    port = (server.findtext("port") or "").strip()
    if port.isdigit() and 1 <= int(port) <= 65535:
        values["port"] = port
    offered = [(a.text or "").strip() for a in server.iter("authentication")]
    auth = next((AUTHENTICATIONS[a] for a in offered if a in AUTHENTICATIONS), None)
    preset = for_server("smtp", host)
    if auth == AuthType.OAUTH and (preset is None or not preset.oauth):
        auth = next((AUTHENTICATIONS[a] for a in offered if a in AUTHENTICATIONS and a != "OAuth2"), None)
    if auth is not None:
        values["auth_type"] = auth.value
    username = _expand(server.findtext("username") or "", found).strip()
    if username and auth != AuthType.NONE:
        values["username"] = username
    name = (root.findtext("emailProvider/displayName") or "").strip()
    source = f"the autoconfig document at {where}" + (f" ({name[:80]})" if name else "")
    found.fill(values, source)
    found.looked.append(f"{where}: found the outgoing server {host}")
    if preset is not None and auth == AuthType.OAUTH:  # the service's OAuth settings, from its preset
        oauth = {k: v for k, v in preset.values(found.address).items() if k in ("provider", "cloud", "tenant", "flow")}
        found.fill(oauth, f"the preset {preset.label} (the document's server is {preset.service}'s)")
    found.preset = preset
    return ""


def _expand(text: str, found: Found) -> str:
    """Thunderbird's placeholders (ConfigFileFormat: %EMAILADDRESS%, %EMAILLOCALPART%, %EMAILDOMAIN%)."""
    local = found.address.rpartition("@")[0]
    return (text.replace("%EMAILADDRESS%", found.address).replace("%EMAILLOCALPART%", local)
            .replace("%EMAILDOMAIN%", found.domain))


# -- 2. SRV (RFC 6186) ------------------------------------------------------------------------

def _srv(found: Found, resolver: Resolver, deadline: Deadline) -> bool:
    for service, security in (("_submissions._tcp", Security.TLS), ("_submission._tcp", Security.STARTTLS)):
        name = f"{service}.{found.domain}"
        records = resolver.srv(name, deadline)
        if not records:
            found.looked.append(f"{name}: no SRV record")
            continue
        best = records[0]
        if not best.target:  # RFC 6186 3.4 / RFC 2782: "." says the service is not offered at this domain
            found.looked.append(f"{name}: says the service is not offered (target “.”)")
            continue
        preset = for_server("smtp", best.target)
        values = {"protocol": "smtp", "host": best.target, "port": str(best.port), "security": security.value}
        if preset is None:  # RFC 6186 leaves the sign-in to the server: the usual one for submission
            values.update({"auth_type": AuthType.BASIC.value, "username": found.address})
            found.fill({k: values[k] for k in ("protocol", "host", "port", "security")},
                       f"the SRV record {name}")
            found.fill({k: values[k] for k in ("auth_type", "username")},
                       "the usual sign-in for mail submission (RFC 6409): your address and password")
        else:
            found.fill(values, f"the SRV record {name}")
            found.fill({k: v for k, v in preset.values(found.address).items() if k not in values},
                       f"the preset {preset.label} (the SRV record's server is {preset.service}'s)")
        found.preset = preset
        found.looked.append(f"{name}: {best.target} port {best.port}")
        return True
    return False


# -- 3. MX ------------------------------------------------------------------------------------

def _mx(found: Found, resolver: Resolver, deadline: Deadline) -> bool:
    records = resolver.mx(found.domain, deadline)
    if not records:
        found.looked.append(f"{found.domain}: no MX record")
        return False
    host = records[0][1]
    preset = next((p for p in (for_mx(h) for _, h in records if h) if p is not None), None)
    if preset is None:
        found.looked.append(f"{found.domain}: MX {host or '.'}, not a service Mailroom knows")
        return False
    found.fill(preset.values(found.address), f"the preset {preset.label} (the MX of {found.domain} is {host}, "
                                             f"{preset.service}'s)")
    found.preset = preset
    found.looked.append(f"{found.domain}: MX {host} ({preset.service})")
    return True
