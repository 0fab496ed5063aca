"""OpFlex, the control protocol between the authority and its agents: JSON-RPC over TCP or TLS.

``wire`` frames messages, ``rpc`` runs a session (requests, replies, keepalive), ``mo`` and
``uri`` are managed objects and their names, ``gbp`` the class and property names both sides
use, ``client`` and ``cache`` the agent's side (a policy element with a persisted cache),
``tls`` the contexts. The authority's side is ``authority/opflex/``. docs/opflex.md describes
the dialect.
"""
