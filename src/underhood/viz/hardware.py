"""Figures of ``underhood bench``: the CPU vs GPU table as bars, throughput against batch size, what underhood's
jobs cost; and the ratio chart of two runs. They take the plain data of ``bench.json`` (no family import)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .render import subplots

DEVICE_COLORS = {"cpu": ("#1f5fa8", "#9dbfe6"), "cuda": ("#2e8540", "#a7d8b0")}
"""Per device type: (forward, forward+backward) colours."""
VARIANT_COLORS = {"fp32": "#333333", "tf32": "#8c564b", "bf16": "#d62728", "fp16": "#ff7f0e",
                  "channels_last": "#9467bd", "1-thread": "#17becf", "compile": "#bcbd22"}


def _colors(device: str) -> tuple[str, str]:
    return DEVICE_COLORS["cuda" if device.startswith("cuda") else "cpu"]


def _rate(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def bench_figure(data: Mapping[str, Any]):
    """The bench figure: best throughput per device and variant (forward and forward+backward, log scale), the
    forward throughput against batch size, and the seconds per image of underhood's jobs when timed."""
    devices = data["devices"]
    rows = [(dev, name, v) for dev, d in devices.items() for name, v in d["variants"].items()
            if (v.get("forward") or {}).get("peak")]
    jobs = [(dev, name, j) for dev, d in devices.items() for name, j in (d.get("jobs") or {}).items()
            if "s_per_image" in j]
    ncols = 3 if jobs else 2
    height = max(4.2, 0.42 * len(rows) + 1.6)
    fig, axes = subplots(1, ncols, figsize=(5.6 * ncols, height), squeeze=False,
                         gridspec_kw={"width_ratios": [1.25, 1, 0.9][:ncols]})
    ax = axes[0][0]
    labels, y = [], []
    for i, (dev, name, v) in enumerate(rows):
        fwd, bwd = v["forward"], v.get("backward") or {}
        dark, light = _colors(dev)
        pos = len(rows) - 1 - i
        ax.barh(pos + 0.2, fwd["peak"], height=0.38, color=dark, label="forward" if i == 0 else None)
        ax.text(fwd["peak"], pos + 0.2, f" {_rate(fwd['peak'])} @{fwd['peak_batch']}", va="center", fontsize=7.5)
        if bwd.get("peak"):
            ax.barh(pos - 0.2, bwd["peak"], height=0.38, color=light, label="forward+backward" if i == 0 else None)
            ax.text(bwd["peak"], pos - 0.2, f" {_rate(bwd['peak'])}", va="center", fontsize=7.5, color="#444444")
        flag = " (!)" if fwd.get("flagged") or bwd.get("flagged") else ""
        labels.append(f"{dev} · {name}{flag}")
        y.append(pos)
    ax.set_yticks(y, labels, fontsize=8.5)
    ax.set_xscale("log")
    if rows:
        top = max(max(v["forward"]["peak"], (v.get("backward") or {}).get("peak") or 0) for _, _, v in rows)
        low = min(min(v["forward"]["peak"], (v.get("backward") or {}).get("peak") or math.inf) for _, _, v in rows)
        ax.set_xlim(low / 3, top * 12)
    ax.set_xlabel("images per second at the best batch (log scale)")
    ax.set_title("Throughput per device and variant", fontsize=10.5, loc="left")
    ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    ax.grid(axis="x", which="major", alpha=0.25)

    ax = axes[0][1]
    for dev, name, v in rows:
        pts = v["forward"].get("points") or []
        if len(pts) < 1:
            continue
        style = "-" if not dev.startswith("cuda") else "--"
        color = VARIANT_COLORS.get(name, "#555555")
        ax.plot([p["batch"] for p in pts], [p["throughput"] for p in pts], style, marker="o", ms=3.5, lw=1.5,
                color=color, label=f"{dev} · {name}")
        b90 = v["forward"].get("batch_90")
        at = next((p for p in pts if p["batch"] == b90), None)
        if at is not None:
            ax.plot([b90], [at["throughput"]], marker="*", ms=10, color=color, mec="white", mew=0.6, ls="none")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    batches = sorted({p["batch"] for _, _, v in rows for p in v["forward"].get("points") or []})
    if batches:
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.set_xlim(batches[0] / 1.4, batches[-1] * 1.4)
    ax.set_xlabel("batch size (star: smallest batch at 90% of the peak)")
    ax.set_ylabel("forward images per second")
    ax.set_title("Throughput against batch size", fontsize=10.5, loc="left")
    ax.grid(alpha=0.25, which="major")
    ax.legend(fontsize=7, frameon=False, loc="best")

    if jobs:
        ax = axes[0][2]
        for i, (dev, _, j) in enumerate(jobs):
            pos = len(jobs) - 1 - i
            ax.barh(pos, j["s_per_image"], color=_colors(dev)[0], height=0.6)
            ax.text(j["s_per_image"], pos, f" {j['s_per_image']:.3g} s", va="center", fontsize=7.5)
        ax.set_yticks(range(len(jobs))[::-1], [f"{dev} · {name}\n{j['settings']}" for dev, name, j in jobs],
                      fontsize=7.5)
        ax.set_xscale("log")
        ax.set_xlim(min(j["s_per_image"] for *_, j in jobs) / 3, max(j["s_per_image"] for *_, j in jobs) * 10)
        ax.set_xlabel("seconds per image (log scale)")
        ax.set_title("What underhood's jobs cost here", fontsize=10.5, loc="left")
        ax.grid(axis="x", alpha=0.25)
    for a in axes[0]:
        for side in ("top", "right"):
            a.spines[side].set_visible(False)
    env = data.get("environment") or {}
    machine = [f"CPU {env.get('cpu', {}).get('model') or '?'} ({env.get('threads', '?')} threads)"]
    machine += [g["name"] for g in env.get("gpus", [])]
    load = env.get("load_average")
    fig.suptitle(f"How fast is {data.get('model', 'the model')} ({'x'.join(map(str, data.get('input_shape', [])))}) "
                 f"here: {', '.join(machine)}" + (f"; load average {load[0]:.1f}" if load else ""),
                 fontsize=11, x=0.01, ha="left")
    fig.tight_layout()
    return fig


def compare_figure(rows: Sequence[Mapping[str, Any]], a: str, b: str):
    """The ratio ``B / A`` of each throughput two runs both measured, as horizontal bars around 1 (log scale)."""
    fig, ax = subplots(figsize=(7.5, max(2.6, 0.32 * len(rows) + 1.4)))
    for i, r in enumerate(rows):
        pos = len(rows) - 1 - i
        color = "#2e8540" if r["ratio"] >= 1 else "#c0392b"
        ax.barh(pos, math.log2(r["ratio"]), color=color, height=0.6)
        ax.text(math.log2(r["ratio"]), pos, f" {r['ratio']:.2f}x " if r["ratio"] >= 1 else f" {r['ratio']:.2f}x ",
                va="center", ha="left" if r["ratio"] >= 1 else "right", fontsize=7.5)
    ax.set_yticks(range(len(rows))[::-1], [f"{r['device']} · {r['variant']} · "
                                           f"{'fwd' if r['mode'] == 'forward' else 'fwd+bwd'}" for r in rows],
                  fontsize=8)
    ax.axvline(0, color="#333333", lw=0.8)
    span = max(1.0, max(abs(math.log2(r["ratio"])) for r in rows) * 1.35)
    ax.set_xlim(-span, span)
    ticks = [t for t in range(-int(span), int(span) + 1)]
    ax.set_xticks(ticks, [f"{2.0 ** t:g}x" for t in ticks])
    ax.set_xlabel("B / A (right: B is faster)")
    ax.set_title(f"A: {a}\nB: {b}", fontsize=9, loc="left")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    return fig
