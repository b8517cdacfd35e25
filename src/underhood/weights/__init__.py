"""The weights family: what the network's parameters look like."""

from .filters import filters
from .toy2d import toy2d, toy2d_frame, toy2d_gif, toy2d_strip, toy_data, unit_lines

__all__ = ["filters", "toy2d", "toy2d_frame", "toy2d_gif", "toy2d_strip", "toy_data", "unit_lines"]
