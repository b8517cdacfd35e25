"""Dataset-scale runs: sharding, resuming, and a two-process gloo run equal to one process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from underhood.core.distributed import ShardedJob, World, broadcast, session
from underhood.core.errors import InputError

from .conftest import DEVICE

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _work(calls: list[int], fail_at: int | None = None):
    def work(part: slice) -> dict[str, torch.Tensor]:
        if fail_at is not None and len(calls) == fail_at:
            raise RuntimeError("killed")
        calls.append(part.start)
        return {"sum": torch.arange(part.start, part.stop).sum()[None], "n": torch.tensor([part.stop - part.start])}
    return work


def test_a_job_interrupted_midway_resumes_without_redoing_finished_shards(tmp_path):
    config = {"layer": "x"}
    calls: list[int] = []
    with pytest.raises(RuntimeError, match="killed"):
        ShardedJob(tmp_path, "job", config, 100, 16).run(_work(calls, fail_at=3))
    assert calls == [0, 16, 32]
    job = ShardedJob(tmp_path, "job", config, 100, 16)
    again: list[int] = []
    parts = job.run(_work(again))
    assert again == [48, 64, 80, 96] and job.resumed == 3
    assert sum(int(p["sum"]) for p in parts) == sum(range(100)) and sum(int(p["n"]) for p in parts) == 100


def test_each_rank_takes_every_world_size_th_shard_and_rank_zero_merges(tmp_path):
    job = ShardedJob(tmp_path, "job", {}, 50, 10)
    job.prepare(World(0, 2))  # rank 0 writes the plan before any rank works
    seen: list[int] = []
    assert job.run(_work(seen), World(1, 2)) is None  # rank 1 of 2: shards 1 and 3, returns nothing
    assert seen == [10, 30]
    rest: list[int] = []
    parts = ShardedJob(tmp_path, "job", {}, 50, 10).run(_work(rest), World(0, 2))
    assert rest == [0, 20, 40] and [int(p["n"]) for p in parts] == [10] * 5


def test_a_different_configuration_is_refused_unless_fresh(tmp_path):
    ShardedJob(tmp_path, "job", {"layer": "a"}, 20, 10).run(_work([]))
    with pytest.raises(InputError, match="holds shards of a different job run.*--fresh"):
        ShardedJob(tmp_path, "job", {"layer": "b"}, 20, 10).run(_work([]))
    calls: list[int] = []
    ShardedJob(tmp_path, "job", {"layer": "b"}, 20, 10, fresh=True).run(_work(calls))
    assert calls == [0, 10]
    with pytest.raises(InputError, match="shard_size"):
        ShardedJob(tmp_path, "job", {}, 20, 0)


def test_a_single_process_has_no_process_group():
    with session() as world:
        assert world == World(0, 1) and world.main and broadcast(5) == 5


def _cli(*args: str, launcher: list[str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    cmd = (launcher or [sys.executable, "-m", "underhood"]) + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=240, **kwargs)


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "underhood"]


def _same(a: Path, b: Path) -> None:
    x, y = load_file(str(a)), load_file(str(b))
    assert x.keys() == y.keys()
    for k in x:
        assert torch.equal(x[k], y[k]), k


def test_two_gloo_processes_give_the_same_result_as_one(tmp_path):
    # on a machine with one GPU both ranks share cuda:0 and the group is gloo (NCCL needs a GPU per rank:
    # core.distributed.backend); the same kernels on the same batches give the same bits as one process
    common = ["--data", "shapes:240", "--shard-size", "40", "--batch-size", "40", "--no-progress", "--device", DEVICE]
    one = _cli("dissect", "--layer", "features.9", "--channels", "0:6", "--k", "5", *common, "--out",
               str(tmp_path / "one"))
    two = _cli("dissect", "--layer", "features.9", "--channels", "0:6", "--k", "5", *common, "--out",
               str(tmp_path / "two"), launcher=TORCHRUN)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr[-2000:]
    _same(tmp_path / "one" / "result.safetensors", tmp_path / "two" / "result.safetensors")
    assert '"processes": 2' in (tmp_path / "two" / "manifest.json").read_text()
    one = _cli("statistics", "--layer", "features.13", *common, "--out", str(tmp_path / "s1"))
    two = _cli("statistics", "--layer", "features.13", *common, "--out", str(tmp_path / "s2"), launcher=TORCHRUN)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-2000:]
    _same(tmp_path / "s1" / "result.safetensors", tmp_path / "s2" / "result.safetensors")
    common = ["embed", "--model", "digits", "--data", "digits", "--layers", "input,pool2,fc2", "--method", "pca",
              "--shard-size", "50", "--batch-size", "50", "--no-progress", "--device", DEVICE]
    one = _cli(*common, "--out", str(tmp_path / "e1"))
    two = _cli(*common, "--out", str(tmp_path / "e2"), launcher=TORCHRUN)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-2000:]
    _same(tmp_path / "e1" / "features.safetensors", tmp_path / "e2" / "features.safetensors")
    _same(tmp_path / "e1" / "result.safetensors", tmp_path / "e2" / "result.safetensors")


def test_a_run_killed_midway_resumes_and_matches(tmp_path):
    args = ["dissect", "--data", "shapes:1200", "--layer", "features.2", "--channels", "0:4", "--k", "4",
            "--pattern", "none", "--shard-size", "24", "--batch-size", "24", "--no-progress"]
    killed = tmp_path / "killed"
    shards = killed / "shards" / "dissect"
    proc = subprocess.Popen([sys.executable, "-m", "underhood", *args, "--out", str(killed)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while time.time() < deadline and len(list(shards.glob("*.safetensors"))) < 3 and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(shards.glob("*.safetensors")))
    assert 3 <= done < 50 and not (killed / "result.safetensors").exists()
    for f in shards.glob("*.safetensors"):  # a shard is on disk whole or not at all
        assert "values" in load_file(str(f))
    resumed = _cli(*args, "--out", str(killed))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed: {done} of 50 shards were already done" in resumed.stdout
    clean = _cli(*args, "--out", str(tmp_path / "clean"))
    assert clean.returncode == 0
    _same(killed / "result.safetensors", tmp_path / "clean" / "result.safetensors")
