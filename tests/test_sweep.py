"""Sweeps: expansion and validation, the SQLite store, skip/resume/failure, --jobs, --status.

Runs are tiny (timm's random ``test_efficientnet`` at 16x16, 2 training images per class, one or
two epochs, 8 test examples): under a second each in-process, about ten seconds as workers
(mostly the start-up of a fresh torch process).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from robustft import cli
from robustft.config import build_config
from robustft.demo import demo_configs
from robustft.errors import UserError
from robustft.launchers.local import LocalLauncher, gpu_for_slot, visible_gpus
from robustft.sweep.driver import RunOutcome, run_sweep
from robustft.sweep.layout import SweepDir
from robustft.sweep.spec import RunSpec, expand, load_sweep, parse_sweep
from robustft.sweep.store import HOST, SweepStore
from robustft.training.fit import fit

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
TINY: dict[str, Any] = {
    "model.name": "timm:test_efficientnet",
    "model.pretrained": False,
    "data.image_size": 16,
    "data.max_train_per_class": 2,
    "train.epochs": 1,
    "attack.schedule": "constant",
    "eval.max_examples": 8,
    "eval.steps": 1,
}
METHODS = {"standard": {"attack.eps": 0}, "fix": {}}


def sweep_file(
    folder: Path,
    name: str = "tiny",
    *,
    methods: Mapping[str, Any] | None = None,
    grid: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> Path:
    """A sweep over configs/smoke.yaml made tiny (plus ``settings``); default: 2 methods x 2
    seeds."""
    data = {
        "name": name,
        "base": str(SMOKE),
        "set": {**TINY, **(settings or {})},
        "methods": dict(methods if methods is not None else METHODS),
        "grid": dict(grid if grid is not None else {"train.seed": [0, 1]}),
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class Events:
    """Records sweep events; optionally raises KeyboardInterrupt after an epoch of one run."""

    def __init__(self, interrupt: tuple[str, int] | None = None) -> None:
        self.log: list[tuple[str, str, Any]] = []
        self.interrupt = interrupt

    def on_run_start(self, run: RunSpec, total: int, resume_after: int) -> None:
        self.log.append(("start", run.run_id, resume_after))

    def on_epoch(self, run: RunSpec, total: int, row: Mapping[str, Any]) -> None:
        self.log.append(("epoch", run.run_id, row["epoch"]))
        if self.interrupt == (run.run_id, row["epoch"]):
            raise KeyboardInterrupt  # as if Ctrl-C right after this epoch's checkpoint

    def on_run_end(self, run: RunSpec, total: int, outcome: RunOutcome) -> None:
        self.log.append(("end", run.run_id, outcome.status))

    def kinds(self, kind: str) -> list[tuple[str, Any]]:
        return [(rid, x) for k, rid, x in self.log if k == kind]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", ""])
    proc.wait()
    return proc.pid


def set_row(db: Path, run_id: str, **values: Any) -> None:
    with sqlite3.connect(db) as conn:
        sets = ", ".join(f"{k} = ?" for k in values)
        conn.execute(f"UPDATE runs SET {sets} WHERE id = ?", (*values.values(), run_id))


# ------------------------------------------------------------------------ expansion


def test_expand_orders_names_and_validates(tmp_path: Path) -> None:
    runs = expand(load_sweep(sweep_file(tmp_path)))
    assert [(r.method, r.grid["train.seed"]) for r in runs] == [
        ("standard", 0),
        ("fix", 0),
        ("standard", 1),
        ("fix", 1),
    ]
    assert [r.index for r in runs] == [0, 1, 2, 3]
    assert len({r.run_id for r in runs}) == 4
    for run in runs:
        assert run.config.name == run.method
        assert run.run_id == run.config.run_id()
        assert run.config.train.epochs == 1 and run.config.model.name == "timm:test_efficientnet"
    assert runs[0].config.attack.eps == 0 and runs[1].config.attack.eps == pytest.approx(8 / 255)
    assert runs[3].label == "fix seed=1"


def test_duplicates_collapse_under_the_names_written(tmp_path: Path) -> None:
    # two methods alike, and 8/255 written twice (as a fraction and as its float): 2 x 3 -> 2 runs
    grid = {"attack.eps": ["4/255", "8/255", 8 / 255]}
    runs = expand(load_sweep(sweep_file(tmp_path, methods={"a": {}, "b": {}}, grid=grid)))
    assert [r.label for r in runs] == ["a eps=4/255", "a eps=8/255"]
    assert runs[0].aliases == ("b eps=4/255",)
    assert runs[1].aliases == (
        "b eps=8/255",
        "a eps=0.03137254901960784",
        "b eps=0.03137254901960784",
    )


def test_inline_base_and_nested_keys() -> None:
    spec = parse_sweep(
        {
            "name": "inline",
            "base": {"train": {"epochs": 3}, "attack": {"schedule": "constant"}},
            "grid": {"train": {"seed": [5]}},
        }
    )
    (run,) = expand(spec)
    assert run.method == "inline" and run.config.train.seed == 5 and run.config.train.epochs == 3


def test_demo_sweep_reproduces_the_demo() -> None:
    path = ROOT / "configs" / "sweeps" / "demo.yaml"
    assert path.read_text().startswith("#")
    runs = expand(load_sweep(path))
    assert len(runs) == 9
    assert {r.method for r in runs} == {"standard", "fix", "sched"}
    assert sorted(r.config.train.seed for r in runs) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    seed0 = {r.method: r.run_id for r in runs if r.config.train.seed == 0}
    demo = {c.name.removeprefix("demo-"): c.run_id() for c in demo_configs()}
    assert seed0 == demo


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "sweeps").glob("*.yaml")))
def test_shipped_sweeps_are_valid_and_documented(path: Path) -> None:
    assert path.read_text().startswith("#"), "every sweep starts with a comment saying what it is"
    assert expand(load_sweep(path))


# ------------------------------------------------------------------------- bad input

GOOD = f"name: bad\nbase: {SMOKE}\n"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("name: x\nbase: [unclosed\n", ["invalid YAML", "line"]),
        ("", ["empty"]),
        (GOOD + "grids:\n  train.seed: [0]\n", ["unknown key 'grids'", "grid"]),
        (GOOD + "grid:\n  train.sed: [0, 1]\n", ["train.sed", "train.seed"]),
        (GOOD + "grid:\n  train.seed: []\n", ["train.seed", "non-empty list"]),
        (GOOD + "grid:\n  train.seed: 3\n", ["train.seed", "non-empty list"]),
        (GOOD + "grid:\n  name: [a, b]\n", ["name", "method"]),
        (GOOD + "methods:\n  fix: {attack.eps: 8}\n", ["fix", "attack.eps", "8/255"]),
        (GOOD + "methods:\n  fix: constant\n", ["methods.fix", "mapping"]),
        (GOOD + "methods:\n  'a/b': {}\n", ["a/b"]),
        (GOOD + "grid:\n  attack.schedule: [hinje]\n", ["hinje", "hinge"]),
        (GOOD + "grid:\n  train.epochs: [0]\n", ["train.epochs", "0"]),
        ("name: x\nbase: missing.yaml\n", ["not found", "missing.yaml"]),
        ("name: 'a b'\nbase: {}\n", ["name"]),
    ],
)
def test_bad_sweep_files_are_one_line(
    text: str, words: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    code, out, err = run_cli(capsys, "sweep", str(path), "--dry-run", "--out", str(tmp_path / "s"))
    assert code == 2, (out, err)
    assert err.startswith("robustft: error: ") and err.count("\n") == 1, err
    for word in words:
        assert word in err, (word, err)
    assert not (tmp_path / "s").exists()


def test_bad_arguments_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = sweep_file(tmp_path)
    for argv, word in [
        ([str(tmp_path / "nope.yaml")], "not found"),
        ([str(path), "--jobs", "0"], "--jobs"),
        ([str(path), "--status", "--dry-run"], "not allowed"),
        (["--status", str(tmp_path)], "no sweep database"),
        ([str(tmp_path)], "directory"),
    ]:
        code, _, err = run_cli(capsys, "sweep", *argv)
        assert code == 2 and err.count("\n") == 1 and word in err, (argv, err)


# ------------------------------------------------------------- a finished 2x2 sweep


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[RunSpec]]:
    folder = tmp_path_factory.mktemp("sweep")
    path = sweep_file(folder)
    spec = load_sweep(path)
    out = folder / "out"
    events = Events()
    summary = run_sweep(spec, out, events=events)
    assert (summary.total, summary.done, summary.failed) == (4, 4, 0)
    assert [s for _, s in events.kinds("end")] == ["done"] * 4
    return path, out, expand(spec)


def test_database_holds_runs_and_epochs(tiny_sweep: tuple[Path, Path, list[RunSpec]]) -> None:
    _, out, runs = tiny_sweep
    layout = SweepDir(out)
    assert layout.spec.is_file() and load_sweep(layout.spec).to_dict()["grid"] == {
        "train.seed": [0, 1]
    }
    with sqlite3.connect(layout.db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with SweepStore(layout.db) as store:
        records = store.records()
        assert [r.id for r in records] == [r.run_id for r in runs]
        for rec, run in zip(records, runs):
            result = json.loads((layout.run_dir(run.run_id) / "result.json").read_text())
            assert (rec.status, rec.error, rec.method) == ("done", None, run.method)
            assert rec.config == run.config.to_dict() and rec.grid == {
                "train.seed": run.grid["train.seed"]
            }
            assert rec.result == result
            assert rec.clean_accuracy == result["clean_accuracy"]
            assert rec.robust_accuracy == result["robust_accuracy"]
            assert rec.expected_robustness == result["expected_robustness"]
            assert rec.seconds is not None and rec.seconds > 0
            assert rec.started is not None and rec.finished is not None
            assert rec.host == HOST and rec.pid == os.getpid()
            lines = (layout.run_dir(run.run_id) / "metrics.jsonl").read_text().splitlines()
            assert store.epochs(run.run_id) == [json.loads(x) for x in lines]
            assert rec.epochs == 1
    with sqlite3.connect(layout.db) as conn:
        row = conn.execute("SELECT epoch, eps, val_acc, metrics FROM epochs LIMIT 1").fetchone()
        assert row[0] == 1 and json.loads(row[3])["val_acc"] == row[2]


def test_rerun_skips_finished_runs(tiny_sweep: tuple[Path, Path, list[RunSpec]]) -> None:
    path, out, runs = tiny_sweep
    files = [
        out / "runs" / r.run_id / f for r in runs for f in ("result.json", "checkpoints/last.pt")
    ]
    before = [f.stat().st_mtime_ns for f in files]
    events = Events()
    summary = run_sweep(load_sweep(path), out, events=events)
    assert (summary.done, summary.skipped, summary.failed) == (0, 4, 0)
    assert events.kinds("start") == [] and events.kinds("epoch") == []
    assert [f.stat().st_mtime_ns for f in files] == before


def test_status_and_dry_run(
    tiny_sweep: tuple[Path, Path, list[RunSpec]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, out, runs = tiny_sweep
    code, text, _ = run_cli(capsys, "sweep", str(path), "--status", "--out", str(out))
    assert code == 0
    assert "4 runs: 4 done, 0 running, 0 failed, 0 pending" in text
    header = next(line for line in text.splitlines() if line.startswith("#"))
    assert header.split()[:6] == ["#", "run", "id", "method", "seed", "status"]
    for run in runs:
        row = next(line for line in text.splitlines() if run.run_id in line)
        assert run.method in row and " done " in row and "1/1" in row
    code, text2, _ = run_cli(capsys, "sweep", "--status", str(out))
    assert code == 0 and text2.splitlines()[1:] == text.splitlines()[1:]
    code, text, _ = run_cli(capsys, "sweep", str(path), "--dry-run", "--out", str(out))
    assert code == 0 and text.count("skip (finished)") == 4


def test_finished_but_unrecorded_run_is_ingested(
    tiny_sweep: tuple[Path, Path, list[RunSpec]], tmp_path: Path
) -> None:
    """Killed between writing result.json and recording it: the re-run records, not retrains."""
    import shutil

    path, out, runs = tiny_sweep
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    first = runs[0].run_id
    set_row(copy / "sweep.db", first, status="running", pid=dead_pid(), host=HOST, result=None)
    with sqlite3.connect(copy / "sweep.db") as conn:
        conn.execute("DELETE FROM epochs WHERE run_id = ?", (first,))
    with SweepStore(copy / "sweep.db") as store:
        assert store.record(first).shown_status == "interrupted"
    events = Events()
    summary = run_sweep(load_sweep(path), copy, events=events)
    assert (summary.done, summary.skipped) == (0, 4)
    with SweepStore(copy / "sweep.db") as store:
        rec = store.record(first)
        assert rec.status == "done" and rec.result is not None and rec.epochs == 1


# ------------------------------------------------------- interrupt, resume, failures


def test_interrupted_sweep_resumes_from_checkpoints(tmp_path: Path) -> None:
    path = sweep_file(tmp_path, grid={"train.seed": [0]}, settings={"train.epochs": 2})
    spec = load_sweep(path)
    runs = expand(spec)
    out = tmp_path / "out"
    second = runs[1].run_id
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, out, events=Events(interrupt=(second, 1)))
    db = out / "sweep.db"
    with SweepStore(db) as store:
        assert [r.status for r in store.records()] == ["done", "pending"]
        assert store.record(second).epochs == 1
    # as if the sweep had been SIGKILLed instead: its claim stays, held by a dead process
    set_row(db, second, status="running", pid=dead_pid(), host=HOST)
    with SweepStore(db) as store:
        assert store.record(second).shown_status == "interrupted"
    events = Events()
    summary = run_sweep(spec, out, events=events)
    assert (summary.done, summary.skipped, summary.failed) == (1, 1, 0)
    assert events.kinds("start") == [(second, 1)]  # resumed after epoch 1
    assert events.kinds("epoch") == [(second, 2)]
    reference = fit(runs[1].config, tmp_path / "reference")
    with SweepStore(db) as store:
        rec = store.record(second)
        assert rec.status == "done" and [e["epoch"] for e in store.epochs(second)] == [1, 2]
    for key in ("clean_accuracy", "robust_accuracy", "expected_robustness", "final_val_acc"):
        assert rec.result is not None and rec.result[key] == reference[key], key


def test_failed_run_is_recorded_and_the_sweep_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    methods = {"ok": {}, "broken": {"model.weights": str(bad)}}
    path = sweep_file(tmp_path, methods=methods, grid={"train.seed": [0]})
    out = tmp_path / "out"
    summary = run_sweep(load_sweep(path), out)
    assert (summary.done, summary.failed, summary.ok) == (1, 1, False)
    with SweepStore(out / "sweep.db") as store:
        ok, broken = store.records()
    assert ok.status == "done" and broken.status == "failed"
    assert broken.error is not None and str(bad) in broken.error and "\n" not in broken.error
    # a re-run retries the failed run (it fails again) and skips the finished one: exit code 1
    code, text, err = run_cli(capsys, "sweep", str(path), "--out", str(out))
    assert code == 1
    assert "skipped (finished earlier)" in err and "FAILED" in err and str(bad) in err
    assert "2 runs: 1 done, 0 running, 1 failed, 0 pending" in text
    assert f"failed {broken.id} (broken): " in text


def test_jobs_run_workers_in_parallel(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    path = sweep_file(tmp_path, grid={"model.weights": [None, str(bad)]})
    out = tmp_path / "out"
    code, text, err = run_cli(capsys, "sweep", str(path), "--jobs", "2", "--out", str(out))
    assert code == 1, err
    assert "2 runs at a time, 1 thread each" in text
    assert "4 runs: 2 done, 0 running, 2 failed, 0 pending" in text
    assert err.count("started") == 4 and err.count("done in") == 2 and err.count("FAILED") == 2
    with SweepStore(out / "sweep.db") as store:
        records = store.records()
        for rec in records:
            run_dir = out / "runs" / rec.id
            assert (run_dir / "train.log").is_file()
            if rec.grid["model.weights"] is None:
                assert rec.status == "done" and rec.epochs == 1 and rec.pid != os.getpid()
                assert rec.result == json.loads((run_dir / "result.json").read_text())
            else:
                assert rec.status == "failed" and rec.error is not None
                assert str(bad) in rec.error and not rec.error.startswith("robustft:")


# ------------------------------------------------------------------------ concurrency

_CLAIMER = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    from robustft.sweep.store import SweepStore

    db, go, ids = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
    mine = []
    with SweepStore(db) as store:
        Path(f"{go}.{os.getpid()}").touch()  # ready
        while not go.exists():
            time.sleep(0.001)
        for run_id in ids:
            if store.claim(run_id, os.getpid()):
                row = {"epoch": 1, "val_acc": 0.5}
                store.record_epochs(run_id, [row])
                time.sleep(0.002)  # "training"
                store.record_done(run_id, {"clean_accuracy": 0.5}, [row], seconds=0.001)
                mine.append(run_id)
    print(json.dumps(mine))
    """
)


def test_concurrent_processes_claim_each_run_once(tmp_path: Path) -> None:
    runs = [
        RunSpec(c.run_id(), "m", c, {"train.seed": i}, i)
        for i, c in enumerate(build_config({"train": {"seed": i}}) for i in range(40))
    ]
    db = tmp_path / "sweep.db"
    with SweepStore(db) as store:
        store.register(runs)
    ids = [r.run_id for r in runs]
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CLAIMER, str(db), str(go), json.dumps(order)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for order in (ids, ids[::-1])
    ]
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("go.*"))) < len(procs):  # both ready: start together
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.01)
    go.touch()
    claimed = []
    for proc in procs:
        stdout, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        claimed.append(json.loads(stdout))
    assert sorted(claimed[0] + claimed[1]) == sorted(ids)  # every run exactly once
    assert claimed[0] and claimed[1], "the two processes should share the work"
    with SweepStore(db) as store:
        assert {r.status for r in store.records()} == {"done"}
        assert all(r.epochs == 1 for r in store.records())


# ------------------------------------------- launchers, --index, --collect, the journal


def test_local_workers_get_a_gpu_each_in_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    assert [gpu_for_slot(s, ["3", "5"]) for s in range(4)] == ["3", "5", "3", "5"]
    assert gpu_for_slot(0, []) is None
    launcher = LocalLauncher(3, "auto", gpus=["3", "5"])
    envs = [launcher.assignment(slot) for slot in range(3)]
    assert [(e["CUDA_VISIBLE_DEVICES"], d) for e, d in envs] == [
        ("3", "cuda"),
        ("5", "cuda"),
        ("3", "cuda"),
    ]
    env, device = LocalLauncher(2, "cpu").assignment(1)  # CPU sweeps hand out no GPU
    assert "CUDA_VISIBLE_DEVICES" not in env and device == "cpu" and env["OMP_NUM_THREADS"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 7")
    assert visible_gpus() == ["2", "7"]  # only the GPUs this process may use
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == [] and LocalLauncher(2, "auto").gpus == []


def test_journal_falls_back_from_wal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from robustft.sweep import store as sweep_store

    mounts = "/dev/vda / ext4 rw 0 0\nserver:/export /shared nfs4 rw 0 0\n"
    assert sweep_store.filesystem_type("/shared/sweeps/x/sweep.db", mounts) == "nfs4"
    assert sweep_store.filesystem_type("/sharedness/x", mounts) == "ext4"
    monkeypatch.setattr(sweep_store, "filesystem_type", lambda path, mounts=None: "nfs4")
    assert sweep_store.journal_mode(tmp_path / "sweep.db") == "delete"
    monkeypatch.setenv(sweep_store.JOURNAL_ENV, "wal")
    assert sweep_store.journal_mode(tmp_path / "sweep.db") == "wal"
    monkeypatch.setenv(sweep_store.JOURNAL_ENV, "delete")  # forced, as on a network filesystem
    one = {"train.threads": 1}  # 2 threads crawl on a busy 2-core machine
    path = sweep_file(tmp_path, methods={"fix": {}}, grid={"train.seed": [0]}, settings=one)
    out = tmp_path / "out"
    assert run_sweep(load_sweep(path), out).done == 1
    with sqlite3.connect(out / "sweep.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert not (out / "sweep.db-wal").exists()
    again = run_sweep(load_sweep(path), out)
    assert (again.done, again.skipped) == (0, 1)
    with SweepStore(out / "sweep.db") as store:
        assert store.journal == "delete" and [r.status for r in store.records()] == ["done"]


def test_index_runs_one_run_and_collect_records_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = sweep_file(tmp_path, settings={"train.threads": 1})
    out = tmp_path / "out"
    runs = expand(load_sweep(path))
    code, text, _ = run_cli(capsys, "sweep", str(path), "--dry-run", "--out", str(out))
    assert code == 0 and "4 runs: --index 0 to 3 (Slurm: sbatch --array=0-3" in text
    row = next(line for line in text.splitlines() if runs[2].run_id in line)
    assert row.split()[:3] == ["3", "2", runs[2].run_id]  # "#" counts from 1, --index from 0
    code, _, err = run_cli(capsys, "sweep", str(path), "--index", "4", "--out", str(out))
    assert code == 2 and "--index 4: the sweep has 4 runs, numbered 0 to 3" in err
    assert err.count("\n") == 1 and not out.exists()
    code, text, _ = run_cli(capsys, "sweep", str(path), "--index", "2", "--out", str(out))
    assert code == 0 and f"[3/4] standard seed=1 ({runs[2].run_id})" in text
    assert "clean accuracy" in text
    assert sorted(p.name for p in (out / "runs").iterdir()) == [runs[2].run_id]
    assert (out / "runs" / runs[2].run_id / "result.json").is_file()
    assert not (out / "sweep.db").exists()  # array tasks leave the database alone
    mtime = (out / "runs" / runs[2].run_id / "result.json").stat().st_mtime_ns
    code, text, _ = run_cli(capsys, "sweep", str(path), "--index", "2", "--out", str(out))
    assert code == 0 and "skipped (finished earlier)" in text
    assert (out / "runs" / runs[2].run_id / "result.json").stat().st_mtime_ns == mtime
    code, text, _ = run_cli(capsys, "sweep", str(path), "--collect", "--out", str(out))
    assert code == 0 and "4 runs: 1 done, 0 running, 0 failed, 3 pending" in text
    with SweepStore(out / "sweep.db") as store:
        rec = store.record(runs[2].run_id)
        assert rec.status == "done" and rec.epochs == 1 and rec.result is not None


def test_launcher_options_that_do_not_go_together(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = sweep_file(tmp_path)
    for argv, words in [
        (["--gpus-per-run", "1"], "--gpus-per-run is for --launcher ray"),
        (["--launcher", "ray", "--jobs", "2"], "--jobs is for the local launcher"),
        (["--index", "0", "--jobs", "2"], "--index runs one run in this process"),
    ]:
        code, _, err = run_cli(capsys, "sweep", str(path), *argv)
        assert code == 2 and err.count("\n") == 1 and words in err, (argv, err)


def test_plan_and_status_read_the_run_directories_without_training(tmp_path: Path) -> None:
    """What ``--dry-run`` and ``--status`` show, from the library (issue 20 point 4): each run's
    plan from its directory, the finished runs sweep.db does not record, elapsed times."""
    from datetime import datetime, timedelta

    from robustft.sweep.layout import plan, read_status, resolve_sweep_dir
    from robustft.sweep.store import StoredRun

    path = sweep_file(tmp_path, grid={"train.seed": [0, 1, 2]}, methods={"fix": {}})
    spec = load_sweep(path)
    assert (spec.grid_points(), spec.planned_runs()) == (3, 3)
    out = resolve_sweep_dir(path, out=tmp_path / "out")
    assert out == tmp_path / "out" and resolve_sweep_dir(path) == Path("sweeps") / "tiny"
    with pytest.raises(UserError, match="is a directory; pass a sweep YAML file"):
        resolve_sweep_dir(tmp_path)
    assert resolve_sweep_dir(tmp_path, status=True) == tmp_path
    with pytest.raises(UserError, match="sweep directory not found"):
        resolve_sweep_dir(tmp_path / "nowhere", status=True)

    runs = expand(spec)
    layout = SweepDir(out)
    finished, started = layout.run_dir(runs[0].run_id), layout.run_dir(runs[1].run_id)
    for run_dir in (finished, started):
        run_dir.mkdir(parents=True)
        (run_dir / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n')
    (finished / "result.json").write_text("{}")
    assert [(p.run.run_id, p.action, p.epochs_done) for p in plan(runs, out)] == [
        (runs[0].run_id, "skip", 2),
        (runs[1].run_id, "resume", 2),
        (runs[2].run_id, "train", 0),
    ]
    with pytest.raises(UserError, match=r"--collect --out .*, then use --status"):
        read_status(out, runs, source=str(path))  # run directories, no sweep.db
    with SweepStore(layout.db) as store:
        store.register(runs)
    status = read_status(out, runs, source=str(path))
    assert [rec.status for rec in status.records] == ["pending"] * 3
    assert status.unrecorded == [runs[0].run_id]

    start = datetime(2030, 1, 1, 12, 0, 0)
    running = StoredRun("a", 0, "fix", {}, {}, "running", started=start.isoformat())
    assert running.elapsed(at=start + timedelta(seconds=90)) == 90
    done = StoredRun("b", 0, "fix", {}, {}, "done", train_seconds=5.0, eval_seconds=1.5)
    assert done.elapsed() == 6.5
