"""Reports over finished runs: paper-style tables, per-run diagnostics and plots.

``build_report(path, out)`` finds every run directory below ``path`` (any directory holding
``result.json``; a single run, a folder of runs or a sweep), diagnoses each run
(:func:`robustft.diagnostics.diagnose_run`) and writes, atomically, into ``out``:

* ``report.md``: results tables (one per evaluation budget, a norm and an eps such as
  ``8/255 (l-inf)`` or ``0.5 (l2)``; rows backbone x method, columns datasets, cells
  "clean / robust at eps_g / expected robustness" in %, mean ± std over seeds), the cost
  tables (measured training passes, time, trainable parameters next to expected robustness),
  the per-run table (with a ``norm`` column), findings with suggestions, plots and definitions;
* ``report.html``: the same, self-contained (inline CSS, plots as base64 PNG);
* ``report.csv`` (one row per run) and ``report_summary.csv`` (one row per table cell), both
  with a ``norm`` column;
* ``val_accuracy``, ``robustness_curves``, ``expected_robustness`` and (when runs recorded
  their cost) ``cost_vs_robustness`` as ``.png`` and ``.svg``; a plot with more panels than fit
  one figure is split per (dataset, norm) into ``<plot>__<dataset>__<norm>`` files, such as
  ``robustness_curves__digits__linf.png`` (:func:`robustft.report.plots.split_groups`).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from robustft.errors import UserError, option
from robustft.report.collect import Collection, RunRecord, collect_runs
from robustft.report.csvfiles import runs_csv, summary_csv
from robustft.report.render import markdown_results, render_html, render_markdown
from robustft.report.tables import ResultsTable, results_tables

__all__ = [
    "Collection",
    "Report",
    "ResultsTable",
    "RunRecord",
    "build_report",
    "collect_runs",
    "write_report",
]


@dataclass(frozen=True)
class Report:
    """What :func:`write_report` produced.

    Attributes:
        out_dir: where the files went.
        files: every file written, in writing order.
        collection: the diagnosed runs.
        tables: the results tables (one per evaluation budget).
    """

    out_dir: Path
    files: tuple[Path, ...]
    collection: Collection
    tables: tuple[ResultsTable, ...]

    @property
    def main_table(self) -> str:
        """The results tables as markdown (what the CLI prints)."""
        return markdown_results(self.tables)


def write_report(collection: Collection, out_dir: str | Path, *, plots: bool = True) -> Report:
    """Write the report files for ``collection`` into ``out_dir`` (created if needed).

    Args:
        collection: runs from :func:`~robustft.report.collect.collect_runs`.
        out_dir: output directory.
        plots: render the plots (needs matplotlib).

    Returns:
        A :class:`Report` listing the files.
    """
    from robustft.utils.fsio import atomic_write_bytes, atomic_write_text

    out = Path(out_dir)
    runs = collection.runs
    files: list[Path] = []
    rendered = []
    if plots:
        from robustft.report.plots import render_plots

        rendered = render_plots(runs)
    for plot in rendered:
        for suffix, data in ((".png", plot.png), (".svg", plot.svg)):
            atomic_write_bytes(out / f"{plot.stem}{suffix}", data)
            files.append(out / f"{plot.stem}{suffix}")
    texts = {
        "report.md": render_markdown(collection, [(f"{p.stem}.png", p.title) for p in rendered]),
        "report.html": render_html(
            collection,
            {p.stem: base64.b64encode(p.png).decode("ascii") for p in rendered},
            {p.stem: p.title for p in rendered},
        ),
        "report.csv": runs_csv(runs),
        "report_summary.csv": summary_csv(runs),
    }
    for name, text in texts.items():
        atomic_write_text(out / name, text)
        files.append(out / name)
    return Report(out, tuple(files), collection, tuple(results_tables(runs)))


def build_report(
    path: str | Path | Sequence[str | Path], out: str | Path | None = None, *, plots: bool = True
) -> Report:
    """Collect the runs below ``path`` (a directory, or several for one report over all of
    them) and write the report to ``out`` (default ``path/report`` for one directory).

    Raises:
        UserError: a path is missing or holds no finished run, or several paths and no ``out``.
    """
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if out is None and len(paths) > 1:
        raise UserError(
            f"{len(paths)} directories given: pass {option('out', None)} DIR for their common "
            "report (one directory's report goes to PATH/report by default)"
        )
    collection = collect_runs(*paths)
    return write_report(
        collection, Path(out) if out is not None else Path(paths[0]) / "report", plots=plots
    )
