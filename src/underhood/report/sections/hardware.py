"""Report section of the hardware family: how fast the model is on this machine, and what a report costs.

Not part of the demo (its budget is spent): the section shows only when the context carries a benchmark,
``ctx.options["bench"]`` (a :class:`~underhood.hardware.BenchResult`, a path to ``bench.json``, or ``True`` to
run the quick benchmark on the report's model) or ``ctx.cache["bench"]``. It also defines :func:`heavy_jobs`,
the underhood jobs whose cost ``underhood bench`` measures (the hardware family cannot import its siblings;
the report, above them, can).
"""

from __future__ import annotations

from typing import Any

from markupsafe import Markup, escape

from ...hardware import BenchResult, bench, describe, load_bench
from ...hardware.measure import Job
from ...viz import figure_to_png
from ..base import Context, figure, paragraph, section, table


def heavy_jobs(quick: bool = False) -> dict[str, Job]:
    """Underhood's heavy jobs, by name: integrated gradients (50 steps), occlusion, a short render, PGD-10."""
    from ...adversarial import pgd
    from ...attribution import integrated_gradients, occlusion
    from ...synthesis import class_logit, render

    steps = 8 if quick else 64
    stride = 8 if quick else 16  # windows of 1/8 of the side, every 1/8 (quick) or 1/16 of it

    def occlude(model, x):
        side = min(x.shape[-2:])
        return occlusion(model, x, window=max(1, side // 8), stride=max(1, side // stride), batch_size=batch)

    # an explicit batch: the automatic choice measures the machine on its first call, which is not the job's cost
    batch = 64
    return {"integrated_gradients": Job("50 steps", lambda m, x: integrated_gradients(m, x, steps=50,
                                                                                       batch_size=batch)),
            "occlusion": Job(f"window 1/8, stride 1/{stride} of the side", occlude),
            "render": Job(f"{steps} steps, class logit", lambda m, x: render(m, class_logit(0), n=len(x),
                                                                               size=tuple(x.shape[-2:]), steps=steps)),
            "pgd": Job("10 steps, eps 8/255", lambda m, x: pgd(m, x, steps=10))}


def _result(ctx: Context) -> BenchResult | None:
    given: Any = ctx.cache.get("bench") or ctx.options.get("bench")
    if not given:
        return None
    if given is True:
        given = bench(ctx.model, devices="auto", quick=True, spec=ctx.spec, jobs=heavy_jobs(quick=True),
                      seed=ctx.seed)
    elif not isinstance(given, BenchResult):
        given = load_bench(given)
    ctx.cache["bench"] = given
    return given


def _fmt(v: Any, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


@section("hardware", "How fast is this model here", order=95)
def hardware(ctx: Context) -> Markup | None:
    result = _result(ctx)
    if result is None:
        return None  # no benchmark asked for: the section is left out of the report
    body = paragraph(describe(result.environment).replace("\n", "; "))
    body += figure(ctx, figure_to_png(result.figure(), dpi=110), "bench",
                   "Left: images per second at each variant's best batch, forward (dark) and forward+backward (light), "
                   "the lecture's CPU vs GPU table measured here. Middle: forward throughput against batch size; the "
                   "star marks the smallest batch reaching 90% of the peak. Right: seconds per image of underhood's "
                   "own heavy jobs. Medians over interleaved rounds; (!) marks a spread above 15% between rounds.")
    rows = [[r["device"], r["variant"], _fmt(r["forward"], ",.4g"), _fmt(r["batch_90"], "d"),
             _fmt(r["backward"], ",.4g"), _fmt(r["p50_ms_b1"], ".3g"), _fmt(r["vs_fp32"], ".2f"),
             _fmt(r["agreement"], ".0%"), _fmt(r["memory_mib"], ",.0f"), r["note"]] for r in result.rows()]
    head = ["device", "variant", "forward img/s", "90% at batch", "fwd+bwd img/s", "p50 ms at batch 1",
            "x fp32", "top-1 agreement", "GPU MiB", "note"]
    if rows and all(r[8] == "-" for r in rows):  # no GPU measured: no memory column
        head, rows = head[:8] + head[9:], [r[:8] + r[9:] for r in rows]
    body += table(head, rows, numeric=range(2, 8 if "GPU MiB" not in head else 9), best={2: "max"})
    jobs = [[dev, name, j["settings"], _fmt(j.get("s_per_image"), ".3g"), j.get("skipped", "")]
            for dev, d in result.devices.items() for name, j in (d.get("jobs") or {}).items()]
    if jobs:
        body += table(["device", "job", "settings", "seconds per image", "note"], jobs, numeric=(3,))
    if result.warnings:
        body += Markup("<ul>" + "".join(f"<li>{escape(w)}</li>" for w in result.warnings) + "</ul>")
    return body
