"""TLS for OpFlex sessions: mutual TLS when a CA is given, and who a client certificate names.

With a CA, the authority requires a client certificate it signed, and an
agent may only call itself by a name its certificate carries (its subject's
common name or one of its DNS subject alternative names): ``certificate_names``
reads them from what ``ssl`` reports about the peer, ``fingerprint`` tells
one certificate from another (a reconnecting agent presents the same one).
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def server_context(cert: Path, key: Path, ca: Path | None) -> ssl.SSLContext:
    """The authority's side; with ``ca``, clients must present a certificate it signed."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    if ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(ca)
    return ctx


def client_context(ca: Path | None, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    """The agent's side: verifies the authority against ``ca`` (by chain; agents
    usually dial addresses, so the host name is not checked) and presents
    ``cert`` if given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    if ca is not None:
        ctx.load_verify_locations(ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_NONE  # "encrypted" mode of libopflex
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


def certificate_names(cert: Mapping[str, Any] | None) -> frozenset[str]:
    """The names a verified peer certificate (``SSLSocket.getpeercert()``'s dict) vouches for: the
    subject's common names and its DNS subject alternative names, lower-cased (host names are
    case-insensitive). IP addresses, e-mail and URI SANs name no host and are left out."""
    if not cert:
        return frozenset()
    names: set[str] = set()
    for rdn in cert.get("subject", ()):
        for pair in rdn:
            if len(pair) == 2 and pair[0] == "commonName" and isinstance(pair[1], str):
                names.add(pair[1].lower())
    for pair in cert.get("subjectAltName", ()):
        if len(pair) == 2 and pair[0] == "DNS" and isinstance(pair[1], str):
            names.add(pair[1].lower())
    return frozenset(names)


def fingerprint(der: bytes) -> str:
    """SHA-256 of a certificate (DER): two sessions with the same one are the same holder."""
    return hashlib.sha256(der).hexdigest()
