"""The demo's time budget: ``underhood demo --timings`` in a fresh process, its per-section table recorded.

Prints the table (section, wall seconds, CPU seconds, share of the whole) and the totals against the
budget (60 s wall, 100 CPU-seconds on 2 cores), and keeps it in ``benchmarks/demo-timings.json``.
CPU seconds count every thread of the process; on a shared machine the wall times are inflated by the
others' load, the CPU seconds much less.

    python benchmarks/demo.py            # the default demo
    python benchmarks/demo.py --full     # the larger settings (not held to the budget)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUDGET_WALL, BUDGET_CPU = 60.0, 100.0
RECORD = Path(__file__).with_name("demo-timings.json")


def run_demo(full: bool = False) -> dict:
    """Run the demo in a fresh process (2 threads unless UNDERHOOD_THREADS says otherwise); its timings table, with
    the process's own wall and CPU seconds (interpreter start and imports included) beside it."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("UNDERHOOD_THREADS", "2")}
    with tempfile.TemporaryDirectory() as out:
        argv = [sys.executable, "-m", "underhood", "demo", "--timings", "--no-progress", "--out", out]
        start, before = time.perf_counter(), os.times()
        subprocess.run(argv + (["--full"] if full else []), check=True, stdout=subprocess.DEVNULL, env=env)
        after = os.times()
        table = json.loads((Path(out) / "timings.json").read_text())
    table["process_wall_s"] = time.perf_counter() - start
    table["process_cpu_s"] = (after.children_user + after.children_system) - (before.children_user +
                                                                             before.children_system)
    table["cpus"] = os.cpu_count()
    return table


def bench_demo(report=None, full: bool = False) -> dict:
    from underhood.cli.report import timings_table

    table = run_demo(full)
    print(timings_table(table))
    line = (f"{table['process_wall_s']:6.1f} s wall, {table['process_cpu_s']:6.1f} CPU-s for the process "
            f"(budget {BUDGET_WALL:.0f} s, {BUDGET_CPU:.0f} CPU-s)")
    if report is not None:
        report("underhood demo" + (" --full" if full else ""), line, table["process_cpu_s"] / table["process_wall_s"])
    else:
        print(line)
    RECORD.write_text(json.dumps(table, indent=1) + "\n")
    return table


if __name__ == "__main__":
    bench_demo(full="--full" in sys.argv[1:])
