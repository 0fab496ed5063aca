"""Rule logging in flows: the action a logged verdict adds, and what its packet-in carries back.

A policy flow whose rule logs sends a copy of the packet to the agent besides deciding it:
``controller(max_len=128,id=LOG_CONTROLLER_ID,userdata=...,meter_id=LOG_METER)``. Only flows that
see the first packet of a connection log (group policy and security groups judge ``+new+trk``
packets only: established traffic passes before them), so a connection is logged once per host
that judges it. Three choices make it cheap and safe:

- ``id``: only connections that set this controller id receive the copies (OVS's connmgr sends an
  action's packet-in to the connections whose controller id matches it), so the DHCP responder's
  connection (id 0) never sees them, nor the rule log the DHCP requests;
- ``meter_id``: an OpenFlow meter rate-limits the copies in the datapath (the packet itself goes on
  unmetered: the meter is the controller action's, not the flow's), so a flood of new connections
  cannot flood the agent; the agent creates the meter (``rulelog.py``);
- ``userdata``: what decided, in 6 bytes (kind, verdict, a 32-bit id; ``renderers/logcodes.py``):
  the rule's stable hash (``rule_id``) or, for a default deny, the port; the agent names it from
  its view of the intent.

The text is what ``ovs-ofctl dump-flows`` writes back (reason=action is the default and omitted),
so a full sync compares it as installed.
"""

from __future__ import annotations

from policyfabric.agent.renderers.logcodes import (
    DEFAULT_DENY_IN,
    DEFAULT_DENY_OUT,
    RULE,
    Decided,
    decode_userdata,
    encode_userdata,
    rule_id,
)

__all__ = [
    "DEFAULT_DENY_IN",
    "DEFAULT_DENY_OUT",
    "LOG_CONTROLLER_ID",
    "LOG_METER",
    "MAX_LEN",
    "RULE",
    "Decided",
    "decode_userdata",
    "log_action",
    "rule_id",
]

LOG_CONTROLLER_ID = 0x504C  # "PL": the rule log's OpenFlow connection sets this controller id
LOG_METER = 0x504C  # the meter every logging flow's copies pass
MAX_LEN = 128  # bytes of the packet copied: Ethernet, a VLAN tag, IPv6 and TCP headers fit


def log_action(kind: int, allowed: bool, ident: int) -> str:
    """The action that logs a verdict (put before the verdict's own actions; alone for a drop)."""
    data = encode_userdata(kind, allowed, ident)
    userdata = ".".join(f"{b:02x}" for b in data)
    return f"controller(max_len={MAX_LEN},id={LOG_CONTROLLER_ID},userdata={userdata},meter_id={LOG_METER})"
