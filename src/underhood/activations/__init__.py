"""The activations family: what the network computes on inputs."""

from ..core.hooks import capture
from .maps import maps
from .statistics import LayerStatistics, statistics

__all__ = ["capture", "maps", "statistics", "LayerStatistics"]
