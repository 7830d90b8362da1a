"""One-step training methods that resist catastrophic overfitting (issue 22 point 3): N-FGSM's
noise, its step beyond the eps-ball and its cost; GradAlign's regulariser, its double
backpropagation and its cost; both refused as evaluation attacks; bad values refused at the
config, one line, exit 2."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import robustft
from conftest import TinyCNN
from robustft import attacks, cli
from robustft.attacks import get_geometry
from robustft.config import load_config
from robustft.cost import count_passes
from robustft.errors import UserError
from robustft.objectives import AdversarialCE, grad_align_penalty
from robustft.training.build import build_evaluation_attack, check_config

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
EPS = 8 / 255


class InputBlind(nn.Module):
    """Logits that do not depend on the input: the input gradient is zero, so N-FGSM's step is
    zero and its result is its noisy start."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(len(x), 10) + 0.0 * x.flatten(1).sum(dim=1, keepdim=True)


def batch(seed: int = 0, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 16, 16, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def linf(delta: torch.Tensor) -> float:
    return float(delta.abs().max())


# ------------------------------------------------------------------------------ N-FGSM


@pytest.mark.parametrize("k", [2.0, 4.0])
def test_nfgsm_noise_is_uniform_within_k_eps(k: float) -> None:
    x = torch.full((16, 3, 16, 16), 0.5)  # mid-grey: no clamp to [0, 1] reaches the noise
    y = torch.zeros(16, dtype=torch.long)
    attack = attacks.create("n-fgsm", noise_factor=k)
    noise = attack(InputBlind(), x, y, EPS, generator=torch.Generator().manual_seed(0)) - x
    assert linf(noise) <= k * EPS * (1 + 1e-6)
    assert linf(noise) > 0.99 * k * EPS  # spread over the whole [-k eps, k eps]
    assert float((noise.abs() > EPS).float().mean()) == pytest.approx(1 - 1 / k, abs=0.02)


def test_nfgsm_steps_beyond_the_ball_and_stays_in_the_box() -> None:
    torch.manual_seed(0)
    model = TinyCNN().eval()
    x, y = batch()
    attack = attacks.create("n-fgsm")
    x_adv = attack(model, x, y, EPS, generator=torch.Generator().manual_seed(1))
    delta = x_adv - x
    assert linf(delta) <= 3 * EPS * (1 + 1e-6)  # (k + 1) eps with k = 2
    assert linf(delta) > EPS * 1.5  # not projected back to the eps-ball
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    edge = torch.zeros_like(x)  # at the border every point stays an image
    assert float(attack(model, edge, y, EPS, generator=torch.Generator()).min()) >= 0


def test_nfgsm_costs_one_pass_to_craft_and_two_per_step() -> None:
    torch.manual_seed(0)
    model = TinyCNN()
    x, y = batch(n=6)
    attack = attacks.create("n-fgsm")
    with count_passes(model) as crafting:
        attack(model, x, y, EPS, generator=torch.Generator().manual_seed(0))
    assert (crafting.forward, crafting.backward) == (1, 1)
    with count_passes(model) as step:
        AdversarialCE(attack)(model, x, y, EPS, generator=torch.Generator()).loss.backward()
    assert (step.forward, step.backward, step.example_forward) == (2, 2, 12)


def test_nfgsm_l2_bounds() -> None:
    torch.manual_seed(0)
    x, y = batch()
    attack = attacks.create("n-fgsm", norm="l2", noise_factor=2.0)
    delta = attack(TinyCNN().eval(), x, y, 0.5, generator=torch.Generator().manual_seed(0)) - x
    assert float(get_geometry("l2").norm(delta).max()) <= 3 * 0.5 * (1 + 1e-5)


def test_training_only_attacks_are_refused_by_evaluation() -> None:
    x, y = batch()
    for name in ("n-fgsm", "grad-align"):
        with pytest.raises(UserError, match=f"attack '{name}' is for training only"):
            attacks.create(name).evaluate(TinyCNN().eval(), x, y, EPS)
        with pytest.raises(UserError, match=r"for training only.*valid: fgsm, fgsm-rs, pgd"):
            build_evaluation_attack(name, norm="linf", steps=10)
    with pytest.raises(UserError, match=r"config eval\.attack: attack 'n-fgsm' is for training"):
        check_config(load_config(SMOKE, ["eval.attack=n-fgsm"]))


@pytest.mark.parametrize("value", [0, -1.5])
def test_nfgsm_attack_refuses_a_noise_factor_not_above_zero(value: float) -> None:
    with pytest.raises(UserError, match=f"noise_factor must be a number > 0, got {value}"):
        attacks.create("n-fgsm", noise_factor=value)


# ------------------------------------------------------------------------------ GradAlign


def test_grad_align_penalty_is_zero_where_gradients_align() -> None:
    # two classes, linear logits: the input gradient is (p1 - [y = 1]) (w1 - w0), one direction
    # with one sign for each example wherever x is: cos = 1
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 2))
    x, _ = batch()
    y = torch.randint(0, 2, (8,), generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(0)
    penalty = grad_align_penalty(model, x, y, EPS, geometry=get_geometry("linf"), generator=gen)
    assert abs(float(penalty.detach())) < 1e-6


def test_grad_align_penalty_is_positive_on_a_nonlinear_model() -> None:
    torch.manual_seed(0)
    model = TinyCNN().eval()
    x, y = batch()
    gen = torch.Generator().manual_seed(0)
    penalty = grad_align_penalty(model, x, y, EPS, geometry=get_geometry("linf"), generator=gen)
    assert 1e-4 < float(penalty.detach()) <= 2
    assert penalty.requires_grad  # differentiable in the parameters (double backpropagation)


def _step(attack: attacks.Attack) -> tuple[float, list[torch.Tensor], Any]:
    """Loss, parameter gradients and passes of one training step of a fixed TinyCNN (eval mode:
    no dropout, so two objectives see the same function)."""
    torch.manual_seed(0)
    model = TinyCNN().eval()
    x, y = batch(n=6)
    with count_passes(model) as passes:
        out = AdversarialCE(attack)(model, x, y, EPS, generator=torch.Generator().manual_seed(3))
        out.loss.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    return float(out.loss), grads, passes


def test_grad_align_lambda_zero_is_exactly_fgsm() -> None:
    loss, grads, passes = _step(attacks.create("grad-align", grad_align_lambda=0.0))
    fgsm_loss, fgsm_grads, fgsm_passes = _step(attacks.create("fgsm"))
    assert loss == fgsm_loss
    assert all(torch.equal(a, b) for a, b in zip(grads, fgsm_grads, strict=True))
    assert (passes.forward, passes.backward) == (fgsm_passes.forward, fgsm_passes.backward)


def test_grad_align_adds_its_weighted_penalty_and_its_passes() -> None:
    loss, grads, passes = _step(attacks.create("grad-align", grad_align_lambda=0.5))
    fgsm_loss, fgsm_grads, _ = _step(attacks.create("fgsm"))
    torch.manual_seed(0)
    model = TinyCNN().eval()
    x, y = batch(n=6)
    gen = torch.Generator().manual_seed(3)  # FGSM draws nothing: the penalty's eta comes first
    penalty = grad_align_penalty(model, x, y, EPS, geometry=get_geometry("linf"), generator=gen)
    assert loss == pytest.approx(fgsm_loss + 0.5 * float(penalty.detach()), rel=1e-6)
    # the penalty reaches the parameters only through the gradient at x + eta's graph
    assert any(not torch.allclose(a, b) for a, b in zip(grads, fgsm_grads, strict=True))
    # FGSM 2 + 2, the gradient at x 1 + 1, at x + eta 1 + 1, the backward through its graph 1
    assert (passes.forward, passes.backward) == (4, 5)
    assert (passes.example_forward, passes.example_backward) == (24, 30)


def test_grad_align_is_skipped_at_eps_zero() -> None:
    torch.manual_seed(0)
    model = TinyCNN()
    x, y = batch(n=6)
    with count_passes(model) as passes:
        AdversarialCE(attacks.create("grad-align"))(model, x, y, 0.0).loss.backward()
    assert (passes.forward, passes.backward) == (1, 1)


def test_grad_align_attack_refuses_a_negative_lambda() -> None:
    with pytest.raises(UserError, match=r"grad_align_lambda must be a number >= 0, got -0.1"):
        attacks.create("grad-align", grad_align_lambda=-0.1)


# ------------------------------------------------------------------------------ config, CLI


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            ["attack.name=n-fgsm", "attack.noise_factor=0"],
            "config attack.noise_factor: expected a number > 0 (n-fgsm's noise is uniform in "
            "[-k*eps, k*eps]; its default is 2), got 0.0",
        ),
        (
            ["attack.name=n-fgsm", "attack.noise_factor=-2"],
            "config attack.noise_factor: expected a number > 0",
        ),
        (
            ["attack.name=grad-align", "attack.grad_align_lambda=-0.2"],
            "config attack.grad_align_lambda: expected a number >= 0 (the weight of "
            "grad-align's regulariser; the paper's is 0.2 at 8/255), got -0.2",
        ),
        (
            ["attack.name=pgd", "attack.noise_factor=2"],
            "config attack.name: unknown hyperparameter 'noise_factor' for attack 'pgd'",
        ),
        (
            ["eval.attack=n-fgsm"],
            "config eval.attack: attack 'n-fgsm' is for training only",
        ),
    ],
)
def test_bad_settings_are_one_line_and_exit_2(
    settings: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    argv = ["train", SMOKE, "--run-dir", str(run_dir)]
    for setting in settings:
        argv += ["--set", setting]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("robustft: error: " + message), err
    assert "\n" not in err and not run_dir.exists()


def test_new_keys_leave_existing_run_ids_alone() -> None:
    config = load_config(SMOKE)
    assert config.attack.noise_factor is None and config.attack.grad_align_lambda is None
    assert "noise_factor" in config.to_dict()["attack"]  # shown in config.yaml, as null
    same = load_config(SMOKE, ["attack.noise_factor=null", "attack.grad_align_lambda=null"])
    assert same.run_id() == config.run_id()
    other = load_config(SMOKE, ["attack.name=n-fgsm", "attack.noise_factor=3"])
    assert other.run_id() != load_config(SMOKE, ["attack.name=n-fgsm"]).run_id()


def test_eval_refuses_a_training_attack_before_loading_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # checked with the other arguments: no note about the run's settings, no run read at all
    missing = tmp_path / "no-such-run"
    assert cli.main(["eval", str(missing), "--attack", "n-fgsm"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "robustft: error: --attack 'n-fgsm' is for training only, not an evaluation attack; "
        "valid: fgsm, fgsm-rs, pgd, apgd-ce, apgd-dlr, square\n"
    )
    with pytest.raises(UserError, match=r"^attack 'grad-align' is for training only"):
        robustft.evaluate_run(missing, attack="grad-align")
