"""The hardware family: how fast a model runs on this machine (``underhood bench``).

The environment first (:mod:`.environment`), then per device and numeric variant the throughput
against batch size in interleaved rounds (:mod:`.measure`), gathered by :func:`bench` into a
:class:`BenchResult` (:mod:`.result`) with its honest warnings; :func:`compare` gives the ratio
table of two saved runs.
"""

from .bench import bench, devices_from
from .environment import describe, environment
from .measure import SPREAD_FLAG, VARIANTS, Job, agreement, peak_tflops, settings, sweep
from .result import BenchResult, Comparison, compare, findings, load_bench

__all__ = ["bench", "devices_from", "environment", "describe", "BenchResult", "Comparison", "compare",
           "load_bench", "findings", "Job", "agreement", "peak_tflops", "settings", "sweep", "SPREAD_FLAG",
           "VARIANTS"]
