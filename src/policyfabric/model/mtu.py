"""The MTU an endpoint can use: the underlay's, less what the overlay adds to every packet.

A packet an endpoint sends to another host leaves that host inside a Geneve tunnel (the OVS
pipeline, ``agent/renderers/ovs/pipeline.py``). What the underlay carries is the endpoint's whole
Ethernet frame plus the tunnel's headers:

====================  =====  ==============================================================
outer IPv4 header       20   the underlay is IPv4 (the lab's 192.0.2.0/24; no IP options)
outer UDP header         8   Geneve runs over UDP port 6081
Geneve base header       8   RFC 8926 3.4: version, option length, flags, protocol, VNI
Geneve option            8   4-byte option header + the 4-byte value: class 0x5046 type 1
                             len 4, the source group's class id (``TLV_MAP`` in
                             ``agent/renderers/ovs/applier.py``, read back as tun_metadata0)
inner Ethernet header   14   the endpoint's own frame is carried whole (no VLAN tag)
====================  =====  ==============================================================

58 bytes in all, so on a 1500-byte underlay an endpoint's IP packets may be 1442 bytes. The old
default, 1450, was VXLAN's (20 + 8 + 8 + 14 = 50): with Geneve and its option a full 1450-byte
packet is 1508 bytes on the wire and does not fit, which a bulk transfer across hosts shows as a
stall (nothing on the path sends "fragmentation needed"). An operator whose underlay carries
jumbo frames sets a bridge domain's ``mtu`` (up to 9000) explicitly.
"""

from __future__ import annotations

UNDERLAY_MTU = 1500  # Ethernet's: what an underlay carries unless configured for jumbo frames
OUTER_IPV4 = 20
OUTER_UDP = 8
GENEVE_HEADER = 8
GENEVE_OPTION_HEADER = 4
GENEVE_OPTION_VALUE = 4  # the source group's class id (len=4 in the TLV map)
INNER_ETHERNET = 14

GENEVE_OVERHEAD = (
    OUTER_IPV4 + OUTER_UDP + GENEVE_HEADER + GENEVE_OPTION_HEADER + GENEVE_OPTION_VALUE + INNER_ETHERNET
)
DEFAULT_MTU = UNDERLAY_MTU - GENEVE_OVERHEAD  # 1442: a bridge domain's mtu unless it says otherwise
MIN_MTU = 1280  # IPv6's minimum link MTU (RFC 8200 5): every bridge domain carries IPv6
MAX_MTU = 9000  # jumbo frames
