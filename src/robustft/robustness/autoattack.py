"""AutoAttack accuracy (Croce & Hein, ICML 2020): the RobustBench number, next to our curve.

The attacks are the reference implementation's (fra31/auto-attack), installed from PyPI as
``pyautoattack`` (``pip install 'robustft[autoattack]'``): its attack files are the reference's
line for line (only import paths, whitespace and logging differ; checked by diffing them against
the reference repository), its driver is a typed refactor of ``run_standard_evaluation``. The
versions are the reference's:

* ``standard``: APGD-CE (100 iterations, no restarts), APGD-T (targeted DLR, 9 target
  classes), FAB-T (9 target classes), Square (5000 queries), each attacking the examples still
  correct after the previous ones;
* ``plus``: APGD-CE and APGD-DLR with 5 restarts, FAB (5 restarts), Square, APGD-T, FAB-T.

With fewer than 10 classes the targeted attacks use every other class (K - 1 targets) instead
of 9, which the reference cannot do (its 9 targets index past the logits); targeted DLR needs
at least 4 classes, so AutoAttack refuses fewer.

The model is attacked in eval mode on ``[0, 1]`` images (its normalisation is inside it), at
one eps in the run's norm, on the same seeded, stratified sample of the test split as the
robustness curve (:mod:`robustft.subset`), in batches. The reference seeds torch's global RNG
in every attack; it is restored afterwards. The reference's own checks (randomised or dynamic
defenses, probabilities as outputs, Square breaking more than the gradient attacks) are kept
as warnings.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from robustft.attacks.base import crafting_mode
from robustft.config import AUTOATTACK_VERSIONS
from robustft.errors import UserError
from robustft.subset import subset
from robustft.utils.device import model_device

_logger = logging.getLogger(__name__)

NORMS = {"linf": "Linf", "l2": "L2"}  # robustft's names -> the reference's
MIN_CLASSES = 4  # targeted DLR reads the 4th largest logit
REFERENCE_TARGETS = 9


@dataclass(frozen=True)
class AutoAttackResult:
    """What one AutoAttack evaluation measured.

    Attributes:
        version: ``standard`` or ``plus``.
        norm, eps: the threat model (robustft's norm name, eps in pixel units).
        accuracy: fraction of the examples still correctly classified after every attack.
        clean_accuracy: fraction correct before any attack (same examples).
        n: examples evaluated; ``examples``: which (:class:`robustft.subset.Selection`).
        seed: the attacks' seed.
        seconds: wall time.
        correct: per-example result after the attacks ('1' = still correct), in the sample's
            order (the curve's ``correct`` rows use the same order on the same sample).
        attacks: the attacks run, in order; ``target_classes``: targets of APGD-T / FAB-T.
        implementation: the package and version that ran the attacks.
        warnings: the reference's checks that fired.
    """

    version: str
    norm: str
    eps: float
    accuracy: float
    clean_accuracy: float
    n: int
    seed: int
    seconds: float
    correct: str
    examples: dict[str, Any]
    attacks: tuple[str, ...]
    target_classes: int
    implementation: str
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["attacks"], out["warnings"] = list(self.attacks), list(self.warnings)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AutoAttackResult:
        names = set(cls.__dataclass_fields__)
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs["attacks"] = tuple(kwargs.get("attacks", ()))
        kwargs["warnings"] = tuple(kwargs.get("warnings", ()))
        return cls(**kwargs)

    def label(self) -> str:
        """``AutoAttack (standard) at 8/255``: how tables and summaries name the number."""
        return label(self.version, self.eps, self.norm)


def label(version: str, eps: float, norm: str) -> str:
    """The label of an AutoAttack number (see :meth:`AutoAttackResult.label`)."""
    from robustft.units import format_eps

    return f"AutoAttack ({version}) at {format_eps(eps, norm)}"


def reference() -> Any:
    """The reference implementation's package (``pyautoattack``).

    Raises:
        UserError: it is not installed.
    """
    try:
        import pyautoattack
    except ImportError:
        raise UserError(
            "AutoAttack needs the reference implementation: pip install 'robustft[autoattack]' "
            "(the package pyautoattack)"
        ) from None
    return pyautoattack


class _WarningsCollected(logging.Handler):
    """Collects the reference's check warnings (its logger ``auto-attack``), once each."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = " ".join(record.getMessage().split())
        if text not in self.messages:
            self.messages.append(text)


def _attacker(
    model: nn.Module, version: str, norm: str, eps: float, seed: int, classes: int
) -> Any:
    """The reference's ``AutoAttack`` for ``version``, targets capped at ``classes - 1``."""
    package = reference()
    device = model_device(model)
    attacker = package.AutoAttack(
        model, norm=NORMS[norm], eps=eps, version=version, seed=seed, device=device
    )
    targets = min(REFERENCE_TARGETS, classes - 1)
    attacker.apgd_targeted.n_target_classes = targets
    attacker.fab.n_target_classes = targets
    return attacker


def check_classes(num_classes: int) -> None:
    """Refuse a task AutoAttack cannot attack (fewer than :data:`MIN_CLASSES` classes)."""
    if num_classes < MIN_CLASSES:
        raise UserError(
            f"AutoAttack needs at least {MIN_CLASSES} classes (its targeted DLR loss reads the "
            f"4th largest logit); this task has {num_classes}: report the APGD-CE curve instead"
        )


def autoattack_accuracy(
    model: nn.Module,
    data: Dataset,
    *,
    eps: float,
    norm: str = "linf",
    version: str = "standard",
    num_classes: int,
    max_examples: int | None = None,
    seed: int = 0,
    batch_size: int = 128,
    progress: Callable[[int, int], None] | None = None,
) -> AutoAttackResult:
    """AutoAttack accuracy of ``model`` on ``data`` at ``eps`` (see the module docstring).

    Args:
        model: maps ``[0, 1]`` images to logits; attacked in eval mode, restored afterwards.
        data: a map-style dataset of (image, label).
        eps: perturbation size in pixel units (> 0), in ``norm`` (``linf`` or ``l2``).
        version: ``standard`` or ``plus``.
        num_classes: classes of the task (>= 4).
        max_examples: a seeded, stratified sample of N examples (the robustness curve's, for
            the same ``seed``), all when None.
        seed: the attacks' seed and the sample's.
        batch_size: examples per call of the reference's evaluation.
        progress: called as ``progress(done, total)`` after each batch.

    Raises:
        UserError: unknown version or norm, eps <= 0, fewer than 4 classes, empty data, or
            the reference package missing.
    """
    if version not in AUTOATTACK_VERSIONS:
        raise UserError(
            f"AutoAttack version {version!r}: use one of {', '.join(AUTOATTACK_VERSIONS)}"
        )
    if norm not in NORMS:
        raise UserError(f"AutoAttack norm {norm!r}: use one of {', '.join(NORMS)}")
    if not eps > 0:
        raise UserError(f"AutoAttack eps must be > 0, got {eps}")
    check_classes(num_classes)
    package = reference()
    sample, chosen = subset(data, max_examples, seed)
    total = len(sample)  # type: ignore[arg-type]
    if total == 0:
        raise UserError("AutoAttack: the evaluation data is empty")
    loader = DataLoader(sample, batch_size=batch_size, shuffle=False, num_workers=0)
    collected = _WarningsCollected()
    reference_logger = logging.getLogger("auto-attack")
    reference_logger.addHandler(collected)
    start = time.perf_counter()
    clean: list[torch.Tensor] = []
    robust: list[torch.Tensor] = []
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices), crafting_mode(model):
            attacker = _attacker(model, version, norm, eps, seed, num_classes)
            device = attacker.device
            done = 0
            for x, y in loader:
                # NCHW inputs even for a channels_last model (its convolutions compute in
                # channels_last all the same): the reference flattens them with .view()
                x, y = x.to(device).float(), y.to(device)
                with torch.no_grad():
                    clean.append((model(x).argmax(1) == y).cpu())
                x_adv, _ = attacker.run_standard_evaluation(x, y, batch_size=len(y))
                with torch.no_grad():
                    robust.append((model(x_adv).argmax(1) == y).cpu() & clean[-1])
                done += len(y)
                if progress is not None:
                    progress(done, total)
    finally:
        reference_logger.removeHandler(collected)
    correct = torch.cat(robust)
    return AutoAttackResult(
        version=version,
        norm=norm,
        eps=float(eps),
        accuracy=float(correct.float().mean()),
        clean_accuracy=float(torch.cat(clean).float().mean()),
        n=total,
        seed=seed,
        seconds=round(time.perf_counter() - start, 3),
        correct="".join("1" if c else "0" for c in correct.tolist()),
        examples=chosen.to_dict(),
        attacks=tuple(attacker.attacks_to_run),
        target_classes=int(attacker.apgd_targeted.n_target_classes),
        implementation=f"pyautoattack {package.__version__} (fra31/auto-attack)",
        warnings=tuple(collected.messages),
    )
