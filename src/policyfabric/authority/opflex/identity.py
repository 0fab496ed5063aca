"""Who a session is: what its transport proved, and whether it may take the name it asks for.

An agent names itself in ``send_identity``; everything it reports is then
filed under that name (its endpoints' host, its faults and counters, its
gateway ports, which the SNAT election trusts). So the name is checked:

- it must be a host name (``model.types.check_hostname``, RFC 1123): it is
  written into endpoint records, which the store must always read back;
- with mutual TLS (the authority has a CA), it must be one the client
  certificate carries, its common name or a DNS subject alternative name
  (exact match, no wildcards): a certificate for h1 cannot speak for h2;
- only one live session holds a name. A new one takes it over only when it
  presents the same certificate as the live one (the agent reconnected; its
  old connection is half-open). A different certificate, or any second
  session on plain TCP or TLS without a CA (nothing tells holders apart
  there), is refused, so a stranger cannot push an agent off; the live
  session is then sent an echo, and closed if it does not answer, so an agent
  whose old connection died gets its name back at its next attempt.

Without a CA nothing binds names to peers: anyone who can reach the port can
claim any free name. That is the lab's plain-TCP mode; docs/operations.md
says what each option protects.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

from policyfabric.opflex.rpc import RpcError
from policyfabric.opflex.tls import certificate_names, fingerprint
from policyfabric.opflex.wire import Code


@dataclass(frozen=True)
class Credentials:
    """What the transport proved about a peer (nothing, on plain TCP)."""

    fingerprint: str | None = None  # SHA-256 of its client certificate, if it presented one
    names: frozenset[str] | None = None  # the names that certificate carries; None: names are not bound

    @property
    def label(self) -> str:
        if self.names is None:
            return "no verified certificate"
        return "certificate for " + (", ".join(sorted(self.names)) or "no name")


def credentials(writer: asyncio.StreamWriter, tls: ssl.SSLContext | None) -> Credentials:
    """The credentials of an accepted connection. Names are bound when the authority verifies
    client certificates against a CA (``--tls-ca``: ``CERT_REQUIRED``)."""
    sslobj = writer.get_extra_info("ssl_object")
    if tls is None or not isinstance(sslobj, ssl.SSLObject | ssl.SSLSocket):
        return Credentials()
    der = sslobj.getpeercert(binary_form=True)
    print_ = fingerprint(der) if der else None
    if tls.verify_mode == ssl.CERT_NONE:
        return Credentials(print_)
    return Credentials(print_, certificate_names(sslobj.getpeercert()) if der else frozenset())


def check_name(name: str, creds: Credentials) -> None:
    """Refuse ``name`` unless the peer's certificate carries it (when names are bound)."""
    if creds.names is not None and name not in creds.names:
        raise RpcError(Code.ERROR, f"name {name!r} is not in the client certificate ({creds.label})")


def may_take_over(new: Credentials, live: Credentials) -> bool:
    """Whether a new session may replace the live session holding its name: only the holder of
    the same certificate (the agent itself, reconnected)."""
    return new.fingerprint is not None and new.fingerprint == live.fingerprint


__all__ = ["Credentials", "check_name", "credentials", "may_take_over"]
