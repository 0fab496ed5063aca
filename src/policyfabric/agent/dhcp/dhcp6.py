"""DHCPv6 on the wire (RFC 8415, name servers RFC 3646): a client message parsed out of a frame, a
server's answer built into one. Pure functions over bytes, no socket.

What a server on the client's own link needs and no more: identity association for non-temporary
addresses (IA_NA) holding exactly the endpoint's intent addresses (``dhcpv6-stateful``), name
servers (option 23) for stateless and stateful subnets, rapid commit. No temporary addresses
(IA_TA), no prefix delegation, no relay messages, no reconfigure, no authentication: what carries
any of them is answered without them, or not at all.

The server's DUID is DUID-LL (RFC 8415 11.4) of the MAC the answers come from, the router's MAC
on the bridge domain, which is the same on every host: an endpoint that moves keeps renewing with
the server it knows (OVN's ``server_id`` is the same idea).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from policyfabric.agent.dhcp import ip6
from policyfabric.agent.dhcp.packet import Malformed

CLIENT_PORT, SERVER_PORT = 546, 547
SOLICIT, ADVERTISE, REQUEST, CONFIRM, RENEW, REBIND, REPLY, RELEASE, DECLINE = 1, 2, 3, 4, 5, 6, 7, 8, 9
INFORMATION_REQUEST = 11
CLIENTID, SERVERID, IA_NA, IAADDR, ORO, STATUS_CODE, RAPID_COMMIT, DNS_SERVERS = 1, 2, 3, 5, 6, 13, 14, 23
SUCCESS, NO_ADDRS_AVAIL, NOT_ON_LINK = 0, 2, 4
DUID_LL, HW_ETHERNET = 3, 1

OPTION = struct.Struct("!HH")
IA = struct.Struct("!III")  # IAID, T1, T2
ADDR = struct.Struct("!16sII")  # address, preferred lifetime, valid lifetime


@dataclass(frozen=True)
class IaNa:
    iaid: int
    addresses: tuple[str, ...]  # what the client holds or would like (IAADDR options)


@dataclass(frozen=True)
class Message:
    """A client's message, as far as a server on its link needs to know."""

    msg_type: int
    xid: int  # 24 bits
    eth_src: str
    src: str  # the client's link-local address: the answer goes there
    client_id: bytes | None
    server_id: bytes | None
    ia_na: tuple[IaNa, ...] = ()
    rapid_commit: bool = False


@dataclass(frozen=True)
class Config6:
    """What this host answers a port's endpoint: its intent addresses in the bridge domain's
    dhcpv6-stateful subnets (none: options only), the name servers, where answers come from."""

    server_mac: str
    server_lla: str
    addresses: tuple[str, ...]
    prefixes: tuple[str, ...]  # the stateful subnets (a Confirm is on-link when it is in one)
    dns: tuple[str, ...] = ()
    lifetime: int = 86400  # s: the lease time, as for DHCPv4

    @property
    def duid(self) -> bytes:
        return duid_ll(self.server_mac)


def duid_ll(mac: str) -> bytes:
    """DUID-LL of an Ethernet MAC (RFC 8415 11.4)."""
    return struct.pack("!HH", DUID_LL, HW_ETHERNET) + ip6.mac_bytes(mac)


def _options(data: bytes) -> list[tuple[int, bytes]]:
    out = []
    i = 0
    while i < len(data):
        if i + OPTION.size > len(data):
            raise Malformed("an option header runs past the message")
        code, length = OPTION.unpack_from(data, i)
        if i + OPTION.size + length > len(data):
            raise Malformed(f"option {code} runs past the message ({length} bytes)")
        out.append((code, data[i + OPTION.size : i + OPTION.size + length]))
        i += OPTION.size + length
    return out


def _ia_na(body: bytes) -> IaNa:
    if len(body) < IA.size:
        raise Malformed("IA_NA shorter than its IAID, T1 and T2")
    iaid = IA.unpack_from(body)[0]
    addresses = []
    for code, value in _options(body[IA.size :]):
        if code == IAADDR:
            if len(value) < ADDR.size:
                raise Malformed("IAADDR shorter than an address and two lifetimes")
            addresses.append(str(ipaddress.IPv6Address(value[:16])))
    return IaNa(iaid, tuple(addresses))


def parse_message(frame: bytes) -> Message:
    """The DHCPv6 client message in an Ethernet frame (UDP 546 → 547); ``Malformed`` for anything
    else, for a relay message, and for a client or server identifier given twice."""
    pkt = ip6.parse(frame)
    if pkt.next_header != ip6.UDP:
        raise Malformed("not UDP")
    sport, dport, _, _ = ip6.UDP_HEADER.unpack_from(pkt.payload)
    if (sport, dport) != (CLIENT_PORT, SERVER_PORT):
        raise Malformed(f"UDP {sport}→{dport}, not a client's message")
    body = pkt.payload[ip6.UDP_HEADER.size :]
    if len(body) < 4:
        raise Malformed("shorter than a DHCPv6 header")
    kind, xid = body[0], int.from_bytes(body[1:4], "big")
    if kind not in (SOLICIT, REQUEST, CONFIRM, RENEW, REBIND, RELEASE, DECLINE, INFORMATION_REQUEST):
        raise Malformed(f"message type {kind}: not one a client sends to a server on its link")
    options = _options(body[4:])
    ids = {code: [v for c, v in options if c == code] for code in (CLIENTID, SERVERID)}
    if any(len(v) > 1 for v in ids.values()):
        raise Malformed("a client or server identifier given twice")
    if any(len(v) == 0 or len(v) > 130 for found in ids.values() for v in found):
        raise Malformed("an identifier of 0 or more than 130 bytes")  # RFC 8415 11.1: at most 128 + type
    if ipaddress.IPv6Address(pkt.src).is_multicast:
        raise Malformed("a multicast source address")
    return Message(
        kind,
        xid,
        pkt.eth_src,
        pkt.src,
        ids[CLIENTID][0] if ids[CLIENTID] else None,
        ids[SERVERID][0] if ids[SERVERID] else None,
        tuple(_ia_na(v) for c, v in options if c == IA_NA),
        any(c == RAPID_COMMIT for c, _ in options),
    )


def decide(msg: Message, cfg: Config6 | None) -> int | None:
    """The message type to answer ``msg`` with (ADVERTISE or REPLY), or None: nothing to say here
    (no configuration for the port, addresses asked where only options are given), a message
    RFC 8415 16 says a server discards (no client identifier where one is required, a server
    identifier that is not ours, or one where none may be), or the client's source is ``::``."""
    if cfg is None or msg.src == "::":
        return None
    ours = msg.server_id == cfg.duid
    if msg.msg_type == INFORMATION_REQUEST:
        return REPLY if msg.server_id is None or ours else None
    if msg.client_id is None:
        return None
    if msg.msg_type in (SOLICIT, REBIND, CONFIRM):
        if msg.server_id is not None or not cfg.addresses:
            return None
        return REPLY if msg.msg_type != SOLICIT or msg.rapid_commit else ADVERTISE
    if msg.msg_type in (REQUEST, RENEW, RELEASE, DECLINE):
        return REPLY if ours and cfg.addresses else None
    return None


def _opt(code: int, value: bytes) -> bytes:
    return OPTION.pack(code, len(value)) + value


def _status(code: int, text: str) -> bytes:
    return _opt(STATUS_CODE, struct.pack("!H", code) + text.encode())


def _ia_answers(msg: Message, cfg: Config6) -> bytes:
    """An IA_NA for each the client sent: the first holds every intent address (T1 = half the
    lifetime, T2 = 0.8 of it), with the client's other addresses at lifetime 0 (no longer its, RFC
    8415 18.3.4); any further one has no address available."""
    out = b""
    t = cfg.lifetime
    for i, ia in enumerate(msg.ia_na):
        if i > 0:
            out += _opt(IA_NA, IA.pack(ia.iaid, 0, 0) + _status(NO_ADDRS_AVAIL, "one IA per interface"))
            continue
        body = IA.pack(ia.iaid, t // 2, t * 4 // 5)
        for address in cfg.addresses:
            body += _opt(IAADDR, ADDR.pack(ipaddress.IPv6Address(address).packed, t, t))
        for stale in ia.addresses:
            if stale not in cfg.addresses:
                body += _opt(IAADDR, ADDR.pack(ipaddress.IPv6Address(stale).packed, 0, 0))
        out += _opt(IA_NA, body)
    if not msg.ia_na:
        out += _status(NO_ADDRS_AVAIL, "no IA_NA asked")
    return out


def _on_link(msg: Message, cfg: Config6) -> bool:
    nets = [ipaddress.IPv6Network(p) for p in cfg.prefixes]
    held = [ipaddress.IPv6Address(a) for ia in msg.ia_na for a in ia.addresses]
    return all(any(a in n for n in nets) for a in held)


def reply_options(msg: Message, kind: int, cfg: Config6) -> bytes:
    out = (_opt(CLIENTID, msg.client_id) if msg.client_id is not None else b"") + _opt(SERVERID, cfg.duid)
    if msg.msg_type in (SOLICIT, REQUEST, RENEW, REBIND):
        out += _ia_answers(msg, cfg)
        if msg.msg_type == SOLICIT and kind == REPLY:
            out += _opt(RAPID_COMMIT, b"")
    elif msg.msg_type == CONFIRM:
        ok = _on_link(msg, cfg)
        out += _status(SUCCESS if ok else NOT_ON_LINK, "on link" if ok else "not on link")
    elif msg.msg_type in (RELEASE, DECLINE):
        out += _status(SUCCESS, "nothing to undo: the address is the endpoint's by intent")
    if cfg.dns and msg.msg_type not in (RELEASE, DECLINE):
        out += _opt(DNS_SERVERS, b"".join(ipaddress.IPv6Address(a).packed for a in cfg.dns))
    return out


def build_reply(msg: Message, kind: int, cfg: Config6) -> bytes:
    """The frame answering ``msg`` with ``kind``: from the server's link-local address and MAC to
    the client's (RFC 8415 18.3: a server answers a client on its link at its source address)."""
    body = bytes((kind,)) + msg.xid.to_bytes(3, "big") + reply_options(msg, kind, cfg)
    udp = ip6.UDP_HEADER.pack(SERVER_PORT, CLIENT_PORT, ip6.UDP_HEADER.size + len(body), 0) + body
    return ip6.build(cfg.server_mac, msg.eth_src, cfg.server_lla, msg.src, ip6.UDP, 255, udp, 6)
