"""Shared fixtures: tiny models and data, all offline and fast on 2 CPU cores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from robustft.callbacks import Callbacks

torch.set_num_threads(2)


class StopAfterFirstEpoch(Callbacks):
    """Interrupts a run right after its epoch-1 checkpoint, as a kill there would."""

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        raise KeyboardInterrupt


class TinyCNN(nn.Module):
    """A small CNN for (B, 3, 16, 16) images in [0, 1] with normalisation inside."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.25, 0.25, 0.25]).view(1, 3, 1, 1))
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Dropout(0.1),
        )
        self.head = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features((x - self.mean) / self.std))


def digits_tensors(size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled digits as (N, 3, size, size) in [0, 1] and (N,) labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x.clamp(0, 1).repeat(1, 3, 1, 1)
    return x.contiguous(), torch.tensor(digits.target, dtype=torch.long)


@pytest.fixture(scope="session")
def digits_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test): a fixed 1297 / 500 split of the digits."""
    x, y = digits_tensors()
    perm = torch.from_numpy(np.random.default_rng(0).permutation(len(x)))
    x, y = x[perm], y[perm]
    return x[:-500], y[:-500], x[-500:], y[-500:]


@pytest.fixture(scope="session")
def trained_model(digits_data: tuple[torch.Tensor, ...]) -> nn.Module:
    """TinyCNN trained (clean) on digits for a few seconds; >90% clean test accuracy."""
    x_train, y_train, _, _ = digits_data
    torch.manual_seed(0)
    model = TinyCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(8):
        perm = torch.randperm(len(x_train), generator=gen)
        for i in range(0, len(x_train), 64):
            idx = perm[i : i + 64]
            loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return model


@pytest.fixture
def tiny_model() -> nn.Module:
    """An untrained TinyCNN (fresh per test, seeded)."""
    torch.manual_seed(0)
    return TinyCNN()


@pytest.fixture
def tiny_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """8 random images (8, 3, 16, 16) in [0, 1] and labels in [0, 10)."""
    gen = torch.Generator().manual_seed(0)
    return torch.rand(8, 3, 16, 16, generator=gen), torch.randint(0, 10, (8,), generator=gen)


# A tiny BERT-style text model saved as on the Hub (hf:<folder>): the text tests' backbone.
WORDS = [
    "the",
    "a",
    "drug",
    "worked",
    "well",
    "for",
    "my",
    "pain",
    "it",
    "made",
    "me",
    "sick",
    "no",
    "side",
    "effects",
    "great",
    "bad",
]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
LAYERS = 3  # transformer layers of the tiny BERT


def write_tokenizer(folder: Path) -> None:
    """A BERT-style WordPiece tokenizer.json over :data:`WORDS` ([CLS] text [SEP])."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    tokenizer = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer.add_special_tokens(SPECIALS)
    tokenizer.save(str(folder / "tokenizer.json"))


def save_tiny_bert(folder: Path, *, max_length: int = 40) -> Path:
    """Save a 3-layer BERT (hidden 16, random weights from seed 0) and its WordPiece tokenizer
    over :data:`WORDS` into ``folder``; returns ``folder``."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(SPECIALS) + len(WORDS),
        hidden_size=16,
        num_hidden_layers=LAYERS,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=max_length,
        pad_token_id=0,
    )
    BertModel(config).save_pretrained(folder)
    write_tokenizer(folder)
    return folder
