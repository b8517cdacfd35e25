"""Yosinski's transfer grid on the built-in shapes net: its time against training every network from scratch.

Runs ``transfer_curve("shapes", "shapes:6000", seeds=3)`` (5 depths x BnB, BnB+, AnB, AnB+ and the random-filter
control, the reduced-data baseline; 84 networks) and prints the wall and CPU time (target: <= 10 minutes on 2
cores), the time per network, and the ratio to the naive grid, in which every network is trained from its first
block on the pixels for the full schedule (Yosinski et al.'s recipe: about one base-network training each, timed in
the same run as the mean of the bases).

    python benchmarks/transfer_grid_bench.py [--seeds 3] [--device auto] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from underhood.transfer import transfer_curve

TARGET_S = 600.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--data", default="shapes:6000")
    p.add_argument("--out", default=None, help="keep the rows (a rerun resumes: leave it out to time the grid)")
    args = p.parse_args()
    if args.device in ("auto", "cpu"):
        torch.set_num_threads(2)
    c0, t0 = time.process_time(), time.perf_counter()
    r = transfer_curve("shapes", args.data, seeds=args.seeds, device=args.device, out=args.out)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    base = [row["seconds"] for row in r.runs if row["treatment"] in ("baseA", "baseB")]
    per_base = sum(base) / len(base)
    trained = [row for row in r.runs if row["treatment"] != "reduced"]
    naive = len(trained) * per_base + sum(row["seconds"] for row in r.runs if row["treatment"] == "reduced")
    print(f"transfer grid: {len(r.runs)} networks, {args.seeds} seed(s), device {r.info['device']}")
    print(f"  wall {wall:.0f} s, CPU {cpu:.0f} s (target <= {TARGET_S:.0f} s wall on 2 cores)")
    print(f"  one base network: {per_base:.1f} s; naive grid (every network from scratch): {naive:.0f} s; "
          f"this grid is {naive / wall:.1f}x faster")
    for t in ("BnB", "BnB+", "AnB", "AnB+", "random"):
        secs = [row["seconds"] for row in r.runs if row["treatment"] == t]
        if secs:
            print(f"  {t:<7} {sum(secs) / len(secs):5.1f} s per network")
    for s in r.statements():
        print("-", s)
    print(json.dumps({"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "networks": len(r.runs),
                      "naive_s": round(naive, 1), "speedup": round(naive / wall, 2)}))


if __name__ == "__main__":
    main()
