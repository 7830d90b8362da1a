"""Data-parallel training and evaluation (``robustft.distributed``) with torchrun on gloo.

The pure parts (sample order, shard bounds, random starts, messages) are checked in-process.
Three real ``torchrun --nproc_per_node=2`` launches (2 CPU processes x 1 thread, gloo) check
the whole: a 2-process run against a 1-process run of the same config (global batch 20, seed
0), its gathered robustness curve against a 1-process evaluation of the same weights, and a
2-process run whose rank 0 is SIGKILLed (torchrun's elastic restart resumes it by itself),
then the whole torchrun killed and resumed by hand, against an uninterrupted one.

Why the 1-process match is not exact: the two runs compute the same global-batch gradients
from the same samples and random starts, but in another order of float operations (the
convolutions see batches of 10 instead of 20, and gloo sums the two shards' gradients). The
model here (timm's ``test_efficientnet_ln``) has LayerNorm, no BatchNorm: with BatchNorm and
per-rank statistics (``train.sync_bn`` off; SyncBatchNorm runs on GPUs only) each shard is
normalised with its own statistics, which is another computation, not rounding (measured in
docs/scaling.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from robustft import cli, distributed
from robustft.attacks.geometry import get_geometry
from robustft.config import load_config
from robustft.distributed import ShardBatches, World
from robustft.errors import PeerFailed, UserError
from robustft.run.checkpoint import load_checkpoint
from robustft.run.load import load_trained_model
from robustft.training.fit import cpu_threads, fit
from robustft.training.state import build_state

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
TINY = {
    "model.name": "timm:test_efficientnet_ln",  # LayerNorm: no per-rank statistics
    "model.pretrained": False,
    "data.image_size": 16,
    "data.max_train_per_class": 12,  # 120 training images: 6 global batches of 20
    "data.augment": "none",
    "train.epochs": 3,
    "train.batch_size": 20,
    "train.threads": 1,
    "attack.schedule": "constant",
    "eval.max_examples": 40,
    "eval.batch_size": 16,  # 3 batches: rank 0 evaluates batches 0 and 2, rank 1 batch 1
    "eval.steps": 2,
}


TINY_OVERRIDES = [f"{k}={v}" for k, v in TINY.items()]


def overrides(settings: dict[str, Any]) -> list[str]:
    return [f"--set={k}={v}" for k, v in settings.items()]


# ------------------------------------------------------------------------- in-process


@pytest.mark.parametrize(("n", "batch"), [(120, 20), (37, 8), (42, 8), (9, 4)])
def test_one_global_order_for_any_number_of_processes(n: int, batch: int) -> None:
    config = load_config(SMOKE, [*TINY_OVERRIDES, f"train.batch_size={batch}"])
    state = build_state(config, torch.device("cpu"))
    state.data = dataclasses.replace(state.data, train=list(zip(range(n), [0] * n)))
    one = [b[0].tolist() for b in state.train_loader(epoch=3)]  # today's one-process loader
    assert len(one) == state.steps_per_epoch == distributed.batches_per_epoch(n, batch, 1)
    for size in (2, 4):
        ranks = [ShardBatches(n, batch, config.train.seed, 3, World(r, size)) for r in range(size)]
        merged = [[j for r in ranks for j in r.batches[i]] for i in range(len(ranks[0]))]
        steps = distributed.batches_per_epoch(n, batch, size)
        assert merged == one[:steps]  # the same batches, in the same order
        last = n % batch
        assert steps == len(one) - (1 if 1 < last < 2 * size else 0)
        for i, (first, total) in enumerate(ranks[1].bounds):
            lo, hi = distributed.shard_bounds(total, World(1, size))
            assert (first, total) == (lo, len(merged[i])) and hi - lo in (
                total // size,
                -(-total // size),
            )
            assert ranks[1].batches[i] == merged[i][lo:hi]


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_a_shard_starts_where_one_process_starts_it(norm: str) -> None:
    geometry = get_geometry(norm)
    x = torch.rand(7, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    eps = torch.full((7,), 0.3)
    whole = geometry.random_init(x, eps, torch.Generator().manual_seed(1))
    for first, end in ((0, 3), (3, 7)):
        part = geometry.random_init_rows(
            x[first:end], eps, torch.Generator().manual_seed(1), first=first
        )
        assert torch.equal(part, whole[first:end])


def test_misconfiguration_is_one_line(capsys: pytest.CaptureFixture[str], monkeypatch: Any) -> None:
    with pytest.raises(UserError, match=r"batch_size=15 is not divisible by the 2 processes.*=14"):
        distributed.check_batch_size(15, World(0, 2))
    assert distributed.mixed_devices(["cuda", "cuda"]) is None
    message = distributed.mixed_devices(["cuda", "cpu"])
    assert message is not None and "rank 1: cpu" in message and "--device cpu" in message
    with pytest.raises(UserError, match="LOCAL_RANK"):
        distributed.rank_device("cuda:1", World(1, 2, 1))
    # rank 1 of a torchrun run with a broken config: silent (rank 0 prints the same line)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert cli.main(["train", SMOKE, "--set", "train.epochs=0"]) == 2
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    assert cli.main(["train", SMOKE, "--set", "train.epochs=0"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    with pytest.raises(PeerFailed):
        distributed.on_main(_FakeWorld(), lambda: None)


class _FakeWorld(World):
    """A world whose rank 0 reported a failure (broadcast replaced)."""

    def __init__(self) -> None:
        super().__init__(1, 2)


@pytest.fixture(autouse=True)
def _no_real_broadcast(monkeypatch: pytest.MonkeyPatch) -> None:
    real = distributed.broadcast

    def broadcast(obj: Any, world: World) -> Any:
        return "disk full" if isinstance(world, _FakeWorld) else real(obj, world)

    monkeypatch.setattr(distributed, "broadcast", broadcast)


# A process group of one on the node's GPU (run in its own process: a process group cannot be
# left cleanly inside the test session). World.active is for size > 1, so the rank here is one
# whose collectives run anyway: DDP's gradient all-reduce and the BatchNorm statistics through
# NCCL, the scalar sums and object exchange through gloo, as in a multi-GPU run.
ONE_RANK = """
import copy, sys
import torch, torch.distributed as dist
from torch import nn
from robustft import distributed
from robustft.distributed import World

class Joined(World):
    @property
    def active(self):
        return True

device = torch.device(sys.argv[1])
if device.type == "cuda":
    torch.cuda.set_device(device)
backend = distributed.process_group_backend(device)
dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
world = Joined()
torch.manual_seed(0)
model = nn.Sequential(
    nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
    nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
).to(device)
plain = copy.deepcopy(model)
net = distributed.wrap(model, device, world, sync_bn=device.type == "cuda")
assert isinstance(net, nn.parallel.DistributedDataParallel), type(net)
x = torch.rand(16, 3, 8, 8, device=device)
y = torch.randint(0, 10, (16,), device=device)
for m in (net, plain):
    nn.functional.cross_entropy(m(x), y).backward()
for (name, a), b in zip(model.named_parameters(), plain.parameters()):
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)
stats = [t.clone() for t in distributed._running_stats(model)]
distributed.average_buffers(model, world)
assert stats and all(torch.equal(a, b) for a, b in zip(stats, distributed._running_stats(model)))
assert distributed.all_sum([1.5, 2.0], world) == [1.5, 2.0]
assert distributed.all_gather({"rank": 0}, world) == [{"rank": 0}]
assert distributed.broadcast("rank 0", world) == "rank 0"
dist.destroy_process_group()
print("ok", backend)
"""


def one_rank(device: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "one_rank.py"
    script.write_text(ONE_RANK)
    cmd = [sys.executable, str(script), device]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize(
    ("device", "backend"),
    [
        ("cpu", "gloo"),
        pytest.param("cuda:0", "cpu:gloo,cuda:nccl", marks=[pytest.mark.gpu, NEEDS_CUDA]),
    ],
)
def test_process_group_of_one(device: str, backend: str, tmp_path: Path) -> None:
    """One process in a process group (NCCL on a GPU): robustft's DDP wrapper (SyncBatchNorm
    on a GPU) and collectives run over the backends a multi-process run joins with, and one
    rank's all-reduced gradients are its own."""
    done = one_rank(device, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["ok", backend]


# ------------------------------------------------------------------- torchrun (gloo)


def torchrun(args: list[str], log: Path, *, restarts: int = 0) -> subprocess.Popen[bytes]:
    """``torchrun --nproc_per_node=2 -m robustft ARGS`` in its own process group."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += [f"--max-restarts={restarts}", "-m", "robustft", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    with log.open("ab") as handle:
        return subprocess.Popen(
            cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def finish(proc: subprocess.Popen[bytes], log: Path, timeout: float = 300) -> None:
    assert proc.wait(timeout=timeout) == 0, log.read_text()[-3000:]


def rows(run_dir: Path) -> int:
    try:
        return (run_dir / "metrics.jsonl").read_text().count("\n")
    except FileNotFoundError:
        return 0


def lock_pid(run_dir: Path) -> int | None:
    try:
        words = (run_dir / ".lock").read_text().split()
    except FileNotFoundError:
        return None
    return int(words[1]) if len(words) > 1 and words[1].isdigit() else None


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_for(
    condition: Any, proc: subprocess.Popen[bytes], what: str, timeout: float = 240
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"torchrun ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("ddp") / "two"
    log = run_dir.parent / "two.log"
    args = ["train", SMOKE, "--run-dir", str(run_dir), "--device", "cpu", *overrides(TINY)]
    finish(torchrun(args, log), log)
    return run_dir


@pytest.mark.slow
def test_two_processes_match_one(two_process_run: Path, tmp_path: Path) -> None:
    one = fit(load_config(SMOKE, TINY_OVERRIDES), tmp_path / "one")
    two = json.loads((two_process_run / "result.json").read_text())
    assert (one["world_size"], two["world_size"]) == (1, 2)
    rows1 = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    rows2 = [json.loads(x) for x in (two_process_run / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(rows1, rows2, strict=True):
        assert a["examples"] == b["examples"] == 120 and a["steps"] == b["steps"] == 6
        for key in ("train_acc", "val_acc", "example_forward_passes", "forward_passes"):
            assert a[key] == b[key], key
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
    w1 = load_checkpoint(tmp_path / "one" / "checkpoints" / "last.pt")["model"]
    w2 = load_checkpoint(two_process_run / "checkpoints" / "last.pt")["model"]
    # measured 2.7e-6 after 18 AdamW steps of lr 1e-3 (each moves a weight by up to ~1e-3)
    worst = max(float((t - w2[name]).abs().max()) for name, t in w1.items())
    assert worst <= 2e-5, worst
    for key in ("clean_accuracy", "robust_accuracy", "expected_robustness"):
        assert one[key] == two[key], key


@pytest.mark.slow
def test_gathered_curve_equals_one_process_curve(two_process_run: Path) -> None:
    """The 2-process run's final curve, evaluated again in one process on the same weights."""
    from robustft.robustness.evaluate import robustness_curve
    from robustft.training.build import build_data, build_eval_attack, eval_grid

    model, config, _ = load_trained_model(two_process_run, device="cpu")
    ecfg = config.eval
    with cpu_threads(1):  # as the run (train.threads); 2 threads on a busy machine crawl
        one = robustness_curve(
            model,
            build_data(config).test,
            build_eval_attack(config),
            eval_grid(config),
            mode=ecfg.mode,
            seed=ecfg.seed,
            batch_size=ecfg.batch_size,
            max_examples=ecfg.max_examples,
            masking_check_examples=0,  # the checks do not change the per-example results
            gradient_free_examples=0,
        )
    gathered = json.loads((two_process_run / "robustness.json").read_text())
    assert list(one.correct) == gathered["correct"]  # example for example, every eps
    assert list(one.attacked) == gathered["attacked"] and gathered["attacked"][1] > 0
    assert one.examples == gathered["examples"] and one.n_examples == 40


@pytest.mark.slow
def test_torchrun_eval_reproduces_the_run_and_reports_once(
    two_process_run: Path, tmp_path: Path
) -> None:
    """``torchrun -m robustft eval RUN``: every rank evaluates its share of the batches (both
    join and leave the process group inside :func:`robustft.training.run_eval.evaluate_run`),
    rank 0 alone prints and writes, and the curve is the run's own."""
    log, out = tmp_path / "eval.log", tmp_path / "curve.json"
    args = ["eval", str(two_process_run), "--device", "cpu", "--json", str(out)]
    finish(torchrun(args, log), log)
    text = log.read_text()  # both ranks' stdout and stderr
    for line in ("[eval] robustness curve: 40 examples", "expected robustness on [0, 2/255]"):
        assert text.count(line) == 1, text
    assert text.count(f"curve written to {out}") == 1 and "note:" not in text, text
    curve = json.loads(out.read_text())
    stored = json.loads((two_process_run / "robustness.json").read_text())
    assert curve["correct"] == stored["correct"] and curve["examples"] == stored["examples"]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="Linux /proc")
def test_killed_run_restarts_elastically_then_resumes(
    two_process_run: Path, tmp_path: Path
) -> None:
    run_dir, log = tmp_path / "killed", tmp_path / "killed.log"
    args = ["train", SMOKE, "--run-dir", str(run_dir), "--device", "cpu", *overrides(TINY)]
    proc = torchrun(args, log, restarts=1)
    try:
        wait_for(lambda: rows(run_dir) >= 1 and lock_pid(run_dir), proc, "epoch 1")
        first = lock_pid(run_dir)
        assert first is not None
        os.kill(first, signal.SIGKILL)  # rank 0 dies mid-run: torchrun restarts both workers
        wait_for(lambda: lock_pid(run_dir) not in (None, first), proc, "the restart")
        wait_for(lambda: rows(run_dir) >= 2, proc, "an epoch after the restart")
        assert not (run_dir / "result.json").exists()
        worker = lock_pid(run_dir)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # then torchrun is killed, mid-epoch
        proc.wait()
    # torchrun starts its workers in sessions of their own: they must die with it, not train
    # on (orphans finishing the run would make the resume below a no-op)
    deadline = time.monotonic() + 20
    while worker is not None and alive(worker):
        assert time.monotonic() < deadline, "a worker outlived torchrun"
        time.sleep(0.05)
    assert not (run_dir / "result.json").exists(), "finished before it could be killed"
    assert "restart" in log.read_text().lower()
    finish(torchrun([*args, "--resume"], log), log)
    resumed = json.loads((run_dir / "result.json").read_text())
    reference = json.loads((two_process_run / "result.json").read_text())
    for key in ("clean_accuracy", "robust_accuracy", "expected_robustness", "final_val_acc"):
        assert resumed[key] == reference[key], key
    history = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    expected = [json.loads(x) for x in (two_process_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in history] == [r["train_loss"] for r in expected]
    assert (run_dir / "robustness.json").read_text() != ""
    w1 = load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]
    w2 = load_checkpoint(two_process_run / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(t, w2[k]) for k, t in w1.items())  # bit for bit
