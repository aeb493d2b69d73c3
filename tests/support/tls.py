"""Certificates made at test time (trustme), for FaultProxy's TLS mode: a CA, a server
certificate it signs for 127.0.0.1 and localhost, and a second CA that signs nothing the
proxy shows (a client trusting only that one must refuse the server). Nothing is committed:
the keys live in memory and the CA files in a test's temporary folder."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class TestCertificates:
    """`ca_pem`: the CA that signed the server's certificate (PEM file); `other_ca_pem`: a CA
    that did not; `server`: a server-side context holding the certificate and its key."""

    __test__ = False  # not a test class, despite the name

    ca_pem: Path
    other_ca_pem: Path
    server: ssl.SSLContext


def make_certificates(folder: Path) -> TestCertificates:
    """A fresh CA pair and server certificate; writes `ca.pem` and `other-ca.pem` in
    `folder` (which must exist). A few milliseconds of key generation (EC keys)."""
    ca = trustme.CA()
    other = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    leaf.configure_cert(server)
    ca_pem, other_ca_pem = folder / "ca.pem", folder / "other-ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    other.cert_pem.write_to_path(str(other_ca_pem))
    return TestCertificates(ca_pem, other_ca_pem, server)
