"""``robustft report``: collecting run dirs, tables (markdown, CSV, HTML), plots and the CLI."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from robustft.cli import main
from robustft.config import build_config
from robustft.errors import UserError
from robustft.report import Report, build_report, write_report
from robustft.report.collect import Stat, aggregate, collect_runs
from robustft.report.cost import COST_HEADERS, cost_tables
from robustft.report.tables import fmt_stat, results_tables

EPS = 8 / 255
PLOT_STEMS = (
    "val_accuracy",
    "robustness_curves",
    "expected_robustness",
    "cost_vs_robustness",
    "delay_vs_clean",
)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STEPS, BATCH, PARAMETERS = 10, 100, 4_000_000  # per synthetic epoch; model size


def make_run(
    root: Path,
    method: str,
    *,
    clean: float,
    robust: float,
    seed: int = 0,
    eps_g: float = EPS,
    eval_eps: float | None = None,
    backbone: str = "efficientnet_lite0",
    dataset: str = "digits",
    schedule: str = "constant",
    val_acc: list[float] | None = None,
    finished: bool = True,
    cost: bool = True,
    passes_per_step: int | None = None,
    trainable: int = PARAMETERS,
    monitor: list[tuple[float, float]] | None = None,
    stopped: dict[str, Any] | None = None,
    attack: dict[str, Any] | None = None,
    mode: str = "full",
    norm: str = "linf",
) -> Path:
    """A run directory in the rundir layout with known numbers.

    The robustness curve is linear from ``clean`` to ``robust`` on the 1/255 grid, so its
    expected robustness is exactly ``(clean + robust) / 2``. With ``cost``, every epoch is
    :data:`STEPS` steps of :data:`BATCH` examples and ``passes_per_step`` forward and backward
    passes (default 1 for standard fine-tuning, 2 as for FGSM) taking 1.5 s per pass per step;
    without it the run looks like one made before cost accounting. ``monitor`` gives the
    overfitting monitor's (PGD, FGSM) accuracy per epoch; ``attack`` overrides config keys.
    ``mode`` is the fine-tuning mode; with ``norm="l2"`` the curve has 10 steps up to eval_eps.
    """
    eval_eps = eps_g if eval_eps is None else eval_eps
    val_acc = val_acc or [0.3, 0.6, 0.8, clean]
    pps = passes_per_step or (1 if eps_g == 0 else 2)
    config = build_config(
        {
            "name": method,
            "model": {"name": backbone, "mode": mode},
            "data": {"name": dataset},
            "train": {"seed": seed, "epochs": len(val_acc)},
            "attack": {"eps": eps_g, "norm": norm, "schedule": schedule, **(attack or {})},
            "eval": {} if eval_eps == eps_g else {"eps_max": eval_eps},
        }
    )
    run = root / f"{method}-{config.run_id()}"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(config.to_yaml())
    rows: list[dict[str, Any]] = [
        {"epoch": i + 1, "eps": eps_g, "val_acc": a} for i, a in enumerate(val_acc)
    ]
    if cost:
        for row in rows:
            row.update(epoch_cost(pps))
    for row, (pgd, fgsm) in zip(rows, monitor or []):
        flagged = fgsm - pgd >= 0.2 and pgd <= 0.5 * fgsm
        row.update(co_pgd_acc=pgd, co_fgsm_acc=fgsm, co_eps=eps_g, co_flagged=flagged)
        row["monitor_seconds"] = 0.5
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if not finished:
        return run
    k, step = (round(eval_eps * 255), 1 / 255) if norm == "linf" else (10, eval_eps / 10)
    curve = {
        "epsilons": [i * step for i in range(k + 1)],
        "accuracy": [clean + (robust - clean) * i / k for i in range(k + 1)],
        "expected_robustness": (clean + robust) / 2,
        "attack": {"name": "apgd-ce", "steps": 10, "norm": norm},
        "mode": "cascade",
    }
    (run / "robustness.json").write_text(json.dumps(curve))
    result: dict[str, Any] = {
        "name": method,
        "run_id": config.run_id(),
        "clean_accuracy": clean,
        "robust_accuracy": robust,
        "expected_robustness": (clean + robust) / 2,
        "eps_g": eps_g,
        "eval_eps_max": eval_eps,
        "eval_attack": curve["attack"],
        "final_val_acc": val_acc[-1],
        "adaptation_delay": None,
        "train_seconds": 10.0,
        "eval_seconds": 5.0,
        "epochs": len(val_acc),
        "num_classes": 10,
        "warnings": [],
        "stopped": stopped,
    }
    if cost:
        result["cost"] = run_cost(pps, len(val_acc), trainable)
    (run / "result.json").write_text(json.dumps(result))
    return run


def epoch_cost(pps: int) -> dict[str, Any]:
    """The cost keys of one ``metrics.jsonl`` row (see :func:`make_run`)."""
    passes = STEPS * pps
    return {
        "forward_passes": passes,
        "backward_passes": passes,
        "example_forward_passes": passes * BATCH,
        "example_backward_passes": passes * BATCH,
        "steps": STEPS,
        "examples": STEPS * BATCH,
        "seconds": 1.5 * pps,
        "examples_per_second": STEPS * BATCH / (1.5 * pps),
    }


def run_cost(pps: int, epochs: int, trainable: int) -> dict[str, Any]:
    """The ``cost`` dict of ``result.json`` as the trainer writes it."""
    passes = STEPS * pps * epochs
    return {
        "train_forward_passes": passes,
        "train_backward_passes": passes,
        "train_example_forward_passes": passes * BATCH,
        "train_example_backward_passes": passes * BATCH,
        "train_steps": STEPS * epochs,
        "passes_per_step": float(pps),
        "train_seconds": 1.5 * pps * epochs,
        "seconds_per_epoch": 1.5 * pps,
        "examples_per_second": round(STEPS * BATCH / (1.5 * pps), 2),
        "monitor_seconds": 0.0,
        "eval_seconds": 5.0,
        "trainable_parameters": trainable,
        "total_parameters": PARAMETERS,
    }


def make_sweep(base: Path) -> Path:
    """A sweep-like tree: 2 seeds of standard/fix/sched on digits, one fix run on a second
    dataset, and an unfinished run."""
    runs = base / "sweeps" / "s1" / "runs"
    for seed, (std, fix, sched) in enumerate([(0.90, 0.60, 0.85), (0.92, 0.70, 0.87)]):
        make_run(runs, "standard", clean=std, robust=0.0, seed=seed, eps_g=0.0, eval_eps=EPS)
        make_run(runs, "fix", clean=fix, robust=0.30, seed=seed)
        make_run(runs, "sched", clean=sched, robust=0.35, seed=seed, schedule="hinge(t1=1,t2=3)")
    make_run(runs, "fix", clean=0.5, robust=0.2, dataset="cars")
    make_run(runs, "sched", clean=0.5, robust=0.2, seed=7, finished=False)
    return base / "sweeps" / "s1"


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    return make_sweep(tmp_path)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Report]:
    """The full report (with plots) of the sweep, rendered once for the file tests."""
    base = tmp_path_factory.mktemp("rendered")
    out = base / "out"
    return out, build_report(make_sweep(base), out)


# ----------------------------------------------------------------------------- collect


def test_collect_finds_runs_and_skips_unfinished(sweep: Path) -> None:
    collection = collect_runs(sweep)
    assert len(collection.runs) == 7
    assert len(collection.skipped) == 1 and "no result.json" in collection.skipped[0]
    methods = [r.method for r in collection.runs if r.dataset == "digits"]
    assert methods[:2] == ["standard", "standard"]  # eps_g = 0 first, then by name
    fix = next(r for r in collection.runs if (r.method, r.seed, r.dataset) == ("fix", 0, "digits"))
    assert fix.history[-1].val_acc == 0.6 and fix.curve is not None
    assert fix.curve.attack == "apgd-ce 10 steps"


def test_collect_skips_broken_results(tmp_path: Path) -> None:
    good = make_run(tmp_path, "fix", clean=0.8, robust=0.3)
    bad = make_run(tmp_path, "sched", clean=0.8, robust=0.3)
    (bad / "result.json").write_text("{not json")
    collection = collect_runs(tmp_path)
    assert [r.path for r in collection.runs] == [good]
    assert "cannot read" in collection.skipped[0]


def test_collect_tolerates_a_torn_history(tmp_path: Path) -> None:
    run = make_run(tmp_path, "fix", clean=0.8, robust=0.3)
    with (run / "metrics.jsonl").open("a") as handle:
        handle.write('{"epoch": 5, "va')
    (record,) = collect_runs(tmp_path).runs
    assert len(record.history) == 4
    assert record.warnings == ("metrics.jsonl line 5: not a metrics row (torn); read up to it",)


def test_collect_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no finished runs"):
        collect_runs(tmp_path)
    with pytest.raises(UserError, match="no such"):
        collect_runs(tmp_path / "missing")


def test_aggregate_mean_and_sample_std(sweep: Path) -> None:
    cells = {(c.method, c.dataset): c for c in aggregate(collect_runs(sweep).runs)}
    fix = cells[("fix", "digits")]
    assert fix.clean.n == 2 and fix.seeds == (0, 1)
    assert fix.clean.mean == pytest.approx(0.65)
    assert fix.clean.std == pytest.approx(0.0707107, abs=1e-6)  # sample std (ddof = 1)
    assert fix.expected.mean == pytest.approx((0.65 + 0.30) / 2)
    assert cells[("fix", "cars")].clean == Stat(0.5, 0.0, 1)
    assert fmt_stat(fix.clean) == "65.0±7.1"
    assert fmt_stat(cells[("fix", "cars")].clean) == "50.0"


def test_results_table_layout(sweep: Path) -> None:
    (table,) = results_tables(collect_runs(sweep).runs)
    assert table.title == "eps_g = 8/255 (l-inf)"
    assert table.headers() == ["backbone", "method", "cars", "digits"]
    body = {row[1]: row for row in table.body()}
    assert body["fix"][2] == "50.0 / 20.0 / 35.0 (n=1)"
    assert body["fix"][3] == "65.0±7.1 / 30.0±0.0 / 47.5±3.5 (n=2)"
    assert body["standard"][2] == "-"
    assert "n per cell in parentheses" in table.caption()
    assert "standard fine-tuning): standard" in table.caption()


def test_one_table_per_evaluation_budget(tmp_path: Path) -> None:
    make_run(tmp_path, "fix", clean=0.8, robust=0.3, eps_g=4 / 255)
    make_run(tmp_path, "fix", clean=0.7, robust=0.1, eps_g=8 / 255)
    tables = results_tables(collect_runs(tmp_path).runs)
    assert [t.title for t in tables] == ["eps_g = 4/255 (l-inf)", "eps_g = 8/255 (l-inf)"]
    assert tables[0].body() == [["efficientnet_lite0", "fix", "80.0 / 30.0 / 55.0"]]
    assert "(n = 1), so no ± std" in tables[0].caption()


def test_grid_settings_split_methods(tmp_path: Path) -> None:
    # a grid over attack.eps, all evaluated at 8/255: never averaged as if they were seeds
    for seed in (0, 1):
        make_run(tmp_path, "fix", clean=0.8, robust=0.3, eps_g=4 / 255, eval_eps=EPS, seed=seed)
        make_run(tmp_path, "fix", clean=0.6, robust=0.4, eps_g=8 / 255, seed=seed)
    runs = collect_runs(tmp_path).runs
    assert sorted({r.method for r in runs}) == ["fix (attack.eps=4/255)", "fix (attack.eps=8/255)"]
    assert {r.name for r in runs} == {"fix"}
    (table,) = results_tables(runs)
    assert table.title == "evaluated at eps = 8/255 (l-inf)"
    assert [row[1] for row in table.body()] == ["fix (attack.eps=4/255)", "fix (attack.eps=8/255)"]
    assert table.body()[0][2] == "80.0±0.0 / 30.0±0.0 / 55.0±0.0"


def test_duplicate_run_dirs_are_counted_once(tmp_path: Path) -> None:
    import shutil

    run = make_run(tmp_path / "a", "fix", clean=0.8, robust=0.3)
    shutil.copytree(run, tmp_path / "b" / run.name)
    collection = collect_runs(tmp_path)
    assert len(collection.runs) == 1
    assert "same run id" in collection.skipped[0]


# ----------------------------------------------------------------------------- files


def test_report_files(rendered: tuple[Path, Report]) -> None:
    out, report = rendered
    names = {p.name for p in report.files}
    expected = {"report.md", "report.html", "report.csv", "report_summary.csv"}
    for stem in PLOT_STEMS:
        expected |= {f"{stem}.png", f"{stem}.svg"}
    assert names == expected
    assert all((out / name).is_file() for name in names)
    assert not list(out.glob(".*.tmp"))  # atomic writes left no temporaries

    markdown = (out / "report.md").read_text()
    assert "| efficientnet_lite0 | fix | 50.0 / 20.0 / 35.0 (n=1) | 65.0±7.1" in markdown
    assert "![Expected robustness per method](expected_robustness.png)" in markdown
    assert "suboptimal_transfer" in markdown  # fix 65% vs standard 91%
    assert "no result.json" in markdown  # the skipped run is listed
    assert report.main_table in markdown


def test_findings_in_the_report(sweep: Path) -> None:
    runs = collect_runs(sweep).runs
    fix = [r for r in runs if r.method == "fix" and r.dataset == "digits"]
    assert all([f.code for f in r.findings] == ["suboptimal_transfer"] for r in fix)
    assert "91.0%" in fix[0].findings[0].message  # reference = mean of the two standard runs
    cars = next(r for r in runs if r.dataset == "cars")
    assert cars.findings == ()  # no standard reference on cars
    assert all(r.findings == () for r in runs if r.method in ("standard", "sched"))


def test_csv_files(sweep: Path, tmp_path: Path) -> None:
    write_report(collect_runs(sweep), tmp_path, plots=False)
    rows = list(csv.DictReader(io.StringIO((tmp_path / "report.csv").read_text())))
    assert len(rows) == 7
    fix0 = next(
        r for r in rows if r["method"] == "fix" and r["seed"] == "0" and r["dataset"] == "digits"
    )
    assert fix0["clean_pct"] == "60.0000" and fix0["expected_robustness_pct"] == "45.0000"
    assert fix0["eps_g"] == "8/255" and fix0["eps_g_255"] == "8.0000"
    assert fix0["findings"] == "suboptimal_transfer"
    summary = list(csv.DictReader(io.StringIO((tmp_path / "report_summary.csv").read_text())))
    fix = next(r for r in summary if r["method"] == "fix" and r["dataset"] == "digits")
    assert (fix["n"], fix["seeds"]) == ("2", "0 1")
    assert fix["clean_pct_mean"] == "65.0000" and fix["clean_pct_std"] == "7.0711"
    cars = next(r for r in summary if r["dataset"] == "cars")
    assert cars["clean_pct_std"] == ""  # undefined with one seed


def test_html_is_self_contained(rendered: tuple[Path, Report]) -> None:
    out, _ = rendered
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert "http://" not in page and "https://" not in page and "<link" not in page
    assert "<script" not in page
    assert page.count('src="data:image/png;base64,') == len(PLOT_STEMS)
    assert "<h2>Cost</h2>" in page and "E.rob gain (points per 10^6 extra" in page
    assert "65.0±7.1 / 30.0±0.0 / 47.5±3.5 (n=2)" in page


def test_plots_are_valid_png_and_svg(rendered: tuple[Path, Report]) -> None:
    out, _ = rendered
    for stem in PLOT_STEMS:
        assert (out / f"{stem}.png").read_bytes().startswith(PNG_SIGNATURE)
        root = ET.parse(out / f"{stem}.svg").getroot()
        assert root.tag.endswith("svg")
    svg = (out / "robustness_curves.svg").read_text()
    assert "(/255, l-inf)" in svg and "E.rob" in svg  # text kept as text (svg.fonttype none)
    svg = (out / "cost_vs_robustness.svg").read_text()
    assert "training example-passes" in svg and "fix: 0.016M passes, E.rob 47.5% ± 3.5" in svg


def test_core_library_does_not_import_matplotlib() -> None:
    code = (
        "import sys, robustft.report, robustft.diagnostics, robustft.commands.report; "
        "assert 'matplotlib' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- cost


FGSM, PGD7 = {"name": "fgsm", "steps": 1}, {"name": "pgd", "steps": 7}


def make_cost_runs(root: Path) -> Path:
    """Two seeds each of standard FT (1 pass per step), FGSM (2) and PGD-7 (8)."""
    for seed in (0, 1):
        make_run(root, "standard", clean=0.9, robust=0.0, seed=seed, eps_g=0.0, eval_eps=EPS)
        make_run(root, "fgsm", clean=0.8 - 0.02 * seed, robust=0.3, seed=seed, attack=FGSM)
        make_run(root, "pgd7", clean=0.7, robust=0.4, seed=seed, passes_per_step=8, attack=PGD7)
    return root


def test_collect_reads_cost_and_early_stop(tmp_path: Path) -> None:
    stop = {"reason": "catastrophic_overfitting", "onset": 3, "action": "rollback"}
    fgsm_stopped = {**stop, "rolled_back_to": 2}
    make_run(tmp_path, "fgsm", clean=0.8, robust=0.3, attack=FGSM, stopped=fgsm_stopped)
    make_run(tmp_path, "old", clean=0.8, robust=0.3, cost=False)
    fgsm, old = collect_runs(tmp_path).runs
    assert fgsm.cost is not None and old.cost is None and old.stopped is None
    assert fgsm.cost.passes_per_step == 2.0 and fgsm.cost.steps == 40
    assert fgsm.cost.example_passes == 2 * 40 * 2 * BATCH  # forward + backward
    assert fgsm.cost.trainable_fraction == 1.0 and fgsm.cost.seconds_per_epoch == 3.0
    assert fgsm.stopped is not None and fgsm.stopped.rolled_back_to == 2
    assert fgsm.stopped.text() == (
        "stopped at epoch 3 (catastrophic overfitting), rolled back to epoch 2"
    )


def test_cost_table(tmp_path: Path) -> None:
    runs = collect_runs(make_cost_runs(tmp_path)).runs
    (table,) = cost_tables(runs)
    assert table.missing == 0 and table.title == "E.rob on [0, 8/255] (l-inf)"
    body = {row[2]: dict(zip(COST_HEADERS, row)) for row in table.body()}
    assert [row[2] for row in table.body()] == ["standard", "fgsm", "pgd7"]
    standard, fgsm, pgd = body["standard"], body["fgsm"], body["pgd7"]
    assert (standard["passes/step"], fgsm["passes/step"], pgd["passes/step"]) == ("1", "2", "8")
    # 4 epochs x 10 steps x pps x 100 examples x (forward + backward)
    assert standard["train example-passes (10^6)"] == "0.00800"
    assert fgsm["train example-passes (10^6)"] == "0.0160"
    assert pgd["train example-passes (10^6)"] == "0.0640"
    assert (standard["x standard FT"], fgsm["x standard FT"], pgd["x standard FT"]) == (
        "1x",
        "2x",
        "8x",
    )
    assert fgsm["n"] == "2" and fgsm["trainable params (% of all)"] == "4.00M (100%)"
    assert fgsm["s/epoch"] == "3.00" and pgd["examples/s"] == "83.3"
    assert standard["E.rob %"] == "45.0±0.0" and fgsm["E.rob %"] == "54.5±0.7"
    # (54.5 - 45.0) points / (0.008 extra 10^6 example-passes); standard: no extra passes
    gain = "E.rob gain (points per 10^6 extra example-passes)"
    assert fgsm[gain] == "1188" and pgd[gain] == "179" and standard[gain] == "-"


def test_cost_in_report_and_csv(tmp_path: Path) -> None:
    root = make_cost_runs(tmp_path / "runs")
    make_run(root, "pgd7", clean=0.7, robust=0.4, seed=2, attack=PGD7, cost=False)
    out = tmp_path / "out"
    report = write_report(collect_runs(root), out, plots=False)
    markdown = (out / "report.md").read_text()
    assert "## Cost" in markdown and "| efficientnet_lite0 | digits | fgsm | 2 |" in markdown
    assert "1 run has no cost data" in markdown
    assert "hardware-independent" in markdown and "wall-clock" in markdown  # definitions
    assert out / "report.html" in report.files

    rows = list(csv.DictReader(io.StringIO((out / "report.csv").read_text())))
    fgsm0 = next(r for r in rows if r["method"] == "fgsm" and r["seed"] == "0")
    assert fgsm0["passes_per_step"] == "2.0" and fgsm0["train_example_passes"] == "16000"
    assert fgsm0["trainable_parameters"] == str(PARAMETERS) and fgsm0["stopped_reason"] == ""
    old = next(r for r in rows if r["method"] == "pgd7" and r["seed"] == "2")
    assert old["train_example_passes"] == "" and old["passes_per_step"] == ""

    summary = list(csv.DictReader(io.StringIO((out / "report_summary.csv").read_text())))
    cells = {r["method"]: r for r in summary}
    assert cells["pgd7"]["n"] == "3" and cells["pgd7"]["cost_n"] == "2"
    assert cells["pgd7"]["passes_per_step"] == "8.0000"
    assert cells["pgd7"]["cost_vs_standard"] == "8.0000"
    assert cells["fgsm"]["train_example_passes_mean"] == "16000.0000"
    assert cells["fgsm"]["train_example_passes_std"] == "0.0000"
    assert cells["fgsm"]["erob_gain_points_per_1e6_extra_passes"] == "1187.5000"
    assert cells["standard"]["erob_gain_points_per_1e6_extra_passes"] == ""


def test_reference_needs_the_same_fine_tuning_mode(tmp_path: Path) -> None:
    make_run(tmp_path, "standard", clean=0.9, robust=0.0, eps_g=0.0, eval_eps=EPS)
    run = make_run(tmp_path, "lora", clean=0.8, robust=0.3, trainable=40_000)
    config = (run / "config.yaml").read_text().replace("mode: full", "mode: lora")
    (run / "config.yaml").write_text(config)
    (table,) = cost_tables(collect_runs(tmp_path).runs)
    lora = dict(zip(COST_HEADERS, table.body()[1]))
    assert lora["trainable params (% of all)"] == "40.0k (1%)"
    assert lora["x standard FT"] == "-"  # no standard LoRA run to compare with


def test_runs_without_cost_still_report(tmp_path: Path) -> None:
    make_run(tmp_path, "standard", clean=0.9, robust=0.0, eps_g=0.0, eval_eps=EPS, cost=False)
    make_run(tmp_path, "fix", clean=0.8, robust=0.3, cost=False)
    report = build_report(tmp_path, tmp_path / "out")
    names = {p.name for p in report.files}
    assert "cost_vs_robustness.png" not in names and "expected_robustness.png" in names
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "No run recorded its compute cost" in markdown
    assert "Training example-passes" not in markdown  # no cost definitions without cost
    assert cost_tables(report.collection.runs) == []
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out" / "report.csv").read_text())))
    assert all(r["train_example_passes"] == "" and r["stopped_reason"] == "" for r in rows)


def test_unreadable_cost_keeps_the_run(tmp_path: Path) -> None:
    run = make_run(tmp_path, "fix", clean=0.8, robust=0.3)
    result = json.loads((run / "result.json").read_text())
    result["cost"]["train_example_forward_passes"] = "many"
    result["stopped"] = {"reason": "catastrophic_overfitting", "onset": "?"}
    (run / "result.json").write_text(json.dumps(result))
    (record,) = collect_runs(tmp_path).runs
    assert record.cost is None and record.stopped is not None
    assert record.stopped.text() == "stopped (catastrophic overfitting)"


def test_overfitting_monitor_and_early_stop_in_the_report(tmp_path: Path) -> None:
    stop = {"reason": "catastrophic_overfitting", "onset": 3, "action": "rollback"}
    make_run(
        tmp_path,
        "fgsm",
        clean=0.8,
        robust=0.02,
        monitor=[(0.30, 0.35), (0.32, 0.36), (0.02, 0.70)],
        stopped={**stop, "rolled_back_to": 2},
    )
    (run,) = collect_runs(tmp_path).runs
    assert run.history[2].co_pgd_acc == 0.02
    assert "catastrophic_overfitting" in [f.code for f in run.findings]
    write_report(collect_runs(tmp_path), tmp_path / "out", plots=False)
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert (
        "catastrophic_overfitting, stopped at epoch 3 (catastrophic overfitting), rolled back "
        "to epoch 2 |" in markdown
    )
    assert "**early_stop**" in markdown and "numbers are for the model of epoch 2" in markdown
    (row,) = csv.DictReader(io.StringIO((tmp_path / "out" / "report.csv").read_text()))
    assert (row["stopped_reason"], row["stopped_onset"], row["rolled_back_to"]) == (
        "catastrophic_overfitting",
        "3",
        "2",
    )


def test_cost_plot(tmp_path: Path) -> None:
    from robustft.report.plots import cost_figure, render_plots

    runs = collect_runs(make_cost_runs(tmp_path)).runs
    assert cost_figure([r for r in runs if r.cost is None]) is None
    (plot,) = [p for p in render_plots(runs) if p.stem == "cost_vs_robustness"]
    assert plot.png.startswith(PNG_SIGNATURE)
    svg = plot.svg.decode()
    assert "pgd7: 0.064M passes, E.rob 55.0% ± 0.0 (n=2)" in svg and "log scale" in svg


# ----------------------------------------------------------------------------- CLI


def test_cli_report(sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(sweep), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "### eps_g = 8/255" in out and "| efficientnet_lite0 | sched |" in out
    assert "suboptimal_transfer: clean 60.0%" in out and "-> eps > 0 from epoch 1" in out
    assert "warning: skipped" in out
    assert f"report written to {sweep / 'report'}/" in out
    assert (sweep / "report" / "report.md").is_file()


def test_one_report_over_several_sweeps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`report A B --out R` reports the runs of both directories together (a run id present in
    both is counted once); without --out it refuses with one line rather than write into A."""
    import shutil

    a = make_run(tmp_path / "sweep-4", "fix", clean=0.8, robust=0.3, seed=0)
    make_run(tmp_path / "sweep-8", "fix", clean=0.6, robust=0.1, seed=1)
    shutil.copytree(a, tmp_path / "sweep-8" / a.name)  # a run reused by the second sweep
    collection = collect_runs(tmp_path / "sweep-4", tmp_path / "sweep-8")
    assert sorted(r.seed for r in collection.runs) == [0, 1]
    assert collection.roots == (tmp_path / "sweep-4", tmp_path / "sweep-8")
    assert "same run id" in collection.skipped[0]
    out = tmp_path / "both"
    args = ["report", str(tmp_path / "sweep-4"), str(tmp_path / "sweep-8")]
    assert main([*args, "--out", str(out), "--no-plots"]) == 0
    assert "| efficientnet_lite0 | fix | 70.0±14.1 / 20.0±14.1 /" in capsys.readouterr().out
    assert (
        f"2 runs from `{tmp_path / 'sweep-4'}`, `{tmp_path / 'sweep-8'}`."
        in (out / "report.md").read_text()
    )
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pass --out DIR" in err
    assert not (tmp_path / "sweep-4" / "report").exists()
    assert (
        main(["report", str(tmp_path / "sweep-4"), str(tmp_path / "nope"), "--out", str(out)]) == 2
    )


def test_cli_empty_dir_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no finished runs" in err
    assert main(["report", str(tmp_path / "nope")]) == 2


def test_delay_correlation_section_and_plot(tmp_path: Path) -> None:
    """The report relates each run's task-adaptation delay to its final clean accuracy
    (Pearson's r per backbone and dataset; never-adapting runs censored at epochs + 1)."""
    from robustft.report.delay import delay_correlations, pearson

    # delays 1, 2, 3 (val accuracy crosses 20% at that epoch) and one run that never adapts
    cases = [
        ("a", [0.5, 0.6, 0.8, 0.9], 0.9),
        ("b", [0.1, 0.5, 0.7, 0.8], 0.8),
        ("c", [0.1, 0.1, 0.3, 0.6], 0.6),
        ("d", [0.1, 0.1, 0.1, 0.15], 0.15),
    ]
    for seed, (method, val, clean) in enumerate(cases):
        make_run(tmp_path / method, method, clean=clean, robust=0.0, seed=seed, val_acc=val)
    collection = collect_runs(tmp_path)
    (corr,) = delay_correlations(collection.runs)
    assert sorted(p.delay for p in corr.points) == [1, 2, 3, 5] and corr.censored == 1
    expected = pearson([1, 2, 3, 5], [0.9, 0.8, 0.6, 0.15])
    assert corr.r == pytest.approx(expected) and expected is not None and expected < -0.9
    report = build_report(tmp_path)
    text = (report.out_dir / "report.md").read_text()
    assert "## Adaptation delay and clean accuracy" in text
    assert f"| efficientnet_lite0 | digits | 4 | 1 | {expected:+.2f} |" in text
    assert (report.out_dir / "delay_vs_clean.png").is_file()
    assert pearson([1, 1, 1], [0.1, 0.2, 0.3]) is None  # no spread: undefined, not 0
