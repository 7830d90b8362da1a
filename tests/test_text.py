"""``robustft.utils.text``: the one markdown table (``|`` escaped in every cell), the one
percentage formatter (digits, None), the plain-text and CSV tables, and the tables built
on them (report delay section, model card, tracker curve, the demo's table in the README)."""

from __future__ import annotations

import csv
import io
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from robustft.utils.text import (
    csv_text,
    markdown_table,
    md_escape,
    percent,
    percent_number,
    short_number,
    text_table,
)

ROOT = Path(__file__).resolve().parents[1]
BAR = re.compile(r"(?<!\\)\|")


def cells(line: str) -> list[str]:
    """The cells of a markdown table row (split on unescaped bars)."""
    return [c.strip() for c in BAR.split(line)[1:-1]]


def test_markdown_table_escapes_bars_in_headers_and_cells() -> None:
    text = markdown_table(["key", "a|b"], [["lora_targets", "qkv|proj"], ["x", ""]])
    assert text.splitlines() == [
        "| key | a\\|b |",
        "|---|---|",
        "| lora_targets | qkv\\|proj |",
        "| x |  |",
    ]
    assert {len(cells(line)) for line in text.splitlines()} == {2}
    assert markdown_table(["a"], []) == "| a |\n|---|"
    assert md_escape("a|b|c") == "a\\|b\\|c"


@pytest.mark.parametrize(
    ("value", "digits", "shown"),
    [
        (0.5, 2, "50.00"),
        (0.5, 1, "50.0"),
        (0.98765, 2, f"{98.765:.2f}"),  # f-string rounding, no round() before it
        (0.123456, 0, "12"),
        (1.0, 2, "100.00"),
        (0.0, 1, "0.0"),
        (None, 2, "-"),
        (None, 1, "-"),
    ],
)
def test_percent_has_the_digits_asked_and_a_dash_for_none(
    value: float | None, digits: int, shown: str
) -> None:
    assert percent(value, digits) == shown


def test_percent_defaults_to_two_decimals_and_its_number_twin_stays_a_number() -> None:
    assert percent(0.25) == "25.00"
    assert percent_number(0.123456) == 12.35 and isinstance(percent_number(0.5), float)
    assert percent_number(0.123456, 1) == 12.3
    assert percent_number(None) is None
    assert percent_number(1) == 100.0  # a JSON integer accuracy


def test_short_number() -> None:
    assert short_number(0.91234) == "0.9123"
    assert short_number(1e-5) == "1e-05"
    assert short_number(None) == "-"
    assert short_number(3) == "3" and short_number("sgd") == "sgd"


def test_text_table_aligns_and_formats() -> None:
    text = text_table(["method", "clean %", "delay"], [["a", "92.50", 6], ["long name", 1.5, None]])
    assert text.splitlines() == [
        "method     clean %  delay",
        "---------  -------  -----",
        "a            92.50      6",
        "long name     1.50      -",
    ]


def test_csv_text_ends_lines_in_newline_and_quotes() -> None:
    text = csv_text(["name", "value"], [["a,b", 1.5], ['say "hi"', ""], ["x|y", None]])
    assert "\r" not in text and text.endswith("\n") and text.count("\n") == 4
    assert text.splitlines()[1] == '"a,b",1.5'
    assert list(csv.reader(io.StringIO(text))) == [
        ["name", "value"],
        ["a,b", "1.5"],
        ['say "hi"', ""],
        ["x|y", ""],
    ]


def test_the_readme_demo_table_prints_to_the_digit() -> None:
    """The README's demo table, rendered by ``robustft demo``'s own table code from results
    holding its numbers, comes out line for line (digits, alignment, labels)."""
    from robustft.commands.demo import summary_table
    from robustft.demo import demo_configs
    from robustft.units import parse_eps

    text = (ROOT / "README.md").read_text()
    block = text[text.index("\nmethod ") + 1 :]
    shown = block[: block.index("```")].rstrip("\n").splitlines()
    header = re.search(r"robust@(\S+) %", shown[0])
    assert header is not None, shown[0]
    eps = parse_eps(header.group(1))
    runs = []
    for config, line in zip(demo_configs(eps=eps), shown[2:], strict=True):
        clean, robust, expected, delay, seconds = line.split()[-5:]
        result = {
            "clean_accuracy": float(clean) / 100,
            "robust_accuracy": float(robust) / 100,
            "expected_robustness": float(expected) / 100,
            "adaptation_delay": None if delay == "never" else int(delay),
            "train_seconds": float(seconds),
            "eval_seconds": 0.0,
        }
        runs.append((config, Path("."), result))
    assert summary_table(runs, eps).splitlines() == shown


def test_the_report_delay_section_escapes_a_dataset_path(tmp_path: Path) -> None:
    """A dataset named by a folder path may hold a bar; it stays one cell of the delay table."""
    from robustft.report.collect import collect_runs
    from robustft.report.delay import markdown_section
    from test_report import make_run

    for seed, clean in enumerate((0.9, 0.8, 0.7)):
        make_run(
            tmp_path, "fix", clean=clean, robust=0.2, seed=seed, dataset="imagefolder:/data/a|b"
        )
    table = markdown_section(collect_runs(tmp_path).runs).split("\n\n")[1].splitlines()
    assert cells(table[0]) == ["backbone", "dataset", "runs", "never adapted", "r"]
    assert cells(table[2]) == ["efficientnet_lite0", "imagefolder:/data/a\\|b", "3", "0", "-"]


def test_the_model_card_and_tracker_tables_use_the_one_table() -> None:
    from robustft.run.modelcard import front_matter, render_card
    from robustft.tracking.base import curve_markdown

    result = {
        "clean_accuracy": 0.98765,
        "robust_accuracy": 0.5,
        "expected_robustness": 0.75,
        "eval_eps_max": 2 / 255,
        "eval_attack": {"name": "apgd|ce", "steps": 10},
    }
    curve = {"epsilons": [0.0, 1 / 255, 2 / 255], "accuracy": [0.98765, 0.75, 0.5]}
    metadata = {"model": "m", "num_classes": "10", "input_size": "32"}
    config = {"name": "n", "data": {"name": "digits"}}
    card = render_card(Path("m.safetensors"), metadata, config, result, curve).splitlines()
    start = card.index("| metric | value (%) |")
    assert card[start + 1] == "|---|---|"
    assert cells(card[start + 2]) == ["clean accuracy", f"{98.765:.2f}"]
    assert cells(card[start + 3]) == [
        "robust accuracy at linf 2/255 (apgd\\|ce, 10 steps)",
        "50.00",
    ]
    start = card.index("| eps (linf) | accuracy (%) |")
    assert [cells(line) for line in card[start + 2 : start + 5]] == [
        ["0/255", f"{98.765:.2f}"],
        ["1/255", "75.00"],
        ["2/255", "50.00"],
    ]
    values = [
        m["value"]
        for m in front_matter(result, config, {})["model-index"][0]["results"][0]["metrics"]
    ]
    assert values == [round(98.765, 2), 50.0, 75.0]  # numbers, for the Hub's model-index

    points = types.SimpleNamespace(epsilons=[0.0, 1 / 255], accuracy=[0.9, 0.5], attacked=[0, 9])
    assert curve_markdown(points, "linf").splitlines() == [
        "| eps (linf) | accuracy (%) | attacked |",
        "|---|---|---|",
        "| 0/255 | 90.00 | 0 |",
        "| 1/255 | 50.00 | 9 |",
    ]


@pytest.mark.parametrize(
    "code",
    [
        "import robustft.utils.text",
        "import importlib.util as u; s = u.spec_from_file_location('t', 'benchmarks/table.py');"
        " m = u.module_from_spec(s); s.loader.exec_module(m); m.markdown(['a'], [[1.5]])",
    ],
)
def test_text_and_the_benchmark_tables_import_no_torch(code: str) -> None:
    check = "; import sys; assert 'torch' not in sys.modules, sorted(sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code + check], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_the_benchmark_tables_escape_and_keep_their_number_format() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_table", ROOT / "benchmarks" / "table.py")
    assert spec is not None and spec.loader is not None
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    text = table.markdown(["case", "s"], [["a|b", 0.12345], ["c", None], ["d", 1234.5]])
    assert text.splitlines()[2:] == ["| a\\|b | 0.123 |", "| c |  |", "| d | 1234 |"]
