"""The guest identity: how a newcomer (a node with a join token, a user with a login token)
reaches a hub whose one address demands a client certificate.

A hub serves nodes, users and newcomers on one address, over TLS that requires a client
certificate: gRPC for Python can require one or not ask for one, but cannot make it optional.
So a newcomer presents this certificate, whose key is published here, in the source. It proves
nothing and grants nothing: the hub accepts it at the TLS layer only so that the token-guarded
calls (``Enrol``, ``Login``) and ``Diagnose`` can be made, and checks every other call's
certificate against its own CA (``Hub.check_caller``), which never issued this one. It cannot
sign others (``CA:FALSE``): a certificate made with its key fails the handshake itself.

The newcomer verifies the hub the other way round: the token pins the hub's enrolment
certificate, which the hub presents to a client that asks for ``ENROL_SERVER_NAME`` (SNI).
"""

from __future__ import annotations

__all__ = ["ENROL_SERVER_NAME", "GUEST_CERT_PEM", "GUEST_KEY_PEM", "is_guest"]

ENROL_SERVER_NAME = "enrol.pollinate.invalid"
"""The TLS server name (SNI) under which a hub presents its enrolment certificate; any other
name, or none, gets its CA-issued server certificate. ``.invalid`` never resolves."""

GUEST_CERT_PEM = b"""-----BEGIN CERTIFICATE-----
MIIBWzCCAQCgAwIBAgIBATAKBggqhkjOPQQDAjAaMRgwFgYDVQQDDA9wb2xsaW5h
dGUgZ3Vlc3QwIBcNMjYwMTAxMDAwMDAwWhgPOTk5OTEyMzEyMzU5NTlaMBoxGDAW
BgNVBAMMD3BvbGxpbmF0ZSBndWVzdDBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IA
BAosHJ5H+Ait0iVvsqklmfmZy2WiMD7yBta8oNZxRAga5O5eUEQy10opqtRxlXap
Udul5zPCPG+nPoowMstLxbijNTAzMAwGA1UdEwEB/wQCMAAwDgYDVR0PAQH/BAQD
AgeAMBMGA1UdJQQMMAoGCCsGAQUFBwMCMAoGCCqGSM49BAMCA0kAMEYCIQCalJKj
P/GY2g739krn0ohK2z5vhChKN9ZPufZJZI1dsAIhAMBYHPMqR6BQQr6gHheuPrnO
yzk/gQm91BHD9lKhrdW+
-----END CERTIFICATE-----
"""
"""Self-signed, ``CN=pollinate guest``, ``CA:FALSE``, client authentication, valid to 9999."""

GUEST_KEY_PEM = b"""-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgXLD9TFm3YF6+IPs/
urEUoXXJCMGf/wvp5F2MBhMqAGyhRANCAAQKLByeR/gIrdIlb7KpJZn5mctlojA+
8gbWvKDWcUQIGuTuXlBEMtdKKarUcZV2qVHbpeczwjxvpz6KMDLLS8W4
-----END PRIVATE KEY-----
"""
"""Public on purpose (see the module's docstring)."""


def is_guest(certificate_pem: bytes) -> bool:
    """Whether ``certificate_pem`` is the guest certificate (as gRPC reports a peer's)."""
    return certificate_pem.strip() == GUEST_CERT_PEM.strip()
