"""The table numbers of ``br-int``, the registers' roles and two action helpers, shared by the
pipeline compiler (``pipeline.py``) and its external-network part (``external.py``)."""

from __future__ import annotations

# goto_table only goes forward: the external ingress tables sit before routing (they end there),
# the egress ones after output (it ends there)
CLASSIFY, PORT_SECURITY, ARP, L2 = 0, 10, 20, 30
EXT_IN, EXT_ARP, EXT_IN_NAT = 35, 36, 37  # from an external network: ARP, NAT, then routing
ROUTING = 40
POLICY, POLICY_CT, SG_EGRESS, SG_INGRESS, OUTPUT = 60, 61, 62, 63, 70
NAT_OUT, NEXTHOP, NEIGHBOUR = 71, 72, 73  # to an external network: SNAT, next hop, its MAC

ZONE = "NXM_NX_REG3[0..15]"
NEW = "+new+trk"
# reg5 flags (bit 0, "from a tunnel", is matched as reg5=0/1 by the L2 flows)
REPLY_ONLY = 0x2  # came back through SNAT: judged on the endpoint's host
# the class id of "the outside" (traffic through a floating IP or SNAT); EPGs get 0x4000 and up
OUTSIDE = 0x3FFF


def goto(table: int) -> str:
    return f"goto_table:{table}"


def set_field(value: int | str, field: str) -> str:
    """``set_field``, not ``load``: OVS reports loads back as set_field, and ``replace-flows``
    would then see every loading flow as changed and rewrite it on each full sync."""
    return f"set_field:{value if isinstance(value, str) else hex(value)}->{field}"
