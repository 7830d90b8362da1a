"""Training fast paths: the preprocessed digits cache, worker loaders, channels_last, compile,
and the settings that only change speed."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

import robustft.data.images as data_module
from conftest import TinyCNN
from robustft.config import build_config
from robustft.data.factory import build_datasets
from robustft.data.loader import TrainBatches, default_workers


@pytest.mark.parametrize("augment", ["basic", "paper", "none"])
def test_digits_cache_gives_the_same_images_bit_for_bit(monkeypatch, augment: str) -> None:
    """Resizing once instead of every epoch changes no value: the same random draws give the
    same training images, and evaluation images are the same."""
    images = {}
    for cache in (0, data_module.CACHE_BYTES):
        monkeypatch.setattr(data_module, "CACHE_BYTES", cache)
        splits = build_datasets("digits", image_size=24, seed=0, augment=augment)
        torch.manual_seed(7)
        train = torch.stack([splits.train[i][0] for i in range(40)])
        test = torch.stack([splits.test[i][0] for i in range(40)])
        images[cache] = (train, test, type(splits.train.source).__name__)
    (train_a, test_a, kind_a), (train_b, test_b, kind_b) = images.values()
    assert (kind_a, kind_b) == ("TensorSource", "_CachedSource")
    assert torch.equal(train_a, train_b) and torch.equal(test_a, test_b)
    assert train_a.shape == (40, 3, 24, 24)


def test_cache_only_within_its_memory_budget(monkeypatch) -> None:
    monkeypatch.setattr(data_module, "CACHE_BYTES", 1797 * 3 * 24 * 24 * 4 - 1)
    splits = build_datasets("digits", image_size=24, seed=0)
    assert type(splits.train.source).__name__ == "TensorSource"  # too big: per item, as before


def _epoch_images(batches: TrainBatches, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*batches.epoch(seed))
    return torch.cat(xs), torch.cat(ys)


def test_worker_loader_images_do_not_depend_on_worker_count_or_history() -> None:
    """With workers each item is augmented from its own seed: 1 or 2 workers, a first epoch or
    one after others (persistent workers, or a resumed run), the same images."""
    splits = build_datasets("digits", image_size=16, seed=0, max_train_per_class=6)
    one = TrainBatches(splits.train, batch_size=16, num_workers=1, pin_memory=False)
    two = TrainBatches(splits.train, batch_size=16, num_workers=2, pin_memory=False)
    first = _epoch_images(one, seed=11)
    _epoch_images(two, seed=10)  # an earlier epoch on the persistent workers
    again = _epoch_images(two, seed=11)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    other = _epoch_images(two, seed=12)
    assert not torch.equal(first[0], other[0])  # another epoch: another shuffle and augmentation
    assert len(first[1]) == len(splits.train) == 60
    assert len(one) == 4


def test_no_workers_is_the_plain_seeded_loader() -> None:
    """num_workers 0 (the CPU default) is torch's DataLoader with the epoch's generator: the
    order and augmentation draws of the runs made before this change."""
    splits = build_datasets("digits", image_size=16, seed=0, max_train_per_class=6)
    batches = TrainBatches(splits.train, batch_size=16, num_workers=0, pin_memory=False)
    torch.manual_seed(3)
    ours = _epoch_images(batches, seed=5)
    torch.manual_seed(3)
    plain = DataLoader(
        splits.train, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(5)
    )
    xs, ys = zip(*plain)
    assert torch.equal(ours[0], torch.cat(xs)) and torch.equal(ours[1], torch.cat(ys))


def test_default_workers_by_device() -> None:
    assert default_workers(torch.device("cpu")) == 0
    assert 0 <= default_workers(torch.device("cuda")) <= 8


def test_speed_settings_validated_and_resource_only() -> None:
    base = build_config({})
    assert base.train.num_workers is None and base.train.pin_memory is None
    same = build_config({}, ["train.num_workers=3", "train.pin_memory=false"])
    assert same.run_id() == base.run_id()
    assert build_config({}, ["train.channels_last=true"]).run_id() != base.run_id()
    assert build_config({}, ["train.compile=true"]).run_id() != base.run_id()
    from robustft.errors import UserError

    with pytest.raises(UserError, match=r"train\.num_workers"):
        build_config({}, ["train.num_workers=-1"])
    with pytest.raises(UserError, match=r"train\.channels_last"):
        build_config({}, ["train.channels_last=maybe"])


def _one_epoch(*overrides: str, device: str = "cpu"):
    """One PGD-2 training epoch of a TinyCNN on 40 digits (16 px): (state, metrics row)."""
    from robustft.callbacks import Callbacks
    from robustft.models.custom import wrap_model
    from robustft.training.loop import train_epoch
    from robustft.training.state import build_state

    config = build_config(
        {
            "data": {"name": "digits", "image_size": 16, "max_train_per_class": 4},
            "train": {"epochs": 1, "batch_size": 20, "warmup_epochs": 0},
            "attack": {"name": "pgd", "steps": 2, "eps": "8/255", "schedule": "constant"},
            "val": {"max_examples": 32},
        },
        list(overrides),
    )
    torch.manual_seed(0)
    model = wrap_model(TinyCNN(), num_classes=10, input_size=16)
    state = build_state(config, torch.device(device), model=model)
    return state, train_epoch(state, 1, Callbacks())


def test_channels_last_training_keeps_plain_checkpoints_and_the_same_work() -> None:
    from robustft.models import trainable_state_dict

    _, plain = _one_epoch("train.channels_last=false")
    state, nhwc = _one_epoch("train.channels_last=true")
    assert state.model.net.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert all(t.is_contiguous() for t in trainable_state_dict(state.model).values())
    assert nhwc["forward_passes"] == plain["forward_passes"] == 2 * 3  # 2 batches, PGD-2 + update
    # another memory format rounds differently, but trains the same model
    assert nhwc["train_loss"] == pytest.approx(plain["train_loss"], rel=1e-3)


@pytest.mark.slow
def test_compiled_training_counts_the_same_passes_and_keeps_state_dict_names() -> None:
    """train.compile: torch.compile of the network, used for the update and the crafting; the
    state dict names, pass counting and the numbers (up to rounding) stay those of the module.
    (CPU compile: about a minute.)"""
    from robustft.models import trainable_state_dict

    eager_state, eager = _one_epoch()
    state, compiled = _one_epoch("train.compile=true")
    assert compiled["forward_passes"] == eager["forward_passes"]
    assert (
        trainable_state_dict(state.model).keys() == trainable_state_dict(eager_state.model).keys()
    )
    # fused kernels round differently and PGD's sign steps amplify it a little
    assert compiled["train_loss"] == pytest.approx(eager["train_loss"], rel=1e-2)


def _same_work(setting: str, device: str, rel: float) -> None:
    """One epoch with ``setting`` against a plain one on ``device``: the same passes, the same
    state dict names and, up to rounding, the same loss."""
    from robustft.models import trainable_state_dict

    plain_state, plain = _one_epoch(device=device)
    state, fast = _one_epoch(setting, device=device)
    assert next(state.model.parameters()).device.type == torch.device(device).type
    assert fast["forward_passes"] == plain["forward_passes"] == 2 * 3
    names = trainable_state_dict(plain_state.model).keys()
    assert trainable_state_dict(state.model).keys() == names
    assert fast["train_loss"] == pytest.approx(plain["train_loss"], rel=rel)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(
    ("setting", "rel"),
    [("train.channels_last=true", 1e-3), ("train.compile=true", 1e-2), ("train.bf16=true", 2e-2)],
)
def test_cuda_fast_paths_do_the_same_work(setting: str, rel: float) -> None:
    """channels_last, torch.compile (inductor's CUDA kernels) and bf16 autocast on a GPU: the
    epoch makes the same passes and reaches the same loss up to their rounding."""
    _same_work(setting, "cuda", rel)


def _sync_warnings(fn) -> int:  # type: ignore[no-untyped-def]
    """How many device-to-host synchronisations ``fn()`` makes (CUDA's sync debug mode)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["pgd", "apgd-ce"])
def test_training_attack_loop_never_waits_for_the_device(name: str) -> None:
    """The training call's synchronisations do not grow with the step count: none inside the
    loop (the ones left are per call: the input range check and the random start)."""
    from robustft.attacks import create

    torch.manual_seed(0)
    model = TinyCNN().cuda().eval()
    x = torch.rand(32, 3, 16, 16, device="cuda")
    y = torch.randint(0, 10, (32,), device="cuda")

    def call(steps: int) -> None:
        create(name, steps=steps)(model, x, y, 8 / 255, generator=torch.Generator().manual_seed(0))

    call(2)  # warm-up: lazy CUDA initialisation is not the attack's
    assert _sync_warnings(lambda: call(8)) == _sync_warnings(lambda: call(2))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_training_step_on_cuda_stays_in_the_ball() -> None:
    """bf16 autocast (train.bf16) crafts points inside the eps-ball and [0, 1] in fp32 and the
    update's loss is finite."""
    from robustft.attacks import create
    from robustft.objectives import AdversarialCE

    torch.manual_seed(0)
    model = TinyCNN().cuda()
    x = torch.rand(32, 3, 16, 16, device="cuda")
    y = torch.randint(0, 10, (32,), device="cuda")
    out = AdversarialCE(create("pgd", steps=3), autocast_bf16=True)(model, x, y, 8 / 255)
    assert out.x_used.dtype == torch.float32
    assert float((out.x_used - x).abs().max()) <= 8 / 255 + 1e-6
    assert float(out.x_used.min()) >= 0 and float(out.x_used.max()) <= 1
    assert torch.isfinite(out.loss)
