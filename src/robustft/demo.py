"""The offline demo: standard fine-tuning vs RFT-fix vs Epsilon-Scheduling, same budget.

Setting (chosen to show suboptimal transfer on a 2-core CPU in a few minutes; see
``shared/probes.md`` for the hand-run probes behind it): EfficientNet-Lite0 with its ImageNet
weights, scikit-learn digits at 32x32 in a few-shot regime (20 training images per class), SGD
(lr 0.01, momentum 0.9, cosine, 1 warm-up epoch), 15 epochs, batch 32, eps_g = 16/255 (l-inf),
PGD with 3 steps of 2.5 * eps / 3 and a random start to train, and the robustness curve with
APGD-CE 10 steps on the 1/255 grid over the whole test split. Digits at 32x32 is an easy task:
at 8/255 with many training images it shows no suboptimal transfer, hence the few-shot regime
and the larger budget.
"""

from __future__ import annotations

from typing import Any

from robustft.config import RunConfig, build_config
from robustft.units import format_eps

DEMO_EPOCHS = 15
DEMO_EPS = 16 / 255

METHODS: dict[str, dict[str, Any]] = {
    "standard": {"schedule": "constant", "eps_zero": True},
    "fix": {"schedule": "constant", "eps_zero": False},
    "sched": {"schedule": "hinge(t1=0.24,t2=0.74)", "eps_zero": False},
}

METHOD_LABELS = {
    "standard": "standard FT (eps 0)",
    "fix": "RFT-fix (eps_g every epoch)",
    "sched": "Epsilon-Scheduling (hinge 24%/74%)",
}


def demo_base(epochs: int = DEMO_EPOCHS, eps: float = DEMO_EPS) -> dict[str, Any]:
    """The shared part of the three demo configs, as a config dict."""
    return {
        "model": {"name": "efficientnet_lite0", "mode": "full"},
        "data": {"name": "digits", "image_size": 32, "max_train_per_class": 20},
        "train": {
            "epochs": epochs,
            "batch_size": 32,
            "optimizer": "sgd",
            "lr": 0.01,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "warmup_epochs": 1,
            "seed": 0,
        },
        "attack": {"name": "pgd", "steps": 3, "rel_step": 0.8333, "eps": format_eps(eps)},
        "eval": {"attack": "apgd-ce", "steps": 10, "eps_max": format_eps(eps)},
    }


def demo_configs(epochs: int = DEMO_EPOCHS, eps: float = DEMO_EPS) -> list[RunConfig]:
    """One config per method (standard, fix, sched), identical except for the eps schedule."""
    configs = []
    for method, spec in METHODS.items():
        data = demo_base(epochs, eps)
        data["name"] = f"demo-{method}"
        data["attack"]["schedule"] = spec["schedule"]
        if spec["eps_zero"]:
            data["attack"]["eps"] = 0
        configs.append(build_config(data))
    return configs
