"""networking-policyfabric: OpenStack Neutron drives policyfabric (ML2 mechanism driver, L3
service plugin, security groups). It speaks the authority's REST API and imports nothing of
policyfabric. ``mapping``, ``journal`` and ``reconcile`` are pure (no Neutron import)."""
