"""``hf:`` backbones (a tiny ViT saved by the test, offline) in every fine-tuning mode, and the
model card that ``robustft export`` writes next to the exported file."""

from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path

import pytest
import torch
import yaml

from robustft import cli
from robustft.errors import UserError
from robustft.models import block_layout, build_model, lora_target_modules
from robustft.run.export import load_exported, read_metadata
from robustft.run.load import load_trained_model
from robustft.run.modelcard import front_matter

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hugging Face's offline mode. huggingface_hub reads ``HF_HUB_OFFLINE`` once, when it is
    first imported (possibly by an earlier test), so its constant is set as well."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer ViT (3 classes, 32 px) and its image processor, saved as on the Hub."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-vit")
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        num_labels=3,
    )
    ViTForImageClassification(config).save_pretrained(folder)
    processor = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=MEAN, image_std=STD)
    processor.save_pretrained(folder)
    return folder


def test_tiny_vit_trains_evaluates_and_exports_with_a_model_card(
    vit_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForImageClassification

    run_dir = tmp_path / "run"
    argv = ["train", str(SMOKE), "--run-dir", str(run_dir), "--device", "cpu"]
    for item in (
        f"model.name=hf:{vit_dir}",
        "model.mode=lora",
        "data.image_size=16",  # not the ViT's 32: position embeddings are interpolated
        "train.epochs=1",
        "attack.schedule=constant",
        "train.threads=1",
    ):
        argv += ["--set", item]
    assert cli.main(argv) == 0
    result = json.loads((run_dir / "result.json").read_text())
    model, _, payload = load_trained_model(run_dir, device="cpu")
    assert payload["model_info"]["mean"] == MEAN and payload["model_info"]["std"] == STD
    assert payload["model_info"]["input_size"] == 32 and payload["model_info"]["mode"] == "lora"
    assert result["clean_accuracy"] >= result["robust_accuracy"]
    capsys.readouterr()

    out = tmp_path / "export" / "model.safetensors"
    assert cli.main(["export", str(run_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"model card: {out.parent / 'README.md'}" in printed
    # transformers' own names, LoRA merged: the weights load into the architecture directly
    state = load_file(str(out))
    assert all(k.startswith(("vit.", "classifier.")) for k in state) and "lora" not in str(state)
    config = AutoConfig.from_pretrained(vit_dir, num_labels=10)
    AutoModelForImageClassification.from_config(config).load_state_dict(state, strict=True)
    exported = load_exported(out)  # rebuilt from the stored config: no source dir needed
    x = torch.rand(5, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(exported(x), model(x), atol=1e-5)

    card = (out.parent / "README.md").read_text()
    _, front, body = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["library_name"] == "robustft" and meta["pipeline_tag"] == "image-classification"
    assert meta["datasets"] == ["digits"] and "base_model" not in meta  # a local directory
    assert "base_model" not in read_metadata(out)
    values = {m["name"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert values["Clean accuracy"] == round(100 * result["clean_accuracy"], 2)
    assert values["Expected robustness, linf [0, 2/255]"] == round(
        100 * result["expected_robustness"], 2
    )
    assert "![robustness curve](robustness_curve.png)" in body
    assert f"  name: hf:{vit_dir}\n" in body and "  mode: lora\n" in body  # the config
    assert (out.parent / "robustness_curve.png").read_bytes().startswith(PNG_SIGNATURE)

    # a README.md robustft did not write is never overwritten; a card needs --force
    other = tmp_path / "project" / "model.safetensors"
    other.parent.mkdir()
    (other.parent / "README.md").write_text("# my project\n")
    assert cli.main(["export", str(run_dir), "--out", str(other)]) == 2
    err = capsys.readouterr().err
    assert "is not a robustft model card" in err and "--no-card" in err and "\n" not in err.strip()
    assert not other.exists() and (other.parent / "README.md").read_text() == "# my project\n"
    assert cli.main(["export", str(run_dir), "--out", str(other), "--no-card"]) == 0
    capsys.readouterr()
    again = ["export", str(run_dir), "--out", str(out), "--force"]
    assert cli.main(again) == 0


@pytest.mark.parametrize("mode", ["full", "linear", "bitfit", "partial", "lora"])
def test_every_mode_fits_a_vit(vit_dir: Path, mode: str) -> None:
    model = build_model(f"hf:{vit_dir}", num_classes=4, mode=mode)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"net.model.classifier.weight", "net.model.classifier.bias"} <= trainable
    assert model.net(torch.rand(2, 3, 32, 32)).shape == (2, 4)  # a tensor, not an output object
    loss = torch.nn.functional.cross_entropy(model(torch.rand(2, 3, 16, 16)), torch.tensor([0, 3]))
    loss.backward()  # on [0, 1] images of the data's size: every trainable tensor gets a gradient
    assert all(p.grad is not None for n, p in model.named_parameters() if n in trainable)
    if mode == "full":
        assert trainable == {n for n, _ in model.named_parameters()}
    elif mode == "linear":
        assert len(trainable) == 2
    elif mode == "bitfit":
        assert "net.model.vit.layers.0.layernorm_before.weight" in trainable
        assert not any(n.endswith("q_proj.weight") for n in trainable)
    elif mode == "partial":
        _, starts = block_layout(build_model(f"hf:{vit_dir}", num_classes=4))
        assert len(starts) == 2  # the encoder layers
        assert any(".layers.1." in n for n in trainable)
        assert not any(".layers.0." in n for n in trainable)
    else:
        plain = build_model(f"hf:{vit_dir}", num_classes=4)
        targets = lora_target_modules(plain)
        assert {t.rsplit(".", 2)[-2] + "." + t.rsplit(".", 1)[-1] for t in targets} == {
            "attention.q_proj",
            "attention.v_proj",
            "mlp.fc1",
            "mlp.fc2",
        }
        assert len(targets) == 8  # 4 per layer, 2 layers; never the head or k/o projections


def test_loading_problems_are_one_line(vit_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"cannot download someone/no-such-vit \(offline\?\)"):
        build_model("hf:someone/no-such-vit", num_classes=3)
    with pytest.raises(UserError, match="directory not found"):
        build_model(f"hf:{tmp_path / 'missing'}", num_classes=3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a Hugging Face image-classification model"):
        build_model(f"hf:{tmp_path / 'empty'}", num_classes=3)
    with pytest.raises(UserError, match=r"model\.weights is for timm/torchvision"):
        build_model(f"hf:{vit_dir}", num_classes=3, weights=str(tmp_path / "w.pt"))


def hub_cache(root: Path, repo: str, vit_dir: Path) -> Path:
    """``root`` laid out as the Hugging Face cache holding ``repo`` at one revision (what a
    download leaves: refs/main naming a snapshot folder of the repo's files)."""
    revision = "0" * 40
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(revision)
    shutil.copytree(vit_dir, folder / "snapshots" / revision)
    return root


def test_without_network_a_hub_id_comes_from_the_cache_or_fails_at_once(
    vit_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No offline mode set, but DNS cannot resolve the Hub (a machine without network):
    cached repos load from the cache, others fail in one line without huggingface_hub's
    minute of retries."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    looked_up = []

    def no_dns(host: str, *args: object, **kwargs: object) -> None:
        looked_up.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache(tmp_path, "me/vit", vit_dir)))
    start = time.perf_counter()
    with pytest.raises(UserError, match=r"cannot download someone/no-such-vit \(offline\?\)"):
        build_model("hf:someone/no-such-vit", num_classes=3)
    assert time.perf_counter() - start < 10 and looked_up == ["huggingface.co"]
    model = build_model("hf:me/vit", num_classes=4, mode="linear")  # from the cache
    assert list(model.info.mean) == MEAN and model.info.input_size == 32
    assert model.info.source == "hf pretrained (me/vit)"
    assert model.net.hub_id == "me/vit"  # the model card's base_model

    # a local directory, even one named like a repo id, is no base_model
    monkeypatch.chdir(vit_dir.parent)
    local = build_model(f"hf:{vit_dir.name}", num_classes=4)
    assert local.net.hub_id is None and local.info.source == f"hf pretrained ({vit_dir.name})"
    card = front_matter(None, {"data": {"name": "digits"}}, {"base_model": "me/vit"})
    assert card["base_model"] == "me/vit"
    assert model.net(torch.rand(2, 3, 32, 32)).shape == (2, 4)
