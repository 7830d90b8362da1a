"""Robust fine-tuning of your own model on your own data, from Python.

A small CNN and scikit-learn's digits as TensorDatasets; Epsilon-Scheduling to 8/255 with a
PGD-3 training attack; then the robustness curve, recomputed from the saved run. Run it twice
with the same --run-dir (or kill it and run it again): the second run resumes or reuses the
first.

    python examples/custom_model.py --run-dir runs/custom-example
"""

from __future__ import annotations

import argparse

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset

import robustft


class SmallCNN(nn.Module):
    """Maps (B, 3, 16, 16) images in [0, 1] to 10 logits; normalisation inside."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            robustft.Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
            nn.Conv2d(3, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        self.head = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def digits(train_size: int = 1400, size: int = 16) -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's digits, upsampled to size x size, 3 channels, in [0, 1]: the first
    ``train_size`` for training, the last 397 for testing."""
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = nn.functional.interpolate(x, size=(size, size), mode="bilinear").clamp(0, 1)
    x, y = x.repeat(1, 3, 1, 1), torch.tensor(data.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    return TensorDataset(x[:train_size], y[:train_size]), TensorDataset(x[1400:], y[1400:])


CONFIG = {
    "name": "custom-example",
    "train.epochs": 4,
    "train.batch_size": 64,
    "train.optimizer": "adamw",
    "train.lr": 3e-3,
    "train.warmup_epochs": 0,
    "attack.name": "pgd",
    "attack.steps": 3,
    "attack.eps": "8/255",
    "attack.schedule": "hinge(t1=0.25,t2=0.75)",
    "eval.steps": 5,
    "eval.max_examples": 128,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", default="runs/custom-example")
    parser.add_argument("--epochs", type=int, default=CONFIG["train.epochs"])
    parser.add_argument("--train-size", type=int, default=1400, help="training images (<= 1400)")
    args = parser.parse_args()
    train, test = digits(args.train_size)
    torch.manual_seed(0)
    model = SmallCNN()
    config = {**CONFIG, "train.epochs": args.epochs}
    result = robustft.fit(
        config, model=model, train_data=train, test_data=test, run_dir=args.run_dir, resume=True
    )
    print(
        f"clean {result['clean_accuracy']:.4f} robust {result['robust_accuracy']:.4f} "
        f"expected robustness {result['expected_robustness']:.4f}"
    )
    # the curve again, from the saved run, with the run's evaluation settings
    trained = robustft.load(args.run_dir, model=SmallCNN())
    curve = robustft.evaluate(
        trained, test, eps_max="8/255", attack="apgd-ce", steps=5, max_examples=128
    )
    print(f"re-evaluated: expected robustness {curve.expected_robustness:.4f}")
    print("accuracies", " ".join(f"{a:.4f}" for a in curve.accuracy))


if __name__ == "__main__":
    main()
