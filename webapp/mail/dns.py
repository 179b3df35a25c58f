"""DNS lookups for Find settings and the deliverability checks (dnspython).

Queries go only to the configured resolver (`DNS_RESOLVER`: addresses with optional ports,
e.g. "192.0.2.53, [2001:db8::53]:5353"; empty: the system's, /etc/resolv.conf), never to a
domain's own name servers, and each query gets only the time left of the caller's Deadline.
A name that does not exist, or has no record of that type, is an empty answer; a resolver
that does not answer (timeout, SERVFAIL, refused) is `DnsFailure`, in words.

dnspython is imported at the first lookup, not with this module (the configuration reads
`parse_nameservers` at every start), and without its DNS-over-HTTPS client (plain_dns.py).
"""
import ipaddress
import socket
from dataclasses import dataclass

from .deadline import Deadline, DeadlineExceeded

TRY_SECONDS = 2.0  # one try at one name server; the rest of the deadline goes to the next tries


class DnsFailure(Exception):
    """The resolver gave no usable answer; str() says so in words."""


def parse_nameservers(text: str | None) -> tuple[tuple[str, int], ...]:
    """ "192.0.2.53, 127.0.0.1:5353, [::1]:53" -> ((address, port), ...); ValueError names the bad one."""
    servers = []
    for item in (text or "").replace(";", ",").replace(" ", ",").split(","):
        item = item.strip()
        if not item:
            continue
        host, port = item, 53
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            if rest:
                port = _port(rest.removeprefix(":"), item)
        elif item.count(":") == 1:
            host, _, rest = item.partition(":")
            port = _port(rest, item)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"“{item}” is not a resolver address (an IP address, optionally with :port)") from None
        servers.append((host, port))
    return tuple(servers)


def _port(text: str, item: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"“{item}”: the port must be a number from 1 to 65535")
    return int(text)


@dataclass(frozen=True)
class Srv:
    priority: int
    weight: int
    port: int
    target: str  # without the final dot; "" for "." (the service is not offered, RFC 2782)


@dataclass(frozen=True)
class Resolver:
    nameservers: tuple[tuple[str, int], ...] = ()  # empty: the system's resolver configuration

    @classmethod
    def from_setting(cls, text: str | None) -> "Resolver":
        return cls(parse_nameservers(text))

    def describe(self) -> str:
        if not self.nameservers:
            return "the system's resolver"
        return ", ".join(f"{host}:{port}" if port != 53 else host for host, port in self.nameservers)

    def dnspython(self, deadline: Deadline):
        """A dnspython resolver asking the configured servers within the deadline (for libraries that
        take one, such as checkdmarc)."""
        from . import plain_dns  # noqa: F401 (before dnspython's resolver)
        import dns.nameserver
        import dns.resolver

        try:
            resolver = dns.resolver.Resolver(configure=not self.nameservers)
        except dns.resolver.NoResolverConfiguration:
            raise DnsFailure("this machine has no DNS resolver configured (set MAILROOM_DNS_RESOLVER)") from None
        if self.nameservers:
            resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port) for host, port in self.nameservers]
        left = _left(deadline)
        resolver.lifetime, resolver.timeout = left, min(TRY_SECONDS, left)
        resolver.cache = None
        return resolver

    def query(self, name: str, rdtype: str, deadline: Deadline) -> list:
        """The records of that type ([] when the name or the type does not exist)."""
        from . import plain_dns  # noqa: F401 (before dnspython's resolver)
        import dns.exception
        import dns.name
        import dns.resolver

        try:
            answer = self.dnspython(deadline).resolve(name, rdtype, search=False, raise_on_no_answer=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.resolver.LifetimeTimeout:
            raise DnsFailure(f"{self.describe()} did not answer about {name} in time") from None
        except dns.resolver.NoNameservers:
            raise DnsFailure(f"{self.describe()} could not answer about {name} (it failed or refused)") from None
        except (dns.name.NameTooLong, dns.name.LabelTooLong, dns.name.EmptyLabel, UnicodeError):
            return []  # no such name can exist
        except dns.exception.DNSException as error:
            raise DnsFailure(f"{self.describe()} gave no usable answer about {name} ({error})") from None
        return list(answer.rrset or [])

    def txt(self, name: str, deadline: Deadline) -> list[str]:
        """Each TXT record as one string (its character-strings joined, RFC 7208 3.3)."""
        return [b"".join(r.strings).decode("utf-8", "replace") for r in self.query(name, "TXT", deadline)]

    def mx(self, name: str, deadline: Deadline) -> list[tuple[int, str]]:
        """(preference, host) lowest first; a null MX (RFC 7505) is (0, "")."""
        records = [(r.preference, r.exchange.to_text(omit_final_dot=True).lower())
                   for r in self.query(name, "MX", deadline)]
        return sorted((pref, "" if host in ("", ".") else host) for pref, host in records)

    def srv(self, name: str, deadline: Deadline) -> list[Srv]:
        import dns.name

        records = [Srv(r.priority, r.weight, r.port,
                       "" if r.target == dns.name.root else r.target.to_text(omit_final_dot=True).lower())
                   for r in self.query(name, "SRV", deadline)]
        return sorted(records, key=lambda s: (s.priority, -s.weight))

    def addresses(self, name: str, deadline: Deadline) -> list[str]:
        """A then AAAA."""
        return [r.address for rdtype in ("A", "AAAA") for r in self.query(name, rdtype, deadline)]

    def getaddrinfo_within(self, deadline: Deadline):
        """socket.getaddrinfo's shape over this resolver: for Network(resolver=...), so an HTTP fetch
        for a portal (autoconfig) resolves with the configured resolver, then passes the egress policy."""
        def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
            if flags & socket.AI_NUMERICHOST:
                return socket.getaddrinfo(host, port, family, type, proto, flags)
            try:
                found = self.addresses(host, deadline)
            except DnsFailure as failure:
                raise socket.gaierror(socket.EAI_AGAIN, str(failure)) from None
            if not found:
                raise socket.gaierror(socket.EAI_NONAME, f"{host} has no address in DNS")
            return [(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                     (address, port) if ":" not in address else (address, port, 0, 0)) for address in found]
        return getaddrinfo


def _left(deadline: Deadline) -> float:
    try:
        return deadline.left()
    except DeadlineExceeded:
        raise DnsFailure("no time was left for the DNS lookups") from None
