"""The memory format chosen for the user (``train.channels_last`` / ``eval.channels_last``:
auto, true, false): what auto chooses and where it is recorded, that an explicit false holds,
that inputs follow the model's layout in training and in every evaluation attack, that a model
given from Python comes back in the layout it came in, and that the verdicts do not depend on
the layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import robustft
from conftest import TinyCNN, digits_tensors
from robustft.config import build_config
from robustft.errors import UserError
from robustft.utils.memory_format import choose, kept_layout, model_format

CL = torch.channels_last
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread() -> object:
    """One CPU thread: these tests' many small passes run faster alone than with two threads
    competing on a loaded machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def nhwc(t: torch.Tensor) -> bool:
    """Stored channels_last (and not also NCHW, as a 1x1 kernel is)."""
    return t.is_contiguous(memory_format=CL) and not t.is_contiguous()


class InputLayouts:
    """Records whether each input batch ``model`` is called on is channels_last."""

    def __init__(self, model: nn.Module) -> None:
        self.seen: list[bool] = []
        model.register_forward_pre_hook(lambda _m, args: self.seen.append(nhwc(args[0])))

    def clear(self) -> None:
        self.seen.clear()


class PatchMLP(nn.Module):
    """A ViT-like network: one 4-D weight (the patch embedding), the rest linear."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 16, 8, stride=8)
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.embed(x))


def test_auto_decides_from_the_architecture_device_and_dtype() -> None:
    """auto: channels_last for a convolutional network on a CPU (fp32 and bf16) and on CUDA
    with bf16; NCHW for a ViT-like network, for fp32 on CUDA and for other devices; true and
    false as asked. Each choice says why."""
    conv, vit = TinyCNN(), PatchMLP()
    cuda, mps = torch.device("cuda"), torch.device("mps")
    key = "train.channels_last"
    assert choose("auto", conv, CPU, bf16=False, setting=key).channels_last
    assert choose("auto", conv, CPU, bf16=True, setting=key).channels_last
    assert choose("auto", conv, cuda, bf16=True, setting=key).channels_last
    assert not choose("auto", conv, cuda, bf16=False, setting=key).channels_last
    assert not choose("auto", conv, mps, bf16=True, setting=key).channels_last
    flat = choose("auto", vit, CPU, bf16=False, setting=key)
    assert not flat.channels_last and "not a convolutional network" in flat.reason
    assert choose(True, vit, CPU, bf16=False, setting=key).channels_last
    assert not choose(False, conv, CPU, bf16=False, setting=key).channels_last
    assert choose("auto", conv, CPU, bf16=False, setting=key).to_dict() == {
        "requested": "auto",
        "chosen": "channels_last",
        "reason": "train.channels_last=auto: a convolutional network (4-D weights hold 79% of "
        "its parameters) on cpu fp32",
    }


def test_bad_values_are_refused_in_one_line() -> None:
    for key in ("train.channels_last", "eval.channels_last"):
        for value in ("maybe", "1", "[true]"):
            with pytest.raises(UserError, match=rf"^config {key}: expected auto, true or false"):
                build_config({}, [f"{key}={value}"])
    data = TensorDataset(*digits_tensors())
    with pytest.raises(UserError, match=r"^channels_last: expected 'auto', True or False"):
        robustft.evaluate(TinyCNN(), data, eps_max="1/255", channels_last="yes")


def test_run_ids_old_runs_keep_theirs_with_false() -> None:
    """auto is another computation (another float rounding) than the old default false: it is
    another run id. An old run's config (channels_last: false, no eval.channels_last) keeps its
    id, and so resumes as it started, in NCHW."""
    old = build_config({}, ["train.channels_last=false"])
    assert old.run_id() == "e8b53bfbf6"  # the default config's id before auto
    assert build_config({}).run_id() != old.run_id()
    saved = old.to_dict()
    del saved["eval"]["channels_last"]  # what an old run's config.yaml holds
    assert build_config(saved).run_id() == "e8b53bfbf6"
    assert build_config({}, ["eval.channels_last=false"]).run_id() != build_config({}).run_id()


def _fit(tmp_path: Path, model: nn.Module, *overrides: str) -> dict:
    """One PGD-2 epoch of ``model`` on 200 digits at 16 px, evaluated on 24 test images."""
    settings = {
        "data.image_size": 16,
        "data.max_train_per_class": 20,
        "train.epochs": 1,
        "train.batch_size": 32,
        "train.warmup_epochs": 0,
        "train.threads": 1,
        "attack.name": "pgd",
        "attack.steps": 2,
        "attack.schedule": "constant",
        "val.max_examples": 32,
        "eval.max_examples": 24,
        "eval.steps": 2,
        "eval.eps_max": "2/255",
        "monitor.co": "on",
    }
    settings.update({key: _yaml(value) for key, value in (o.split("=", 1) for o in overrides)})
    return robustft.fit(
        settings,
        model=model,
        run_dir=tmp_path / "run",
    )


def _yaml(text: str) -> object:
    import yaml

    return yaml.safe_load(text)


def test_auto_trains_and_evaluates_in_channels_last_records_it_and_gives_the_model_back(
    tmp_path: Path,
) -> None:
    """robustft.fit with the default (auto) on a CPU: the update, the crafting, the monitor and
    the final evaluation see channels_last batches; result.json and env.json record the choice;
    the user's model comes back NCHW, as it came."""
    torch.manual_seed(0)
    model = TinyCNN()
    layouts = InputLayouts(model)
    result = _fit(tmp_path, model)
    # after fit's shape probe, every call: training, validation, monitor, curve, checks
    assert len(layouts.seen) > 1 and all(layouts.seen[1:])
    recorded = {
        "requested": "auto",
        "chosen": "channels_last",
        "reason": "train.channels_last=auto: a convolutional network (4-D weights hold 79% of "
        "its parameters) on cpu fp32",
    }
    assert result["memory_format"] == {"train": recorded, "eval": recorded}
    env = json.loads((tmp_path / "run" / "env.json").read_text())
    assert env["memory_format"] == result["memory_format"]
    assert all(p.is_contiguous() for p in model.parameters())  # NCHW, as given
    assert not any(nhwc(p) for p in model.parameters())


def test_explicit_false_is_respected(tmp_path: Path) -> None:
    """train.channels_last=false: NCHW everywhere, even for a model that came channels_last
    (and it comes back channels_last)."""
    torch.manual_seed(0)
    model = TinyCNN().to(memory_format=CL)
    layouts = InputLayouts(model)
    result = _fit(tmp_path, model, "train.channels_last=false")
    assert len(layouts.seen) > 1 and not any(layouts.seen[1:])
    assert result["memory_format"]["train"]["chosen"] == "nchw"
    assert result["memory_format"]["eval"] == {
        "requested": False,
        "chosen": "nchw",
        "reason": "train.channels_last=false: NCHW",
    }
    assert nhwc(model.features[0].weight) and nhwc(model.features[4].weight)


def test_eval_setting_overrides_the_training_one(tmp_path: Path) -> None:
    """eval.channels_last=false after channels_last training: the final evaluation's batches
    are NCHW, the training's channels_last."""
    torch.manual_seed(0)
    model = TinyCNN()
    calls: list[tuple[bool, bool]] = []  # (channels_last input, in train mode)
    model.register_forward_pre_hook(lambda m, args: calls.append((nhwc(args[0]), m.training)))
    result = _fit(tmp_path, model, "eval.channels_last=false", "monitor.co=off")
    assert result["memory_format"]["eval"]["chosen"] == "nchw"
    trained = [cl for cl, training in calls if training]
    assert trained and all(trained)
    assert not calls[-1][0]  # the final evaluation's last pass


def test_evaluate_and_evaluate_run_give_the_model_back_as_it_came(tmp_path: Path) -> None:
    """robustft.evaluate attacks a convolutional network in channels_last (auto) and gives it
    back NCHW; asked for False it attacks in NCHW; a channels_last model comes back
    channels_last. evaluate_run(model=...) likewise."""
    x, y = digits_tensors()
    data = (x[:12], y[:12])  # few: the gradient-free check attacks each survivor 300 times
    torch.manual_seed(0)
    model = TinyCNN()
    layouts = InputLayouts(model)
    robustft.evaluate(model, data, eps_max="1/255", steps=2)
    assert layouts.seen and all(layouts.seen[1:])  # after the shape probe: channels_last
    assert not any(nhwc(p) for p in model.parameters())
    layouts.clear()
    model.to(memory_format=CL)
    robustft.evaluate(model, data, eps_max="1/255", steps=2, channels_last=False)
    assert not any(layouts.seen[1:])
    assert nhwc(model.features[0].weight)

    model = TinyCNN()
    _fit(tmp_path, model, "train.epochs=1")
    again = TinyCNN().to(memory_format=CL)
    layouts = InputLayouts(again)
    evaluation = robustft.evaluate_run(tmp_path / "run", model=again, device="cpu")
    assert evaluation.memory_format is not None and evaluation.memory_format.channels_last
    assert layouts.seen and all(layouts.seen)
    assert nhwc(again.features[0].weight)  # back as it came


def test_kept_layout_restores_parameters_gradients_and_replaced_buffers() -> None:
    model = TinyCNN()
    model.register_buffer("grid", torch.rand(1, 3, 4, 4))
    model(torch.rand(2, 3, 16, 16)).sum().backward()
    before = {n: t.stride() for n, t in [*model.named_parameters(), *model.named_buffers()]}
    with pytest.raises(RuntimeError), kept_layout(model):
        model.to(memory_format=CL)  # Module.to replaces buffers
        assert model_format(model) == CL
        raise RuntimeError("inside")
    after = {n: t.stride() for n, t in [*model.named_parameters(), *model.named_buffers()]}
    assert after == before and model_format(model) == torch.contiguous_format
    assert all(p.grad is not None and p.grad.is_contiguous() for p in model.parameters())


def test_attacks_keep_channels_last_inside_the_ball_and_the_box() -> None:
    """Every attack, training and evaluation paths, l-inf and l2: channels_last inputs stay
    channels_last at every model call and in the result, which lies in the ball and [0, 1]."""
    from robustft import attacks
    from robustft.attacks.geometry import get_geometry

    torch.manual_seed(0)
    model = TinyCNN().to(memory_format=CL).eval()
    layouts = InputLayouts(model)
    x = torch.rand(8, 3, 16, 16).contiguous(memory_format=CL)
    y = torch.randint(0, 10, (8,))
    for name in attacks.list_attacks():
        for norm, eps in (("linf", 4 / 255), ("l2", 0.5)):
            try:
                attack = attacks.create(name, norm=norm)
            except UserError:  # an l-inf-only attack
                continue
            for evaluate in (False, True) if not attack.training_only else (False,):
                layouts.clear()
                gen = torch.Generator().manual_seed(0)
                if evaluate:
                    x_adv = attack.evaluate(model, x, y, eps, generator=gen).x_adv
                else:
                    x_adv = attack(model, x, y, eps, generator=gen)
                where = f"{name} {norm} {'evaluate' if evaluate else 'train'}"
                assert layouts.seen and all(layouts.seen), where
                assert nhwc(x_adv), where
                assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1, where
                reach = attack.reach(torch.full((8,), eps))
                lengths = get_geometry(norm).norm(x_adv - x)
                assert bool((lengths <= reach + 1e-5).all()), where


def _offline_default() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The offline default (EfficientNet-Lite0, ImageNet weights from pip) on digits at 32 px,
    its new head fitted on frozen features of 300 training images: a model that gets most test
    images right, so the attacks have work to do."""
    from robustft.models import build_model

    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", num_classes=10).eval()
    x, y = digits_tensors(size=32)
    head = model.get_submodule(model.head_prefixes[0])
    features: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _m, args: features.append(args[0]))
    with torch.no_grad():
        model(x[:300])
    hook.remove()
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(150):
        loss = nn.functional.cross_entropy(head(features[0]), y[:300])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model, x[1700:], y[1700:]


def test_offline_default_curve_has_identical_verdicts_in_both_formats() -> None:
    """The same curve (APGD-CE, fixed seed) on the offline default in NCHW and channels_last:
    every example judged the same at every eps."""
    model, x, y = _offline_default()
    curves = {
        fmt: robustft.evaluate(
            model,
            (x, y),
            eps_max="0.5/255",  # a fine-tuned standard model: most examples fall by 1/255
            eps_step="0.25/255",
            steps=3,
            max_examples=32,
            seed=5,
            channels_last=fmt,
        )
        for fmt in (False, True)
    }
    nchw, cl = curves[False], curves[True]
    assert nchw.clean_accuracy > 0.6 and nchw.accuracy[-1] > 0.2  # robust examples to judge
    assert cl.correct == nchw.correct and cl.accuracy == nchw.accuracy
    assert cl.expected_robustness == nchw.expected_robustness


def test_small_conv_net_curve_has_identical_verdicts_in_both_formats(
    trained_model: nn.Module, digits_data: tuple[torch.Tensor, ...]
) -> None:
    """The same on a trained small CNN, 200 test images, PGD and APGD-CE, cascade and
    independent, with the masking check."""
    _, _, x_test, y_test = digits_data
    for attack, mode in (("pgd", "cascade"), ("apgd-ce", "independent")):
        curves = [
            robustft.evaluate(
                trained_model,
                (x_test, y_test),
                eps_max="4/255",
                attack=attack,
                mode=mode,
                steps=5,
                max_examples=200,
                seed=1,
                channels_last=fmt,
            )
            for fmt in (False, True)
        ]
        assert curves[0].correct == curves[1].correct, (attack, mode)
        assert 0 < curves[0].robust_accuracy < curves[0].clean_accuracy
        assert curves[0].masking_check == curves[1].masking_check
