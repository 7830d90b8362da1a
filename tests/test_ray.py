"""Ray: a sweep as Ray tasks and ASHA tuning through Ray Tune, on a local Ray instance with 2
CPUs started here (``ray.init(num_cpus=2)``), both run again to check that finished work is
skipped.

The sweep has two tiny runs of 3 epochs; the Ray worker process running one of them is
SIGKILLed after its first epoch (as if its node died): Ray retries the task, which resumes the
run from its checkpoint, and the run ends with the numbers of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from robustft import cli
from robustft.config import load_config
from robustft.sweep.spec import expand, load_sweep
from robustft.sweep.store import SweepStore
from robustft.training.fit import fit

ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
TINY: dict[str, Any] = {
    "model.name": "timm:test_efficientnet",
    "model.pretrained": False,
    "data.image_size": 16,
    "data.max_train_per_class": 4,
    "train.epochs": 3,
    "train.threads": 1,
    "attack.schedule": "constant",
    "attack.steps": 1,
    "eval.max_examples": 16,
    "eval.steps": 1,
}


@pytest.fixture(scope="module")
def local_ray() -> Any:
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
        configure_logging=False,
    )
    yield ray
    ray.shutdown()


def parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def kill_ray_worker_after_epoch_1(run_dir: Path, killed: list[int], stop: threading.Event) -> None:
    """SIGKILL the Ray worker running ``robustft train`` in ``run_dir`` once epoch 1 is done
    (the train process is the lock holder; its parent is the worker)."""
    while not stop.is_set():
        try:
            done = (run_dir / "metrics.jsonl").read_text().count("\n") >= 1
            pid = int((run_dir / ".lock").read_text().split()[1])
        except (FileNotFoundError, IndexError, ValueError):
            done = False
        if done:
            worker = parent_pid(pid)
            assert "ray" in Path(f"/proc/{worker}/cmdline").read_text().lower()
            os.kill(worker, signal.SIGKILL)
            killed.append(worker)
            return
        time.sleep(0.01)


@pytest.mark.slow
def test_sweep_as_ray_tasks_survives_a_dead_worker_and_reruns_skip(
    local_ray: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = {
        "name": "raysweep",
        "base": str(SMOKE),
        "set": TINY,
        "methods": {"standard": {"attack.eps": 0}, "fix": {}},
    }
    path = tmp_path / "raysweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    runs = expand(load_sweep(path))
    out = tmp_path / "out"
    victim = out / "runs" / runs[1].run_id
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=kill_ray_worker_after_epoch_1, args=(victim, killed, stop))
    killer.start()
    try:
        code = cli.main(["sweep", str(path), "--launcher", "ray", "--out", str(out)])
    finally:
        stop.set()
        killer.join()
    text, err = capsys.readouterr()
    assert code == 0, err
    assert killed, "the run finished before its worker could be killed"
    assert "2 runs: 2 done, 0 running, 0 failed, 0 pending" in text
    log = (victim / "train.log").read_text()
    attempts = [line for line in log.splitlines() if "ray task on" in line]
    assert len(attempts) == 2 and attempts[1].endswith("--resume"), attempts  # Ray's retry
    reference = fit(runs[1].config, tmp_path / "reference")  # uninterrupted, in this process
    resumed = json.loads((victim / "result.json").read_text())
    for key in ("clean_accuracy", "robust_accuracy", "expected_robustness", "final_val_acc"):
        assert resumed[key] == reference[key], key
    with SweepStore(out / "sweep.db") as store:
        assert [(r.status, r.epochs, r.pid) for r in store.records()] == [
            ("done", 3, os.getpid()),  # claimed and recorded by the driver alone
            ("done", 3, os.getpid()),
        ]
    # again: nothing left to run, no task started
    assert cli.main(["sweep", str(path), "--launcher", "ray", "--out", str(out)]) == 0
    _, err = capsys.readouterr()
    assert err.count("skipped (finished earlier)") == 2 and "started" not in err
    assert (victim / "train.log").read_text() == log


def test_a_trials_last_epoch_is_reported_after_its_evaluation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ASHA may stop a trial at any report; were the last epoch reported before the final
    evaluation, a trial judged there would lose its result after training every epoch."""
    import math

    from ray import tune as ray_tune

    from robustft.tune.trial import _Report

    sent: list[tuple[str, int, float]] = []

    def record(metrics: dict[str, Any]) -> None:
        sent.append(("report", metrics["epoch"], metrics["val_acc"]))

    monkeypatch.setattr(ray_tune, "report", record)
    report = _Report("val_acc", "abc", epochs=3)
    report.on_start(Path("run"), {}, [])
    for epoch in (1, 2, 3):
        report.on_epoch_end({"epoch": epoch, "val_acc": epoch / 10})
        sent.append(("epoch end", epoch, 0.0))
    sent.append(("evaluated", 3, 0.0))
    report.on_result({}, None)
    assert [(what, epoch) for what, epoch, _ in sent] == [
        ("report", 1),
        ("epoch end", 1),
        ("report", 2),
        ("epoch end", 2),
        ("epoch end", 3),
        ("evaluated", 3),
        ("report", 3),
    ]
    assert sent[-1][2] == 0.3
    # resumed after its last epoch (interrupted during the evaluation): the last row is sent
    # once the evaluation is done; a NaN metric goes to ASHA as the worst value
    sent.clear()
    resumed = _Report("val_acc", "abc", epochs=3)
    resumed.on_start(Path("run"), {}, [{"epoch": 3, "val_acc": float("nan")}])
    resumed.on_result({}, None)
    assert sent == [("report", 3, -math.inf)]


@contextlib.contextmanager
def ray_tune_log() -> Iterator[list[str]]:
    """The messages Ray Tune's driver loop logs within the block (its ``ray.tune.tune`` logger
    writes to the stderr Ray found at import, out of the tests' capture)."""
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("ray.tune.tune")
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


@pytest.mark.slow
def test_tune_with_asha_writes_trials_and_best_config_and_resumes(
    local_ray: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = tmp_path / "tiny.yaml"
    data = load_config(SMOKE, [f"{k}={v}" for k, v in TINY.items()]).to_dict()
    config.write_text(yaml.safe_dump(data))
    out = tmp_path / "tune"
    argv = ["tune", str(config), "--search", "train.lr=loguniform(1e-4,1e-1)"]
    argv += ["--search", "train.weight_decay=loguniform(1e-4,0.1)", "--trials", "3"]
    argv += ["--out", str(out)]
    # interrupted at the first epoch's report, as Ctrl-C would (SIGINT): exit 130 with one
    # line, no table written
    from robustft.commands import tune as tune_command

    report, sent = tune_command._Lines.__call__, []

    def interrupt(self: Any, trial_id: str, result: dict[str, Any]) -> None:
        report(self, trial_id, result)
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(tune_command._Lines, "__call__", interrupt)
    with ray_tune_log() as logged:
        assert cli.main(argv) == 130
    _, err1 = capsys.readouterr()
    assert err1.splitlines()[-1].startswith("robustft: tuning interrupted (") and "again" in err1
    # Ray Tune logs that it stopped, but not its "Resume experiment with: Tuner.restore(...)":
    # the command to run is robustft's line
    assert any("Stop signal received" in m for m in logged), logged
    assert not any("Tuner.restore" in m for m in logged), logged
    assert not (out / "trials.md").exists() and not (out / "best.yaml").exists()
    monkeypatch.undo()
    assert cli.main(argv) == 0  # resumed: the interrupted trials continue from checkpoints
    text, err = capsys.readouterr()
    table = (out / "trials.md").read_text().splitlines()
    assert table[0].startswith("| trial | run id | lr | weight_decay | status | epochs | val_acc")
    rows = [line.strip("|").split("|") for line in table[2:]]
    assert len(rows) == 3 and "\n".join(table) in text
    for row in rows:
        number, run_id, status, epochs = row[0].strip(), row[1].strip(), row[4].strip(), row[5]
        run = out / "trials" / run_id
        assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.pt").is_file()
        assert status in ("done", "early-stopped"), row
        if status == "done":
            assert (run / "result.json").is_file() and int(epochs) == 3
            assert not (run / "early_stopped.json").exists()
        else:  # ASHA stopped it at a rung: marked, no final evaluation
            assert json.loads((run / "early_stopped.json").read_text())["after_epoch"] < 3
            assert not (run / "result.json").exists()
        rows_epochs = [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").open()]
        assert rows_epochs == list(range(1, int(epochs) + 1))  # each epoch once, resumed or not
        # each trial's reports are printed (a report due as the tuning stopped may be lost)
        assert f"[trial {number}] {run_id} epoch " in err1 + err
    best = load_config(out / "best.yaml")
    assert best.run_id() == rows[0][1].strip()  # the first row is the best finished trial
    assert f"{best.train.lr:.4g}" == rows[0][2].strip()
    results = sorted(out.glob("trials/*/result.json"))
    stamps = [p.stat().st_mtime_ns for p in results]
    assert cli.main(argv) == 0  # resumed by Ray Tune: every trial ended, nothing runs
    _, err = capsys.readouterr()
    assert "epoch" not in err
    assert [p.stat().st_mtime_ns for p in results] == stamps
    assert (out / "trials.md").read_text().splitlines() == table


def _trial_rows(out: Path) -> dict[str, list[str]]:
    """The rows of ``trials.md`` by run id: trial, run id, searched values, status, epochs..."""
    lines = (out / "trials.md").read_text().splitlines()[2:]
    return {
        cells[1]: cells for cells in ([c.strip() for c in x.strip("|").split("|")] for x in lines)
    }


@pytest.mark.slow
def test_tune_extends_a_finished_search_keeping_its_trials(
    local_ray: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 19: a larger --trials on a finished tuning was refused (and --force threw its
    trials away); now the finished trials are kept as they ended and new ones are added."""
    config = tmp_path / "tiny.yaml"
    settings = {**TINY, "train.epochs": 2}
    config.write_text(
        yaml.safe_dump(load_config(SMOKE, [f"{k}={v}" for k, v in settings.items()]).to_dict())
    )
    out = tmp_path / "tune"
    argv = ["tune", str(config), "--search", "train.lr=loguniform(1e-4,1e-1)", "--out", str(out)]
    assert cli.main([*argv, "--trials", "2"]) == 0
    before = _trial_rows(out)
    files = {
        run_id: [out / "trials" / run_id / name for name in ("metrics.jsonl", "result.json")]
        for run_id in before
    }
    stamps = {p: p.stat().st_mtime_ns for paths in files.values() for p in paths if p.exists()}
    capsys.readouterr()
    # extended to 3 trials, interrupted (SIGINT) at the new trial's first report
    from robustft.commands import tune as tune_command

    report, sent = tune_command._Lines.__call__, []

    def interrupt(self: Any, trial_id: str, result: dict[str, Any]) -> None:
        report(self, trial_id, result)
        if not sent and not result.get("recorded"):
            sent.append(trial_id)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(tune_command._Lines, "__call__", interrupt)
    with ray_tune_log() as logged:
        assert cli.main([*argv, "--trials", "3"]) == 130
    text, err = capsys.readouterr()
    assert not any("Tuner.restore" in m for m in logged), logged
    assert "extending the tuning of 2 trials to 3" in text, text + err
    assert "[trial 3]" in err and "[trial 1]" not in err and "[trial 2]" not in err
    monkeypatch.undo()
    assert cli.main([*argv, "--trials", "3"]) == 0  # the extension resumes
    after = _trial_rows(out)
    assert len(after) == 3 and set(before) < set(after)
    for run_id, row in before.items():  # kept as they ended: same status, epochs, numbers
        assert after[run_id][1:] == row[1:], (after[run_id], row)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # not trained again
    (new,) = set(after) - set(before)
    assert after[new][0] == "3" and after[new][3] in ("done", "early-stopped")
    assert (out / "trials" / new / "metrics.jsonl").is_file()
    capsys.readouterr()
    # fewer trials than the tuning holds: refused, nothing lost
    assert cli.main([*argv, "--trials", "2"]) == 2
    _, err = capsys.readouterr()
    assert "holds a tuning of 3 trials" in err and "--trials 3 or more" in err
    assert _trial_rows(out) == after
