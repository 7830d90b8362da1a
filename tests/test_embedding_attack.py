"""The continuous threat model of text: attacks in embedding space on packed inputs (B, L, D + 1).

A tiny packed-input model (a token-wise layer masked by the kind channel, mean pooled over the
attended tokens, a linear head) trained in a second on synthetic "reviews" whose class shows in
which part of the vocabulary their words come from. Special tokens are attended and carry
gradient, and the model reads the kind channel differentiably, so an attack that moved them
would be seen.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from robustft import attacks
from robustft.attacks.base import misclassified
from robustft.attacks.geometry import get_geometry
from robustft.attacks.space import ORDINARY, PADDING, SPECIAL, get_space
from robustft.errors import UserError
from robustft.objectives import grad_align_penalty

D, L, CLASSES, VOCAB = 8, 12, 3, 30
PAD, CLS, SEP = 0, 1, 2  # token ids; the ordinary words are 3 .. 3 + VOCAB - 1
EVALUATED = ["fgsm", "fgsm-rs", "pgd", "apgd-ce", "apgd-dlr"]
TRAINING_ONLY = ["n-fgsm", "grad-align"]
NORMS = ["linf", "l2", "l2-token"]
EPS = {"linf": 0.3, "l2": 1.5, "l2-token": 0.8}  # units of the embedding (mean word norm 1)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class TinyTextModel(nn.Module):
    """Packed (B, L, D + 1) -> (B, K): tanh(W e + k * kind) on attended tokens, mean pooled."""

    def __init__(self) -> None:
        super().__init__()
        self.token = nn.Linear(D, 16)
        self.kind = nn.Parameter(torch.full((16,), 0.1))
        self.head = nn.Linear(16, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        embedding, kind = x[..., :-1], x[..., -1:]
        attended = (kind > 0).to(x.dtype)
        hidden = torch.tanh(self.token(embedding) + kind * self.kind) * attended
        return self.head(hidden.sum(dim=1) / attended.sum(dim=1).clamp_min(1.0))


def _table() -> torch.Tensor:
    """(3 + VOCAB, D) embeddings, divided by the mean norm of the ordinary words (unit scale)."""
    table = torch.randn(3 + VOCAB, D, generator=seeded(1))
    return table / table[3:].norm(dim=1).mean()


def texts(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` packed texts: [CLS] 3-9 words [SEP] padding; class c's words come mostly from the
    c-th third of the vocabulary."""
    gen, table = seeded(seed), _table()
    y = torch.randint(0, CLASSES, (n,), generator=gen)
    ids = torch.full((n, L), PAD)
    kinds = torch.full((n, L), PADDING)
    for i in range(n):
        length = int(torch.randint(3, 10, (1,), generator=gen))
        group = 3 + int(y[i]) * (VOCAB // CLASSES)
        own = group + torch.randint(0, VOCAB // CLASSES, (length,), generator=gen)
        anyone = 3 + torch.randint(0, VOCAB, (length,), generator=gen)
        words = torch.where(torch.rand(length, generator=gen) < 0.8, own, anyone)
        ids[i, : length + 2] = torch.cat([torch.tensor([CLS]), words, torch.tensor([SEP])])
        kinds[i, : length + 2] = ORDINARY
        kinds[i, 0] = kinds[i, length + 1] = SPECIAL
    return torch.cat([table[ids], kinds.unsqueeze(-1)], dim=-1), y


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return texts(64, seed=2)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    """Trained on one thread: its tiny steps only wait on a second one (a loaded machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        net = TinyTextModel()
        x, y = texts(400, seed=3)
        optimizer = torch.optim.Adam(net.parameters(), lr=0.02)
        for step in range(150):
            rows = torch.randint(0, len(x), (64,), generator=seeded(step))
            optimizer.zero_grad()
            nn.functional.cross_entropy(net(x[rows]), y[rows]).backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return net.eval()


def frozen(x: torch.Tensor) -> torch.Tensor:
    """(B, L, D + 1) bool: the coordinates no attack may change (written out, not the space's)."""
    mask = (x[..., -1:] != ORDINARY).expand_as(x).clone()
    mask[..., -1] = True
    return mask


def distance(norm: str, delta: torch.Tensor) -> torch.Tensor:
    """(B,) size of a perturbation in ``norm`` (computed here, independently of the geometry)."""
    if norm == "linf":
        return delta.flatten(1).abs().amax(dim=1)
    if norm == "l2":
        return delta.flatten(1).norm(dim=1)
    return delta[..., :-1].norm(dim=-1).amax(dim=1)


def create(name: str, norm: str, **hyper: Any) -> attacks.Attack:
    if attacks.ATTACKS[name].takes_steps:
        hyper.setdefault("steps", 5)
    return attacks.create(name, norm=norm, space="embedding", **hyper)


def test_the_tiny_model_learned_and_special_tokens_carry_gradient(model, data) -> None:
    x, y = data
    assert float((model(x).argmax(1) == y).float().mean()) >= 0.85
    x = x.clone().requires_grad_(True)
    nn.functional.cross_entropy(model(x), y).backward()
    assert x.grad is not None
    special = x.detach()[..., -1] == SPECIAL
    assert float(x.grad[special].abs().sum()) > 0  # an attack must hold them, not the model
    assert float(x.grad[..., -1].abs().sum()) > 0  # the kind channel too


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name", EVALUATED + TRAINING_ONLY)
def test_perturbations_stay_in_budget_and_never_touch_padding_special_or_kind(
    model, data, name: str, norm: str
) -> None:
    x, y = data
    eps = torch.full((len(x),), EPS[norm])
    eps[:8] = 0.0
    attack = create(name, norm)
    x_adv = attack(model, x, y, eps, generator=seeded())
    reach = eps * (attack.noise_factor + attack.rel_step) if name == "n-fgsm" else eps
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert torch.equal(x_adv[frozen(x)], x[frozen(x)])
    assert bool((distance(norm, x_adv - x) <= reach * (1 + 1e-5) + 1e-7).all())
    assert torch.equal(x_adv[:8], x[:8])  # eps 0: x itself
    assert float(distance(norm, x_adv - x)[8:].min()) > 0  # the others did move


@pytest.mark.parametrize("name", EVALUATED + TRAINING_ONLY)
def test_eps_zero_returns_x_exactly(model, data, name: str) -> None:
    x, y = data
    for norm in NORMS:
        assert torch.equal(create(name, norm)(model, x, y, 0.0, generator=seeded()), x)


@pytest.mark.parametrize("norm", ["linf", "l2-token"])
@pytest.mark.parametrize("name", ["fgsm", "fgsm-rs", "pgd", "apgd-ce"])
def test_attacks_raise_the_loss_and_lower_accuracy(model, data, name: str, norm: str) -> None:
    x, y = data
    x_adv = create(name, norm)(model, x, y, EPS[norm], generator=seeded())
    with torch.no_grad():
        clean, adversarial = model(x), model(x_adv)
    loss = nn.functional.cross_entropy
    assert float(loss(adversarial, y)) > float(loss(clean, y)) + 0.5
    clean_accuracy = float((clean.argmax(1) == y).float().mean())
    assert float((adversarial.argmax(1) == y).float().mean()) < clean_accuracy - 0.3


def test_larger_eps_breaks_more(model, data) -> None:
    x, y = data
    pgd = create("pgd", "l2-token", steps=10)
    fooled = [
        int(pgd.evaluate(model, x, y, eps, generator=seeded()).fooled.sum())
        for eps in (0.1, 0.4, 1.6)
    ]
    assert fooled[0] < fooled[1] < fooled[2]


@pytest.mark.parametrize("norm", ["linf", "l2-token"])
@pytest.mark.parametrize(
    ("name", "hyper"),
    [("pgd", {"steps": 5}), ("pgd", {"steps": 3, "restarts": 2}), ("apgd-ce", {"steps": 10})],
)
def test_early_exit_settles_the_same_verdicts_on_text(
    model, data, name: str, hyper: dict[str, Any], norm: str
) -> None:
    """Early exit compacts the batch; the box of each example (its frozen rows) must follow it.
    The settled verdicts are those of the full run (APGD: the same; PGD: a superset, settled at
    a fooling iterate), every point stays feasible, and the survivors end where the full run
    ends (PGD: bit for bit; APGD: up to float rounding, as the model's matrix products round
    differently on a smaller batch and APGD carries its iterates through momentum)."""
    x, y = data
    eps = EPS[norm] / 4  # some examples break, some do not
    attack = create(name, norm, **hyper)
    early = attack.evaluate(model, x, y, eps, generator=seeded())
    full = attack.evaluate(model, x, y, eps, generator=seeded(), early_stop=False)
    assert 0 < int(early.fooled.sum()) < len(x)
    assert torch.equal(early.fooled, misclassified(model, early.x_adv, y))
    assert not bool((full.fooled & ~early.fooled).any())
    survived = ~early.fooled
    if name == "apgd-ce":
        assert torch.equal(early.fooled, full.fooled)
        torch.testing.assert_close(early.x_adv[survived], full.x_adv[survived])
    else:
        assert torch.equal(early.x_adv[survived], full.x_adv[survived])
    for point in (early.x_adv, full.x_adv):
        assert torch.equal(point[frozen(x)], x[frozen(x)])
        assert bool((distance(norm, point - x) <= eps * (1 + 1e-5)).all())


def test_l2_token_geometry() -> None:
    """Per-token ball: projection shrinks only the tokens outside, onto the sphere (the kind
    channel's displacement not counted), is idempotent and leaves feasible points bit for bit;
    the start is inside each token's ball; the ascent direction has unit norm on every movable
    token; a shard starts as one process."""
    geometry = get_geometry("l2-token", "embedding")
    x, _ = texts(6, seed=4)
    eps = torch.tensor([0.0, 0.1, 0.5, 1.0, 2.0, 0.3])
    moved = x + 3.0 * torch.randn(x.shape, generator=seeded(5))
    projected = geometry.project(moved, x, eps)
    assert torch.equal(projected[frozen(x)], x[frozen(x)])
    lengths = (projected - x)[..., :-1].norm(dim=-1)
    ordinary = x[..., -1] == ORDINARY
    assert bool((lengths <= eps[:, None] * (1 + 1e-5)).all())
    torch.testing.assert_close(lengths[ordinary], eps[:, None].expand_as(lengths)[ordinary])
    torch.testing.assert_close(geometry.norm(projected - x), eps)
    torch.testing.assert_close(geometry.project(projected, x, eps), projected)
    inside = geometry.project(moved, x, 0.9 * eps)
    assert torch.equal(geometry.project(inside, x, eps), inside)  # feasible: bit for bit
    assert torch.equal(projected[0], x[0])
    start = geometry.random_init(x, eps, seeded(6))
    assert torch.equal(start[frozen(x)], x[frozen(x)])
    start_lengths = (start - x)[..., :-1].norm(dim=-1)
    assert bool((start_lengths <= eps[:, None] * (1 + 1e-5)).all())
    assert len(set(start_lengths[3][ordinary[3]].tolist())) > 1  # a radius per token
    part = geometry.random_init_rows(x[2:5], eps, seeded(6), first=2)
    assert torch.equal(part, start[2:5])
    grad = torch.randn(x.shape, generator=seeded(7))
    direction = geometry.ascent_direction(grad, x)
    assert torch.equal(direction[frozen(x)], torch.zeros_like(direction[frozen(x)]))
    unit = direction[..., :-1].norm(dim=-1)[ordinary]
    torch.testing.assert_close(unit, torch.ones_like(unit))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pixel_norms_in_embedding_space_hold_the_frozen_coordinates(norm: str) -> None:
    geometry = get_geometry(norm, "embedding")
    x, _ = texts(6, seed=4)
    eps = torch.full((6,), 0.5)
    grad = torch.randn(x.shape, generator=seeded(7))
    direction = geometry.ascent_direction(grad, x)
    assert torch.equal(direction[frozen(x)], torch.zeros_like(direction[frozen(x)]))
    if norm == "l2":  # normalised over the movable coordinates only
        torch.testing.assert_close(direction.flatten(1).norm(dim=1), torch.ones(6))
    start = geometry.random_init(x, eps, seeded(6))
    assert torch.equal(start[frozen(x)], x[frozen(x)])
    assert bool((geometry.norm(start - x) <= eps * (1 + 1e-5)).all())


def test_grad_align_penalty_compares_the_movable_gradients_only(model, data) -> None:
    """GradAlign's cosine is taken over the coordinates the attack moves, not over the gradient
    on special tokens and the kind channel, which no perturbation can follow."""
    x, y = data
    geometry = get_geometry("linf", "embedding")
    penalty = grad_align_penalty(model, x, y, 0.3, geometry=geometry, generator=seeded())
    noisy = geometry.random_init(x, torch.full((len(x),), 0.3), seeded())

    def gradient(point: torch.Tensor) -> torch.Tensor:
        point = point.clone().requires_grad_(True)
        nn.functional.cross_entropy(model(point), y, reduction="sum").backward()
        assert point.grad is not None
        return point.grad

    def gap(at_x: torch.Tensor, at_noise: torch.Tensor) -> float:
        cosine = nn.functional.cosine_similarity(at_x.flatten(1), at_noise.flatten(1), dim=1)
        return float((1 - cosine).mean())

    movable = ~frozen(x)
    expected = gap(gradient(x) * movable, gradient(noisy) * movable)
    assert abs(float(penalty.detach()) - expected) < 1e-5
    assert abs(gap(gradient(x), gradient(noisy)) - expected) > 1e-3  # the frozen part counts


def test_describe_round_trips_with_the_space() -> None:
    for name in EVALUATED + TRAINING_ONLY:
        for norm in NORMS:
            attack = create(name, norm)
            description = attack.describe()
            assert description["space"] == "embedding" and description["norm"] == norm
            assert attacks.create(**description) == attack  # type: ignore[arg-type]
    assert "space" not in attacks.create("pgd").describe()  # image descriptions as before


def test_bad_inputs_are_one_line_errors(model, data) -> None:
    x, y = data
    pgd = create("pgd", "l2-token")
    bad = x.clone()
    bad[3, 4, -1] = 3.0
    with pytest.raises(UserError, match=r"token kind, 0 \(padding\), 1 \(special\) or 2.*got 3"):
        pgd(model, bad, y, 0.5)
    with pytest.raises(UserError, match=r"expected x \(B,L,D\+1\).*got \(2, 3, 16, 16\)"):
        pgd(model, torch.rand(2, 3, 16, 16), torch.zeros(2, dtype=torch.long), 0.5)
    with pytest.raises(UserError, match=r"expected x \(B,C,H,W\).*got \(64, 12, 9\)"):
        attacks.create("pgd")(model, x, y, 0.5)
    with pytest.raises(
        UserError, match="norm 'l2-token' applies to text \\(embedding\\) inputs, not to images"
    ):
        attacks.create("pgd", norm="l2-token")
    with pytest.raises(UserError, match="attack 'square' supports only images"):
        attacks.create("square", space="embedding")
    with pytest.raises(UserError, match="unknown input space 'text'"):
        attacks.create("pgd", space="text")
    with pytest.raises(UserError, match=r"unknown norm 'l1'.*valid: l2, l2-token, linf"):
        get_geometry("l1", "embedding")
    assert get_space("embedding").movable(x).shape == x.shape


def test_an_image_config_refuses_l2_token_in_one_line() -> None:
    from robustft.config import build_config
    from robustft.training.build import check_config

    config = build_config({}, ["attack.norm=l2-token", "attack.eps=0.5"])
    with pytest.raises(
        UserError,
        match=r"^config attack.norm: norm 'l2-token' applies to text \(embedding\) inputs, "
        "not to images; use linf or l2$",
    ):
        check_config(config)
