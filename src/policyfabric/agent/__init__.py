"""The Policy Agent: one per host, it resolves policy over OpFlex and renders it into devices.

``ovs_agent`` is the agent's wiring and reconcile loop; ``declarer`` declares
the host's endpoints to the registry; ``subscriptions`` asks for the rest of
the policy the host needs; ``reader`` turns the cache into the typed ``Network`` (``view``)
every renderer reads; ``reports`` tells the authority's observer what
happened. ``renderers/`` holds the renderers behind one API (``api``): Open
vSwitch (``ovs/``), which the agent always runs, and the plug-ins
(``nftables``, ``configfile``, third-party entry points). ``dryrun`` is the
OpFlex side alone (``policyfabric agent --dry-run``).
"""
