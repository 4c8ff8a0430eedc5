"""The node: an agent at a data site that dials out to the hub and runs the app's client."""

from pollinate.node.agent import NodeAgent

__all__ = ["NodeAgent"]
