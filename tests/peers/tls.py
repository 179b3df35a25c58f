"""Pytest plugin: one test certificate authority (trustme) for every TLS peer on loopback.

    test_ca            the trustme.CA (session)
    test_ca_pem        its certificate in PEM, to paste into a form or trust in a client
    test_ca_file       the same written to a file (for requests' verify= or EXTRA_CA_CERTS)
    server_context(ca) an ssl.SSLContext for a server whose certificate is for localhost and 127.0.0.1
"""
import ssl

import pytest
import trustme


def server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*(names or ("localhost", "127.0.0.1"))).configure_cert(context)
    return context


@pytest.fixture(scope="session")
def test_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def test_ca_pem(test_ca) -> str:
    return test_ca.cert_pem.bytes().decode()


@pytest.fixture(scope="session")
def test_ca_file(test_ca_pem, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("ca") / "test-ca.pem"
    path.write_text(test_ca_pem)
    return str(path)
