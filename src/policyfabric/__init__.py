"""policyfabric: a declarative network policy control plane.

Intent is stored once, at a Policy Authority; Policy Agents resolve it over
OpFlex and render it into each device's own programming interface.
"""

__version__ = "0.1.0"
