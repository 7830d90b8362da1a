"""The run directory: what ``RunDir`` reads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import robustft
from conftest import TinyCNN
from robustft.run.rundir import RunDir


@pytest.mark.parametrize(
    "content",
    [b"\xff\xfe{", b'{"clean_accuracy": 0.5', b"[1, 2]"],
    ids=["not-utf8", "torn", "not-an-object"],
)
def test_an_unreadable_result_json_reads_as_an_unfinished_run(
    tmp_path: Path, content: bytes
) -> None:
    """Inventory bug: ``RunDir.read_result`` raised UnicodeDecodeError on a ``result.json`` that
    is not UTF-8 (the sweep driver, ``--collect``, ``--index``, resume and tuning call it),
    where a torn file reads as an unfinished run."""
    run = RunDir(tmp_path)
    assert run.read_result() is None  # missing
    run.result.write_bytes(content)
    assert run.read_result() is None


def test_a_non_utf8_result_json_is_retrained_by_resume(tmp_path: Path) -> None:
    """``fit(resume=True)`` on a run whose ``result.json`` is not UTF-8 finishes the run again
    (as for a torn one) instead of stopping on UnicodeDecodeError."""
    x = torch.rand(24, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    y = torch.arange(24) % 3
    config = {"train.epochs": 1, "train.warmup_epochs": 0, "train.batch_size": 8, "attack.eps": 0}
    config |= {"attack.schedule": "constant", "train.threads": 1, "eval.max_examples": 6}

    def fit(**kwargs: object) -> dict[str, object]:
        torch.manual_seed(0)
        return dict(
            robustft.fit(
                config,
                model=TinyCNN(3),
                train_data=(x, y),
                test_data=(x[:6], y[:6]),
                run_dir=tmp_path / "run",
                device="cpu",
                **kwargs,  # type: ignore[arg-type]
            )
        )

    first = fit()
    run = RunDir(tmp_path / "run")
    run.result.write_bytes(b"\xff\xfe{")
    again = fit(resume=True)
    assert again["run_id"] == first["run_id"]
    assert again["clean_accuracy"] == first["clean_accuracy"]
    assert run.read_result() is not None
