"""Diagnostics of robust fine-tuning: task-adaptation delay and failure signatures.

Task-adaptation delay. Ngnawé et al. (2025) define it as the first epoch at which validation
clean accuracy exceeds 5%. That threshold presumes many classes (their datasets have 100-257,
so chance is 0.4-1%). When chance accuracy is not far below 5% the definition would fire on
chance alone, so robustft asks for chance plus a margin::

    threshold = max(5%, chance + min(chance, 0.2 x (1 - chance)))      chance = 1 / classes

The margin is chance itself (the threshold is twice chance) unless that would ask for more than
a fifth of the way from chance to perfect accuracy, i.e. a chance-corrected accuracy (Cohen's
kappa, ``(acc - chance) / (1 - chance)``) above 0.2, the end of "slight" agreement on Landis
and Koch's scale. Twice chance alone is unreachable for 2 classes (100%) and nearly so for 3
(66.7%); with the cap every task can cross it: 60% for 2 classes, 46.7% for 3, 40% for 4, 36%
for 5, then twice chance from 6 classes on (33.3%; 20% for 10) and the paper's 5% for 40 or
more classes (unchanged).

Failure signatures (:func:`diagnose_run`), each a :class:`Finding` with a one-line suggestion.
Accuracies are fractions; "points" are percentage points (absolute, not relative):

* ``never_adapts``: validation clean accuracy never exceeds the adaptation threshold (the
  paper's Fig. 8 runs that never cross 5% in 50 epochs).
* ``collapse_on_ramp``: validation accuracy reached a peak above the threshold, then fell more
  than ``COLLAPSE_DROP`` = 20 points below it at an epoch trained with a larger eps than the
  peak (the paper's hard switches at T1 = T2 = 12 or 25 fall back to chance, Table 7). 20
  points is well above epoch-to-epoch noise on a few hundred validation images (one standard
  error of a 50% accuracy on 200 images is 3.5 points). A constant eps never triggers it.
* ``suboptimal_transfer``: test clean accuracy more than ``SUBOPTIMAL_TRANSFER_GAP`` = 10 points
  below standard fine-tuning (eps_g = 0, same backbone and dataset, mean over seeds). The paper
  calls RFT-fix suboptimal where it loses 10 points or more (its smallest drop at 4/255).
* ``no_robustness``: clean accuracy above ``NO_ROBUSTNESS_CLEAN`` = 50% but robust accuracy at
  the evaluation budget below ``NO_ROBUSTNESS_ROBUST`` = 2% (only for runs trained with
  eps_g > 0; a standard fine-tuned model is expected to have none).

Suggestions are computed from the ``eps`` column of the history (clean epochs = the schedule's
T1, first epoch at full eps = T2), so they hold for any schedule; positions are absolute epochs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from robustft.monitor import (
    DETECTOR,
    FGSM_KEY,
    PGD_KEY,
    DetectorRule,
    OverfitRule,
    best_pgd,
    detected_onset,
    overfit_onset,
)
from robustft.units import format_eps
from robustft.utils.text import percent

PAPER_THRESHOLD = 0.05
KAPPA_CAP = 0.2
"""The margin above chance is at most this share of ``1 - chance`` (see the module docstring)."""

THRESHOLD_TEXT = "max(5%, chance + min(chance, 20% of (1 - chance)))"
""":func:`adaptation_threshold` in words, for reports and the CLI."""


def adaptation_threshold(num_classes: int) -> float:
    """Validation accuracy (fraction) that counts as "adapting":
    ``max(5%, chance + min(chance, 0.2 x (1 - chance)))`` with ``chance = 1 / num_classes``
    (60% for 2 classes, 46.7% for 3, 20% for 10, 5% for 40 or more)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    chance = 1.0 / num_classes
    return max(PAPER_THRESHOLD, chance + min(chance, KAPPA_CAP * (1.0 - chance)))


def task_adaptation_delay(
    history: Sequence[Mapping[str, Any]], num_classes: int, key: str = "val_acc"
) -> int | None:
    """First (1-based) epoch whose validation clean accuracy exceeds the threshold.

    Args:
        history: per-epoch rows with ``epoch`` and ``key`` (accuracy as a fraction).
        num_classes: number of classes (sets the threshold, see the module docstring).

    Returns:
        The epoch number, or None if the model never adapted.
    """
    threshold = adaptation_threshold(num_classes)
    for row in history:
        value = row.get(key)
        if value is not None and float(value) > threshold:
            return int(row["epoch"])
    return None


COLLAPSE_DROP = 0.20
"""``collapse_on_ramp``: validation accuracy fell more than 20 points below its earlier peak."""

NO_ROBUSTNESS_ROBUST = 0.02
"""``no_robustness``: robust accuracy at the evaluation budget below 2% ..."""

NO_ROBUSTNESS_CLEAN = 0.50
"""... while clean accuracy is above 50%."""

SUBOPTIMAL_TRANSFER_GAP = 0.10
"""``suboptimal_transfer``: clean accuracy more than 10 points below standard fine-tuning."""

PAPER_HINGE = "hinge(t1=0.24,t2=0.74)"
PAPER_TRAIN_STEPS = 7  # the paper trains with APGD-CE, 7 steps
_EPS_TOL = 1e-9


@dataclass(frozen=True)
class Finding:
    """One diagnosis of a run.

    Attributes:
        code: stable identifier (``never_adapts``, ``catastrophic_overfitting``, ``co_detected``,
            ``collapse_on_ramp``, ``no_robustness``, ``suboptimal_transfer``).
        message: what was observed, with the numbers.
        suggestion: one concrete thing to try (config keys and schedule text).
    """

    code: str
    message: str
    suggestion: str

    def __str__(self) -> str:
        return f"{self.code}: {self.message}; {self.suggestion}"


@dataclass(frozen=True)
class EpsProfile:
    """The eps schedule a run actually trained with, read from the ``eps`` column.

    Attributes:
        epochs: number of epochs in the history.
        eps_max: largest training eps seen (pixel units).
        clean_epochs: leading epochs trained at eps = 0 (the schedule's T1 for a hinge).
        full_epoch: first epoch at ``eps_max`` (the hinge's T2), None if eps was always 0.
    """

    epochs: int
    eps_max: float
    clean_epochs: int
    full_epoch: int | None


@dataclass(frozen=True)
class Collapse:
    """A drop of validation accuracy below an earlier peak while eps had grown."""

    peak_epoch: int
    peak_acc: float
    low_epoch: int
    low_acc: float
    peak_eps: float
    low_eps: float

    @property
    def drop(self) -> float:
        """Peak minus low accuracy (fraction)."""
        return self.peak_acc - self.low_acc


def eps_profile(history: Sequence[Mapping[str, Any]]) -> EpsProfile:
    """Summarise the ``eps`` column of a training history (rows without ``eps`` count as 0)."""
    eps = [float(row.get("eps") or 0.0) for row in history]
    eps_max = max(eps, default=0.0)
    clean = next((i for i, e in enumerate(eps) if e > _EPS_TOL), len(eps))
    full = None
    if eps_max > _EPS_TOL:
        full = next(int(history[i]["epoch"]) for i, e in enumerate(eps) if e >= eps_max - _EPS_TOL)
    return EpsProfile(len(eps), eps_max, clean, full)


def find_collapse(
    history: Sequence[Mapping[str, Any]],
    num_classes: int,
    *,
    drop: float = COLLAPSE_DROP,
    key: str = "val_acc",
) -> Collapse | None:
    """The largest fall of validation accuracy below an earlier peak made while eps was higher.

    A collapse needs: a peak above the adaptation threshold (the run had adapted), a later epoch
    whose accuracy is more than ``drop`` below that peak, and a larger training eps at that
    later epoch than at the peak. A constant eps (RFT-fix) therefore never "collapses on the
    ramp", however noisy its accuracy.

    Returns:
        The largest such drop, or None.
    """
    threshold = adaptation_threshold(num_classes)
    peak: tuple[int, float, float] | None = None
    worst: Collapse | None = None
    for row in history:
        value = row.get(key)
        if value is None:
            continue
        epoch, acc, eps = int(row["epoch"]), float(value), float(row.get("eps") or 0.0)
        if peak is None or acc > peak[1]:
            peak = (epoch, acc, eps)
            continue
        grew = eps > peak[2] + _EPS_TOL
        if peak[1] > threshold and grew and peak[1] - acc > drop:
            found = Collapse(peak[0], peak[1], epoch, acc, peak[2], eps)
            if worst is None or found.drop > worst.drop:
                worst = found
    return worst


def _eps(value: float) -> str:
    return "0" if value <= _EPS_TOL else format_eps(value)


def _hinge(t1: int, t2: int) -> str:
    return f"hinge(t1={t1},t2={t2})"


def _is_uniform(schedule: str | None) -> bool:
    return schedule is not None and schedule.strip().startswith("uniform")


def later_ramp(profile: EpsProfile) -> tuple[int, int] | None:
    """A flatter hinge for a run whose ramp was too steep.

    Same T1 (a run without clean epochs gets the paper's T1 and at least its T2: 24% and 74% of
    the run); the ramp twice as long, and at least half of the epochs after T1 (the paper ramps
    over 25 of the 38 epochs after T1 = 12); the ramp end capped at the last epoch.

    Returns:
        ``(t1, t2)`` in absolute epochs, or None when the ramp already ends at the last epoch.
    """
    epochs = profile.epochs
    clean = profile.clean_epochs
    t1 = clean if clean > 0 else math.floor(0.24 * epochs + 0.5)
    full = profile.full_epoch if profile.full_epoch is not None else epochs
    length = max(2 * (full - clean), math.floor(0.5 * (epochs - t1) + 0.5), 2)
    t2 = min(epochs, t1 + length)
    if clean == 0:
        t2 = max(t2, math.floor(0.74 * epochs + 0.5))  # at least the paper's T2
    if t2 <= t1 or (t1 == clean and t2 <= full):
        return None
    return t1, t2


def _ramp_text(profile: EpsProfile) -> str:
    full = profile.full_epoch or profile.epochs
    eps = format_eps(profile.eps_max)
    if full - profile.clean_epochs <= 1:
        return f"hard switch to eps {eps} at epoch {full}"
    return f"ramp too steep (eps 0 -> {eps} over epochs {profile.clean_epochs + 1}-{full})"


def _flatter(profile: EpsProfile, what: str) -> str:
    ramp = later_ramp(profile)
    if ramp is None:
        longer = 2 * profile.epochs
        return (
            f"{what}; the ramp already ends at the last epoch: try train.epochs={longer} "
            "or a lower attack.eps"
        )
    return f"{what}: try {_hinge(*ramp)}"


def _never_adapts(
    history: Sequence[Mapping[str, Any]], num_classes: int, profile: EpsProfile, schedule: str
) -> Finding | None:
    if not history or task_adaptation_delay(history, num_classes) is not None:
        return None
    best = max((float(r["val_acc"]) for r in history if r.get("val_acc") is not None), default=0.0)
    message = (
        f"validation accuracy never exceeded {percent(adaptation_threshold(num_classes), 1)}% "
        f"(best {percent(best, 1)}% in {profile.epochs} epochs)"
    )
    if profile.eps_max <= _EPS_TOL:
        suggestion = "no eps was used either: check train.lr, the data and train.epochs"
    elif profile.clean_epochs == 0 or _is_uniform(schedule):
        suggestion = f"eps > 0 from epoch 1 ({schedule}) delays adaptation: try {PAPER_HINGE}"
    else:
        clean = profile.clean_epochs
        t1 = min(2 * clean, profile.epochs - 1)
        full = profile.full_epoch or profile.epochs
        t2 = min(profile.epochs, max(full, t1 + (full - clean)))
        if t1 <= clean:
            suggestion = f"no adaptation in {clean} clean epochs: train longer or raise train.lr"
        else:
            suggestion = (
                f"T1 too short (no adaptation in {clean} clean epochs): try {_hinge(t1, t2)} "
                "or a larger train.lr"
            )
    return Finding("never_adapts", message, suggestion)


def _collapse_on_ramp(
    history: Sequence[Mapping[str, Any]], num_classes: int, profile: EpsProfile, schedule: str
) -> Finding | None:
    found = find_collapse(history, num_classes)
    if found is None:
        return None
    message = (
        f"validation accuracy fell from {percent(found.peak_acc, 1)}% (epoch {found.peak_epoch}, "
        f"eps {_eps(found.peak_eps)}) to {percent(found.low_acc, 1)}% (epoch {found.low_epoch}, "
        f"eps {_eps(found.low_eps)}) as eps grew"
    )
    if _is_uniform(schedule):
        suggestion = f"uniform eps draws large budgets early: try {PAPER_HINGE}"
    else:
        suggestion = _flatter(profile, _ramp_text(profile))
    return Finding("collapse_on_ramp", message, suggestion)


def _no_robustness(
    result: Mapping[str, Any],
    profile: EpsProfile,
    attack_name: str | None,
    attack_steps: int | None,
) -> Finding | None:
    eps_g = float(result.get("eps_g") or 0.0)
    clean, robust = result.get("clean_accuracy"), result.get("robust_accuracy")
    if eps_g <= _EPS_TOL or clean is None or robust is None:
        return None  # standard fine-tuning is not expected to be robust
    if not (clean > NO_ROBUSTNESS_CLEAN and robust < NO_ROBUSTNESS_ROBUST):
        return None
    eval_eps = float(result.get("eval_eps_max") or eps_g)
    message = (
        f"clean {percent(clean, 1)}% but robust {percent(robust, 1)}% at {format_eps(eval_eps)}"
    )
    if eval_eps > eps_g * (1 + 1e-6):
        suggestion = (
            f"evaluated beyond the training eps_g {format_eps(eps_g)}: set "
            f"eval.eps_max={format_eps(eps_g)} or train with attack.eps={format_eps(eval_eps)}"
        )
    elif profile.epochs and profile.eps_max < eps_g * (1 - 1e-6):
        suggestion = (
            f"training eps only reached {format_eps(profile.eps_max)} of {format_eps(eps_g)}: "
            "end the ramp earlier (smaller t2) or train longer"
        )
    elif attack_name is not None and attack_name.startswith("fgsm"):
        suggestion = "FGSM training may have overfit catastrophically: try attack.name=pgd"
    elif attack_steps is not None and attack_steps < PAPER_TRAIN_STEPS:
        suggestion = (
            f"attack.steps={attack_steps} is weaker than the paper's training attack: try "
            f"attack.name=apgd-ce attack.steps={PAPER_TRAIN_STEPS}, and check the evaluation"
        )
    else:
        suggestion = "train longer at eps_g or with a larger attack.eps, and check the evaluation"
    return Finding("no_robustness", message, suggestion)


def _suboptimal_transfer(
    result: Mapping[str, Any], reference_clean: float | None, profile: EpsProfile, schedule: str
) -> Finding | None:
    eps_g = float(result.get("eps_g") or 0.0)
    clean = result.get("clean_accuracy")
    if reference_clean is None or clean is None or eps_g <= _EPS_TOL:
        return None
    gap = reference_clean - float(clean)
    if gap <= SUBOPTIMAL_TRANSFER_GAP + 1e-9:  # "more than", robust to float noise
        return None
    message = (
        f"clean {percent(clean, 1)}% is {percent(gap, 1)} points below standard fine-tuning "
        f"({percent(reference_clean, 1)}%)"
    )
    if profile.clean_epochs == 0 or _is_uniform(schedule):
        suggestion = f"eps > 0 from epoch 1 ({schedule}): try {PAPER_HINGE}"
    else:
        suggestion = _flatter(profile, "adapt before the robust phase")
    return Finding("suboptimal_transfer", message, suggestion)


def _catastrophic_overfitting(
    history: Sequence[Mapping[str, Any]], rule: OverfitRule, switched: Mapping[str, Any] | None
) -> Finding | None:
    history = _rows_trained(history, switched)  # monitor.action=switch rolled some back
    onset = overfit_onset(history, rule)
    if onset is None:
        return None
    row = next(r for r in history if int(r["epoch"]) == onset)
    pgd, fgsm = float(row[PGD_KEY]), float(row[FGSM_KEY])
    before = best_pgd([r for r in history if int(r["epoch"]) < onset]) or 0.0
    message = (
        f"at epoch {onset} (eps {_eps(float(row.get('eps', 0.0)))}) PGD accuracy collapsed to "
        f"{percent(pgd, 1)}% (best before: {percent(before, 1)}%) while FGSM accuracy stayed at "
        f"{percent(fgsm, 1)}%"
    )
    suggestion = (
        "train with attack.name=fgsm-rs (random start, step 1.25 eps) or pgd, a smaller or "
        "later-ramping eps, or set monitor.action=rollback to keep the last good epoch"
    )
    if switched:
        to = switched.get("to_attack")
        message += (
            f"; monitor.action=switch went back to epoch {switched.get('rolled_back_to')} and "
            f"trained on with {to}: the model evaluated is the switched one"
        )
        suggestion = (
            f"the epochs after the switch cost {to}'s passes (result.json cost.switch); to stay "
            "one-step, train with a smaller or later-ramping eps"
        )
    return Finding("catastrophic_overfitting", message, suggestion)


def _rows_trained(
    history: Sequence[Mapping[str, Any]], switched: Mapping[str, Any] | None
) -> list[Mapping[str, Any]]:
    """The rows of the epochs trained with the run's own attack: after ``monitor.action:
    switch``, those up to the epoch it went back to, then the ones it rolled back."""
    if not switched:
        return list(history)
    back = int(switched.get("rolled_back_to") or 0)
    discarded = list(switched.get("discarded") or [])
    return [*(r for r in history if int(r["epoch"]) <= back), *discarded]


def _co_detected(
    history: Sequence[Mapping[str, Any]], rule: DetectorRule, switched: Mapping[str, Any] | None
) -> Finding | None:
    rows = _rows_trained(history, switched)
    onset = detected_onset(rows, rule)
    if onset is None:
        return None
    row = next(r for r in rows if int(r["epoch"]) == onset)
    pgd, fgsm = float(row[PGD_KEY]), float(row[FGSM_KEY])
    monitored = [i for i, r in enumerate(rows) if r.get(FGSM_KEY) is not None]
    fired = sum(1 for i in monitored if rule.fires(rows[: i + 1]))
    message = (
        f"the training attack overfit: detected at epoch {onset} (eps "
        f"{_eps(float(row.get('eps', 0.0)))}), where on the monitor's sample PGD accuracy was "
        f"{percent(pgd, 1)}% against FGSM {percent(fgsm, 1)}% ({rule.describe()}; fired in "
        f"{fired} of {len(monitored)} monitored epochs): robustness to a multi-step attack is "
        "likely far below what FGSM suggests"
    )
    suggestion = (
        "train with a multi-step attack (attack.name=pgd attack.steps=7), or try "
        "attack.name=n-fgsm or a schedule that ramps eps from 0, and check the robustness curve"
    )
    if switched:
        suggestion = (
            f"the run switched to {switched.get('to_attack')} at epoch {switched.get('onset')}; "
            "to catch it earlier, train with a multi-step attack from the start"
        )
    return Finding("co_detected", message, suggestion)


def diagnose_run(
    history: Sequence[Mapping[str, Any]],
    result: Mapping[str, Any],
    *,
    num_classes: int,
    schedule_text: str | None = None,
    reference_clean: float | None = None,
    attack_name: str | None = None,
    attack_steps: int | None = None,
    overfit_rule: OverfitRule | None = None,
    detector: DetectorRule | None = None,
) -> list[Finding]:
    """Diagnose one finished run from its history (``metrics.jsonl`` rows) and ``result.json``.

    Signatures, in this order (see the module docstring for the thresholds):

    * ``never_adapts``: validation accuracy never above :func:`adaptation_threshold`;
    * ``catastrophic_overfitting``: the monitor's PGD accuracy collapsed while FGSM's stayed
      high (:mod:`robustft.monitor`, ``overfit_rule``; default thresholds when None); after
      ``monitor.action: switch`` from the rows it rolled back (``result["switched"]``), and
      the message says the run switched;
    * ``co_detected``: the early detector (:class:`robustft.monitor.DetectorRule`, ``detector``;
      :data:`robustft.monitor.DETECTOR` when None) flagged a monitored epoch, with its onset;
    * ``collapse_on_ramp``: :func:`find_collapse` found a drop of more than
      :data:`COLLAPSE_DROP` while eps grew;
    * ``suboptimal_transfer``: test clean accuracy more than :data:`SUBOPTIMAL_TRANSFER_GAP`
      below ``reference_clean`` (skipped when the run never adapted, which says more);
    * ``no_robustness``: clean above :data:`NO_ROBUSTNESS_CLEAN`, robust accuracy at the
      evaluation budget below :data:`NO_ROBUSTNESS_ROBUST` (runs with eps_g > 0 only).

    Args:
        history: per-epoch rows with ``epoch``, ``eps`` (pixel units) and ``val_acc`` (fraction).
        result: the run's ``result.json`` (``clean_accuracy``, ``robust_accuracy``, ``eps_g``,
            ``eval_eps_max``; fractions and pixel units).
        num_classes: number of classes (sets the adaptation threshold).
        schedule_text: the eps schedule as text (default ``result["schedule"]`` if present).
        reference_clean: mean clean accuracy (fraction) of standard fine-tuning (eps_g = 0) with
            the same backbone and dataset, or None to skip ``suboptimal_transfer``.
        attack_name: the training attack (``attack.name``), to tailor suggestions.
        attack_steps: its number of steps (``attack.steps``).

    Returns:
        The findings; empty for a healthy run.
    """
    schedule = schedule_text or str(result.get("schedule") or "the eps schedule")
    profile = eps_profile(history)
    never = _never_adapts(history, num_classes, profile, schedule)
    findings = [
        never,
        _catastrophic_overfitting(history, overfit_rule or OverfitRule(), result.get("switched")),
        _co_detected(history, detector or DETECTOR, result.get("switched")),
        _collapse_on_ramp(history, num_classes, profile, schedule),
        None if never else _suboptimal_transfer(result, reference_clean, profile, schedule),
        _no_robustness(result, profile, attack_name, attack_steps),
    ]
    return [f for f in findings if f is not None]
