"""Dataset-scale jobs sharded over ``torch.distributed`` ranks, resumable, merged on rank 0.

A job splits its dataset into fixed-size shards (independent of the number of processes).
Rank ``r`` of ``W`` computes shards ``r, r + W, r + 2W, ...``, each written atomically to
``<out>/shards/<job>/NNNNN.safetensors``; shards already on disk are skipped, so an interrupted
run, relaunched with the same command (with any number of processes), redoes only what is
missing. After a barrier rank 0 reads every shard in order and merges them.

Launch with ``torchrun --nproc-per-node N -m underhood <command> ...``; the process group uses
NCCL when each rank has a GPU of its own, else gloo (CPU ranks, or ranks sharing one GPU: see
:func:`backend`). Without ``torchrun`` the same code runs as one process.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import InputError
from .io import MANIFEST_VERSION, atomic_path, write_text


@dataclass(frozen=True)
class World:
    """This process's place in the job: ``rank`` of ``size`` processes."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _env_world() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


@contextlib.contextmanager
def session(device: torch.device | None = None) -> Iterator[World]:
    """Join the ``torchrun`` process group when launched by it (gloo on CPU, NCCL on CUDA).

    Yields the :class:`World`; a single process (no ``WORLD_SIZE`` > 1) gets ``World(0, 1)``
    and no process group. A group created here is destroyed on exit.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        yield World(dist.get_rank(), dist.get_world_size())
        return
    if _env_world() <= 1 or not dist.is_available():
        yield World()
        return
    dist.init_process_group(backend(device), timeout=datetime.timedelta(hours=2))
    try:
        yield World(dist.get_rank(), dist.get_world_size())
    finally:
        dist.destroy_process_group()


def backend(device: str | torch.device | None = None) -> str:
    """The process group's backend: NCCL when every local rank has a GPU of its own, else gloo.

    The group carries only small control messages (the plan, barriers; see :func:`broadcast`): shard
    results travel through files, so no tensor of a scan ever crosses it. NCCL needs one GPU per
    process (two ranks on one GPU fail at the first collective), so two processes sharing a
    machine's only GPU, or CPU ranks, use gloo, whose object collectives stage through the CPU.
    With NCCL each rank is bound to ``cuda:LOCAL_RANK`` first, as NCCL requires.
    """
    if device is None or torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return "gloo"
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    if local > torch.cuda.device_count():
        return "gloo"
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return "nccl"


def rank_device(device: torch.device) -> torch.device:
    """This rank's device: ``cuda`` without an index becomes ``cuda:LOCAL_RANK`` (modulo the GPUs there are), so
    ``torchrun`` ranks spread over a machine's GPUs and share them when there are fewer GPUs than ranks."""
    device = torch.device(device)
    if device.type != "cuda" or device.index is not None or "LOCAL_RANK" not in os.environ:
        return device
    return torch.device("cuda", int(os.environ["LOCAL_RANK"]) % max(1, torch.cuda.device_count()))


def barrier() -> None:
    """Wait for every rank (nothing to do in a single process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (the value itself in a single process; a tensor arrives on the CPU)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        box = [value.detach().cpu() if isinstance(value, torch.Tensor) else value]  # staged through the CPU: a
        dist.broadcast_object_list(box, src=0)  # pickled CUDA tensor would land on rank 0's GPU index everywhere
        return box[0]
    return value


def model_digest(model: torch.nn.Module) -> str:
    """A short hash of a model's parameters and buffers (which weights a shard was computed with)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                 if t.numel() else b"")
    return h.hexdigest()[:16]


class ShardedJob:
    """The shards of one job under ``out``: plan, resume and merge.

    Args:
        out: the command's output folder.
        job: the job's name (``"dissect"``, ``"embed"``, ...).
        config: everything the result depends on (model digest, data, layer, options); a
            folder holding shards of a different configuration is refused unless ``fresh``.
        n: dataset size.
        shard_size: images per shard.
        fresh: discard shards of an earlier run first.
    """

    def __init__(self, out: str | os.PathLike, job: str, config: dict[str, Any], n: int, shard_size: int = 1024,
                 *, fresh: bool = False) -> None:
        if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
            raise InputError(f"shard_size: expected a positive int, got {shard_size!r}")
        if n < 1:
            raise InputError("dataset: it is empty; give a dataset with at least one image")
        self.folder = Path(out) / "shards" / job
        self.job, self.n, self.shard_size = job, n, shard_size
        self.config = json.loads(json.dumps(config, default=str))
        self.fresh = fresh
        self.resumed = 0
        self.slices = [slice(s, min(n, s + shard_size)) for s in range(0, n, shard_size)]

    @property
    def plan(self) -> dict[str, Any]:
        return {"manifest_version": MANIFEST_VERSION, "job": self.job, "n": self.n,
                "shard_size": self.shard_size, "shards": len(self.slices), "config": self.config}

    def path(self, i: int) -> Path:
        return self.folder / f"{i:05d}.safetensors"

    def done(self) -> list[int]:
        """Shards already on disk."""
        return [i for i in range(len(self.slices)) if self.path(i).exists()]

    def prepare(self, world: World) -> None:
        """Rank 0 checks (or writes) the plan and counts finished shards; every rank then learns the outcome."""
        plan_path = self.folder / "plan.json"
        error = None
        if world.main:
            old = json.loads(plan_path.read_text()) if plan_path.exists() else None
            if old is not None and old != self.plan and not self.fresh:
                error = (f"out: {self.folder.parent.parent} holds shards of a different {self.job} run (other model, "
                         "data or options); pass --fresh to discard them or use another --out")
            else:
                if self.fresh or old != self.plan:
                    for p in self.folder.glob("*.safetensors"):
                        p.unlink()
                write_text(plan_path, json.dumps(self.plan, indent=1) + "\n")
        self.resumed = len(self.done()) if world.main else 0
        error = broadcast(error)
        if error:
            raise InputError(error)

    def save(self, i: int, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        with atomic_path(self.path(i)) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))

    def load(self, i: int) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(str(self.path(i)))

    def run(self, work: Callable[[slice], dict[str, torch.Tensor]], world: World | None = None, *,
            progress: bool = False) -> list[dict[str, torch.Tensor]] | None:
        """Compute this rank's missing shards with ``work(slice)``; rank 0 returns every shard in order.

        Other ranks return ``None`` once all shards exist.
        """
        from tqdm.auto import tqdm

        world = world or World()
        self.prepare(world)
        mine = [i for i in range(world.rank, len(self.slices), world.size) if not self.path(i).exists()]
        for i in tqdm(mine, desc=f"{self.job} shards (rank {world.rank})", disable=not progress, leave=False):
            self.save(i, work(self.slices[i]))
        barrier()
        if not world.main:
            return None
        missing = [i for i in range(len(self.slices)) if not self.path(i).exists()]
        if missing:
            raise InputError(f"out: shards {missing[:5]} of {self.folder} are missing after the run; "
                             "relaunch the same command to finish them")
        return [self.load(i) for i in range(len(self.slices))]
