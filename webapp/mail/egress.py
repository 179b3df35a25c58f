"""The egress policy: where a portal's connections may go.

Every connection made for a portal (Validate, sample mails, delivery, OAuth and HTTP
endpoints) asks `Network.resolve(host, port, deadline)`: the host is resolved once, every
address is checked, and only checked addresses come back to connect to (no DNS rebinding
between check and connect). One refused address refuses the host.

Order of the decision for one address (the first that matches decides):

1. the app's own database and Redis: always refused;
2. the portal's deny list, then its allow list;
3. the global deny list, then the global allow list;
4. built-in refusals: loopback, link-local (cloud metadata lives there), metadata names
   and addresses, unspecified, multicast, broadcast and reserved addresses;
5. anything else is allowed (private ranges too: intranet relays live there).

A rule is one line: a network (`10.0.0.0/8`, `::1`), a host pattern (`smtp.example.com`,
`*.corp.example`) or `*`, optionally followed by ports (`25,465,587` or `1024-65535`).
`#` starts a comment.
"""
import fnmatch
import ipaddress
import socket
from dataclasses import dataclass, field

from .deadline import Deadline, call_within

IP = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud platforms' instance metadata, credential and host-agent endpoints, by name and by address. The list
# follows PayloadsAllTheThings, "Server Side Request Forgery/SSRF-Cloud-Instances.md"
# (github.com/swisskyrepo/PayloadsAllTheThings), completed from the providers' own documentation where
# it names an address that is not link-local (those are refused as link-local anyway):
METADATA_NAMES = (
    "metadata.google.internal", "metadata.goog", "metadata",  # Google Cloud (compute metadata server)
    "instance-data", "instance-data.ec2.internal",  # AWS EC2 (IMDS)
    "metadata.azure.internal",  # Azure
    "metadata.oraclecloud.com",  # Oracle Cloud
    "metadata.tencentyun.com",  # Tencent Cloud (169.254.0.23)
    "metadata.packet.net", "metadata.platformequinix.com",  # Equinix Metal (formerly Packet)
    "rancher-metadata",  # Rancher's metadata service
)
METADATA_ADDRESSES = tuple(ipaddress.ip_address(a) for a in (
    "169.254.169.254",  # AWS, Google Cloud, Azure, Oracle, DigitalOcean, OpenStack, Hetzner, ... (IMDS)
    "fd00:ec2::254",  # AWS IMDS over IPv6 (Nitro instances)
    "169.254.170.2",  # AWS ECS task metadata and credentials
    "169.254.170.23", "fd00:ec2::23",  # AWS EKS Pod Identity agent (credentials)
    "169.254.169.123",  # AWS Time Sync
    "fd20:ce::254",  # Google Cloud metadata server over IPv6
    "168.63.129.16",  # Azure WireServer / host agent (a public address: "What is IP address 168.63.129.16?")
    "192.0.0.192",  # Oracle Cloud's metadata service (legacy address)
    "fd00:c1::a9fe:a9fe",  # Oracle Cloud IMDS over IPv6
    "100.100.100.200",  # Alibaba Cloud ECS metadata
    "169.254.0.23",  # Tencent Cloud metadata
))
NAT64 = ipaddress.ip_network("64:ff9b::/96")


class EgressRefused(Exception):
    """The policy refuses a destination; str() says which rule and what to do."""

    def __init__(self, host: str, port: int, address: str, reason: str):
        self.host, self.port, self.address, self.reason = host, port, address, reason
        where = host if address in ("", host) else f"{host} ({address})"
        super().__init__(f"the egress policy refuses {where} port {port}: {reason}")


REFUSED_DESTINATION = "Refused destination"  # the detail a report's reader can allow from


REFUSED_HINT = "check the host and port (nothing was sent there); if they are right, the policy must allow them"
REFUSED_ALL_HINT = ("check the hosts and ports (nothing was sent to any of them); if they are right, the policy must "
                    "allow them all")


def egress_details(refused: EgressRefused) -> list[tuple[str, str]]:
    """The details of a refused step: the destination as a rule that would allow it."""
    target = refused.address or normalize_host(refused.host)
    return [(REFUSED_DESTINATION, f"{target} {refused.port}")]


@dataclass(frozen=True)
class Rule:
    text: str  # the line as written, for messages
    source: str  # "the portal's deny list, line 2"
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    pattern: str | None = None  # a host pattern, lower case, ASCII
    ports: tuple[tuple[int, int], ...] = ()  # inclusive ranges; empty: every port

    def matches(self, host: str, ip: IP | None, port: int) -> bool:
        if self.ports and not any(low <= port <= high for low, high in self.ports):
            return False
        if self.network is not None:
            return ip is not None and ip.version == self.network.version and ip in self.network
        return fnmatch.fnmatchcase(host, self.pattern)


def parse_rules(text: str, source: str) -> list[Rule]:
    """Rules from a text, one per line; ValueError names the line that is wrong."""
    rules = []
    for number, raw in enumerate((text or "").splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if line:
            try:
                rules.append(_parse_rule(line, f"{source}, line {number}"))
            except ValueError as error:
                raise ValueError(f"line {number} “{line}”: {error}") from None
    return rules


def _parse_rule(line: str, source: str) -> Rule:
    words = line.split()
    if len(words) > 2:
        raise ValueError("write a network or host, then optionally ports (e.g. 10.0.0.0/8 25,587)")
    target, ports = words[0], _parse_ports(words[1]) if len(words) == 2 else ()
    try:
        network = ipaddress.ip_network(target.strip("[]"), strict=False)
    except ValueError:
        network = None
    if network is not None:
        return Rule(line, source, network=network, ports=ports)
    pattern = target.lower().rstrip(".")
    if not all(ch.isalnum() or ch in "-.*_" for ch in pattern):
        raise ValueError("not a network (10.0.0.0/8), an address or a host pattern (*.example.com)")
    try:  # hosts are compared in their ASCII form (bücher.example -> xn--bcher-kva.example)
        pattern = ".".join(label if "*" in label or not label else label.encode("idna").decode("ascii")
                           for label in pattern.split("."))
    except UnicodeError:
        raise ValueError("not a valid host name") from None
    return Rule(line, source, pattern=pattern, ports=ports)


def _parse_ports(text: str) -> tuple[tuple[int, int], ...]:
    ranges = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        try:
            low_port, high_port = int(low), int(high or low)
        except ValueError:
            raise ValueError(f"“{part}” is not a port or a range of ports (25 or 1024-65535)") from None
        if not 1 <= low_port <= high_port <= 65535:
            raise ValueError(f"“{part}”: ports go from 1 to 65535")
        ranges.append((low_port, high_port))
    return tuple(ranges)


@dataclass(frozen=True)
class Protected:
    """An endpoint of the app itself (its database, its Redis): never a portal's destination."""
    what: str
    addresses: frozenset[IP]
    port: int


@dataclass(frozen=True)
class Policy:
    portal_deny: tuple[Rule, ...] = ()
    portal_allow: tuple[Rule, ...] = ()
    global_deny: tuple[Rule, ...] = ()
    global_allow: tuple[Rule, ...] = ()
    protected: tuple[Protected, ...] = ()
    hint: str = ("a super-admin can allow it: “Egress policy” in the top bar for every portal, or the "
                 "portal's “Settings” for this one")
    # Where a refusal by a deny rule is lifted (the portal's allow list comes before the global deny list)
    portal_deny_hint: str = "a super-admin can change that list: the portal's “Settings”"
    global_deny_hint: str = ("a super-admin can allow it in the portal's “Settings” for this portal, or change that "
                             "list: “Egress policy” in the top bar")

    def check_name(self, host: str, port: int) -> None:
        """Before resolving: the rules on host names, and the metadata names."""
        name = normalize_host(host)
        decided = self._by_rules(name, None, port)
        if decided is not None:
            allowed, reason = decided
            if not allowed:
                raise EgressRefused(host, port, "", reason)
            return
        if name in METADATA_NAMES or any(name.endswith("." + m) for m in ("metadata.google.internal", "metadata.goog")):
            raise EgressRefused(host, port, "", f"{name} is a cloud metadata service (built-in rule); "
                                                f"{self.hint}")

    def check_address(self, host: str, address: str, port: int) -> None:
        name = normalize_host(host)
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        for endpoint in self.protected:
            if port == endpoint.port and any(unwrap(ip) == unwrap(a) for a in endpoint.addresses):
                raise EgressRefused(host, port, address, f"that is {endpoint.what} (always refused)")
        decided = self._by_rules(name, ip, port)
        if decided is not None:
            allowed, reason = decided
            if not allowed:
                raise EgressRefused(host, port, address, reason)
            return
        category = builtin_refusal(ip)
        if category:
            raise EgressRefused(host, port, address, f"{category} (built-in rule); {self.hint}")

    def _by_rules(self, name: str, ip: IP | None, port: int) -> tuple[bool, str] | None:
        for rules, allowed, hint in ((self.portal_deny, False, self.portal_deny_hint), (self.portal_allow, True, ""),
                                     (self.global_deny, False, self.global_deny_hint), (self.global_allow, True, "")):
            for rule in rules:
                if rule.matches(name, unwrap(ip) if ip else None, port) or (
                        ip is not None and rule.matches(name, ip, port)):
                    if allowed:
                        return True, f"“{rule.text}” in {rule.source} allows it"
                    return False, f"“{rule.text}” in {rule.source} refuses it; {hint}"
        return None


def builtin_refusal(ip: IP) -> str:
    """Why an address is refused by default, or "" when it is not."""
    for candidate in dict.fromkeys((unwrap(ip), ip)):  # the IPv4 inside first: what it really reaches
        if candidate in METADATA_ADDRESSES:
            return f"{candidate} is a cloud metadata address"
        if candidate.is_loopback:
            return f"{candidate} is a loopback address (this machine)"
        if candidate.is_link_local:
            return f"{candidate} is a link-local address (cloud metadata services live there)"
        if candidate.is_unspecified:
            return f"{candidate} is the unspecified address"
        if candidate.is_multicast:
            return f"{candidate} is a multicast address"
        if candidate.version == 4 and (candidate == ipaddress.IPv4Address("255.255.255.255")
                                       or candidate in ipaddress.ip_network("0.0.0.0/8")):
            return f"{candidate} is not an address a server can have"
        if candidate.is_reserved:
            return f"{candidate} is a reserved address"
    return ""


def unwrap(ip: IP) -> IP:
    """The IPv4 address inside an IPv6 one (IPv4-mapped, NAT64, 6to4, Teredo), else ip itself."""
    if ip.version == 6:
        if ip.ipv4_mapped:
            return ip.ipv4_mapped
        if ip in NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if ip.sixtofour:
            return ip.sixtofour
        if ip.teredo:
            return ip.teredo[1]
    return ip


def _literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False
    return True


def normalize_host(host: str) -> str:
    name = host.strip().strip("[]").rstrip(".").lower()
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        return name


@dataclass
class Network:
    """Resolves and connects under a policy. `resolve` is the only way transports learn addresses."""

    policy: Policy = field(default_factory=Policy)
    extra_ca_pem: str = ""  # CA certificates trusted for every TLS connection (EXTRA_CA_CERTS)
    resolver: object = socket.getaddrinfo
    proxy: object = None  # a server's mail.proxy.Proxy: its connections go through it (see mail/proxy.py)

    def resolve(self, host: str, port: int, deadline: Deadline) -> list[tuple[int, tuple]]:
        """[(family, sockaddr)] for host:port, every one checked; EgressRefused otherwise."""
        name = host.strip().strip("[]")
        self.policy.check_name(name, port)
        if _literal(name):  # nothing to look up: no thread to wait on
            infos = self.resolver(name, port, 0, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
        else:
            infos = call_within(deadline, self.resolver, name, port, 0, socket.SOCK_STREAM)
        addresses = list(dict.fromkeys((family, sockaddr) for family, _, _, _, sockaddr in infos
                                       if family in (socket.AF_INET, socket.AF_INET6)))
        for _, sockaddr in addresses:
            self.policy.check_address(name, sockaddr[0], port)
        return addresses
