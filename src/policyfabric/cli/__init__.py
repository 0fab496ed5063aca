"""The ``policyfabric`` command: ``main`` registers the commands (REST ones there, the daemons in
``daemons``, the lab in ``lab``, the demo in ``demo``)."""
