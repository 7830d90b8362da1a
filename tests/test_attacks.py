"""Contract and strength tests of every registered attack, in both norms."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from robustft import attacks
from robustft.attacks import APGD, ATTACKS, PGD, create, get_geometry
from robustft.attacks import apgd as apgd_module
from robustft.attacks.apgd import checkpoint_iterations
from robustft.attacks.losses import cross_entropy, dlr
from robustft.errors import UserError

NAMES = sorted(ATTACKS)
NORMS = ["linf", "l2"]
EPS = {"linf": 8 / 255, "l2": 0.5}
TOL = 1e-5
COMBINATIONS = [(name, norm) for name in NAMES for norm in NORMS if norm in ATTACKS[name].norms]
# Square's random search stays random after its start; its own tests are in test_masking.py
GRADIENT_COMBINATIONS = [(name, norm) for name, norm in COMBINATIONS if name != "square"]


class Recorder(nn.Module):
    """Wraps a model; counts forward passes, records their inputs and the ``training`` flag."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0
        self.modes: list[bool] = []
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.modes.append(self.training)
        self.inputs.append(x.detach().clone())
        return self.inner(x)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_feasible(
    x_adv: torch.Tensor, x: torch.Tensor, eps: torch.Tensor | float, norm: str
) -> None:
    """x_adv in [0, 1] and inside the eps-ball around x (per example)."""
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    distance = get_geometry(norm).norm(x_adv - x)
    assert bool((distance <= torch.as_tensor(eps) + TOL).all()), distance.max()


def reach(name: str, norm: str, eps: torch.Tensor | float) -> torch.Tensor:
    """The radius an attack's points stay within: eps, or (k + 1) eps for N-FGSM (training
    only: it does not project back to the eps-ball)."""
    return create(name, norm=norm).reach(torch.as_tensor(eps, dtype=torch.float32))


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


# ---------------------------------------------------------------------------------------------
# The contract, for every attack and norm
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "norm"), COMBINATIONS)
def test_result_in_ball_and_box_and_input_untouched(
    name: str, norm: str, tiny_model: nn.Module, tiny_batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = tiny_batch
    x_copy = x.clone()
    x_adv = create(name, norm=norm)(tiny_model, x, y, EPS[norm], generator=seeded())
    assert_feasible(x_adv, x, reach(name, norm, EPS[norm]), norm)
    assert not x_adv.requires_grad
    assert torch.equal(x, x_copy)
    assert not torch.equal(x_adv, x)  # it did move
    # eps larger than the box: still in [0, 1]
    big = create(name, norm=norm)(tiny_model, x, y, 2.0 if norm == "linf" else 50.0)
    assert_feasible(big, x, reach(name, norm, 2.0 if norm == "linf" else 50.0), norm)


@pytest.mark.parametrize(("name", "norm"), COMBINATIONS)
def test_zero_eps_returns_x_without_any_forward_pass(
    name: str, norm: str, tiny_model: nn.Module, tiny_batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = tiny_batch
    model = Recorder(tiny_model)
    for eps in (0.0, 0, torch.zeros(len(x))):
        x_adv = create(name, norm=norm)(model, x, y, eps)
        assert torch.equal(x_adv, x)
    assert model.calls == 0


@pytest.mark.parametrize(("name", "norm"), COMBINATIONS)
def test_per_example_eps_with_zeros(
    name: str, norm: str, tiny_model: nn.Module, tiny_batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = tiny_batch
    eps = torch.tensor([0.0, 1.0, 0.0, 2.0, 4.0, 0.0, 8.0, 16.0]) * EPS[norm] / 8
    x_adv = create(name, norm=norm)(tiny_model, x, y, eps, generator=seeded())
    assert_feasible(x_adv, x, reach(name, norm, eps), norm)
    zero = eps == 0
    assert torch.equal(x_adv[zero], x[zero])
    moved = get_geometry(norm).norm(x_adv - x)[~zero]
    assert bool((moved > 0).all())
    if name == "fgsm" and norm == "linf":  # one full step: every pixel moves by its own eps
        assert torch.allclose(moved, eps[~zero], atol=1e-6)


@pytest.mark.parametrize(("name", "norm"), COMBINATIONS)
def test_training_mode_and_batchnorm_statistics_restored(
    name: str, norm: str, tiny_model: nn.Module, tiny_batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = tiny_batch
    model = Recorder(tiny_model).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    create(name, norm=norm)(model, x, y, EPS[norm], generator=seeded())
    assert model.calls > 0 and not any(model.modes)  # crafted in eval mode
    assert all(m.training for m in model.modules())  # train mode restored everywhere
    for key, value in model.state_dict().items():  # BN running stats (and weights) unchanged
        assert torch.equal(value, state[key]), key


def test_eval_mode_false_crafts_in_train_mode_and_restores(
    tiny_model: nn.Module, tiny_batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = tiny_batch
    model = Recorder(tiny_model).train()
    model.inner.head.eval()  # a mixed state must come back exactly as it was
    before = {name: m.training for name, m in model.named_modules()}
    create("pgd", steps=2, eval_mode=False)(model, x, y, 8 / 255, generator=seeded())
    assert model.modes == [True, True]
    assert {name: m.training for name, m in model.named_modules()} == before


@pytest.mark.parametrize(("name", "norm"), COMBINATIONS)
def test_requires_grad_restored_and_no_parameter_gradients(
    name: str, norm: str, tiny_model: nn.Module, tiny_batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = tiny_batch
    for p in tiny_model.features.parameters():
        p.requires_grad_(False)  # a frozen backbone with a trainable head
    head_weight = tiny_model.head.weight
    head_weight.grad = torch.ones_like(head_weight)  # an earlier backward left a gradient
    flags = {n: p.requires_grad for n, p in tiny_model.named_parameters()}
    create(name, norm=norm)(tiny_model, x, y, EPS[norm], generator=seeded())
    assert {n: p.requires_grad for n, p in tiny_model.named_parameters()} == flags
    assert torch.equal(head_weight.grad, torch.ones_like(head_weight))  # not accumulated into
    assert all(p.grad is None for n, p in tiny_model.named_parameters() if n != "head.weight")


@pytest.mark.parametrize(("name", "norm"), COMBINATIONS)
def test_deterministic_under_a_seeded_generator(
    name: str, norm: str, tiny_model: nn.Module, tiny_batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = tiny_batch
    attack = create(name, norm=norm)
    first = attack(tiny_model, x, y, EPS[norm], generator=seeded(1))
    second = attack(tiny_model, x, y, EPS[norm], generator=seeded(1))
    assert torch.equal(first, second)
    other = attack(tiny_model, x, y, EPS[norm], generator=seeded(2))
    # only FGSM (and GradAlign's FGSM) has no randomness
    assert torch.equal(first, other) == (name in ("fgsm", "grad-align"))


@pytest.mark.parametrize(("name", "norm"), COMBINATIONS)
def test_bf16_autocast(
    name: str, norm: str, tiny_model: nn.Module, tiny_batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = tiny_batch
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_adv = create(name, norm=norm)(tiny_model, x, y, EPS[norm], generator=seeded())
    assert_feasible(x_adv, x, reach(name, norm, EPS[norm]), norm)
    assert x_adv.dtype == torch.float32
    assert not torch.equal(x_adv, x)


@pytest.mark.parametrize(("name", "norm"), GRADIENT_COMBINATIONS)
def test_x_init_replaces_the_random_start(
    name: str, norm: str, tiny_model: nn.Module, tiny_batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = tiny_batch
    eps = EPS[norm]
    attack = create(name, norm=norm)
    x_init = get_geometry(norm).random_init(x, torch.full((len(x),), eps), seeded(7))
    a = attack(tiny_model, x, y, eps, x_init=x_init, generator=seeded(1))
    b = attack(tiny_model, x, y, eps, x_init=x_init, generator=seeded(2))
    assert torch.equal(a, b)  # the start no longer depends on the generator
    assert not torch.equal(a, attack(tiny_model, x, y, eps, generator=seeded(1)))
    far = attack(tiny_model, x, y, eps, x_init=(x + 5.0), generator=seeded(1))
    assert_feasible(far, x, reach(name, norm, eps), norm)  # x_init outside: projected first


def test_fgsm_from_x_init_is_one_signed_step(
    tiny_model: nn.Module, tiny_batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = tiny_batch
    eps = 8 / 255
    x_init = (x + 0.01).clamp(0, 1)
    x_adv = create("fgsm")(tiny_model, x, y, eps, x_init=x_init)
    tiny_model.eval()
    start = x_init.clone().requires_grad_(True)
    nn.functional.cross_entropy(tiny_model(start), y, reduction="sum").backward()
    assert start.grad is not None
    expected = torch.min(torch.max(x_init + eps * start.grad.sign(), x - eps), x + eps).clamp(0, 1)
    torch.testing.assert_close(x_adv, expected)


@pytest.mark.parametrize("name", NAMES)
def test_describe_round_trips_through_create(name: str) -> None:
    for norm in ATTACKS[name].norms:
        attack = create(name, norm=norm)
        description = attack.describe()
        assert description["name"] == name and description["norm"] == norm
        json.dumps(description)
        assert create(**description) == attack  # type: ignore[arg-type]


def test_registry_defaults() -> None:
    assert create("fgsm") == PGD(steps=1, rel_step=1.0, random_init=False)
    assert create("fgsm-rs") == PGD(steps=1, rel_step=1.25, random_init=True)
    assert create("pgd") == PGD(steps=10, rel_step=0.25, random_init=True)
    assert create("apgd-ce", norm="l2") == APGD(norm="l2", loss="ce", steps=10)
    assert create("apgd-dlr").loss == "dlr"
    assert set(attacks.__all__) >= {"Attack", "PGD", "APGD", "create", "ATTACKS", "crafting_mode"}


# ---------------------------------------------------------------------------------------------
# Errors a user can cause
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: create("pgf"), r"unknown attack 'pgf' \(did you mean 'pgd'\?\)"),
        (lambda: create("pgd", norm="l3"), "unknown norm 'l3'"),
        (lambda: create("pgd", setps=3), r"unknown hyperparameter 'setps'.*did you mean 'steps'"),
        (lambda: create("pgd", steps=0), "steps must be an integer >= 1, got 0"),
        (lambda: create("pgd", steps=2.5), "steps must be an integer >= 1, got 2.5"),
        (lambda: create("pgd", rel_step=-0.1), "rel_step must be a number > 0, got -0.1"),
        (lambda: create("pgd", rel_step=float("nan")), "rel_step must be a number > 0, got nan"),
        (lambda: create("pgd", restarts=0), "restarts must be an integer >= 1, got 0"),
        (lambda: create("pgd", random_init=False, restarts=3), "restarts must be 1 without"),
        (lambda: create("pgd", loss="cw"), "unknown loss 'cw'"),
        (lambda: create("fgsm", steps=5), "attack 'fgsm' fixes steps=1, got steps=5"),
        (lambda: create("apgd-ce", loss="dlr"), "attack 'apgd-ce' fixes loss='ce'"),
        (lambda: create("apgd-ce", rho=1.5), "rho must be in \\[0, 1\\], got 1.5"),
        (lambda: create("apgd-ce", momentum=0), "momentum must be in \\(0, 1\\], got 0"),
        (lambda: create("apgd-ce", eval_mode="yes"), "eval_mode must be true or false"),
        (lambda: PGD(steps=-1), "steps must be an integer >= 1, got -1"),
        (lambda: APGD(restarts=True), "restarts must be an integer >= 1, got True"),
    ],
)
def test_invalid_hyperparameters_are_user_errors(build: object, message: str) -> None:
    with pytest.raises(UserError, match=message):
        build()  # type: ignore[operator]


def test_invalid_call_arguments_are_user_errors(
    tiny_model: nn.Module, tiny_batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = tiny_batch
    pgd = create("pgd")
    with pytest.raises(UserError, match="eps must be finite and >= 0"):
        pgd(tiny_model, x, y, -0.1)
    with pytest.raises(UserError, match="eps must be a scalar or shape"):
        pgd(tiny_model, x, y, torch.ones(3))
    with pytest.raises(UserError, match=r"images in \[0, 1\]"):
        pgd(tiny_model, (x - 0.5) / 0.25, y, 8 / 255)  # a normalised batch
    with pytest.raises(UserError, match="x_init must have the shape"):
        pgd(tiny_model, x, y, 8 / 255, x_init=x[:2])
    two_classes = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 2))
    with pytest.raises(UserError, match="DLR loss needs at least 3 classes"):
        create("apgd-dlr")(two_classes, x, y % 2, 8 / 255)


# ---------------------------------------------------------------------------------------------
# Losses and APGD internals
# ---------------------------------------------------------------------------------------------


def test_dlr_loss_values_and_invariances() -> None:
    logits = torch.tensor([[4.0, 1.0, 0.0, -1.0], [1.0, 3.0, 2.0, 0.0]])
    y = torch.tensor([0, 0])
    # example 0 correct: -(4 - 1) / (4 - 0); example 1 wrong: -(1 - 3) / (3 - 1)
    torch.testing.assert_close(dlr(logits, y), torch.tensor([-0.75, 1.0]))
    torch.testing.assert_close(dlr(3 * logits + 7, y), dlr(logits, y))
    assert ((dlr(logits, y) > 0) == (logits.argmax(1) != y)).all()
    torch.testing.assert_close(
        cross_entropy(logits, y), nn.functional.cross_entropy(logits, y, reduction="none")
    )
    assert cross_entropy(logits.bfloat16(), y).dtype == torch.float32


def test_apgd_checkpoints_follow_the_reference_code_by_default() -> None:
    assert checkpoint_iterations(100) == {22, 41, 57, 70, 80, 87, 93, 99}
    assert checkpoint_iterations(10) == {2, 3, 4, 5, 6, 7, 8, 9, 10}
    assert checkpoint_iterations(1) == {1}
    # the paper's: p = 0, .22, .41, .57, .70, .80, .87, .93, .99; w_j = ceil(p_j * steps)
    assert checkpoint_iterations(10, "paper") == {3, 5, 6, 7, 8, 9, 10}


def test_apgd_forward_budget(
    tiny_model: nn.Module, tiny_batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = tiny_batch
    model = Recorder(tiny_model)
    create("apgd-ce", steps=10)(model, x, y, 8 / 255, generator=seeded())
    assert model.calls == 11  # x^(0) and one per iteration
    model.calls = 0
    create("pgd", steps=10)(model, x, y, 8 / 255, generator=seeded())
    assert model.calls == 10


class SpreadOut(nn.Module):
    """A 10-class model of one pixel u where loss and misclassification disagree.

    Label 0 has logit 0; class 1 has ``0.1 - 0.2 u`` (so u < 0.5 is misclassified) and classes
    2-9 have ``-3 + 2.9 u``. The cross-entropy grows with u all the way to u = 1, where the
    example is classified correctly: the highest-loss point is not adversarial.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.flatten(1)[:, :1]
        wrong = (-3.0 + 2.9 * u).expand(-1, 8)
        return torch.cat([torch.zeros_like(u), 0.1 - 0.2 * u, wrong], dim=1)


def test_spread_out_model_has_the_advertised_shape() -> None:
    u = torch.tensor([0.0, 0.4, 0.6, 1.0]).view(-1, 1, 1, 1)
    logits = SpreadOut()(u)
    y = torch.zeros(4, dtype=torch.long)
    assert (logits.argmax(1) != y).tolist() == [True, True, False, False]
    assert bool((cross_entropy(logits, y).diff() > 0).all())


def test_apgd_prefers_a_misclassified_iterate_over_a_higher_loss_one() -> None:
    x = torch.zeros(4, 1, 1, 1)  # misclassified from the start, at u = 0
    y = torch.zeros(4, dtype=torch.long)
    model = SpreadOut()
    x_adv = create("apgd-ce", steps=5)(model, x, y, 1.0, x_init=x)
    with torch.no_grad():
        assert bool((model(x_adv).argmax(1) != y).all())
    best_loss = create("apgd-ce", steps=5)(model, x, y, 1.0, x_init=x + 1)  # never fooled
    assert torch.equal(best_loss, torch.ones_like(x))  # then the highest-loss point, u = 1


def test_pgd_restarts_prefer_a_fooling_end_point_over_a_higher_loss_one() -> None:
    x = torch.zeros(16, 1, 1, 1)
    y = torch.zeros(16, dtype=torch.long)
    model = SpreadOut()
    # one tiny step: each restart ends near its random start u ~ U(0, 1)
    attack = create("pgd", steps=1, rel_step=0.01, restarts=8)
    x_adv = attack(model, x, y, 1.0, generator=seeded())
    with torch.no_grad():
        assert bool((model(x_adv).argmax(1) != y).all())
    single = create("pgd", steps=1, rel_step=0.01)(model, x, y, 1.0, generator=seeded())
    assert float(single.min()) < 0.5 < float(single.max())  # a single start is a coin flip


def make_search(**overrides: torch.Tensor) -> apgd_module._Search:
    """A 2-example APGD state on (2, 1, 1, 1) 'images'."""
    zeros = torch.zeros(2, 1, 1, 1)
    fields = {
        "x_now": zeros + 0.5,
        "x_before": zeros + 0.4,
        "grad": zeros + 1.0,
        "loss": torch.tensor([1.0, 1.0]),
        "step": torch.tensor([0.2, 0.2]),
        "x_best": zeros + 0.3,
        "grad_best": zeros - 1.0,
        "loss_best": torch.tensor([2.0, 2.0]),
        "x_fooling": zeros,
        "fooled": torch.tensor([False, False]),
        "increases": torch.tensor([0, 0]),
        "loss_best_at_check": torch.tensor([1.0, 1.0]),
        "halved_at_check": torch.tensor([False, False]),
    }
    fields.update(overrides)
    return apgd_module._Search(**fields)


def test_apgd_momentum_step() -> None:
    search = make_search()
    x = torch.full((2, 1, 1, 1), 0.5)
    eps = torch.tensor([1.0, 0.25])
    moved = apgd_module._momentum_step(search, x, eps, get_geometry("linf"), momentum=0.75)
    # z = P(0.5 + 0.2 * sign(1)) = 0.7; x + 0.75 (z - x) + 0.25 (x - x_before) = 0.675
    # example 1: the ball [0.25, 0.75] does not bind; same value
    torch.testing.assert_close(moved.flatten(), torch.tensor([0.675, 0.675]))
    tight = apgd_module._momentum_step(
        search, x, torch.tensor([0.1, 0.1]), get_geometry("linf"), momentum=1.0
    )
    torch.testing.assert_close(tight.flatten(), torch.tensor([0.6, 0.6]))  # projected to x + eps


class Bump(nn.Module):
    """One pixel u; the cross-entropy of label 0 peaks at u = 0.58."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.flatten(1)[:, :1]
        return torch.cat([torch.zeros_like(u), -50 * (u - 0.58) ** 2, torch.full_like(u, -5.0)], 1)


def test_apgd_trajectory_first_step_without_momentum_then_with() -> None:
    model = Recorder(Bump())
    x = torch.full((1, 1, 1, 1), 0.5)
    attack = create("apgd-ce", steps=2, rho=0.0)  # rho 0: no halving while the loss improves
    attack(model, x, torch.zeros(1, dtype=torch.long), 0.1, x_init=x)
    points = [float(p) for p in model.inputs]
    # x0 = 0.5; x1 = P(x0 + 2 eps sign(g)) = 0.6 (plain step); the gradient now points back:
    # z = P(0.6 - 0.2) = 0.4 and x2 = 0.6 + 0.75 (0.4 - 0.6) + 0.25 (0.6 - 0.5) = 0.475
    assert points == pytest.approx([0.5, 0.6, 0.475])


def test_apgd_record_iterate_tracks_best_and_fooling_points() -> None:
    search = make_search()
    x_next = torch.tensor([0.9, 0.1]).view(2, 1, 1, 1)
    logits = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # example 0 misclassified (label 0)
    loss = torch.tensor([3.0, 1.5])  # example 0 beats its best loss (2.0), example 1 does not
    grad = torch.full_like(x_next, 7.0)
    apgd_module._record_iterate(search, x_next, loss, grad, logits, torch.tensor([0, 0]))
    assert torch.equal(search.x_before.flatten(), torch.tensor([0.5, 0.5]))
    assert torch.equal(search.x_now, x_next)
    assert search.increases.tolist() == [1, 1]  # both above the previous loss 1.0
    assert torch.equal(search.x_best.flatten(), torch.tensor([0.9, 0.3]))
    assert torch.equal(search.grad_best.flatten(), torch.tensor([7.0, -1.0]))
    assert search.loss_best.tolist() == [3.0, 2.0]
    assert search.fooled.tolist() == [True, False]
    assert torch.equal(search.x_fooling.flatten(), torch.tensor([0.9, 0.0]))


def test_apgd_step_halving_and_restart_from_best() -> None:
    # window of 4 steps, rho 0.75: 4 increases are enough, 3 are not (condition 1: <= 3)
    search = make_search(increases=torch.tensor([4, 3]))
    apgd_module._adapt_step_size(search, window=4, rho=0.75)
    assert search.step.tolist() == pytest.approx([0.2, 0.1])
    assert torch.equal(search.x_now.flatten(), torch.tensor([0.5, 0.3]))  # restarted from best
    assert torch.equal(search.grad.flatten(), torch.tensor([1.0, -1.0]))
    assert search.loss.tolist() == [1.0, 1.0]  # the iterate's loss, kept as in the reference
    assert search.increases.tolist() == [0, 0]
    assert search.halved_at_check.tolist() == [False, True]
    assert search.loss_best_at_check.tolist() == [2.0, 2.0]
    # condition 2: enough increases but the best loss did not improve since the last check;
    # it applies only where the step was not halved at that check
    search.increases = torch.tensor([4, 4])
    apgd_module._adapt_step_size(search, window=4, rho=0.75)
    assert search.step.tolist() == pytest.approx([0.1, 0.1])
    assert search.halved_at_check.tolist() == [True, False]


# ---------------------------------------------------------------------------------------------
# Strength on a trained model (digits, 500 test images)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("norm", "eps"), [("linf", 8 / 255), ("l2", 0.5)])
def test_attack_strength_ordering(
    norm: str, eps: float, trained_model: nn.Module, digits_data: tuple[torch.Tensor, ...]
) -> None:
    _, _, x, y = digits_data
    clean = accuracy(trained_model, x, y)
    robust = {
        name: accuracy(
            trained_model, create(name, norm=norm)(trained_model, x, y, eps, generator=seeded()), y
        )
        for name, attack_norm in GRADIENT_COMBINATIONS
        if attack_norm == norm
    }
    print(
        f"\n{norm} eps={eps:.4f}: clean {clean:.3f} "
        + " ".join(f"{k} {v:.3f}" for k, v in robust.items())
    )
    assert clean > 0.9
    assert all(value <= clean for value in robust.values())
    assert robust["pgd"] < clean - 0.1  # the attack does something at this eps
    assert robust["pgd"] <= robust["fgsm"] + 0.02
    assert robust["apgd-ce"] <= robust["pgd"] + 0.02
    assert robust["apgd-dlr"] <= robust["pgd"] + 0.02


@pytest.mark.parametrize("name", ["pgd", "apgd-ce"])
def test_restarts_never_weaken_the_attack(
    name: str, trained_model: nn.Module, digits_data: tuple[torch.Tensor, ...]
) -> None:
    _, _, x, y = digits_data
    x, y = x[:200], y[:200]
    eps = 8 / 255
    one = create(name, steps=5)(trained_model, x, y, eps, generator=seeded())
    three = create(name, steps=5, restarts=3)(trained_model, x, y, eps, generator=seeded())
    with torch.no_grad():
        logits_one, logits_three = trained_model(one), trained_model(three)
    fooled_one, fooled_three = logits_one.argmax(1) != y, logits_three.argmax(1) != y
    assert bool((fooled_three | ~fooled_one).all())  # every example fooled by 1 run stays fooled
    assert int(fooled_one.sum()) > 10
    # where neither fooled the model, the kept restart has at least the loss of the first one
    neither = ~fooled_one & ~fooled_three
    loss_one, loss_three = cross_entropy(logits_one, y), cross_entropy(logits_three, y)
    assert bool((loss_three[neither] >= loss_one[neither] - 1e-4).all())
    assert bool((loss_three[neither] > loss_one[neither] + 1e-3).any())  # restarts did something
    assert_feasible(three, x, eps, "linf")


def test_apgd_returns_a_misclassified_point_when_one_was_found(
    trained_model: nn.Module, digits_data: tuple[torch.Tensor, ...]
) -> None:
    """The returned point fools the model wherever any iterate did (the start included)."""
    _, _, x, y = digits_data
    x, y = x[:200], y[:200]
    x_init = create("pgd")(trained_model, x, y, 8 / 255, generator=seeded())
    with torch.no_grad():
        fooled_at_start = trained_model(x_init).argmax(1) != y
    x_adv = create("apgd-ce", steps=3)(trained_model, x, y, 8 / 255, x_init=x_init)
    with torch.no_grad():
        fooled = trained_model(x_adv).argmax(1) != y
    assert bool(fooled_at_start.any())
    assert bool(fooled[fooled_at_start].all())


# ---------------------------------------------------------------------------------------------
# CUDA
# ---------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("name", "norm"), COMBINATIONS)
def test_cuda_matches_cpu(
    name: str, norm: str, trained_model: nn.Module, digits_data: tuple[torch.Tensor, ...]
) -> None:
    _, _, x, y = digits_data
    x, y = x[:128], y[:128]
    attack = create(name, norm=norm)
    cpu = attack(trained_model, x, y, EPS[norm], generator=seeded())
    try:
        gpu = attack(trained_model.cuda(), x.cuda(), y.cuda(), EPS[norm], generator=seeded())
    finally:
        trained_model.cpu()  # a session fixture: give it back as we found it
    assert gpu.device.type == "cuda"
    assert_feasible(gpu.cpu(), x, EPS[norm], norm)
    cpu_acc, gpu_acc = accuracy(trained_model, cpu, y), accuracy(trained_model, gpu.cpu(), y)
    assert abs(cpu_acc - gpu_acc) <= 3 / 128  # same noise (drawn on the CPU); kernels differ
