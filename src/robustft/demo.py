"""The offline demos: standard fine-tuning vs RFT-fix vs Epsilon-Scheduling, same budget.

Setting (chosen to show suboptimal transfer on a 2-core CPU in a few minutes; see
``shared/probes.md`` for the hand-run probes behind it): EfficientNet-Lite0 with its ImageNet
weights, scikit-learn digits at 32x32 in a few-shot regime (20 training images per class), SGD
(lr 0.01, momentum 0.9, cosine, 1 warm-up epoch), 15 epochs, batch 32, eps_g = 16/255 (l-inf),
PGD with 3 steps of 2.5 * eps / 3 and a random start to train, and the robustness curve with
APGD-CE 10 steps on the 1/255 grid over the whole test split. Digits at 32x32 is an easy task:
at 8/255 with many training images it shows no suboptimal transfer, hence the few-shot regime
and the larger budget.

The text demo (``robustft demo --text``, :func:`text_demo_configs`) asks the same question of a
text backbone: all-MiniLM-L6-v2 (pip package) fully fine-tuned on the drug reviews, positive vs
negative (the 54 + 36 neutral reviews left out: at 9% of the data the three-class task is, in a
few epochs, a two-class task with a rare third class that no method learns), 100 training
reviews per class, 64 tokens (the median review is 85 words: the first 64 tokens carry the
opening sentences), AdamW (lr 1e-4 for the encoder, 1e-3 for the new head: the encoder's usual
fine-tuning rate, the head's ten times), 6 epochs, batch 16, eps_g 0.3 in the l2-token threat
model (each token's word embedding moved by up to 30% of the mean token-embedding norm), PGD
with 2 steps of 0.75 eps to train, and APGD-CE 5 steps over eighths of eps_g on 100 test
reviews to evaluate. Every choice that shrinks it (subset, length, steps, examples) shrinks cost,
not the comparison: the three methods differ only in the eps schedule.
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


TEXT_DEMO_EPOCHS = 6
TEXT_DEMO_EPS = 0.3


def text_demo_base(epochs: int = TEXT_DEMO_EPOCHS, eps: float = TEXT_DEMO_EPS) -> dict[str, Any]:
    """The shared part of the three text demo configs (module docstring), as a config dict."""
    return {
        "model": {"name": "minilm", "mode": "full"},
        "data": {
            "name": "drugreview",
            "max_length": 64,
            "labels": ["negative", "positive"],
            "bad_rows": "skip",
            "max_train_per_class": 100,
        },
        "train": {
            "epochs": epochs,
            "batch_size": 16,
            "optimizer": "adamw",
            "lr": 1e-4,
            "head_lr": 1e-3,
            "weight_decay": 0.01,
            "warmup_epochs": 1,
            "seed": 0,
        },
        "attack": {"name": "pgd", "norm": "l2-token", "steps": 2, "rel_step": 0.75, "eps": eps},
        "eval": {"attack": "apgd-ce", "steps": 5, "eps_max": eps, "max_examples": 100},
    }


def demo_configs(
    epochs: int | None = None, eps: float | None = None, *, text: bool = False
) -> list[RunConfig]:
    """One config per method (standard, fix, sched), identical except for the eps schedule;
    ``text``: the text demo's (:func:`text_demo_base`) instead of the image demo's. ``epochs``
    and ``eps`` default to the demo's own (:data:`DEMO_EPOCHS` and :data:`DEMO_EPS`, or
    :data:`TEXT_DEMO_EPOCHS` and :data:`TEXT_DEMO_EPS`)."""
    base = text_demo_base if text else demo_base
    epochs = epochs or (TEXT_DEMO_EPOCHS if text else DEMO_EPOCHS)
    eps = eps if eps is not None else (TEXT_DEMO_EPS if text else DEMO_EPS)
    configs = []
    for method, spec in METHODS.items():
        data = base(epochs, eps)
        data["name"] = f"demo-{'text-' if text else ''}{method}"
        data["attack"]["schedule"] = spec["schedule"]
        if spec["eps_zero"]:
            data["attack"]["eps"] = 0
        configs.append(build_config(data))
    return configs
