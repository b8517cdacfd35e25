"""The benchmark's result: the table in the style of the lecture's CPU vs GPU slide, honest warnings drawn from
the measurements, ``bench.json``, and the ratio table between two saved runs (:func:`compare`)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

from ..core.errors import DataError
from ..core.io import write_text
from ..core.results import Result, Summary

BENCH_JSON = "bench.json"
FORMAT = 1
"""Version of ``bench.json``'s layout."""

JOB_IMAGES = 10_000
"""A job of this many images (a dataset pass: top patches, embeddings) is the yardstick for torch.compile: if
compiling pays back only later, the warning says so."""

SLOW = 2.0
"""bf16 this many times slower than fp32 is warned about."""

CL_SLOW = 1.25
"""channels_last this many times slower than the default format at batch 1 is warned about."""

MODES = {"forward": "forward", "backward": "forward+backward"}


def _num(v: Any, fmt: str = ".3g") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-" if v is None else ("never" if v > 0 else "-")
    return format(v, fmt)


def _finite(data: Any) -> Any:
    """``data`` with non-finite floats as strings (JSON has no infinity)."""
    if isinstance(data, float) and not math.isfinite(data):
        return str(data)
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


def _floats(data: Any) -> Any:
    if data in ("inf", "-inf", "nan"):
        return float(data)
    if isinstance(data, dict):
        return {k: _floats(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_floats(v) for v in data]
    return data


def findings(devices: dict[str, Any], environment: dict[str, Any]) -> list[str]:
    """The honest warnings the measurements support: bf16 much slower than fp32, one CPU thread faster than
    several, channels_last slower at batch 1,
    torch.compile not paying back within :data:`JOB_IMAGES` images, a variant whose rounds spread above 15%."""
    out = []
    for dev, d in devices.items():
        v = d["variants"]
        fp32 = (v.get("fp32") or {}).get("forward", {}).get("peak")
        bf16 = (v.get("bf16") or {}).get("forward", {}).get("peak")
        if fp32 and bf16 and fp32 / bf16 >= SLOW:
            why = ""
            if dev == "cpu" and not environment.get("cpu", {}).get("bf16_native", True):
                why = " (this CPU has no native bf16: no avx512_bf16 or amx_bf16, so bf16 is emulated)"
            out.append(f"{dev}: bf16 autocast is {fp32 / bf16:.1f}x slower than fp32 at its best batch{why}; keep "
                       "fp32 here (no amp)")
        one_thread = (v.get("1-thread") or {}).get("forward", {}).get("peak")
        if fp32 and one_thread and one_thread / fp32 >= CL_SLOW:
            out.append(f"{dev}: one thread is {one_thread / fp32:.1f}x faster than torch's "
                       f"{environment.get('threads', '?')} threads (forward, best batch of each): the cores are busy "
                       "or its threads wait for each other; use torch.set_num_threads(1) (OMP_NUM_THREADS=1) here")
        cl = (v.get("channels_last") or {}).get("forward", {}).get("points") or []
        ref = (v.get("fp32") or {}).get("forward", {}).get("points") or []
        one = [(a["throughput"], b["throughput"]) for a in ref for b in cl if a["batch"] == b["batch"] == 1]
        if one and one[0][0] / one[0][1] >= CL_SLOW:
            out.append(f"{dev}: channels_last is {one[0][0] / one[0][1]:.1f}x slower than the default memory format "
                       "at batch 1; use it only for large batches, if at all")
        c = v.get("compile") or {}
        if c.get("skipped") is None and c.get("compile_s") is not None:
            be = c["break_even_images"]
            if not math.isfinite(be):
                out.append(f"{dev}: torch.compile never pays back here: compiled is not faster than eager at batch "
                           f"{c['batch']} ({c['speedup']:.2f}x) and compiling took {c['compile_s']:.1f} s")
            elif be > JOB_IMAGES:
                out.append(f"{dev}: torch.compile pays back only after {be:,.0f} images ({c['compile_s']:.1f} s to "
                           f"compile for {c['speedup']:.2f}x): a job shorter than that is faster eager")
        noisy = [f"{name} {MODES[mode]} ({var[mode]['spread']:.0%})" for name, var in v.items() for mode in MODES
                 if (var.get(mode) or {}).get("flagged")]
        if noisy:
            out.append(f"{dev}: throughput varied by more than 15% between rounds for {', '.join(noisy)}: these "
                       "figures are uncertain; rerun on a quieter machine")
    return out


@dataclasses.dataclass(repr=False)
class BenchResult(Result):
    """What ``underhood bench`` measured: the machine, then per device and variant the throughput curves.

    Attributes:
        model: the model spec (or class name).
        input_shape: ``[C, H, W]`` of the images timed.
        quick: whether the quick settings were used.
        environment: see :func:`underhood.hardware.environment.environment`.
        devices: ``device -> {"variants": {name: {"forward": curve, "backward": curve, "agreement"}},
            "flops_per_image", "peak_tflops", "layers", "jobs", "settings"}``; a curve holds its ``points``
            (batch, median images/s, spread, p50/p90 ms, memory MiB) and ``peak``, ``batch_90``, ``flagged``.
        warnings: the loaded-machine warning and :func:`findings`.
        wall_s, cpu_s: the benchmark's own wall and CPU seconds (every thread).
    """

    model: str
    input_shape: list
    quick: bool
    environment: dict
    devices: dict
    warnings: list
    wall_s: float
    cpu_s: float

    def scalars(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "quick": self.quick}
        for dev, d in self.devices.items():
            for name, v in d["variants"].items():
                for mode in MODES:
                    peak = (v.get(mode) or {}).get("peak")
                    if peak is not None:
                        out[f"{dev}.{name}.{mode}_img_s"] = peak
        out.update(warnings=len(self.warnings), wall_s=self.wall_s, cpu_s=self.cpu_s)
        return out

    def rows(self) -> list[dict[str, Any]]:
        """One row per device and variant: the figures of the table (``None`` where not measured)."""
        rows = []
        first = next(iter(self.devices), None)
        base = ((self.devices.get(first) or {}).get("variants", {}).get("fp32") or {}).get("forward", {}).get("peak")
        for dev, d in self.devices.items():
            fp32 = (d["variants"].get("fp32") or {}).get("forward", {}).get("peak")
            for name, v in d["variants"].items():
                fwd, bwd = v.get("forward") or {}, v.get("backward") or {}
                b1 = next((p for p in fwd.get("points", []) if p["batch"] == 1), None)
                peak_point = next((p for p in fwd.get("points", []) if p["batch"] == fwd.get("peak_batch")), {})
                flops, top = d.get("flops_per_image", {}).get("forward"), (d.get("peak_tflops") or {}).get(name)
                achieved = flops * fwd["peak"] / 1e12 if flops and fwd.get("peak") else None
                rows.append({
                    "device": dev, "variant": name, "forward": fwd.get("peak"), "batch": fwd.get("peak_batch"),
                    "batch_90": fwd.get("batch_90"), "backward": bwd.get("peak"),
                    "p50_ms_b1": b1["p50_ms"] if b1 else None, "p90_ms_b1": b1["p90_ms"] if b1 else None,
                    "vs_fp32": fwd["peak"] / fp32 if fwd.get("peak") and fp32 else None,
                    "vs_first": fwd["peak"] / base if fwd.get("peak") and base and len(self.devices) > 1 else None,
                    "agreement": v.get("agreement"), "memory_mib": peak_point.get("memory_mib"),
                    "tflops": achieved, "of_peak": achieved / top if achieved and top else None,
                    "flagged": bool(fwd.get("flagged") or bwd.get("flagged")),
                    "note": v.get("skipped") or (f"compile {v['compile_s']:.1f} s, pays back after "
                                                 f"{_num(v['break_even_images'], ',.0f')} images"
                                                 if v.get("compile_s") is not None else "")})
        return rows

    def table(self) -> str:
        """The text table: images/s per device and variant, as in the lecture's CPU vs GPU table."""
        head = ["device", "variant", "fwd img/s", "@batch", "90% at", "fwd+bwd img/s", "p50 ms b1", "x fp32",
                "top-1 agr", "TFLOP/s", "note"]
        body = []
        for r in self.rows():
            body.append([r["device"], r["variant"] + (" !" if r["flagged"] else ""), _num(r["forward"], ".4g"),
                         _num(r["batch"], "d"), _num(r["batch_90"], "d"), _num(r["backward"], ".4g"),
                         _num(r["p50_ms_b1"]), _num(r["vs_fp32"], ".2f"),
                         _num(r["agreement"], ".0%") if r["agreement"] is not None else "-",
                         _num(r["tflops"], ".3g") + (f" ({r['of_peak']:.0%})" if r["of_peak"] else ""), r["note"]])
        widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head))]
        lines = ["  ".join(str(c).ljust(w) if i < 2 or i == len(head) - 1 else str(c).rjust(w)
                           for i, (c, w) in enumerate(zip(row, widths))).rstrip() for row in [head, *body]]
        return "\n".join(lines)

    def jobs_table(self) -> str:
        """Seconds per image of underhood's own heavy jobs, per device."""
        rows = []
        for dev, d in self.devices.items():
            for name, j in (d.get("jobs") or {}).items():
                cost = f"{j['s_per_image']:.3g} s/image ({j['cpu_s_per_image']:.3g} CPU-s)" if "s_per_image" in j \
                    else f"skipped: {j['skipped']}"
                rows.append((dev, name, j["settings"], cost))
        if not rows:
            return ""
        widths = [max(len(str(r[i])) for r in rows) for i in range(3)]
        return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3] for r in rows)

    def summary(self) -> Summary:
        text = [f"BenchResult: {self.model} at {'x'.join(map(str, self.input_shape))}"
                f"{' (quick)' if self.quick else ''}, {self.wall_s:.1f} s ({self.cpu_s:.1f} CPU-s)", self.table()]
        jobs = self.jobs_table()
        if jobs:
            text += ["underhood jobs on this machine:", jobs]
        text += [f"warning: {w}" for w in self.warnings]
        return Summary("\n".join(text), self.scalars())

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchResult:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in _floats(data).items() if k in names})

    def save(self, path: str | os.PathLike, **info: Any) -> Path:
        """The result protocol's ``manifest.json`` (and ``result.safetensors``), plus ``bench.json``."""
        out = super().save(path, **info)
        write_text(out / BENCH_JSON, json.dumps(_finite(self.to_dict()), indent=1) + "\n")
        return out

    def figure(self):
        from ..viz.hardware import bench_figure

        return bench_figure(self.to_dict())


def load_bench(path: str | os.PathLike) -> BenchResult:
    """The result in a ``bench.json`` file (or a folder holding one)."""
    p = Path(path)
    if p.is_dir():
        p = p / BENCH_JSON
    try:
        data = json.loads(p.read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {FORMAT}")
        return BenchResult.from_dict(data)
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise DataError(f"path: {str(path)!r} is not a bench.json written by `underhood bench` ({exc}); give the "
                        "file or its folder") from None


@dataclasses.dataclass(repr=False)
class Comparison(Result):
    """The ratio table between two saved runs: ``b / a`` of each throughput both measured.

    ``rows``: ``{"device", "variant", "mode", "a", "b", "ratio"}``; ``geomean``: their geometric mean.
    """

    a: str
    b: str
    rows: list
    geomean: float

    def summary(self) -> Summary:
        head = ["device", "variant", "mode", "A img/s", "B img/s", "B / A"]
        body = [[r["device"], r["variant"], MODES[r["mode"]], f"{r['a']:.4g}", f"{r['b']:.4g}", f"{r['ratio']:.2f}x"]
                for r in self.rows]
        widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
        lines = [f"A = {self.a}", f"B = {self.b}"]
        lines += ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                  for row in [head, *body]]
        lines.append(f"geometric mean B / A: {self.geomean:.2f}x over {len(self.rows)} figures")
        return Summary("\n".join(lines), self.scalars())

    def figure(self):
        from ..viz.hardware import compare_figure

        return compare_figure(self.rows, self.a, self.b)


def compare(a: BenchResult, b: BenchResult, *, labels: tuple[str, str] | None = None) -> Comparison:
    """``b / a`` for every (device, variant, mode) both runs measured. Runs with no device in common (a CPU run
    against a GPU run) are compared device to device: A's first with B's first."""
    common = [d for d in a.devices if d in b.devices]
    pairs = [(d, d) for d in common] or [(next(iter(a.devices)), next(iter(b.devices)))]
    rows = []
    for da, db in pairs:
        va, vb = a.devices[da]["variants"], b.devices[db]["variants"]
        for name in [n for n in va if n in vb]:
            for mode in MODES:
                x, y = (va[name].get(mode) or {}).get("peak"), (vb[name].get(mode) or {}).get("peak")
                if x and y:
                    rows.append({"device": da if da == db else f"{da} -> {db}", "variant": name, "mode": mode,
                                 "a": x, "b": y, "ratio": y / x})
    if not rows:
        raise DataError("compare: the two runs share no measured variant; compare runs of `underhood bench`")
    geomean = math.exp(sum(math.log(r["ratio"]) for r in rows) / len(rows))
    la, lb = labels or (f"{a.model} ({a.environment['cpu']['model'] or '?'})",
                        f"{b.model} ({b.environment['cpu']['model'] or '?'})")
    return Comparison(la, lb, rows, geomean)
