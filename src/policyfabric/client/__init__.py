"""The Python SDK of the authority's REST API: what the CLI, the lab, tests and benchmarks use.

- ``rest``: ``Client`` (one method per REST verb, errors as ``ApiError`` with status, code,
  message and field; ``Unreachable`` when nothing answers);
- ``apply``: the scenario-to-REST plan behind ``policyfabric apply`` and ``delete -f``: create or
  update by name, in dependency order, sent as one batch (one transaction); with prune, delete
  what the file created and no longer declares.
"""

from policyfabric.client.rest import DEFAULT_URL, ApiError, Client, NotAnAuthority, Unreachable

__all__ = ["DEFAULT_URL", "ApiError", "Client", "NotAnAuthority", "Unreachable"]
