"""The hardware family (``underhood bench``): environment, throughput bookkeeping, out-of-memory retry, agreement,
spread flags, honest warnings, bench.json and --compare, the report section and the command.

Timings come from a fake timer where the figures must be exact; real runs use a tiny model and minimal settings.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from underhood.cli import main
from underhood.hardware import (
    BenchResult,
    agreement,
    bench,
    compare,
    environment,
    findings,
    load_bench,
    peak_tflops,
    settings,
    sweep,
)
from underhood.hardware.environment import parse_cpuinfo
from underhood.hardware.measure import Runner, point

X86 = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse avx avx2 avx512f avx512_bf16 amx_bf16 amx_tile
"""
ARM = "processor\t: 0\nFeatures\t: fp asimd bf16 sve\nCPU part\t: 0xd40\n"


def tiny() -> nn.Module:
    """A 3x8x8 -> 3 classes convolutional model (the command's test model)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3))


class RunsOutOfMemory(nn.Module):
    """Raises CUDA's out-of-memory error (simulated, on the CPU) for batches above ``limit``."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.linear = nn.Linear(3 * 4 * 4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (simulated) at batch {x.shape[0]}")
        return self.linear(x.flatten(1))


def fake_timer(seconds):
    """A timer giving ``seconds(name, batch, call)`` per call, without running anything."""
    calls = {}

    def clock(fn, reps, key):
        name, batch = key
        out = []
        for _ in range(reps):
            calls[key] = calls.get(key, 0) + 1
            out.append(seconds(name, batch, calls[key]))
        return out
    return clock


# ----------------------------------------------------------------------------- environment


def test_environment_records_the_build_the_cpu_and_warns_when_loaded():
    env = environment(cpuinfo=X86, load=(3.0, 2.0, 1.0), cores=4)
    assert env["cpu"]["model"].startswith("Intel(R) Xeon")
    assert env["cpu"]["flags"] == ["avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"]
    assert env["cpu"]["bf16_native"] and env["cpu"]["amx"] and env["cpu"]["cores"] == 4
    assert env["torch"]["version"] == torch.__version__
    assert {"cuda", "cudnn", "mkl", "onednn", "openmp"} <= set(env["torch"])
    assert env["threads"] == torch.get_num_threads() and env["load_average"] == [3.0, 2.0, 1.0]
    assert len(env["warnings"]) == 1 and "loaded" in env["warnings"][0]  # 3.0 > 0.5 x 4 cores
    assert environment(cpuinfo=X86, load=(1.9, 1, 1), cores=4)["warnings"] == []
    json.dumps(env)  # JSON-ready


def test_cpuinfo_of_an_arm_cpu_and_of_an_old_x86():
    assert parse_cpuinfo(ARM)[1] == ["bf16", "asimd", "sve"]
    old = environment(cpuinfo="model name\t: Old\nflags\t: fpu sse2 avx2\n", load=(0, 0, 0), cores=2)
    assert old["cpu"]["flags"] == ["avx2"] and not old["cpu"]["amx"]


# ----------------------------------------------------------------------------- statistics and the sweep


def test_throughput_curve_bookkeeping_with_a_fake_timer():
    # one call of batch b takes (b + 8) ms: throughput 1000 b / (b + 8) rises towards 1000 images/s
    clock = fake_timer(lambda name, b, i: (b + 8) / 1000)
    curves = sweep(lambda name, b: (lambda: None), ["fp32"], [1, 2, 4, 8, 16, 32, 64], rounds=3, block_s=0.05,
                   cap_s=10, timer=clock)
    c = curves["fp32"]
    batches = [p["batch"] for p in c["points"]]
    assert batches == [1, 2, 4, 8, 16, 32, 64]
    assert all(a["throughput"] < b["throughput"] for a, b in zip(c["points"], c["points"][1:]))
    assert c["peak"] == pytest.approx(1000 * 64 / 72) and c["peak_batch"] == 64
    assert c["batch_90"] == 32  # 1000*32/40 = 800 >= 0.9 * 888.9; 16 gives 667
    assert c["points"][0]["p50_ms"] == pytest.approx(9.0) and c["spread"] == pytest.approx(0.0)
    assert not c["flagged"] and c["stop"] == "largest batch asked"


def test_a_slow_call_ends_the_sweep_at_the_time_cap():
    clock = fake_timer(lambda name, b, i: b * 0.1)
    c = sweep(lambda name, b: (lambda: None), ["fp32"], [1, 2, 4, 8], rounds=1, block_s=0.01, cap_s=0.3,
              timer=clock)["fp32"]
    assert [p["batch"] for p in c["points"]] == [1, 2, 4] and "time cap" in c["stop"]


@pytest.mark.parametrize("limit, last, oom_at", [(40, 32, 48), (50, 48, 64)])
def test_out_of_memory_is_retried_half_way_then_stops(limit, last, oom_at):
    runner = Runner(RunsOutOfMemory(limit), torch.device("cpu"), (3, 4, 4))
    c = sweep(lambda name, b: runner.step(name, "forward", b), ["fp32"], [1, 2, 4, 8, 16, 32, 64, 128], rounds=1,
              block_s=0.001, cap_s=10, timer=fake_timer(lambda n, b, i: 0.001))["fp32"]
    assert [p["batch"] for p in c["points"]][-1] == last  # 64 fails; 48 is tried once; 128 never
    assert c["stop"] == "out of memory" and c["oom_at"] == oom_at
    assert 128 not in [p["batch"] for p in c["points"]]


def test_spread_over_rounds_is_flagged_above_15_percent():
    steady = point(4, [[0.1], [0.1], [0.1]])
    noisy = point(1, [[0.1], [0.1], [0.2]])  # 10, 10, 5 images/s: p10 6, p90 10, median 10
    assert steady["spread"] == 0 and noisy["spread"] == pytest.approx(0.4)
    clock = fake_timer(lambda name, b, i: 0.01 * (1 + (name == "bf16") * (i % 3 == 0)))  # bf16: every third slow
    curves = sweep(lambda name, b: (lambda: None), ["fp32", "bf16"], [1], rounds=3, block_s=0.01, cap_s=10,
                   timer=clock)
    assert not curves["fp32"]["flagged"] and curves["bf16"]["flagged"]


def test_agreement_of_top1():
    ref = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    assert agreement(ref, ref * 3) == 1.0
    assert agreement(ref, ref.flip(1)) == 0.0
    assert agreement(ref, torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])) == 0.5


def test_settings_and_peaks():
    quick = settings(torch.device("cpu"), quick=True)
    assert quick.batches == (1, 4, 16) and quick.rounds == 3 and not quick.compile
    full = settings(torch.device("cpu"), max_batch=48)
    assert full.batches == (1, 2, 4, 8, 16, 32, 48) and full.compile
    assert peak_tflops("NVIDIA H200", "bf16") == 989.0 and peak_tflops("NVIDIA H100 PCIe", "fp32") == 51.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB", "tf32") == 156.0 and peak_tflops("NVIDIA A10G", "fp32") is None
    assert peak_tflops("NVIDIA L40S", "fp32") == 91.6 and peak_tflops("NVIDIA L4", "fp32") == 30.3


# ----------------------------------------------------------------------------- warnings from measurements


def _curve(peak, points=None, flagged=False, spread=0.0):
    return {"peak": peak, "points": points or [{"batch": 1, "throughput": peak}], "flagged": flagged,
            "spread": spread}


def test_warnings_follow_the_measurements():
    devices = {"cpu": {"variants": {
        "fp32": {"forward": _curve(100.0)},
        "bf16": {"forward": _curve(8.0)},
        "channels_last": {"forward": _curve(60.0, flagged=True, spread=0.4)},
        "1-thread": {"forward": _curve(300.0)},
        "compile": {"skipped": None, "compile_s": 30.0, "batch": 8, "speedup": 0.9,
                    "break_even_images": math.inf}}}}
    text = "\n".join(findings(devices, {"cpu": {"bf16_native": False}, "threads": 2}))
    assert "bf16 autocast is 12.5x slower" in text and "no native bf16" in text
    assert "channels_last is 1.7x slower" in text and "batch 1" in text
    assert "never pays back" in text
    assert "one thread is 3.0x faster" in text
    assert "channels_last forward (40%)" in text
    calm = {"cpu": {"variants": {"fp32": {"forward": _curve(100.0)}, "bf16": {"forward": _curve(90.0)},
                                 "compile": {"skipped": None, "compile_s": 1.0, "batch": 8, "speedup": 2.0,
                                             "break_even_images": 500.0}}}}
    assert findings(calm, {"cpu": {"bf16_native": True}}) == []
    calm["cpu"]["variants"]["compile"]["break_even_images"] = 50_000.0
    assert "pays back only after 50,000 images" in findings(calm, {})[0]


# ----------------------------------------------------------------------------- real runs on a tiny model


@pytest.fixture(scope="module")
def tiny_bench() -> BenchResult:
    model = tiny()
    return bench(model, devices="cpu", quick=True, size=8, max_batch=4, rounds=2,
                 variants=["fp32", "bf16", "channels_last", "compile"], spec="tiny")


def test_bench_on_a_tiny_model(tiny_bench):
    r = tiny_bench
    v = r.devices["cpu"]["variants"]
    assert set(v) == {"fp32", "bf16", "channels_last", "compile"}
    assert [p["batch"] for p in v["fp32"]["forward"]["points"]] == [1, 4]
    assert v["fp32"]["forward"]["peak"] > 0 and v["fp32"]["backward"]["peak"] > 0
    assert v["fp32"]["agreement"] == 1.0 and 0 <= v["bf16"]["agreement"] <= 1
    assert "--quick" in v["compile"]["skipped"]
    assert r.devices["cpu"]["flops_per_image"]["forward"] > 0
    assert {row["name"] for row in r.devices["cpu"]["layers"]} <= {"0", "1", "2", "3", "4"}
    assert "fp32" in r.summary() and "tiny" in repr(r)


def test_the_model_is_left_as_it_was():
    model = tiny().train()
    before = {k: t.clone() for k, t in model.state_dict().items()}
    bench(model, devices="cpu", quick=True, size=8, max_batch=2, rounds=1, variants=["fp32", "channels_last"])
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], t) for k, t in model.state_dict().items())
    assert model[0].weight.is_contiguous() and model[0].weight.grad is None


def test_a_failing_compile_is_skipped_with_its_reason(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here\nsecond line")
    monkeypatch.setattr(torch, "compile", broken)
    r = bench(tiny(), devices="cpu", quick=True, size=8, max_batch=1, rounds=1, compile=True,
              variants=["fp32", "compile"], layers=False)
    assert r.devices["cpu"]["variants"]["compile"]["skipped"] == "torch.compile failed: RuntimeError: no compiler here"


def test_json_round_trip_and_compare(tiny_bench, tmp_path):
    tiny_bench.save(tmp_path / "a")
    again = load_bench(tmp_path / "a" / "bench.json")
    assert again.rows() == tiny_bench.rows() and again.environment == tiny_bench.environment
    assert load_bench(tmp_path / "a").table() == tiny_bench.table()
    faster = BenchResult.from_dict(json.loads((tmp_path / "a" / "bench.json").read_text()))
    for v in faster.devices["cpu"]["variants"].values():
        for mode in ("forward", "backward"):
            if (v.get(mode) or {}).get("peak"):
                v[mode]["peak"] *= 2
    c = compare(tiny_bench, faster)
    assert c.rows and all(r["ratio"] == pytest.approx(2.0) for r in c.rows)
    assert c.geomean == pytest.approx(2.0) and "2.00x" in c.summary()


def test_figures(tiny_bench):
    fig = tiny_bench.figure()
    assert len(fig.axes) == 2  # no jobs timed: the bars and the curves
    c = compare(tiny_bench, tiny_bench)
    assert c.figure().axes[0].get_xlabel().startswith("B / A")


def test_the_report_section_shows_only_with_a_benchmark(tiny_bench, tmp_path):
    from underhood.report import Context
    from underhood.report.sections.hardware import hardware

    ctx = Context(model=tiny(), spec="tiny", data=None, out=tmp_path)
    assert hardware(ctx) is None  # the demo does not pay for it
    ctx.options["bench"] = tiny_bench
    html = str(hardware(ctx))
    assert "<table>" in html and "fp32" in html and ctx.figures == ["figures/bench.png"]


def test_the_bench_command_and_compare(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["bench", "--quick", "--model", "tests.test_hardware:tiny", "--size", "8", "--device", "cpu",
            "--no-jobs", "--max-batch", "2", "--rounds", "1", "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "fwd img/s" in text and "bench.json" in text
    assert {"bench.json", "bench.png", "report.html", "manifest.json"} <= {p.name for p in out.iterdir()}
    assert "How fast is this model here" in (out / "report.html").read_text()
    js = str(out / "bench.json")
    assert main(["bench", "--compare", js, js, "--out", str(tmp_path / "cmp")]) == 0
    assert "1.00x" in capsys.readouterr().out and (tmp_path / "cmp" / "compare.png").exists()
    assert main(["bench", "--compile", "--no-compile", "--out", str(tmp_path / "x")]) == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_variants_and_memory():
    r = bench(tiny(), devices="cuda", size=8, max_batch=4, rounds=1, compile=False, layers=False)
    v = r.devices["cuda"]["variants"]
    assert {"fp32", "tf32", "bf16", "fp16", "channels_last"} <= set(v)
    assert all(p["memory_mib"] > 0 for p in v["fp32"]["forward"]["points"])
    assert r.environment["gpus"] and r.devices["cuda"]["name"] == r.environment["gpus"][0]["name"]
