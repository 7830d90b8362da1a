"""Smoke test of benchmarks/run_all.py: one tiny comparison, its rows and its table (the
benchmarks themselves are not part of the suite)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from conftest import TinyCNN

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import run_all


def test_attack_comparison_rows_and_table() -> None:
    torch.manual_seed(0)
    model = TinyCNN().eval()
    x, y = torch.rand(8, 3, 16, 16), torch.randint(0, 10, (8,))
    sizes = run_all.Sizes(1, 8, 1, 8, 1, (1, 2), (4, 8), (2,))
    ctx = run_all.Context(
        argparse.Namespace(quick=True, compile=False),
        sizes,
        None,
        {"standard": model},
        x,
        y,
        torch.device("cpu"),
    )
    rows = run_all.section_attacks(ctx)
    assert {r["contender"] for r in rows} == {
        "ours (early exit)",
        "ours (early exit), channels_last model",
        "ours (attack + forward)",
        "torchattacks",
    }
    layouts = {r["contender"]: r["settings"]["channels_last"] for r in rows}
    assert layouts["ours (early exit), channels_last model"] is True  # observed, not assumed
    assert layouts["torchattacks"] is False
    for row in rows:
        assert 0 <= row["robust_accuracy"] <= 1
        assert row["median_s"] > 0 and row["speedup"] > 0
        assert row["settings"]["threads"] == torch.get_num_threads()
    scaling = run_all.section_scaling(ctx)
    assert all("slope_s" in r for r in scaling)
    text = run_all.render(
        {
            "meta": {
                "command": "test",
                "machine": {"cpu": "cpu", "cores": 2, "torch": torch.__version__},
                "load_before": None,
                "load_after": None,
                "seconds": 1.0,
            },
            "load": {},
            "sections": {"attacks": rows, "scaling": scaling},
        }
    )
    assert "| pgd-10 standard eps 1/255" in text and "torchattacks (reference)" in text


def test_floor_passes_counts_every_step_of_each_example_still_robust() -> None:
    # 4 examples; robust at eps 1, 2, 3: 3, 2, 2 of them; APGD-10 takes 11 passes on each
    assert run_all.floor_passes([1.0, 0.75, 0.5, 0.5], 4, 10) == (3 + 2 + 2) * 11


def test_curve_rows_report_passes_against_a_floor_they_never_go_below() -> None:
    torch.manual_seed(0)
    model = TinyCNN().eval()
    x, y = torch.rand(8, 3, 16, 16), torch.randint(0, 10, (8,))
    y = model(x).argmax(1).detach()  # every example correct at eps 0: some stay robust a while
    sizes = run_all.Sizes(1, 8, 1, 8, 1, (1,), (4,), (2,))
    ctx = run_all.Context(
        argparse.Namespace(quick=True), sizes, None, {"robust": model}, x, y, torch.device("cpu")
    )
    rows = run_all.section_curves(ctx)
    assert any(row["floor_passes"] for row in rows)
    for row in rows:
        assert row["example_backward_passes"] >= row["floor_passes"]
        assert row["floor_passes"] == 0 or row["passes_vs_floor"] == round(
            row["example_backward_passes"] / row["floor_passes"], 3
        )
    targets = run_all.render(
        {
            "meta": {
                "command": "test",
                "machine": {"cpu": "cpu", "cores": 2, "torch": torch.__version__},
                "load_before": None,
                "load_after": None,
                "seconds": 1.0,
            },
            "load": {},
            "sections": {"curves": rows},
        }
    )
    assert "robust 9-point curve: passes <= 1.1x the floor" in targets
