"""``policyfabric lab``: a scenario built for real on this machine and checked with packets.

``lab`` runs a lab's life, ``plumbing`` creates namespaces, veths and bridges (recorded first in
``state``), ``ovs`` runs a host's private Open vSwitch, ``authority`` an authority process,
``probing`` and ``probe`` send and answer the probes, ``plan`` turns a scenario into a lab plan.
"""
