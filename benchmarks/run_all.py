"""robustft's performance benchmarks, every comparison side by side in one run.

``python benchmarks/run_all.py`` writes ``benchmarks/results.json`` and ``benchmarks/RESULTS.md``
and prints the markdown table. Sections (``--sections`` picks some):

- ``attacks``: accuracy under attack at one eps, every example attacked: ours (``evaluate``,
  early exit) vs ours without early exit (attack, then a forward pass) vs torchattacks (attack,
  then a forward pass), PGD-10 and APGD-CE-10, same model and batch; robust accuracies side by
  side.
- ``curves``: a 9-point curve on [0, 8/255] with APGD-CE-10: ours (cascade + early exit, the
  default; again on a channels_last copy of the model) vs ours independent vs torchattacks'
  APGD run at every eps, on a standard fine-tuned model (accuracy collapses) and a robustly
  fine-tuned one; each curve's example backward passes against its floor (:func:`floor_passes`).
- ``training``: one training epoch: clean, the eps = 0 epoch of a schedule, FGSM-RS (again with
  torch's per-tensor optimizer step), PGD-7, APGD-7 (robustft's loop, its defaults) and a plain
  PyTorch loop with torchattacks' PGD-7 inside; PGD-7 again with bf16 autocast, and in NCHW and
  channels_last set explicitly.
- ``demo``: ``robustft demo`` in a fresh folder, as a user runs it: wall time, order of methods.
- ``compile`` (only when named: minutes of compilation): ``train.compile`` vs eager epochs,
  compilation time and the run length where it pays off.
- ``scaling``: attack time vs steps K and vs batch size, least-squares slopes.
- ``memory``: peak memory of one PGD-1 training step per batch size for the offline default
  (32 px) and ``timm:vit_small_patch16_224``, ``timm:resnet50`` at 224 px (random init), each
  model in its own process.

Models (seeded, cached under ``benchmarks/.cache``; delete it to retrain): "standard" is the
offline default (``efficientnet_lite0``, ImageNet weights shipped in a pip package) fine-tuned
clean on the offline digits at 32 px with robustft's loop (its accuracy collapses by 1/255);
"robust" is a small CNN trained clean and then fine-tuned with FGSM-RS at 8/255 (it stays
robust at 8/255). Training, scaling and memory use the offline default.

Methodology (:mod:`timing`): contenders of one comparison run in one process, alternating (the
order rotates every repetition), median of ``--repeats``; ratios are of medians. Every row says
its settings (threads, dtype, memory format, compilation): the memory format is the one the
row's convolutions computed in (observed, or read from the training state), so rows built with
robustft's defaults say what the defaults chose. The load average is recorded: on a
shared machine absolute times are noisy, ratios much less so.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from table import render, rows_of
from timing import (
    Settings,
    alternate,
    computed_layout,
    fit_line,
    load_average,
    machine,
    model_layout,
    peak_memory_mib,
    settings,
)

HERE = Path(__file__).resolve().parent
EPS_ATTACK = {"standard": 1 / 255, "robust": 8 / 255}  # where each model is about half robust


@dataclass
class Sizes:
    """How big the run is (``--quick`` shrinks everything)."""

    repeats: int
    eval_examples: int  # test images attacked
    train_per_class: int  # training images per class in the timed epochs
    train_batch: int
    finetune_epochs: int
    steps_grid: tuple[int, ...]
    batch_grid: tuple[int, ...]
    memory_batches: tuple[int, ...]


FULL = Sizes(3, 64, 10, 25, 2, (1, 2, 4, 8), (8, 16, 32, 64), (2, 4, 8))
QUICK = Sizes(1, 16, 2, 10, 1, (1, 2), (4, 8), (2,))


@dataclass
class Context:
    """What the sections share."""

    args: argparse.Namespace
    sizes: Sizes
    data: Any  # robustft.data.DataSplits
    models: dict[str, nn.Module]  # "standard", "robust", in eval mode
    x: Tensor  # the evaluation batch
    y: Tensor
    device: torch.device


# ----------------------------------------------------------------------------- models


def base_config(sizes: Sizes, **sections: dict[str, Any]) -> Any:
    """The offline default config for the benchmark, with ``sections`` overrides."""
    from robustft.config import build_config

    data = {
        "data": {"name": "digits", "image_size": 32},
        "train": {"epochs": 50, "batch_size": 64, "warmup_epochs": 0, "threads": None},
        "monitor": {"co": False},
        "val": {"max_examples": 64},
    }
    for key, values in sections.items():
        data[key] = {**data.get(key, {}), **values}
    return build_config(data)


class SmallCNN(nn.Module):
    """Two conv layers (16, 32 channels) and a linear head, normalisation inside: a model that
    trains in seconds and stays robust on digits (the offline default does not, see below)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.25, 0.25, 0.25]).view(1, 3, 1, 1))
        self.net = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net((x - self.mean) / self.std)
        return out


def _robust_cnn(data: Any, device: torch.device) -> nn.Module:
    """SmallCNN trained clean for 6 epochs, then fine-tuned 4 epochs with robustft's FGSM-RS at
    8/255 (AdamW, batch 64, seeded)."""
    from robustft.attacks import create

    torch.manual_seed(0)
    xs, ys = zip(*(data.train[i] for i in range(len(data.train))))
    x_train, y_train = torch.stack(xs).to(device), torch.tensor(ys).to(device)
    model = SmallCNN().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    fgsm = create("fgsm-rs")
    gen = torch.Generator().manual_seed(0)
    for epoch in range(10):
        order = torch.randperm(len(x_train), generator=gen)
        for i in range(0, len(x_train), 64):
            x, y = x_train[order[i : i + 64]], y_train[order[i : i + 64]]
            if epoch >= 6:
                x = fgsm(model, x, y, 8 / 255, generator=gen)
            model.train()
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model.eval()


def finetune(kind: str, sizes: Sizes, data: Any, device: torch.device) -> nn.Module:
    """``standard``: the offline default fine-tuned clean on digits with robustft's loop;
    ``robust``: :func:`_robust_cnn`. Cached under ``benchmarks/.cache`` by a hash of what
    defines them. (The offline default fine-tuned with FGSM-RS at 8/255 for the same two
    epochs reached 68.8% clean and 0% at 1/255: not the "stays robust" case, and longer
    robust fine-tuning of it does not fit the time budget.)"""
    from robustft.callbacks import Callbacks
    from robustft.training.loop import train_epoch
    from robustft.training.state import build_state

    config = base_config(
        sizes,
        train={"epochs": sizes.finetune_epochs, "lr": 2e-3},
        attack={"name": "pgd", "steps": 1, "eps": 0.0, "schedule": "constant"},
    )
    key = hashlib.sha256(json.dumps([kind, repr(config)]).encode()).hexdigest()[:12]
    path = HERE / ".cache" / f"{kind}-{key}.pt"
    if kind == "robust":
        model = SmallCNN().to(device)
        if path.exists():
            model.load_state_dict(torch.load(path, map_location=device))
            return model.eval()
        model = _robust_cnn(data, device)
    else:
        state = build_state(config, device, data=data)
        model = state.model
        if path.exists():
            model.load_state_dict(torch.load(path, map_location=device))
            return model.eval()
        for epoch in range(1, sizes.finetune_epochs + 1):
            train_epoch(state, epoch, Callbacks())
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


def _channels_last(model: nn.Module, x: Tensor) -> tuple[nn.Module, Tensor]:
    """A copy of ``model`` and ``x`` converted to channels_last by hand, as a user would."""
    nhwc = copy.deepcopy(model).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return nhwc, x.contiguous(memory_format=torch.channels_last)


def _observed(model: nn.Module, run: Callable[[int], Any], **changes: Any) -> Settings:
    """The settings of a row whose contender is ``run``: the layout its convolutions computed
    in, observed on one more (untimed) call, whatever chose it."""
    return settings(channels_last=computed_layout(model, lambda: run(0)), **changes)


# ----------------------------------------------------------------------------- attacks


def _torchattacks(name: str, model: nn.Module, eps: float, steps: int) -> Callable[..., Tensor]:
    import torchattacks

    if name == "pgd":
        return torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=steps, random_start=True)
    return torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, loss="ce")


def section_attacks(ctx: Context) -> list[dict[str, Any]]:
    """Accuracy under attack at one eps: ours with early exit, ours attack + forward,
    torchattacks attack + forward."""
    from robustft.attacks import create

    rows: list[dict[str, Any]] = []
    for kind, model in ctx.models.items():
        eps = EPS_ATTACK[kind]
        for name, ours in (
            ("pgd-10", create("pgd", steps=10, rel_step=0.25)),
            ("apgd-ce-10", create("apgd-ce", steps=10)),
        ):
            theirs = _torchattacks(name.split("-")[0], model, eps, 10)

            def early(r: int, ours: Any = ours, model: nn.Module = model, eps: float = eps) -> Any:
                gen = torch.Generator().manual_seed(max(r, 0))
                return ours.evaluate(model, ctx.x, ctx.y, eps, generator=gen).fooled

            def full(r: int, ours: Any = ours, model: nn.Module = model, eps: float = eps) -> Any:
                gen = torch.Generator().manual_seed(max(r, 0))
                x_adv = ours(model, ctx.x, ctx.y, eps, generator=gen)
                with torch.no_grad():
                    return model(x_adv).argmax(1) != ctx.y

            def peer(r: int, theirs: Any = theirs, model: nn.Module = model) -> Any:
                torch.manual_seed(max(r, 0))  # torchattacks draws from the global generator
                x_adv = theirs(ctx.x, ctx.y)
                with torch.no_grad():
                    return model(x_adv).argmax(1) != ctx.y

            nhwc, x_nhwc = _channels_last(model, ctx.x)

            def early_cl(
                r: int,
                ours: Any = ours,
                nhwc: nn.Module = nhwc,
                x_nhwc: Tensor = x_nhwc,
                eps: float = eps,
            ) -> Any:
                gen = torch.Generator().manual_seed(max(r, 0))
                return ours.evaluate(nhwc, x_nhwc, ctx.y, eps, generator=gen).fooled

            runs: dict[str, Callable[[int], Any]] = {
                "ours (early exit)": early,
                "ours (early exit), channels_last model": early_cl,
                "ours (attack + forward)": full,
                "torchattacks": peer,
            }
            timings = alternate(runs, ctx.sizes.repeats)
            measured = {
                who: {"robust_accuracy": round(1 - float(t.result.float().mean()), 4)}
                for who, t in timings.items()
            }
            case = (
                f"{name} {kind} eps {eps * 255:g}/255 (clean {accuracy(model, ctx.x, ctx.y):.3f})"
            )
            models = {"ours (early exit), channels_last model": nhwc}
            rows += rows_of(
                "attacks",
                case,
                timings,
                "torchattacks",
                {who: _observed(models.get(who, model), run) for who, run in runs.items()},
                measured,
            )
    return rows


# ----------------------------------------------------------------------------- curves


def _trapezoid(accs: Sequence[float]) -> float:
    return sum((a + b) / 2 for a, b in itertools.pairwise(accs)) / (len(accs) - 1)


def floor_passes(accuracies: Sequence[float], n: int, steps: int) -> int:
    """The fewest example backward passes a curve with these accuracies can take: an example
    still robust at a grid point was attacked there with every step, ``steps + 1`` gradient
    passes (APGD's start and its steps); one fooled there may have taken a single one, and the
    clean point takes none. So sum over eps > 0 of (examples robust at eps) x (steps + 1)."""
    return sum(round(a * n) for a in accuracies[1:]) * (steps + 1)


def section_curves(ctx: Context) -> list[dict[str, Any]]:
    """9-point APGD-CE-10 curves on [0, 8/255]: cascade (default), cascade on a channels_last
    copy of the model, independent, torchattacks; the passes against the floor."""
    from robustft.attacks import create
    from robustft.cost import count_passes
    from robustft.robustness.evaluate import robustness_curve

    grid = [k / 255 for k in range(9)]
    steps = 10
    attack = create("apgd-ce", steps=steps)
    rows: list[dict[str, Any]] = []
    for kind, model in ctx.models.items():
        passes: dict[str, int] = {}
        nhwc, x_nhwc = _channels_last(model, ctx.x)

        def ours(
            who: str,
            mode: str,
            model: nn.Module = model,
            x: Tensor = ctx.x,
            passes: dict[str, int] = passes,
        ) -> Callable[[int], Any]:
            def curve_run(r: int) -> list[float]:
                with count_passes(model) as count:
                    curve = robustness_curve(
                        model,
                        (x, ctx.y),
                        attack,
                        grid,
                        mode=mode,
                        seed=max(r, 0),
                        batch_size=len(x),
                        masking_check_examples=0,
                        gradient_free_examples=0,
                    )
                passes[who] = count.example_backward
                return list(curve.accuracy)

            return curve_run

        def peer(r: int, model: nn.Module = model, passes: dict[str, int] = passes) -> list[float]:
            accs = [accuracy(model, ctx.x, ctx.y)]
            with count_passes(model) as count:
                for k, eps in enumerate(grid[1:], start=1):
                    torch.manual_seed(1000 * max(r, 0) + k)
                    x_adv = _torchattacks("apgd", model, eps, steps)(ctx.x, ctx.y)
                    accs.append(accuracy(model, x_adv, ctx.y))
            passes["torchattacks per eps"] = count.example_backward
            return accs

        runs = {
            "ours cascade": ours("ours cascade", "cascade"),
            "ours cascade, channels_last model": ours(
                "ours cascade, channels_last model", "cascade", nhwc, x_nhwc
            ),
            "ours independent": ours("ours independent", "independent"),
            "torchattacks per eps": peer,
        }
        timings = alternate(runs, ctx.sizes.repeats)
        measured = {}
        for who, t in timings.items():
            floor = floor_passes(t.result, len(ctx.x), steps)
            measured[who] = {
                "expected_robustness": round(_trapezoid(t.result), 4),
                "accuracies": [round(a, 4) for a in t.result],
                "example_backward_passes": passes[who],
                "floor_passes": floor,
                "passes_vs_floor": round(passes[who] / floor, 3) if floor else None,
            }
        acc8 = timings["ours cascade"].result[-1]
        case = f"{kind} 9 eps on [0, 8/255] (acc at 8/255 {acc8:.3f})"
        models = {"ours cascade, channels_last model": nhwc}
        setup = {who: _observed(models.get(who, model), run) for who, run in runs.items()}
        rows += rows_of("curves", case, timings, "torchattacks per eps", setup, measured)
    return rows


# ----------------------------------------------------------------------------- training


def _train_contender(
    ctx: Context, attack: dict[str, Any], *, optimizer_loop: bool = False, **train: Any
) -> tuple[Callable[[int], float], Settings]:
    """A function timing one epoch of robustft's loop (the loop's own clock, no validation),
    built as a user's run is (robustft's config defaults, ``train`` overrides), and the
    settings it runs with (the memory format as the state chose it). ``optimizer_loop``:
    torch's per-tensor optimizer step instead of robustft's default fused one (the step
    before issue 23)."""
    from robustft.callbacks import Callbacks
    from robustft.training.loop import train_epoch
    from robustft.training.state import build_state

    config = base_config(
        ctx.sizes,
        data={"max_train_per_class": ctx.sizes.train_per_class},
        train={"batch_size": ctx.sizes.train_batch, **train},
        attack=attack,
        val={"max_examples": 8},
    )
    model = copy.deepcopy(ctx.models["standard"])
    state = build_state(config, ctx.device, model=model, data=_train_data(ctx, config))
    if optimizer_loop:
        for group in state.optimizer.param_groups:
            group["fused"] = None

    def run(_r: int) -> float:
        return float(train_epoch(state, 1, Callbacks())["seconds"])

    setup = settings(
        channels_last=model_layout(state.model),
        dtype="bf16" if config.train.bf16 else "fp32",
        compile=config.train.compile,
    )
    return run, setup


_DATA_CACHE: dict[int, Any] = {}


def _train_data(ctx: Context, config: Any) -> Any:
    from robustft.training.build import build_data

    per_class = config.data.max_train_per_class
    if per_class not in _DATA_CACHE:
        _DATA_CACHE[per_class] = build_data(config)
    return _DATA_CACHE[per_class]


def _plain_loop(ctx: Context) -> Callable[[int], float]:
    """The plain PyTorch loop a user writes with torchattacks' PGD-7 inside."""
    import torchattacks
    from torch.utils.data import DataLoader

    config = base_config(ctx.sizes, data={"max_train_per_class": ctx.sizes.train_per_class})
    data = _train_data(ctx, config)
    model = copy.deepcopy(ctx.models["standard"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    eps = 8 / 255
    attack = torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=7, random_start=True)

    def run(r: int) -> float:
        torch.manual_seed(max(r, 0))
        loader = DataLoader(data.train, batch_size=ctx.sizes.train_batch, shuffle=True)
        start = time.perf_counter()
        for x, y in loader:
            x_adv = attack(x, y)  # torchattacks puts the model in eval mode while crafting
            model.train()
            loss = nn.functional.cross_entropy(model(x_adv), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return time.perf_counter() - start

    return run


def section_training(ctx: Context) -> list[dict[str, Any]]:
    """One training epoch per method, robustft's defaults (as a user gets them) unless the
    name says otherwise; the loop's own clock (validation excluded)."""
    eps = 8 / 255
    const = {"eps": eps, "schedule": "constant"}
    pgd7 = {"name": "pgd", "steps": 7, **const}
    fgsm = {"name": "fgsm-rs", **const}
    contenders = {
        "clean": _train_contender(ctx, {"name": "pgd", "steps": 1, "eps": 0.0}),
        "eps=0 epoch of hinge(t1=2,t2=3), PGD-7": _train_contender(
            ctx, {**pgd7, "schedule": "hinge(t1=2,t2=3)"}
        ),
        "FGSM-RS": _train_contender(ctx, fgsm),
        "FGSM-RS, per-tensor optimizer step": _train_contender(ctx, fgsm, optimizer_loop=True),
        "N-FGSM": _train_contender(ctx, {"name": "n-fgsm", **const}),
        "GradAlign": _train_contender(ctx, {"name": "grad-align", **const}),
        "PGD-7": _train_contender(ctx, pgd7),
        "APGD-CE-7": _train_contender(ctx, {"name": "apgd-ce", "steps": 7, **const}),
        "plain loop + torchattacks PGD-7": (_plain_loop(ctx), settings()),
        "PGD-7 bf16": _train_contender(ctx, pgd7, bf16=True),
        "PGD-7 NCHW": _train_contender(ctx, pgd7, channels_last=False),
        "PGD-7 channels_last": _train_contender(ctx, pgd7, channels_last=True),
    }
    runs = {name: fn for name, (fn, _) in contenders.items()}
    timings = alternate(runs, ctx.sizes.repeats, warmup=True, clock="result")
    n = ctx.sizes.train_per_class * 10
    case = f"one epoch, {n} digits 32 px, batch {ctx.sizes.train_batch}, eps 8/255"
    setup = {name: s for name, (_, s) in contenders.items()}
    ref = timings["PGD-7"].median
    measured = {name: {"vs_pgd7": round(t.median / ref, 3)} for name, t in timings.items()}
    rows = rows_of("training", case, timings, "clean", setup, measured)
    return rows


DEMO_STEPS = 15 * 7  # a demo run: 15 epochs of 7 steps (200 images, batch 32)


def section_compile(ctx: Context) -> list[dict[str, Any]]:
    """``train.compile`` (torch.compile, inductor on a CPU) against eager, PGD-7 and FGSM-RS
    epochs of the offline default: the first epoch (compilation included, a cold cache of its
    own as in a fresh clone; validation included) and the steady epochs, and from them the run
    length where compiling pays off, against a demo run's (each case charged the cold
    compilation: the later case finds the graphs compiled by the first). Not in the default run
    (the compilation takes minutes on a shared 2-core machine)."""
    import tempfile

    eps = 8 / 255
    rows: list[dict[str, Any]] = []
    cold: float | None = None  # the first case's compilation, from a cold cache
    old = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        try:
            for label, attack in (
                ("PGD-7", {"name": "pgd", "steps": 7}),
                ("FGSM-RS", {"name": "fgsm-rs"}),
            ):
                attack = {**attack, "eps": eps, "schedule": "constant"}
                contenders = {
                    f"{label} eager": _train_contender(ctx, attack),
                    f"{label} compiled": _train_contender(ctx, attack, compile=True),
                }
                runs = {name: fn for name, (fn, _) in contenders.items()}
                first = {}
                for name, fn in runs.items():
                    start = time.perf_counter()
                    fn(-1)
                    first[name] = time.perf_counter() - start
                timings = alternate(runs, ctx.sizes.repeats, clock="result")
                eager, compiled = (timings[name].median for name in runs)
                e_first, c_first = first.values()
                extra = (c_first - compiled) - (e_first - eager)  # the compilation's cost
                # the first case compiles the graphs (crafting in eval mode, the update in train
                # mode) from a cold cache; a later case reuses them in this process, while a
                # user's run of it would compile them cold: its verdict takes the cold cost
                cold = extra if cold is None else cold
                steps = ctx.sizes.train_per_class * 10 // ctx.sizes.train_batch
                saving = (eager - compiled) / steps  # per step, once compiled
                even = round(cold / saving) if saving > 0 else None
                verdict: dict[str, Any] = {
                    "first_epoch_s": round(c_first, 1),
                    "compile_s": round(cold, 1),
                    "compile_here_s": round(extra, 1),
                    "break_even_steps": even,
                    "pays_off_in_a_demo_run": even is not None and even <= DEMO_STEPS,
                }
                measured = {
                    f"{label} eager": {"first_epoch_s": round(e_first, 2)},
                    f"{label} compiled": verdict,
                }
                case = (
                    f"{label} epoch, {steps} steps of batch {ctx.sizes.train_batch} "
                    f"(a demo run: {DEMO_STEPS} steps)"
                )
                setup = {name: s for name, (_, s) in contenders.items()}
                rows += rows_of("compile", case, timings, f"{label} eager", setup, measured)
        finally:
            if old is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = old
    return rows


DEMO_ORDER = ("sched", "fix", "standard")  # by expected robustness, as the README's table
DEMO_COMMAND = ["-m", "robustft", "demo"]


def section_demo(ctx: Context) -> list[dict[str, Any]]:
    """``robustft demo`` as a user runs it (its own defaults: every core of the machine), in a
    fresh output folder: its wall time and the order of its methods by expected robustness."""
    import tempfile

    from timing import Timing

    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, *DEMO_COMMAND, "--out", out]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"robustft demo failed:\n{done.stderr[-2000:]}")
        # the table the demo printed, beside results.json: the README quotes it from this run
        Path(ctx.args.out).mkdir(parents=True, exist_ok=True)
        (Path(ctx.args.out) / "demo.txt").write_text(done.stdout)
        results = {}
        for path in Path(out).glob("*/result.json"):
            result = json.loads(path.read_text())
            results[result["name"].removeprefix("demo-")] = result
    order = sorted(results, key=lambda m: -results[m]["expected_robustness"])
    measured = {
        "ordering": " > ".join(order),
        "same_order": tuple(order) == DEMO_ORDER,
        "methods": {
            m: {k: r[k] for k in ("clean_accuracy", "robust_accuracy", "expected_robustness")}
            for m, r in results.items()
        },
    }
    timing = Timing([wall], None)
    name = "robustft demo (3 runs, defaults)"
    # the layout its runs trained in, where result.json records it (issue 23's memory format)
    chosen = {
        str((r.get("memory_format") or {}).get("train", {}).get("chosen", "nchw"))
        for r in results.values()
    }
    setup = settings(threads=os.cpu_count() or 1, channels_last=chosen == {"channels_last"})
    return rows_of(
        "demo", "robustft demo, fresh --out", {name: timing}, name, {name: setup}, {name: measured}
    )


# ----------------------------------------------------------------------------- scaling


def section_scaling(ctx: Context) -> list[dict[str, Any]]:
    """Attack time (PGD, no early exit: the training path) vs steps K and vs batch size."""
    from robustft.attacks import create

    model = ctx.models["standard"]
    rows: list[dict[str, Any]] = []
    batch = ctx.sizes.batch_grid[-1]
    x, y = _repeat_to(ctx.x, batch), _repeat_to(ctx.y, batch)
    steps_runs = {
        f"K={k}": (lambda r, k=k: create("pgd", steps=k)(model, x, y, 8 / 255))
        for k in ctx.sizes.steps_grid
    }
    steps_t = alternate(steps_runs, ctx.sizes.repeats, warmup=True)
    k_fixed = 2
    batch_runs = {
        f"B={b}": (lambda r, b=b: create("pgd", steps=k_fixed)(model, x[:b], y[:b], 8 / 255))
        for b in ctx.sizes.batch_grid
    }
    batch_t = alternate(batch_runs, ctx.sizes.repeats, warmup=True)
    setup = settings()
    for name, timings, xs, unit in (
        (f"PGD-K, batch {batch}", steps_t, ctx.sizes.steps_grid, "step"),
        (f"PGD-{k_fixed}, batch B", batch_t, ctx.sizes.batch_grid, "example"),
    ):
        slope, intercept = fit_line(xs, [t.median for t in timings.values()])
        fit = {"slope_s": round(slope, 5), "intercept_s": round(intercept, 4), "per": unit}
        rows += rows_of(
            "scaling",
            f"{name}: {slope * 1000:.1f} ms per {unit} + {intercept * 1000:.0f} ms",
            timings,
            next(iter(timings)),
            dict.fromkeys(timings, setup),
            dict.fromkeys(timings, fit),
        )
    return rows


def _repeat_to(t: Tensor, n: int) -> Tensor:
    reps = -(-n // len(t))
    return t.repeat(reps, *([1] * (t.ndim - 1)))[:n]


# ----------------------------------------------------------------------------- memory

MEMORY_MODELS = {
    "efficientnet_lite0 (offline default)": ("efficientnet_lite0", 32),
    "timm:vit_small_patch16_224": ("timm:vit_small_patch16_224", 224),
    "timm:resnet50": ("timm:resnet50", 224),
}


def memory_child(name: str, size: int, batches: Sequence[int], threads: int) -> dict[str, Any]:
    """In a fresh process: peak memory of one PGD-1 adversarial training step (craft, forward,
    backward, AdamW step) per batch size, beyond what the model and one warm-up step held."""
    from robustft.attacks import create
    from robustft.models import build_model
    from robustft.objectives import AdversarialCE

    torch.set_num_threads(threads)
    model = build_model(name, num_classes=10, pretrained=name == "efficientnet_lite0")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    objective = AdversarialCE(create("pgd", steps=1))

    def step(b: int) -> None:
        x, y = torch.rand(b, 3, size, size), torch.randint(0, 10, (b,))
        model.train()
        out = objective(model, x, y, 8 / 255)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()

    step(2)  # warm-up (batch norm needs two examples in train mode)
    peaks = {}
    for b in batches:
        start = time.perf_counter()
        peaks[b] = {
            "peak_mib": peak_memory_mib(lambda b=b: step(b), torch.device("cpu")),
            "step_s": round(time.perf_counter() - start, 3),
        }
    return {"model": name, "image_size": size, "batches": peaks}


def section_memory(ctx: Context) -> list[dict[str, Any]]:
    rows = []
    threads = torch.get_num_threads()
    for label, (name, size) in MEMORY_MODELS.items():
        if ctx.args.quick and size > 64:
            continue
        command = [
            sys.executable,
            __file__,
            "--memory-child",
            name,
            str(size),
            ",".join(map(str, ctx.sizes.memory_batches)),
            "--threads",
            str(threads),
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"memory child for {name} failed:\n{done.stderr[-2000:]}")
        out = done.stdout
        child = json.loads(out.strip().splitlines()[-1])
        batches = {int(b): v for b, v in child["batches"].items()}
        xs = sorted(batches)
        peaks = [batches[b]["peak_mib"] for b in xs]
        slope = fit_line(xs, peaks)[0] if len(xs) > 1 and None not in peaks else None
        for b in xs:
            rows.append(
                {
                    "section": "memory",
                    "case": f"{label} at {size} px, PGD-1 training step",
                    "contender": f"batch {b}",
                    "peak_mib": batches[b]["peak_mib"],
                    "step_s": batches[b]["step_s"],
                    "mib_per_example": None if slope is None else round(slope, 2),
                    "settings": settings().as_dict(),
                    "settings_label": settings().label(),
                }
            )
    return rows


# ----------------------------------------------------------------------------- main

SECTIONS: dict[str, Callable[[Context], list[dict[str, Any]]]] = {
    "attacks": section_attacks,
    "curves": section_curves,
    "training": section_training,
    "scaling": section_scaling,
    "memory": section_memory,
    "demo": section_demo,
    "compile": section_compile,
}
DEFAULT_SECTIONS = ("attacks", "curves", "training", "scaling", "memory", "demo")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repetition")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument(
        "--sections",
        default=",".join(DEFAULT_SECTIONS),
        help=f"comma-separated, of {', '.join(SECTIONS)} (default: all but compile)",
    )
    parser.add_argument("--repeats", type=int, help="repetitions per contender (default 3)")
    parser.add_argument("--out", default=str(HERE), help="folder for results.json, RESULTS.md")
    parser.add_argument(
        "--update", action="store_true", help="replace only these sections in results.json"
    )
    parser.add_argument("--render", metavar="JSON", help="print the table of a results.json")
    parser.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.render:
        print(render(json.loads(Path(args.render).read_text())))
        return 0
    torch.set_num_threads(args.threads)
    if args.memory_child:
        name, size, batches = args.memory_child
        result = memory_child(name, int(size), [int(b) for b in batches.split(",")], args.threads)
        print(json.dumps(result))
        return 0
    from robustft.training.build import build_data

    start = time.perf_counter()
    sizes = QUICK if args.quick else FULL
    if args.repeats:
        sizes = dataclasses.replace(sizes, repeats=args.repeats)
    load_before = load_average()
    device = torch.device("cpu")
    config = base_config(sizes)
    data = build_data(config)
    models = {kind: finetune(kind, sizes, data, device) for kind in ("standard", "robust")}
    xs, ys = zip(*(data.test[i] for i in range(sizes.eval_examples)))
    x, y = torch.stack(xs), torch.tensor(ys)
    ctx = Context(args, sizes, data, models, x, y, device)
    print(f"models ready in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    sections: dict[str, list[dict[str, Any]]] = {}
    load: dict[str, Any] = {}
    for name in args.sections.split(","):
        t0 = time.perf_counter()
        sections[name] = SECTIONS[name](ctx)
        load[name] = load_average()
        print(f"{name}: {time.perf_counter() - t0:.0f} s, load {load[name]}", file=sys.stderr)
    command = "python benchmarks/run_all.py" + (" " + " ".join(argv or sys.argv[1:])).rstrip()
    results = {
        "meta": {
            "command": command.strip(),
            "machine": machine(),
            "threads": args.threads,
            "sizes": sizes.__dict__,
            "load_before": load_before,
            "load_after": load_average(),
            "seconds": round(time.perf_counter() - start, 1),
        },
        "load": load,
        "sections": sections,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.update and (out / "results.json").exists():
        old = json.loads((out / "results.json").read_text())
        results["runs"] = [*old.get("runs", [old["meta"]]), results["meta"]]
        results["sections"] = {**old["sections"], **sections}
        results["load"] = {**old["load"], **load}
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    text = render(results)
    (out / "RESULTS.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
