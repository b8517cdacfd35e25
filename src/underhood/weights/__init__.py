"""The weights family: what the network's parameters look like."""

from .filters import filters

__all__ = ["filters"]
