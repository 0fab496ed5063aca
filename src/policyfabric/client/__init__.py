"""The Python SDK of the authority's REST API: what the CLI, the lab, tests and benchmarks use.

- ``rest``: ``Client`` (one method per REST verb, errors as ``ApiError`` with status, code,
  message and field; ``Unreachable`` when nothing answers);
- ``apply``: the scenario-to-REST plan behind ``policyfabric apply`` (create or update by
  name, in dependency order, never delete).
"""

from policyfabric.client.rest import DEFAULT_URL, ApiError, Client, Unreachable

__all__ = ["DEFAULT_URL", "ApiError", "Client", "Unreachable"]
