"""How a robustness curve is measured: the attack loop over batches and grid points.

Two modes:

* ``independent``: every eps attacks every example (the paper's protocol).
* ``cascade`` (default): eps ascending; an example broken at one eps counts as broken at every
  larger eps (its adversarial example lies in every larger ball) and is not attacked again.
  Each still-robust example is attacked with exactly the random start ``independent`` would
  use, so per example the cascade is the running minimum of the independent results: it can
  never report a higher robust accuracy, and it costs far less. With ``warm_start=True`` an
  example is instead attacked from its adversarial point at the previous eps (usually
  stronger, but the guarantee above becomes empirical).

Random starts are seeded per batch of ``batch_size`` examples and grid point, so a
data-parallel evaluation (under ``torchrun``: rank r evaluates whole batches r, r + N, ...)
gives every example the start a one-process evaluation gives it, and the gathered curve equals
the one-process curve example for example.

Early exit (``early_stop=True``, the default) does only the work that decides the answer: at
each eps an example misclassified at any iterate of the attack is *settled* (its fooling point
is in hand, so it is not robust at this eps whatever later steps would do) and the attack drops
it from the batch; the passes go to the examples still undecided. The reported accuracy cannot
go up: a settled example stays settled, and every other example follows exactly the iterates it
would follow without early exit (its state is per example, its random start is drawn for the
full batch) and is judged at the point the attack returns. For APGD, which already returns a
fooling iterate whenever it finds one, the accuracies are the same as without early exit; for
PGD, which returns its last iterate, they are the same or lower (an example fooled at step 3
but not at step 10 counts as fooled). The cost falls with the accuracy: on a standard model
most examples are settled within two or three steps (see the README's Performance section).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from robustft import distributed
from robustft.attacks import Attack
from robustft.attacks.base import evaluation_mode
from robustft.cost import PassCount, count_passes
from robustft.distributed import SINGLE, World
from robustft.errors import UserError
from robustft.robustness.curve import RobustnessCurve, _pack_bits, expected_robustness
from robustft.subset import select, subset
from robustft.utils.device import model_device
from robustft.utils.memory_format import as_format, model_format
from robustft.utils.seeding import eval_batch_seed

_logger = logging.getLogger(__name__)


MODES = ("cascade", "independent")


GRADIENT_FREE_EXAMPLES = 64  # default subset of the gradient-free (Square) check


GRADIENT_FREE_QUERIES = 300  # default Square budget of that check (forward passes per example)


ProgressFn = Callable[[int, int], None]


def _as_dataset(data: Dataset | tuple[Tensor, Tensor]) -> Dataset:
    if isinstance(data, tuple):
        x, y = data
        return TensorDataset(x, y)
    return data


def _uses_random_start(attack: Attack) -> bool:
    return bool(getattr(attack, "random_init", True))


@dataclass
class _BatchResult:
    correct: list[Tensor]  # K tensors of (B,) bool
    attacked: list[int]
    logits_sample: Tensor


def _start_points(
    attack: Attack, x: Tensor, x_prev: Tensor, eps: Tensor, gen: torch.Generator, warm: bool
) -> Tensor | None:
    """Starting points for a whole batch; drawn for the full batch so that an example's start
    does not depend on which other examples are still being attacked."""
    if warm:
        return x_prev
    if _uses_random_start(attack):
        return attack.geometry.random_init(x, eps, gen)
    return None


def _attack_batch(
    model: nn.Module,
    attack: Attack,
    x: Tensor,
    y: Tensor,
    epsilons: Sequence[float],
    *,
    mode: str,
    seed: int,
    batch_index: int,
    warm_start: bool,
    early_stop: bool,
) -> _BatchResult:
    """Correctness of one batch at every eps of the grid (the first eps is 0: clean).

    Only examples classified correctly so far are attacked (misclassified ones are already
    non-robust, as in AutoAttack): in ``independent`` mode those correct on clean inputs, in
    ``cascade`` mode those that survived the previous eps. With ``early_stop`` the attack also
    drops each example at the first iterate that fools the model
    (:meth:`~robustft.attacks.base.Attack.evaluate`).
    """
    with torch.no_grad():
        logits = model(x)
    clean = logits.argmax(dim=1) == y
    result = _BatchResult(correct=[clean], attacked=[0], logits_sample=logits[:8].float().cpu())
    x_prev = x
    for k, eps in enumerate(epsilons[1:], start=1):
        gen = torch.Generator().manual_seed(eval_batch_seed(seed, batch_index, k))
        eps_t = torch.full((len(x),), float(eps), device=x.device)
        idx = (result.correct[-1] if mode == "cascade" else clean).nonzero().flatten()
        warm = warm_start and mode == "cascade"
        start = _start_points(attack, x, x_prev, eps_t, gen, warm)
        correct = torch.zeros_like(clean)
        x_adv = x_prev.clone()
        if len(idx):
            outcome = attack.evaluate(
                model,
                x[idx],
                y[idx],
                eps_t[idx],
                x_init=None if start is None else start[idx],
                generator=gen,
                early_stop=early_stop,
            )
            x_adv[idx] = outcome.x_adv
            correct[idx] = ~outcome.fooled
        result.correct.append(correct)
        result.attacked.append(len(idx))
        x_prev = x_adv
    return result


@dataclass
class _Batches:
    """Per-batch results gathered in batch order: correctness per grid point, examples
    attacked per grid point, a sample of logits per batch."""

    correct: list[Tensor]  # K tensors of (N,) bool
    attacked: list[int]
    samples: list[Tensor]
    passes: PassCount  # summed over the ranks


def _attack_batches(
    model: nn.Module,
    attack: Attack,
    dataset: Dataset,
    grid: tuple[float, ...],
    *,
    mode: str,
    seed: int,
    batch_size: int,
    warm_start: bool,
    progress: ProgressFn | None,
    world: World,
    early_stop: bool,
) -> _Batches:
    """:func:`_attack_batch` over the dataset's consecutive batches: all of them in one
    process; across ``world``'s ranks, rank r takes batches r, r + N, ... and the results are
    gathered (on every rank) in batch order."""
    total = len(dataset)  # type: ignore[arg-type]
    device, layout = model_device(model), model_format(model)
    starts = list(range(0, total, batch_size))
    mine = [b for b in range(len(starts)) if b % world.size == world.rank]
    batches = [list(range(starts[b], min(total, starts[b] + batch_size))) for b in mine]
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=0)
    parts: list[tuple[int, list[Tensor], list[int], Tensor]] = []
    done = 0
    passes = PassCount()
    for b, (x, y) in zip(mine, loader):
        x, y = x.to(device, non_blocking=True).float(), y.to(device, non_blocking=True)
        x = as_format(x, layout)  # the layout the model computes in
        with count_passes(model, into=passes):
            res = _attack_batch(
                model,
                attack,
                x,
                y,
                grid,
                mode=mode,
                seed=seed,
                batch_index=b,
                warm_start=warm_start,
                early_stop=early_stop,
            )
        parts.append((b, [c.cpu() for c in res.correct], res.attacked, res.logits_sample))
        done += len(x)
        if progress is not None:
            progress(min(total, done * world.size), total)
    if world.active:
        gathered = [p for rank in distributed.all_gather(parts, world) for p in rank]
        parts = sorted(gathered, key=lambda p: p[0])
        counts = distributed.all_gather(passes, world)
        fields = ("forward", "backward", "example_forward", "example_backward")
        passes = PassCount(*(sum(getattr(c, f) for c in counts) for f in fields))
    return _Batches(
        correct=[torch.cat([p[1][k] for p in parts]) for k in range(len(grid))],
        attacked=[sum(p[2][k] for p in parts) for k in range(len(grid))],
        samples=[p[3] for p in parts],
        passes=passes,
    )


def _validate_grid(eps_grid: Sequence[float], mode: str) -> tuple[float, ...]:
    if mode not in MODES:
        raise UserError(f"unknown evaluation mode '{mode}'; valid: {', '.join(MODES)}")
    grid = tuple(float(e) for e in eps_grid)
    if len(grid) < 2 or grid[0] != 0.0:
        raise UserError(f"eps grid must start at 0 and have >= 2 points, got {list(grid)}")
    if any(b <= a for a, b in pairwise(grid)):
        raise UserError(f"eps grid must be strictly ascending, got {list(grid)}")
    return grid


def default_masking_eps(norm: str, image_shape: Sequence[int]) -> float:
    """A budget no honest model survives: 0.5 in l-inf (half the pixel range); in l2 the radius
    ``0.5 * sqrt(C*H*W)`` of the ball that contains that l-inf ball; for text in l2-token, 4
    (each token moved by up to four times the mean token-embedding norm)."""
    if norm == "linf":
        return 0.5
    if norm == "l2-token":  # text: every token moved by up to four mean token norms
        return 4.0
    return 0.5 * math.sqrt(math.prod(int(d) for d in image_shape))


def _examples(dataset: Dataset, indices: Sequence[int], model: nn.Module) -> tuple[Tensor, Tensor]:
    """The examples at ``indices`` of ``dataset`` as tensors on ``model``'s device, the images
    in its memory format."""
    device = model_device(model)
    items = [dataset[i] for i in indices]
    x = torch.stack([torch.as_tensor(item[0]) for item in items]).to(device).float()
    y = torch.as_tensor([int(item[1]) for item in items], device=device)
    return as_format(x, model_format(model)), y


def _masking(
    model: nn.Module,
    attack: Attack,
    dataset: Dataset,
    final_correct: Tensor,
    *,
    eps: float | None,
    n_examples: int,
    seed: int,
) -> dict[str, Any] | None:
    """:func:`robustft.robustness.checks.masking_check` on a stratified sample of ``n_examples``
    (None when ``n_examples == 0``). ``final_correct``: (N,) correctness at the grid's largest
    eps."""
    from robustft.robustness.checks import masking_check

    if n_examples <= 0:
        return None
    chosen = select(dataset, n_examples, seed)
    x, y = _examples(dataset, chosen.indices, model)
    huge = eps or default_masking_eps(attack.norm, x.shape[1:])
    broken = ~final_correct[list(chosen.indices)]
    return masking_check(model, attack, x, y, huge, seed=seed, broken=broken)


def _gradient_free(
    model: nn.Module,
    attack: Attack,
    dataset: Dataset,
    eps: float,
    final_correct: Tensor,
    n_examples: int,
    queries: int,
    seed: int,
) -> dict[str, Any] | None:
    """Run :func:`robustft.robustness.checks.gradient_free_check` on a stratified sample of
    ``n_examples`` at ``eps``.

    ``final_correct`` is the (N,) per-example correctness under ``attack`` at ``eps``. Returns
    None when disabled (``n_examples == 0``) or when ``attack`` is Square itself, and
    ``{"skipped": reason}`` for l2 (Square is l-inf only).
    """
    from robustft.robustness.checks import gradient_free_check

    if n_examples <= 0 or attack.name == "square":
        return None
    if attack.norm != "linf" or attack.space != "pixel":
        reason = (
            f"no gradient-free check: the square attack is l-inf only ({attack.norm} not "
            "implemented)"
        )
        _logger.info("robustness check: %s", reason)
        return {"attack": "square", "eps": eps, "skipped": reason}
    chosen = select(dataset, n_examples, seed)
    x, y = _examples(dataset, chosen.indices, model)
    start = time.perf_counter()
    result = gradient_free_check(
        model, x, y, final_correct[list(chosen.indices)], eps, queries=queries, seed=seed
    )
    result["seconds"] = round(time.perf_counter() - start, 3)
    return result


def robustness_curve(
    model: nn.Module,
    data: Dataset | tuple[Tensor, Tensor],
    attack: Attack,
    eps_grid: Sequence[float],
    *,
    mode: str = "cascade",
    warm_start: bool = False,
    seed: int = 0,
    batch_size: int = 128,
    max_examples: int | None = None,
    masking_check_eps: float | None = None,
    masking_check_examples: int = 64,
    gradient_free_examples: int = GRADIENT_FREE_EXAMPLES,
    gradient_free_queries: int = GRADIENT_FREE_QUERIES,
    progress: ProgressFn | None = None,
    world: World = SINGLE,
    early_stop: bool = True,
) -> RobustnessCurve:
    """Evaluate accuracy under ``attack`` at every eps of ``eps_grid``.

    Args:
        model: maps [0, 1] images (B, C, H, W) to logits (B, K); evaluated in eval mode (every
            submodule's mode is restored afterwards).
        data: a map-style dataset of (image, label) or a tuple of tensors (x, y).
        attack: any :class:`~robustft.attacks.Attack`; eps in its norm, pixel units.
        eps_grid: ascending grid starting at 0, e.g. ``robustft.units.eps_grid(8/255)``.
        mode: ``"cascade"`` (default) or ``"independent"``; see the module docstring.
        warm_start: in cascade mode, start each eps from the previous adversarial point.
        seed: seed of random starts (recorded in the result).
        batch_size: examples per forward/backward.
        max_examples: evaluate on a seeded, stratified sample of N examples
            (:mod:`robustft.subset`; recorded in the curve's ``examples``), not the first N.
        masking_check_eps: also attack a stratified sample of ``masking_check_examples``
            examples (0 = skip the check) at this very large eps (default:
            :func:`default_masking_eps`); accuracy well above 0 there suggests gradient masking.
        gradient_free_examples: among a stratified sample of N examples, attack those
            ``attack`` left correct at the grid's largest eps with the gradient-free Square attack
            (``gradient_free_queries`` queries) and warn if it breaks clearly more (0 = skip;
            l-inf only, recorded as skipped for l2). Costs little unless ``attack`` is weak.
        progress: called as ``progress(done_examples, total_examples)`` after each batch.
        world: the ranks of a data-parallel run (every rank calls this): each attacks its
            share of the batches, rank 0 runs the sanity checks, every rank returns rank 0's
            curve.
        early_stop: evaluation's early exit (default): an example misclassified at any iterate
            of the attack is settled there and attacked no further at that eps; see the module
            docstring for why the accuracy cannot go up. False: every attacked example runs
            every step and its final point is judged (the classic protocol; same accuracies
            for APGD, possibly higher for PGD).

    Returns:
        A :class:`RobustnessCurve` with sanity-check warnings attached.
    """
    from robustft.robustness.checks import curve_warnings

    grid = _validate_grid(eps_grid, mode)
    dataset, chosen = subset(_as_dataset(data), max_examples, seed)
    total = len(dataset)  # type: ignore[arg-type]
    if total == 0:
        raise UserError("evaluation data is empty; check the dataset split or max_examples")
    start_time = time.perf_counter()
    # every submodule's own mode is restored afterwards (see evaluation_mode)
    with evaluation_mode(model):
        found = _attack_batches(
            model,
            attack,
            dataset,
            grid,
            mode=mode,
            seed=seed,
            batch_size=batch_size,
            warm_start=warm_start,
            progress=progress,
            world=world,
            early_stop=early_stop,
        )
        if not world.is_main:  # rank 0 checks and builds the curve; the others receive it
            received: RobustnessCurve | None = distributed.broadcast(None, world)
            assert received is not None
            return received
        correct, attacked, passes = found.correct, found.attacked, found.passes
        masking = _masking(
            model,
            attack,
            dataset,
            correct[-1],
            eps=masking_check_eps,
            n_examples=masking_check_examples,
            seed=seed,
        )
        gradient_free = _gradient_free(
            model,
            attack,
            dataset,
            grid[-1],
            correct[-1],
            gradient_free_examples,
            gradient_free_queries,
            seed,
        )
    accuracy = tuple(float(c.float().mean()) for c in correct)
    curve = RobustnessCurve(
        epsilons=grid,
        accuracy=accuracy,
        correct=tuple(_pack_bits(c.tolist()) for c in correct),
        expected_robustness=expected_robustness(grid, accuracy),
        attack=attack.describe(),
        mode=mode,
        seed=seed,
        attacked=tuple(attacked),
        seconds=round(time.perf_counter() - start_time, 3),
        masking_check=masking,
        gradient_free_check=gradient_free,
        examples=chosen.to_dict(),
        early_stop=early_stop,
        passes=passes.as_dict(),
    )
    warnings = curve_warnings(curve, torch.cat(found.samples))
    for w in warnings:
        _logger.warning("robustness check: %s", w)
    return distributed.broadcast(replace(curve, warnings=tuple(warnings)), world)
