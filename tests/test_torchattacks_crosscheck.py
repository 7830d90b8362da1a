"""Cross-check against torchattacks: our PGD and APGD-CE are at least as strong as theirs.

On the digits TinyCNN (500 test images) at budgets where robust accuracy is mid-range, our robust
accuracy must be at most torchattacks' + 1 point, averaged over 3 seeds on both sides. Run with
``-s`` to see the figures.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from robustft.attacks import create

torchattacks = pytest.importorskip("torchattacks")

SEEDS = (0, 1, 2)
TOLERANCE = 0.01  # one point of accuracy, on 500 images (5 examples)
CASES = [  # (norm, eps): clean accuracy is about 95%
    ("linf", 8 / 255),
    ("l2", 0.75),
]


def robust_accuracy(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x_adv).argmax(dim=1) == y).float().mean())


def theirs(name: str, norm: str, model: nn.Module, eps: float, seed: int) -> nn.Module:
    """The torchattacks equivalent: 10 steps; PGD with step eps / 4, APGD with CE loss."""
    if name == "pgd":
        cls = torchattacks.PGD if norm == "linf" else torchattacks.PGDL2
        return cls(model, eps=eps, alpha=eps / 4, steps=10, random_start=True)
    return torchattacks.APGD(
        model, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps, steps=10, loss="ce", seed=seed
    )


def mean_over_seeds(run: Callable[[int], float]) -> float:
    return sum(run(seed) for seed in SEEDS) / len(SEEDS)


@pytest.mark.parametrize("name", ["pgd", "apgd-ce"])
@pytest.mark.parametrize(("norm", "eps"), CASES)
def test_at_least_as_strong_as_torchattacks(
    name: str,
    norm: str,
    eps: float,
    trained_model: nn.Module,
    digits_data: tuple[torch.Tensor, ...],
) -> None:
    _, _, x, y = digits_data
    model = trained_model.eval()
    clean = robust_accuracy(model, x, y)
    attack = create(name, norm=norm, steps=10)  # pgd: rel_step 0.25, i.e. 2/255 at 8/255

    def ours_at(seed: int) -> float:
        x_adv = attack(model, x, y, eps, generator=torch.Generator().manual_seed(seed))
        return robust_accuracy(model, x_adv, y)

    def theirs_at(seed: int) -> float:
        torch.manual_seed(seed)  # torchattacks draws from the global generator
        return robust_accuracy(model, theirs(name, norm, model, eps, seed)(x, y), y)

    ours_acc, theirs_acc = mean_over_seeds(ours_at), mean_over_seeds(theirs_at)
    print(
        f"\n[crosscheck] {name} {norm} eps={eps:.4f} (10 steps, 500 digits, {len(SEEDS)} seeds): "
        f"clean {clean:.3f}, robustft {ours_acc:.4f}, torchattacks {theirs_acc:.4f}"
    )
    assert 0.1 < theirs_acc < clean - 0.1  # mid-range, so the comparison means something
    assert ours_acc <= theirs_acc + TOLERANCE


def test_linf_pgd_reproduces_torchattacks_given_the_same_random_numbers(
    trained_model: nn.Module, digits_data: tuple[torch.Tensor, ...]
) -> None:
    """Same seed, same draw order (uniform noise, then 10 signed steps of eps/4): same points.

    This pins the algorithm, not just its strength. It relies on our generator and
    torchattacks' global one producing the same uniform numbers for the same seed.
    """
    _, _, x, y = digits_data
    eps = 8 / 255
    ours = create("pgd")(trained_model, x, y, eps, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(3)
    reference = theirs("pgd", "linf", trained_model, eps, seed=3)(x, y)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=0)
