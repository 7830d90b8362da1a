"""What surrounds the attack in a training step: the optimizer's fused kernel (chosen for the
user, recorded in the checkpoint, kept on resume) and the gradient norm's single call."""

from __future__ import annotations

import pytest
import torch

from conftest import TinyCNN
from robustft.config import build_config


def _state(optimizer: str = "adamw"):
    from robustft.models.custom import wrap_model
    from robustft.training.state import build_state

    config = build_config(
        {
            "data": {"name": "digits", "image_size": 16, "max_train_per_class": 4},
            "train": {"epochs": 2, "batch_size": 20, "warmup_epochs": 0, "optimizer": optimizer},
            "attack": {"name": "fgsm-rs", "eps": "8/255", "schedule": "constant"},
            "val": {"max_examples": 16},
        }
    )
    torch.manual_seed(0)
    model = wrap_model(TinyCNN(), num_classes=10, input_size=16)
    return build_state(config, torch.device("cpu"), model=model)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_the_optimizer_step_is_fused_on_a_cpu_and_the_checkpoint_records_it(
    optimizer: str,
) -> None:
    from robustft.training.state import checkpoint_payload

    state = _state(optimizer)
    assert all(group["fused"] is True for group in state.optimizer.param_groups)
    saved = checkpoint_payload(state)["optimizer"]["param_groups"]
    assert [group["fused"] for group in saved] == [True] * len(saved)


def test_a_resumed_run_keeps_the_optimizer_kernel_its_checkpoint_records() -> None:
    """A checkpoint written before the fused default (``fused`` None: the per-tensor loop)
    resumes with that loop, so the run goes on with the rounding it started with."""
    from robustft.callbacks import Callbacks
    from robustft.training.loop import train_epoch
    from robustft.training.state import checkpoint_payload, restore

    state = _state()
    for group in state.optimizer.param_groups:
        group["fused"] = None  # as torch.optim.AdamW(...) without fused=True records it
    train_epoch(state, 1, Callbacks())
    payload = checkpoint_payload(state)
    resumed = _state()
    restore(resumed, payload)
    assert all(group["fused"] is None for group in resumed.optimizer.param_groups)
    train_epoch(resumed, 2, Callbacks())  # the loop's step runs on the restored state
    assert resumed.step == 2 * state.step


def test_the_fused_kernels_take_the_loops_steps_up_to_rounding() -> None:
    """Fused SGD (the demo's) and AdamW (the default) change the speed and the rounding, not
    the steps: the same losses step after step and the same head. (Not every weight: the conv
    bias before BatchNorm has a gradient of pure rounding noise, about 1e-8, which AdamW
    normalises into full steps of either sign under both kernels.)"""
    from torch import nn

    torch.manual_seed(0)
    base = TinyCNN()
    x, y = torch.rand(8, 3, 16, 16), torch.randint(0, 10, (8,))
    for make in (
        lambda ps, fused: torch.optim.SGD(
            ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4, fused=fused
        ),
        lambda ps, fused: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.05, fused=fused),
    ):
        losses, heads = [], []
        for fused in (None, True):
            model = TinyCNN()
            model.load_state_dict(base.state_dict())
            opt = make(model.parameters(), fused)
            torch.manual_seed(1)  # the same dropout draws
            seen = []
            for _ in range(5):
                loss = nn.functional.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                seen.append(float(loss.detach()))
            losses.append(seen)
            heads.append(model.head.weight.detach())
        assert losses[1] == pytest.approx(losses[0], rel=1e-5)
        torch.testing.assert_close(heads[1], heads[0], rtol=1e-5, atol=1e-6)


def test_the_gradient_norm_is_the_per_tensor_norm_bit_for_bit() -> None:
    from torch import nn

    from robustft.training.loop import _gradient_norm

    state = _state()
    torch.manual_seed(1)
    for p in state.model.parameters():
        p.grad = torch.randn_like(p)
    grads = [p.grad for p in state.model.parameters()]
    norm = _gradient_norm(state)
    assert norm is not None
    assert torch.equal(norm, nn.utils.get_total_norm(grads, foreach=False))
