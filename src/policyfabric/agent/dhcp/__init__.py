"""Native DHCPv4 on every host: the agent answers its local endpoints' requests from the
intent, through packet-in and packet-out on br-int's management socket (``responder``), with a
small codec of its own (``packet``). See docs/dhcp.md."""
