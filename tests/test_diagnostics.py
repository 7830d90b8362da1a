"""Failure signatures of robust fine-tuning on synthetic training histories."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import pytest

from robustft.diagnostics import (
    PAPER_HINGE,
    EpsProfile,
    Finding,
    diagnose_run,
    eps_profile,
    find_collapse,
    later_ramp,
)

EPS = 8 / 255


def history(acc: Sequence[float], eps: Sequence[float]) -> list[dict[str, Any]]:
    """Rows as in metrics.jsonl: 1-based epochs, val_acc fractions, eps in pixel units."""
    assert len(acc) == len(eps)
    return [{"epoch": i + 1, "eps": e, "val_acc": a} for i, (a, e) in enumerate(zip(acc, eps))]


def hinge_eps(epochs: int, t1: int, t2: int, eps: float = EPS) -> list[float]:
    """The library's per-epoch hinge: 0 up to t1, linear, eps from t2 on."""
    out = []
    for t in range(1, epochs + 1):
        alpha = 0.0 if t <= t1 else 1.0 if t >= t2 else (t - t1) / (t2 - t1)
        out.append(alpha * eps)
    return out


def rising(epochs: int, start: float = 0.1, end: float = 0.9) -> list[float]:
    return [start + (end - start) * min(1.0, i / (epochs / 2)) for i in range(epochs)]


def result(
    clean: float = 0.85, robust: float = 0.3, eps_g: float = EPS, eval_eps: float | None = None
) -> dict[str, Any]:
    return {
        "clean_accuracy": clean,
        "robust_accuracy": robust,
        "eps_g": eps_g,
        "eval_eps_max": eps_g if eval_eps is None else eval_eps,
    }


def codes(findings: Sequence[Finding]) -> list[str]:
    return [f.code for f in findings]


# ----------------------------------------------------------------------------- healthy runs


def test_healthy_scheduled_run_has_no_findings() -> None:
    h = history(rising(20), hinge_eps(20, 5, 15))
    found = diagnose_run(
        h, result(0.85, 0.3), num_classes=10, schedule_text="hinge(t1=5,t2=15)", reference_clean=0.9
    )
    assert found == []


def test_standard_fine_tuning_is_not_flagged_for_zero_robustness() -> None:
    h = history(rising(10), [0.0] * 10)
    found = diagnose_run(h, result(0.9, 0.0, eps_g=0.0, eval_eps=EPS), num_classes=10)
    assert found == []


def test_noisy_fix_run_does_not_collapse_on_ramp() -> None:
    # constant eps: a big drop is noise or overfitting, not a ramp collapse
    acc = [0.1, 0.3, 0.6, 0.85, 0.5, 0.8, 0.82, 0.84]
    h = history(acc, [EPS] * len(acc))
    assert find_collapse(h, 10) is None
    assert "collapse_on_ramp" not in codes(diagnose_run(h, result(0.8), num_classes=10))


def test_small_dip_during_ramp_is_not_a_collapse() -> None:
    acc = [0.3, 0.6, 0.85, 0.9, 0.8, 0.75, 0.78, 0.8, 0.82, 0.84]  # 15-point dip < 20
    h = history(acc, hinge_eps(10, 3, 8))
    assert find_collapse(h, 10) is None


# ----------------------------------------------------------------------------- never adapts


def test_never_adapts_under_fix_suggests_the_paper_hinge() -> None:
    h = history([0.1, 0.12, 0.15, 0.11, 0.18, 0.14], [EPS] * 6)
    found = diagnose_run(h, result(0.15, 0.1), num_classes=10, schedule_text="constant")
    assert codes(found) == ["never_adapts"]
    assert "20.0%" in found[0].message and "best 18.0%" in found[0].message
    assert PAPER_HINGE in found[0].suggestion and "constant" in found[0].suggestion


def test_never_adapts_with_a_short_t1_suggests_a_longer_one() -> None:
    h = history([0.1] * 20, hinge_eps(20, 3, 10))
    found = diagnose_run(h, result(0.1, 0.1), num_classes=10, schedule_text="hinge(t1=3,t2=10)")
    assert codes(found) == ["never_adapts"]
    assert found[0].suggestion.startswith("T1 too short (no adaptation in 3 clean epochs)")
    assert "hinge(t1=6,t2=13)" in found[0].suggestion  # T1 doubled, ramp length kept


def test_never_adapts_without_eps_points_at_optimisation() -> None:
    found = diagnose_run(history([0.1] * 5, [0.0] * 5), result(0.1, 0.0, eps_g=0.0), num_classes=10)
    assert codes(found) == ["never_adapts"]
    assert "train.lr" in found[0].suggestion


def test_never_adapts_is_not_also_reported_as_suboptimal_transfer() -> None:
    h = history([0.02] * 6, [EPS] * 6)
    found = diagnose_run(h, result(0.02, 0.01), num_classes=200, reference_clean=0.9)
    assert codes(found) == ["never_adapts"]  # 5% threshold with 200 classes


def test_many_classes_use_the_paper_threshold() -> None:
    h = history([0.03, 0.04, 0.06], [EPS] * 3)
    assert diagnose_run(h, result(0.06, 0.03), num_classes=200) == []
    assert codes(diagnose_run(h, result(0.06, 0.03), num_classes=10)) == ["never_adapts"]


# ----------------------------------------------------------------------------- collapse on ramp


def test_hard_switch_collapse() -> None:
    acc = [0.3, 0.6, 0.8, 0.85, 0.86] + [0.12] * 15  # back to chance after the switch
    eps = hinge_eps(20, 5, 6)
    found = diagnose_run(
        history(acc, eps), result(0.12, 0.1), num_classes=10, schedule_text="hinge(t1=5,t2=5)"
    )
    assert "collapse_on_ramp" in codes(found)
    collapse = next(f for f in found if f.code == "collapse_on_ramp")
    assert "86.0% (epoch 5, eps 0) to 12.0% (epoch 6, eps 8/255)" in collapse.message
    # same T1, ramp over half the remaining 15 epochs
    assert collapse.suggestion == "hard switch to eps 8/255 at epoch 6: try hinge(t1=5,t2=13)"


def test_steep_ramp_collapse_suggests_a_later_t2() -> None:
    acc = [0.3, 0.6, 0.8, 0.85, 0.9, 0.88, 0.7, 0.6, 0.55, 0.6, 0.62, 0.65, 0.66, 0.67, 0.68, 0.7]
    eps = hinge_eps(16, 5, 9)
    found = find_collapse(history(acc, eps), 10)
    assert found is not None
    assert (found.peak_epoch, found.low_epoch) == (5, 9)
    assert found.drop == pytest.approx(0.35)
    findings = diagnose_run(
        history(acc, eps), result(0.7, 0.2), num_classes=10, schedule_text="hinge(t1=5,t2=9)"
    )
    collapse = next(f for f in findings if f.code == "collapse_on_ramp")
    assert collapse.suggestion == (
        "ramp too steep (eps 0 -> 8/255 over epochs 6-9): try hinge(t1=5,t2=13)"
    )


def test_collapse_with_a_ramp_to_the_last_epoch_suggests_more_epochs() -> None:
    acc = [0.5, 0.8, 0.9, 0.9, 0.6, 0.5, 0.4, 0.4]
    found = diagnose_run(history(acc, hinge_eps(8, 2, 8)), result(0.4, 0.1), num_classes=10)
    collapse = next(f for f in found if f.code == "collapse_on_ramp")
    assert "train.epochs=16" in collapse.suggestion and "attack.eps" in collapse.suggestion


def test_collapse_under_uniform_eps_suggests_the_hinge() -> None:
    acc = [0.5, 0.8, 0.9, 0.3, 0.5]
    eps = [0.1 * EPS, 0.0, 0.2 * EPS, 0.9 * EPS, 0.5 * EPS]
    found = diagnose_run(
        history(acc, eps), result(0.5, 0.2), num_classes=10, schedule_text="uniform"
    )
    collapse = next(f for f in found if f.code == "collapse_on_ramp")
    assert PAPER_HINGE in collapse.suggestion


def test_collapse_needs_an_adapted_peak() -> None:
    acc = [0.1, 0.15, 0.19, 0.0]  # never above 20% for 10 classes
    assert find_collapse(history(acc, hinge_eps(4, 1, 3)), 10) is None


# ----------------------------------------------------------------------------- no robustness


def test_no_robustness_with_a_weak_training_attack() -> None:
    h = history(rising(10), [EPS] * 10)
    found = diagnose_run(h, result(0.8, 0.01), num_classes=10, attack_name="pgd", attack_steps=3)
    assert codes(found) == ["no_robustness"]
    assert found[0].message == "clean 80.0% but robust 1.0% at 8/255"
    assert "attack.name=apgd-ce attack.steps=7" in found[0].suggestion
    paper = diagnose_run(
        h, result(0.8, 0.01), num_classes=10, attack_name="apgd-ce", attack_steps=7
    )
    assert "attack.steps" not in paper[0].suggestion


def test_no_robustness_after_fgsm_training() -> None:
    h = history(rising(10), [EPS] * 10)
    found = diagnose_run(h, result(0.8, 0.0), num_classes=10, attack_name="fgsm", attack_steps=1)
    assert "attack.name=pgd" in found[0].suggestion


def test_no_robustness_when_evaluated_beyond_the_training_eps() -> None:
    h = history(rising(10), [4 / 255] * 10)
    found = diagnose_run(h, result(0.8, 0.0, eps_g=4 / 255, eval_eps=16 / 255), num_classes=10)
    assert "eval.eps_max=4/255" in found[0].suggestion


def test_no_robustness_when_the_ramp_never_reached_eps_g() -> None:
    h = history(rising(10), [i * 0.5 * EPS / 9 for i in range(10)])
    found = diagnose_run(h, result(0.8, 0.01), num_classes=10)
    assert "only reached 4/255 of 8/255" in found[0].suggestion


@pytest.mark.parametrize(("clean", "robust"), [(0.8, 0.03), (0.45, 0.0)])
def test_no_robustness_thresholds(clean: float, robust: float) -> None:
    h = history(rising(10), [EPS] * 10)
    assert diagnose_run(h, result(clean, robust), num_classes=10) == []


# ----------------------------------------------------------------------------- suboptimal transfer


def test_suboptimal_transfer_against_standard_reference() -> None:
    h = history(rising(10, end=0.7), [EPS] * 10)
    found = diagnose_run(
        h, result(0.7, 0.3), num_classes=10, schedule_text="constant", reference_clean=0.9
    )
    assert codes(found) == ["suboptimal_transfer"]
    assert found[0].message == "clean 70.0% is 20.0 points below standard fine-tuning (90.0%)"
    assert PAPER_HINGE in found[0].suggestion


def test_suboptimal_transfer_with_a_hinge_suggests_a_flatter_ramp() -> None:
    h = history(rising(20, end=0.7), hinge_eps(20, 5, 8))
    found = diagnose_run(h, result(0.7, 0.3), num_classes=10, reference_clean=0.85)
    assert codes(found) == ["suboptimal_transfer"]
    assert found[0].suggestion == "adapt before the robust phase: try hinge(t1=5,t2=13)"


def test_suboptimal_transfer_threshold_and_standard_runs() -> None:
    h = history(rising(10), [EPS] * 10)
    assert diagnose_run(h, result(0.81, 0.3), num_classes=10, reference_clean=0.9) == []
    standard = history(rising(10), [0.0] * 10)
    r = result(0.6, 0.0, eps_g=0.0)
    assert diagnose_run(standard, r, num_classes=10, reference_clean=0.9) == []


# ----------------------------------------------------------------------------- helpers


def test_eps_profile_reads_the_hinge_back() -> None:
    profile = eps_profile(history([0.5] * 50, hinge_eps(50, 12, 37)))
    assert profile == EpsProfile(
        epochs=50, eps_max=pytest.approx(EPS), clean_epochs=12, full_epoch=37
    )
    assert eps_profile(history([0.5] * 3, [0.0] * 3)).full_epoch is None
    assert eps_profile([]).epochs == 0


def test_later_ramp() -> None:
    assert later_ramp(EpsProfile(50, EPS, 12, 20)) == (12, 31)  # half of the 38 epochs after T1
    assert later_ramp(EpsProfile(50, EPS, 12, 37)) == (12, 50)  # doubled, capped at the end
    assert later_ramp(EpsProfile(50, EPS, 12, 50)) is None
    assert later_ramp(EpsProfile(50, EPS, 0, 1)) == (12, 37)  # no clean phase: the paper's T1


def test_finding_is_frozen_and_prints_one_line() -> None:
    finding = Finding("never_adapts", "it did not", "try hinge")
    assert str(finding) == "never_adapts: it did not; try hinge"
    with pytest.raises(dataclasses.FrozenInstanceError):
        finding.code = "x"  # type: ignore[misc]
