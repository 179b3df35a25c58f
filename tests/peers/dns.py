"""Pytest plugin: a DNS server on loopback (dnslib), UDP and TCP on one port, that answers from
records the test sets, as an authoritative server does (RFC 1035 4.1.1): NXDOMAIN for a name it
has nothing for, NOERROR with no answer for a name that exists without that type, CNAMEs followed
within its records. Every app the tests make asks it and nothing else (DNS_RESOLVER).

    dns_peer            the server (session); .port, .queries [(name, type)]
    dns_zone            the same, emptied for this test: dns_zone.add("example.test", "MX", "10 mx.example.test.")
                        or dns_zone.zone(text) with zone-file lines ("name TTL IN TYPE data")
"""
import socket
import threading

import pytest
from dnslib import QTYPE, RCODE, RR, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer


class _Silence(Exception):
    """Raised by the resolver for a name it never answers: the handler sends nothing."""


class QuietHandler(DNSHandler):
    def handle(self):
        try:
            super().handle()
        except _Silence:
            pass


class ZoneResolver(BaseResolver):
    def __init__(self):
        self.records: list[RR] = []
        self.queries: list[tuple[str, str]] = []
        self.silent: set[str] = set()  # names it never answers (a resolver that times out)
        self.failing: set[str] = set()  # names it answers SERVFAIL for
        self.lock = threading.Lock()

    def resolve(self, request: DNSRecord, handler):
        reply = request.reply()
        qname, qtype = request.q.qname, QTYPE[request.q.qtype]
        name = str(qname).rstrip(".").lower()
        with self.lock:
            self.queries.append((name, qtype))
            records = list(self.records)
        if name in self.silent:
            raise _Silence
        if name in self.failing:
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        wanted, seen = name, set()
        while wanted not in seen:
            seen.add(wanted)
            matches = [rr for rr in records if str(rr.rname).rstrip(".").lower() == wanted]
            answers = [rr for rr in matches if QTYPE[rr.rtype] == qtype]
            cname = [rr for rr in matches if QTYPE[rr.rtype] == "CNAME"]
            if answers or not cname or qtype == "CNAME":
                for rr in answers:
                    reply.add_answer(rr)
                if not matches and wanted == name:
                    reply.header.rcode = RCODE.NXDOMAIN
                return reply
            reply.add_answer(cname[0])
            wanted = str(cname[0].rdata.label).rstrip(".").lower()
        return reply


class DnsPeer:
    def __init__(self):
        self.resolver = ZoneResolver()
        logger = DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False)
        self.udp = DNSServer(self.resolver, address="127.0.0.1", port=0, logger=logger,
                             handler=QuietHandler)
        self.port = self.udp.server.server_address[1]
        self.tcp = DNSServer(self.resolver, address="127.0.0.1", port=self.port, tcp=True, logger=logger,
                             handler=QuietHandler)
        self.udp.start_thread()
        self.tcp.start_thread()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def queries(self) -> list[tuple[str, str]]:
        return self.resolver.queries

    def add(self, name: str, rtype: str, data: str, ttl: int = 300) -> "DnsPeer":
        if rtype == "TXT" and not data.startswith('"'):  # one record; split in 255-byte strings as DNS must
            data = " ".join('"' + data[i:i + 255].replace('"', '\\"') + '"' for i in range(0, len(data), 255))
        return self.zone(f"{name}. {ttl} IN {rtype} {data}")

    def zone(self, text: str) -> "DnsPeer":
        with self.resolver.lock:
            self.resolver.records.extend(RR.fromZone(text))
        return self

    def clear(self) -> None:
        with self.resolver.lock:
            self.resolver.records.clear()
            self.resolver.queries.clear()
            self.resolver.silent.clear()
            self.resolver.failing.clear()

    def stop(self) -> None:
        self.udp.stop()
        self.tcp.stop()


@pytest.fixture(scope="session")
def dns_peer():
    peer = DnsPeer()
    yield peer
    peer.stop()


@pytest.fixture
def dns_zone(dns_peer):
    dns_peer.clear()
    yield dns_peer
    dns_peer.clear()


def free_loopback_address() -> str:
    """A loopback address other than 127.0.0.1 with port 443 free (for a peer that must be on 443)."""
    import random
    for _ in range(50):
        address = f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(2, 254)}"
        with socket.socket() as sock:
            try:
                sock.bind((address, 443))
            except OSError:
                continue
        return address
    raise RuntimeError("no loopback address with port 443 free")
