"""Fine-tuning modes (lora, bitfit, partial, linear, full), trainable-only state dicts, base
fingerprints and merged export. Offline, tiny timm ``test_*`` models with ``pretrained=False``.

Expected trainable counts are computed here from the layers' shapes, independently of the
library: peft's LoRA adds ``A: (r, in)`` and ``B: (out, r)`` to a linear layer and
``A: (r, in, kh, kw)`` and ``B: (out, r, 1, 1)`` to a (groups=1) conv."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from torch import nn

from robustft.errors import UserError
from robustft.models import (
    ClassifierModel,
    ModelSpec,
    ModeOptions,
    apply_mode,
    base_fingerprint,
    build_model,
    build_model_from_spec,
    export_state_dict,
    has_lora,
    load_trainable_state_dict,
    mode_options_from_config,
    param_groups,
    trainable_parameter_count,
    trainable_state_dict,
)

VIT = "timm:test_vit"  # 6 blocks, width 64, head 'head'
RESNET = "timm:test_resnet"  # 4 blocks, head 'fc' (96 features)
CONVNEXT = "timm:test_convnext"
EFFNET = "timm:test_efficientnet"
SIDE = {VIT: 160}  # timm's test_vit needs its 160 px input; the convnets take 32 px
MODES = ("full", "linear", "lora", "bitfit", "partial")


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """One intra-op thread: these models are tiny, and on a loaded 2-core machine two OpenMP
    threads wait on each other (measured: 0.02 s vs 1.7 s CPU per step of test_resnet)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build(name: str, mode: str = "full", seed: int = 0, **options: object) -> ClassifierModel:
    """A seeded random-init model. timm zero-initialises the last BatchNorm scale of each residual
    block, which would make every gradient inside the residual branches zero; like pretrained
    weights, the base here has non-zero scales (set deterministically, so rebuilds agree)."""
    torch.manual_seed(seed)
    model = build_model(
        name,
        num_classes=3,
        pretrained=False,
        mode=mode,
        mode_options=ModeOptions(**options),  # type: ignore[arg-type]
    )
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d) and not module.weight.any():
                module.weight.fill_(0.5)
    return model


def images(name: str, n: int = 2, seed: int = 0) -> torch.Tensor:
    side = SIDE.get(name, 32)
    return torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(seed))


def lora_size(layer: nn.Module, rank: int) -> int:
    """Parameters peft's LoRA adds to one layer (see the module docstring)."""
    if isinstance(layer, nn.Conv2d):
        kh, kw = layer.kernel_size
        return rank * layer.in_channels * kh * kw + layer.out_channels * rank
    assert isinstance(layer, nn.Linear)
    return rank * (layer.in_features + layer.out_features)


def head_size(model: ClassifierModel) -> int:
    return sum(p.numel() for _, p in model.head_parameters())


def lora_layers(model: ClassifierModel) -> list[str]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [n for n, m in model.net.named_modules() if isinstance(m, BaseTunerLayer)]


def train_steps(model: ClassifierModel, name: str, steps: int = 3, lr: float = 0.05) -> None:
    groups = param_groups(model, lr=lr, weight_decay=0.0)
    opt = torch.optim.Adam(groups)
    model.train()
    for i in range(steps):
        loss = (
            model(images(name, 4, seed=10 + i)).logsumexp(-1).mean()
            - model(images(name, 4, seed=20 + i))[:, 0].mean()
        )
        opt.zero_grad()
        loss.backward()
        opt.step()


# ----------------------------------------------------------------------------- LoRA

# Independent description of each family default: which modules (in a freshly built network)
# must carry LoRA.
FAMILY_TARGETS = {
    VIT: lambda n, m: re.fullmatch(r"blocks\.\d+\.(attn\.(qkv|proj)|mlp\.fc[12])", n),
    CONVNEXT: lambda n, m: re.fullmatch(r"stages\.\d\.blocks\.\d+\.mlp\.fc[12]", n),
    RESNET: lambda n, m: re.fullmatch(r"layer\d\.\d+\.conv\d", n),
    EFFNET: lambda n, m: n.split(".")[-1] in ("conv_pw", "conv_pwl", "conv_head"),
    "efficientnet_lite0": lambda n, m: n.split(".")[-1] in ("conv_pw", "conv_pwl", "conv_head"),
    "torchvision:resnet18": lambda n, m: re.fullmatch(r"layer\d\.\d\.conv\d", n),
    "torchvision:mobilenet_v3_small": lambda n, m: (
        isinstance(m, nn.Conv2d)
        and m.kernel_size == (1, 1)
        and re.fullmatch(r"features\.\d+\.block\.\d\.0", n)
    ),
}


@pytest.mark.parametrize("name", list(FAMILY_TARGETS))
def test_lora_family_defaults_and_exact_trainable_count(name: str) -> None:
    reference = build(name)
    wanted = [n for n, m in reference.net.named_modules() if FAMILY_TARGETS[name](n, m)]
    assert wanted and all(not reference.is_head("net." + n) for n in wanted)
    expected = sum(lora_size(reference.net.get_submodule(n), 4) for n in wanted)

    model = build(name, "lora", lora_rank=4)
    assert lora_layers(model) == wanted
    assert trainable_parameter_count(model) == expected + head_size(reference)
    for pname, p in model.named_parameters():
        is_adapter = ".lora_A." in pname or ".lora_B." in pname
        assert p.requires_grad == (is_adapter or model.is_head(pname)), pname
    # depthwise convs never get LoRA (peft cannot merge them)
    assert not any(
        getattr(model.net.get_submodule(n).get_base_layer(), "groups", 1) > 1  # type: ignore[operator]
        for n in lora_layers(model)
    )
    assert model.info.options.lora_rank == 4


def test_lora_custom_targets_rank_alpha_and_generic_fallback() -> None:
    model = build(VIT, "lora", lora_rank=2, lora_alpha=8.0, lora_targets=("qkv",))
    layers = lora_layers(model)
    assert layers == [f"blocks.{i}.attn.qkv" for i in range(6)]
    qkv = model.net.blocks[0].attn.qkv
    assert qkv.scaling["default"] == 4.0
    assert trainable_parameter_count(model) == 6 * 2 * (64 + 192) + 64 * 3 + 3
    regex = build(RESNET, "lora", lora_targets=r"layer4\.0\.conv[12]")  # type: ignore[arg-type]
    assert lora_layers(regex) == ["layer4.0.conv1", "layer4.0.conv2"]

    # unknown family (timm ByobNet): every capable conv/linear outside the head
    generic = build("timm:test_byobnet", "lora", lora_rank=2)
    plain = build("timm:test_byobnet").net.named_modules()
    convs = [n for n, m in plain if type(m) is nn.Conv2d and m.groups == 1]
    assert lora_layers(generic) == convs and len(convs) == 22
    assert "head.fc" not in lora_layers(generic)


class DepthwiseNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pw = nn.Conv2d(3, 8, 1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.proj = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.proj(self.dw(self.pw(x)).mean((2, 3))))


def test_generic_lora_skips_depthwise_convs_and_the_head() -> None:
    torch.manual_seed(0)
    spec = ModelSpec("custom", 2, pretrained=False)
    model = ClassifierModel(
        DepthwiseNet(),
        spec=spec,
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        input_size=8,
        head=("head",),
        source="test",
    )
    apply_mode(model, "lora", options=ModeOptions(lora_rank=2))
    assert lora_layers(model) == ["pw", "proj"]
    assert trainable_parameter_count(model) == 2 * 3 + 8 * 2 + 2 * (8 + 8) + 8 * 2 + 2


def test_lora_bad_targets_and_double_injection_are_refused() -> None:
    with pytest.raises(UserError) as excinfo:
        build(VIT, "lora", lora_targets=("nope", "conv9"))
    message = str(excinfo.value)
    assert "\n" not in message
    assert "nope, conv9" in message and "blocks.0.attn.qkv" in message
    with pytest.raises(UserError, match="head"):
        build(VIT, "lora", lora_targets=("head",))  # the head is never adapted
    model = build(RESNET, "lora")
    for mode in ("lora", "full"):
        with pytest.raises(UserError, match="already has LoRA"):
            apply_mode(model, mode)
    assert len(lora_layers(model)) == 9 and model.mode == "lora"


# ----------------------------------------------------------------------------- BitFit, partial

NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def bitfit_size(model: ClassifierModel) -> int:
    total = 0
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            norm = isinstance(module, NORMS)
            head = model.is_head(f"{mname}.{pname}")
            if norm or pname == "bias" or head:
                total += p.numel()
    return total


@pytest.mark.parametrize("name", [VIT, RESNET, CONVNEXT, EFFNET])
def test_bitfit_trains_biases_norms_and_head(name: str) -> None:
    model = build(name, "bitfit")
    assert trainable_parameter_count(model) == bitfit_size(build(name))
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert all(
        n.endswith(".weight") or n.endswith("gamma") or "token" in n or "pos_embed" in n
        for n in frozen
    )
    if name == CONVNEXT:  # layer scale is neither a bias nor a norm
        assert "net.stages.0.blocks.0.gamma" in frozen


PARTIAL = [
    # (model, blocks, trained prefixes besides the head)
    (VIT, 2, ("blocks.4.", "blocks.5.", "norm.")),
    (RESNET, 1, ("layer4.0.",)),
    (CONVNEXT, 1, ("stages.3.blocks.1.", "head.norm.")),
    (CONVNEXT, 2, ("stages.3.downsample.", "stages.3.blocks.", "head.norm.")),
    ("efficientnet_lite0", 1, ("blocks.6.0.", "conv_head.", "bn2.")),
    ("torchvision:resnet18", 3, ("layer3.1.", "layer4.")),
    ("torchvision:mobilenet_v3_small", 1, ("features.11.", "features.12.", "classifier.0.")),
]


@pytest.mark.parametrize(("name", "blocks", "prefixes"), PARTIAL)
def test_partial_trains_the_last_blocks_and_what_follows(
    name: str, blocks: int, prefixes: tuple[str, ...]
) -> None:
    reference = build(name)
    expected = head_size(reference) + sum(
        p.numel() for n, p in reference.net.named_parameters() if n.startswith(prefixes)
    )
    model = build(name, "partial", blocks=blocks)
    assert trainable_parameter_count(model) == expected
    assert model.info.options.blocks == blocks


def test_partial_keeps_frozen_blocks_in_eval_mode() -> None:
    model = build(RESNET, "partial", blocks=1)
    model.train()
    assert not model.net.layer3.training and not model.net.bn1.training
    assert model.net.layer4[0].bn1.training and model.net.fc.training
    frozen_stats = model.net.layer3[0].bn1.running_mean.clone()
    trained_stats = model.net.layer4[0].bn1.running_mean.clone()
    model(images(RESNET, 4))
    assert torch.equal(model.net.layer3[0].bn1.running_mean, frozen_stats)
    assert not torch.equal(model.net.layer4[0].bn1.running_mean, trained_stats)
    model.eval()
    assert not any(m.training for m in model.modules())


def test_partial_with_too_many_blocks_names_the_count() -> None:
    with pytest.raises(UserError, match="has 4 blocks, got blocks=5"):
        build(RESNET, "partial", blocks=5)
    with pytest.raises(UserError, match="has 6 blocks"):
        build(VIT, "partial", blocks=7)


# ----------------------------------------------------------------------------- all modes


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", [RESNET, VIT])
def test_input_gradients_flow_and_only_trainable_parameters_change(name: str, mode: str) -> None:
    model = build(name, mode)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = images(name).requires_grad_(True)
    model(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    train_steps(model, name, steps=2)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= trainable
    assert {n for n in trainable if model.is_head(n)} <= changed
    if mode == "linear":
        assert trainable_parameter_count(model) == head_size(model)


# ----------------------------------------------------------------------------- state dicts


@pytest.mark.parametrize(
    ("name", "mode"),
    [(VIT, "lora"), (RESNET, "lora"), (RESNET, "bitfit"), (RESNET, "partial"), (EFFNET, "full")],
)
def test_trainable_state_round_trip_reproduces_logits_exactly(name: str, mode: str) -> None:
    model = build(name, mode)
    train_steps(model, name)
    state = trainable_state_dict(model)
    assert all(v.device.type == "cpu" and v.is_contiguous() for v in state.values())
    assert {"mean", "std"} <= set(state)
    if mode != "full":
        assert len(state) < len(model.state_dict())
    fresh = build(name, mode)
    assert base_fingerprint(fresh) == base_fingerprint(model)
    load_trainable_state_dict(fresh, state)
    model.eval(), fresh.eval()
    x = images(name, 3, seed=5)
    with torch.no_grad():
        assert torch.equal(model(x), fresh(x))


def test_trainable_state_mismatches_are_refused() -> None:
    model = build(RESNET, "lora")
    state = trainable_state_dict(model)
    with pytest.raises(UserError, match="unexpected"):
        load_trainable_state_dict(build(RESNET, "bitfit"), state)
    missing = dict(state)
    key = "net.layer1.0.conv1.lora_A.default.weight"
    del missing[key]
    with pytest.raises(UserError) as excinfo:
        load_trainable_state_dict(build(RESNET, "lora"), missing)
    assert f"1 missing ({key})" in str(excinfo.value) and "\n" not in str(excinfo.value)
    shaped = dict(state)
    shaped["net.fc.weight"] = torch.zeros(5, 96)
    with pytest.raises(UserError, match=r"net\.fc\.weight \(5, 96\) vs \(3, 96\)"):
        load_trainable_state_dict(build(RESNET, "lora"), shaped)
    with pytest.raises(UserError, match="other shape"):
        load_trainable_state_dict(build(RESNET, "lora", lora_rank=4), state)


def test_base_fingerprint_identifies_the_frozen_base() -> None:
    a, b = build(RESNET, "bitfit"), build(RESNET, "bitfit")
    assert base_fingerprint(a) == base_fingerprint(b)
    assert re.fullmatch(r"[0-9a-f]{64}", base_fingerprint(a))
    assert base_fingerprint(build(RESNET, "bitfit", seed=1)) != base_fingerprint(a)
    train_steps(a, RESNET)
    assert base_fingerprint(a) == base_fingerprint(b)  # training leaves the base untouched
    # nothing process-dependent goes in: names, dtypes, shapes and bytes, in name order
    layer = nn.Linear(2, 2).requires_grad_(False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        layer.bias.copy_(torch.tensor([5.0, 6.0]))
    digest = hashlib.sha256()
    for name, value in (("bias", layer.bias), ("weight", layer.weight)):
        digest.update(f"{name}|torch.float32|{tuple(value.shape)}\n".encode())
        digest.update(value.numpy().tobytes())
    assert base_fingerprint(layer) == digest.hexdigest()


@pytest.mark.parametrize(
    ("name", "mode"),
    [(VIT, "lora"), (RESNET, "lora"), (EFFNET, "lora"), (RESNET, "full"), (VIT, "bitfit")],
)
def test_export_merges_lora_into_a_plain_full_model(name: str, mode: str) -> None:
    model = build(name, mode)
    train_steps(model, name)
    if mode == "lora":
        assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if ".lora_B." in n)
    model.eval()
    x = images(name, 3, seed=7)
    with torch.no_grad():
        expected = model(x)
    exported = export_state_dict(model)
    assert not any("lora_" in k or "base_layer" in k for k in exported)
    assert all(v.device.type == "cpu" and v.is_contiguous() for v in exported.values())
    assert has_lora(model) == (mode == "lora")  # the model itself is not merged
    plain = build(name, "full", seed=3)
    plain.net.load_state_dict(exported)  # strict: exactly the network's own names
    plain.eval()
    with torch.no_grad():
        # relative too: a random-init LoRA model keeps its BatchNorm at the initial statistics,
        # so its logits can reach 1e6, where float32 rounding alone is ~0.1
        assert torch.allclose(plain(x), expected, rtol=1e-6, atol=1e-5)
        assert torch.equal(model(x), expected)


# ----------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"lora_rank": 0}, "model.lora_rank: expected an integer >= 1, got 0"),
        ({"lora_rank": 2.5}, "got 2.5"),
        ({"lora_alpha": -1.0}, "model.lora_alpha"),
        ({"lora_alpha": float("nan")}, "model.lora_alpha"),
        ({"lora_dropout": 1.0}, "model.lora_dropout: expected a number in [0, 1), got 1.0"),
        ({"blocks": 0}, "model.blocks: expected an integer >= 1, got 0"),
        ({"lora_targets": " , "}, "model.lora_targets"),
        ({"lora_targets": "conv["}, "'conv['"),
    ],
)
def test_bad_options_are_user_errors_with_the_value(
    options: dict[str, object], expected: str
) -> None:
    """Mode options are validated once, with the config they come from."""
    from robustft.config import build_config

    with pytest.raises(UserError) as excinfo:
        build_config({"model": options})
    assert expected in str(excinfo.value)


def test_options_from_config_and_in_model_info() -> None:
    config = SimpleNamespace(
        lora_rank=4, lora_alpha=8, lora_dropout=0.1, lora_targets="qkv, fc2", blocks=2
    )
    options = mode_options_from_config(config)
    assert options == ModeOptions(4, 8.0, 0.1, ("qkv", "fc2"), 2)
    assert mode_options_from_config(SimpleNamespace(lora_targets=None)) == ModeOptions()
    model = build(
        VIT, "lora", lora_rank=4, lora_alpha=8, lora_dropout=0.1, lora_targets=("qkv", "fc2")
    )
    info = json.loads(json.dumps(model.info.to_dict()))
    assert info["mode"] == "lora"
    assert info["options"] == {
        "lora_rank": 4,
        "lora_alpha": 8.0,
        "lora_dropout": 0.1,
        "lora_targets": ["qkv", "fc2"],
        "blocks": 1,
    }
    assert ModeOptions.from_dict(info["options"]) == model.info.options
    torch.manual_seed(0)
    clone = build_model_from_spec(model.info.to_spec())
    assert clone.mode == "lora" and lora_layers(clone) == lora_layers(model)
    with pytest.raises(UserError, match="unknown keys rank"):
        ModeOptions.from_dict({"rank": 3})


def test_lora_keeps_frozen_batchnorm_statistics() -> None:
    """LoRA freezes the BatchNorm affine parameters; their running statistics must stay the
    pretrained ones too (updating them from few-shot batches kept LoRA from adapting: 38.1% vs
    88.9% clean on the offline default, see robustft.models.modes)."""
    from robustft.models.blocks import frozen_batchnorms

    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", num_classes=3, pretrained=False, mode="lora")
    norms = frozen_batchnorms(model)
    assert len(norms) > 10 and set(norms) <= set(model.eval_modules)
    before = {n: b.clone() for n, b in model.named_buffers() if n.endswith("running_mean")}
    model.train()
    model(torch.rand(4, 3, 32, 32)).sum().backward()
    after = dict(model.named_buffers())
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert not any(model.get_submodule(n).training for n in norms)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.grad is not None for p in lora_b)
    full = build_model("efficientnet_lite0", num_classes=3, pretrained=False, mode="full")
    assert full.eval_modules == () and not frozen_batchnorms(full)


def test_bitfit_trains_batchnorm_affine_but_keeps_its_statistics() -> None:
    """BitFit trains BatchNorm weights and biases; updating their running statistics from
    few-shot batches held it at 46.4% clean on the offline default, keeping them gave 83.6%."""
    from robustft.models.blocks import batchnorms

    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", num_classes=3, pretrained=False, mode="bitfit")
    norms = batchnorms(model)
    assert len(norms) > 10 and set(norms) <= set(model.eval_modules)
    before = {n: b.clone() for n, b in model.named_buffers() if n.endswith("running_var")}
    model.train()
    model(torch.rand(4, 3, 32, 32)).sum().backward()
    after = dict(model.named_buffers())
    assert all(torch.equal(before[n], after[n]) for n in before)
    weights = [model.get_submodule(n).weight for n in norms]
    assert all(w.requires_grad and w.grad is not None for w in weights)
    model.eval()
    model.train()  # train() again after eval(): still kept
    assert not any(model.get_submodule(n).training for n in norms)
