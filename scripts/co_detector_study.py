#!/usr/bin/env python
"""Choose the early catastrophic-overfitting detector's rule
(:class:`robustft.monitor.DetectorRule`) by leave-one-setting-out on labelled runs, and report
its precision and recall on the held-out settings (issue 22).

    python scripts/co_detector_study.py SWEEP_OR_RUN_DIR [...] [--fgsm-high 0.5] [--json OUT]

Runs: every directory below the arguments that holds ``result.json`` and ``metrics.jsonl``.

Setting: data size x eps x mode (``data.name``, ``data.max_train_per_class``, ``attack.eps``,
``model.mode``), written ``digits:100:8/255:full``. The runs of a setting are compared with its
PGD-7 run (``attack.name: pgd``, ``attack.steps: 7``; the mean when several seeds), the
reference; ``--reference SETTING=ACC`` gives it for a setting whose PGD-7 run is not among the
runs (a run of the same config recorded elsewhere).

Label: a run is **CO** when its final robust accuracy at eps_g under the independent
evaluation curve (``robustness.json``) is below half of the reference's while the monitor's FGSM
accuracy of its last monitored epoch stays at or above ``--fgsm-high`` (it resists the attack it
trained on); PGD-7 runs and every other run are **not CO**. A run whose setting has no PGD-7 run
is unlabelled (listed, not used).

Signals (``metrics.jsonl``, :data:`robustft.monitor.SIGNALS`): ``co_pgd_fgsm_ratio`` (low at
CO), ``co_fgsm_above_clean`` (high), ``co_gap`` (FGSM minus PGD, high) and ``co_grad_align``
(low); rows of older runs without the derived keys get them from ``co_pgd_acc``,
``co_fgsm_acc`` and ``co_clean_acc``. A run is flagged by a rule when it fires at any
monitored epoch of the epochs it trained with its own attack (before a ``monitor.action:
switch``).

Rule forms: one signal, its direction, a floor on the monitor's FGSM accuracy (``min_fgsm`` in
0, 0.25, 0.5) and the number of consecutive monitored epochs that must match (1 to 4). On a set
of runs, a form's threshold is the one that maximises balanced accuracy (mean of recall and
specificity), the midpoint of the widest such interval between consecutive run values and the
signal's bounds; among forms, the highest balanced accuracy wins, then the widest interval
relative to the signal's spread, then the higher FGSM floor, then the fewest epochs.
Leave-one-setting-out: for each setting, the form and threshold are chosen on the other
settings' runs (a fold whose training runs lack either label is skipped) and applied to the
held-out setting's runs; the held-out predictions of every fold give precision and recall. Each
form is also scored alone the same way (its threshold per fold). The rule to ship: the form
chosen by most folds, at the median of its fold thresholds.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from robustft.monitor import (
    ABOVE_CLEAN_KEY,
    ALIGN_KEY,
    CLEAN_KEY,
    FGSM_KEY,
    GAP_KEY,
    PGD_KEY,
    RATIO_KEY,
    SIGNALS,
    DetectorRule,
    derived_signals,
    detected_onset,
)
from robustft.run.rundir import RunDir
from robustft.units import format_eps, parse_eps

BELOW = {RATIO_KEY: True, ABOVE_CLEAN_KEY: False, GAP_KEY: False, ALIGN_KEY: True}
"""Each signal's direction at catastrophic overfitting: True = low values flag."""
BOUNDS = {
    RATIO_KEY: (0.0, 1.0),
    ABOVE_CLEAN_KEY: (-1.0, 1.0),
    GAP_KEY: (-1.0, 1.0),
    ALIGN_KEY: (-1.0, 1.0),
}
"""Each signal's range: the outermost thresholds tried."""
MIN_FGSM = (0.0, 0.25, 0.5)
EPOCHS = (1, 2, 3, 4)
SHORT = {
    RATIO_KEY: "pgd/fgsm",
    ABOVE_CLEAN_KEY: "fgsm-clean",
    GAP_KEY: "fgsm-pgd",
    ALIGN_KEY: "align",
}
_TOL = 1e-9


@dataclass(frozen=True)
class LabelledRun:
    """One run: identity, setting, outcome and the monitored rows it trained with."""

    path: str
    method: str
    setting: str
    reference: bool  # the setting's PGD-7 run
    robust: float  # accuracy at eps_g under the final curve
    final_fgsm: float | None  # the last monitored epoch's FGSM accuracy
    rows: tuple[dict[str, Any], ...]
    label: bool | None = None  # CO; None: no reference in the setting
    reference_robust: float | None = None


@dataclass(frozen=True)
class Choice:
    """A rule chosen on some runs, with its training score and margin."""

    rule: DetectorRule
    score: float  # balanced accuracy on the runs it was chosen on
    margin: float  # the width of the threshold's interval over the signal's spread


def find_runs(roots: Sequence[Path]) -> list[Path]:
    """Run directories (``result.json`` and ``metrics.jsonl``) below ``roots``, sorted."""
    found = {p.parent for root in roots for p in root.rglob("result.json")}
    return sorted(d for d in found if (d / "metrics.jsonl").is_file())


def with_signals(row: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` with the derived signals filled in where it has the accuracies but not them."""
    out = dict(row)
    pgd, fgsm, clean = row.get(PGD_KEY), row.get(FGSM_KEY), row.get(CLEAN_KEY)
    if pgd is not None and fgsm is not None:
        derived = derived_signals(float(pgd), float(fgsm), float(clean or 0.0))
        if clean is None:
            derived.pop(ABOVE_CLEAN_KEY)
        for key, value in derived.items():
            out.setdefault(key, value)
    return out


def robust_at(curve: Mapping[str, Any], eps: float) -> float | None:
    """Accuracy of a ``robustness.json`` curve at ``eps`` (a grid point, else None)."""
    for e, acc in zip(curve.get("epsilons") or (), curve.get("accuracy") or ()):
        if abs(float(e) - eps) < _TOL:
            return float(acc)
    return None


def read_run(path: Path) -> LabelledRun | None:
    """The run in ``path`` (None when it cannot be read or has no curve at its eps_g)."""
    run = RunDir(path)
    result, config, curve = run.read_result(), run.read_config(), run.read_robustness()
    if result is None or not config or curve is None:
        return None
    data, attack, model = (config.get(k) or {} for k in ("data", "attack", "model"))
    eps = parse_eps(attack.get("eps") or 0.0, name="attack.eps", upper=float("inf"))
    robust = robust_at(curve, eps)
    if robust is None:
        return None
    switched: Mapping[str, Any] = result.get("switched") or {}
    rows = run.read_metrics().rows
    if switched:  # the epochs trained with the run's own attack
        back = int(switched.get("rolled_back_to") or 0)
        rows = [*(r for r in rows if int(r["epoch"]) <= back), *switched.get("discarded", [])]
    monitored = tuple(with_signals(r) for r in rows if r.get(FGSM_KEY) is not None)
    size, mode = data.get("max_train_per_class"), model.get("mode")
    setting = f"{data.get('name')}:{size}:{format_eps(eps)}:{mode}"
    steps = attack.get("steps")
    return LabelledRun(
        path=str(path),
        method=str(config.get("name") or path.name),
        setting=setting,
        reference=attack.get("name") == "pgd" and steps is not None and int(steps) == 7,
        robust=robust,
        final_fgsm=float(monitored[-1][FGSM_KEY]) if monitored else None,
        rows=monitored,
    )


def label_runs(
    runs: Sequence[LabelledRun], fgsm_high: float, given: Mapping[str, float] | None = None
) -> list[LabelledRun]:
    """The runs with their labels (see the module docstring); ``given``: the PGD-7 robust
    accuracy of settings without a PGD-7 run among ``runs`` (``--reference``)."""
    references: dict[str, list[float]] = {}
    for run in runs:
        if run.reference:
            references.setdefault(run.setting, []).append(run.robust)
    for setting, value in (given or {}).items():
        references.setdefault(setting, [value])
    out = []
    for run in runs:
        values = references.get(run.setting)
        if not values:
            out.append(run)
            continue
        ref = statistics.fmean(values)
        co = (
            not run.reference
            and run.robust < 0.5 * ref
            and run.final_fgsm is not None
            and run.final_fgsm >= fgsm_high
        )
        out.append(LabelledRun(**{**asdict(run), "label": co, "reference_robust": ref}))
    return out


def extreme(run: LabelledRun, signal: str, min_fgsm: float, epochs: int = 1) -> float | None:
    """The run's most CO-like value of ``signal`` sustained over ``epochs`` consecutive
    monitored epochs with FGSM accuracy at least ``min_fgsm``: for a signal that is low at CO,
    the lowest over such windows of the window's highest value (a rule below it fires), None
    when there is no such window."""
    below = BELOW[signal]
    worst = float("inf") if below else float("-inf")
    values = [
        worst if r.get(signal) is None or float(r[FGSM_KEY]) < min_fgsm else float(r[signal])
        for r in run.rows
    ]
    windows = [values[i : i + epochs] for i in range(len(values) - epochs + 1)]
    scores = [max(w) if below else min(w) for w in windows]
    scores = [v for v in scores if v != worst]
    if not scores:
        return None
    return min(scores) if below else max(scores)


def flagged(run: LabelledRun, rule: DetectorRule) -> bool:
    """Whether ``rule`` flags any monitored epoch of ``run``."""
    return detected_onset(run.rows, rule) is not None


def balanced_accuracy(runs: Sequence[LabelledRun], rule: DetectorRule) -> float:
    positives = [r for r in runs if r.label]
    negatives = [r for r in runs if r.label is False]
    recall = sum(flagged(r, rule) for r in positives) / len(positives)
    specificity = sum(not flagged(r, rule) for r in negatives) / len(negatives)
    return (recall + specificity) / 2


def fit_form(
    runs: Sequence[LabelledRun], signal: str, min_fgsm: float, epochs: int
) -> Choice | None:
    """The best threshold of one form on ``runs`` (None when no run has the signal)."""
    values = sorted({v for r in runs if (v := extreme(r, signal, min_fgsm, epochs)) is not None})
    if not values:
        return None
    below = BELOW[signal]
    low, high = BOUNDS[signal]
    edges = sorted({low, *values, high})
    spread = high - low
    best: Choice | None = None
    for lo, hi in itertools.pairwise(edges):
        rule = DetectorRule(signal, (lo + hi) / 2, below, min_fgsm, epochs)
        choice = Choice(rule, balanced_accuracy(runs, rule), (hi - lo) / spread)
        if best is None or (choice.score, choice.margin) > (best.score, best.margin):
            best = choice
    return best


Form = tuple[str, float, int]  # signal, min_fgsm, epochs


def fit(runs: Sequence[LabelledRun], forms: Sequence[Form]) -> Choice | None:
    """The best form and threshold on ``runs``."""
    choices = [c for s, m, k in forms if (c := fit_form(runs, s, m, k)) is not None]
    key = lambda c: (c.score, c.margin, c.rule.min_fgsm, -c.rule.epochs)  # noqa: E731
    return max(choices, key=key, default=None)


def confusion(pairs: Sequence[tuple[bool, bool]]) -> dict[str, Any]:
    """Precision and recall of (label, prediction) pairs, with the counts."""
    tp = sum(1 for y, p in pairs if y and p)
    fp = sum(1 for y, p in pairs if not y and p)
    fn = sum(1 for y, p in pairs if y and not p)
    tn = sum(1 for y, p in pairs if not y and not p)
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / (tp + fn) if tp + fn else None,
    }


def leave_one_setting_out(
    runs: Sequence[LabelledRun], forms: Sequence[Form]
) -> tuple[list[dict[str, Any]], dict[str, tuple[bool, DetectorRule]]]:
    """The folds (held-out setting, rule chosen on the others, its training score; or why the
    fold was skipped) and each held-out run's prediction with the rule that made it."""
    folds: list[dict[str, Any]] = []
    predictions: dict[str, tuple[bool, DetectorRule]] = {}
    for setting in sorted({r.setting for r in runs}):
        train = [r for r in runs if r.setting != setting]
        if not any(r.label for r in train) or not any(r.label is False for r in train):
            folds.append({"setting": setting, "skipped": "training runs lack a CO or a non-CO"})
            continue
        choice = fit(train, forms)
        if choice is None:
            folds.append({"setting": setting, "skipped": "no signal recorded"})
            continue
        folds.append(
            {"setting": setting, "rule": choice.rule, "score": choice.score, "n": len(train)}
        )
        for run in runs:
            if run.setting == setting:
                predictions[run.path] = (flagged(run, choice.rule), choice.rule)
    return folds, predictions


def _form(rule: DetectorRule) -> Form:
    return (rule.signal, rule.min_fgsm, rule.epochs)


def study(runs: Sequence[LabelledRun]) -> dict[str, Any]:
    """Leave-one-setting-out over every form together and over each form alone; the rule to
    ship."""
    labelled = [r for r in runs if r.label is not None]
    forms = [(s, m, k) for s in SIGNALS for m in MIN_FGSM for k in EPOCHS]
    folds, predictions = leave_one_setting_out(labelled, forms)
    held_out = confusion(
        [(bool(r.label), predictions[r.path][0]) for r in labelled if r.path in predictions]
    )
    per_form = {}
    for form in forms:
        form_folds, form_predictions = leave_one_setting_out(labelled, [form])
        pairs = [
            (bool(r.label), form_predictions[r.path][0])
            for r in labelled
            if r.path in form_predictions
        ]
        thresholds = [f["rule"].threshold for f in form_folds if "rule" in f]
        per_form[form] = {**confusion(pairs), "thresholds": thresholds}
    chosen = Counter(_form(f["rule"]) for f in folds if "rule" in f)
    ship = None
    if chosen:
        (signal, min_fgsm, epochs), _ = chosen.most_common(1)[0]
        thresholds = [
            f["rule"].threshold
            for f in folds
            if "rule" in f and _form(f["rule"]) == (signal, min_fgsm, epochs)
        ]
        threshold = statistics.median(thresholds)
        ship = DetectorRule(signal, threshold, BELOW[signal], min_fgsm, epochs)
    return {
        "runs": len(labelled),
        "settings": len({r.setting for r in labelled}),
        "folds": folds,
        "predictions": predictions,
        "held_out": held_out,
        "per_form": per_form,
        "ship": ship,
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render(runs: Sequence[LabelledRun], result: Mapping[str, Any]) -> str:
    """The study as text: per-run lines, folds, held-out precision/recall, per-form scores."""
    lines = [
        "| run | setting | robust % (ref) | final FGSM % | label | "
        + " | ".join(f"min {SHORT[s]}" if BELOW[s] else f"max {SHORT[s]}" for s in SIGNALS)
        + " | epoch-1 pgd/fgsm | held-out flag |",
        "|---" * (7 + len(SIGNALS)) + "|",
    ]
    predictions = result["predictions"]
    for run in runs:
        label = {None: "unlabelled", True: "CO", False: "not CO"}[run.label]
        held = predictions.get(run.path)
        flag = "-" if held is None else ("flagged" if held[0] else "no")
        if held is not None and held[0]:
            flag += f" (epoch {detected_onset(run.rows, held[1])})"
        first = run.rows[0].get(RATIO_KEY) if run.rows else None
        lines.append(
            f"| {run.method} | {run.setting} | {_pct(run.robust)} ({_pct(run.reference_robust)}) "
            f"| {_pct(run.final_fgsm)} | {label} | "
            + " | ".join(_num(extreme(run, s, 0.0)) for s in SIGNALS)
            + f" | {_num(first)} | {flag} |"
        )
    lines.append("")
    for fold in result["folds"]:
        if "rule" in fold:
            lines.append(
                f"held out {fold['setting']}: chose {fold['rule'].describe()} on {fold['n']} runs "
                f"(balanced accuracy {fold['score']:.2f})"
            )
        else:
            lines.append(f"held out {fold['setting']}: skipped ({fold['skipped']})")
    h = result["held_out"]
    lines += [
        "",
        f"held-out precision {_pct(h['precision'])}%, recall {_pct(h['recall'])}% "
        f"(TP {h['tp']}, FP {h['fp']}, FN {h['fn']}, TN {h['tn']}; {result['runs']} labelled "
        f"runs in {result['settings']} settings)",
        "",
        "| form | held-out precision % | recall % | TP/FP/FN/TN | fold thresholds |",
        "|---|---|---|---|---|",
    ]
    for (signal, min_fgsm, epochs), c in result["per_form"].items():
        op = "<" if BELOW[signal] else ">"
        lines.append(
            f"| {signal} {op} t, fgsm >= {min_fgsm:g}, {epochs} epochs | {_pct(c['precision'])} | "
            f"{_pct(c['recall'])} | {c['tp']}/{c['fp']}/{c['fn']}/{c['tn']} | "
            f"{', '.join(f'{t:.3f}' for t in c['thresholds']) or '-'} |"
        )
    ship = result["ship"]
    lines += ["", f"rule to ship: {ship.describe() if ship else 'none (no fold could be fit)'}"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs="+", type=Path, help="sweep or run directories")
    parser.add_argument("--fgsm-high", type=float, default=0.5, help="the CO label's FGSM floor")
    parser.add_argument("--json", type=Path, help="also write the study here")
    parser.add_argument(
        "--reference",
        action="append",
        default=[],
        metavar="SETTING=ACC",
        help="the PGD-7 robust accuracy (fraction) of a setting without a PGD-7 run here, "
        "e.g. digits:100:8/255:full=0.58 (a run of the same config recorded elsewhere)",
    )
    args = parser.parse_args(argv)
    given = {}
    for item in args.reference:
        setting, _, value = item.rpartition("=")
        try:
            given[setting] = float(value)
        except ValueError:
            parser.error(f"--reference {item!r}: expected SETTING=ACC, ACC a fraction")
    paths = find_runs(args.roots)
    runs = [r for p in paths if (r := read_run(p)) is not None]
    if not runs:
        print(f"co_detector_study: no finished run below {', '.join(map(str, args.roots))}")
        return 2
    runs = sorted(label_runs(runs, args.fgsm_high, given), key=lambda r: (r.setting, r.method))
    result = study(runs)
    print(render(runs, result))
    if args.json:
        out = {
            "held_out": result["held_out"],
            "runs": result["runs"],
            "settings": result["settings"],
            "ship": None if result["ship"] is None else asdict(result["ship"]),
            "per_run": [
                {
                    "path": r.path,
                    "setting": r.setting,
                    "label": r.label,
                    "robust": r.robust,
                    "reference_robust": r.reference_robust,
                    "final_fgsm": r.final_fgsm,
                    "flagged": result["predictions"].get(r.path, (None,))[0],
                    **{s: extreme(r, s, 0.0) for s in SIGNALS},
                }
                for r in runs
            ],
        }
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
