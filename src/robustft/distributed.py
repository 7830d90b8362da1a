"""Data-parallel training and evaluation over ``torch.distributed``, as launched by ``torchrun``.

``torchrun --nproc_per_node=N -m robustft train CONFIG`` starts N processes (ranks) with the
usual environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``...); each joins the
process group (NCCL on GPUs, gloo on CPUs), trains a DistributedDataParallel copy of the model
on its shard of every batch and evaluates its shard of the test set. Without that environment
everything here is a no-op and a run is the ordinary one-process run, bit for bit.

What this module guarantees, and how:

* **Sample order independent of N.** ``train.batch_size`` is the *global* batch. Every epoch
  has one global order, the permutation the one-process run's ``DataLoader`` draws from
  ``derive_seed(seed, "order", epoch)``; each global batch is split contiguously across the
  ranks (rank r takes the r-th of N near-equal parts). The batch size must be a multiple of N.
  The last, partial batch is dropped when it has fewer than 2N examples (a shard of one
  example breaks BatchNorm in train mode; for N = 1 this is the one-process rule: drop a last
  batch of 1).
* **Random starts independent of N.** A rank draws the attack's random start for the whole
  global batch from the epoch's attack generator and keeps its rows (:func:`shard_start`), so
  every example starts where the one-process run starts it. Augmentation and dropout draw from
  each rank's own generator (rank 0 seeded as the one-process run), so they differ from it.
* **Gradients of the global batch.** Each rank's loss is weighted by its share of the global
  batch, so DDP's average is the gradient of the global batch's mean loss. Adversarial examples
  are crafted through the unwrapped module (no gradient all-reduce while crafting).
* **BatchNorm.** Per rank (default): the training forward normalises each shard with its own
  statistics; the running statistics are averaged across ranks after every step, which makes
  the running mean that of the global batch (the running variance misses the spread between
  shards). ``train.sync_bn: true`` converts BatchNorm layers to torch's SyncBatchNorm
  (GPU only): the statistics are those of the global batch.
* **Metrics of the global batch.** Loss, accuracy and example pass counts are summed across
  ranks every step (the numerical-fault check sees the global loss, so every rank stops
  together); validation accuracy is counted on shards of whole batches and summed.
* **One writer.** Only rank 0 writes the run directory (it holds the lock); the others wait
  for each write (:func:`on_main`) and stop with it if it fails.
* **Evaluation sharded along whole batches.** Rank r evaluates batches r, r + N, ... of the
  test set with the seeds the one-process run uses for those batches; per-example results are
  gathered in dataset order, so the curve equals the one-process curve example for example.
"""

from __future__ import annotations

import datetime
import inspect
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torch.utils.data import Sampler

from robustft.errors import PeerFailed, UserError, describe

_logger = logging.getLogger(__name__)

T = TypeVar("T")
TIMEOUT = datetime.timedelta(minutes=30)  # a rank waits this long for the others (checks, I/O)


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a run: ``rank`` of ``size``, ``local_rank`` of
    ``local_size`` on its node. ``World()`` is the one-process run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def active(self) -> bool:
        """More than one process: collectives are needed."""
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes files and reports progress."""
        return self.rank == 0


SINGLE = World()


def env_world() -> World:
    """The world ``torchrun`` describes in the environment (``World()`` without it)."""
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1:
        return SINGLE
    return World(
        rank=int(os.environ.get("RANK", "0")),
        size=size,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        local_size=int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1),
    )


def restart_count() -> int:
    """How often torchrun restarted this run's workers (``--max-restarts``); 0 on the first
    attempt and outside torchrun."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def rank_device(name: str, world: World) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` for ``auto`` (when CUDA is available) or
    ``cuda``, the CPU for ``cpu``.

    Raises:
        UserError: a device with an index, or one that DDP does not run on, under torchrun.
    """
    from robustft.utils.device import pick_device

    if not world.active:
        return pick_device(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda: this machine has no CUDA device; pass --device cpu")
        if world.local_rank >= torch.cuda.device_count():
            raise UserError(
                f"rank {world.rank} has LOCAL_RANK {world.local_rank} but its node has "
                f"{torch.cuda.device_count()} GPUs; start at most that many processes per node "
                "(torchrun --nproc_per_node)"
            )
        return torch.device("cuda", world.local_rank)
    if name == "cpu":
        return torch.device("cpu")
    raise UserError(
        f"--device {name}: under torchrun each process takes the GPU of its LOCAL_RANK; pass "
        "--device cuda (choose GPUs with CUDA_VISIBLE_DEVICES), auto or cpu"
    )


def mixed_devices(types: Sequence[str]) -> str | None:
    """The one-line complaint when ranks report different device types (``["cuda", "cpu"]``),
    else None."""
    if len(set(types)) <= 1:
        return None
    shown = ", ".join(f"rank {r}: {t}" for r, t in enumerate(types))
    return (
        f"ranks train on different devices ({shown}); every process of a run must use the same "
        "device type: pass --device cpu, or give every node GPUs"
    )


def process_group_backend(device: torch.device) -> str:
    """The process group's backends for ranks on ``device``: gloo carries the CPU collectives
    (object exchange, checks) on every rank, NCCL the CUDA tensors, so a rank on another device
    type still joins and :func:`join` names the mismatch."""
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def join(device_name: str) -> tuple[World, torch.device, bool]:
    """Join the process group torchrun describes (``env://``), if any.

    Returns:
        (world, this rank's device, whether this call created the process group; destroy it
        with :func:`leave`).

    Raises:
        UserError: a device problem (:func:`rank_device`) or ranks on mixed device types.
    """
    import torch.distributed as dist

    world = env_world()
    device = rank_device(device_name, world)
    if not world.active or dist.is_initialized():
        return world, device, False
    _die_with_agent()
    backend = process_group_backend(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend=backend,
        store=_attempt_store(world),
        rank=world.rank,
        world_size=world.size,
        timeout=TIMEOUT,
    )
    types: list[str] = [""] * world.size
    dist.all_gather_object(types, device.type)
    problem = mixed_devices(types)
    if problem is not None:
        leave(True)
        raise UserError(problem) if world.is_main else PeerFailed(problem)
    _logger.info("rank %d of %d on %s (%s)", world.rank, world.size, device, backend)
    return world, device, True


def _die_with_agent() -> None:
    """Under a torchrun agent, die with it: the agent starts its workers in sessions of their
    own, so a SIGKILL to the agent (or its process group: a killed job, a dead Ray worker)
    left them training, holding the run directory's lock, and writing into it after the run
    looked dead (seen when killing a 2-process run to resume it).

    Raises:
        PeerFailed: the agent is already gone.
    """
    if "TORCHELASTIC_RESTART_COUNT" not in os.environ:  # not started by a torchrun agent
        return
    from robustft.utils.process import die_with_parent

    parent = os.getppid()
    die_with_parent()
    if os.getppid() != parent:  # the agent died before the request took effect
        raise PeerFailed("torchrun's agent process is gone: stopping this worker")


def _attempt_store(world: World) -> Any:
    """The rendezvous store of this attempt: torchrun's (``MASTER_ADDR:MASTER_PORT``; served by
    its agent, else by rank 0) under a prefix of its own per restart.

    torch 2.14's ``env://`` rendezvous reuses the agent's store without a prefix, assuming a new
    store per restart; ``torchrun --standalone`` keeps one, so after an elastic restart the new
    rank 0 read the killed rank 1's address and failed ("Gloo connectFullMesh failed ...
    Connection refused"). Reproduced without robustft; the prefix fixes it.
    """
    import torch.distributed as dist

    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True)
    store = dist.TCPStore(
        os.environ.get("MASTER_ADDR", "127.0.0.1"),
        int(os.environ.get("MASTER_PORT", "29500")),
        world.size,
        is_master=not agent and world.is_main,
        timeout=TIMEOUT,
        multi_tenant=not agent,
    )
    return dist.PrefixStore(f"robustft/attempt_{restart_count()}", store)


def leave(created: bool) -> None:
    """Destroy the process group if :func:`join` created it."""
    import torch.distributed as dist

    if created and dist.is_initialized():
        dist.destroy_process_group()


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The global sample order of epoch ``epoch``: the permutation a one-process run's
    ``DataLoader(shuffle=True, generator=Generator().manual_seed(derive_seed(seed, "order",
    epoch)))`` yields (the loader draws its workers' base seed from the generator first)."""
    from robustft.utils.seeding import derive_seed

    generator = torch.Generator().manual_seed(derive_seed(seed, "order", epoch))
    torch.empty((), dtype=torch.int64).random_(generator=generator)  # the loader's base seed
    return torch.randperm(n, generator=generator).tolist()


def batches_per_epoch(n: int, batch_size: int, world_size: int) -> int:
    """Optimizer steps per epoch: the full global batches, plus the last partial one unless it
    has fewer than ``2 * world_size`` examples (see the module docstring)."""
    full, rest = divmod(n, batch_size)
    return full + (1 if rest >= 2 * world_size else 0)


def shard_bounds(batch: int, world: World) -> tuple[int, int]:
    """(first, end) of rank ``world.rank``'s contiguous part of a global batch of ``batch``
    examples (the N parts differ in size by at most one)."""
    return batch * world.rank // world.size, batch * (world.rank + 1) // world.size


def check_batch_size(batch_size: int, world: World) -> None:
    """Raises:
    UserError: ``train.batch_size`` is not a multiple of the number of processes."""
    if batch_size % world.size:
        nearest = max(world.size, batch_size // world.size * world.size)
        raise UserError(
            f"train.batch_size={batch_size} is not divisible by the {world.size} processes "
            "(it is the global batch, split evenly across ranks); use a multiple of "
            f"{world.size}, e.g. --set train.batch_size={nearest}"
        )


class ShardBatches(Sampler[list[int]]):
    """Batch sampler of one rank: its contiguous part of every global batch of the epoch's
    order (:func:`epoch_order`), as dataset indices. ``bounds[i]`` is (first row of the part in
    global batch ``i``, size of global batch ``i``)."""

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, world: World) -> None:
        order = epoch_order(n, seed, epoch)
        self.batches: list[list[int]] = []
        self.bounds: list[tuple[int, int]] = []
        for i in range(batches_per_epoch(n, batch_size, world.size)):
            chunk = order[i * batch_size : (i + 1) * batch_size]
            first, end = shard_bounds(len(chunk), world)
            self.batches.append(chunk[first:end])
            self.bounds.append((first, len(chunk)))

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def shard_start(
    attack: Any, x: Tensor, eps: float, generator: torch.Generator, bounds: tuple[int, int]
) -> Tensor | None:
    """This rank's rows of the random start the one-process run draws for the whole global
    batch (``bounds``: first row, global batch size); None for an attack without a random
    start. Consumes ``generator`` as the one-process run does."""
    if not getattr(attack, "random_init", True) or eps <= 0:
        return None
    first, total = bounds
    eps_all = torch.full((total,), float(eps), device=x.device)
    # the ball of the attack's start: eps, or N-FGSM's noise of noise_factor * eps
    radius = attack.start_radius(eps_all)
    return attack.geometry.random_init_rows(x, radius, generator, first=first)


def wrap(model: nn.Module, device: torch.device, world: World, *, sync_bn: bool) -> nn.Module:
    """The module the training update runs through: ``model`` itself in one process, else a
    DistributedDataParallel around it (BatchNorm converted to SyncBatchNorm in place when
    ``sync_bn``). ``model`` stays the unwrapped module that attacks, evaluation and checkpoints
    use."""
    if not world.active:
        return model
    if sync_bn:
        convert_sync_batchnorm(model, device)
    # a depthwise conv's gradient (C, 1, k, k) comes out with another stride on its size-1
    # dimension than DDP's bucket view: the same memory layout, which torch warns about
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    ddp = nn.parallel.DistributedDataParallel
    # running statistics are averaged after each step instead of rank 0's broadcast before
    # each forward (average_buffers); torch 2.14 renamed the switch
    sync_off: dict[str, Any] = (
        {"forward_sync_buffers": False}
        if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
        else {"broadcast_buffers": False}
    )
    return ddp(model, device_ids=[device.index] if device.type == "cuda" else None, **sync_off)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> None:
    """Replace ``model``'s BatchNorm layers by SyncBatchNorm in place (timm's converter, which
    keeps timm's fused BatchNorm+activation layers, else torch's).

    Raises:
        UserError: on the CPU (torch's SyncBatchNorm runs on GPUs only).
    """
    if device.type != "cuda":
        raise UserError(
            "train.sync_bn=true needs GPUs (torch's SyncBatchNorm runs on CUDA only); on CPUs "
            "BatchNorm statistics stay per rank: set train.sync_bn=false"
        )
    try:
        from timm.layers import convert_sync_batchnorm as timm_convert
    except ImportError:  # pragma: no cover (timm is a dependency)
        timm_convert = nn.SyncBatchNorm.convert_sync_batchnorm
    for name, child in list(model.named_children()):
        setattr(model, name, timm_convert(child))


def has_batchnorm(module: nn.Module) -> bool:
    """Whether ``module`` holds BatchNorm layers (whose training statistics depend on the
    number of examples each process normalises)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def _running_stats(module: nn.Module) -> list[Tensor]:
    out: list[Tensor] = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            out += [t for t in (m.running_mean, m.running_var) if t is not None]
    return out


def average_buffers(module: nn.Module, world: World) -> None:
    """Average BatchNorm running statistics across ranks (one all-reduce)."""
    import torch.distributed as dist

    stats = _running_stats(module)
    if not world.active or not stats:
        return
    flat = torch.cat([t.detach().flatten().float() for t in stats])
    dist.all_reduce(flat)
    flat /= world.size
    offset = 0
    for t in stats:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def all_sum(values: Sequence[float], world: World) -> list[float]:
    """Sums of ``values`` over the ranks (float64, through gloo on the CPU; the values
    themselves in one process)."""
    import torch.distributed as dist

    if not world.active:
        return list(values)
    tensor = torch.tensor(list(values), dtype=torch.float64)
    dist.all_reduce(tensor)
    return [float(v) for v in tensor]


def all_gather(obj: T, world: World) -> list[T]:
    """``obj`` of every rank, in rank order (``[obj]`` in one process)."""
    import torch.distributed as dist

    if not world.active:
        return [obj]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: T, world: World) -> T:
    """Rank 0's ``obj`` on every rank."""
    import torch.distributed as dist

    if not world.active:
        return obj
    box: list[Any] = [obj if world.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]  # type: ignore[no-any-return]


def _describe(error: BaseException) -> str:
    if isinstance(error, UserError):
        return str(error)
    return describe(error)


def on_main(world: World, fn: Callable[[], T]) -> T | None:
    """Run ``fn`` on rank 0 only; every rank returns once it is done (a barrier) and every rank
    raises if it failed (rank 0 its own exception, the others :class:`PeerFailed`). Returns
    ``fn()``'s value on rank 0, None elsewhere."""
    if not world.active:
        return fn()
    error: BaseException | None = None
    value: T | None = None
    if world.is_main:
        try:
            value = fn()
        except BaseException as err:  # KeyboardInterrupt too: the others must stop as well
            error = err
    message = broadcast(None if error is None else _describe(error), world)
    if error is not None:
        raise error
    if message is not None:
        raise PeerFailed(f"rank 0 failed: {message}")
    return value


def agree(world: World, fn: Callable[[], T]) -> T:
    """Run ``fn`` on every rank; if it fails on any, raise on every rank (the failing ones
    their own exception, the others :class:`PeerFailed` naming the first failure)."""
    error: BaseException | None = None
    value: Any = None
    try:
        value = fn()
    except BaseException as err:
        if not world.active:
            raise
        error = err
    if not world.active:
        return value  # type: ignore[no-any-return]
    messages = all_gather(None if error is None else _describe(error), world)
    if error is not None:
        raise error
    failed = [(r, m) for r, m in enumerate(messages) if m is not None]
    if failed:
        rank, message = failed[0]
        raise PeerFailed(f"rank {rank} failed: {message}")
    return value  # type: ignore[no-any-return]
