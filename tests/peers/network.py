"""Pytest plugin: no test may open a connection beyond this machine.

An autouse fixture patches socket.socket.connect, connect_ex and sendto (SSLSocket and
everything built on socket.socket go through them; sendto carries DNS queries over UDP) so that connecting anywhere
but 127.0.0.0/8, ::1 or a unix socket raises OSError("test network guard: ...").
Name resolution (getaddrinfo) is left alone: it does not send mail.
"""
import ipaddress
import socket

import pytest

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_sendto = socket.socket.sendto


def is_local(family: int, address) -> bool:
    """True for a unix socket path or a loopback IP address (IPv4-mapped included)."""
    if getattr(socket, "AF_UNIX", None) == family or isinstance(address, (str, bytes)):
        return True
    if family not in (socket.AF_INET, socket.AF_INET6) or not isinstance(address, tuple):
        return False
    host = address[0]
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False  # a host name other than localhost: refuse rather than resolve
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


def _check(sock: socket.socket, address) -> None:
    if not is_local(sock.family, address):
        raise OSError(f"test network guard: connecting to {address!r} is not allowed in tests")


def _guarded_connect(self, address):
    _check(self, address)
    return _real_connect(self, address)


def _guarded_connect_ex(self, address):
    _check(self, address)
    return _real_connect_ex(self, address)


def _guarded_sendto(self, data, *args):
    _check(self, args[-1])  # sendto(data, address) or sendto(data, flags, address): a datagram (DNS over UDP)
    return _real_sendto(self, data, *args)


@pytest.fixture(autouse=True)
def network_guard(monkeypatch):
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", _guarded_connect_ex)
    monkeypatch.setattr(socket.socket, "sendto", _guarded_sendto)
