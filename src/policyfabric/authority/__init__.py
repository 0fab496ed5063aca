"""The Policy Authority: the one writer of intent.

``service`` validates and commits (against the store, inside the write transaction, with
``txn_view``), ``api`` is the REST API over it, ``opflex/`` the OpFlex server (policy
repository, endpoint registry, observer), ``gateways`` the pure SNAT gateway election, and
``server`` runs them all on one event loop.
"""
