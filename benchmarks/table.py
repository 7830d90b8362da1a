"""Benchmark rows and their markdown tables.

A row is one contender of one comparison (a *case*): its median time, its speed-up over the
case's reference contender (reference median / its median: above 1 is faster), what it measured
(accuracy, expected robustness, passes) and the settings it ran with.

:func:`render` turns a ``results.json`` payload into ``RESULTS.md``; the documentation site's
Performance page calls it too (this module imports no torch: neither does
:mod:`robustft.utils.text`, whose markdown table it uses).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from robustft.utils.text import markdown_table

if TYPE_CHECKING:
    from timing import Settings, Timing


def rows_of(
    section: str,
    case: str,
    timings: dict[str, Timing],
    reference: str,
    setup: dict[str, Settings],
    measured: dict[str, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """One row per contender of a case; ``measured[name]`` adds e.g. ``accuracy``."""
    base = timings[reference].median
    rows = []
    for name, timing in timings.items():
        rows.append(
            {
                "section": section,
                "case": case,
                "contender": name,
                "median_s": round(timing.median, 4),
                "times_s": [round(t, 4) for t in timing.seconds],
                "reference": reference,
                "speedup": round(base / timing.median, 3) if timing.median > 0 else None,
                **(measured or {}).get(name, {}),
                "settings": setup[name].as_dict(),
                "settings_label": setup[name].label(),
            }
        )
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def markdown(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """robustft's markdown table of ``rows``, each value shown by :func:`_cell`."""
    return markdown_table(headers, [[_cell(v) for v in row] for row in rows])


def section_table(rows: Sequence[dict[str, Any]], measure: str, label: str) -> str:
    """Markdown of one section: case, contender, median, speed-up vs the case's reference,
    the section's measure (``measure`` key, column ``label``), settings."""
    headers = ["case", "contender", "median s", "speed-up", label, "settings"]
    body = [
        [
            r["case"],
            r["contender"] + (" (reference)" if r["contender"] == r["reference"] else ""),
            r["median_s"],
            f"{r['speedup']:.2f}x" if r.get("speedup") else "",
            r.get(measure),
            r["settings_label"],
        ]
        for r in rows
    ]
    return markdown(headers, body)


MEASURES = {
    "attacks": ("robust_accuracy", "robust acc"),
    "curves": ("expected_robustness", "E.rob"),
    "training": ("vs_pgd7", "time / PGD-7"),
    "scaling": ("per", "fit per"),
    "compile": ("first_epoch_s", "first epoch s"),
    "demo": ("ordering", "order by E.rob"),
}


def render(
    results: Mapping[str, Any], *, title: str | None = "robustft benchmarks", level: int = 1
) -> str:
    """The markdown report of a results.json payload: the runs, the machine, one table per
    section and the targets. ``title`` (None: none) is a heading of ``level``; the sections'
    headings are one level below."""
    head = results["meta"]
    runs = results.get("runs", [head])
    lines = [f"{'#' * level} {title}", ""] if title else []
    lines += [
        *(
            f"- run `{r['command']}`: load {r['load_before']} -> {r['load_after']}, "
            f"{r['seconds']:.0f} s"
            for r in runs
        ),
        "",
        f"{head['machine']['cpu']}, {head['machine']['cores']} cores, torch "
        f"{head['machine']['torch']}. Speed-up = reference median / median (above 1: faster "
        "than the reference); the load average after each section is in its heading.",
    ]
    sub = "#" * (level + 1)
    for name, rows in results["sections"].items():
        lines += ["", f"{sub} {name} (load {results['load'].get(name)})", ""]
        if name == "memory":
            lines.append(
                markdown(
                    ["model", "batch", "peak MiB", "step s", "MiB/example", "settings"],
                    [
                        [
                            r["case"],
                            r["contender"],
                            r["peak_mib"],
                            r["step_s"],
                            r["mib_per_example"],
                            r["settings_label"],
                        ]
                        for r in rows
                    ],
                )
            )
        else:
            measure, label = MEASURES[name]
            lines.append(section_table(rows, measure, label))
            if name == "curves":
                lines += [
                    "",
                    "accuracy per eps (0..8/255), example backward passes against the floor "
                    "(sum over eps > 0 of the examples robust there x (steps + 1)):",
                ]
                lines += [
                    f"- {r['case']}, {r['contender']}: {r['accuracies']}, "
                    f"{r['example_backward_passes']} passes"
                    + (
                        f", floor {r['floor_passes']}, {r['passes_vs_floor']:.3f}x"
                        if r.get("floor_passes")
                        else ""
                    )
                    for r in rows
                ]
            if name == "compile":
                lines += [
                    "",
                    "compilation (the first epoch's extra time, from a cold cache; a later case "
                    "reuses the first one's graphs and is charged its cold cost) and break-even:",
                ]
                lines += [
                    f"- {r['case']}: compile {r['compile_s']} s"
                    + (
                        f" (here {r['compile_here_s']} s)"
                        if r.get("compile_here_s") not in (None, r["compile_s"])
                        else ""
                    )
                    + ", break-even after "
                    f"{r['break_even_steps'] or 'never (not faster once compiled)'} steps; "
                    f"pays off in a demo run: {'yes' if r['pays_off_in_a_demo_run'] else 'no'}"
                    for r in rows
                    if "compile_s" in r
                ]
            if name == "demo":
                lines += [""]
                lines += [
                    f"- {m}: clean {v['clean_accuracy']:.4f}, robust {v['robust_accuracy']:.4f}, "
                    f"E.rob {v['expected_robustness']:.4f}"
                    for r in rows
                    for m, v in r["methods"].items()
                ]
    goals = targets(results)
    if goals:
        lines += ["", f"{sub} targets", "", goals]
    return "\n".join(lines) + "\n"


def _row(rows: Sequence[dict[str, Any]], case: str, contender: str) -> dict[str, Any]:
    """The row of ``contender`` in the case whose name starts with ``case``."""
    for r in rows:
        if r["case"].startswith(case) and r["contender"] == contender:
            return r
    raise KeyError(f"no benchmark row {contender!r} in a case starting with {case!r}")


def _attack_target(rows: Sequence[dict[str, Any]]) -> tuple[str, str]:
    measured, verdicts = [], []
    for kind in ("standard", "robust"):
        early = {
            n: _row(rows, f"{n} {kind}", "ours (early exit)") for n in ("pgd-10", "apgd-ce-10")
        }
        peers = {n: _row(rows, f"{n} {kind}", "torchattacks") for n in early}
        accs = sorted({round(100 * r["robust_accuracy"]) for r in early.values()})
        eps = early["pgd-10"]["case"].split(" eps ")[1].split()[0]
        span = f"{accs[0]}%" if len(accs) == 1 else f"{accs[0]}-{accs[-1]}%"
        same = all(early[n]["robust_accuracy"] == peers[n]["robust_accuracy"] for n in early)
        measured.append(
            f"{kind} model ({span} at {eps}): PGD-10 {early['pgd-10']['speedup']:.2f}x, "
            f"APGD-CE-10 {early['apgd-ce-10']['speedup']:.2f}x"
            + ("; same accuracies" if same else "; accuracies differ")
        )
        ok = all(r["speedup"] >= 2 for r in early.values())
        verdicts.append(f"{'holds' if ok else 'missed'} on the {kind} model")
    return "; ".join(measured), ", ".join(verdicts)


def _curve_target(rows: Sequence[dict[str, Any]], kind: str, goal: float) -> tuple[str, str]:
    cascade = _row(rows, f"{kind} 9 eps", "ours cascade")
    independent = _row(rows, f"{kind} 9 eps", "ours independent")
    peer = _row(rows, f"{kind} 9 eps", "torchattacks per eps")
    erob = (
        "same E.rob"
        if cascade["expected_robustness"] == peer["expected_robustness"]
        else f"E.rob {cascade['expected_robustness']:.3f} vs {peer['expected_robustness']:.3f}"
    )
    text = f"{cascade['speedup']:.2f}x (cascade; independent {independent['speedup']:.2f}x); {erob}"
    try:
        cl = _row(rows, f"{kind} 9 eps", "ours cascade, channels_last model")
        text += f"; cascade on a channels_last copy {cl['speedup']:.2f}x"
    except KeyError:  # results written before that row existed
        pass
    return text, "holds" if cascade["speedup"] >= goal else "missed"


def _floor_target(rows: Sequence[dict[str, Any]]) -> tuple[str, str]:
    cascade = _row(rows, "robust 9 eps", "ours cascade")
    peer = _row(rows, "robust 9 eps", "torchattacks per eps")
    ratio = cascade["passes_vs_floor"]
    text = (
        f"{cascade['example_backward_passes']} passes, floor {cascade['floor_passes']}: "
        f"{ratio:.3f}x (torchattacks per eps {peer['example_backward_passes']} passes, "
        f"{peer['passes_vs_floor']:.3f}x its floor)"
    )
    return text, "holds" if ratio <= 1.1 else "missed"


def _training_target(rows: Sequence[dict[str, Any]], which: str) -> tuple[str, str]:
    case = rows[0]["case"]
    if which == "fgsm":
        ratio = _row(rows, case, "FGSM-RS")["vs_pgd7"]
        return f"{ratio:.3f}x", "holds" if ratio <= 0.3 else "missed"
    if which == "eps0":
        ratio = _row(rows, case, "eps=0 epoch of hinge(t1=2,t2=3), PGD-7")["speedup"]
        return f"{ratio:.2f}x a clean epoch's speed", "holds" if ratio >= 1 / 1.05 else "missed"
    ours = _row(rows, case, "PGD-7")
    plain = _row(rows, case, "plain loop + torchattacks PGD-7")["median_s"]
    ratio = plain / ours["median_s"]
    text = f"{ratio:.2f}x (plain loop's median / ours; ours {ours['settings_label']})"
    return text, "holds" if ratio >= 1.8 else "missed"


def _demo_target(rows: Sequence[dict[str, Any]]) -> tuple[str, str]:
    demo = rows[0]
    order = "same order" if demo["same_order"] else "order changed"
    text = f"{demo['median_s']:.0f} s; {demo['ordering']} ({order})"
    return text, "holds" if demo["median_s"] <= 150 and demo["same_order"] else "missed"


TARGETS: tuple[tuple[str, str, Callable[[Sequence[dict[str, Any]]], tuple[str, str]]], ...] = (
    (
        "accuracy under attack at one eps, PGD-10 and APGD-CE-10, >= 2x torchattacks attack + "
        "forward (issue 23: on the robust model)",
        "attacks",
        _attack_target,
    ),
    (
        "robust 9-point curve 0-8/255 APGD-CE-10 >= 1.8x torchattacks per eps",
        "curves",
        lambda rows: _curve_target(rows, "robust", 1.8),
    ),
    ("robust 9-point curve: passes <= 1.1x the floor", "curves", _floor_target),
    (
        "9-point curve, collapsing (standard) model, >= 5x",
        "curves",
        lambda rows: _curve_target(rows, "standard", 5.0),
    ),
    ("FGSM-RS epoch <= 0.3x PGD-7 epoch", "training", lambda rows: _training_target(rows, "fgsm")),
    (
        "PGD-7 epoch >= 1.8x faster than the plain torchattacks loop",
        "training",
        lambda rows: _training_target(rows, "plain"),
    ),
    (
        "eps = 0 epoch within 5% of a clean epoch",
        "training",
        lambda rows: _training_target(rows, "eps0"),
    ),
    ("robustft demo <= 150 s on 2 cores, same ordering of methods", "demo", _demo_target),
)


def targets(results: Mapping[str, Any]) -> str:
    """The targets table (target, measured, verdict: "holds" when the median ratio clears it)
    of the targets whose rows ``results`` holds (a partial run, ``--sections`` or ``--quick``,
    may hold some); empty when it holds none."""
    body = []
    for goal, section, judge in TARGETS:
        try:
            body.append([goal, *judge(results["sections"][section])])
        except KeyError:  # the section, or a case of it, was not run
            continue
    return markdown(["target", "measured", "verdict"], body) if body else ""
