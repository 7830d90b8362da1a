"""``robustft report`` over mixed runs: several datasets, norms, budgets and fine-tuning modes.

Plots must split per (dataset, norm) when one figure would not fit, keep every axes legible,
give every plotted method a legend entry, draw without matplotlib warnings, and every table
must name the norm (l2 eps as plain decimals, never k/255).
"""

from __future__ import annotations

import csv
import io
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from robustft.report import write_report
from robustft.report.collect import Collection, RunRecord, collect_runs
from test_report import make_run

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from robustft.report.plots import PlotFigure

    Drawn = tuple[list[PlotFigure], list[warnings.WarningMessage]]

BUDGETS = (("linf", 8 / 255), ("linf", 16 / 255), ("l2", 0.5))
MODES = {"digits": ("full", "linear"), "imagefolder:/x/birds": ("full", "lora")}
GROUPS = ("digits__linf", "digits__l2", "imagefolder-x-birds__linf", "imagefolder-x-birds__l2")
SPLIT = ("val_accuracy", "robustness_curves", "cost_vs_robustness")
MIN_AXES = (3.5, 2.2)  # inches: a panel smaller than this is a sliver


def make_mixed(root: Path) -> Path:
    """40 runs: 2 datasets x (l-inf 8/255, l-inf 16/255, l2 0.5) x 2 fine-tuning modes (lora
    only on birds, linear only on digits) x standard/fix, 2 seeds at l-inf and 1 at l2."""
    for dataset, modes in MODES.items():
        for norm, eps in BUDGETS:
            for m, mode in enumerate(modes):
                for seed in (0, 1) if norm == "linf" else (0,):
                    common = {"seed": seed, "dataset": dataset, "mode": mode, "norm": norm}
                    standard = {
                        "clean": 0.9 - 0.1 * m,
                        "robust": 0.0,
                        "eps_g": 0.0,
                        "eval_eps": eps,
                    }
                    make_run(root, "standard", **standard, **common)
                    make_run(root, "fix", clean=0.7 - 0.1 * m, robust=0.3, eps_g=eps, **common)
    return root


def make_grid(root: Path) -> Path:
    """12 runs of one name whose settings differ: long method labels, 12 legend entries."""
    for mode in ("full", "lora", "linear"):
        for k, schedule in enumerate(("constant", "hinge(t1=1,t2=3)")):
            for share in (0.5, 1.0):
                eps = share * 8 / 255
                clean, robust = 0.6 + 0.05 * k, 0.2 * share
                make_run(
                    root,
                    "fix",
                    clean=clean,
                    robust=robust,
                    eps_g=eps,
                    eval_eps=8 / 255,
                    mode=mode,
                    schedule=schedule,
                )
    return root


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Collection:
    return collect_runs(make_mixed(tmp_path_factory.mktemp("mixed")))


@pytest.fixture(scope="module")
def mixed_figures(mixed: Collection) -> Drawn:
    """The figures of the mixed runs after constrained layout, and the warnings it raised."""
    from robustft.report.plots import iter_figures

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        figures = list(iter_figures(mixed.runs))
        for plot in figures:  # what drawing does first, without the pixels
            plot.figure.get_layout_engine().execute(plot.figure)
    return figures, list(caught)


def test_long_legends_render_without_matplotlib_warnings(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from robustft.report import plots

    runs = collect_runs(make_grid(tmp_path)).runs
    monkeypatch.setattr(plots, "DPI", 30)  # the layout is in inches; fewer pixels, faster
    caplog.set_level(logging.DEBUG, logger="matplotlib")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rendered = plots.render_plots(runs)
    assert [p.stem for p in rendered] == [
        "val_accuracy",
        "robustness_curves",
        "expected_robustness",
        "delay_vs_clean",
        "cost_vs_robustness",
    ]
    assert [str(w.message) for w in caught] == []  # was "constrained_layout not applied" x5
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert capfd.readouterr().err == ""


def test_mixed_figures_draw_without_warnings(mixed_figures: Drawn) -> None:
    _, caught = mixed_figures
    assert [f"{w.filename}: {w.message}" for w in caught] == []


def test_figures_split_per_dataset_and_norm(
    mixed: Collection,
    mixed_figures: Drawn,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from robustft.report import plots

    # file names, not pixels: the figures made once for the module, as stub bytes
    monkeypatch.setattr(plots, "iter_figures", lambda runs: iter(mixed_figures[0]))
    monkeypatch.setattr(plots, "figure_bytes", lambda fig, fmt: b"stub")
    report = write_report(mixed, tmp_path)
    names = {p.name for p in report.files}
    for stem in SPLIT:
        assert f"{stem}.png" not in names
        for group in GROUPS:
            assert {f"{stem}__{group}.png", f"{stem}__{group}.svg"} <= names
    # 3 budgets of at most 12 bars fit one figure: the plain name stays
    assert "expected_robustness.png" in names
    assert not any(n.startswith("expected_robustness__") for n in names)
    markdown = (tmp_path / "report.md").read_text()
    title = "Accuracy under attack vs eps (shaded: E.rob) (imagefolder:/x/birds, l2)"
    assert f"![{title}](robustness_curves__imagefolder-x-birds__l2.png)" in markdown
    pngs = sum(n.endswith(".png") for n in names)
    assert (tmp_path / "report.html").read_text().count('src="data:image/png;base64,') == pngs


def test_one_dataset_and_norm_keeps_the_plain_name(mixed: Collection) -> None:
    from robustft.report.plots import split_groups

    digits_linf = [r for r in mixed.runs if r.dataset == "digits" and r.norm == "linf"]
    assert split_groups(digits_linf, lambda runs: False) == [("", "", digits_linf)]
    groups = split_groups(mixed.runs, lambda runs: False)
    assert [suffix for suffix, _, _ in groups] == [f"__{g}" for g in GROUPS]
    assert groups[1][1] == " (digits, l2)" and {r.norm for r in groups[1][2]} == {"l2"}


def _size(ax: Axes, fig: Figure) -> tuple[float, float]:
    width, height = fig.get_size_inches()
    position = ax.get_position()
    return position.width * width, position.height * height


def _series(stem: str, ax: Axes) -> int:
    """Distinct plotted methods of a panel, from the artists (not the legend)."""
    if stem.startswith("robustness_curves"):
        return len(ax.lines)  # one curve per method
    if stem.startswith("expected_robustness"):
        return len({(tuple(p.get_facecolor()), p.get_hatch()) for p in ax.patches})
    if stem.startswith("val_accuracy"):  # accuracy lines; the eps lines are on the twin axes
        solid = [line for line in ax.lines if line.get_linestyle() == "-"]
        return len({(line.get_color(), line.get_marker()) for line in solid}) + 4  # + style keys
    if stem.startswith("delay_vs_clean"):  # one marker series per method; the axvline is dotted
        return sum(line.get_linestyle() == "None" for line in ax.lines)
    means = [line for line in ax.lines if line.get_markersize() == 8]  # cost: method means
    return len({(line.get_color(), line.get_marker()) for line in means})


def test_every_panel_is_legible_with_a_legend_entry_per_series(mixed_figures: Drawn) -> None:
    figures, _ = mixed_figures
    assert len(figures) == 14  # 13 split per dataset/norm + delay
    for plot in figures:
        fig = plot.figure
        renderer = fig.canvas.get_renderer()
        panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_legend() is not None]
        assert panels, plot.stem
        frames = [ax.get_window_extent(renderer) for ax in fig.axes if ax.get_visible()]
        boxes = []
        for ax in panels:
            width, height = _size(ax, fig)
            assert width >= MIN_AXES[0] and height >= MIN_AXES[1], (plot.stem, width, height)
            legend = ax.get_legend()
            assert len(legend.get_texts()) == _series(plot.stem, ax), plot.stem
            box = legend.get_window_extent(renderer)
            assert not any(box.overlaps(frame) for frame in frames), plot.stem
            assert fig.bbox.contains(box.x0, box.y0) and fig.bbox.contains(box.x1, box.y1)
            boxes.append(box)
        for i, box in enumerate(boxes):
            assert not any(box.overlaps(other) for other in boxes[i + 1 :]), plot.stem


def test_bars_of_methods_missing_from_the_first_group_are_in_the_legend(
    mixed_figures: Drawn,
) -> None:
    figures, _ = mixed_figures
    (bars,) = [p.figure for p in figures if p.stem == "expected_robustness"]
    for ax in [a for a in bars.axes if a.get_visible()]:
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        # lora runs exist only on birds, the second group: the old chart left them out
        assert "standard (model.mode=lora)" in labels and "fix (model.mode=lora)" in labels
        assert len(labels) == 6 == len(set(labels))


def test_l2_axes_are_in_plain_units(mixed_figures: Drawn) -> None:
    figures, _ = mixed_figures
    (curves,) = [p.figure for p in figures if p.stem == "robustness_curves__digits__l2"]
    (ax,) = [a for a in curves.axes if a.get_visible()]
    assert ax.get_xlabel() == "perturbation size eps (l2)"
    assert ax.get_xlim()[1] == pytest.approx(0.51)  # not 127.5 (/255 units)
    (val,) = [p.figure for p in figures if p.stem == "val_accuracy__digits__l2"]
    assert "eval budget 0.5 (l2)" in val.axes[0].get_title()
    assert any(a.get_ylabel() == "training eps (l2), dashed" for a in val.axes)


def _l2_collection(root: Path) -> Collection:
    make_run(root, "fix", clean=0.8, robust=0.3)
    make_run(root, "fix", clean=0.8, robust=0.4, eps_g=0.2, norm="l2")  # 0.2 = 51/255
    make_run(root, "fix", clean=0.8, robust=0.2, eps_g=1.0, norm="l2")  # 1.0 = 255/255
    return collect_runs(root)


def test_tables_name_the_norm(tmp_path: Path) -> None:
    write_report(_l2_collection(tmp_path / "runs"), tmp_path, plots=False)
    markdown = (tmp_path / "report.md").read_text()
    page = (tmp_path / "report.html").read_text()
    for title in ("eps_g = 8/255 (l-inf)", "eps_g = 0.2 (l2)", "eps_g = 1 (l2)"):
        assert f"### {title}\n" in markdown and f"<h3>{title}</h3>" in page
    for title in ("E.rob on [0, 0.2] (l2)", "E.rob on [0, 1] (l2)"):
        assert f"### {title}\n" in markdown and f"<h3>{title}</h3>" in page
    assert "robust at 0.2 / expected robustness on [0, 0.2] (l2 norm)" in markdown
    assert "51/255" not in markdown + page and "255/255" not in markdown + page
    assert "| seed | norm | train eps_g | schedule | eval eps |" in markdown
    assert "| 0 | l2 | 0.2 | constant | 0.2 |" in markdown
    assert "| 0 | l-inf | 8/255 | constant | 8/255 |" in markdown
    assert "<th>norm</th>" in page and "<td>l2</td>" in page

    rows = {
        r["eval_eps"]: r for r in csv.DictReader(io.StringIO((tmp_path / "report.csv").read_text()))
    }
    assert set(rows) == {"8/255", "0.2", "1"}
    assert (rows["1"]["norm"], rows["1"]["eps_g"], rows["1"]["eps_g_255"]) == ("l2", "1", "")
    assert rows["1"]["eval_eps_255"] == ""
    assert (rows["8/255"]["norm"], rows["8/255"]["eps_g_255"]) == ("linf", "8.0000")
    summary = list(csv.DictReader(io.StringIO((tmp_path / "report_summary.csv").read_text())))
    assert [(r["norm"], r["eval_eps"], r["eval_eps_255"]) for r in summary] == [
        ("linf", "8/255", "8.0000"),
        ("l2", "0.2", ""),
        ("l2", "1", ""),
    ]


def test_budget_text() -> None:
    from robustft.report.tables import budget_text, eps_text

    assert budget_text(8 / 255, "linf") == "8/255 (l-inf)"
    assert budget_text(0.5, "l2") == "0.5 (l2)"
    assert eps_text(1.0, "l2") == "1" and eps_text(0.2, "l2") == "0.2" and eps_text(0, "l2") == "0"
    assert eps_text(1.0) == "255/255"  # l-inf stays in /255 units


def test_norms_never_share_a_table(tmp_path: Path) -> None:
    # an l2 and an l-inf budget of the same size: two tables, each with its norm
    from robustft.report.cost import cost_tables
    from robustft.report.tables import results_tables

    make_run(tmp_path, "fix", clean=0.8, robust=0.3, eps_g=51 / 255)
    make_run(tmp_path, "fix", clean=0.7, robust=0.2, eps_g=51 / 255, norm="l2")
    runs: tuple[RunRecord, ...] = collect_runs(tmp_path).runs
    assert [t.title for t in results_tables(runs)] == [
        "eps_g = 51/255 (l-inf)",
        "eps_g = 0.2 (l2)",
    ]
    assert [t.title for t in cost_tables(runs)] == [
        "E.rob on [0, 51/255] (l-inf)",
        "E.rob on [0, 0.2] (l2)",
    ]
