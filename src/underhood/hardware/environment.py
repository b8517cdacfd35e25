"""What the machine is, recorded before anything is timed: the torch build, the CPU and its
instruction sets, threads, load, and the GPUs.

A benchmark figure means little without the machine it came from: a CPU without native bf16
(no ``avx512_bf16`` / ``amx_bf16``) emulates bf16 and runs it many times slower than fp32; a
machine whose load average is above half its cores shares them with someone else.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from pathlib import Path
from typing import Any

import torch

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16", "bf16", "asimd", "sve")
"""The instruction-set flags recorded (x86: AVX2 ... AMX; Arm: ``bf16``, ``asimd``, ``sve``)."""

BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
"""Flags of /proc/cpuinfo meaning the CPU computes bf16 natively (x86 AVX512-BF16 or AMX, Arm BF16)."""

LOADED = 0.5
"""A 1-minute load average above this fraction of the cores is warned about: timings are then shared."""


def parse_cpuinfo(text: str) -> tuple[str, list[str]]:
    """``(model name, recorded flags)`` from the text of ``/proc/cpuinfo`` (x86 ``flags``, Arm ``Features``)."""
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, [f for f in CPU_FLAGS if f in flags]


def torch_build() -> dict[str, Any]:
    """The libraries torch was built with: CUDA, cuDNN, MKL, oneDNN, OpenMP and the CPU kernels' capability."""
    text = torch.__config__.show()

    def find(pattern: str) -> str | None:
        m = re.search(pattern, text)
        return m.group(1).strip() if m else None

    cudnn = None
    if torch.backends.cudnn.is_available():
        cudnn = str(torch.backends.cudnn.version())
    return {"version": torch.__version__, "cuda": torch.version.cuda, "cudnn": cudnn or find(r"CuDNN ([\d.]+)"),
            "mkl": find(r"Math Kernel Library Version ([^\n]+?)-Product") if torch.backends.mkl.is_available()
            else None,
            "onednn": find(r"MKL-DNN (v[\d.]+)") if torch.backends.mkldnn.is_available() else None,
            "openmp": find(r"OpenMP (\d+)"), "cpu_capability": find(r"CPU capability usage: (\S+)")}


def _cpu_bf16_native(flags: list[str]) -> bool:
    """Whether bf16 has hardware support on this CPU: the flags, or torch's own oneDNN check."""
    if any(f in flags for f in BF16_FLAGS):
        return True
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False


def gpus() -> list[dict[str, Any]]:
    """Name, memory (GiB), compute capability, multiprocessors and bf16 support of each CUDA device."""
    out = []
    if not torch.cuda.is_available():
        return out
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        out.append({"index": i, "name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                    "capability": f"{p.major}.{p.minor}", "multiprocessors": p.multi_processor_count,
                    "bf16_native": p.major >= 8})
    return out


def environment(cpuinfo: str | None = None, load: tuple[float, float, float] | None = None,
                cores: int | None = None) -> dict[str, Any]:
    """The machine as a JSON-ready dict, with ``warnings`` (a loaded machine).

    Args:
        cpuinfo, load, cores: the text of ``/proc/cpuinfo``, the load average and the core count
            (default: read from this machine; given in tests).

    Example:
        >>> env = environment()                              # doctest: +SKIP
        >>> env["cpu"]["bf16_native"], env["threads"]        # doctest: +SKIP
        (False, 2)
    """
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text(errors="replace") if path.exists() else ""
    model, flags = parse_cpuinfo(cpuinfo)
    cores = cores or os.cpu_count() or 1
    if load is None:
        try:
            load = os.getloadavg()
        except (OSError, AttributeError):  # not on every platform
            load = None
    env = {"torch": torch_build(), "python": platform.python_version(), "implementation": sys.implementation.name,
           "platform": platform.platform(), "cpu": {"model": model or platform.processor() or platform.machine(),
                                                    "machine": platform.machine(), "cores": cores, "flags": flags,
                                                    "bf16_native": _cpu_bf16_native(flags),
                                                    "amx": "amx_tile" in flags},
           "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
           "load_average": [round(v, 2) for v in load] if load else None, "gpus": gpus(), "warnings": []}
    if load and load[0] > LOADED * cores:
        env["warnings"].append(f"the machine is loaded (1-minute load average {load[0]:.1f} on {cores} cores, above "
                               f"{LOADED:g} x cores): other processes share the CPU, so timings are slower and "
                               "noisier than on an idle machine")
    return env


def describe(env: dict[str, Any]) -> str:
    """Two or three lines naming the machine, for the command's output and the report."""
    cpu, t = env["cpu"], env["torch"]
    flags = ", ".join(cpu["flags"]) or "none of " + "/".join(CPU_FLAGS[:5])
    lines = [f"torch {t['version']} (CUDA {t['cuda'] or '-'}, cuDNN {t['cudnn'] or '-'}, MKL "
             f"{'yes' if t['mkl'] else 'no'}, oneDNN {t['onednn'] or '-'}), Python {env['python']}",
             f"CPU {cpu['model']} ({cpu['cores']} cores, {env['threads']} torch threads; {flags}; bf16 "
             f"{'native' if cpu['bf16_native'] else 'emulated'}{', AMX' if cpu['amx'] else ''})"
             + (f", load average {env['load_average'][0]:.2f}" if env.get("load_average") else "")]
    lines += [f"GPU {g['index']}: {g['name']}, {g['memory_gib']} GiB, capability {g['capability']}"
              for g in env.get("gpus", [])]
    return "\n".join(lines)
