"""The activations family: what the network computes on inputs."""

from ..core.hooks import capture
from .maps import maps

__all__ = ["capture", "maps"]
