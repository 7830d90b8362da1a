"""Speed and strength of robustft's attacks against torchattacks, on the same model and batch.

Model: timm ``resnet18`` (random init, ``pretrained=False``, nothing downloaded; 11.2M
parameters) with mean/std normalisation inside, trained from scratch for a few epochs on
scikit-learn's digits upsampled to 3x32x32 (1297 training images). Batch: the first ``--batch``
of the 500 held-out digits. Attacks: PGD (10 steps of eps/4, random start) and APGD-CE
(10 iterations), l-inf at eps 4/255 and l2 at eps 0.25 (this non-robust model is at 0% robust
accuracy by 8/255 or 0.5, which would hide any difference in strength), ours and torchattacks'
equivalents (``PGD``/``PGDL2`` with ``alpha = eps / 4``, ``APGD(loss='ce', steps=10)``).

Each attack is timed ``--repeats`` times, ours and theirs alternating (the order flips every
repeat), and the median wall time is reported with the ratio ours / theirs (< 1: ours faster) and
the robust accuracy of each (lower: stronger attack). Note that torchattacks' APGD first runs a
clean forward pass and then attacks only the correctly classified examples; ours attacks all.

Usage:
    python benchmarks/attacks.py            # about 2 minutes on 2 idle CPU cores
    python benchmarks/attacks.py --quick    # about 30 seconds: fewer epochs, smaller batch

The script is organised in sections that share one :class:`Context` (model and data); a new
section is a function ``section_<name>(context, args)`` appended to ``SECTIONS``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import timm
import torch
import torchattacks
from sklearn.datasets import load_digits
from torch import Tensor, nn

from robustft.attacks import create
from robustft.units import parse_eps

# ---------------------------------------------------------------------------------------------
# Shared context: model and data
# ---------------------------------------------------------------------------------------------


class Normalized(nn.Module):
    """``net((x - mean) / std)``: the model takes [0, 1] pixels, as every attack expects."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x - self.mean) / self.std)


@dataclass
class Context:
    """What every section works on: a trained model and a held-out batch."""

    model: nn.Module
    x: Tensor  # (B, 3, 32, 32) in [0, 1]
    y: Tensor  # (B,)
    clean_accuracy: float
    description: str


def digits(size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """scikit-learn digits as 3 x size x size images in [0, 1]: a 1297 / 500 train/test split."""
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x.clamp(0, 1).repeat(1, 3, 1, 1).contiguous()
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return x[:-500], y[:-500], x[-500:], y[-500:]


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


def build_context(epochs: int, batch: int) -> Context:
    """Train timm resnet18 (random init) on digits at 32x32; return it with a test batch."""
    x_train, y_train, x_test, y_test = digits(32)
    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False, num_classes=10)
    model = Normalized(net, mean=(0.2, 0.2, 0.2), std=(0.3, 0.3, 0.3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    steps = epochs * ((len(x_train) + 63) // 64)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x_train), generator=generator)
        for i in range(0, len(x_train), 64):
            idx = order[i : i + 64]
            loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    seconds = time.perf_counter() - start
    x, y = x_test[:batch], y_test[:batch]
    clean = accuracy(model, x, y)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    description = (
        f"timm resnet18 (random init, {params:.1f}M params), trained {epochs} epochs on digits "
        f"3x32x32 in {seconds:.0f} s; batch of {batch} held-out images, clean accuracy "
        f"{clean:.3f} (all 500: {accuracy(model, x_test, y_test):.3f})"
    )
    return Context(model, x, y, clean, description)


# ---------------------------------------------------------------------------------------------
# Section: attack speed and strength, ours vs torchattacks
# ---------------------------------------------------------------------------------------------

AttackFn = Callable[[], Tensor]


def attack_pairs(context: Context, norm: str, eps: float) -> dict[str, tuple[AttackFn, AttackFn]]:
    """For each attack: (ours, theirs) as zero-argument callables returning x_adv."""
    model, x, y = context.model, context.x, context.y
    pgd_cls = torchattacks.PGD if norm == "linf" else torchattacks.PGDL2
    ta_norm = {"linf": "Linf", "l2": "L2"}[norm]
    their_pgd = pgd_cls(model, eps=eps, alpha=eps / 4, steps=10, random_start=True)
    their_apgd = torchattacks.APGD(model, norm=ta_norm, eps=eps, steps=10, loss="ce", seed=0)
    our_pgd = create("pgd", norm=norm, steps=10, rel_step=0.25)
    our_apgd = create("apgd-ce", norm=norm, steps=10)

    def seeded() -> torch.Generator:
        return torch.Generator().manual_seed(0)

    return {
        "pgd-10": (
            lambda: our_pgd(model, x, y, eps, generator=seeded()),
            lambda: their_pgd(x, y),
        ),
        "apgd-ce-10": (
            lambda: our_apgd(model, x, y, eps, generator=seeded()),
            lambda: their_apgd(x, y),
        ),
    }


def timed(fn: AttackFn) -> tuple[float, Tensor]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def section_attacks(context: Context, args: argparse.Namespace) -> None:
    """Median times, ratios and robust accuracies of our attacks and torchattacks'."""
    print(f"\n## Attacks: robustft vs torchattacks {torchattacks.__version__}")
    print(
        f"median of {args.repeats} runs each, ours and theirs alternating; batch {len(context.x)}"
    )
    header = (
        f"| {'attack':<11} | {'norm':<4} | {'eps':>6} | {'ours s':>7} | {'theirs s':>8} "
        f"| {'ratio':>5} | {'ours acc':>8} | {'theirs acc':>10} |"
    )
    print(header)
    print("|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|")
    for norm, eps_text in (("linf", args.linf_eps), ("l2", args.l2_eps)):
        eps = parse_eps(eps_text, name=f"{norm} eps", upper=float("inf"))
        for name, (ours, theirs) in attack_pairs(context, norm, eps).items():
            times: dict[str, list[float]] = {"ours": [], "theirs": []}
            robust: dict[str, float] = {}
            for repeat in range(args.repeats):
                order = [("ours", ours), ("theirs", theirs)]
                for who, fn in order if repeat % 2 == 0 else order[::-1]:
                    if who == "theirs":
                        torch.manual_seed(repeat)  # torchattacks draws from the global generator
                    seconds, x_adv = timed(fn)
                    times[who].append(seconds)
                    robust.setdefault(who, accuracy(context.model, x_adv, context.y))
            ours_s, theirs_s = statistics.median(times["ours"]), statistics.median(times["theirs"])
            print(
                f"| {name:<11} | {norm:<4} | {eps_text:>6} | {ours_s:>7.2f} | {theirs_s:>8.2f} "
                f"| {ours_s / theirs_s:>5.2f} | {robust['ours']:>8.3f} "
                f"| {robust['theirs']:>10.3f} |"
            )


def _torchattacks_curve(context: Context, grid: Sequence[float]) -> list[float]:
    """What users glue by hand: torchattacks APGD-CE run independently at every eps."""
    accs = [accuracy(context.model, context.x, context.y)]
    for k, eps in enumerate(grid[1:], start=1):
        torch.manual_seed(k)
        attack = torchattacks.APGD(context.model, norm="Linf", eps=eps, steps=10, loss="ce")
        accs.append(accuracy(context.model, attack(context.x, context.y), context.y))
    return accs


def section_evaluation(context: Context, args: argparse.Namespace) -> None:
    """A 9-point robustness curve: cascade vs independent (ours) vs torchattacks per eps."""
    from robustft.robustness.evaluate import robustness_curve

    eps_max = parse_eps(args.linf_eps, name="linf eps")
    grid = [i * eps_max / 8 for i in range(9)]
    attack = create("apgd-ce", steps=10)
    data = (context.x, context.y)
    runs: dict[str, list[float]] = {"cascade": [], "independent": [], "torchattacks": []}
    curves: dict[str, list[float]] = {}
    attacked: dict[str, int] = {}
    for repeat in range(max(1, args.repeats // 2)):
        order = list(runs) if repeat % 2 == 0 else list(runs)[::-1]
        for who in order:
            start = time.perf_counter()
            if who == "torchattacks":
                curves[who] = _torchattacks_curve(context, grid)
                attacked[who] = len(context.x) * (len(grid) - 1)
            else:
                curve = robustness_curve(context.model, data, attack, grid, mode=who, seed=repeat)
                curves[who] = list(curve.accuracy)
                attacked[who] = sum(curve.attacked)
            runs[who].append(time.perf_counter() - start)
    base = statistics.median(runs["independent"])
    print(f"\n## Robustness curve, APGD-CE 10 steps, 9 points on [0, {args.linf_eps}] l-inf")
    print(
        f"median of {len(runs['cascade'])} runs; batch {len(context.x)}; ratio = time / independent"
    )
    print(f"| {'evaluation':<22} | {'time s':>6} | {'ratio':>5} | {'attacked':>8} | {'E.rob':>6} |")
    print(f"|{'-' * 24}|{'-' * 8}|{'-' * 7}|{'-' * 10}|{'-' * 8}|")
    for who, times in runs.items():
        label = {"cascade": "robustft cascade", "independent": "robustft independent"}.get(
            who, "torchattacks APGD per eps"
        )
        e_rob = sum((a + b) / 2 for a, b in zip(curves[who], curves[who][1:])) / 8
        t = statistics.median(times)
        print(
            f"| {label:<22} | {t:>6.2f} | {t / base:>5.2f} | {attacked[who]:>8} | {e_rob:>6.3f} |"
        )
    print("accuracy per eps (ours cascade / ours independent / torchattacks):")
    for k, eps in enumerate(grid):
        print(
            f"  {eps * 255:4.1f}/255  {curves['cascade'][k]:.3f} / {curves['independent'][k]:.3f}"
            f" / {curves['torchattacks'][k]:.3f}"
        )


SECTIONS: list[Callable[[Context, argparse.Namespace], None]] = [
    section_attacks,
    section_evaluation,
]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs, smaller batch, 3 runs")
    parser.add_argument(
        "--batch", type=int, default=None, help="test images (default 256, quick 64)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="runs per attack (default 5)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default 6)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--linf-eps", default="4/255", help="l-inf budget (default 4/255)")
    parser.add_argument("--l2-eps", default="0.25", help="l2 budget (default 0.25)")
    args = parser.parse_args(argv)
    args.batch = args.batch or (64 if args.quick else 256)
    args.repeats = args.repeats or (3 if args.quick else 5)
    args.epochs = args.epochs or (3 if args.quick else 6)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    print("# robustft attack benchmark")
    print(
        f"torch {torch.__version__}, timm {timm.__version__}, "
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, cpu"
    )
    context = build_context(args.epochs, args.batch)
    print(context.description)
    for section in SECTIONS:
        section(context, args)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
