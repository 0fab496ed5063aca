"""The authority's OpFlex server, one module per role.

- ``server.py``: ``OpflexServer``, the façade: sessions, handshake, dispatch,
  flushes, leases, the REST views of agents and faults;
- ``identity.py``: who a session is: its TLS credentials, and whether it may take a name;
- ``params.py``: request parameter models and ``parse`` (the bounds on what a peer names);
- ``peers.py``: per-session state and ``fan_out`` (pushes to subscribers, never awaited);
- ``repository.py``: the policy repository (tenant trees, ``diff``, rebuilds);
- ``policy_tree.py``: the stored model as GBP managed objects (the writer);
- ``registry.py``: the endpoint registry and the batched endpoint-state writer;
- ``observer.py``: agents, faults, counters and gateway ports from state reports;
- ``election.py``: gateway HA wiring around the pure ``authority/gateways.py``.

Dependencies point one way: ``server`` → the roles → ``params``/``peers``/
``identity``/``policy_tree`` → ``opflex/`` and ``model/``. The names of GBP classes and
properties are in ``policyfabric/opflex/gbp.py``, shared with the agents.
"""

from policyfabric.authority.opflex.server import OpflexServer

__all__ = ["OpflexServer"]
