"""The run directory: what ``RunDir`` reads, and what a forced restart clears."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import robustft
from conftest import TinyCNN
from robustft.run.rundir import RunDir
from test_defects import image_folder


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


def test_force_clears_the_skipped_images_of_the_run_it_replaces(tmp_path: Path) -> None:
    """Inventory bug: ``skipped_images.txt`` survived ``--force``, so a run restarted on clean
    data still listed the images its predecessor had left out."""
    folder = image_folder(tmp_path / "pets", per_class=8, size=16)
    bad = folder / "train" / "cat" / "img0.png"
    good = bad.read_bytes()
    bad.write_bytes(b"\x89PNG truncated")
    config = {
        "data.name": f"imagefolder:{folder}",
        "data.image_size": 16,
        "data.bad_images": "skip",
        "train.epochs": 1,
        "train.warmup_epochs": 0,
        "train.batch_size": 6,
        "train.threads": 1,
        "attack.eps": 0,
        "attack.schedule": "constant",
        "eval.max_examples": 6,
    }
    run = RunDir(tmp_path / "run")
    skipped = run.root / "skipped_images.txt"  # docs/reference/files.md

    def fit(force: bool) -> None:
        torch.manual_seed(0)
        robustft.fit(config, model=TinyCNN(3), run_dir=run.root, device="cpu", force=force)

    fit(force=False)
    assert skipped.read_text().splitlines() == [str(bad)]
    bad.write_bytes(good)  # the data fixed, the run started over
    fit(force=True)
    assert run.result.is_file()
    assert not skipped.exists()


def test_force_clears_every_file_the_run_wrote_and_keeps_the_sweeps_logs(tmp_path: Path) -> None:
    """A forced restart removes every file of the run it replaces (a stale ``failure.json``,
    ``early_stopped.json`` or ``skipped_images.txt`` would describe the new run), and keeps the
    logs a sweep writes about the run's attempts (a launcher holds ``train.log`` open while the
    run starts)."""
    from robustft.config import build_config
    from robustft.run.rundir import init_run_dir

    root = tmp_path / "run"
    written = ["config.yaml", "metrics.jsonl", "robustness.json", "result.json", "env.json"]
    written += ["failure.json", "tracking.json", "probe.json", "skipped_images.txt"]
    written += ["early_stopped.json", "checkpoints/last.pt", "checkpoints/last.pt.prev"]
    written += ["checkpoints/good.pt", "tensorboard/events.out.tfevents.1"]
    logs = ["train.log", "error.log"]
    for name in written + logs:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("{}")
    init_run_dir(RunDir(root), build_config({}), force=True)
    left = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    assert left == sorted(["config.yaml", *logs])
    assert set(RunDir(root).outputs()) >= {root / name.split("/")[0] for name in written}


def test_run_result_types_every_key_a_run_writes(tmp_path: Path) -> None:
    """``RunResult`` (and its ``Cost``) list exactly the keys of a fresh ``result.json``: the
    one typed place the readers are checked against."""
    from robustft.run.result import Cost, RunResult

    config = {"train.epochs": 1, "train.warmup_epochs": 0, "train.batch_size": 8}
    config |= {"attack.schedule": "constant", "train.threads": 1, "eval.max_examples": 6}
    x = torch.rand(24, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    robustft.fit(
        config,
        model=TinyCNN(3),
        train_data=(x, torch.arange(24) % 3),
        test_data=(x[:6], torch.arange(6) % 3),
        run_dir=tmp_path / "run",
        device="cpu",
    )
    written = json.loads(RunDir(tmp_path / "run").result.read_text())
    assert sorted(written) == sorted(RunResult.__annotations__)
    assert sorted(written["cost"]) == sorted(Cost.__annotations__)
