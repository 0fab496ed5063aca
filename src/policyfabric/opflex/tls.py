"""TLS for OpFlex sessions: mutual TLS when a CA is given."""

from __future__ import annotations

import ssl
from pathlib import Path


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
