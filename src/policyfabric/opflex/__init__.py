"""OpFlex control protocol (JSON-RPC over TCP/TLS): not implemented yet (issue 3)."""
