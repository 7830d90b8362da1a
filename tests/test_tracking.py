"""Experiment tracking: TensorBoard, MLflow and W&B (offline) runs read back with each library's
own reader; ``--resume`` continues the same tracked runs; failures never stop a run; a sweep's
runs are grouped; the command line stays free of the extras."""

from __future__ import annotations

import json
import logging
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import StopAfterFirstEpoch
from robustft import cli
from robustft.callbacks import Callbacks
from robustft.config import load_config
from robustft.run.rundir import RunDir
from robustft.training.fit import fit

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
TINY = [
    "model.name=timm:test_efficientnet",
    "model.pretrained=false",
    "data.image_size=16",
    "data.max_train_per_class=2",
    "eval.max_examples=8",
    "eval.steps=1",
    "train.threads=1",
]


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite MLflow store for the module (creating its tables takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_uri: str) -> Path:
    """No network: W&B offline into tmp, MLflow into a local SQLite file."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    (tmp_path / "wandb_dir").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    monkeypatch.chdir(tmp_path)  # MLflow's artifacts (./mlruns) stay in tmp
    return tmp_path


class StopAtSecondEpoch(Callbacks):
    """Interrupts the run as epoch 2 starts, as Ctrl-C would (after every callback saw epoch 1;
    conftest's StopAfterFirstEpoch stops before the trackers see it)."""

    def on_epoch_start(self, epoch: int, epochs: int, eps: float, batches: int) -> None:
        if epoch == 2:
            raise KeyboardInterrupt


def wandb_records(path: Path) -> list[Any]:
    """The records of an offline W&B run file (``run-<id>.wandb``), decoded with wandb's own
    protobuf schema. wandb 0.31 ships no Python reader: the framing is LevelDB's log format
    (a 7-byte file header, then 32 KiB blocks of records, each with a 7-byte header: CRC32,
    length, type 1 full / 2 first / 3 middle / 4 last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, pending, out = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # zero padding to the block's end
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        pending += data[pos : pos + length]
        pos += length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


def _items(items: Any) -> dict[str, Any]:
    return {item.key or ".".join(item.nested_key): json.loads(item.value_json) for item in items}


def wandb_history(records: list[Any]) -> list[dict[str, Any]]:
    """The logged rows (``run.log``) of an offline run file."""
    kinds = [(r, r.WhichOneof("record_type")) for r in records]
    return [_items(r.history.item) for r, kind in kinds if kind == "history"]


def wandb_summary(records: list[Any]) -> dict[str, Any]:
    """The run summary as the file leaves it (later updates win)."""
    out: dict[str, Any] = {}
    for record in records:
        if record.WhichOneof("record_type") == "summary":
            out.update(_items(record.summary.update))
    return out


@pytest.mark.slow  # ~30 s on 2 shared cores: W&B starts its service twice
def test_interrupted_run_resumed_is_one_tracked_run_per_backend(
    offline: Path, mlflow_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    run_dir = offline / "run"
    # validation robust accuracy and the overfitting monitor on: every per-epoch number exists
    measured = ["val.robust_every=1", "val.robust_examples=8", "monitor.co=on"]
    overrides = [*TINY, *measured, "monitor.examples=8", "monitor.pgd_steps=2"]
    overrides += ["log.project=trk", "log.group=grp"]  # log.group: what a sweep sets
    config = load_config(SMOKE, [*overrides, "log.backends=[tensorboard,mlflow,wandb]"])
    with pytest.raises(KeyboardInterrupt):
        fit(config, run_dir, callbacks=StopAtSecondEpoch(), device="cpu")
    first = RunDir(run_dir).read_tracking()
    assert set(first) == {"tensorboard", "mlflow", "wandb"}
    assert all(entry["last_epoch"] == 1 for entry in first.values())

    # the command line resumes it; the backends come from --log this time
    argv = ["train", str(SMOKE), "--run-dir", str(run_dir), "--resume", "--device", "cpu"]
    for item in overrides:
        argv += ["--set", item]
    argv += ["--log", "tensorboard", "--log", "mlflow", "--log", "wandb"]
    assert cli.main(argv) == 0
    capsys.readouterr()
    second = RunDir(run_dir).read_tracking()
    assert second["mlflow"]["run_id"] == first["mlflow"]["run_id"]
    assert second["wandb"]["id"] == first["wandb"]["id"]
    result = json.loads((run_dir / "result.json").read_text())
    rows = RunDir(run_dir).read_metrics().rows
    assert [r["epoch"] for r in rows] == [1, 2]

    # TensorBoard: two event files (one per process), one curve per tag
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 2
    val = events.Scalars("epoch/val_acc")
    assert [e.step for e in val] == [1, 2]
    assert [e.value for e in val] == pytest.approx([r["val_acc"] for r in rows])
    assert [e.value for e in events.Scalars("epoch/eps")] == pytest.approx([r["eps"] for r in rows])
    numbers = [{k: v for k, v in r.items() if isinstance(v, (int, float))} for r in rows]
    logged = {k for row in numbers for k in row} - {"epoch"}
    wanted = {"eps", "lr", "train_loss", "train_acc", "val_acc", "val_robust_acc"}
    wanted |= {"examples_per_second", "forward_passes", "backward_passes", "co_flagged"}
    assert wanted <= logged  # what the issue lists, in the rows (passes, monitor values)
    assert {t.removeprefix("epoch/") for t in events.Tags()["scalars"] if "epoch/" in t} == logged
    for key in logged:
        scalars = events.Scalars(f"epoch/{key}")
        assert [(e.step, e.value) for e in scalars] == [
            (r["epoch"], pytest.approx(float(r[key]))) for r in numbers if key in r
        ], key
    assert events.Scalars("result/expected_robustness")[0].value == pytest.approx(
        result["expected_robustness"]
    )
    assert "robustness_curve" in events.Tags()["images"]
    hparams = events.PluginTagToContent("hparams")  # the HParams tab: config vs result
    start = HParamsPluginData.FromString(hparams["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["model.name"].string_value == "timm:test_efficientnet"
    assert start.session_start_info.hparams["train.epochs"].number_value == 2
    experiment = HParamsPluginData.FromString(hparams["_hparams_/experiment"]).experiment
    assert "result/expected_robustness" in {m.name.tag for m in experiment.metric_infos}
    assert {"robustness_curve/text_summary", "findings/text_summary"} <= set(
        events.Tags()["tensors"]
    )

    # MLflow: one run in the group's experiment, two points per metric, finished
    client = MlflowClient(tracking_uri=mlflow_uri)
    experiment = client.get_experiment_by_name("grp")  # the group, not the project
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [first["mlflow"]["run_id"]]
    run_id = runs[0].info.run_id
    history = client.get_metric_history(run_id, "val_acc")
    assert [(m.step, m.value) for m in history] == [(r["epoch"], r["val_acc"]) for r in rows]
    for key in logged:
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert steps == [r["epoch"] for r in numbers if key in r], key
    assert client.get_metric_history(run_id, "clean_accuracy")[0].value == pytest.approx(
        result["clean_accuracy"]
    )
    finished = client.get_run(run_id)
    assert finished.info.status == "FINISHED"
    assert finished.data.params["train.epochs"] == "2"
    assert finished.data.params["model.name"] == "timm:test_efficientnet"
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"findings.txt", "robustness_curve.md", "robustness_curve.png"} <= artifacts

    # W&B offline: two local runs with the same id, epochs 1 then 2, the result in the summary
    files = sorted((offline / "wandb_dir").glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 2
    assert {f.name for f in files} == {f"run-{first['wandb']['id']}.wandb"}
    before, after = wandb_records(files[0]), wandb_records(files[1])
    assert [h["epoch"] for h in wandb_history(before) if "val_acc" in h] == [1]
    resumed = [h for h in wandb_history(after) if "val_acc" in h]
    assert [h["epoch"] for h in resumed] == [2]
    assert resumed[0]["val_acc"] == pytest.approx(rows[1]["val_acc"])
    summary = wandb_summary(after)
    assert summary["expected_robustness"] == pytest.approx(result["expected_robustness"])
    run_record = next(r.run for r in before if r.WhichOneof("record_type") == "run")
    assert run_record.project == "trk" and run_record.run_id == first["wandb"]["id"]
    assert run_record.run_group == "grp"


def test_epochs_a_kill_kept_from_the_trackers_are_logged_on_resume(
    offline: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Killed after epoch 1's checkpoint but before the trackers logged it (conftest's
    StopAfterFirstEpoch runs before them): the resumed run logs epoch 1 from metrics.jsonl,
    then epoch 2, in the same event folder: one complete curve."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = offline / "run"
    config = load_config(SMOKE, [*TINY, "log.backends=[tensorboard]"])
    with pytest.raises(KeyboardInterrupt):
        fit(config, run_dir, callbacks=StopAfterFirstEpoch(), device="cpu")
    assert RunDir(run_dir).read_tracking()["tensorboard"]["last_epoch"] == 0
    fit(config, run_dir, resume=True, device="cpu")
    assert RunDir(run_dir).read_tracking()["tensorboard"]["last_epoch"] == 2
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    rows = RunDir(run_dir).read_metrics().rows
    assert [(e.step, e.value) for e in events.Scalars("epoch/train_loss")] == [
        (r["epoch"], pytest.approx(r["train_loss"])) for r in rows
    ]


def test_failures_warn_once_and_the_run_goes_on(
    offline: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from robustft.tracking.tensorboard import TensorBoardTracker

    calls = []

    def broken(self: Any, epoch: int, metrics: dict[str, float]) -> None:
        calls.append(epoch)
        raise OSError("disk full")

    monkeypatch.setattr(TensorBoardTracker, "log_epoch", broken)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchstore://tracking")  # cannot start
    config = load_config(SMOKE, [*TINY, "log.backends=[tensorboard,mlflow]"])
    with caplog.at_level(logging.WARNING, logger="robustft.tracking"):
        result = fit(config, offline / "run", device="cpu")
    assert result["clean_accuracy"] is not None and (offline / "run" / "result.json").is_file()
    assert calls == [1]  # switched off after its first failure
    warnings = [r.getMessage() for r in caplog.records if r.name == "robustft.tracking"]
    assert len(warnings) == 2, warnings  # one per backend
    board = next(w for w in warnings if w.startswith("tensorboard logging is off"))
    assert "logging epoch failed (OSError: disk full)" in board
    mlflow = next(w for w in warnings if w.startswith("mlflow logging is off"))
    assert "start failed" in mlflow and "robustft[mlflow]" in mlflow
    assert all("\n" not in w for w in warnings)


def test_missing_backend_is_one_line_before_anything_is_written(
    offline: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    run_dir = offline / "run"
    code = cli.main(["train", str(SMOKE), "--run-dir", str(run_dir), "--log", "wandb"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert "wandb is not installed; pip install 'robustft[wandb]'" in err
    assert not run_dir.exists()
    assert cli.main(["train", str(SMOKE), "--log", "tensorbord"]) == 2
    assert "did you mean 'tensorboard'" in capsys.readouterr().err


def test_log_settings_are_resource_only() -> None:
    plain = load_config(SMOKE)
    tracked = load_config(SMOKE, ["log.backends=[tensorboard,mlflow]", "log.project=x"])
    assert tracked.run_id() == plain.run_id()
    assert load_config(SMOKE, ["eval.autoattack=standard"]).run_id() != plain.run_id()
    assert yaml.safe_load(tracked.to_yaml())["log"]["backends"] == ["tensorboard", "mlflow"]


def test_sweep_runs_are_grouped_under_the_sweep(
    offline: Path, mlflow_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlflow.tracking import MlflowClient

    base = yaml.safe_load(SMOKE.read_text())
    sweep = {
        "name": "grouped",
        "base": base,
        "set": dict(item.split("=", 1) for item in TINY),
        "grid": {"train.seed": [0, 1]},
    }
    for key in ("data.image_size", "data.max_train_per_class", "eval.max_examples"):
        sweep["set"][key] = int(sweep["set"][key])
    sweep["set"]["eval.steps"], sweep["set"]["train.threads"] = 1, 1
    sweep["set"]["model.pretrained"] = False
    path = offline / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    argv = ["sweep", str(path), "--out", str(offline / "sw"), "--device", "cpu"]
    assert cli.main([*argv, "--log", "mlflow"]) == 0
    capsys.readouterr()
    client = MlflowClient(tracking_uri=mlflow_uri)
    experiment = client.get_experiment_by_name("grouped")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2
    assert {r.data.tags["robustft.sweep"] for r in runs} == {"grouped"}
    for config in (offline / "sw" / "runs").glob("*/config.yaml"):  # what workers train from
        log = yaml.safe_load(config.read_text())["log"]
        assert log["group"] == "grouped" and log["backends"] == ["mlflow"]
    # (log.group -> the W&B group: test_interrupted_run_resumed_is_one_tracked_run_per_backend)

    # --index (a Slurm array task) tracks its run the same way
    one = ["sweep", str(path), "--out", str(offline / "sw1"), "--index", "1", "--device", "cpu"]
    assert cli.main([*one, "--log", "tensorboard"]) == 0
    capsys.readouterr()
    (run_dir,) = (offline / "sw1" / "runs").iterdir()
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["log"]["group"] == "grouped"
    assert RunDir(run_dir).read_tracking()["tensorboard"]["last_epoch"] == 2


def test_command_line_imports_no_extra() -> None:
    code = (
        "import sys\n"
        "from robustft import cli\n"
        "cli.build_parser()\n"
        "assert cli.main(['schedule', 'hinge', '--epochs', '10', '--eps', '8/255']) == 0\n"
        "heavy = {'torch', 'tensorboard', 'mlflow', 'wandb', 'transformers', 'pyautoattack'}\n"
        "loaded = sorted(heavy & {m.split('.')[0] for m in sys.modules})\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
