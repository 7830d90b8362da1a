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
        "ours (attack + forward)",
        "torchattacks",
    }
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
